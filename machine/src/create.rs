//! `create`: a machine directory made complete in a scratch directory (disk cloned from the
//! image, SSH key generated, spec written), then renamed into place only if the name is free.

use crate::podman_machine::{self, ExposeError};
use crate::store::{
    DISK, KEY, LOCK, MachineDir, PodmanMachine, SCRATCH_PREFIX, SPEC, Spec, Store, StoreError,
    sync_dir, write_atomic,
};
use guest_image::CachedImage;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use vmm::qemu::Arch;

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("machine {0:?} already exists")]
    Exists(String),
    #[error("the {0} driver is not available on this host yet (use --driver qemu)")]
    Driver(&'static str),
    #[error("the krunkit driver is not available on this host")]
    NoKrunkit(#[source] vmm::krunkit::ProbeError),
    #[error("image {image} is for {arch}; the {driver} driver runs {runs} guests")]
    Arch {
        image: String,
        arch: String,
        driver: &'static str,
        runs: &'static str,
    },
    #[error("--podman-machine needs --driver krunkit (Podman's libkrun machines run on krunkit)")]
    PodmanMachineDriver,
    #[error("cannot expose the machine to Podman")]
    PodmanMachine(#[from] ExposeError),
    #[error(transparent)]
    Invalid(#[from] crate::spec::InvalidSpec),
    #[error(transparent)]
    Volume(#[from] crate::volumes::VolumeError),
    #[error(
        "not enough space for the machine's disk in {dir}: it needs {need} MiB, {free} MiB are free"
    )]
    NoSpace { dir: PathBuf, need: u64, free: u64 },
    #[error("cannot reserve ports on 127.0.0.1")]
    Ports(#[source] io::Error),
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
    /// The ggml device (crate::ggml).
    pub ggml: bool,
    pub podman_default: bool,
    pub image: &'a CachedImage,
    /// The krunkit to ask whether the krunkit driver is available.
    pub krunkit: &'a Path,
    /// Expose the machine to Podman as a libkrun machine (`--podman-machine`).
    pub podman_machine: Option<PodmanTarget<'a>>,
    /// How this host runs VMMs: the limits a machine is checked against.
    pub start: &'a crate::lifecycle::StartOptions,
    /// Host folders shared into the guest.
    pub volumes: &'a [crate::volumes::Volume],
}

/// Where Podman keeps its machine files, and which podman reads them.
#[derive(Debug, Clone, Copy)]
pub struct PodmanTarget<'a> {
    /// Podman's config home: `$XDG_CONFIG_HOME`, else `$HOME/.config`.
    pub config_home: &'a Path,
    /// `podman --version` output.
    pub version: &'a str,
}

/// Refuses a driver this host cannot run machines with, before anything is pulled or written:
/// krunkit is available where `krunkit --version` names a krunkit.
pub fn check_driver(driver: vmm::DriverKind, krunkit: &Path) -> Result<(), CreateError> {
    match driver {
        vmm::DriverKind::Qemu => Ok(()),
        vmm::DriverKind::Krunkit => vmm::krunkit::probe(krunkit)
            .map(drop)
            .map_err(CreateError::NoKrunkit),
        vmm::DriverKind::Libkrun => Err(CreateError::Driver("libkrun")),
    }
}

/// Refuses what `--podman-machine` cannot do, before anything is pulled or written: a driver
/// Podman's libkrun machines do not run on, then a podman whose machine-file schema was not
/// checked. Returns `podman --version`'s output.
pub fn check_podman_machine(
    driver: vmm::DriverKind,
    podman_version: impl FnOnce() -> Result<String, ExposeError>,
) -> Result<String, CreateError> {
    if driver != vmm::DriverKind::Krunkit {
        return Err(CreateError::PodmanMachineDriver);
    }
    let version = podman_version()?;
    podman_machine::schema_of(&version)?;
    Ok(version)
}

/// The Podman machine of a new machine, unless Podman already has one of that name.
fn reserve_podman_machine(
    o: &CreateOptions,
    t: PodmanTarget,
) -> Result<PodmanMachine, CreateError> {
    check_podman_machine(o.driver, || Ok(t.version.to_owned()))?;
    let file = podman_machine::store_dir(t.config_home).join(format!("{}.json", o.name));
    if file.exists() {
        return Err(ExposeError::Exists(file).into());
    }
    // Both ports are held at once, so they differ; Podman's file names them for good.
    let ports = || -> io::Result<(u16, u16)> {
        let ssh = std::net::TcpListener::bind("127.0.0.1:0")?;
        let rest = std::net::TcpListener::bind("127.0.0.1:0")?;
        Ok((ssh.local_addr()?.port(), rest.local_addr()?.port()))
    };
    let (ssh_port, rest_port) = ports().map_err(CreateError::Ports)?;
    Ok(PodmanMachine {
        file,
        ssh_port,
        rest_port,
    })
}

/// The architecture of the catalog image a machine of `driver` gets: krunkit runs Apple Silicon
/// guests; QEMU the host's own.
pub fn guest_arch(driver: vmm::DriverKind) -> Arch {
    match driver {
        vmm::DriverKind::Krunkit => Arch::Aarch64,
        _ => Arch::host(),
    }
}

/// The image's architecture, if the driver runs it: QEMU runs both (another architecture than
/// the host's under TCG, slowly); krunkit runs aarch64 guests only (Apple Silicon).
fn check_arch(driver: vmm::DriverKind, img: &CachedImage) -> Result<Arch, CreateError> {
    let arch = Arch::from_name(&img.manifest.arch);
    let runs = match driver {
        vmm::DriverKind::Krunkit => "aarch64",
        _ => "x86_64 and aarch64",
    };
    match arch {
        Some(a) if driver != vmm::DriverKind::Krunkit || a == Arch::Aarch64 => Ok(a),
        _ => Err(CreateError::Arch {
            image: img.record.id.short(),
            arch: img.manifest.arch.clone(),
            driver: driver.name(),
            runs,
        }),
    }
}

/// Refuses, before anything is pulled or written, CPUs and memory the driver cannot give here.
pub fn check_resources(
    driver: vmm::DriverKind,
    cpus: u8,
    memory_mib: u32,
    gpu: bool,
    start: &crate::lifecycle::StartOptions,
) -> Result<(), CreateError> {
    let limits = crate::lifecycle::driver_of(driver, Arch::host(), None, start)
        .map_err(|e| CreateError::Driver(e.0))?
        .limits(gpu);
    Ok(crate::spec::validate_resources(
        cpus, memory_mib, gpu, &limits,
    )?)
}

/// Whether `driver` can share host folders on this host.
pub fn can_share(driver: vmm::DriverKind, start: &crate::lifecycle::StartOptions) -> bool {
    crate::lifecycle::driver_of(driver, Arch::host(), None, start)
        .is_ok_and(|d| d.limits(false).shares)
}

pub fn create(store: &Store, o: &CreateOptions) -> Result<MachineDir, CreateError> {
    check_driver(o.driver, o.krunkit)?;
    check_resources(o.driver, o.cpus, o.memory_mib, o.gpu, o.start)?;
    crate::volumes::validate(o.volumes, &o.start.state_dirs)?;
    if !o.volumes.is_empty() && !can_share(o.driver, o.start) {
        return Err(crate::volumes::VolumeError::Unsupported(
            o.driver.name(),
            crate::volumes::INSTALL_HINT,
        )
        .into());
    }
    let img = o.image;
    let arch = check_arch(o.driver, img)?;
    let image_disk = img.member_path(&img.manifest.boot.disk);
    let image_disk_len = std::fs::metadata(&image_disk)
        .map_err(|e| StoreError::Io(image_disk.clone(), e))?
        .len();
    crate::spec::validate_disk(o.disk_gib, image_disk_len)?;
    let m = store.machine(o.name)?;
    let machines = store.machines_dir()?;
    if m.dir.exists() {
        return Err(CreateError::Exists(o.name.into()));
    }
    check_space(machines, &image_disk)?;
    let podman_machine = o
        .podman_machine
        .map(|t| reserve_podman_machine(o, t))
        .transpose()?;
    let io = |e| StoreError::Io(machines.to_owned(), e);
    let scratch = tempfile::Builder::new()
        .prefix(&format!("{SCRATCH_PREFIX}{}-", o.name))
        .tempdir_in(machines)
        .map_err(io)?;
    // Held until the machine is complete: the sweep (store::sweep_scratch) leaves a locked scratch
    // alone, and a start of the new machine waits for it.
    let lock = std::fs::File::create(scratch.path().join(LOCK)).map_err(io)?;
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io(e.into()))?;
    let disk = scratch.path().join(DISK);
    clone_disk(&image_disk, &disk, u64::from(o.disk_gib) << 30).map_err(CreateError::Disk)?;
    keygen(&scratch.path().join(KEY), o.name)?;
    let spec = spec_of(
        o,
        arch,
        img.member_path(&img.manifest.boot.kernel),
        img.member_path(&img.manifest.boot.initrd),
        podman_machine,
    );
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
    sync_dir(machines)?;
    if let (Some(p), Some(t)) = (&spec.podman_machine, o.podman_machine)
        && let Err(e) = podman_machine::expose(&m, &spec, p, t.version)
    {
        let _ = std::fs::remove_dir_all(&m.dir); // no machine without the file it was asked for
        return Err(e.into());
    }
    Ok(m)
}

fn spec_of(
    o: &CreateOptions,
    arch: Arch,
    kernel: PathBuf,
    initrd: PathBuf,
    podman_machine: Option<PodmanMachine>,
) -> Spec {
    Spec {
        name: o.name.into(),
        driver: o.driver,
        arch: arch.name().into(),
        cpus: o.cpus,
        memory_mib: o.memory_mib,
        disk_gib: o.disk_gib,
        gpu: o.gpu,
        image: o.image.record.id,
        kernel,
        initrd,
        cmdline: o.image.manifest.boot.cmdline.clone(),
        podman_default: o.podman_default,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        podman_machine,
        volumes: o.volumes.to_vec(),
        ggml: o.ggml,
    }
}

/// Room for the image disk's data (what a copy writes where the filesystem cannot clone), with a
/// margin for the key and state files; checked before anything is written.
fn check_space(machines: &Path, image_disk: &Path) -> Result<(), CreateError> {
    use std::os::unix::fs::MetadataExt;
    const MARGIN: u64 = 1 << 20;
    let io = |e| StoreError::Io(machines.to_owned(), e);
    let data = std::fs::metadata(image_disk).map_err(io)?.blocks() * 512;
    let free = crate::host::free_bytes(machines).map_err(io)?;
    if free < data + MARGIN {
        return Err(CreateError::NoSpace {
            dir: machines.to_owned(),
            need: (data + MARGIN).div_ceil(1 << 20),
            free: free >> 20,
        });
    }
    Ok(())
}

/// A copy-on-write clone where the filesystem can, else a copy of the data only (holes stay
/// holes); then grown to `size` (never shrunk).
fn clone_disk(src: &Path, dst: &Path, size: u64) -> io::Result<()> {
    vmm::platform::clone_file(src, dst)?;
    let d = File::options().write(true).open(dst)?;
    let len = std::fs::metadata(src)?.len().max(size);
    d.set_len(len)?;
    d.sync_all()
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

/// The machines created from image `id`.
pub fn users_of(store: &Store, id: &guest_image::Sha256Digest) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    for name in store.names()? {
        if store.open(&name)?.spec()?.image == *id {
            out.push(name);
        }
    }
    Ok(out)
}
