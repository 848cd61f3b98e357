//! The shared-memory window through which the guest maps host GPU memory (Venus blobs), sized per
//! VMM. The window is guest-physical address space, not allocated RAM: what bounds it is where it
//! must fit.

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// krunkit: 63488 MiB minus the guest RAM rounded up to a GiB, capped at the host's RAM. RAM and
/// window together must stay inside the 36-bit (64 GiB) guest physical address space of
/// Apple's Hypervisor.framework.
pub fn krunkit_window_mib(ram_mib: u64, host_ram_mib: u64) -> u64 {
    let ram_rounded = ram_mib.div_ceil(1024) * 1024;
    63488u64.saturating_sub(ram_rounded).min(host_ram_mib)
}

/// QEMU's `hostmem` for virtio-gpu-gl: a 64-bit PCI BAR, so a power of two, and it must fit the
/// machine's 64-bit PCI hole (32 GiB by default on q35). 8 GiB is plenty for Venus blobs;
/// a small host gets no more than its own RAM (the guest could not use more).
pub fn qemu_hostmem_bytes(host_ram_bytes: u64) -> u64 {
    let cap = 8 * GIB;
    let ram_pow2 = if host_ram_bytes < 256 * MIB {
        256 * MIB
    } else {
        1 << (63 - host_ram_bytes.leading_zeros())
    };
    ram_pow2.min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn krunkit_window_fills_the_address_space_left_by_ram() {
        // 4 GiB guest on a 64 GiB Mac: 62 GiB - 4 GiB.
        assert_eq!(krunkit_window_mib(4096, 65536), 63488 - 4096);
        // RAM is rounded up to whole GiB first.
        assert_eq!(krunkit_window_mib(4097, 65536), 63488 - 5120);
        // A 16 GiB Mac: the window never exceeds host RAM.
        assert_eq!(krunkit_window_mib(4096, 16384), 16384);
        // RAM that uses up the space leaves no window.
        assert_eq!(krunkit_window_mib(63488, 131072), 0);
    }

    #[test]
    fn qemu_hostmem_is_a_power_of_two_within_the_pci_hole() {
        for host in [GIB, 3 * GIB, 24 * GIB, 512 * GIB, 100 * MIB] {
            let h = qemu_hostmem_bytes(host);
            assert!(h.is_power_of_two(), "{h}");
            assert!(h <= 8 * GIB, "fits the 64-bit PCI hole with room");
        }
        assert_eq!(qemu_hostmem_bytes(24 * GIB), 8 * GIB);
        assert_eq!(
            qemu_hostmem_bytes(3 * GIB),
            2 * GIB,
            "not more than host RAM"
        );
        assert_eq!(qemu_hostmem_bytes(100 * MIB), 256 * MIB, "a usable minimum");
    }
}
