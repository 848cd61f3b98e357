//! The default image boots by direct kernel boot under QEMU (TCG: no usable KVM here) from its own
//! kernel, initrd and command line, and the guest's carbon-ready unit says `Ready` on the
//! virtio-serial port `carbon.ready`, with its SSH host key for the host to pin. This is the
//! image alone, without carbon-vm's machine layer.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn default_image_boots_to_ready_under_qemu() {
    let Some(image) = common::default_image() else {
        return;
    };
    let env = common::Env::new();
    let sha = common::sha256_file(&image);
    let v = env.pull(image.to_str().unwrap(), Some(&sha));
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ready.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let cmdline = format!("{} console=ttyS0", v["cmdline"].as_str().unwrap());
    let console = dir.path().join("console.log");
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg,thread=single",
            "-m",
            "2048",
            "-smp",
            "2",
            "-nographic",
            "-no-reboot",
            "-snapshot",
        ])
        .args([
            "-kernel",
            v["kernel"].as_str().unwrap(),
            "-initrd",
            v["initrd"].as_str().unwrap(),
        ])
        .args(["-append", &cmdline])
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
        .expect("qemu-system-x86_64 is installed (scripts/install-deps)");
    // QEMU connects to our socket at start-up; the guest writes one line when it is ready.
    let conn = common::vmm_connects(&listener, &mut qemu, &console);
    conn.set_read_timeout(Some(Duration::from_secs(600)))
        .unwrap();
    let mut line = String::new();
    let got = BufReader::new(conn).read_line(&mut line);
    let _ = qemu.kill();
    let _ = qemu.wait();
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    assert!(
        got.is_ok() && line.trim().starts_with("Ready ssh-ed25519 "),
        "no Ready from the guest ({got:?}, {line:?}); console tail:\n{}",
        common::tail(&log, 3000)
    );
}
