//! `cargo xtask manifests [--check]`: writes (or, with `--check`, compares) every generated install file:
//! `crds/*.yaml`, `operator.yaml`, `custom-resources.yaml` and the Helm chart `charts/tabby-operator`.
//! These files are never edited by hand.
//!
//! `cargo xtask images [...]`: builds the lab's container images without a registry or an engine
//! (see [`images`]).

mod chart;
mod images;
mod install;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// A generated file: its path relative to the repository root and its content.
pub struct Generated {
    pub path: PathBuf,
    pub content: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("serializing {0}: {1}")]
    Yaml(&'static str, serde_yaml::Error),
}

const USAGE: &str = "usage: cargo xtask manifests [--check]

  manifests          regenerate crds/, operator.yaml, custom-resources.yaml and charts/tabby-operator
  manifests --check  exit 1 when a committed file differs from what the Rust types generate
  images [...]       build the lab's container images (OCI layout archives and images.json); see below

";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the repository").to_path_buf();
    if args.first().map(String::as_str) == Some("images") {
        return match images::run(&root, &args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e @ images::ImageError::Usage(_)) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let check = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["manifests"] => false,
        ["manifests", "--check"] => true,
        _ => {
            eprintln!("{USAGE}{}", images::USAGE);
            return ExitCode::from(2);
        }
    };
    match run(&root, check) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn generate() -> Result<Vec<Generated>, Error> {
    let mut files = install::files()?;
    files.extend(chart::files()?);
    Ok(files)
}

/// Directories whose every file is generated, so a file there that is no longer generated is stale.
const OWNED_DIRS: &[&str] = &["crds", "charts/tabby-operator"];

fn run(root: &Path, check: bool) -> Result<bool, Error> {
    let files = generate()?;
    let mut stale = Vec::new();
    for dir in OWNED_DIRS {
        for existing in walk(&root.join(dir)) {
            let rel = existing.strip_prefix(root).expect("walked below root").to_path_buf();
            if !files.iter().any(|f| f.path == rel) {
                stale.push(rel);
            }
        }
    }
    let mut differ = Vec::new();
    for file in &files {
        let path = root.join(&file.path);
        let current = std::fs::read_to_string(&path).ok();
        if current.as_deref() == Some(file.content.as_str()) {
            continue;
        }
        if check {
            differ.push(file.path.clone());
        } else {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| Error::Io(parent.to_path_buf(), e))?;
            }
            std::fs::write(&path, &file.content).map_err(|e| Error::Io(path.clone(), e))?;
            println!("wrote {}", file.path.display());
        }
    }
    if check {
        for path in &differ {
            eprintln!("differs from the generated version: {}", path.display());
        }
        for path in &stale {
            eprintln!("no longer generated: {}", path.display());
        }
        if !differ.is_empty() || !stale.is_empty() {
            eprintln!("run `make manifests` and commit the result");
            return Ok(false);
        }
        println!("{} generated files are up to date", files.len());
    } else {
        for path in &stale {
            let full = root.join(path);
            std::fs::remove_file(&full).map_err(|e| Error::Io(full.clone(), e))?;
            println!("removed {}", path.display());
        }
    }
    Ok(true)
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// Serializes objects as a YAML stream, each document introduced by `---`.
pub fn yaml_stream(what: &'static str, objects: &[serde_json::Value]) -> Result<String, Error> {
    let mut out = String::new();
    for object in objects {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(object).map_err(|e| Error::Yaml(what, e))?);
    }
    Ok(out)
}
