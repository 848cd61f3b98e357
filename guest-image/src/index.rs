//! Multi-architecture releases: an OCI image index whose entries are the single-layer artifact
//! manifests of `push`, one per platform (linux/amd64, linux/arm64). `pull` takes the entry of
//! the architecture it wants; the index's digest pins each entry's manifest digest, which pins
//! the layer, so a reference by index digest pins the artifact of every architecture. The index
//! and its entries are oci-client's types.

use oci_client::manifest::{
    IMAGE_MANIFEST_LIST_MEDIA_TYPE, ImageIndexEntry, OCI_IMAGE_INDEX_MEDIA_TYPE, OciImageIndex,
    Platform,
};
use serde::Deserialize;

/// The OCI (Go) name of an image architecture.
pub fn oci_arch(arch: &str) -> Option<&'static str> {
    match arch {
        "x86_64" => Some("amd64"),
        "aarch64" => Some("arm64"),
        _ => None,
    }
}

/// linux/`oci_arch`, as an index entry names its platform.
pub fn linux(oci_arch: &str) -> Platform {
    Platform {
        architecture: oci_arch.into(),
        os: "linux".into(),
        os_version: None,
        os_features: None,
        variant: None,
        features: None,
    }
}

/// Whether a registry manifest is an index (its media type says so, or it lists manifests).
pub fn is_index(raw: &[u8]) -> bool {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        manifests: Option<serde::de::IgnoredAny>,
    }
    serde_json::from_slice::<Probe>(raw).is_ok_and(|p| {
        p.media_type.as_deref() == Some(OCI_IMAGE_INDEX_MEDIA_TYPE)
            || p.media_type.as_deref() == Some(IMAGE_MANIFEST_LIST_MEDIA_TYPE)
            || (p.media_type.is_none() && p.manifests.is_some())
    })
}

/// The entry of `index` for linux/`arch` (an image architecture); `Err` lists the platforms
/// there are.
pub fn select<'a>(index: &'a OciImageIndex, arch: &str) -> Result<&'a ImageIndexEntry, String> {
    let want = oci_arch(arch).unwrap_or(arch);
    index
        .manifests
        .iter()
        .find(|e| {
            e.platform
                .as_ref()
                .is_some_and(|p| p.os.to_string() == "linux" && p.architecture.to_string() == want)
        })
        .ok_or_else(|| {
            let there: Vec<String> = index
                .manifests
                .iter()
                .filter_map(|e| e.platform.as_ref())
                .map(|p| format!("{}/{}", p.os, p.architecture))
                .collect();
            format!("[{}]", there.join(", "))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> OciImageIndex {
        let entry = |arch: &str, d: char| ImageIndexEntry {
            media_type: oci_client::manifest::OCI_IMAGE_MEDIA_TYPE.into(),
            digest: format!("sha256:{}", d.to_string().repeat(64)),
            size: 400,
            platform: Some(linux(arch)),
            annotations: None,
            artifact_type: None,
        };
        OciImageIndex {
            schema_version: 2,
            media_type: Some(OCI_IMAGE_INDEX_MEDIA_TYPE.into()),
            artifact_type: None,
            manifests: vec![entry("amd64", 'a'), entry("arm64", 'b')],
            annotations: None,
        }
    }

    #[test]
    fn each_architecture_gets_its_own_entry() {
        let i = index();
        assert!(select(&i, "x86_64").unwrap().digest.ends_with('a'));
        assert!(select(&i, "aarch64").unwrap().digest.ends_with('b'));
        let err = select(&i, "riscv64").unwrap_err();
        assert_eq!(err, "[linux/amd64, linux/arm64]");
    }

    #[test]
    fn indexes_are_told_from_manifests() {
        let raw = serde_json::to_vec(&index()).unwrap();
        assert!(is_index(&raw));
        assert!(is_index(br#"{"schemaVersion":2,"manifests":[]}"#));
        assert!(!is_index(
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}"#
        ));
        assert!(!is_index(b"not json"));
    }
}
