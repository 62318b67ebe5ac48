//! The lab's registry mirror (`tabby_e2e::lab::registry`) serving an image written by `cargo xtask
//! images`' own OCI layout code: `/v2/`, a manifest by tag (HEAD and GET, on one kept-alive connection),
//! the config and layer blobs, a byte range, and the errors, over real HTTP on 127.0.0.1.

// The archive is written with xtask's tar and OCI writers (pure, std + sha2 + serde_json), so this test
// proves the mirror reads what the image build writes.
#[allow(dead_code)]
#[path = "../../xtask/src/images/oci.rs"]
mod oci;
#[allow(dead_code)]
#[path = "../../xtask/src/images/tar.rs"]
mod tar;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tabby_e2e::lab::registry;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const NETSHOOT: &str = "docker.io/nicolaka/netshoot:latest";
const AGNHOST: &str = "registry.k8s.io/e2e-test-images/agnhost:2.55";

fn sha256(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

/// Writes a two-reference image and its images.json into `dir`; returns the written digests.
fn write_image(dir: &Path) -> oci::Written {
    let mut layer = tar::Tree::new();
    layer
        .insert("etc/hello", tar::Node::File { data: b"hello from the mirror\n".to_vec(), mode: tar::FILE_MODE })
        .unwrap();
    layer.insert("bin", tar::Node::Symlink { target: "usr/bin".into() }).unwrap();
    // Big enough that the layer crosses several read buffers.
    layer
        .insert("usr/bin/big", tar::Node::File { data: (0..600_000u32).map(|i| i as u8).collect(), mode: 0o755 })
        .unwrap();
    let run = oci::RunConfig { cmd: vec!["sh".into()], ..Default::default() };
    let refs = vec![NETSHOOT.to_string(), AGNHOST.to_string()];
    let file = std::fs::File::create(dir.join("tiny.tar")).unwrap();
    let written = oci::write_layout(std::io::BufWriter::new(file), &layer.to_tar(), &run, &refs, "amd64").unwrap();
    let images = json!([{
        "name": "tiny", "refs": refs, "archive": "tiny.tar", "digest": written.manifest_digest, "size": written.size,
    }]);
    std::fs::write(dir.join("images.json"), serde_json::to_vec_pretty(&images).unwrap()).unwrap();
    written
}

struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str).unwrap_or_default()
    }
}

/// Sends one request on `conn` and reads its response (the body by Content-Length; none for HEAD).
async fn request(conn: &mut BufReader<TcpStream>, method: &str, target: &str, extra: &str) -> Reply {
    let req = format!("{method} {target} HTTP/1.1\r\nHost: mirror\r\nUser-Agent: test\r\n{extra}\r\n");
    conn.get_mut().write_all(req.as_bytes()).await.unwrap();
    let mut line = String::new();
    conn.read_line(&mut line).await.unwrap();
    let status: u16 = line.split(' ').nth(1).unwrap_or_else(|| panic!("status line {line:?}")).parse().unwrap();
    let mut headers = BTreeMap::new();
    loop {
        line.clear();
        conn.read_line(&mut line).await.unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        headers.insert(k.to_ascii_lowercase(), v.trim().to_string());
    }
    let len: usize = headers["content-length"].parse().unwrap();
    let mut body = vec![0; if method == "HEAD" { 0 } else { len }];
    conn.read_exact(&mut body).await.unwrap();
    Reply { status, headers, body }
}

async fn connect(addr: SocketAddr) -> BufReader<TcpStream> {
    BufReader::new(TcpStream::connect(addr).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_manifests_and_blobs_of_the_image_archives() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_image(dir.path());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(registry::serve(listener, dir.path().to_path_buf()));

    let mut conn = connect(addr).await;
    let base = request(&mut conn, "GET", "/v2/", "").await;
    assert_eq!(base.status, 200);
    assert_eq!(base.header("Docker-Distribution-API-Version"), "registry/2.0");
    let base = request(&mut conn, "HEAD", "/v2/", "").await;
    assert_eq!(base.status, 200);

    // containerd resolves a mirrored name with HEAD, then fetches the manifest by digest, on one connection.
    let path = "/v2/nicolaka/netshoot/manifests/latest?ns=docker.io";
    let head = request(&mut conn, "HEAD", path, "Accept: application/vnd.oci.image.manifest.v1+json\r\n").await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("Content-Type"), "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(head.header("Docker-Content-Digest"), written.manifest_digest);
    let get = request(&mut conn, "GET", path, "").await;
    assert_eq!(get.status, 200);
    assert_eq!(get.header("Content-Length"), head.header("Content-Length"));
    assert_eq!(sha256(&get.body), written.manifest_digest);
    let by_digest = request(
        &mut conn,
        "GET",
        &format!("/v2/nicolaka/netshoot/manifests/{}?ns=docker.io", written.manifest_digest),
        "",
    )
    .await;
    assert_eq!(by_digest.body, get.body);

    let manifest: Value = serde_json::from_slice(&get.body).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap();
    assert_eq!(layer_digest, written.layer_digest);
    let config =
        request(&mut conn, "GET", &format!("/v2/nicolaka/netshoot/blobs/{config_digest}?ns=docker.io"), "").await;
    assert_eq!(config.status, 200);
    assert_eq!(sha256(&config.body), config_digest);
    let config: Value = serde_json::from_slice(&config.body).unwrap();
    assert_eq!(config["rootfs"]["diff_ids"][0], layer_digest);

    let blob_path = format!("/v2/nicolaka/netshoot/blobs/{layer_digest}?ns=docker.io");
    let layer_head = request(&mut conn, "HEAD", &blob_path, "").await;
    assert_eq!(layer_head.status, 200);
    assert_eq!(layer_head.header("Docker-Content-Digest"), layer_digest);
    assert_eq!(layer_head.header("Content-Length"), manifest["layers"][0]["size"].to_string());
    let layer = request(&mut conn, "GET", &blob_path, "").await;
    assert_eq!(layer.status, 200);
    assert_eq!(sha256(&layer.body), layer_digest);
    let part = request(&mut conn, "GET", &blob_path, "Range: bytes=1000-\r\n").await;
    assert_eq!(part.status, 206);
    assert_eq!(part.body, layer.body[1000..]);

    // The second reference, by its own registry; and the ones the mirror does not have.
    let agnhost = request(&mut conn, "HEAD", "/v2/e2e-test-images/agnhost/manifests/2.55?ns=registry.k8s.io", "").await;
    assert_eq!(agnhost.header("Docker-Content-Digest"), written.manifest_digest);
    let missing = request(&mut conn, "GET", "/v2/nicolaka/netshoot/manifests/v9?ns=docker.io", "").await;
    assert_eq!(missing.status, 404);
    let error: Value = serde_json::from_slice(&missing.body).unwrap();
    assert_eq!(error["errors"][0]["code"], "MANIFEST_UNKNOWN");
    let wrong_ns = request(&mut conn, "HEAD", "/v2/nicolaka/netshoot/manifests/latest?ns=quay.io", "").await;
    assert_eq!(wrong_ns.status, 404);
    let no_blob = request(&mut conn, "GET", &format!("/v2/nicolaka/netshoot/blobs/{}", sha256(b"x")), "").await;
    assert_eq!(no_blob.status, 404);

    // Without ns (pulling 127.0.0.1:PORT/nicolaka/netshoot:latest directly), any registry host matches;
    // Connection: close is honoured.
    let mut other = connect(addr).await;
    let direct = request(&mut other, "GET", "/v2/nicolaka/netshoot/manifests/latest", "Connection: close\r\n").await;
    assert_eq!(sha256(&direct.body), written.manifest_digest);
    assert_eq!(direct.header("Connection"), "close");
    let mut rest = Vec::new();
    assert_eq!(other.read_to_end(&mut rest).await.unwrap(), 0, "the server closes the connection");

    server.abort();
    assert!(server.await.unwrap_err().is_cancelled());
}

#[tokio::test]
async fn fails_at_start_without_images() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = registry::serve(listener, dir.path().to_path_buf()).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert!(err.to_string().contains("make images"), "{err}");
}
