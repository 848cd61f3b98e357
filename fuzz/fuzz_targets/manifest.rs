//! The image manifest (`manifest.json`): JSON into `Manifest`, then `validate` (paths, reserved
//! names, duplicates, control characters, sizes).
#![no_main]

use guest_image::Manifest;
use guest_image::cache::is_reserved;
use guest_image::manifest::{MAX_MEMBERS, is_plain_path};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = serde_json::from_slice::<Manifest>(data) else {
        return;
    };
    if m.validate().is_err() {
        return;
    }
    // What `validate` promises the unpacker and the cache.
    assert!(m.members.len() <= MAX_MEMBERS);
    for member in &m.members {
        assert!(is_plain_path(&member.path) && !is_reserved(&member.path));
        assert!(m.member(&member.path).is_some());
    }
    m.total_size().expect("validated sizes add up");
    let again: Manifest = serde_json::from_slice(&serde_json::to_vec(&m).unwrap()).unwrap();
    assert_eq!(again, m);
});
