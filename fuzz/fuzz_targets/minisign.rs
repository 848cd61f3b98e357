//! Minisign public keys and signatures (`guest_image::trust`). The input is three parts split at
//! NUL bytes: a `.pub` text (trusted keys files, catalog `key` fields), a `.minisig` text (the
//! artifact's signature member) and the signed bytes.
#![no_main]

use guest_image::Trust;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [keys, signature, signed] = carbon_vm_fuzz::parts::<3>(data);
    let keys = String::from_utf8_lossy(keys);
    let signature = String::from_utf8_lossy(signature);
    let mut trust = Trust::default();
    if trust.add_keys(&keys).is_err() || trust.is_empty() {
        trust = carbon_vm_fuzz::trust(include_str!("../keys/seeds.pub"));
    }
    let _ = trust.verify(signed, &signature);
});
