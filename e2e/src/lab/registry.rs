//! A read-only OCI distribution mirror for the lab's containerds, over plain HTTP/1.1.
//!
//! Why: a pod whose image has the tag `:latest` or none (`image: nicolaka/netshoot`) gets
//! `imagePullPolicy: Always`, so the kubelet asks containerd to pull it even though the lab imported it.
//! containerd's per-registry `hosts.toml` sends those resolves here, and this answers from the archives
//! `cargo xtask images` wrote: the images listed in `images.json` of one directory.
//!
//! Endpoints (the pull side of the distribution spec): `GET/HEAD /v2/`, `GET/HEAD
//! /v2/<name>/manifests/<tag|digest>`, `GET/HEAD /v2/<name>/blobs/<digest>` (with single byte ranges) and
//! `GET /v2/<name>/tags/list`; anything else is an error with the registry's JSON body. A mirror request
//! carries the repository without its registry host and names the host in `?ns=`
//! (`/v2/nicolaka/netshoot/manifests/latest?ns=docker.io`), matched against the references in
//! `images.json` (`docker.io/nicolaka/netshoot:latest`); without `ns` (pulling `127.0.0.1:5000/...`
//! directly) any registry host matches.
//!
//! Each archive is indexed once at start: the offset and length of every blob inside the tar, which is
//! streamed from the file on request. Rebuilt archives need a restart of the mirror.
//!
//! The request parsing, routing and lookups are pure ([`parse_head`], [`route`], [`Catalog::respond`]);
//! [`serve`] does the I/O.

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Longest request head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// A connection idle this long between requests is closed.
const IDLE: Duration = Duration::from_secs(120);

/// Serves the images of `images_dir/images.json` on `listener` until the future is dropped. Fails only
/// when the images cannot be read at start.
pub async fn serve(listener: TcpListener, images_dir: PathBuf) -> io::Result<()> {
    let catalog = tokio::task::spawn_blocking(move || Catalog::load(&images_dir))
        .await
        .map_err(|e| io::Error::other(format!("loading the images: {e}")))??;
    let catalog = Arc::new(catalog);
    // Owned here, so dropping the server ends its connections too.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        match listener.accept().await {
            Ok((stream, _)) => {
                connections.spawn(connection(stream, catalog.clone()));
            }
            // Out of descriptors or an aborted handshake: the listener itself is fine.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn connection(stream: TcpStream, catalog: Arc<Catalog>) {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    loop {
        let head = match tokio::time::timeout(IDLE, read_head(&mut read)).await {
            Ok(Ok(Some(head))) => head,
            _ => return,
        };
        let (response, head_only, close) = match parse_head(&head) {
            Ok(req) => (catalog.respond(&req), req.method == "HEAD", req.close),
            Err(e) => (error(400, "UNSUPPORTED", &e.to_string()), false, true),
        };
        if write_response(&mut write, response, head_only, close).await.is_err() || close {
            return;
        }
    }
}

/// Reads a request head up to its empty line; `None` when the peer closed between requests.
async fn read_head<R: tokio::io::AsyncBufRead + Unpin>(read: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    loop {
        let start = head.len();
        let n = (&mut *read).take((MAX_HEAD + 1 - start) as u64).read_until(b'\n', &mut head).await?;
        if n == 0 {
            return if head.is_empty() { Ok(None) } else { Err(io::ErrorKind::UnexpectedEof.into()) };
        }
        if head.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "request head too large"));
        }
        let line = &head[start..];
        if line == b"\r\n" || line == b"\n" {
            if start == 0 {
                // Blank lines before a request line are ignored (RFC 9112 §2.2).
                head.clear();
                continue;
            }
            return Ok(Some(head));
        }
    }
}

async fn write_response<W: tokio::io::AsyncWrite + Unpin>(
    out: &mut W,
    response: Response,
    head_only: bool,
    close: bool,
) -> io::Result<()> {
    let len = response.body.len();
    let mut head = format!("HTTP/1.1 {} {}\r\n", response.status, reason(response.status));
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {len}\r\n"));
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    match response.body {
        Body::Bytes(body) if !head_only => {
            bytes.extend_from_slice(&body);
            out.write_all(&bytes).await?;
        }
        Body::File { path, offset, len } if !head_only => {
            out.write_all(&bytes).await?;
            let mut file = tokio::fs::File::open(&path).await?;
            file.seek(SeekFrom::Start(offset)).await?;
            let mut body = BufReader::with_capacity(256 * 1024, file.take(len));
            let copied = tokio::io::copy_buf(&mut body, out).await?;
            if copied != len {
                // The archive shrank under us: the client sees a short body and the connection ends.
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        _ => out.write_all(&bytes).await?,
    }
    out.flush().await
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        416 => "Range Not Satisfiable",
        _ => "Unknown",
    }
}

/// A parsed request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path, percent-decoded.
    pub path: String,
    /// `ns` of the query: the registry host a mirror request is for.
    pub ns: Option<String>,
    /// The `Range` header.
    pub range: Option<String>,
    /// The connection ends after the response (`Connection: close`, HTTP/1.0, or a request body).
    pub close: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    #[error("malformed request line")]
    RequestLine,
    #[error("unsupported protocol {0}")]
    Version(String),
    #[error("malformed header line")]
    Header,
}

/// Parses a request head (request line and headers, through the empty line).
pub fn parse_head(head: &[u8]) -> Result<Request, HttpError> {
    let text = std::str::from_utf8(head).map_err(|_| HttpError::RequestLine)?;
    let mut lines = text.split('\n').map(|l| l.trim_end_matches('\r'));
    let mut parts = lines.next().ok_or(HttpError::RequestLine)?.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::RequestLine);
    };
    if method.is_empty() || !target.starts_with('/') {
        return Err(HttpError::RequestLine);
    }
    let mut close = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        other => return Err(HttpError::Version(other.to_string())),
    };
    let mut range = None;
    for line in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or(HttpError::Header)?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "range" => range = Some(value.to_string()),
            "connection" => {
                let tokens = value.split(',').map(|t| t.trim().to_ascii_lowercase());
                for t in tokens {
                    match t.as_str() {
                        "close" => close = true,
                        "keep-alive" => close = false,
                        _ => {}
                    }
                }
            }
            // Requests here have no body; one that has is answered and the connection closed, so its
            // body is never read as the next request.
            "content-length" if value != "0" => close = true,
            "transfer-encoding" => close = true,
            _ => {}
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let ns = query.split('&').find_map(|kv| kv.strip_prefix("ns=")).map(percent_decode).filter(|ns| !ns.is_empty());
    Ok(Request { method: method.to_string(), path: percent_decode(path), ns, range, close })
}

/// `%XX` decoded (invalid escapes are kept as they are).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a request path asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/v2/`: the API version check.
    Base,
    Manifest {
        name: &'a str,
        reference: &'a str,
    },
    Blob {
        name: &'a str,
        digest: &'a str,
    },
    Tags {
        name: &'a str,
    },
    Unknown,
}

/// Routes a (decoded) request path.
pub fn route(path: &str) -> Route<'_> {
    if path == "/v2" || path == "/v2/" {
        return Route::Base;
    }
    let Some(rest) = path.strip_prefix("/v2/") else { return Route::Unknown };
    let valid_name = |n: &str| !n.is_empty() && n.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    let valid_ref = |r: &str| !r.is_empty() && !r.contains('/');
    if let Some(name) = rest.strip_suffix("/tags/list")
        && valid_name(name)
    {
        return Route::Tags { name };
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/")
        && valid_name(name)
        && valid_ref(reference)
    {
        return Route::Manifest { name, reference };
    }
    if let Some((name, digest)) = rest.rsplit_once("/blobs/")
        && valid_name(name)
        && valid_ref(digest)
    {
        return Route::Blob { name, digest };
    }
    Route::Unknown
}

/// An image reference as a registry sees it: `docker.io/nicolaka/netshoot:latest` is domain
/// `docker.io`, repository `nicolaka/netshoot`, tag `latest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub domain: String,
    pub repository: String,
    pub tag: String,
}

/// Splits a reference, normalized as Docker does (`nicolaka/netshoot` is
/// `docker.io/nicolaka/netshoot:latest`, `busybox` is `docker.io/library/busybox:latest`). `None` for a
/// reference without a name or with a digest (the images here are named by tag).
pub fn parse_reference(reference: &str) -> Option<Reference> {
    if reference.contains('@') {
        return None;
    }
    let (name, tag) = match reference.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => (reference, "latest"),
    };
    let (domain, repository) = match name.split_once('/') {
        Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            (first.to_string(), rest.to_string())
        }
        _ => ("docker.io".to_string(), name.to_string()),
    };
    let repository =
        if domain == "docker.io" && !repository.contains('/') { format!("library/{repository}") } else { repository };
    if repository.is_empty() || tag.is_empty() || repository.split('/').any(str::is_empty) {
        return None;
    }
    Some(Reference { domain, repository, tag: tag.to_string() })
}

/// Where a blob is: `len` bytes at `offset` of an archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub offset: u64,
    pub len: u64,
}

/// The regular files of a tar archive, by name (`./` stripped), with where their data is.
/// Reads the headers only, seeking over the data. Understands ustar, PAX `path` records and GNU long names.
pub fn index_tar<R: Read + Seek>(mut r: R) -> io::Result<HashMap<String, Span>> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("not a tar archive: {what}"));
    let mut out = HashMap::new();
    let mut pos = 0u64;
    let mut long_name: Option<String> = None;
    let mut header = [0u8; 512];
    loop {
        match r.read_exact(&mut header) {
            Ok(()) => {}
            // An archive may end without its two zero blocks.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        pos += 512;
        if header.iter().all(|&b| b == 0) {
            break;
        }
        let stored = octal(&header[148..156]).ok_or_else(|| invalid("checksum field"))?;
        let sum: u64 =
            header.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { b as u64 }).sum();
        if stored != sum {
            return Err(invalid("header checksum mismatch"));
        }
        let size = size_field(&header[124..136]).ok_or_else(|| invalid("size field"))?;
        let data = pos;
        let padded = size.div_ceil(512) * 512;
        let kind = header[156];
        match kind {
            b'x' | b'L' => {
                let mut buf = vec![0; usize::try_from(size).map_err(|_| invalid("huge extended header"))?];
                r.read_exact(&mut buf)?;
                r.seek(SeekFrom::Current((padded - size) as i64))?;
                long_name = if kind == b'x' { pax_path(&buf) } else { Some(cstr(&buf)) };
            }
            _ => {
                let name = match long_name.take() {
                    Some(name) => name,
                    None => {
                        let name = cstr(&header[..100]);
                        let prefix =
                            if &header[257..262] == b"ustar" { cstr(&header[345..500]) } else { String::new() };
                        if prefix.is_empty() { name } else { format!("{prefix}/{name}") }
                    }
                };
                if kind == b'0' || kind == 0 {
                    out.insert(name.trim_start_matches("./").to_string(), Span { offset: data, len: size });
                }
                r.seek(SeekFrom::Current(padded as i64))?;
            }
        }
        pos += padded;
    }
    Ok(out)
}

fn cstr(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())]).into_owned()
}

fn octal(field: &[u8]) -> Option<u64> {
    let s = cstr(field);
    let s = s.trim_matches(|c: char| c == ' ' || c == '\0');
    if s.is_empty() { Some(0) } else { u64::from_str_radix(s, 8).ok() }
}

/// A size field: octal, or GNU base-256 when its high bit is set.
fn size_field(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        let mut v: u64 = (field[0] & 0x7f) as u64;
        for &b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(b as u64)?;
        }
        return Some(v);
    }
    octal(field)
}

/// The `path` record of PAX extended header data.
fn pax_path(data: &[u8]) -> Option<String> {
    let mut rest = data;
    let mut path = None;
    while !rest.is_empty() {
        let space = rest.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
        if len <= space || len > rest.len() {
            return None;
        }
        let record = &rest[space + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(value) = record.strip_prefix(b"path=") {
            path = Some(String::from_utf8_lossy(value).into_owned());
        }
        rest = &rest[len..];
    }
    path
}

/// One image the mirror serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    pub refs: Vec<Reference>,
    pub manifest_digest: String,
    pub manifest: Vec<u8>,
    pub media_type: String,
    pub archive: PathBuf,
    /// Every blob of the archive by digest (`sha256:<hex>`).
    pub blobs: HashMap<String, Span>,
}

/// The images the mirror serves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog {
    pub images: Vec<Image>,
}

/// A response: status, headers (without Content-Length, which the body gives) and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    Bytes(Vec<u8>),
    /// `len` bytes at `offset` of the file at `path`.
    File {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
}

impl Body {
    fn len(&self) -> u64 {
        match self {
            Body::Bytes(b) => b.len() as u64,
            Body::File { len, .. } => *len,
        }
    }
}

/// A registry error response: `{"errors":[{"code","message","detail"}]}`.
pub fn error(status: u16, code: &str, message: &str) -> Response {
    let body = json!({"errors": [{"code": code, "message": message, "detail": {}}]});
    Response {
        status,
        headers: vec![("Content-Type", "application/json".into()), api_version()],
        body: Body::Bytes(serde_json::to_vec(&body).expect("a JSON value always serializes")),
    }
}

fn api_version() -> (&'static str, String) {
    ("Docker-Distribution-API-Version", "registry/2.0".to_string())
}

/// What a `Range` header asks of a body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Range {
    /// No single byte range (absent, another unit, or several ranges): the whole body.
    Whole,
    /// Bytes `first..=last`.
    Part(u64, u64),
    /// A range outside the body: 416.
    Unsatisfiable,
}

/// The range of `bytes=a-b`, `bytes=a-` or `bytes=-n` within `total` bytes.
pub fn parse_range(header: &str, total: u64) -> Range {
    let Some(spec) = header.trim().strip_prefix("bytes=") else { return Range::Whole };
    if spec.contains(',') {
        return Range::Whole;
    }
    let Some((first, last)) = spec.split_once('-') else { return Range::Unsatisfiable };
    let (first, last) = (first.trim(), last.trim());
    let bounds = if first.is_empty() {
        // The last n bytes.
        last.parse::<u64>().ok().filter(|&n| n > 0 && total > 0).map(|n| (total.saturating_sub(n), total - 1))
    } else {
        let end = if last.is_empty() { Some(u64::MAX) } else { last.parse::<u64>().ok() };
        first.parse::<u64>().ok().zip(end).map(|(start, end)| (start, end.min(total.saturating_sub(1))))
    };
    match bounds {
        Some((start, end)) if start < total && start <= end => Range::Part(start, end),
        _ => Range::Unsatisfiable,
    }
}

impl Catalog {
    /// Reads `dir/images.json` and indexes every archive it lists.
    pub fn load(dir: &Path) -> io::Result<Catalog> {
        let manifest_path = dir.join("images.json");
        let text = std::fs::read(&manifest_path).map_err(|e| {
            io::Error::new(e.kind(), format!("{}: {e} (build the images: make images)", manifest_path.display()))
        })?;
        let entries: Value = serde_json::from_slice(&text)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", manifest_path.display())))?;
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        let mut images = Vec::new();
        for entry in entries.as_array().ok_or_else(|| invalid(format!("{}: not a list", manifest_path.display())))? {
            let field = |k: &str| entry[k].as_str().map(str::to_string);
            let (Some(archive), Some(digest)) = (field("archive"), field("digest")) else {
                return Err(invalid(format!("{}: an entry without archive or digest", manifest_path.display())));
            };
            let refs = entry["refs"].as_array().map(Vec::as_slice).unwrap_or_default();
            let refs: Vec<Reference> = refs.iter().filter_map(Value::as_str).filter_map(parse_reference).collect();
            let archive = dir.join(archive);
            let open = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", archive.display()));
            let mut file = std::fs::File::open(&archive).map_err(open)?;
            let files = index_tar(io::BufReader::new(&mut file)).map_err(open)?;
            let blobs: HashMap<String, Span> = files
                .into_iter()
                .filter_map(|(name, span)| Some((format!("sha256:{}", name.strip_prefix("blobs/sha256/")?), span)))
                .collect();
            let span = blobs
                .get(&digest)
                .ok_or_else(|| invalid(format!("{}: no manifest blob {digest}", archive.display())))?;
            let mut manifest = vec![0; span.len as usize];
            file.seek(SeekFrom::Start(span.offset)).and_then(|_| file.read_exact(&mut manifest)).map_err(open)?;
            let parsed: Value = serde_json::from_slice(&manifest)
                .map_err(|e| invalid(format!("{}: manifest {digest}: {e}", archive.display())))?;
            let layers = parsed["layers"].as_array().map(Vec::as_slice).unwrap_or_default();
            for d in std::iter::once(&parsed["config"]).chain(layers).filter_map(|d| d["digest"].as_str()) {
                if !blobs.contains_key(d) {
                    return Err(invalid(format!("{}: manifest {digest} names blob {d}, not in it", archive.display())));
                }
            }
            let media_type = parsed["mediaType"].as_str().unwrap_or(MEDIA_OCI_MANIFEST).to_string();
            images.push(Image { refs, manifest_digest: digest, manifest, media_type, archive, blobs });
        }
        Ok(Catalog { images })
    }

    /// The images with a reference in repository `name` (of registry `ns`, when given).
    fn in_repository<'s, 'q>(
        &'s self,
        ns: Option<&'q str>,
        name: &'q str,
    ) -> impl Iterator<Item = (&'s Image, &'s Reference)> + use<'s, 'q> {
        self.images.iter().flat_map(move |image| {
            image
                .refs
                .iter()
                .filter(move |r| r.repository == name && ns.is_none_or(|ns| r.domain == ns))
                .map(move |r| (image, r))
        })
    }

    /// The image `reference` (a tag or a manifest digest) names in repository `name`.
    pub fn manifest(&self, ns: Option<&str>, name: &str, reference: &str) -> Option<&Image> {
        self.in_repository(ns, name)
            .find(
                |(image, r)| {
                    if reference.contains(':') { image.manifest_digest == reference } else { r.tag == reference }
                },
            )
            .map(|(image, _)| image)
    }

    /// Where blob `digest` of repository `name` is.
    pub fn blob(&self, ns: Option<&str>, name: &str, digest: &str) -> Option<(&Path, Span)> {
        self.in_repository(ns, name)
            .find_map(|(image, _)| image.blobs.get(digest).map(|span| (image.archive.as_path(), *span)))
    }

    /// The response to `req` (the body of a GET; a HEAD sends the same head without it).
    pub fn respond(&self, req: &Request) -> Response {
        if req.method != "GET" && req.method != "HEAD" {
            return error(405, "UNSUPPORTED", "this registry is a read-only mirror");
        }
        let ns = req.ns.as_deref();
        match route(&req.path) {
            Route::Base => Response { status: 200, headers: vec![api_version()], body: Body::Bytes(b"{}".to_vec()) },
            Route::Manifest { name, reference } => match self.manifest(ns, name, reference) {
                Some(image) => Response {
                    status: 200,
                    headers: vec![
                        ("Content-Type", image.media_type.clone()),
                        ("Docker-Content-Digest", image.manifest_digest.clone()),
                        api_version(),
                    ],
                    body: Body::Bytes(image.manifest.clone()),
                },
                None => error(404, "MANIFEST_UNKNOWN", "manifest unknown"),
            },
            Route::Blob { name, digest } => match self.blob(ns, name, digest) {
                Some((path, span)) => {
                    let mut headers = vec![
                        ("Content-Type", "application/octet-stream".to_string()),
                        ("Docker-Content-Digest", digest.to_string()),
                        ("Accept-Ranges", "bytes".to_string()),
                        api_version(),
                    ];
                    let range = req.range.as_deref().map_or(Range::Whole, |h| parse_range(h, span.len));
                    let (status, offset, len) = match range {
                        Range::Whole => (200, span.offset, span.len),
                        Range::Part(start, end) => {
                            headers.push(("Content-Range", format!("bytes {start}-{end}/{}", span.len)));
                            (206, span.offset + start, end - start + 1)
                        }
                        Range::Unsatisfiable => {
                            let mut e = error(416, "BLOB_UNKNOWN", "range not satisfiable");
                            e.headers.push(("Content-Range", format!("bytes */{}", span.len)));
                            return e;
                        }
                    };
                    Response { status, headers, body: Body::File { path: path.to_path_buf(), offset, len } }
                }
                None => error(404, "BLOB_UNKNOWN", "blob unknown to registry"),
            },
            Route::Tags { name } => {
                let mut tags: Vec<String> = self.in_repository(ns, name).map(|(_, r)| r.tag.clone()).collect();
                if tags.is_empty() {
                    return error(404, "NAME_UNKNOWN", "repository name not known to registry");
                }
                tags.sort();
                tags.dedup();
                let body = serde_json::to_vec(&json!({"name": name, "tags": tags})).expect("JSON serializes");
                Response {
                    status: 200,
                    headers: vec![("Content-Type", "application/json".into()), api_version()],
                    body: Body::Bytes(body),
                }
            }
            Route::Unknown => error(404, "UNSUPPORTED", "not an endpoint of this registry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(domain: &str, repository: &str, tag: &str) -> Reference {
        Reference { domain: domain.into(), repository: repository.into(), tag: tag.into() }
    }

    #[test]
    fn references() {
        let p = |r: &str| parse_reference(r);
        assert_eq!(
            p("docker.io/nicolaka/netshoot:latest"),
            Some(reference("docker.io", "nicolaka/netshoot", "latest"))
        );
        assert_eq!(p("nicolaka/netshoot"), Some(reference("docker.io", "nicolaka/netshoot", "latest")));
        assert_eq!(p("busybox:1.36"), Some(reference("docker.io", "library/busybox", "1.36")));
        assert_eq!(
            p("registry.k8s.io/e2e-test-images/agnhost:2.55"),
            Some(reference("registry.k8s.io", "e2e-test-images/agnhost", "2.55"))
        );
        assert_eq!(p("localhost:5000/a/b"), Some(reference("localhost:5000", "a/b", "latest")));
        assert_eq!(p("127.0.0.1:5000/a:v1"), Some(reference("127.0.0.1:5000", "a", "v1")));
        assert_eq!(p("ghcr.io/x@sha256:00"), None);
        assert_eq!(p("ghcr.io/"), None);
    }

    #[test]
    fn routes() {
        assert_eq!(route("/v2/"), Route::Base);
        assert_eq!(route("/v2"), Route::Base);
        assert_eq!(
            route("/v2/nicolaka/netshoot/manifests/latest"),
            Route::Manifest { name: "nicolaka/netshoot", reference: "latest" }
        );
        assert_eq!(route("/v2/a/b/c/manifests/sha256:ab"), Route::Manifest { name: "a/b/c", reference: "sha256:ab" });
        assert_eq!(route("/v2/a/blobs/sha256:ab"), Route::Blob { name: "a", digest: "sha256:ab" });
        // A repository may itself be called "blobs" or "manifests".
        assert_eq!(route("/v2/x/blobs/manifests/t"), Route::Manifest { name: "x/blobs", reference: "t" });
        assert_eq!(route("/v2/a/b/tags/list"), Route::Tags { name: "a/b" });
        for unknown in
            ["/", "/v2/manifests/x", "/v2/a/manifests/", "/v2/a/blobs/uploads/", "/v2/../manifests/x", "/v3/"]
        {
            assert_eq!(route(unknown), Route::Unknown, "{unknown}");
        }
    }

    #[test]
    fn request_heads() {
        let head = b"HEAD /v2/nicolaka/netshoot/manifests/latest?ns=docker.io HTTP/1.1\r\nHost: x\r\n\
                     Accept: application/vnd.oci.image.manifest.v1+json\r\nRange: bytes=0-9\r\n\r\n";
        let req = parse_head(head).unwrap();
        assert_eq!(req.method, "HEAD");
        assert_eq!(req.path, "/v2/nicolaka/netshoot/manifests/latest");
        assert_eq!(req.ns.as_deref(), Some("docker.io"));
        assert_eq!(req.range.as_deref(), Some("bytes=0-9"));
        assert!(!req.close);

        let req = parse_head(
            b"GET /v2/a/manifests/sha256%3Aab?x=1&ns=localhost%3A5000 HTTP/1.1\r\nConnection: Close\r\n\r\n",
        )
        .unwrap();
        assert_eq!(req.path, "/v2/a/manifests/sha256:ab");
        assert_eq!(req.ns.as_deref(), Some("localhost:5000"));
        assert!(req.close);
        assert!(parse_head(b"GET /v2/ HTTP/1.0\r\n\r\n").unwrap().close);
        assert!(parse_head(b"PUT /v2/a/blobs/x HTTP/1.1\r\nContent-Length: 3\r\n\r\n").unwrap().close);
        assert_eq!(parse_head(b"GET /v2/\r\n\r\n"), Err(HttpError::RequestLine));
        assert_eq!(parse_head(b"GET v2 HTTP/1.1\r\n\r\n"), Err(HttpError::RequestLine));
        assert_eq!(parse_head(b"GET /v2/ HTTP/2\r\n\r\n"), Err(HttpError::Version("HTTP/2".into())));
        assert_eq!(parse_head(b"GET /v2/ HTTP/1.1\r\nbroken\r\n\r\n"), Err(HttpError::Header));
        assert_eq!(percent_decode("a%2fb%zz%4"), "a/b%zz%4");
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Range::Part(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), Range::Part(90, 99));
        assert_eq!(parse_range("bytes=90-200", 100), Range::Part(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), Range::Part(90, 99));
        assert_eq!(parse_range("bytes=-200", 100), Range::Part(0, 99));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Range::Whole);
        assert_eq!(parse_range("items=0-1", 100), Range::Whole);
        for bad in ["bytes=100-", "bytes=5-4", "bytes=x-4", "bytes=-0", "bytes=5"] {
            assert_eq!(parse_range(bad, 100), Range::Unsatisfiable, "{bad}");
        }
        assert_eq!(parse_range("bytes=0-", 0), Range::Unsatisfiable);
    }

    /// A ustar header for the tests.
    fn header(name: &str, kind: u8, size: usize) -> [u8; 512] {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        h
    }

    fn entry(out: &mut Vec<u8>, name: &str, kind: u8, data: &[u8]) {
        out.extend_from_slice(&header(name, kind, data.len()));
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }

    #[test]
    fn tar_index() {
        let long = format!("blobs/sha256/{}", "a".repeat(100));
        // " path=" and "\n" around the value, and 3 digits of length.
        let pax = format!("{} path={long}\n", long.len() + 7 + 3);
        assert_eq!(pax.len(), pax.split(' ').next().unwrap().parse::<usize>().unwrap());
        let mut tar = Vec::new();
        entry(&mut tar, "blobs/", b'5', b"");
        entry(&mut tar, "./index.json", b'0', b"{}");
        entry(&mut tar, "PaxHeader", b'x', pax.as_bytes());
        entry(&mut tar, "truncated", b'0', &[7; 600]);
        entry(&mut tar, "././@LongLink", b'L', b"gnu/long/name\0");
        entry(&mut tar, "gnu", b'0', b"g");
        entry(&mut tar, "link", b'2', b"");
        tar.extend_from_slice(&[0; 1024]);
        let index = index_tar(io::Cursor::new(&tar)).unwrap();
        assert_eq!(index.len(), 3, "{index:?}");
        let read = |s: Span| &tar[s.offset as usize..(s.offset + s.len) as usize];
        assert_eq!(read(index["index.json"]), b"{}");
        assert_eq!(read(index[&long]), &[7; 600][..]);
        assert_eq!(read(index["gnu/long/name"]), b"g");

        let mut bad = tar.clone();
        bad[0] ^= 1;
        assert_eq!(index_tar(io::Cursor::new(&bad)).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    fn catalog() -> Catalog {
        let blobs = [("sha256:m", Span { offset: 512, len: 4 }), ("sha256:l", Span { offset: 2048, len: 100 })];
        Catalog {
            images: vec![Image {
                refs: vec![reference("docker.io", "nicolaka/netshoot", "latest"), reference("ghcr.io", "x/y", "v1")],
                manifest_digest: "sha256:m".into(),
                manifest: b"{\"m\"}".to_vec(),
                media_type: MEDIA_OCI_MANIFEST.into(),
                archive: "/images/netshoot.tar".into(),
                blobs: blobs.into_iter().map(|(d, s)| (d.to_string(), s)).collect(),
            }],
        }
    }

    fn get(method: &str, path: &str, ns: Option<&str>, range: Option<&str>) -> Response {
        let req = Request {
            method: method.into(),
            path: path.into(),
            ns: ns.map(Into::into),
            range: range.map(Into::into),
            close: false,
        };
        catalog().respond(&req)
    }

    fn header_of<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
        r.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    fn error_code(r: &Response) -> String {
        let Body::Bytes(body) = &r.body else { panic!("an error has a JSON body") };
        let v: Value = serde_json::from_slice(body).unwrap();
        v["errors"][0]["code"].as_str().unwrap().to_string()
    }

    #[test]
    fn responses() {
        let base = get("GET", "/v2/", None, None);
        assert_eq!(base.status, 200);
        assert_eq!(header_of(&base, "Docker-Distribution-API-Version"), Some("registry/2.0"));

        for ns in [Some("docker.io"), None] {
            let m = get("HEAD", "/v2/nicolaka/netshoot/manifests/latest", ns, None);
            assert_eq!(m.status, 200);
            assert_eq!(header_of(&m, "Content-Type"), Some(MEDIA_OCI_MANIFEST));
            assert_eq!(header_of(&m, "Docker-Content-Digest"), Some("sha256:m"));
            assert_eq!(m.body, Body::Bytes(b"{\"m\"}".to_vec()));
        }
        assert_eq!(get("GET", "/v2/nicolaka/netshoot/manifests/sha256:m", Some("docker.io"), None).status, 200);
        assert_eq!(get("GET", "/v2/x/y/manifests/v1", Some("ghcr.io"), None).status, 200);
        for (path, ns) in [
            ("/v2/nicolaka/netshoot/manifests/latest", Some("ghcr.io")),
            ("/v2/nicolaka/netshoot/manifests/v1", None),
            ("/v2/x/y/manifests/latest", None),
            ("/v2/nicolaka/netshoot/manifests/sha256:l", None),
        ] {
            let r = get("GET", path, ns, None);
            assert_eq!((r.status, error_code(&r)), (404, "MANIFEST_UNKNOWN".to_string()), "{path} {ns:?}");
        }

        let blob = get("GET", "/v2/nicolaka/netshoot/blobs/sha256:l", Some("docker.io"), None);
        assert_eq!(blob.status, 200);
        assert_eq!(blob.body, Body::File { path: "/images/netshoot.tar".into(), offset: 2048, len: 100 });
        assert_eq!(header_of(&blob, "Docker-Content-Digest"), Some("sha256:l"));
        let part = get("GET", "/v2/nicolaka/netshoot/blobs/sha256:l", None, Some("bytes=10-19"));
        assert_eq!(part.status, 206);
        assert_eq!(part.body, Body::File { path: "/images/netshoot.tar".into(), offset: 2058, len: 10 });
        assert_eq!(header_of(&part, "Content-Range"), Some("bytes 10-19/100"));
        assert_eq!(get("GET", "/v2/nicolaka/netshoot/blobs/sha256:l", None, Some("bytes=100-")).status, 416);
        let unknown = get("GET", "/v2/nicolaka/netshoot/blobs/sha256:zz", None, None);
        assert_eq!((unknown.status, error_code(&unknown)), (404, "BLOB_UNKNOWN".to_string()));
        assert_eq!(get("GET", "/v2/other/blobs/sha256:l", None, None).status, 404);

        let tags = get("GET", "/v2/x/y/tags/list", None, None);
        assert_eq!(tags.body, Body::Bytes(br#"{"name":"x/y","tags":["v1"]}"#.to_vec()));
        let put = get("PUT", "/v2/x/y/manifests/v2", None, None);
        assert_eq!((put.status, error_code(&put)), (405, "UNSUPPORTED".to_string()));
        assert_eq!(get("GET", "/metrics", None, None).status, 404);
    }
}
