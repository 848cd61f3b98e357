//! virtio-fs for QEMU: one virtiofsd per shared folder. carbon-vm binds each vhost-user socket
//! itself and hands the listening socket over (`--fd`), so it accepts the moment QEMU connects,
//! with no window between virtiofsd's bind and listen. virtiofsd exits when QEMU disconnects;
//! one QEMU never connected to is killed by [`kill_stale`].

use crate::Share;
use crate::process::{self, Signal};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The listening socket's number in virtiofsd.
const FD: i32 = 3;

/// The virtiofsd a host has: both take `--fd`, but name the folder and options differently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Virtiofsd {
    /// virtiofsd 1.x (Rust): Debian trixie's `virtiofsd`, Fedora's.
    Rust(PathBuf),
    /// QEMU's own, before QEMU 8: Debian bookworm's qemu-system-common. Root only.
    C(PathBuf),
}

pub const INSTALL_HINT: &str =
    "apt-get install virtiofsd (Debian 13), or qemu-system-common (Debian 12, root only)";

/// Where distributions install it.
pub fn find() -> Option<Virtiofsd> {
    let rust = ["/usr/libexec/virtiofsd", "/usr/lib/virtiofsd"];
    if let Some(p) = rust.iter().map(Path::new).find(|p| p.is_file()) {
        return Some(Virtiofsd::Rust(p.into()));
    }
    let c = Path::new("/usr/lib/qemu/virtiofsd");
    c.is_file().then(|| Virtiofsd::C(c.into()))
}

/// Whether this host's virtiofsd can serve this user's folders.
pub fn usable() -> bool {
    let root = rustix::process::geteuid().is_root();
    find().is_some_and(|d| root || matches!(d, Virtiofsd::Rust(_)))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShareError {
    #[error("sharing folders as a user other than root needs virtiofsd 1.x ({INSTALL_HINT})")]
    NeedsRoot,
    #[error("QEMU's old virtiofsd cannot share a folder whose path has a ',': {0}")]
    Comma(PathBuf),
}

impl Virtiofsd {
    fn binary(&self) -> &Path {
        match self {
            Virtiofsd::Rust(p) | Virtiofsd::C(p) => p,
        }
    }

    /// Its arguments for `dir`. As root it confines itself to the folder and keeps the guest's
    /// owners (the Rust one with chroot, whose namespace sandbox cannot pivot out of a chroot like
    /// scripts/gpu-root's); as another user (Rust only) it runs unsandboxed and files the guest
    /// creates belong to that user, as with Podman machine.
    pub fn args(&self, dir: &Path, root: bool) -> Result<Vec<String>, ShareError> {
        let d = dir.display().to_string();
        match self {
            Virtiofsd::Rust(_) => Ok(vec![
                format!("--fd={FD}"),
                "--shared-dir".into(),
                d,
                "--cache=auto".into(),
                format!("--sandbox={}", if root { "chroot" } else { "none" }),
            ]),
            Virtiofsd::C(_) if !root => Err(ShareError::NeedsRoot),
            // `-o` splits its value on ','.
            Virtiofsd::C(_) if d.contains(',') => Err(ShareError::Comma(dir.into())),
            Virtiofsd::C(_) => Ok(vec![
                format!("--fd={FD}"),
                "-o".into(),
                format!("source={d}"),
                "-o".into(),
                "cache=auto".into(),
            ]),
        }
    }

    /// What identifies this share's virtiofsd on its command line.
    fn marker(&self, dir: &Path) -> String {
        match self {
            Virtiofsd::Rust(_) => format!("--shared-dir {}", dir.display()),
            Virtiofsd::C(_) => format!("source={}", dir.display()),
        }
    }
}

fn pidfile(s: &Share) -> PathBuf {
    s.socket.with_extension("pid")
}

/// Starts one virtiofsd per share, each on its own listening socket; `log` gets their output.
/// On error, those already started are killed.
pub fn spawn(d: &Virtiofsd, shares: &[Share], log: &Path) -> std::io::Result<Vec<Child>> {
    let root = rustix::process::geteuid().is_root();
    let mut children = Vec::new();
    for s in shares {
        match spawn_one(d, s, log, root) {
            Ok(c) => children.push(c),
            Err(e) => {
                kill(children);
                return Err(e);
            }
        }
    }
    Ok(children)
}

fn spawn_one(d: &Virtiofsd, s: &Share, log: &Path, root: bool) -> std::io::Result<Child> {
    let args = d.args(&s.dir, root).map_err(std::io::Error::other)?;
    let _ = std::fs::remove_file(&s.socket);
    let listener = UnixListener::bind(&s.socket)?;
    let raw = listener.as_raw_fd();
    let out = File::options().create(true).append(true).open(log)?;
    let mut cmd = Command::new(d.binary());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0); // like QEMU: a ^C to carbon-vm does not cut the guest's folders
    // SAFETY: between fork and exec only async-signal-safe calls (dup2, fcntl).
    unsafe {
        cmd.pre_exec(move || {
            // dup2 clears close-on-exec on the copy; a socket already at FD keeps its flag.
            let r = if raw == FD {
                libc::fcntl(FD, libc::F_SETFD, 0)
            } else {
                libc::dup2(raw, FD)
            };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    std::fs::write(pidfile(s), child.id().to_string())?;
    Ok(child)
}

/// Whether one of them has exited already (QEMU's "connection refused" is then its fault).
pub fn any_exited(children: &mut [Child]) -> bool {
    children
        .iter_mut()
        .any(|c| c.try_wait().is_ok_and(|s| s.is_some()))
}

/// Ends virtiofsd processes QEMU never connected to (a launch that failed).
pub fn kill(children: Vec<Child>) {
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Kills what a dead run left of its virtiofsd processes, found by pidfile and command line.
pub fn kill_stale(d: Option<&Virtiofsd>, shares: &[Share]) {
    for s in shares {
        let pf = pidfile(s);
        if let Some(pid) = d.and_then(|d| process::live_pid(&pf, &d.marker(&s.dir))) {
            process::signal(pid, Signal::KILL);
            process::wait_exit(pid, std::time::Duration::from_secs(10));
        }
        let _ = std::fs::remove_file(&pf);
        let _ = std::fs::remove_file(&s.socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_virtiofsd_gets_its_own_dialect_and_the_listening_socket() {
        let rust = Virtiofsd::Rust("/usr/libexec/virtiofsd".into());
        assert_eq!(
            rust.args("/home/u".as_ref(), true).unwrap(),
            [
                "--fd=3",
                "--shared-dir",
                "/home/u",
                "--cache=auto",
                "--sandbox=chroot"
            ]
        );
        assert_eq!(
            rust.args("/home/u".as_ref(), false).unwrap()[4],
            "--sandbox=none"
        );
        let c = Virtiofsd::C("/usr/lib/qemu/virtiofsd".into());
        assert_eq!(
            c.args("/home/u".as_ref(), true).unwrap(),
            ["--fd=3", "-o", "source=/home/u", "-o", "cache=auto"]
        );
        assert_eq!(
            c.args("/home/u".as_ref(), false),
            Err(ShareError::NeedsRoot)
        );
        assert_eq!(
            c.args("/a,b".as_ref(), true),
            Err(ShareError::Comma("/a,b".into()))
        );
    }

    #[test]
    fn a_spawned_daemon_inherits_the_listening_socket_and_is_killed_when_stale() {
        // A shell stands in for virtiofsd (the real one needs QEMU to talk to); it keeps its
        // command line, which is what identifies it.
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("virtiofsd");
        std::fs::write(&script, "#!/bin/sh\nwhile :; do sleep 1; done\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let share = Share {
            dir: dir.path().to_owned(),
            tag: "t".into(),
            socket: dir.path().join("fs0.sock"),
        };
        let d = Virtiofsd::Rust(script);
        let kids = spawn(&d, std::slice::from_ref(&share), &dir.path().join("log")).unwrap();
        let pid = kids[0].id() as i32;
        let link = std::fs::read_link(format!("/proc/{pid}/fd/3"));
        assert!(
            link.as_ref()
                .is_ok_and(|l| l.to_string_lossy().starts_with("socket:")),
            "{link:?}"
        );
        assert!(share.socket.exists() && pidfile(&share).exists());
        kill_stale(Some(&d), std::slice::from_ref(&share));
        assert!(!share.socket.exists() && !pidfile(&share).exists());
        drop(kids); // reaped by kill_stale's signal; the handles only hold the PID
    }
}
