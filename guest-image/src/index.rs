//! Multi-architecture releases: an OCI image index whose entries are the single-layer artifact
//! manifests of `push`, one per platform (linux/amd64, linux/arm64). `pull` takes the entry of
//! the architecture it wants; the index's digest pins each entry's manifest digest, which pins
//! the layer, so a reference by index digest pins the artifact of every architecture.

use serde::{Deserialize, Serialize};

pub const INDEX_TYPE: &str = "application/vnd.oci.image.index.v1+json";

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub manifests: Vec<Entry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
}

/// The OCI (Go) name of an image architecture.
pub fn oci_arch(arch: &str) -> Option<&'static str> {
    match arch {
        "x86_64" => Some("amd64"),
        "aarch64" => Some("arm64"),
        _ => None,
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
        p.media_type.as_deref() == Some(INDEX_TYPE)
            || p.media_type.as_deref() == Some(oci_client::manifest::IMAGE_MANIFEST_LIST_MEDIA_TYPE)
            || (p.media_type.is_none() && p.manifests.is_some())
    })
}

impl Index {
    /// The entry for linux/`arch`; `Err` lists the platforms there are.
    pub fn select(&self, arch: &str) -> Result<&Entry, String> {
        let want = Platform {
            architecture: oci_arch(arch).unwrap_or(arch).to_owned(),
            os: "linux".to_owned(),
        };
        self.manifests
            .iter()
            .find(|e| e.platform.as_ref() == Some(&want))
            .ok_or_else(|| {
                let there: Vec<String> = self
                    .manifests
                    .iter()
                    .filter_map(|e| e.platform.as_ref())
                    .map(|p| format!("{}/{}", p.os, p.architecture))
                    .collect();
                format!("[{}]", there.join(", "))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> Index {
        let entry = |arch: &str, d: char| Entry {
            media_type: oci_client::manifest::OCI_IMAGE_MEDIA_TYPE.into(),
            digest: format!("sha256:{}", d.to_string().repeat(64)),
            size: 400,
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
            }),
        };
        Index {
            schema_version: 2,
            media_type: Some(INDEX_TYPE.into()),
            artifact_type: None,
            manifests: vec![entry("amd64", 'a'), entry("arm64", 'b')],
        }
    }

    #[test]
    fn each_architecture_gets_its_own_entry() {
        let i = index();
        assert!(i.select("x86_64").unwrap().digest.ends_with('a'));
        assert!(i.select("aarch64").unwrap().digest.ends_with('b'));
        let err = i.select("riscv64").unwrap_err();
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
