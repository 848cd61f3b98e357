//! Looks inside an image's disk without mounting it: finds the root partition in the GPT and
//! reads the ext4 filesystem there, to prove the image really bundles Venus.

use crate::manifest::Manifest;
use ext4_view::{Ext4, Ext4Read};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("cannot read the disk's partition table")]
    Gpt(#[source] gpt::GptError),
    #[error("the disk has no partition named {0:?}")]
    NoPartition(String),
    #[error("cannot read the root filesystem")]
    Ext4(#[source] ext4_view::Ext4Error),
    #[error("the Venus ICD {0} is missing from the root filesystem")]
    NoIcd(String),
    #[error("the Venus ICD {0} is invalid")]
    BadIcd(String, #[source] venus::icd::IcdError),
    #[error("the Venus ICD names {0:?}, which is not in the root filesystem")]
    NoLibrary(String),
    #[error("the manifest's Venus library {0} is not in the root filesystem")]
    NoDeclaredLibrary(String),
    #[error("the bundled container image {0} is missing from the root filesystem")]
    NoContainerImage(String),
}

/// A byte range of the disk file (one partition) as ext4-view reads it.
struct Window {
    file: File,
    offset: u64,
    len: u64,
}

impl Ext4Read for Window {
    fn read(
        &mut self,
        start: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        if start + dst.len() as u64 > self.len {
            return Err("read past the end of the partition".into());
        }
        self.file.read_exact_at(dst, self.offset + start)?;
        Ok(())
    }
}

/// Opens the ext4 filesystem in the partition named `name`.
pub fn open_partition(disk: &Path, name: &str) -> Result<Ext4, InspectError> {
    let gpt = gpt::GptConfig::new()
        .writable(false)
        .open(disk)
        .map_err(InspectError::Gpt)?;
    let lb = *gpt.logical_block_size();
    let part = gpt
        .partitions()
        .values()
        .find(|p| p.name == name)
        .ok_or_else(|| InspectError::NoPartition(name.to_owned()))?;
    let (offset, len) = (
        part.bytes_start(lb)
            .map_err(|e| InspectError::Gpt(e.into()))?,
        part.bytes_len(lb)
            .map_err(|e| InspectError::Gpt(e.into()))?,
    );
    let file = File::open(disk).map_err(|e| InspectError::Gpt(e.into()))?;
    Ext4::load(Box::new(Window { file, offset, len })).map_err(InspectError::Ext4)
}

/// Checks that the root filesystem holds the Venus ICD, the library it names, the library the
/// manifest declares, and every bundled container image. Returns the library the ICD resolves to.
pub fn verify_venus(disk: &Path, manifest: &Manifest) -> Result<PathBuf, InspectError> {
    let fs = open_partition(disk, &manifest.boot.root_partition)?;
    let b = &manifest.bundles;
    let exists = |p: &Path| fs.exists(p).unwrap_or(false);
    let icd_json = fs
        .read(b.venus_icd.as_str())
        .map_err(|_| InspectError::NoIcd(b.venus_icd.clone()))?;
    let lib = venus::icd::library(Path::new(&b.venus_icd), &icd_json)
        .map_err(|e| InspectError::BadIcd(b.venus_icd.clone(), e))?;
    let found = lib
        .candidates(&manifest.arch)
        .into_iter()
        .find(|p| exists(p))
        .ok_or_else(|| InspectError::NoLibrary(format!("{lib:?}")))?;
    if !exists(Path::new(&b.venus_library)) {
        return Err(InspectError::NoDeclaredLibrary(b.venus_library.clone()));
    }
    if let Some(c) = b
        .container_images
        .iter()
        .find(|c| !exists(Path::new(&c.path)))
    {
        return Err(InspectError::NoContainerImage(c.path.clone()));
    }
    Ok(found)
}
