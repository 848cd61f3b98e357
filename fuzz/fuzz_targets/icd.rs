//! Vulkan ICD manifests found in an image's root filesystem (`venus::icd::library`) and the
//! library paths resolved from them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::{Component, Path};
use venus::icd::{Library, VENUS_ICD_PATH, library};

fuzz_target!(|data: &[u8]| {
    let Ok(lib) = library(Path::new(VENUS_ICD_PATH), data) else {
        return;
    };
    for p in lib.candidates("x86_64") {
        assert!(p.is_absolute(), "{p:?}");
    }
    if let Library::Path(p) = &lib {
        // A relative path is resolved inside the root: the result never climbs out of it.
        #[derive(serde::Deserialize)]
        struct Manifest {
            #[serde(rename = "ICD")]
            icd: Icd,
        }
        #[derive(serde::Deserialize)]
        struct Icd {
            library_path: String,
        }
        let raw: Manifest = serde_json::from_slice(data).expect("parsed once already");
        if !Path::new(&raw.icd.library_path).is_absolute() {
            assert!(!p.components().any(|c| c == Component::ParentDir), "{p:?}");
        }
    }
});
