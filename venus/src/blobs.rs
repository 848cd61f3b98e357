//! The Mac's page constraint, checked on any QEMU host: Hypervisor.framework maps guest memory in
//! 16 KiB pages and libkrun maps each host-visible virtio-gpu blob at its size unrounded, so a
//! blob whose size is not a multiple of 16384 fails on a Mac (`VK_ERROR_OUT_OF_HOST_MEMORY`).
//! QEMU logs every blob the guest creates (trace event [`TRACE_EVENT`]); [`audit`] reads that log.

use serde::Serialize;

/// QEMU's trace event for blob creation: `res 0x%x, size %" PRId64`.
pub const TRACE_EVENT: &str = "virtio_gpu_cmd_res_create_blob";

/// The page size of a Mac host's guest memory mappings.
pub const MAC_PAGE: u64 = 16384;

/// What the guest's blobs mean for a Mac host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlobAudit {
    /// Blobs the guest created since the VM started.
    pub blobs: usize,
    /// Their sizes that are not multiples of [`MAC_PAGE`] (each size once, ascending).
    pub unaligned_sizes: Vec<u64>,
    /// How many blobs had such a size.
    pub unaligned: usize,
    /// The largest blob.
    pub max_size: u64,
    /// Whether every blob would map on a Mac host (and at least one was seen).
    pub mac_ok: bool,
}

/// The sizes in a QEMU log holding [`TRACE_EVENT`] lines (other lines are ignored). The log
/// backend prefixes each line with `PID@SECONDS:` or nothing, depending on QEMU's options.
pub fn sizes(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find(TRACE_EVENT)? + TRACE_EVENT.len()..];
            rest.rsplit_once("size ")?.1.trim().parse().ok()
        })
        .collect()
}

pub fn audit(log: &str) -> BlobAudit {
    let sizes = sizes(log);
    let mut unaligned_sizes: Vec<u64> = sizes
        .iter()
        .copied()
        .filter(|s| s % MAC_PAGE != 0)
        .collect();
    let unaligned = unaligned_sizes.len();
    unaligned_sizes.sort_unstable();
    unaligned_sizes.dedup();
    BlobAudit {
        blobs: sizes.len(),
        unaligned_sizes,
        unaligned,
        max_size: sizes.iter().copied().max().unwrap_or(0),
        mac_ok: !sizes.is_empty() && unaligned == 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_log_prefixes_are_read_and_other_lines_ignored() {
        let log = "\
12345@1764640000.123456:virtio_gpu_cmd_res_create_blob res 0x1, size 147456
virtio_gpu_cmd_res_create_blob res 0x2, size 16384
qemu-system-aarch64: some warning
12345@1764640000.2:virtio_gpu_cmd_res_create_blob res 0xa, size 4096
";
        assert_eq!(sizes(log), [147456, 16384, 4096]);
    }

    #[test]
    fn a_4k_guest_is_named_and_a_16k_guest_passes() {
        let line = |s: u64| format!("virtio_gpu_cmd_res_create_blob res 0x1, size {s}\n");
        let k16: String = [147456, 16384, 65536].map(line).concat();
        let a = audit(&k16);
        assert!(a.mac_ok, "{a:?}");
        assert_eq!((a.blobs, a.max_size), (3, 147456));

        let k4: String = [135168, 4096, 4096, 32768].map(line).concat();
        let a = audit(&k4);
        assert!(!a.mac_ok);
        assert_eq!(a.unaligned, 3);
        assert_eq!(a.unaligned_sizes, [4096, 135168]);
    }

    #[test]
    fn no_blobs_is_not_a_pass() {
        assert!(!audit("").mac_ok);
    }
}
