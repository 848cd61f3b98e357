//! Host folders shared into a machine (virtio-fs): `create --volume HOST[:GUEST]`, by default
//! the user's home at the same path as Podman machine does, so that `podman run -v ~/x:/x` and
//! `-v $PWD:/work` name host files. The guest mounts them from its fstab.extra credential.

use serde::{Deserialize, Serialize};
use std::path::{Component, Path, PathBuf};

/// What gives a QEMU host folder sharing.
pub const INSTALL_HINT: &str = vmm::qemu::virtiofs::INSTALL_HINT;

/// One shared folder: the host directory and where the guest mounts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub host: PathBuf,
    pub guest: PathBuf,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VolumeError {
    #[error("--volume {0:?}: expected HOST[:GUEST] with absolute paths")]
    Syntax(String),
    #[error("cannot share {0}: {1}")]
    Host(PathBuf, String),
    #[error(
        "cannot mount a host folder at {0} in the guest: the guest's system lives there \
         (choose another GUEST path)"
    )]
    GuestSystem(PathBuf),
    #[error(
        "cannot share {0}: carbon-vm keeps its own state in {1}, which no guest may reach \
         (share a folder outside it)"
    )]
    State(PathBuf, PathBuf),
    #[error("two folders would be mounted at {0} in the guest")]
    SameGuestPath(PathBuf),
    #[error("this host cannot share folders with {0} machines: {1}")]
    Unsupported(&'static str, &'static str),
    #[error(
        "folder {0} shared with this machine is gone or unreadable ({1}); create it again, or \
         recreate the machine without it"
    )]
    Gone(PathBuf, String),
}

impl exit_class::Classify for VolumeError {
    fn class(&self) -> Option<exit_class::Class> {
        use exit_class::Code;
        Some(match self {
            VolumeError::Gone(..) => Code::Failure.bare(),
            _ => Code::Usage.hint("nothing was created; see `carbon-vm create --help`"),
        })
    }
}

/// Guest paths a share may not cover: the OS, root's home (its SSH key is written there at boot,
/// which would write into the host's folder) and container storage.
const GUEST_SYSTEM: &[&str] = &[
    "/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/root", "/run", "/sbin",
    "/sys", "/usr", "/var",
];

/// A `--volume` argument. HOST may be relative (to the current directory); GUEST defaults to
/// HOST's absolute path.
pub fn parse(arg: &str, cwd: &Path) -> Result<Volume, VolumeError> {
    let bad = || VolumeError::Syntax(arg.into());
    let (host, guest) = match arg.split_once(':') {
        Some((h, g)) => (h, Some(g)),
        None => (arg, None),
    };
    if host.is_empty() || guest.is_some_and(|g| !g.starts_with('/')) {
        return Err(bad());
    }
    let host = cwd.join(host);
    let host = host
        .canonicalize()
        .map_err(|e| VolumeError::Host(host.clone(), e.to_string()))?;
    let guest = match guest {
        Some(g) => normal(Path::new(g)).ok_or_else(bad)?,
        None => host.clone(),
    };
    Ok(Volume { host, guest })
}

/// `p` without `.` and trailing slashes; `None` where it climbs (`..`) or is relative.
fn normal(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(s) => out.push(s),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    p.is_absolute().then_some(out)
}

/// The default: the home directory at the same path, unless the guest's system lives there
/// (root's /root): then nothing, and the caller says so.
pub fn default_for(home: &Path) -> Option<Volume> {
    let host = home.canonicalize().ok()?;
    let v = Volume {
        guest: host.clone(),
        host,
    };
    check_guest(&v.guest).is_ok().then_some(v)
}

fn check_guest(guest: &Path) -> Result<(), VolumeError> {
    let system = GUEST_SYSTEM.iter().any(|s| {
        let s = Path::new(s);
        guest == s || (s != Path::new("/") && guest.starts_with(s))
    });
    if system {
        return Err(VolumeError::GuestSystem(guest.to_owned()));
    }
    Ok(())
}

/// A directory this user can list.
fn readable_dir(dir: &Path) -> Result<(), String> {
    if !std::fs::metadata(dir).map_err(|e| e.to_string())?.is_dir() {
        return Err("not a directory".into());
    }
    std::fs::read_dir(dir).map(drop).map_err(|e| e.to_string())
}

/// Checks a machine's volumes at `create`: folders that exist and can be read, none inside
/// carbon-vm's `state` directories, guest paths outside the guest's system, no two at one guest
/// path.
pub fn validate(volumes: &[Volume], state: &[PathBuf]) -> Result<(), VolumeError> {
    for (i, v) in volumes.iter().enumerate() {
        readable_dir(&v.host).map_err(|e| VolumeError::Host(v.host.clone(), e))?;
        check_state(&v.host, state)?;
        check_guest(&v.guest)?;
        if volumes[..i].iter().any(|o| o.guest == v.guest) {
            return Err(VolumeError::SameGuestPath(v.guest.clone()));
        }
    }
    Ok(())
}

/// Checks at `start` that every folder is still there, and outside carbon-vm's `state` (which
/// may have moved since `create`).
pub fn check_present(volumes: &[Volume], state: &[PathBuf]) -> Result<(), VolumeError> {
    for v in volumes {
        readable_dir(&v.host).map_err(|e| VolumeError::Gone(v.host.clone(), e))?;
        check_state(&v.host, state)?;
    }
    Ok(())
}

/// `dir` as the kernel names it, where it exists (a state directory may not exist yet).
fn real(dir: &Path) -> PathBuf {
    dir.canonicalize().unwrap_or_else(|_| dir.to_owned())
}

fn check_state(host: &Path, state: &[PathBuf]) -> Result<(), VolumeError> {
    let host = real(host);
    match state.iter().map(|s| real(s)).find(|s| host.starts_with(s)) {
        Some(s) => Err(VolumeError::State(host, s)),
        None => Ok(()),
    }
}

/// The `state` directories inside the shared folder `host`, which its guest must not see.
pub fn hidden_in(host: &Path, state: &[PathBuf]) -> Vec<PathBuf> {
    let host = real(host);
    state
        .iter()
        .map(|s| real(s))
        .filter(|s| s.starts_with(&host) && *s != host)
        .collect()
}

/// The virtio-fs tag of the `i`th volume (tags are at most 36 bytes).
pub fn tag(i: usize) -> String {
    format!("carbon-vol{i}")
}

/// systemd's `fstab.extra` credential: one virtiofs line per volume. Ready waits for the mounts
/// (`x-systemd.before`); `nofail` keeps a share that cannot mount from stopping the boot.
pub fn fstab_extra(volumes: &[Volume]) -> String {
    volumes
        .iter()
        .enumerate()
        .map(|(i, v)| {
            format!(
                "{} {} virtiofs defaults,nofail,x-systemd.before=carbon-ready.service 0 0\n",
                tag(i),
                fstab_escape(&v.guest)
            )
        })
        .collect()
}

/// fstab separates fields by whitespace: spaces, tabs, newlines and backslashes in a path are
/// written as octal escapes.
fn fstab_escape(p: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut s = String::new();
    for &b in p.as_os_str().as_bytes() {
        match b {
            b' ' | b'\t' | b'\n' | b'\\' => s.push_str(&format!("\\{b:03o}")),
            _ => s.push(char::from(b)),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_alone_is_mounted_at_the_same_path_and_relative_paths_are_resolved() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().canonicalize().unwrap();
        std::fs::create_dir(real.join("proj")).unwrap();
        let v = parse("proj", &real).unwrap();
        assert_eq!(v.host, real.join("proj"));
        assert_eq!(v.guest, real.join("proj"));
        let v = parse("./proj:/work/./src/", &real).unwrap();
        assert_eq!(v.guest, Path::new("/work/src"));
        validate(&[v], &[]).unwrap();
    }

    #[test]
    fn bad_arguments_and_folders_are_refused_with_what_is_wrong() {
        let d = tempfile::tempdir().unwrap();
        let cwd = d.path();
        assert!(matches!(parse("", cwd), Err(VolumeError::Syntax(_))));
        assert!(matches!(parse("x:rel", cwd), Err(VolumeError::Syntax(_))));
        assert!(matches!(
            parse(".:/a/../b", cwd),
            Err(VolumeError::Syntax(_))
        ));
        let missing = parse("nope", cwd).unwrap_err();
        assert!(
            missing.to_string().contains("nope") && missing.to_string().contains("No such file"),
            "{missing}"
        );
        std::fs::write(cwd.join("file"), "").unwrap();
        let file = parse("file", cwd).unwrap();
        assert!(
            validate(&[file], &[])
                .unwrap_err()
                .to_string()
                .contains("not a directory")
        );
        for guest in ["/", "/etc", "/usr/local", "/root", "/var/lib/containers"] {
            let v = parse(&format!(".:{guest}"), cwd).unwrap();
            assert_eq!(
                validate(&[v], &[]),
                Err(VolumeError::GuestSystem(guest.into())),
                "{guest}"
            );
        }
        let a = parse(".:/w", cwd).unwrap();
        assert_eq!(
            validate(&[a.clone(), a], &[]),
            Err(VolumeError::SameGuestPath("/w".into()))
        );
    }

    #[test]
    fn state_inside_a_share_is_hidden_and_a_share_inside_state_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let home = d.path().canonicalize().unwrap();
        let state = [home.join(".local/share/carbon-vm"), home.join("cache")];
        std::fs::create_dir_all(&state[0]).unwrap();
        let v = parse(".", &home).unwrap();
        validate(std::slice::from_ref(&v), &state).unwrap();
        // A state directory that does not exist yet is hidden all the same.
        assert_eq!(hidden_in(&home, &state), state);
        assert_eq!(hidden_in(&home.join("proj"), &state), Vec::<PathBuf>::new());
        let inside = parse(".local/share/carbon-vm", &home).unwrap();
        assert_eq!(
            validate(std::slice::from_ref(&inside), &state),
            Err(VolumeError::State(inside.host.clone(), state[0].clone()))
        );
        assert!(matches!(
            check_present(&[inside], &state),
            Err(VolumeError::State(..))
        ));
    }

    #[test]
    fn home_is_the_default_except_roots_own() {
        let d = tempfile::tempdir().unwrap();
        let v = default_for(d.path()).unwrap();
        assert_eq!(v.host, v.guest);
        assert_eq!(default_for(Path::new("/root")), None);
        assert_eq!(default_for(&d.path().join("missing")), None);
    }

    #[test]
    fn a_folder_removed_after_create_is_named_at_start() {
        let d = tempfile::tempdir().unwrap();
        let v = parse(".", d.path()).unwrap();
        check_present(std::slice::from_ref(&v), &[]).unwrap();
        drop(d);
        let e = check_present(std::slice::from_ref(&v), &[]).unwrap_err();
        assert!(
            matches!(e, VolumeError::Gone(ref p, _) if *p == v.host),
            "{e}"
        );
    }

    #[test]
    fn fstab_lines_escape_whitespace_and_order_the_mounts_before_ready() {
        let vols = [
            Volume {
                host: "/h/a".into(),
                guest: "/home/u/my dir".into(),
            },
            Volume {
                host: "/h/b".into(),
                guest: "/work".into(),
            },
        ];
        assert_eq!(
            fstab_extra(&vols),
            "carbon-vol0 /home/u/my\\040dir virtiofs defaults,nofail,x-systemd.before=carbon-ready.service 0 0\n\
             carbon-vol1 /work virtiofs defaults,nofail,x-systemd.before=carbon-ready.service 0 0\n"
        );
    }
}
