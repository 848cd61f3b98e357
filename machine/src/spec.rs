//! What a machine may ask for: CPUs and memory within its driver's limits on this host, a disk no
//! smaller than its image's. Checked by `create` before anything is written, and by `start`
//! (the host may have changed).

use crate::store::Spec;
use vmm::Limits;

/// The largest disk `create` makes (ext4's comfortable range; the file is sparse).
pub const MAX_DISK_GIB: u32 = 16 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidSpec {
    #[error("--cpus must be between 1 and {max} (this host's CPUs), not {got}")]
    Cpus { got: u8, max: u8 },
    #[error("--memory must be between {min} and {max} MiB{why}, not {got}")]
    Memory {
        got: u32,
        min: u32,
        max: u32,
        why: &'static str,
    },
    #[error(
        "--disk-size must be between {min} and {max} GiB (at least the image's disk), not {got}"
    )]
    Disk { got: u32, min: u32, max: u32 },
}

impl exit_class::Classify for InvalidSpec {
    fn class(&self) -> Option<exit_class::Class> {
        Some(exit_class::Code::Usage.bare())
    }
}

pub fn validate(spec: &Spec, limits: &Limits) -> Result<(), InvalidSpec> {
    validate_resources(spec.cpus, spec.memory_mib, spec.gpu, limits)
}

pub fn validate_resources(
    cpus: u8,
    memory_mib: u32,
    gpu: bool,
    limits: &Limits,
) -> Result<(), InvalidSpec> {
    if !(1..=limits.max_cpus).contains(&cpus) {
        return Err(InvalidSpec::Cpus {
            got: cpus,
            max: limits.max_cpus,
        });
    }
    if !(limits.min_memory_mib..=limits.max_memory_mib).contains(&memory_mib) {
        return Err(InvalidSpec::Memory {
            got: memory_mib,
            min: limits.min_memory_mib,
            max: limits.max_memory_mib,
            why: if gpu {
                " (the host's RAM, less the GPU's memory window where the VMM maps it)"
            } else {
                " (the host's RAM)"
            },
        });
    }
    Ok(())
}

/// The disk holds at least the image's disk (`image_disk_bytes`), rounded up to a GiB.
pub fn validate_disk(disk_gib: u32, image_disk_bytes: u64) -> Result<(), InvalidSpec> {
    let min = u32::try_from(image_disk_bytes.div_ceil(1 << 30)).unwrap_or(u32::MAX);
    if disk_gib < min || disk_gib > MAX_DISK_GIB {
        return Err(InvalidSpec::Disk {
            got: disk_gib,
            min,
            max: MAX_DISK_GIB,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_cpus: 4,
        min_memory_mib: 1024,
        max_memory_mib: 8192,
        shares: true,
    };

    #[test]
    fn bounds_are_inclusive_and_named_in_the_refusal() {
        assert!(validate_resources(1, 1024, false, &LIMITS).is_ok());
        assert!(validate_resources(4, 8192, true, &LIMITS).is_ok());
        assert_eq!(
            validate_resources(0, 2048, false, &LIMITS),
            Err(InvalidSpec::Cpus { got: 0, max: 4 })
        );
        assert!(validate_resources(5, 2048, false, &LIMITS).is_err());
        let e = validate_resources(2, 10, true, &LIMITS).unwrap_err();
        assert!(e.to_string().contains("between 1024 and 8192 MiB"), "{e}");
        assert!(validate_resources(2, 8193, false, &LIMITS).is_err());
    }

    #[test]
    fn the_disk_holds_the_image() {
        let image = (1 << 30) + 1; // a little over 1 GiB
        assert!(validate_disk(2, image).is_ok());
        assert_eq!(
            validate_disk(1, image),
            Err(InvalidSpec::Disk {
                got: 1,
                min: 2,
                max: MAX_DISK_GIB
            })
        );
        assert!(validate_disk(0, 4096).is_err());
        assert!(validate_disk(MAX_DISK_GIB + 1, 4096).is_err());
    }
}
