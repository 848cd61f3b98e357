//! Looks inside an image's disk without mounting it: finds the root partition in the GPT and
//! reads the ext4 filesystem there, to prove the image really bundles Venus.

use crate::manifest::Manifest;
use crate::untrusted::Untrusted;
use ext4_view::{Ext4, Ext4Read, Metadata};
use gpt::header::Header;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The only GPT entry size carbon-vm (and the `gpt` crate) reads.
const GPT_ENTRY_SIZE: u32 = 128;
/// More entries than a GPT normally has (128) are refused: the table is read entry by entry.
const MAX_GPT_ENTRIES: u32 = 1024;
/// Symlink targets longer than Linux's PATH_MAX are refused unread, and so are lookups that
/// follow more symlinks than Linux does before ELOOP.
const MAX_SYMLINK_BYTES: u64 = 4096;
const MAX_SYMLINKS: u32 = 40;
/// An ICD manifest is a few hundred bytes. A larger one is refused unread: the ext4 reader
/// allocates whatever size the file's inode claims (found by fuzzing: docs/fuzzing.md).
const MAX_ICD_BYTES: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("cannot read the disk's partition table")]
    Gpt(#[source] Untrusted),
    #[error("the {which} GPT header does not describe this {sectors}-sector disk: {what}")]
    BadGptHeader {
        which: &'static str,
        sectors: u64,
        what: &'static str,
    },
    #[error(
        "GPT partition {name:?} (sectors {first} to {last}) lies outside the usable sectors {first_usable} to {last_usable}"
    )]
    BadPartition {
        name: String,
        first: u64,
        last: u64,
        first_usable: u64,
        last_usable: u64,
    },
    #[error("the disk has no partition named {0:?}")]
    NoPartition(String),
    #[error("cannot read the root filesystem")]
    Ext4(#[source] Untrusted),
    #[error("the root filesystem claims {blocks} blocks, more than its {len}-byte partition holds")]
    Ext4TooLarge { blocks: u64, len: u64 },
    #[error("the Venus ICD {0:?} is not a regular file in the root filesystem")]
    NoIcd(String),
    #[error("the Venus ICD {0:?} is invalid")]
    BadIcd(String, #[source] Untrusted),
    #[error("the Venus ICD {0:?} is {1} bytes, more than an ICD manifest's {MAX_ICD_BYTES}")]
    HugeIcd(String, u64),
    #[error("the Venus ICD names {0:?}, which is not a regular file in the root filesystem")]
    NoLibrary(String),
    #[error("the manifest's Venus library {0:?} is not a regular file in the root filesystem")]
    NoDeclaredLibrary(String),
    #[error("the bundled container image {0:?} is not a regular file in the root filesystem")]
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

pub(crate) fn gpt_error(e: impl std::error::Error + 'static) -> InspectError {
    InspectError::Gpt(Untrusted::of(e))
}

/// Checks a GPT header against the disk it is on: the table, the usable range and the backup
/// header must all lie inside it, in the only layout the `gpt` crate reads without panicking.
fn check_header(which: &'static str, h: &Header, sectors: u64) -> Result<(), InspectError> {
    let entry_sectors = (u64::from(h.num_parts) * u64::from(GPT_ENTRY_SIZE)).div_ceil(512);
    let what = if h.part_size != GPT_ENTRY_SIZE {
        Some("partition entries are not 128 bytes")
    } else if h.num_parts > MAX_GPT_ENTRIES {
        Some("absurdly many partition entries")
    } else if h.current_lba >= sectors || h.backup_lba >= sectors {
        Some("a header lies past the end")
    } else if h.first_usable > h.last_usable || h.last_usable >= sectors {
        Some("the usable sectors are not inside the disk")
    } else if h.part_start < 2 || h.part_start.saturating_add(entry_sectors) > sectors {
        Some("the partition table is not inside the disk")
    } else {
        None
    };
    match what {
        Some(what) => Err(InspectError::BadGptHeader {
            which,
            sectors,
            what,
        }),
        None => Ok(()),
    }
}

/// Which of a disk's GPT headers [`read_gpt`] reads.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Headers {
    /// Both, each checked: an image's disk as it was packed.
    Both,
    /// The primary alone, the table read to be rewritten: a disk file just made longer, whose
    /// backup header is not yet at its end (`grow::grow_root` then writes it there).
    PrimaryOnly,
}

/// The GPT of the disk `file`, its headers and every used partition checked against the disk
/// first, in the only layout the `gpt` crate reads without panicking.
pub(crate) fn read_gpt(
    mut file: File,
    headers: Headers,
) -> Result<gpt::GptDisk<File>, InspectError> {
    let lb = gpt::disk::LogicalBlockSize::Lb512;
    let sectors = file.metadata().map_err(gpt_error)?.len() / 512;
    // The primary header first, alone: the crate asserts on what it does not expect.
    let primary =
        gpt::header::read_header_from_arbitrary_device(&mut file, lb).map_err(gpt_error)?;
    check_header("primary", &primary, sectors)?;
    let gpt = gpt::GptConfig::new()
        .writable(headers == Headers::PrimaryOnly)
        .only_valid_headers(headers == Headers::Both)
        .logical_block_size(lb)
        .open_from_device(file)
        .map_err(gpt_error)?;
    if headers == Headers::Both {
        let backup = gpt.backup_header().map_err(gpt_error)?;
        check_header("backup", backup, sectors)?;
    }
    let h = gpt.primary_header().map_err(gpt_error)?;
    for p in gpt.partitions().values().filter(|p| p.is_used()) {
        if p.first_lba < h.first_usable || p.first_lba > p.last_lba || p.last_lba > h.last_usable {
            return Err(InspectError::BadPartition {
                name: p.name.clone(),
                first: p.first_lba,
                last: p.last_lba,
                first_usable: h.first_usable,
                last_usable: h.last_usable,
            });
        }
    }
    Ok(gpt)
}

/// Opens the ext4 filesystem in the partition named `name`, after checking the partition table
/// against the disk it describes.
pub fn open_partition(disk: &Path, name: &str) -> Result<Ext4, InspectError> {
    let lb = gpt::disk::LogicalBlockSize::Lb512;
    let gpt = read_gpt(File::open(disk).map_err(gpt_error)?, Headers::Both)?;
    let part = gpt
        .partitions()
        .values()
        .find(|p| p.name == name)
        .ok_or_else(|| InspectError::NoPartition(name.to_owned()))?;
    let (offset, len) = (
        part.bytes_start(lb).map_err(gpt_error)?,
        part.bytes_len(lb).map_err(gpt_error)?,
    );
    let mut window = Window {
        file: gpt.take_device(),
        offset,
        len,
    };
    check_block_count(&mut window)?;
    Ext4::load(Box::new(window)).map_err(|e| InspectError::Ext4(Untrusted::of(e)))
}

/// ext4-view sizes its table of block groups from the superblock's block count before it reads
/// anything else, so a count no partition holds is an allocation of gigabytes (found by fuzzing:
/// docs/fuzzing.md). A filesystem larger than its partition is refused first, as the kernel
/// refuses one larger than its device; a block is at least 1 KiB.
fn check_block_count(w: &mut Window) -> Result<(), InspectError> {
    let mut sb = [0u8; 1024];
    w.read(1024, &mut sb)
        .map_err(|e| InspectError::Ext4(Untrusted::from_error(&*e)))?;
    let le32 = |at: usize| {
        u64::from(u32::from_le_bytes([
            sb[at],
            sb[at + 1],
            sb[at + 2],
            sb[at + 3],
        ]))
    };
    // s_blocks_count_hi and _lo, as ext4-view reads them (the high half whatever the features).
    let blocks = (le32(0x150) << 32) | le32(0x4);
    if blocks.saturating_mul(1024) > w.len {
        return Err(InspectError::Ext4TooLarge { blocks, len: w.len });
    }
    Ok(())
}

/// `path` (absolute) inside `fs` with every symlink resolved the way the guest resolves it (an
/// absolute or `..` target cannot leave the filesystem), and what it names; `None` where it does
/// not resolve. carbon-vm follows the symlinks itself, each target's size checked first, so that
/// ext4-view only ever looks up paths without one: it reads a symlink's target at whatever size
/// the inode claims (found by fuzzing: docs/fuzzing.md).
fn resolve(fs: &Ext4, path: &[u8]) -> Option<(Vec<u8>, Metadata)> {
    if !path.starts_with(b"/") {
        return None;
    }
    let joined = |names: &[Vec<u8>]| [&b"/"[..], &names.join(&b'/')].concat();
    // `names`: the path resolved so far, no symlink in it; `pending`: the names still to walk,
    // the next last. Both stay small: at most MAX_SYMLINKS targets of MAX_SYMLINK_BYTES join in.
    let mut names: Vec<Vec<u8>> = Vec::new();
    let mut pending: Vec<Vec<u8>> = path
        .split(|&b| b == b'/')
        .rev()
        .map(<[u8]>::to_vec)
        .collect();
    let mut links = 0;
    while let Some(name) = pending.pop() {
        match name.as_slice() {
            b"" | b"." => {}
            b".." => {
                names.pop();
            }
            _ => {
                names.push(name);
                let here = joined(&names);
                let m = fs.symlink_metadata(here.as_slice()).ok()?;
                if m.file_type().is_symlink() {
                    links += 1;
                    if links > MAX_SYMLINKS || m.len() > MAX_SYMLINK_BYTES {
                        return None;
                    }
                    let target = fs.read_link(here.as_slice()).ok()?;
                    let target: &[u8] = target.as_ref();
                    names.pop();
                    if target.starts_with(b"/") {
                        names.clear();
                    }
                    pending.extend(target.split(|&b| b == b'/').rev().map(<[u8]>::to_vec));
                } else if !pending.is_empty() && !m.is_dir() {
                    return None; // a name after a file
                }
            }
        }
    }
    let here = joined(&names);
    let m = fs.symlink_metadata(here.as_slice()).ok()?;
    Some((here, m))
}

/// Checks that the root filesystem holds the Venus ICD, the library it names, the library the
/// manifest declares, and every bundled container image. Returns the library the ICD resolves to.
pub fn verify_venus(disk: &Path, manifest: &Manifest) -> Result<PathBuf, InspectError> {
    let fs = open_partition(disk, &manifest.boot.root_partition)?;
    let b = &manifest.bundles;
    // Symlinks are followed the way the guest would, inside this filesystem: an absolute or
    // `..` target cannot leave it. What they end at must be a regular file.
    let file = |p: &Path| {
        resolve(&fs, p.as_os_str().as_bytes()).filter(|(_, m)| m.file_type().is_regular_file())
    };
    let is_file = |p: &Path| file(p).is_some();
    let (icd_path, icd) =
        file(Path::new(&b.venus_icd)).ok_or_else(|| InspectError::NoIcd(b.venus_icd.clone()))?;
    if icd.len() > MAX_ICD_BYTES {
        return Err(InspectError::HugeIcd(b.venus_icd.clone(), icd.len()));
    }
    let icd_json = fs
        .read(icd_path.as_slice())
        .map_err(|_| InspectError::NoIcd(b.venus_icd.clone()))?;
    let lib = venus::icd::library(Path::new(&b.venus_icd), &icd_json)
        .map_err(|e| InspectError::BadIcd(b.venus_icd.clone(), Untrusted::of(e)))?;
    let found = lib
        .candidates(&manifest.arch)
        .into_iter()
        .find(|p| is_file(p))
        .ok_or_else(|| InspectError::NoLibrary(format!("{lib:?}")))?;
    if !is_file(Path::new(&b.venus_library)) {
        return Err(InspectError::NoDeclaredLibrary(b.venus_library.clone()));
    }
    if let Some(c) = b
        .container_images
        .iter()
        .find(|c| !is_file(Path::new(&c.path)))
    {
        return Err(InspectError::NoContainerImage(c.path.clone()));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filesystem_larger_than_its_partition_is_refused_before_it_is_loaded() {
        let mut disk = vec![0u8; 2048];
        disk[1024 + 4..1024 + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        let file = tempfile::tempfile().unwrap();
        file.write_all_at(&disk, 0).unwrap();
        let mut w = Window {
            file,
            offset: 0,
            len: 2048,
        };
        assert!(matches!(
            check_block_count(&mut w),
            Err(InspectError::Ext4TooLarge {
                blocks: 0xffff_ffff,
                len: 2048
            })
        ));
        // Two blocks of 1 KiB fit.
        w.file.write_all_at(&2u32.to_le_bytes(), 1024 + 4).unwrap();
        check_block_count(&mut w).unwrap();
    }
}
