//! A registry's manifest answers as `pull` reads them (`guest_image::fetch`): the index probe,
//! the OCI image index and its platform entries, the OCI image manifest and its single layer,
//! and the digest and size the layer names.
#![no_main]

use guest_image::Sha256Digest;
use guest_image::fetch::{index_entry, single_layer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for arch in ["x86_64", "aarch64"] {
        if let Ok(Some(entry)) = index_entry(data, arch) {
            // The next request goes to the manifest the entry names.
            let r = oci_client::Reference::with_digest(
                "localhost:5000".into(),
                "carbon/guest".into(),
                entry.digest,
            );
            let _ = r.whole();
        }
    }
    if let Ok(layer) = single_layer(data) {
        let _ = layer.digest.parse::<Sha256Digest>();
        let _ = u64::try_from(layer.size);
    }
});
