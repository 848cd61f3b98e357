//! The image archive reader (`guest_image::unpack`): compression sniffing (zstd, gzip, none), the
//! tar reader (ustar, pax and GNU headers, long names), the manifest member (JSON and its
//! checks), the signature member (minisign), and every member checked against the manifest.
#![no_main]

use guest_image::manifest::is_plain_path;
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

static TRUST: LazyLock<guest_image::Trust> =
    LazyLock::new(|| carbon_vm_fuzz::trust(include_str!("../keys/seeds.pub")));

fuzz_target!(|data: &[u8]| {
    let dir = carbon_vm_fuzz::scratch();
    let input = std::io::Cursor::new(data.to_vec());
    let result = guest_image::unpack::unpack(input, dir.path(), &TRUST, false);
    // What an accepted archive leaves: exactly the manifest's members, each at its size.
    if let Ok(u) = result {
        u.manifest
            .validate()
            .expect("an accepted manifest is valid");
        for m in &u.manifest.members {
            assert!(is_plain_path(&m.path));
            let len = std::fs::metadata(dir.path().join(&m.path)).map(|md| md.len());
            assert_eq!(len.ok(), Some(m.size), "{}", m.path);
        }
    }
});
