//! Reading a tar stream entry by entry: pax and GNU long-name headers folded into the entry
//! they describe, sparse maps decoded, content handed out with its offset in the file.
//! Anything malformed is an error naming what; nothing here touches the filesystem.

use std::io::Read;

use super::header::{self, RawHeader};
use super::{padded, pax, sparse, Entry, Kind};

/// Largest pax header or GNU long name accepted.
const MAX_META: u64 = 1 << 20;

pub struct Reader<R> {
    inner: R,
    /// Bytes of the current entry's data area not yet consumed (including padding).
    pending: u64,
    /// The current entry's content still to hand out: `(file offset, length)` runs.
    runs: Vec<(u64, u64)>,
    /// Bytes consumed so far.
    pub offset: u64,
}

impl<R: Read> Reader<R> {
    pub fn new(inner: R) -> Self {
        Reader {
            inner,
            pending: 0,
            runs: Vec::new(),
            offset: 0,
        }
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), String> {
        self.inner.read_exact(buf).map_err(read_error)?;
        self.offset += buf.len() as u64;
        Ok(())
    }

    /// Pass over what is left of the current entry's data area with `skip` (e.g. a seek of
    /// the underlying reader) instead of reading it; its content is no longer handed out.
    pub fn skip_content_with(
        &mut self,
        skip: impl FnOnce(&mut R, u64) -> std::io::Result<()>,
    ) -> Result<(), String> {
        let n = std::mem::take(&mut self.pending);
        self.runs.clear();
        skip(&mut self.inner, n).map_err(read_error)?;
        self.offset += n;
        Ok(())
    }

    fn block(&mut self) -> Result<[u8; 512], String> {
        let mut b = [0u8; 512];
        self.read_exact(&mut b)?;
        Ok(b)
    }

    fn skip(&mut self, mut n: u64) -> Result<(), String> {
        let mut buf = [0u8; 8192];
        while n > 0 {
            let k = n.min(buf.len() as u64) as usize;
            self.read_exact(&mut buf[..k])?;
            n -= k as u64;
        }
        Ok(())
    }

    /// A whole small data area (pax header, long name).
    fn meta(&mut self, size: u64, what: &str) -> Result<Vec<u8>, String> {
        if size > MAX_META {
            return Err(format!("{what} of {size} bytes is too large"));
        }
        let mut v = vec![0u8; padded(size) as usize];
        self.read_exact(&mut v)?;
        v.truncate(size as usize);
        Ok(v)
    }

    /// The next entry; `None` at the end of the archive. Unread content of the previous entry
    /// is skipped.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, String> {
        self.skip(self.pending)?;
        self.pending = 0;
        self.runs.clear();
        let mut records: Vec<(String, Vec<u8>)> = Vec::new();
        let mut long_name: Option<String> = None;
        let mut long_link: Option<String> = None;
        let raw = loop {
            let block = self.block()?;
            let Some(h) = header::decode(&block)? else {
                return Ok(None);
            };
            match h.typeflag {
                b'x' => records.extend(pax::parse(&self.meta(h.size, "pax header")?)?),
                b'g' => {
                    self.meta(h.size, "global pax header")?;
                }
                b'L' => long_name = Some(text(self.meta(h.size, "long name")?)),
                b'K' => long_link = Some(text(self.meta(h.size, "long link name")?)),
                _ => break h,
            }
        };
        self.entry(raw, records, long_name, long_link).map(Some)
    }

    fn entry(
        &mut self,
        raw: RawHeader,
        records: Vec<(String, Vec<u8>)>,
        long_name: Option<String>,
        long_link: Option<String>,
    ) -> Result<Entry, String> {
        let mut path = long_name.unwrap_or(raw.name);
        let mut link = long_link.unwrap_or(raw.linkname);
        let mut size = raw.size;
        let (mut uid, mut gid) = (raw.uid, raw.gid);
        let (mut mtime_sec, mut mtime_nsec) = (raw.mtime, 0u32);
        let mut xattrs = Vec::new();
        let (mut sparse_major, mut sparse_name, mut realsize) = (None, None, None);
        for (k, v) in records {
            let num = |v: &[u8]| -> Result<u64, String> {
                std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("pax {k} is not a number"))
            };
            match k.as_str() {
                "path" => path = text(v),
                "linkpath" => link = text(v),
                "size" => size = num(&v)?,
                "uid" => uid = num(&v)?,
                "gid" => gid = num(&v)?,
                "mtime" => (mtime_sec, mtime_nsec) = parse_time(&v)?,
                "GNU.sparse.major" => sparse_major = Some(num(&v)?),
                "GNU.sparse.minor" => {}
                "GNU.sparse.name" => sparse_name = Some(text(v)),
                "GNU.sparse.realsize" => realsize = Some(num(&v)?),
                _ => {
                    if let Some(name) = k.strip_prefix("SCHILY.xattr.") {
                        xattrs.push((name.to_string(), v));
                    }
                }
            }
        }
        xattrs.sort();
        let kind = match raw.typeflag {
            b'0' | b'\0' | b'7' => Kind::File,
            b'5' => Kind::Dir,
            b'2' => Kind::Symlink(link),
            b'1' => Kind::HardLink(normalize(&link)),
            b'3' => Kind::Char {
                major: raw.devmajor,
                minor: raw.devminor,
            },
            b'4' => Kind::Block {
                major: raw.devmajor,
                minor: raw.devminor,
            },
            b'6' => Kind::Fifo,
            other => {
                return Err(format!(
                    "entry {path:?} has unsupported type {:?}",
                    other as char
                ))
            }
        };
        let uid = u32::try_from(uid).map_err(|_| format!("uid {uid} out of range"))?;
        let gid = u32::try_from(gid).map_err(|_| format!("gid {gid} out of range"))?;
        // Only regular files carry content we use; any other data area is skipped.
        self.pending = padded(size);
        let mut sparse_map = None;
        let mut file_size = if kind == Kind::File { size } else { 0 };
        if kind == Kind::File {
            match sparse_major {
                Some(1) => {
                    let real = realsize.ok_or("sparse entry without GNU.sparse.realsize")?;
                    path = sparse_name.ok_or("sparse entry without GNU.sparse.name")?;
                    let pending = self.pending;
                    let (map, used) = sparse::decode_map(|| self.block(), real, pending)?;
                    self.pending -= used;
                    let stored: u64 = map.iter().map(|(_, l)| l).sum();
                    if stored + used > size {
                        return Err(format!(
                            "sparse entry {path:?} stores {stored} bytes in a {size}-byte area"
                        ));
                    }
                    self.runs = map.clone();
                    sparse_map = Some(map);
                    file_size = real;
                }
                Some(v) => return Err(format!("GNU sparse format {v}.x is not supported")),
                None => {
                    if size > 0 {
                        self.runs = vec![(0, size)];
                    }
                }
            }
        }
        Ok(Entry {
            path: normalize(&path),
            kind,
            mode: raw.mode & 0o7777,
            uid,
            gid,
            mtime_sec,
            mtime_nsec,
            size: file_size,
            xattrs,
            sparse: sparse_map,
        })
    }

    /// Hand the current entry's content to `sink` as `(file offset, bytes)` chunks, then
    /// consume its padding.
    pub fn content(
        &mut self,
        mut sink: impl FnMut(u64, &[u8]) -> std::io::Result<()>,
    ) -> Result<(), String> {
        let runs = std::mem::take(&mut self.runs);
        let mut buf = vec![0u8; 256 * 1024];
        for (mut offset, mut len) in runs {
            while len > 0 {
                let k = len.min(buf.len() as u64) as usize;
                self.read_exact(&mut buf[..k])?;
                self.pending = self.pending.saturating_sub(k as u64);
                sink(offset, &buf[..k]).map_err(|e| format!("write: {e}"))?;
                offset += k as u64;
                len -= k as u64;
            }
        }
        Ok(())
    }

    /// Consume everything left (the rest of the section), e.g. to finish its checksum.
    pub fn drain(&mut self) -> Result<u64, String> {
        let mut buf = [0u8; 8192];
        let mut n = 0u64;
        loop {
            match self.inner.read(&mut buf) {
                Ok(0) => return Ok(n),
                Ok(k) => {
                    n += k as u64;
                    self.offset += k as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }
}

/// A failed read, as a sentence (the end of the input is a truncated stream; bytes refused as
/// invalid say why themselves).
fn read_error(e: std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => "the tar stream ends early (truncated)".to_string(),
        std::io::ErrorKind::InvalidData => e.to_string(),
        _ => format!("read: {e}"),
    }
}

/// Entry paths without `./` prefixes or trailing slashes; the root is `.`.
pub fn normalize(path: &str) -> String {
    let mut p = path;
    while let Some(rest) = p.strip_prefix("./") {
        p = rest;
    }
    let p = p.trim_end_matches('/');
    if p.is_empty() || p == "." {
        ".".to_string()
    } else {
        p.to_string()
    }
}

fn text(v: Vec<u8>) -> String {
    String::from_utf8_lossy(&v).into_owned()
}

/// Pax time `sec[.frac]`, possibly negative.
fn parse_time(v: &[u8]) -> Result<(i64, u32), String> {
    let s = std::str::from_utf8(v).map_err(|_| "pax mtime is not text")?;
    let bad = || format!("pax mtime {s:?} is malformed");
    let (neg, s2) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (sec, frac) = s2.split_once('.').unwrap_or((s2, ""));
    let sec: i64 = sec.parse().map_err(|_| bad())?;
    let mut nanos: u32 = 0;
    for (i, c) in frac.chars().take(9).enumerate() {
        let d = c.to_digit(10).ok_or_else(bad)?;
        nanos += d * 10u32.pow(8 - i as u32);
    }
    if !neg {
        return Ok((sec, nanos));
    }
    if nanos == 0 {
        Ok((-sec, 0))
    } else {
        Ok((-sec - 1, 1_000_000_000 - nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tar::header;

    #[test]
    fn times_parse() {
        assert_eq!(parse_time(b"12.5").unwrap(), (12, 500_000_000));
        assert_eq!(parse_time(b"-1.25").unwrap(), (-2, 750_000_000));
        assert_eq!(parse_time(b"7").unwrap(), (7, 0));
        assert!(parse_time(b"x").is_err());
    }

    #[test]
    fn paths_normalize() {
        assert_eq!(normalize("./a/b/"), "a/b");
        assert_eq!(normalize("./"), ".");
        assert_eq!(normalize("../x"), "../x");
    }

    #[test]
    fn an_encoded_entry_reads_back() {
        let e = Entry {
            path: "dir/file".into(),
            kind: Kind::File,
            mode: 0o600,
            uid: 5,
            gid: 6,
            mtime_sec: 100,
            mtime_nsec: 42,
            size: 3,
            xattrs: vec![("user.a".into(), b"1".to_vec())],
            sparse: None,
        };
        let (mut bytes, data) = header::encode(&e);
        assert_eq!(data, 3);
        let mut content = b"abc".to_vec();
        content.resize(512, 0);
        bytes.extend(content);
        bytes.extend([0u8; 1024]);
        let mut r = Reader::new(&bytes[..]);
        let got = r.next_entry().unwrap().unwrap();
        assert_eq!(got, e);
        let mut seen = Vec::new();
        r.content(|off, b| {
            seen.push((off, b.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![(0, b"abc".to_vec())]);
        assert!(r.next_entry().unwrap().is_none());
    }
}
