//! What a virtiofsd may do to the host, whatever its guest asks (docs/internals.md, "Shared
//! folders"). Each virtiofsd is started:
//!
//! - in a mount namespace of its own (and, for a user other than root, a user namespace that maps
//!   only that user) where each of carbon-vm's own directories inside the folder is covered by an
//!   empty read-only tmpfs, and each directory between the folder and it is bound onto itself: a
//!   mount point, which the guest can neither rename nor remove, so no path to the state can be
//!   swapped for one the guest made. virtiofsd's own namespace sandbox then takes the folder with
//!   these mounts in it (locked: its namespace cannot undo them);
//! - under a seccomp filter, stacked under virtiofsd's own, that refuses (EPERM) every mode with a
//!   setuid or setgid bit and every block or character device node, whichever call asks, and
//!   `openat2` (whose mode the filter cannot read; virtiofsd then uses `openat`).
//!
//! Everything is prepared before `fork`; [`Walls::enter`] runs between `fork` and `exec` and
//! makes only system calls.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub struct Walls {
    /// Mapping lines for /proc/self/{uid,gid}_map, for a user other than root.
    user: Option<(CString, CString)>,
    /// Directories to bind onto themselves, parents first, then the directories to cover.
    pins: Vec<CString>,
    covers: Vec<CString>,
    filter: BpfProgram,
}

/// The directories strictly between `top` and `hidden`, parents first.
fn between(top: &Path, hidden: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = hidden
        .ancestors()
        .skip(1)
        .take_while(|a| a.starts_with(top) && *a != top)
        .map(Path::to_owned)
        .collect();
    out.reverse();
    out
}

fn cstring(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other)
}

impl Walls {
    /// The walls of one share of `dir` that hides `hidden` (paths inside `dir`).
    pub fn new(dir: &Path, hidden: &[PathBuf]) -> io::Result<Walls> {
        let root = rustix::process::geteuid().is_root();
        let user = (!root).then(|| {
            let (u, g) = (rustix::process::getuid(), rustix::process::getgid());
            let line = |id: u32| CString::new(format!("{id} {id} 1")).expect("digits");
            (line(u.as_raw()), line(g.as_raw()))
        });
        let mut pins = Vec::new();
        let mut covers = Vec::new();
        for h in hidden.iter().filter(|h| h.starts_with(dir) && *h != dir) {
            for p in between(dir, h) {
                let p = cstring(&p)?;
                if !pins.contains(&p) {
                    pins.push(p);
                }
            }
            covers.push(cstring(h)?);
        }
        Ok(Walls {
            user,
            pins,
            covers,
            filter: filter()?,
        })
    }

    /// Enters the namespaces, makes the mounts and installs the filter. Between fork and exec.
    pub fn enter(&self) -> io::Result<()> {
        let ok = |r: libc::c_int| {
            if r < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // SAFETY: system calls on NUL-terminated strings made before fork.
        unsafe {
            match &self.user {
                Some((uid_map, gid_map)) => {
                    ok(libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS))?;
                    write_proc(c"/proc/self/setgroups", c"deny")?;
                    write_proc(c"/proc/self/uid_map", uid_map)?;
                    write_proc(c"/proc/self/gid_map", gid_map)?;
                }
                None => ok(libc::unshare(libc::CLONE_NEWNS))?,
            }
            // Nothing mounted here reaches the host's namespace.
            let none = std::ptr::null();
            ok(libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            for p in &self.pins {
                ok(libc::mount(
                    p.as_ptr(),
                    p.as_ptr(),
                    none,
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
            }
            for c in &self.covers {
                ok(libc::mount(
                    c"carbon-vm-private".as_ptr(),
                    c.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    c"size=4k,mode=0555".as_ptr().cast(),
                ))?;
            }
        }
        seccompiler::apply_filter(&self.filter).map_err(io::Error::other)
    }
}

/// Writes `text` to a /proc file, with system calls only.
unsafe fn write_proc(path: &std::ffi::CStr, text: &std::ffi::CStr) -> io::Result<()> {
    // SAFETY: valid NUL-terminated strings; the descriptor is closed before returning.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let bytes = text.to_bytes();
        let n = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        let err = io::Error::last_os_error();
        libc::close(fd);
        if n != bytes.len() as isize {
            return Err(err);
        }
    }
    Ok(())
}

/// Which argument holds the mode, for each call that takes one.
fn mode_calls() -> Vec<(i64, u8)> {
    let mut calls = vec![
        (libc::SYS_openat, 3),
        (libc::SYS_mkdirat, 2),
        (libc::SYS_mknodat, 2),
        (libc::SYS_fchmod, 1),
        (libc::SYS_fchmodat, 2),
        (FCHMODAT2, 2),
    ];
    #[cfg(target_arch = "x86_64")]
    calls.extend([
        (libc::SYS_open, 2),
        (libc::SYS_creat, 1),
        (libc::SYS_mkdir, 1),
        (libc::SYS_mknod, 1),
        (libc::SYS_chmod, 1),
    ]);
    calls
}

/// fchmodat2 (Linux 6.6) has the same number on every architecture carbon-vm runs on.
const FCHMODAT2: i64 = 452;

fn filter() -> io::Result<BpfProgram> {
    let err = |e: seccompiler::BackendError| io::Error::other(e.to_string());
    let masked = |arg: u8, mask: u32, value: u32| {
        SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(mask.into()),
            value.into(),
        )
        .and_then(|c| SeccompRule::new(vec![c]))
        .map_err(err)
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (nr, arg) in mode_calls() {
        let mut r = vec![
            masked(arg, libc::S_ISUID, libc::S_ISUID)?,
            masked(arg, libc::S_ISGID, libc::S_ISGID)?,
        ];
        if nr == libc::SYS_mknodat || Some(nr) == mknod() {
            r.push(masked(arg, libc::S_IFMT, libc::S_IFCHR)?);
            r.push(masked(arg, libc::S_IFMT, libc::S_IFBLK)?);
        }
        rules.insert(nr, r);
    }
    rules.insert(libc::SYS_openat2, vec![]);
    let arch = if cfg!(target_arch = "aarch64") {
        seccompiler::TargetArch::aarch64
    } else {
        seccompiler::TargetArch::x86_64
    };
    let f = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(err)?;
    BpfProgram::try_from(f).map_err(err)
}

fn mknod() -> Option<i64> {
    #[cfg(target_arch = "x86_64")]
    return Some(libc::SYS_mknod);
    #[cfg(not(target_arch = "x86_64"))]
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directories_leading_to_a_hidden_one_are_pinned_parents_first() {
        assert_eq!(
            between(
                "/home/u".as_ref(),
                "/home/u/.local/share/carbon-vm".as_ref()
            ),
            [
                PathBuf::from("/home/u/.local"),
                PathBuf::from("/home/u/.local/share")
            ]
        );
        assert!(between("/home/u".as_ref(), "/home/u/state".as_ref()).is_empty());
        let w = Walls::new(
            "/home/u".as_ref(),
            &[
                "/home/u/.local/share/carbon-vm".into(),
                "/home/u/.cache/carbon-vm".into(),
                "/elsewhere/run".into(),
            ],
        )
        .unwrap();
        assert_eq!(
            w.pins,
            [
                c"/home/u/.local",
                c"/home/u/.local/share",
                c"/home/u/.cache"
            ]
        );
        assert_eq!(
            w.covers,
            [
                c"/home/u/.local/share/carbon-vm",
                c"/home/u/.cache/carbon-vm"
            ]
        );
    }

    /// The filter on a shell that tries what a guest would ask virtiofsd for. (A device node
    /// needs root anyway; as root, the filter is what refuses it.)
    #[test]
    fn the_filter_refuses_setuid_setgid_and_device_nodes_and_allows_the_rest() {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let prog = filter().unwrap();
        let mut cmd = std::process::Command::new("sh");
        cmd.current_dir(dir.path()).args([
            "-c",
            "set -e; touch f; chmod 755 f; mkdir d; mkfifo p
             ! chmod 4755 f; ! chmod 2755 f; ! chmod g+s d; ! mknod c c 1 3; ! mknod b b 7 0
             ! install -m 4755 f s; ! mkdir -m 2755 g; echo done",
        ]);
        // SAFETY: installing the filter makes system calls only.
        unsafe { cmd.pre_exec(move || seccompiler::apply_filter(&prog).map_err(io::Error::other)) };
        let out = cmd.output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "done\n",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| std::fs::metadata(dir.path().join(p)).map(|m| m.permissions().mode());
        assert_eq!(mode("f").unwrap() & 0o7777, 0o755);
        assert_eq!(mode("d").unwrap() & 0o7000, 0);
        for absent in ["c", "b"] {
            assert!(mode(absent).is_err(), "{absent} exists");
        }
        for plain in ["s", "g"] {
            assert!(mode(plain).map_or(true, |m| m & 0o6000 == 0), "{plain}");
        }
    }
}
