//! Sparse files: finding a file's data extents with SEEK_DATA/SEEK_HOLE, and GNU tar's pax
//! sparse format 1.0 map (decimal lines `count`, then `offset` and `length` per extent, at the
//! start of the data area, zero-padded to a block).

use nix::errno::Errno;
use nix::unistd::{lseek, Whence};

use super::{padded, BLOCK};

/// Data extents of the open file `f` of `size` bytes: `None` when it has no holes (store it
/// whole). A file ending in a hole gets a final zero-length extent at its size, as GNU tar
/// writes it.
pub fn extents(f: &std::fs::File, size: u64) -> std::io::Result<Option<Vec<(u64, u64)>>> {
    let mut out = Vec::new();
    let mut pos: i64 = 0;
    let end = size as i64;
    while pos < end {
        let data = match lseek(f, pos, Whence::SeekData) {
            Ok(d) => d,
            Err(Errno::ENXIO) => break, // only a hole remains
            Err(e) => return Err(e.into()),
        };
        let hole = lseek(f, data, Whence::SeekHole)?.min(end);
        if hole > data {
            out.push((data as u64, (hole - data) as u64));
        }
        pos = hole;
    }
    let stored: u64 = out.iter().map(|(_, l)| l).sum();
    if stored == size {
        return Ok(None);
    }
    if out.last().is_none_or(|(o, l)| o + l < size) {
        out.push((size, 0));
    }
    Ok(Some(out))
}

/// The map as stored: text, then zero padding to a block.
pub fn encode_map(map: &[(u64, u64)]) -> Vec<u8> {
    let mut text = format!("{}\n", map.len());
    for (o, l) in map {
        text.push_str(&format!("{o}\n{l}\n"));
    }
    let mut bytes = text.into_bytes();
    bytes.resize(padded(bytes.len() as u64) as usize, 0);
    bytes
}

/// Bytes the map takes in the data area.
pub fn map_block_len(map: &[(u64, u64)]) -> u64 {
    encode_map(map).len() as u64
}

/// Parse a map from the start of a data area. `read_block` yields the next 512 bytes. Returns
/// the map and how many bytes it took. Extents must be in order, not overlap, and end within
/// `realsize`.
pub fn decode_map(
    mut read_block: impl FnMut() -> Result<[u8; 512], String>,
    realsize: u64,
    data_len: u64,
) -> Result<(Vec<(u64, u64)>, u64), String> {
    let mut text = Vec::new();
    let mut numbers: Vec<u64> = Vec::new();
    let mut used = 0u64;
    let mut want: Option<u64> = None;
    loop {
        if used >= data_len {
            return Err("sparse map runs past the entry's data".into());
        }
        let block = read_block()?;
        used += BLOCK;
        for b in block {
            if b == b'\n' {
                let s = std::str::from_utf8(&text).map_err(|_| "sparse map is not text")?;
                let n: u64 = s
                    .parse()
                    .map_err(|_| format!("sparse map number {s:?} is not decimal"))?;
                text.clear();
                if want.is_none() {
                    if n > data_len.max(1) * 8 {
                        return Err(format!("sparse map claims {n} extents"));
                    }
                    want = Some(n);
                } else {
                    numbers.push(n);
                }
                if let Some(w) = want {
                    if numbers.len() as u64 == 2 * w {
                        return finish(numbers, realsize).map(|m| (m, used));
                    }
                }
            } else if b.is_ascii_digit() {
                if text.len() > 20 {
                    return Err("sparse map number too long".into());
                }
                text.push(b);
            } else if b == 0 && text.is_empty() {
                continue;
            } else {
                return Err("sparse map has a stray byte".into());
            }
        }
    }
}

fn finish(numbers: Vec<u64>, realsize: u64) -> Result<Vec<(u64, u64)>, String> {
    let mut map = Vec::with_capacity(numbers.len() / 2);
    let mut end = 0u64;
    for pair in numbers.chunks(2) {
        let (o, l) = (pair[0], pair[1]);
        let stop = o.checked_add(l).ok_or("sparse extent overflows")?;
        if o < end || stop > realsize {
            return Err(format!(
                "sparse extent {o}+{l} is out of order or beyond the file's {realsize} bytes"
            ));
        }
        end = stop;
        map.push((o, l));
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8], realsize: u64) -> Result<(Vec<(u64, u64)>, u64), String> {
        let mut blocks = bytes.chunks(512).map(|c| {
            let mut b = [0u8; 512];
            b[..c.len()].copy_from_slice(c);
            b
        });
        decode_map(
            || blocks.next().ok_or("eof".to_string()),
            realsize,
            bytes.len() as u64,
        )
    }

    #[test]
    fn maps_round_trip() {
        let map = vec![(0, 4096), (1 << 30, 512), (10 << 30, 0)];
        let bytes = encode_map(&map);
        assert_eq!(bytes.len(), 512);
        assert_eq!(&bytes[..8], b"3\n0\n4096");
        assert_eq!(decode(&bytes, 10 << 30).unwrap(), (map, 512));
    }

    #[test]
    fn bad_maps_are_refused() {
        assert!(decode(b"2\n0\n10\n5\n10\n", 100).is_err()); // overlap
        assert!(decode(b"1\n0\n1000\n", 100).is_err()); // beyond the file
        assert!(decode(b"1\nx\n", 100).is_err());
        assert!(decode(b"99999999999\n", 100).is_err());
    }

    #[test]
    fn holes_are_found() {
        use std::io::{Seek, SeekFrom, Write};
        let dir = tempfile::tempdir().unwrap();
        let mut f = std::fs::File::create(dir.path().join("s")).unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(&[1u8; 4096]).unwrap();
        f.set_len(4 << 20).unwrap();
        let map = extents(&f, 4 << 20).unwrap().unwrap();
        assert_eq!(map, vec![(1 << 20, 4096), (4 << 20, 0)]);
        let mut g = std::fs::File::create(dir.path().join("d")).unwrap();
        g.write_all(&[1u8; 10000]).unwrap();
        assert_eq!(extents(&g, 10000).unwrap(), None);
    }
}
