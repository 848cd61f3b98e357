//! `create`: a machine directory made complete in a scratch directory (disk cloned from the
//! image, SSH key generated, spec written), then renamed into place only if the name is free.

use crate::store::{
    DISK, KEY, MachineDir, SPEC, Spec, Store, StoreError, mkdir_private, write_atomic,
};
use guest_image::CachedImage;
use std::fs::File;
use std::io;
use std::path::Path;
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("machine {0:?} already exists")]
    Exists(String),
    #[error("the {0} driver is not available on this host yet (use --driver qemu)")]
    Driver(&'static str),
    #[error("cannot clone the image disk")]
    Disk(#[source] io::Error),
    #[error("ssh-keygen failed (install openssh-client): {0}")]
    Keygen(String),
}

pub struct CreateOptions<'a> {
    pub name: &'a str,
    pub driver: vmm::DriverKind,
    pub cpus: u8,
    pub memory_mib: u32,
    pub disk_gib: u32,
    pub gpu: bool,
    pub podman_default: bool,
    pub image: &'a CachedImage,
}

/// Refuses a driver this host cannot run machines with yet, before anything is pulled or written.
pub fn check_driver(driver: vmm::DriverKind) -> Result<(), CreateError> {
    match driver {
        vmm::DriverKind::Qemu => Ok(()),
        other => Err(CreateError::Driver(other.name())),
    }
}

pub fn create(store: &Store, o: &CreateOptions) -> Result<MachineDir, CreateError> {
    check_driver(o.driver)?;
    let m = store.machine(o.name)?;
    mkdir_private(&store.machines)?;
    if m.dir.exists() {
        return Err(CreateError::Exists(o.name.into()));
    }
    let io = |e| StoreError::Io(store.machines.clone(), e);
    let scratch = tempfile::Builder::new()
        .prefix(&format!(".tmp-{}-", o.name))
        .tempdir_in(&store.machines)
        .map_err(io)?;
    let img = o.image;
    let disk = scratch.path().join(DISK);
    clone_disk(
        &img.member_path(&img.manifest.boot.disk),
        &disk,
        u64::from(o.disk_gib) << 30,
    )
    .map_err(CreateError::Disk)?;
    keygen(&scratch.path().join(KEY), o.name)?;
    let spec = Spec {
        name: o.name.into(),
        driver: o.driver,
        cpus: o.cpus,
        memory_mib: o.memory_mib,
        disk_gib: o.disk_gib,
        gpu: o.gpu,
        image: img.record.id,
        kernel: img.member_path(&img.manifest.boot.kernel),
        initrd: img.member_path(&img.manifest.boot.initrd),
        cmdline: img.manifest.boot.cmdline.clone(),
        podman_default: o.podman_default,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    write_atomic(
        &scratch.path().join(SPEC),
        &serde_json::to_vec_pretty(&spec).expect("serializes"),
    )?;
    // The rename refuses an existing name: of two concurrent creates, exactly one wins.
    let tmp = scratch.keep();
    let cwd = rustix::fs::CWD;
    if let Err(e) =
        rustix::fs::renameat_with(cwd, &tmp, cwd, &m.dir, rustix::fs::RenameFlags::NOREPLACE)
    {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(if e == rustix::io::Errno::EXIST {
            CreateError::Exists(o.name.into())
        } else {
            StoreError::Io(m.dir.clone(), e.into()).into()
        });
    }
    Ok(m)
}

/// A copy-on-write clone where the filesystem can (FICLONE), else a sparse copy of the data
/// extents only; then grown to `size` (never shrunk).
fn clone_disk(src: &Path, dst: &Path, size: u64) -> io::Result<()> {
    let s = File::open(src)?;
    let d = File::options().write(true).create_new(true).open(dst)?;
    if rustix::fs::ioctl_ficlone(&d, &s).is_err() {
        copy_extents(&s, &d)?;
    }
    let len = s.metadata()?.len().max(size);
    d.set_len(len)?;
    d.sync_all()
}

fn copy_extents(s: &File, d: &File) -> io::Result<()> {
    use rustix::fs::{SeekFrom, copy_file_range, seek};
    let len = s.metadata()?.len();
    let mut pos = 0u64;
    while pos < len {
        let start = match seek(s, SeekFrom::Data(pos)) {
            Ok(p) => p,
            Err(rustix::io::Errno::NXIO) => break, // only a hole remains
            Err(e) => return Err(e.into()),
        };
        let end = seek(s, SeekFrom::Hole(start))?;
        let (mut off_in, mut off_out) = (start, start);
        while off_in < end {
            let want = (end - off_in) as usize;
            let n = copy_file_range(s, Some(&mut off_in), d, Some(&mut off_out), want)?;
            if n == 0 {
                break;
            }
        }
        pos = end;
    }
    Ok(())
}

fn keygen(path: &Path, name: &str) -> Result<(), CreateError> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C"])
        .arg(format!("carbon-vm-{name}"))
        .arg("-f")
        .arg(path)
        .output()
        .map_err(|e| CreateError::Keygen(e.to_string()))?;
    if !out.status.success() {
        return Err(CreateError::Keygen(
            String::from_utf8_lossy(&out.stderr).trim().into(),
        ));
    }
    Ok(())
}
