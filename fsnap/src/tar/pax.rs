//! Pax extended header records: `"<len> <key>=<value>\n"`, where `<len>` counts the whole
//! record including itself. Values are bytes (xattr values may be binary).

/// Encode one record.
pub fn record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
                                            // The length field counts its own digits.
    let mut len = body + 1;
    while len != body + digits(len) {
        len = body + digits(len);
    }
    let mut out = format!("{len} {key}=").into_bytes();
    out.extend_from_slice(value);
    out.push(b'\n');
    debug_assert_eq!(out.len(), len);
    out
}

fn digits(mut n: usize) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// Decode a pax header's records; an error names what is malformed.
pub fn parse(mut data: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.iter().all(|b| *b == 0) {
            break;
        }
        let space = data
            .iter()
            .position(|b| *b == b' ')
            .ok_or("pax record without a length")?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or("pax record length is not a number")?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(format!("pax record length {len} does not fit"));
        }
        let rec = &data[space + 1..len - 1];
        let eq = rec
            .iter()
            .position(|b| *b == b'=')
            .ok_or("pax record without '='")?;
        let key = std::str::from_utf8(&rec[..eq])
            .map_err(|_| "pax key is not UTF-8")?
            .to_string();
        out.push((key, rec[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_count_themselves() {
        assert_eq!(record("path", b"a"), b"9 path=a\n");
        // Around the 2->3 digit boundary the length must still count itself.
        for n in 80..100 {
            let r = record("path", &vec![b'x'; n]);
            let len: usize = std::str::from_utf8(&r[..r.iter().position(|b| *b == b' ').unwrap()])
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(len, r.len(), "value of {n} bytes");
        }
    }

    #[test]
    fn records_round_trip_with_binary_values() {
        let mut data = record("SCHILY.xattr.user.k", &[0, 1, b'\n', 255]);
        data.extend(record("mtime", b"1.5"));
        let parsed = parse(&data).unwrap();
        assert_eq!(
            parsed[0],
            ("SCHILY.xattr.user.k".into(), vec![0, 1, b'\n', 255])
        );
        assert_eq!(parsed[1], ("mtime".into(), b"1.5".to_vec()));
    }

    #[test]
    fn malformed_records_are_refused() {
        assert!(parse(b"99 path=a\n").is_err());
        assert!(parse(b"x path=a\n").is_err());
        assert!(parse(b"9 pathxa\n").is_err());
        assert!(parse(b"3 \n").is_err());
    }
}
