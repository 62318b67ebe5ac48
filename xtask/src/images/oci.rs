//! OCI image layout archives, as `ctr images import` reads them: `oci-layout`, `index.json` and
//! `blobs/sha256/<hex>` (one uncompressed layer, the image config, the manifest), in one tar.
//!
//! Each reference becomes one entry of `index.json` pointing at the same manifest, annotated with
//! `io.containerd.image.name` (the full reference, the name `ctr` imports it as) and
//! `org.opencontainers.image.ref.name` (its tag). Timestamps are the epoch, so the archive depends on the
//! layer, the config and the references only.
//!
//! Pure: shared with the registry mirror's integration test in `e2e` (with `tar.rs` beside it), so it
//! depends on nothing but `std`, `sha2` and `serde_json`.

use std::collections::BTreeMap;
use std::io::{self, Write};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::tar;

pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// The annotation containerd names an imported image by.
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
const EPOCH: &str = "1970-01-01T00:00:00Z";

/// The runtime configuration of an image (the `config` object of the OCI image config).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `uid:gid`, or `None` for root.
    pub user: Option<String>,
    pub env: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

/// What an archive holds, for `images.json` and the build summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// `sha256:<hex>` of the manifest: the image's digest.
    pub manifest_digest: String,
    /// `sha256:<hex>` of the uncompressed layer (its `diff_id`).
    pub layer_digest: String,
    /// Bytes written.
    pub size: u64,
}

/// `sha256:<hex>` of `data`.
pub fn digest(data: &[u8]) -> String {
    let hash = Sha256::digest(data);
    let mut out = String::with_capacity(71);
    out.push_str("sha256:");
    for b in hash {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The OCI platform names of this build's architecture (`amd64`, `arm64`, …).
pub fn go_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// The tag of a reference (`v0.1.0` of `ghcr.io/tabby-dev/tabby:v0.1.0`), or `latest` when it has none.
pub fn tag_of(reference: &str) -> &str {
    let name = reference.split('@').next().unwrap_or(reference);
    let last = name.rsplit('/').next().unwrap_or(name);
    last.split_once(':').map_or("latest", |(_, tag)| tag)
}

/// The image config JSON.
pub fn config_json(run: &RunConfig, arch: &str, diff_id: &str) -> Vec<u8> {
    let mut config = serde_json::Map::new();
    if let Some(user) = &run.user {
        config.insert("User".into(), json!(user));
    }
    if !run.env.is_empty() {
        config.insert("Env".into(), json!(run.env));
    }
    if !run.entrypoint.is_empty() {
        config.insert("Entrypoint".into(), json!(run.entrypoint));
    }
    if !run.cmd.is_empty() {
        config.insert("Cmd".into(), json!(run.cmd));
    }
    config.insert("WorkingDir".into(), json!("/"));
    if !run.labels.is_empty() {
        config.insert("Labels".into(), json!(run.labels));
    }
    to_vec(&json!({
        "created": EPOCH,
        "architecture": arch,
        "os": "linux",
        "config": Value::Object(config),
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": EPOCH, "created_by": "cargo xtask images"}],
    }))
}

fn descriptor(media_type: &str, data: &[u8]) -> Value {
    json!({"mediaType": media_type, "digest": digest(data), "size": data.len()})
}

/// The image manifest JSON: one config, one uncompressed layer.
pub fn manifest_json(config: &[u8], layer_digest: &str, layer_size: u64) -> Vec<u8> {
    to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": descriptor(MEDIA_CONFIG, config),
        "layers": [{"mediaType": MEDIA_LAYER, "digest": layer_digest, "size": layer_size}],
    }))
}

/// The layout's `index.json`: the manifest once per reference.
pub fn index_json(manifest: &[u8], refs: &[String], arch: &str) -> Vec<u8> {
    let manifests: Vec<Value> = refs
        .iter()
        .map(|r| {
            let mut d = descriptor(MEDIA_MANIFEST, manifest);
            d["platform"] = json!({"architecture": arch, "os": "linux"});
            d["annotations"] = json!({ANNOTATION_IMAGE_NAME: r, ANNOTATION_REF_NAME: tag_of(r)});
            d
        })
        .collect();
    to_vec(&json!({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": manifests}))
}

fn to_vec(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a JSON value always serializes")
}

fn blob_path(digest: &str) -> String {
    format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}

/// Writes the image layout archive of one image whose only layer is `layer` (an uncompressed tar).
pub fn write_layout<W: Write>(
    mut out: W,
    layer: &[u8],
    run: &RunConfig,
    refs: &[String],
    arch: &str,
) -> io::Result<Written> {
    let layer_digest = digest(layer);
    let config = config_json(run, arch, &layer_digest);
    let manifest = manifest_json(&config, &layer_digest, layer.len() as u64);
    let manifest_digest = digest(&manifest);
    let index = index_json(&manifest, refs, arch);
    let mut files: Vec<(String, &[u8])> = vec![
        (blob_path(&layer_digest), layer),
        (blob_path(&digest(&config)), &config),
        (blob_path(&manifest_digest), &manifest),
        ("index.json".into(), &index),
        ("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#),
    ];
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files.dedup_by(|a, b| a.0 == b.0);
    let mut counted = Counter { inner: &mut out, written: 0 };
    for dir in ["blobs/", "blobs/sha256/"] {
        tar::write_header(&mut counted, dir, b'5', 0, tar::EXEC_MODE, "")?;
    }
    for (name, data) in files {
        tar::write_file(&mut counted, &name, data, tar::FILE_MODE)?;
    }
    tar::finish(&mut counted)?;
    let size = counted.written;
    out.flush()?;
    Ok(Written { manifest_digest, layer_digest, size })
}

struct Counter<'a, W: Write> {
    inner: &'a mut W,
    written: u64,
}

impl<W: Write> Write for Counter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
