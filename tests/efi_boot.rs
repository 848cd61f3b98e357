//! The default image's disk boots by EFI alone, as krunkit boots its disks (krunkit has no
//! direct kernel boot: its firmware starts the disk's bootloader): QEMU with EDK2 firmware
//! (OVMF) and no `-kernel`, firmware -> systemd-boot on the EFI system partition -> the image's
//! kernel and initrd -> the guest's carbon-ready unit says `Ready <host key>` on the
//! virtio-serial port `carbon.ready`. The aarch64 (Apple Silicon) image boots the same way,
//! under EDK2 for aarch64, in the Mac rehearsal (tests/krunkit_machine.rs), which asserts its
//! EFI boot and 16 KiB-page kernel.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
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
    let sock = dir.path().join("ready.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let console = dir.path().join("console.log");
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-machine",
        "q35",
        "-accel",
        "tcg,thread=single",
        "-m",
        "2048",
        "-smp",
        "2",
    ]);
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
        .unwrap_or_else(|e| panic!("qemu-system-x86_64 is installed (scripts/install-deps): {e}"));
    // QEMU connects to our socket at start-up; the guest writes one line when it is ready.
    let conn = common::vmm_connects(&listener, &mut qemu, &console);
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
        "no Ready from the guest ({got:?}, {line:?}); console tail:\n{tail}"
    );
    // The kernel was started by EFI firmware (it reports the EFI system table), not by QEMU.
    assert!(
        log.contains("efi: EFI v"),
        "the kernel did not come up through EFI; console tail:\n{tail}"
    );
    eprintln!(
        "EFI boot to Ready in {:.1} s (TCG)",
        started.elapsed().as_secs_f64()
    );
}
