//! An image's disk as `pull` and `image verify` read it (`guest_image::inspect::verify_venus`):
//! the GPT (primary and backup headers, the partition table) and the ext4 root filesystem in it
//! (superblock, group descriptors, inodes, extents, directories, symlinks), down to the Venus
//! ICD's JSON; then the same disk as a machine's, grown on the host (`guest_image::grow`).
//!
//! The GPT's CRC32s would stop nearly every mutation at the first check: an input whose first
//! byte is zero (the protective MBR's boot code, which nothing reads; every seed's) has them made
//! right before it is read, and any other input is read as it is, so the checks are fuzzed too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::Write;
use std::sync::LazyLock;

static MANIFEST: LazyLock<guest_image::Manifest> = LazyLock::new(|| carbon_vm_fuzz::manifest(&[]));

const SECTOR: usize = 512;
/// The bytes of a GPT header that its CRC32 covers (all the `gpt` crate reads).
const HEADER_LEN: usize = 92;

fuzz_target!(|data: &[u8]| {
    let mut bytes = data.to_vec();
    if bytes.first() == Some(&0) {
        fix_gpt_checksums(&mut bytes);
    }
    let dir = carbon_vm_fuzz::scratch();
    let disk = dir.path().join("disk.raw");
    std::fs::File::create(&disk)
        .and_then(|mut f| f.write_all(&bytes))
        .expect("writing the disk");
    let _ = guest_image::inspect::verify_venus(&disk, &MANIFEST);
    // The same bytes as a machine's disk, whose table the guest writes, made a MiB longer and
    // its root grown to the new end as `set --disk-size` does (`guest_image::grow`).
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .and_then(|f| f.set_len(bytes.len() as u64 + (1 << 20)))
        .expect("lengthening the disk");
    let _ = guest_image::grow::grow_root(&disk, ROOT);
});

/// The root partition's name in every seed (the image recipe's).
const ROOT: &str = "carbon-root";

fn le32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes(b[at..at + 4].try_into().unwrap()))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Sets the partition table's and the header's CRC32 of the primary header (LBA 1) and of the
/// backup header (the last whole sector, where the `gpt` crate looks for it).
fn fix_gpt_checksums(d: &mut [u8]) {
    if d.len() < 3 * SECTOR {
        return;
    }
    let backup = (d.len() - SECTOR) / SECTOR * SECTOR;
    for hdr in [SECTOR, backup] {
        let table = le64(d, hdr + 72)
            .checked_mul(SECTOR as u64)
            .zip(le32(d, hdr + 80).checked_mul(le32(d, hdr + 84)))
            .and_then(|(start, len)| {
                Some((usize::try_from(start).ok()?, usize::try_from(len).ok()?))
            })
            .and_then(|(start, len)| d.get(start..start.checked_add(len)?));
        if let Some(table) = table {
            let crc = crc32fast::hash(table);
            d[hdr + 88..hdr + 92].copy_from_slice(&crc.to_le_bytes());
        }
        d[hdr + 16..hdr + 20].fill(0);
        let crc = crc32fast::hash(&d[hdr..hdr + HEADER_LEN]);
        d[hdr + 16..hdr + 20].copy_from_slice(&crc.to_le_bytes());
    }
}
