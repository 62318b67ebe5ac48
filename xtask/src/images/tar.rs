//! A reproducible tar writer and the file tree of an image layer.
//!
//! Every entry is written with mtime 0, uid/gid 0, empty user and group names and the mode its [`Node`]
//! carries, in the byte order of its path, so the same tree always gives the same bytes. Names that do not
//! fit a ustar header (100 bytes, or 155 + 100 split at a `/`) and long symlink targets go in a PAX
//! extended header, as Go's `archive/tar` (containerd) and GNU tar read them.
//!
//! Pure: no file system access. Shared with the registry mirror's integration test in `e2e`, which writes
//! its fixture with this code, so it depends on nothing but `std` and `thiserror`.

use std::collections::BTreeMap;
use std::io::{self, Write};

/// Mode of directories, executables and programs.
pub const EXEC_MODE: u32 = 0o755;
/// Mode of other regular files.
pub const FILE_MODE: u32 = 0o644;
/// Mode of symbolic links (ignored by every reader, written as tar writers do).
pub const LINK_MODE: u32 = 0o777;

const BLOCK: usize = 512;

/// One entry of a layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Dir { mode: u32 },
    File { data: Vec<u8>, mode: u32 },
    Symlink { target: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    #[error("invalid path in an image: {0:?}")]
    BadPath(String),
    #[error("{0}: a parent of this path is already in the image and is not a directory")]
    ParentNotDir(String),
    #[error("{0}: already in the image with other content")]
    Conflict(String),
}

/// The files of a layer, keyed by their path relative to `/` (`usr/bin/bash`). Parents are created as
/// directories (mode 0755) when a path is inserted below them; a path below a symlink is refused, so every
/// file sits at its canonical path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
}

impl Tree {
    pub fn new() -> Tree {
        Tree::default()
    }

    /// Inserts `node` at `path` (absolute or relative; `/usr/bin/x` and `usr/bin/x` are the same entry).
    /// Inserting what is already there is a no-op; a directory over a directory sets its mode.
    pub fn insert(&mut self, path: &str, node: Node) -> Result<(), TreeError> {
        let path = normalize(path)?;
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            let parent = &path[..end + i];
            match self.nodes.get(parent) {
                None => {
                    self.nodes.insert(parent.to_string(), Node::Dir { mode: EXEC_MODE });
                }
                Some(Node::Dir { .. }) => {}
                Some(_) => return Err(TreeError::ParentNotDir(path)),
            }
            end += i + 1;
        }
        match (self.nodes.get_mut(&path), node) {
            (None, node) => {
                self.nodes.insert(path, node);
            }
            (Some(Node::Dir { mode }), Node::Dir { mode: new }) => *mode = new,
            (Some(existing), node) if *existing == node => {}
            (Some(_), _) => return Err(TreeError::Conflict(path)),
        }
        Ok(())
    }

    /// Every entry in the order it is written.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Node)> {
        self.nodes.iter().map(|(path, node)| (path.as_str(), node))
    }

    /// Writes the tree as a tar archive.
    pub fn write_tar<W: Write>(&self, mut out: W) -> io::Result<W> {
        for (path, node) in &self.nodes {
            match node {
                Node::Dir { mode } => write_header(&mut out, &format!("{path}/"), b'5', 0, *mode, "")?,
                Node::File { data, mode } => write_file(&mut out, path, data, *mode)?,
                Node::Symlink { target } => write_header(&mut out, path, b'2', 0, LINK_MODE, target)?,
            }
        }
        finish(&mut out)?;
        Ok(out)
    }

    /// The tree as tar bytes.
    pub fn to_tar(&self) -> Vec<u8> {
        self.write_tar(Vec::new()).expect("writing to a Vec cannot fail")
    }
}

/// Shorthands for tests.
#[cfg(test)]
impl Tree {
    pub fn dir(&mut self, path: &str, mode: u32) -> Result<(), TreeError> {
        self.insert(path, Node::Dir { mode })
    }

    pub fn file(&mut self, path: &str, data: Vec<u8>, mode: u32) -> Result<(), TreeError> {
        self.insert(path, Node::File { data, mode })
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<(), TreeError> {
        self.insert(path, Node::Symlink { target: target.to_string() })
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path.trim_start_matches('/'))
    }
}

/// `path` relative to `/`, without empty, `.` or `..` components.
fn normalize(path: &str) -> Result<String, TreeError> {
    let rel = path.trim_start_matches('/').trim_end_matches('/');
    if rel.is_empty() || rel.split('/').any(|c| c.is_empty() || c == "." || c == "..") || rel.contains('\0') {
        return Err(TreeError::BadPath(path.to_string()));
    }
    Ok(rel.to_string())
}

/// Writes a regular file entry: header, data, padding to the block size.
pub fn write_file<W: Write>(out: &mut W, name: &str, data: &[u8], mode: u32) -> io::Result<()> {
    write_header(out, name, b'0', data.len() as u64, mode, "")?;
    out.write_all(data)?;
    pad(out, data.len() as u64)
}

/// Ends an archive: two zero blocks.
pub fn finish<W: Write>(out: &mut W) -> io::Result<()> {
    out.write_all(&[0; 2 * BLOCK])
}

fn pad<W: Write>(out: &mut W, len: u64) -> io::Result<()> {
    let rem = (len % BLOCK as u64) as usize;
    if rem != 0 {
        out.write_all(&[0; BLOCK][rem..])?;
    }
    Ok(())
}

/// Writes the header of an entry (`kind`: `0` file, `2` symlink, `5` directory), preceded by a PAX
/// extended header when the name or the link target does not fit.
pub fn write_header<W: Write>(out: &mut W, name: &str, kind: u8, size: u64, mode: u32, link: &str) -> io::Result<()> {
    let split = split_name(name);
    let mut pax = String::new();
    if split.is_none() {
        pax.push_str(&pax_record("path", name));
    }
    if link.len() > 100 {
        pax.push_str(&pax_record("linkpath", link));
    }
    if !pax.is_empty() {
        out.write_all(&header("././@PaxHeader", "", b'x', pax.len() as u64, FILE_MODE, "")?)?;
        out.write_all(pax.as_bytes())?;
        pad(out, pax.len() as u64)?;
    }
    // With a PAX header the ustar fields carry a truncated copy, as GNU tar writes them.
    let (prefix, short) = split.unwrap_or(("", truncate(name, 100)));
    out.write_all(&header(short, prefix, kind, size, mode, truncate(link, 100))?)
}

/// Splits a name into ustar (prefix, name) fields, or `None` when only PAX can hold it.
fn split_name(name: &str) -> Option<(&str, &str)> {
    if name.len() <= 100 {
        return Some(("", name));
    }
    // The prefix ends at a `/` (not written), the rest fits 100 bytes, the prefix 155.
    let body = name.trim_end_matches('/');
    body.match_indices('/')
        .map(|(i, _)| i)
        .find(|&i| i <= 155 && name.len() - i - 1 <= 100 && i > 0)
        .map(|i| (&name[..i], &name[i + 1..]))
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// One PAX record: `<length> <key>=<value>\n`, the length counting itself.
fn pax_record(key: &str, value: &str) -> String {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    format!("{len} {key}={value}\n")
}

fn header(name: &str, prefix: &str, kind: u8, size: u64, mode: u32, link: &str) -> io::Result<[u8; BLOCK]> {
    if size >= 1 << 33 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{name}: too large for a tar entry")));
    }
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], mode as u64);
    octal(&mut h[108..116], 0); // uid
    octal(&mut h[116..124], 0); // gid
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 0); // mtime
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    octal(&mut h[329..337], 0); // devmajor
    octal(&mut h[337..345], 0); // devminor
    h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    Ok(h)
}

/// Zero-padded octal, NUL-terminated, filling `field`.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    field[..digits].copy_from_slice(format!("{value:0digits$o}").as_bytes());
    field[digits] = 0;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Entries of a tar archive: (name, typeflag, mode, data, link), PAX records applied.
    pub fn read_tar(bytes: &[u8]) -> Vec<(String, u8, u32, Vec<u8>, String)> {
        let field = |h: &[u8]| String::from_utf8(h.iter().take_while(|&&b| b != 0).copied().collect()).unwrap();
        let num = |h: &[u8]| u64::from_str_radix(field(h).trim(), 8).unwrap();
        let mut out = Vec::new();
        let mut pos = 0;
        let mut pax_path = None;
        let mut pax_link = None;
        while pos + BLOCK <= bytes.len() {
            let h = &bytes[pos..pos + BLOCK];
            if h.iter().all(|&b| b == 0) {
                break;
            }
            let stored: u32 = num(&h[148..156]) as u32;
            let sum: u32 =
                h.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { 32 } else { b as u32 }).sum();
            assert_eq!(stored, sum, "checksum");
            assert_eq!(&h[257..265], b"ustar\x0000");
            let size = num(&h[124..136]) as usize;
            let data = bytes[pos + BLOCK..pos + BLOCK + size].to_vec();
            pos += BLOCK + size.div_ceil(BLOCK) * BLOCK;
            if h[156] == b'x' {
                for rec in String::from_utf8(data).unwrap().lines() {
                    let kv = rec.split_once(' ').unwrap().1;
                    let (k, v) = kv.split_once('=').unwrap();
                    match k {
                        "path" => pax_path = Some(v.to_string()),
                        "linkpath" => pax_link = Some(v.to_string()),
                        _ => {}
                    }
                }
                continue;
            }
            assert_eq!(num(&h[108..116]), 0, "uid");
            assert_eq!(num(&h[116..124]), 0, "gid");
            assert_eq!(num(&h[136..148]), 0, "mtime");
            let prefix = field(&h[345..500]);
            let name = match (pax_path.take(), prefix.is_empty()) {
                (Some(p), _) => p,
                (None, true) => field(&h[..100]),
                (None, false) => format!("{prefix}/{}", field(&h[..100])),
            };
            let link = pax_link.take().unwrap_or_else(|| field(&h[157..257]));
            out.push((name, h[156], num(&h[100..108]) as u32, data, link));
        }
        out
    }

    #[test]
    fn parents_are_directories_and_entries_sorted() {
        let mut t = Tree::new();
        t.file("/usr/bin/b", b"b".to_vec(), EXEC_MODE).unwrap();
        t.symlink("/bin", "usr/bin").unwrap();
        t.dir("/tmp", 0o1777).unwrap();
        t.file("usr/bin-x", b"x".to_vec(), FILE_MODE).unwrap();
        let entries = read_tar(&t.to_tar());
        let names: Vec<_> = entries.iter().map(|e| (e.0.as_str(), e.1, e.2)).collect();
        assert_eq!(
            names,
            [
                ("bin", b'2', LINK_MODE),
                ("tmp/", b'5', 0o1777),
                ("usr/", b'5', EXEC_MODE),
                ("usr/bin/", b'5', EXEC_MODE),
                ("usr/bin-x", b'0', FILE_MODE),
                ("usr/bin/b", b'0', EXEC_MODE),
            ]
        );
        assert_eq!(entries[0].4, "usr/bin");
        assert_eq!(entries[5].3, b"b");
    }

    #[test]
    fn insertion_order_does_not_change_the_bytes() {
        let mut a = Tree::new();
        a.file("etc/passwd", b"root".to_vec(), FILE_MODE).unwrap();
        a.symlink("lib", "usr/lib").unwrap();
        a.file("usr/lib/libc.so.6", vec![7; 3000], EXEC_MODE).unwrap();
        let mut b = Tree::new();
        b.file("usr/lib/libc.so.6", vec![7; 3000], EXEC_MODE).unwrap();
        b.symlink("lib", "usr/lib").unwrap();
        b.file("etc/passwd", b"root".to_vec(), FILE_MODE).unwrap();
        assert_eq!(a.to_tar(), b.to_tar());
        assert_eq!(a.to_tar().len() % BLOCK, 0);
    }

    #[test]
    fn refuses_paths_below_symlinks_conflicts_and_bad_paths() {
        let mut t = Tree::new();
        t.symlink("/bin", "usr/bin").unwrap();
        assert_eq!(t.file("/bin/sh", vec![], EXEC_MODE), Err(TreeError::ParentNotDir("bin/sh".into())));
        t.file("/usr/bin/sh", b"a".to_vec(), EXEC_MODE).unwrap();
        t.file("/usr/bin/sh", b"a".to_vec(), EXEC_MODE).unwrap();
        assert_eq!(t.file("/usr/bin/sh", b"b".to_vec(), EXEC_MODE), Err(TreeError::Conflict("usr/bin/sh".into())));
        assert!(matches!(t.file("/usr/../etc", vec![], FILE_MODE), Err(TreeError::BadPath(_))));
        assert!(matches!(t.file("/", vec![], FILE_MODE), Err(TreeError::BadPath(_))));
    }

    #[test]
    fn long_names_and_targets() {
        let mid = format!("usr/lib/{}/lib.so", "d".repeat(120));
        let long = format!("{}/{}", "p".repeat(160), "n".repeat(120));
        let target = "t/".repeat(70);
        let mut t = Tree::new();
        t.file(&mid, b"m".to_vec(), FILE_MODE).unwrap();
        t.symlink(&long, &target).unwrap();
        let entries = read_tar(&t.to_tar());
        let find = |n: &str| entries.iter().find(|e| e.0 == n).unwrap_or_else(|| panic!("{n} missing"));
        assert_eq!(find(&mid).3, b"m");
        assert_eq!(find(&long).4, target);
        assert_eq!(find(&format!("{}/", "p".repeat(160))).1, b'5');
    }

    #[test]
    fn pax_record_length_counts_itself() {
        for n in [1, 85, 89, 90, 95, 994, 995, 1000] {
            let r = pax_record("path", &"x".repeat(n));
            let (len, _) = r.split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), r.len(), "value length {n}");
        }
    }
}
