//! The default images' disks boot by EFI alone, as krunkit boots them (krunkit has no direct
//! kernel boot: its firmware starts the disk's bootloader): QEMU with EDK2 firmware and no
//! `-kernel`, firmware -> systemd-boot on the EFI system partition -> the image's kernel and
//! initrd -> the guest's carbon-ready unit says `Ready <host key>` on the virtio-serial port
//! `carbon.ready`. x86_64 under OVMF; aarch64 (the Apple Silicon image) under Debian's
//! qemu-efi-aarch64 on `-machine virt -cpu max`, the EDK2 family of krunkit's own firmware
//! (KRUN_EFI, on macOS): this proves the disks' EFI layout, not krunkit.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// EDK2's code and variable-store templates, as Debian's `ovmf` and `qemu-efi-aarch64` install
/// them.
fn firmware(arch: &str) -> (PathBuf, PathBuf) {
    let pairs: &[(&str, &str)] = match arch {
        "x86_64" => &[
            ("OVMF/OVMF_CODE_4M.fd", "OVMF/OVMF_VARS_4M.fd"),
            ("OVMF/OVMF_CODE.fd", "OVMF/OVMF_VARS.fd"),
        ],
        _ => &[("AAVMF/AAVMF_CODE.fd", "AAVMF/AAVMF_VARS.fd")],
    };
    let dir = Path::new("/usr/share");
    pairs
        .iter()
        .map(|(c, v)| (dir.join(c), dir.join(v)))
        .find(|(c, v)| c.is_file() && v.is_file())
        .expect("EDK2 is installed (scripts/install-deps installs ovmf and qemu-efi-aarch64)")
}

#[test]
fn default_image_boots_by_efi_to_ready() {
    let Some(image) = common::default_image() else {
        return;
    };
    boot_by_efi(&image, "x86_64");
}

#[test]
fn aarch64_image_boots_by_efi_to_ready_with_16k_pages() {
    let Some(image) = common::aarch64_image() else {
        return;
    };
    let log = boot_by_efi(&image, "aarch64");
    // The kernel the Mac needs, 16 KiB pages, is the one that booted.
    assert!(
        log.contains("Linux version ") && log.contains("-arm64-16k "),
        "not the 16 KiB-page kernel: {}",
        common::tail(&log, 3000)
    );
}

/// Boots `image`'s disk under EDK2 to Ready; returns the console log.
fn boot_by_efi(image: &Path, arch: &str) -> String {
    let (code, vars_template) = firmware(arch);
    let env = common::Env::new();
    let sha = common::sha256_file(image);
    let v = env.pull(image.to_str().unwrap(), Some(&sha));
    assert_eq!(v["arch"], arch, "{v}");
    let page = if arch == "aarch64" { 16384 } else { 4096 };
    assert_eq!(v["page_size"], page, "the manifest's page size: {v}");
    let dir = tempfile::tempdir().unwrap();
    let vars = dir.path().join("vars.fd");
    std::fs::copy(&vars_template, &vars).unwrap();
    let sock = dir.path().join("ready.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let console = dir.path().join("console.log");
    let (qemu_bin, machine, accel) = match arch {
        "x86_64" => ("qemu-system-x86_64", "q35", "tcg,thread=single"),
        _ => ("qemu-system-aarch64", "virt", "tcg"),
    };
    let mut cmd = Command::new(qemu_bin);
    cmd.args([
        "-machine", machine, "-accel", accel, "-m", "2048", "-smp", "2",
    ]);
    if arch == "aarch64" {
        cmd.args(["-cpu", "max"]);
    }
    let started = Instant::now();
    let mut qemu = cmd
        .args(["-nographic", "-no-reboot", "-snapshot"])
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={}",
            code.display()
        ))
        .arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=1,file={}",
            vars.display()
        ))
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=raw",
            v["disk"].as_str().unwrap()
        ))
        .args(["-device", "virtio-serial-pci"])
        .arg("-chardev")
        .arg(format!("socket,id=ready,path={}", sock.display()))
        .args(["-device", "virtserialport,chardev=ready,name=carbon.ready"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .args(["-monitor", "none"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{qemu_bin} is installed (scripts/install-deps): {e}"));
    // QEMU connects to our socket at start-up; the guest writes one line when it is ready.
    let (conn, _) = listener.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(900)))
        .unwrap();
    let mut line = String::new();
    let got = BufReader::new(conn).read_line(&mut line);
    let _ = qemu.kill();
    let _ = qemu.wait();
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    let tail = common::tail(&log, 3000);
    assert!(
        got.is_ok() && line.trim().starts_with("Ready ssh-ed25519 "),
        "no Ready from the {arch} guest ({got:?}, {line:?}); console tail:\n{tail}"
    );
    // The kernel was started by EFI firmware (it reports the EFI system table), not by QEMU.
    assert!(
        log.contains("efi: EFI v"),
        "the kernel did not come up through EFI; console tail:\n{tail}"
    );
    eprintln!(
        "{arch}: EFI boot to Ready in {:.1} s (TCG)",
        started.elapsed().as_secs_f64()
    );
    log
}
