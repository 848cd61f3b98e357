//! The image manifest: the first member of every artifact, listing every other member with its
//! size and sha256, how to boot the image, and what it bundles. See docs/image-format.md.

use crate::cache;
use crate::digest::Sha256Digest;
use crate::untrusted::is_printable;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// The manifest's member name; it must be the artifact's first member.
pub const MANIFEST_NAME: &str = "manifest.json";
/// The optional detached minisign signature over the manifest's exact bytes; second member.
pub const SIGNATURE_NAME: &str = "manifest.json.minisig";
/// Manifests and signatures larger than this are refused before they are parsed.
pub const MAX_METADATA_BYTES: u64 = 1 << 20;
pub const SCHEMA: u32 = 1;
/// A carbon-vm image has three members; a manifest listing more than this is refused.
pub const MAX_MEMBERS: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema: u32,
    pub name: String,
    /// `x86_64` or `aarch64`.
    pub arch: String,
    /// Seconds since the epoch (SOURCE_DATE_EPOCH when the recipe ran).
    pub created: u64,
    pub boot: Boot,
    pub bundles: Bundles,
    pub members: Vec<Member>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Boot {
    /// Member paths of the kernel, initrd and raw GPT disk.
    pub kernel: String,
    pub initrd: String,
    pub disk: String,
    /// Kernel command line for direct kernel boot (QEMU, libkrun).
    pub cmdline: String,
    /// GPT partition names of the root filesystem and the EFI system partition.
    pub root_partition: String,
    pub efi_partition: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundles {
    pub kernel_version: String,
    pub mesa_version: String,
    /// The guest kernel's page size in bytes, where the packer could read it: a Mac host needs
    /// every GPU blob to be a multiple of 16384, which a 16 KiB-page guest guarantees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_size: Option<u32>,
    /// Absolute path, inside the root filesystem, of the Venus Vulkan ICD manifest.
    pub venus_icd: String,
    /// Absolute path, inside the root filesystem, of the library that ICD names.
    pub venus_library: String,
    /// Container images shipped inside the root filesystem for offline use.
    #[serde(default)]
    pub container_images: Vec<ContainerImage>,
    /// The Venus driver the guest hands to containers through its CDI device (`venus::bundle`),
    /// where the image has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_driver: Option<ContainerDriver>,
}

/// The Venus bundle of an image (`venus::bundle::Version`, at `venus::bundle::DIR`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerDriver {
    pub mesa_version: String,
    pub vulkan_loader: String,
    /// The oldest glibc a container may have to load it.
    pub glibc: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerImage {
    /// The name podman knows it by once loaded (`localhost/carbon-venus:latest`).
    pub name: String,
    /// Absolute path of the OCI archive inside the root filesystem.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub path: String,
    pub size: u64,
    pub sha256: Sha256Digest,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("unsupported manifest schema {0} (this carbon-vm reads schema {SCHEMA})")]
    Schema(u32),
    #[error("unsupported architecture {0:?}")]
    Arch(String),
    #[error("member path {0:?} is not a plain relative path")]
    BadPath(String),
    #[error("member path {0:?} is a name the image cache uses for itself")]
    Reserved(String),
    #[error("member {0:?} is listed twice (names are compared ignoring case)")]
    Duplicate(String),
    #[error("the manifest lists {0} members, more than {MAX_MEMBERS}")]
    TooManyMembers(usize),
    #[error("manifest field {0} holds control characters")]
    Unprintable(&'static str),
    #[error("boot {0} {1:?} is not a listed member")]
    MissingBootMember(&'static str, String),
    #[error("member sizes overflow")]
    SizeOverflow,
    #[error("Venus paths must be absolute: {0:?}")]
    BadVenusPath(String),
}

impl Manifest {
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.schema != SCHEMA {
            return Err(ManifestError::Schema(self.schema));
        }
        if !matches!(self.arch.as_str(), "x86_64" | "aarch64") {
            return Err(ManifestError::Arch(self.arch.clone()));
        }
        if let Some((field, _)) = self.text_fields().find(|(_, s)| !is_printable(s)) {
            return Err(ManifestError::Unprintable(field));
        }
        if self.members.len() > MAX_MEMBERS {
            return Err(ManifestError::TooManyMembers(self.members.len()));
        }
        let mut seen = HashSet::new();
        let mut folded = HashSet::new();
        for m in &self.members {
            if !is_plain_path(&m.path) || m.path == SIGNATURE_NAME {
                return Err(ManifestError::BadPath(m.path.clone()));
            }
            if cache::is_reserved(&m.path) {
                return Err(ManifestError::Reserved(m.path.clone()));
            }
            seen.insert(m.path.as_str());
            if !folded.insert(m.path.to_ascii_lowercase()) {
                return Err(ManifestError::Duplicate(m.path.clone()));
            }
        }
        for (what, path) in [
            ("kernel", &self.boot.kernel),
            ("initrd", &self.boot.initrd),
            ("disk", &self.boot.disk),
        ] {
            if !seen.contains(path.as_str()) {
                return Err(ManifestError::MissingBootMember(what, path.clone()));
            }
        }
        for p in [&self.bundles.venus_icd, &self.bundles.venus_library] {
            if !p.starts_with('/') {
                return Err(ManifestError::BadVenusPath(p.clone()));
            }
        }
        self.total_size().map(|_| ())
    }

    /// Every free-text field, by name: what may end up on a terminal.
    fn text_fields(&self) -> impl Iterator<Item = (&'static str, &str)> {
        let (b, n) = (&self.boot, &self.bundles);
        [
            ("name", &self.name),
            ("arch", &self.arch),
            ("boot.kernel", &b.kernel),
            ("boot.initrd", &b.initrd),
            ("boot.disk", &b.disk),
            ("boot.cmdline", &b.cmdline),
            ("boot.root_partition", &b.root_partition),
            ("boot.efi_partition", &b.efi_partition),
            ("bundles.kernel_version", &n.kernel_version),
            ("bundles.mesa_version", &n.mesa_version),
            ("bundles.venus_icd", &n.venus_icd),
            ("bundles.venus_library", &n.venus_library),
        ]
        .into_iter()
        .map(|(f, s)| (f, s.as_str()))
        .chain(n.container_images.iter().flat_map(|c| {
            [
                ("bundles.container_images.name", c.name.as_str()),
                ("bundles.container_images.path", c.path.as_str()),
            ]
        }))
        .chain(n.container_driver.iter().flat_map(|d| {
            [
                (
                    "bundles.container_driver.mesa_version",
                    d.mesa_version.as_str(),
                ),
                (
                    "bundles.container_driver.vulkan_loader",
                    d.vulkan_loader.as_str(),
                ),
                ("bundles.container_driver.glibc", d.glibc.as_str()),
            ]
        }))
    }

    /// The sum of all member sizes: what the archive may decompress to, give or take tar headers.
    pub fn total_size(&self) -> Result<u64, ManifestError> {
        self.members
            .iter()
            .try_fold(0u64, |acc, m| acc.checked_add(m.size))
            .ok_or(ManifestError::SizeOverflow)
    }

    pub fn member(&self, path: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.path == path)
    }
}

/// Relative, `/`-separated, made of `[A-Za-z0-9._-]` components that are neither `.` nor `..`.
/// Anything else (absolute paths, `..`, backslashes, control characters) is refused outright, so
/// no member can name a place outside the directory it is unpacked into.
pub fn is_plain_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 255
        && p.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sample() -> Manifest {
        let member = |path: &str, data: &[u8]| Member {
            path: path.into(),
            size: data.len() as u64,
            sha256: Sha256Digest::of(data),
        };
        Manifest {
            schema: SCHEMA,
            name: "test".into(),
            arch: "x86_64".into(),
            created: 0,
            boot: Boot {
                kernel: "boot/vmlinuz".into(),
                initrd: "boot/initrd.img".into(),
                disk: "disk.raw".into(),
                cmdline: "root=PARTLABEL=carbon-root".into(),
                root_partition: "carbon-root".into(),
                efi_partition: "carbon-efi".into(),
            },
            bundles: Bundles {
                kernel_version: "6.12".into(),
                mesa_version: "25.0".into(),
                page_size: Some(4096),
                venus_icd: venus::icd::VENUS_ICD_PATH.into(),
                venus_library: "/usr/lib/x86_64-linux-gnu/libvulkan_virtio.so".into(),
                container_images: vec![],
                container_driver: None,
            },
            members: vec![
                member("boot/vmlinuz", b"k"),
                member("boot/initrd.img", b"i"),
                member("disk.raw", b"d"),
            ],
        }
    }

    #[test]
    fn sample_is_valid_and_round_trips() {
        let m = sample();
        m.validate().unwrap();
        let json = serde_json::to_vec(&m).unwrap();
        assert_eq!(serde_json::from_slice::<Manifest>(&json).unwrap(), m);
        assert_eq!(m.total_size().unwrap(), 3);
    }

    #[test]
    fn hostile_paths_are_refused() {
        for bad in [
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a\\b",
            "",
            "manifest.json",
            "a\nb",
        ] {
            let mut m = sample();
            m.members[0].path = bad.into();
            assert!(m.validate().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_cache_own_names_are_reserved_in_any_case() {
        for name in ["image.json", "Image.JSON", "image.json/x", "MANIFEST.json"] {
            let mut m = sample();
            m.members[0].path = name.into();
            m.boot.kernel = name.into();
            assert_eq!(m.validate(), Err(ManifestError::Reserved(name.into())));
        }
    }

    #[test]
    fn case_folded_duplicates_counts_and_control_characters_are_refused() {
        let mut m = sample();
        m.members[1].path = "BOOT/vmlinuz".into();
        assert_eq!(
            m.validate(),
            Err(ManifestError::Duplicate("BOOT/vmlinuz".into()))
        );
        let mut m = sample();
        let extra = m.members[0].clone();
        m.members.extend((0..MAX_MEMBERS).map(|i| Member {
            path: format!("x{i}"),
            ..extra.clone()
        }));
        assert_eq!(
            m.validate(),
            Err(ManifestError::TooManyMembers(MAX_MEMBERS + 3))
        );
        let mut m = sample();
        m.bundles.mesa_version = "25.0\u{1b}]0;owned\u{7}".into();
        assert_eq!(
            m.validate(),
            Err(ManifestError::Unprintable("bundles.mesa_version"))
        );
        let mut m = sample();
        m.name = "gäst ✓".into();
        m.validate().unwrap();
    }

    #[test]
    fn duplicates_overflow_and_missing_boot_members_are_refused() {
        let mut m = sample();
        m.members[1].path = m.members[0].path.clone();
        assert_eq!(
            m.validate(),
            Err(ManifestError::Duplicate("boot/vmlinuz".into()))
        );
        let mut m = sample();
        m.members[0].size = u64::MAX;
        assert_eq!(m.validate(), Err(ManifestError::SizeOverflow));
        let mut m = sample();
        m.members.pop();
        assert!(matches!(
            m.validate(),
            Err(ManifestError::MissingBootMember("disk", _))
        ));
        let mut m = sample();
        m.schema = 2;
        assert_eq!(m.validate(), Err(ManifestError::Schema(2)));
    }
}
