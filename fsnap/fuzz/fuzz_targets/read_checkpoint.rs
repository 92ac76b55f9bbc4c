//! Arbitrary bytes as a manifest, and as a section's tar stream: parsing must never panic,
//! and every entry name the reader accepts must pass the path check or be refused by it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = fsnap::Manifest::parse(data, std::path::Path::new("fuzz.json"));
    let mut r = fsnap::tar::reader::Reader::new(data);
    for _ in 0..10_000 {
        match r.next_entry() {
            Ok(Some(e)) => {
                let _ = fsnap::section::check_path(&e.path);
                if r.content(|_, _| Ok(())).is_err() {
                    break;
                }
            }
            _ => break,
        }
    }
});
