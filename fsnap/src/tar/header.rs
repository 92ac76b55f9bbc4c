//! Encoding an [`Entry`] as tar headers (a pax extended header when needed, then the ustar
//! header) and decoding one 512-byte ustar/GNU header block, with its checksum checked.

use super::{pax, sparse, Entry, Kind, BLOCK};

/// Largest value of an 11-digit octal field (size, mtime).
const MAX_OCTAL_11: u64 = 0o77777777777;
/// Largest value of a 7-digit octal field (uid, gid, mode, device numbers).
const MAX_OCTAL_7: u64 = 0o7777777;

/// The headers of `entry` and the size of the data area that follows them (sparse map and
/// stored content, not yet padded).
pub fn encode(entry: &Entry) -> (Vec<u8>, u64) {
    let mut records = Vec::new();
    let mut name = entry.path.clone();
    if entry.kind == Kind::Dir && name != "." && !name.ends_with('/') {
        name.push('/');
    }
    let (typeflag, link, devmajor, devminor) = match &entry.kind {
        Kind::File => (b'0', "", 0, 0),
        Kind::Dir => (b'5', "", 0, 0),
        Kind::Symlink(t) => (b'2', t.as_str(), 0, 0),
        Kind::HardLink(t) => (b'1', t.as_str(), 0, 0),
        Kind::Char { major, minor } => (b'3', "", *major, *minor),
        Kind::Block { major, minor } => (b'4', "", *major, *minor),
        Kind::Fifo => (b'6', "", 0, 0),
    };
    let mut data_len = entry.stored_bytes();
    let header_name = if let (Kind::File, Some(map)) = (&entry.kind, &entry.sparse) {
        records.extend(pax::record("GNU.sparse.major", b"1"));
        records.extend(pax::record("GNU.sparse.minor", b"0"));
        records.extend(pax::record("GNU.sparse.name", name.as_bytes()));
        records.extend(pax::record(
            "GNU.sparse.realsize",
            entry.size.to_string().as_bytes(),
        ));
        data_len += sparse::map_block_len(map);
        let base = name.rsplit('/').next().unwrap_or("f");
        let short: String = base.chars().take(80).collect();
        format!("GNUSparseFile.0/{short}")
    } else {
        name.clone()
    };
    let (prefix, short_name) = split_name(&header_name);
    if short_name.is_none() {
        records.extend(pax::record("path", header_name.as_bytes()));
    }
    if link.len() > 100 {
        records.extend(pax::record("linkpath", link.as_bytes()));
    }
    if data_len > MAX_OCTAL_11 {
        records.extend(pax::record("size", data_len.to_string().as_bytes()));
    }
    if u64::from(entry.uid) > MAX_OCTAL_7 {
        records.extend(pax::record("uid", entry.uid.to_string().as_bytes()));
    }
    if u64::from(entry.gid) > MAX_OCTAL_7 {
        records.extend(pax::record("gid", entry.gid.to_string().as_bytes()));
    }
    if entry.mtime_nsec != 0 || entry.mtime_sec < 0 || entry.mtime_sec as u64 > MAX_OCTAL_11 {
        records.extend(pax::record("mtime", mtime_text(entry).as_bytes()));
    }
    for (k, v) in &entry.xattrs {
        records.extend(pax::record(&format!("SCHILY.xattr.{k}"), v));
    }

    let mut out = Vec::with_capacity(3 * BLOCK as usize);
    if !records.is_empty() {
        let pax_name = format!("PaxHeaders/{}", truncate(&header_name, 80));
        let mut h = [0u8; 512];
        put_str(&mut h[0..100], &pax_name);
        put_octal(&mut h[100..108], 0o644);
        put_octal(&mut h[108..116], 0);
        put_octal(&mut h[116..124], 0);
        put_octal(&mut h[124..136], records.len() as u64);
        put_octal(&mut h[136..148], 0);
        h[156] = b'x';
        finish(&mut h);
        out.extend_from_slice(&h);
        out.extend_from_slice(&records);
        out.resize(
            out.len() + (super::padded(records.len() as u64) as usize - records.len()),
            0,
        );
    }
    let mut h = [0u8; 512];
    put_str(&mut h[0..100], short_name.unwrap_or(""));
    put_str(&mut h[345..500], prefix);
    put_octal(&mut h[100..108], u64::from(entry.mode & 0o7777));
    put_octal(&mut h[108..116], u64::from(entry.uid).min(MAX_OCTAL_7));
    put_octal(&mut h[116..124], u64::from(entry.gid).min(MAX_OCTAL_7));
    put_octal(&mut h[124..136], data_len.min(MAX_OCTAL_11));
    put_octal(
        &mut h[136..148],
        entry.mtime_sec.clamp(0, MAX_OCTAL_11 as i64) as u64,
    );
    h[156] = typeflag;
    put_str(&mut h[157..257], truncate(link, 100));
    if matches!(entry.kind, Kind::Char { .. } | Kind::Block { .. }) {
        put_octal(&mut h[329..337], u64::from(devmajor).min(MAX_OCTAL_7));
        put_octal(&mut h[337..345], u64::from(devminor).min(MAX_OCTAL_7));
    }
    finish(&mut h);
    out.extend_from_slice(&h);
    (out, data_len)
}

/// Total bytes `entry` takes in a section: headers plus the padded data area.
pub fn encoded_len(entry: &Entry) -> u64 {
    let (headers, data) = encode(entry);
    headers.len() as u64 + super::padded(data)
}

fn mtime_text(e: &Entry) -> String {
    if e.mtime_nsec == 0 {
        e.mtime_sec.to_string()
    } else if e.mtime_sec >= 0 {
        format!("{}.{:09}", e.mtime_sec, e.mtime_nsec)
    } else {
        // -1.25 means 1.25 s before the epoch: sec = -2, nsec = 0.75e9.
        let total = -(e.mtime_sec as i128 * 1_000_000_000 + i128::from(e.mtime_nsec));
        format!("-{}.{:09}", total / 1_000_000_000, total % 1_000_000_000)
    }
}

/// ustar's (prefix, name) split of a path, or `(.., None)` when it needs a pax `path`.
fn split_name(path: &str) -> (&str, Option<&str>) {
    if path.len() <= 100 {
        return ("", Some(path));
    }
    if path.len() <= 256 {
        // Split at a '/' such that the prefix fits 155 and the rest 100.
        for (i, _) in path.match_indices('/') {
            if i <= 155 && path.len() - i - 1 <= 100 && i > 0 {
                return (&path[..i], Some(&path[i + 1..]));
            }
        }
    }
    ("", None)
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

fn put_str(field: &mut [u8], s: &str) {
    let n = s.len().min(field.len());
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
}

fn put_octal(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    field[..digits].copy_from_slice(&s.as_bytes()[s.len() - digits..]);
    field[digits] = 0;
}

/// Fill in ustar magic and the checksum.
fn finish(h: &mut [u8; 512]) {
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
}

/// One decoded header block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawHeader {
    pub name: String,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: i64,
    pub typeflag: u8,
    pub linkname: String,
    pub devmajor: u32,
    pub devminor: u32,
}

/// Decode a header block; `Ok(None)` for an all-zero block (end of archive).
pub fn decode(h: &[u8; 512]) -> Result<Option<RawHeader>, String> {
    if h.iter().all(|b| *b == 0) {
        return Ok(None);
    }
    let stored = parse_num(&h[148..156]).map_err(|e| format!("checksum field: {e}"))?;
    let mut sum: u64 = 0;
    for (i, b) in h.iter().enumerate() {
        sum += if (148..156).contains(&i) {
            32
        } else {
            u64::from(*b)
        };
    }
    if sum != stored {
        return Err(format!(
            "header checksum {stored} does not match its content ({sum})"
        ));
    }
    let ustar = &h[257..262] == b"ustar";
    let mut name = cstr(&h[0..100]);
    if ustar && h[345] != 0 && &h[257..263] == b"ustar\0" {
        name = format!("{}/{}", cstr(&h[345..500]), name);
    }
    let num = |r: std::ops::Range<usize>, what: &str| {
        parse_num(&h[r]).map_err(|e| format!("{what}: {e}"))
    };
    let mtime = num(136..148, "mtime")?;
    Ok(Some(RawHeader {
        name,
        mode: num(100..108, "mode")? as u32,
        uid: num(108..116, "uid")?,
        gid: num(116..124, "gid")?,
        size: num(124..136, "size")?,
        mtime: i64::try_from(mtime).map_err(|_| "mtime out of range".to_string())?,
        typeflag: h[156],
        linkname: cstr(&h[157..257]),
        devmajor: if ustar {
            num(329..337, "devmajor")? as u32
        } else {
            0
        },
        devminor: if ustar {
            num(337..345, "devminor")? as u32
        } else {
            0
        },
    }))
}

/// A numeric field: octal text (space/NUL padded) or GNU base-256.
fn parse_num(f: &[u8]) -> Result<u64, String> {
    if f.first().is_some_and(|b| b & 0x80 != 0) {
        if f[0] & 0x40 != 0 {
            return Err("negative base-256 number".into());
        }
        let mut v: u64 = u64::from(f[0] & 0x3f);
        for b in &f[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(*b)))
                .ok_or("base-256 number overflows")?;
        }
        return Ok(v);
    }
    let text: String = f
        .iter()
        .take_while(|b| **b != 0)
        .map(|b| *b as char)
        .collect();
    let text = text.trim();
    if text.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(text, 8).map_err(|_| format!("{text:?} is not an octal number"))
}

fn cstr(f: &[u8]) -> String {
    let end = f.iter().position(|b| *b == 0).unwrap_or(f.len());
    String::from_utf8_lossy(&f[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: Kind::File,
            mode: 0o640,
            uid: 1000,
            gid: 100,
            mtime_sec: 1_700_000_000,
            mtime_nsec: 0,
            size: 5,
            xattrs: vec![],
            sparse: None,
        }
    }

    fn block(bytes: &[u8]) -> [u8; 512] {
        bytes[..512].try_into().unwrap()
    }

    #[test]
    fn a_plain_file_is_one_ustar_header() {
        let (h, data) = encode(&file("a/b.txt"));
        assert_eq!(h.len(), 512);
        assert_eq!(data, 5);
        let d = decode(&block(&h)).unwrap().unwrap();
        assert_eq!(d.name, "a/b.txt");
        assert_eq!((d.mode, d.uid, d.gid, d.size), (0o640, 1000, 100, 5));
        assert_eq!(d.typeflag, b'0');
    }

    #[test]
    fn long_names_use_prefix_or_pax() {
        let mid = format!("{}/{}", "d".repeat(120), "f".repeat(50));
        let (h, _) = encode(&file(&mid));
        assert_eq!(h.len(), 512);
        assert_eq!(decode(&block(&h)).unwrap().unwrap().name, mid);
        let long = "x/".repeat(200) + "f";
        let (h, _) = encode(&file(&long));
        assert_eq!(h[156], b'x');
        let recs = pax::parse(&h[512..h.len() - 512]).unwrap();
        assert!(recs.contains(&("path".to_string(), long.into_bytes())));
    }

    #[test]
    fn nanoseconds_and_xattrs_go_to_pax() {
        let mut e = file("f");
        e.mtime_nsec = 5;
        e.xattrs = vec![("trusted.overlay.opaque".into(), b"y".to_vec())];
        let (h, _) = encode(&e);
        let recs = pax::parse(&h[512..h.len() - 512]).unwrap();
        assert!(recs.contains(&("mtime".to_string(), b"1700000000.000000005".to_vec())));
        assert!(recs.contains(&(
            "SCHILY.xattr.trusted.overlay.opaque".to_string(),
            b"y".to_vec()
        )));
    }

    #[test]
    fn negative_mtimes_are_exact() {
        let mut e = file("f");
        e.mtime_sec = -2;
        e.mtime_nsec = 750_000_000;
        assert_eq!(mtime_text(&e), "-1.250000000");
    }

    #[test]
    fn corrupted_headers_are_refused() {
        let (mut h, _) = encode(&file("f"));
        h[0] ^= 1;
        assert!(decode(&block(&h)).unwrap_err().contains("checksum"));
        assert_eq!(decode(&[0u8; 512]).unwrap(), None);
    }

    #[test]
    fn base256_numbers_decode() {
        let mut f = [0u8; 12];
        f[0] = 0x80;
        f[11] = 7;
        f[10] = 1;
        assert_eq!(parse_num(&f).unwrap(), 263);
    }
}
