//! The Podman connection, written into the one file every podman client reads: containers.conf's
//! `[engine.service_destinations]`. Podman 4 keeps its connections there; podman 5 keeps its own in
//! podman-connections.json but reads containers.conf's too (listed as not ReadWrite), so one entry
//! serves whichever client the user runs, e.g. the host's podman 4 for a machine that carbon-vm
//! started from a root with podman 5. Registered only when a podman client is installed.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use toml_edit::{DocumentMut, Item, Table, value};

#[derive(Debug, thiserror::Error)]
pub enum PodmanError {
    #[error("cannot update Podman's connections in {0}")]
    Io(PathBuf, #[source] io::Error),
    #[error("{0} is not valid TOML, so its Podman connections were left alone: {1}")]
    Invalid(PathBuf, String),
    #[error("{0}: `{1}` is not a table")]
    Shape(PathBuf, &'static str),
    #[error(
        "no containers.conf to write the connection to: neither XDG_CONFIG_HOME nor HOME is set"
    )]
    NoHome,
}

/// Podman's config home, where its user files live: `$XDG_CONFIG_HOME`, else `$HOME/.config`
/// (Podman's rule on Linux and macOS alike).
pub fn config_home() -> Option<PathBuf> {
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    std::env::var_os("XDG_CONFIG_HOME")
        .and_then(absolute)
        .or_else(|| {
            std::env::var_os("HOME")
                .and_then(absolute)
                .map(|h| h.join(".config"))
        })
}

/// The containers.conf podman writes connections to, as podman 4 picks it: `$CONTAINERS_CONF`,
/// else the system file for root (podman 4 as root reads no user file), else the user's.
pub fn conf_file() -> Result<PathBuf, PodmanError> {
    if let Some(p) = std::env::var_os("CONTAINERS_CONF").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    if rustix::process::geteuid().is_root() {
        return Ok(PathBuf::from("/etc/containers/containers.conf"));
    }
    Ok(config_home()
        .ok_or(PodmanError::NoHome)?
        .join("containers/containers.conf"))
}

/// Registers (or re-points) connection `name` to the forwarded API socket, the default one with
/// `default`. Returns false when no podman client is installed.
pub fn add_connection(name: &str, socket: &Path, default: bool) -> Result<bool, PodmanError> {
    if crate::host::which("podman").is_none() {
        return Ok(false);
    }
    add_to(
        &conf_file()?,
        name,
        &format!("unix://{}", socket.display()),
        default,
    )?;
    Ok(true)
}

/// Removes connection `name` (and its default mark) if it is there; others are left alone.
pub fn remove_connection(name: &str) -> Result<(), PodmanError> {
    remove_from(&conf_file()?, name)
}

fn add_to(file: &Path, name: &str, uri: &str, default: bool) -> Result<(), PodmanError> {
    edit(file, |doc| {
        let engine = table(file, doc.as_table_mut(), "engine")?;
        let dests = table(file, engine, "service_destinations")?;
        let mut dest = Table::new();
        dest.insert("uri", value(uri));
        dests.insert(name, Item::Table(dest));
        if default {
            engine.insert("active_service", value(name));
        }
        Ok(())
    })
}

fn remove_from(file: &Path, name: &str) -> Result<(), PodmanError> {
    if !file.exists() {
        return Ok(());
    }
    edit(file, |doc| {
        let Some(engine) = doc.get_mut("engine").and_then(Item::as_table_like_mut) else {
            return Ok(());
        };
        if let Some(dests) = engine
            .get_mut("service_destinations")
            .and_then(Item::as_table_like_mut)
        {
            dests.remove(name);
        }
        if engine.get("active_service").and_then(Item::as_str) == Some(name) {
            engine.remove("active_service");
        }
        Ok(())
    })
}

/// `parent[key]` as a table, created when absent.
fn table<'a>(
    file: &Path,
    parent: &'a mut Table,
    key: &'static str,
) -> Result<&'a mut Table, PodmanError> {
    parent
        .entry(key)
        .or_insert_with(toml_edit::table)
        .as_table_mut()
        .ok_or_else(|| PodmanError::Shape(file.into(), key))
}

/// Applies `change` to the file's document under an exclusive lock, keeping everything else in it
/// (comments and order too), and replaces the file atomically with its mode kept.
fn edit(
    file: &Path,
    change: impl FnOnce(&mut DocumentMut) -> Result<(), PodmanError>,
) -> Result<(), PodmanError> {
    let io = |e| PodmanError::Io(file.into(), e);
    let dir = file.parent().expect("a file path");
    fs::create_dir_all(dir).map_err(io)?;
    let _lock = lock(file).map_err(io)?;
    let (text, mode) = match fs::read_to_string(file) {
        Ok(t) => (t, fs::metadata(file).map_err(io)?.permissions().mode()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => (String::new(), 0o644),
        Err(e) => return Err(io(e)),
    };
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| PodmanError::Invalid(file.into(), e.to_string()))?;
    change(&mut doc)?;
    let new = doc.to_string();
    if new == text {
        return Ok(());
    }
    crate::atomic::write(file, new.as_bytes(), Some(mode), true).map_err(io)
}

/// An exclusive flock on the file itself, taken again whenever a concurrent editor replaced the
/// file (its rename leaves the lock on the old inode) between our open and our lock.
fn lock(file: &Path) -> io::Result<File> {
    use rustix::fs::{FlockOperation, flock};
    loop {
        let f = File::options().create(true).append(true).open(file)?;
        flock(&f, FlockOperation::LockExclusive)?;
        let held = f.metadata()?;
        match fs::metadata(file) {
            Ok(now) if now.ino() == held.ino() && now.dev() == held.dev() => return Ok(f),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_re_points_and_removes_one_connection_keeping_the_rest_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("containers/containers.conf");
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        let mine = "# the user's own settings\n[containers]\nlog_size_max = 10\n\n\
                    [engine.service_destinations.other]\nuri = \"ssh://x\"\n";
        fs::write(&file, mine).unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        add_to(&file, "dev", "unix:///a.sock", true).unwrap();
        add_to(&file, "dev", "unix:///b.sock", false).unwrap();
        let doc: DocumentMut = fs::read_to_string(&file).unwrap().parse().unwrap();
        assert_eq!(
            doc["engine"]["service_destinations"]["dev"]["uri"].as_str(),
            Some("unix:///b.sock")
        );
        assert_eq!(doc["engine"]["active_service"].as_str(), Some("dev"));
        assert_eq!(
            doc["engine"]["service_destinations"]["other"]["uri"].as_str(),
            Some("ssh://x")
        );
        assert!(
            fs::read_to_string(&file)
                .unwrap()
                .starts_with("# the user's own settings")
        );
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );

        remove_from(&file, "dev").unwrap();
        let after = fs::read_to_string(&file).unwrap();
        let doc: DocumentMut = after.parse().unwrap();
        assert!(doc["engine"]["service_destinations"].get("dev").is_none());
        assert!(doc["engine"].get("active_service").is_none());
        assert!(after.contains("log_size_max = 10") && after.contains("ssh://x"));
    }

    #[test]
    fn a_file_that_is_not_toml_is_refused_and_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("containers.conf");
        fs::write(&file, "[engine\nnot toml").unwrap();
        let e = add_to(&file, "dev", "unix:///a.sock", false).unwrap_err();
        assert!(matches!(e, PodmanError::Invalid(..)), "{e}");
        assert_eq!(fs::read_to_string(&file).unwrap(), "[engine\nnot toml");
    }
}
