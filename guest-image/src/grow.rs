//! Grows a machine disk's root partition to the end of its file, on the host, when the file was
//! made longer (`create`, `set --disk-size`): the guest then only grows the filesystem, where
//! systemd-repart's run had cost seconds of every first boot under TCG. The disk is the guest's
//! to write, so its partition table is read as untrusted, with the checks an image's gets.

use crate::inspect::{self, Headers, InspectError};
use gpt::mbr::ProtectiveMBR;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Partitions end on a MiB boundary, as the image's do (2048 sectors of 512 bytes).
const ALIGN_SECTORS: u64 = 2048;
/// The partition entries of a GPT as every tool writes it.
const ENTRIES: u32 = 128;

#[derive(Debug, thiserror::Error)]
pub enum GrowError {
    #[error(transparent)]
    Table(#[from] InspectError),
    #[error("the disk has no partition named {0:?} to grow")]
    NoPartition(String),
    #[error(
        "the partition {0:?} is not the last on the disk, so it cannot grow into the new space"
    )]
    NotLast(String),
    #[error("the disk's partition table has {0} entries: only GPT's usual 128 are grown")]
    Entries(u32),
    #[error("cannot write the disk's partition table")]
    Write(#[source] io::Error),
}

/// Moves the GPT's backup to the end of `disk` and grows the partition named `name`, which must
/// be the last one, up to it (a MiB boundary). Returns whether the partition grew: not when the
/// disk has no whole MiB more room after it. Fails without changing the disk.
pub fn grow_root(disk: &Path, name: &str) -> Result<bool, GrowError> {
    let file = File::options()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(inspect::gpt_error)?;
    let sectors = file.metadata().map_err(inspect::gpt_error)?.len() / 512;
    let mut gpt = inspect::read_gpt(file, Headers::PrimaryOnly)?;
    let h = gpt.primary_header().map_err(inspect::gpt_error)?;
    // The crate rewrites a table of any other size as 128 entries.
    if h.num_parts != ENTRIES {
        return Err(GrowError::Entries(h.num_parts));
    }
    // The backup's table and header take the disk's last sectors.
    let table_sectors = (u64::from(h.num_parts) * u64::from(h.part_size)).div_ceil(512);
    let table_len = (2 + table_sectors) * 512;
    let Some(last_usable) = sectors.checked_sub(table_sectors + 2) else {
        return Ok(false);
    };
    let mut parts = gpt.partitions().clone();
    // By its entry, not its GUID: the guest could give two entries the same one.
    let (&root, root_last) = parts
        .iter()
        .find(|(_, p)| p.is_used() && p.name == name)
        .map(|(id, p)| (id, p.last_lba))
        .ok_or_else(|| GrowError::NoPartition(name.to_owned()))?;
    if parts
        .iter()
        .any(|(&id, p)| id != root && p.is_used() && p.last_lba > root_last)
    {
        return Err(GrowError::NotLast(name.to_owned()));
    }
    let end = ((last_usable + 1) / ALIGN_SECTORS * ALIGN_SECTORS).saturating_sub(1);
    let grows = end > root_last;
    if !grows && h.backup_lba == sectors - 1 {
        return Ok(false);
    }
    if grows {
        parts.get_mut(&root).expect("found above").last_lba = end;
    }
    // What is rewritten in place (the protective MBR, the primary header and its table), kept so
    // that a failed write can put it back: the backup's copy goes past the disk's old end.
    let mut before = vec![0; usize::try_from(table_len).expect("a checked table is small")];
    gpt.device_ref()
        .read_exact_at(&mut before, 0)
        .map_err(GrowError::Write)?;
    let written = gpt
        .update_partitions(parts)
        .map_err(io::Error::other)
        .and_then(|()| gpt.write_inplace().map_err(io::Error::other))
        .and_then(|()| {
            // The protective MBR covers the whole disk (as far as its 32 bits reach); its boot
            // code and signature stay.
            let covered = u32::try_from(sectors - 1).unwrap_or(u32::MAX);
            ProtectiveMBR::with_lb_size(covered)
                .update_conservative(gpt.device_mut())
                .map_err(io::Error::other)?;
            gpt.device_ref().sync_all()
        });
    if let Err(e) = written {
        let f = gpt.device_ref();
        let _ = f.write_all_at(&before, 0).and_then(|()| f.sync_all());
        return Err(GrowError::Write(e));
    }
    Ok(grows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpt::disk::LogicalBlockSize;
    use gpt::partition_types;

    const MIB: u64 = 1 << 20;

    /// A disk file of `mib` MiB with an ESP and a root partition (named `root_name`) after it, or
    /// before it when `root_first`, as the image recipe lays them out.
    fn disk(dir: &Path, mib: u64, root_first: bool) -> std::path::PathBuf {
        let path = dir.join("disk.raw");
        let f = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .unwrap();
        f.set_len(mib * MIB).unwrap();
        ProtectiveMBR::with_lb_size(u32::try_from(mib * MIB / 512 - 1).unwrap())
            .overwrite_lba0(&mut &f)
            .unwrap();
        let mut g = gpt::GptConfig::new()
            .writable(true)
            .logical_block_size(LogicalBlockSize::Lb512)
            .create_from_device(f, None)
            .unwrap();
        let parts = [
            ("carbon-efi", partition_types::EFI, 8 * MIB),
            ("carbon-root", partition_types::LINUX_ROOT_X64, 16 * MIB),
        ];
        let order: Vec<_> = if root_first {
            parts.iter().rev().collect()
        } else {
            parts.iter().collect()
        };
        for (name, kind, len) in order {
            g.add_partition(name, *len, kind.clone(), 0, Some(ALIGN_SECTORS))
                .unwrap();
        }
        g.write().unwrap();
        path
    }

    fn table(path: &Path) -> gpt::GptDisk<File> {
        inspect::read_gpt(File::open(path).unwrap(), Headers::Both).unwrap()
    }

    fn root_last(g: &gpt::GptDisk<File>) -> u64 {
        let p = g.partitions().values().find(|p| p.name == "carbon-root");
        p.unwrap().last_lba
    }

    #[test]
    fn the_root_grows_to_the_disks_new_end_and_both_headers_describe_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = disk(dir.path(), 32, false);
        let before = table(&path);
        let esp = before.partitions()[&1].clone();
        let guid = *before.guid();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(64 * MIB)
            .unwrap();
        assert!(grow_root(&path, "carbon-root").unwrap());

        // Both headers valid and at the disk's ends (read_gpt checks them against its size).
        let after = table(&path);
        let sectors = 64 * MIB / 512;
        assert_eq!(after.primary_header().unwrap().backup_lba, sectors - 1);
        assert_eq!(after.backup_header().unwrap().current_lba, sectors - 1);
        assert_eq!(after.header().last_usable, sectors - 34);
        // The root ends on the last whole MiB before the backup table; the rest is unchanged.
        assert_eq!(root_last(&after), sectors - ALIGN_SECTORS - 1);
        assert_eq!(after.partitions()[&1], esp);
        assert_eq!(*after.guid(), guid);
        let mbr =
            ProtectiveMBR::from_disk(&mut File::open(&path).unwrap(), LogicalBlockSize::Lb512);
        assert_eq!(
            mbr.unwrap().partition(0).unwrap().lb_size,
            (sectors - 1) as u32
        );

        // Grown again without more room: nothing to do.
        assert!(!grow_root(&path, "carbon-root").unwrap());
        assert_eq!(root_last(&table(&path)), sectors - ALIGN_SECTORS - 1);
    }

    #[test]
    fn a_disk_grown_by_too_little_for_the_root_gets_its_backup_moved_and_the_root_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = disk(dir.path(), 32, false);
        assert!(grow_root(&path, "carbon-root").unwrap());
        let root = root_last(&table(&path));
        let bytes = std::fs::read(&path).unwrap();
        assert!(!grow_root(&path, "carbon-root").unwrap());
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "nothing to do, nothing written"
        );

        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(32 * MIB + 16 * 1024).unwrap();
        assert!(!grow_root(&path, "carbon-root").unwrap());
        let after = table(&path);
        assert_eq!(root_last(&after), root);
        assert_eq!(
            after.primary_header().unwrap().backup_lba,
            (32 * MIB + 16 * 1024) / 512 - 1
        );
    }

    #[test]
    fn a_root_that_is_not_last_or_not_there_is_refused_and_the_disk_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = disk(dir.path(), 32, true);
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(64 * MIB).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let e = grow_root(&path, "carbon-root").unwrap_err();
        assert!(matches!(e, GrowError::NotLast(_)), "{e}");
        let e = grow_root(&path, "nope").unwrap_err();
        assert!(matches!(e, GrowError::NoPartition(_)), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn a_later_partition_sharing_the_roots_guid_is_still_after_it() {
        // A guest's table whose ESP, after the root, carries the root's GUID: refused as not
        // last, not grown over the other.
        let dir = tempfile::tempdir().unwrap();
        let path = disk(dir.path(), 32, true);
        let mut g = gpt::GptConfig::new()
            .writable(true)
            .logical_block_size(LogicalBlockSize::Lb512)
            .open(&path)
            .unwrap();
        let mut parts = g.partitions().clone();
        let guid = parts
            .values()
            .find(|p| p.name == "carbon-root")
            .unwrap()
            .part_guid;
        for p in parts.values_mut() {
            p.part_guid = guid;
        }
        g.update_partitions(parts).unwrap();
        g.write().unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(64 * MIB).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let e = grow_root(&path, "carbon-root").unwrap_err();
        assert!(matches!(e, GrowError::NotLast(_)), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn a_disk_without_a_partition_table_is_refused_and_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        std::fs::write(&path, vec![0x5a; (2 * MIB) as usize]).unwrap();
        let e = grow_root(&path, "carbon-root").unwrap_err();
        assert!(matches!(e, GrowError::Table(_)), "{e}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            vec![0x5a; (2 * MIB) as usize]
        );
    }
}
