//! The Venus bundle: Mesa's Venus driver and the Vulkan loader that carbon-vm's guest image
//! carries for containers whose images have no Venus driver of their own (scripts/venus-bundle
//! builds it against glibc 2.31). The GPU machine's CDI device (`carbon-vm.dev/gpu=all`) mounts
//! it into a container and points the Vulkan loader's driver list at it.

use serde::Serialize;

/// Where the bundle lives in the guest, and in a container given the device.
pub const DIR: &str = "/usr/lib/carbon-vm/venus";
/// The bundle's description, `key=value` lines ([`Version::parse`]).
pub const VERSION_FILE: &str = "VERSION";
/// The bundle's ICD manifest, which the CDI device names in the loader's driver list.
pub const ICD: &str = "/usr/lib/carbon-vm/venus/icd.d/carbon-venus.json";
/// The CDI device that hands it out.
pub const CDI_DEVICE: &str = "carbon-vm.dev/gpu=all";

/// What the bundle's VERSION file says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Version {
    /// Debian's Mesa source version the driver was built from.
    pub mesa: String,
    pub vulkan_loader: String,
    /// The newest glibc symbol version the bundle needs: a container's glibc must be this or newer.
    pub glibc: String,
}

impl Version {
    /// `None` unless `mesa`, `vulkan_loader` and `glibc` are all there.
    pub fn parse(text: &str) -> Option<Version> {
        let get = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        Some(Version {
            mesa: get("mesa")?,
            vulkan_loader: get("vulkan_loader")?,
            glibc: get("glibc")?,
        })
    }
}

/// Whether a glibc of version `have` (`2.36`) can load a bundle that needs `need` (`2.29`).
pub fn glibc_serves(have: &str, need: &str) -> bool {
    fn parts(v: &str) -> Option<Vec<u32>> {
        v.split('.').map(|p| p.parse().ok()).collect()
    }
    match (parts(have), parts(need)) {
        (Some(h), Some(n)) => h >= n,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_file_as_scripts_venus_bundle_writes_it() {
        let text = "mesa=25.0.7-2+deb13u1\nlibdrm=2.4.124-2\nvulkan_loader=1.4.309.0-1\n\
                    zlib=1:1.2.11.dfsg-2+deb11u2\nvulkan_api=1.3.305\nglibc=2.29\n\
                    needs=libc.so.6 libdl.so.2\n";
        assert_eq!(
            Version::parse(text),
            Some(Version {
                mesa: "25.0.7-2+deb13u1".into(),
                vulkan_loader: "1.4.309.0-1".into(),
                glibc: "2.29".into(),
            })
        );
        assert_eq!(Version::parse("mesa=25.0.7\nglibc=\n"), None);
    }

    #[test]
    fn glibc_versions_compare_as_numbers() {
        assert!(glibc_serves("2.36", "2.29"));
        assert!(glibc_serves("2.29", "2.29"));
        assert!(glibc_serves("2.100", "2.29"));
        assert!(!glibc_serves("2.28", "2.29"));
        assert!(!glibc_serves("musl", "2.29"));
    }
}
