//! Vulkan ICD manifests (`/usr/share/vulkan/icd.d/*.json`): which driver library a loader opens.
//!
//! A guest image "bundles Venus" only when the Venus ICD exists and names a library that exists
//! in the same root, so this module parses the manifest and resolves its library path the way the
//! Vulkan loader does.

use serde::Deserialize;
use std::path::{Component, Path, PathBuf};

/// Where Debian's `mesa-vulkan-drivers` installs the Venus ICD.
pub const VENUS_ICD_PATH: &str = "/usr/share/vulkan/icd.d/virtio_icd.json";

/// Mesa's Venus driver library name.
pub const VENUS_LIBRARY_NAME: &str = "libvulkan_virtio.so";

#[derive(Debug, thiserror::Error)]
pub enum IcdError {
    #[error("the ICD manifest is not valid JSON")]
    Json(#[from] serde_json::Error),
    #[error("the ICD manifest names no library (ICD.library_path is empty)")]
    NoLibrary,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    #[serde(rename = "ICD")]
    icd: Icd,
}

#[derive(Debug, Deserialize)]
struct Icd {
    library_path: String,
}

/// How the loader finds the library an ICD names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Library {
    /// An absolute path, or a relative one already resolved against the manifest's directory.
    Path(PathBuf),
    /// A bare file name, looked up in the dynamic linker's search path.
    Name(String),
}

impl Library {
    /// Candidate absolute paths for this library inside a root laid out like Debian's.
    pub fn candidates(&self, arch: &str) -> Vec<PathBuf> {
        match self {
            Library::Path(p) => vec![p.clone()],
            Library::Name(n) => [
                format!("/usr/lib/{arch}-linux-gnu"),
                "/usr/lib64".to_owned(),
                "/usr/lib".to_owned(),
                "/lib".to_owned(),
            ]
            .into_iter()
            .map(|d| Path::new(&d).join(n))
            .collect(),
        }
    }
}

/// Parses an ICD manifest found at `manifest_path` (an absolute path inside the guest root).
pub fn library(manifest_path: &Path, json: &[u8]) -> Result<Library, IcdError> {
    let m: Manifest = serde_json::from_slice(json)?;
    let lib = m.icd.library_path;
    if lib.is_empty() {
        return Err(IcdError::NoLibrary);
    }
    let p = Path::new(&lib);
    if p.is_absolute() {
        return Ok(Library::Path(p.to_owned()));
    }
    if p.components().count() == 1 {
        return Ok(Library::Name(lib));
    }
    // The loader resolves relative paths against the manifest's own directory.
    let dir = manifest_path.parent().unwrap_or(Path::new("/"));
    let mut out = PathBuf::from("/");
    for c in dir.join(p).components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(s) => out.push(s),
            _ => {}
        }
    }
    Ok(Library::Path(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_library_path_is_kept() {
        let json = br#"{"file_format_version":"1.0.1","ICD":{"library_path":"/usr/lib/x86_64-linux-gnu/libvulkan_virtio.so","api_version":"1.4.305"}}"#;
        let lib = library(Path::new(VENUS_ICD_PATH), json).unwrap();
        assert_eq!(
            lib,
            Library::Path("/usr/lib/x86_64-linux-gnu/libvulkan_virtio.so".into())
        );
    }

    #[test]
    fn bare_name_searches_library_dirs() {
        let json = br#"{"ICD":{"library_path":"libvulkan_virtio.so"}}"#;
        let lib = library(Path::new(VENUS_ICD_PATH), json).unwrap();
        assert_eq!(
            lib.candidates("x86_64")[0],
            PathBuf::from("/usr/lib/x86_64-linux-gnu/libvulkan_virtio.so")
        );
    }

    #[test]
    fn relative_path_resolves_against_manifest_dir() {
        let json = br#"{"ICD":{"library_path":"../../../lib/libvulkan_virtio.so"}}"#;
        let lib = library(Path::new(VENUS_ICD_PATH), json).unwrap();
        assert_eq!(lib, Library::Path("/usr/lib/libvulkan_virtio.so".into()));
    }

    #[test]
    fn missing_or_empty_library_is_an_error() {
        assert!(library(Path::new("/x.json"), br#"{"ICD":{}}"#).is_err());
        assert!(matches!(
            library(Path::new("/x.json"), br#"{"ICD":{"library_path":""}}"#),
            Err(IcdError::NoLibrary)
        ));
    }
}
