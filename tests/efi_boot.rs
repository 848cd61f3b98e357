//! The default image's disk boots by EFI alone, as krunkit boots its disks (krunkit has no
//! direct kernel boot: its firmware starts the disk's bootloader): QEMU with EDK2 firmware
//! (OVMF) and no `-kernel`, firmware -> systemd-boot on the EFI system partition -> the image's
//! kernel and initrd -> the guest's carbon-ready unit says `Ready <host key>` on the
//! virtio-serial port `carbon.ready`. The aarch64 (Apple Silicon) image boots the same way,
//! under EDK2 for aarch64, in the Mac rehearsal (tests/krunkit_machine.rs), which asserts its
//! EFI boot and 16 KiB-page kernel.

mod common;

use common::boot::{self, Boot};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// OVMF's code and variable-store templates, as Debian's `ovmf` installs them.
fn firmware() -> (PathBuf, PathBuf) {
    let dir = Path::new("/usr/share/OVMF");
    [
        ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd"),
        ("OVMF_CODE.fd", "OVMF_VARS.fd"),
    ]
    .iter()
    .map(|(c, v)| (dir.join(c), dir.join(v)))
    .find(|(c, v)| c.is_file() && v.is_file())
    .expect("OVMF is installed (scripts/install-deps installs ovmf)")
}

#[test]
fn default_image_boots_by_efi_to_ready() {
    let Some(image) = common::default_image() else {
        return;
    };
    let (code, vars_template) = firmware();
    let env = common::Env::new();
    let sha = common::sha256_file(&image);
    let v = env.pull(image.to_str().unwrap(), Some(&sha));
    assert_eq!(v["arch"], "x86_64", "{v}");
    assert_eq!(v["page_size"], 4096, "the manifest's page size: {v}");
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("vars.fd");
    std::fs::copy(&vars_template, &vars).unwrap();
    let started = Instant::now();
    let booted = boot::to_ready(
        v["disk"].as_str().unwrap(),
        Boot::Efi {
            code: &code,
            vars: &vars,
        },
        Duration::from_secs(900),
    );
    booted.assert_ready();
    let tail = common::tail(&booted.console, 3000);
    // The kernel was started by EFI firmware (it reports the EFI system table), not by QEMU.
    assert!(
        booted.console.contains("efi: EFI v"),
        "the kernel did not come up through EFI; console tail:\n{tail}"
    );
    eprintln!(
        "EFI boot to Ready in {:.1} s (TCG)",
        started.elapsed().as_secs_f64()
    );
}
