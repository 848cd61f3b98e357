//! virtio-fs for QEMU: one virtiofsd (1.x, the Rust one) per shared folder. carbon-vm binds each
//! vhost-user socket itself and hands the listening socket over (`--fd`), so it accepts the
//! moment QEMU connects, with no window between virtiofsd's bind and listen. virtiofsd exits when
//! QEMU disconnects; one QEMU never connected to is killed by [`kill_stale`].
//!
//! virtiofsd runs as the user who runs carbon-vm, in its namespace sandbox (for a user other than
//! root, in a user namespace that maps only that user: files the guest creates are the user's),
//! behind the walls of [`walls`].

#[cfg(target_os = "linux")]
mod walls;

use crate::Share;
use crate::process::{self, Signal};
use std::path::{Path, PathBuf};
use std::process::Child;
#[cfg(target_os = "linux")]
use {
    std::fs::File,
    std::os::fd::AsRawFd,
    std::os::unix::net::UnixListener,
    std::os::unix::process::CommandExt,
    std::process::{Command, Stdio},
};

/// The listening socket's number in virtiofsd.
#[cfg(target_os = "linux")]
const FD: i32 = 3;

pub const INSTALL_HINT: &str = "apt-get install virtiofsd (Debian 13 and later; on Debian 12, \
     scripts/install-deps builds virtiofsd 1.x into /usr/local/libexec)";

/// Where distributions install virtiofsd 1.x, and where scripts/install-deps puts the one it
/// builds on hosts whose distribution has only QEMU's old one (root only, no namespace sandbox
/// for users: not used).
pub fn find() -> Option<PathBuf> {
    [
        "/usr/libexec/virtiofsd",
        "/usr/lib/virtiofsd",
        "/usr/local/libexec/virtiofsd",
    ]
    .iter()
    .map(Path::new)
    .find(|p| p.is_file())
    .map(Path::to_owned)
}

/// Whether this host can share folders: a virtiofsd 1.x, and an OS whose namespaces wall it in.
pub fn usable() -> bool {
    cfg!(target_os = "linux") && find().is_some()
}

/// Whether virtiofsd's walls can be raised here, by this user: the very namespaces, mounts and
/// filter, tried on `/bin/true` (a kernel without unprivileged user namespaces fails here).
#[cfg(target_os = "linux")]
pub fn check_walls() -> std::io::Result<()> {
    let walls = walls::Walls::new(Path::new("/"), &[])?;
    let mut cmd = Command::new("/bin/true");
    // SAFETY: Walls::enter makes system calls only.
    unsafe { cmd.pre_exec(move || walls.enter()) };
    match cmd.status()? {
        s if s.success() => Ok(()),
        s => Err(std::io::Error::other(format!("/bin/true behind them: {s}"))),
    }
}

#[cfg(not(target_os = "linux"))]
pub fn check_walls() -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// virtiofsd's arguments for `dir`.
#[cfg(target_os = "linux")]
fn args(dir: &Path) -> Vec<String> {
    vec![
        format!("--fd={FD}"),
        "--shared-dir".into(),
        dir.display().to_string(),
        "--cache=auto".into(),
        "--sandbox=namespace".into(),
    ]
}

/// What identifies this share's virtiofsd on its command line.
fn marker(dir: &Path) -> String {
    format!("--shared-dir {}", dir.display())
}

fn pidfile(s: &Share) -> PathBuf {
    s.socket.with_extension("pid")
}

/// Starts one virtiofsd per share, each on its own listening socket; `log` gets their output.
/// On error, those already started are killed.
pub fn spawn(virtiofsd: &Path, shares: &[Share], log: &Path) -> std::io::Result<Vec<Child>> {
    let mut children = Vec::new();
    for s in shares {
        match spawn_one(virtiofsd, s, log) {
            Ok(c) => children.push(c),
            Err(e) => {
                kill(children);
                let what = format!("cannot start virtiofsd for {}: {e}", s.dir.display());
                return Err(std::io::Error::new(e.kind(), what));
            }
        }
    }
    Ok(children)
}

#[cfg(target_os = "linux")]
fn spawn_one(virtiofsd: &Path, s: &Share, log: &Path) -> std::io::Result<Child> {
    let walls = walls::Walls::new(&s.dir, &s.hidden)?;
    let _ = std::fs::remove_file(&s.socket);
    let listener = UnixListener::bind(&s.socket)?;
    let raw = listener.as_raw_fd();
    let out = File::options().create(true).append(true).open(log)?;
    let mut cmd = Command::new(virtiofsd);
    cmd.args(args(&s.dir))
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0); // like QEMU: a ^C to carbon-vm does not cut the guest's folders
    // SAFETY: between fork and exec only system calls (dup2, fcntl, and those of Walls::enter).
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
            walls.enter()
        });
    }
    let child = cmd.spawn()?;
    std::fs::write(pidfile(s), child.id().to_string())?;
    Ok(child)
}

#[cfg(not(target_os = "linux"))]
fn spawn_one(_: &Path, _: &Share, _: &Path) -> std::io::Result<Child> {
    Err(std::io::ErrorKind::Unsupported.into())
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
pub fn kill_stale(shares: &[Share]) {
    for s in shares {
        let pf = pidfile(s);
        if let Some(pid) = process::live_pid(&pf, &marker(&s.dir)) {
            process::signal(pid, Signal::KILL);
            process::wait_exit(pid, std::time::Duration::from_secs(10));
        }
        let _ = std::fs::remove_file(&pf);
        let _ = std::fs::remove_file(&s.socket);
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn virtiofsd_gets_the_folder_its_sandbox_and_the_listening_socket() {
        assert_eq!(
            args("/home/u".as_ref()),
            [
                "--fd=3",
                "--shared-dir",
                "/home/u",
                "--cache=auto",
                "--sandbox=namespace"
            ]
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
            hidden: vec![],
        };
        let kids = spawn(
            &script,
            std::slice::from_ref(&share),
            &dir.path().join("log"),
        )
        .unwrap();
        let pid = kids[0].id() as i32;
        let link = std::fs::read_link(format!("/proc/{pid}/fd/3"));
        assert!(
            link.as_ref()
                .is_ok_and(|l| l.to_string_lossy().starts_with("socket:")),
            "{link:?}"
        );
        assert!(share.socket.exists() && pidfile(&share).exists());
        kill_stale(std::slice::from_ref(&share));
        assert!(!share.socket.exists() && !pidfile(&share).exists());
        drop(kids); // reaped by kill_stale's signal; the handles only hold the PID
    }
}
