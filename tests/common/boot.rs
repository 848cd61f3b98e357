//! The default image booted by QEMU alone (no carbon-vm machine layer, TCG) to its Ready line:
//! the one harness of the direct-boot and EFI-boot tests.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// How QEMU starts the guest.
pub enum Boot<'a> {
    /// QEMU loads the image's kernel and initrd itself (what carbon-vm's QEMU machines do).
    Direct {
        kernel: &'a str,
        initrd: &'a str,
        cmdline: &'a str,
    },
    /// EDK2 firmware boots the disk's bootloader (what krunkit does): its code and a writable
    /// copy of its variable store.
    Efi { code: &'a Path, vars: &'a Path },
}

/// What the guest said on `carbon.ready` (its lines up to Ready) and what its console shows.
pub struct Booted {
    pub said: Vec<String>,
    pub console: String,
}

impl Booted {
    /// Fails the test unless the guest said `Key <host key>` (once sshd listened), then
    /// `Ready <the same key>`.
    pub fn assert_ready(&self) {
        let ready = self.said.last().map(|l| l.trim()).unwrap_or_default();
        assert!(
            ready.starts_with("Ready ssh-ed25519 "),
            "no Ready from the guest ({:?}); console tail:\n{}",
            self.said,
            super::tail(&self.console, 3000)
        );
        let key = ready.strip_prefix("Ready ").unwrap();
        assert!(
            self.said.iter().any(|l| l.trim() == format!("Key {key}")),
            "no early key before Ready: {:?}",
            self.said
        );
    }
}

/// Boots `disk` (a snapshot: it is not written) and reads the guest's first line on its Ready
/// port, waiting at most `limit`; QEMU is killed after.
pub fn to_ready(disk: &str, boot: Boot, limit: Duration) -> Booted {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("ready.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let console = dir.path().join("console.log");
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-machine", "q35", "-accel", "tcg,thread=single"])
        .args([
            "-m",
            "2048",
            "-smp",
            "2",
            "-nographic",
            "-no-reboot",
            "-snapshot",
        ]);
    match boot {
        Boot::Direct {
            kernel,
            initrd,
            cmdline,
        } => cmd
            .args(["-kernel", kernel, "-initrd", initrd])
            .args(["-append", &format!("{cmdline} console=ttyS0")]),
        Boot::Efi { code, vars } => cmd
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                code.display()
            ))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            )),
    };
    let mut qemu = cmd
        .arg("-drive")
        .arg(format!("file={disk},if=virtio,format=raw"))
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
    // QEMU connects to our socket at start-up; the guest writes its key, then Ready.
    let conn = vmm_connects(&listener, &mut qemu, &console);
    conn.set_read_timeout(Some(limit)).unwrap();
    let mut said = Vec::new();
    for line in BufReader::new(conn).lines() {
        match line {
            Ok(l) => {
                let ready = l.starts_with("Ready");
                said.push(l);
                if ready {
                    break;
                }
            }
            Err(e) => {
                said.push(format!("nothing more: {e}"));
                break;
            }
        }
    }
    let _ = qemu.kill();
    let _ = qemu.wait();
    Booted {
        said,
        console: std::fs::read_to_string(&console).unwrap_or_default(),
    }
}

/// The connection `vmm` makes to `listener` at start-up (QEMU's Ready chardev), bounded: a VMM
/// that exits or never connects fails the test with the tail of its `console` instead of holding
/// the run on an accept with no timeout.
fn vmm_connects(
    listener: &std::os::unix::net::UnixListener,
    vmm: &mut std::process::Child,
    console: &Path,
) -> std::os::unix::net::UnixStream {
    let limit = std::time::Duration::from_secs(120);
    let deadline = std::time::Instant::now() + limit;
    listener.set_nonblocking(true).unwrap();
    loop {
        match listener.accept() {
            Ok((conn, _)) => {
                conn.set_nonblocking(false).unwrap();
                return conn;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept on {listener:?}: {e}"),
        }
        let exited = vmm.try_wait().unwrap();
        if exited.is_some() || std::time::Instant::now() > deadline {
            let _ = vmm.kill();
            let _ = vmm.wait();
            let log = std::fs::read_to_string(console).unwrap_or_default();
            panic!(
                "the VMM never connected to its Ready socket ({}); console tail:\n{}",
                exited.map_or(format!("not within {limit:?}"), |s| format!(
                    "it exited: {s}"
                )),
                super::tail(&log, 3000)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
