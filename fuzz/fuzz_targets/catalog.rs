//! Image catalog files (`guest_image::catalog::Catalog::parse`): JSON, the `source` of each entry
//! (URL, OCI reference or path), its sha256 and its key, as `create` uses them.
#![no_main]

use guest_image::Trust;
use guest_image::catalog::Catalog;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(catalog) = Catalog::parse(text, "fuzz") else {
        return;
    };
    assert!(catalog.has_name(&catalog.default));
    for e in &catalog.images {
        assert!(catalog.entry(&e.name, &e.arch).is_ok());
        let _ = e.source.to_string();
        let _ = e.source.digest_pinned();
        if let Some(key) = &e.key {
            let _ = Trust::default().add_keys(key);
        }
    }
});
