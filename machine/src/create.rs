//! `create`: first a [`Plan`] (every refusal that needs no image, before anything is pulled or
//! written), then the machine directory made complete in a scratch directory (disk cloned from
//! the image, SSH key generated, spec written) and renamed into place only if the name is free.

use crate::podman_machine::{self, ExposeError};
use crate::store::{
    DISK, KEY, LOCK, MachineDir, PodmanMachine, SPEC, Spec, Store, StoreError, sync_dir,
    write_atomic,
};
use guest_image::CachedImage;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use vmm::{Arch, DriverKind};

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("machine {0:?} already exists")]
    Exists(String),
    #[error("the {0} driver is not available on this host yet (use --driver qemu)")]
    Driver(&'static str),
    #[error(transparent)]
    Unavailable(vmm::Error),
    #[error("image {image} is for {arch}; the {driver} driver runs {runs} guests")]
    Arch {
        image: String,
        arch: String,
        driver: &'static str,
        runs: String,
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
    #[error("cannot grow the root partition of the machine's disk")]
    GrowRoot(#[source] guest_image::grow::GrowError),
    #[error("ssh-keygen failed (install openssh-client): {0}")]
    Keygen(String),
}

impl exit_class::Classify for CreateError {
    fn class(&self) -> Option<exit_class::Class> {
        use exit_class::Code;
        match self {
            CreateError::Driver(_) => Some(Code::NotImplemented.bare()),
            CreateError::Unavailable(vmm::Error::Unavailable { hint, .. }) => {
                Some(Code::NotImplemented.hint(hint))
            }
            CreateError::PodmanMachineDriver | CreateError::Arch { .. } => {
                Some(Code::Usage.bare())
            }
            CreateError::NoSpace { .. } => Some(Code::Failure.hint(
                "free space there, or put CARBON_VM_HOME on a larger filesystem; nothing was created",
            )),
            // Transparent: the wrapped error is not in the chain of its own.
            CreateError::Store(e) => e.class(),
            CreateError::Invalid(e) => e.class(),
            CreateError::PodmanMachine(e) => e.class(),
            CreateError::Volume(e) => e.class(),
            _ => None,
        }
    }
}

/// A new machine as asked for, before its image is known.
pub struct Request<'a> {
    pub name: &'a str,
    pub cpus: u8,
    pub memory_mib: u32,
    pub disk_gib: u32,
    pub gpu: bool,
    /// The ggml device (crate::ggml).
    pub ggml: bool,
    pub podman_default: bool,
    /// Expose the machine to Podman as a libkrun machine (`--podman-machine`).
    pub podman_machine: bool,
    /// Host folders shared into the guest.
    pub volumes: Vec<crate::volumes::Volume>,
}

/// Where Podman keeps its machine files, and which podman reads them.
#[derive(Debug, Clone)]
pub struct PodmanTarget {
    /// Podman's config home: `$XDG_CONFIG_HOME`, else `$HOME/.config`.
    pub config_home: PathBuf,
    /// `podman --version` output.
    pub version: String,
}

/// The driver of `kind` for a new machine on this host: refused when this carbon-vm has no
/// implementation of it, or this host cannot run it (no krunkit).
pub fn host_driver(
    kind: DriverKind,
    start: &crate::lifecycle::StartOptions,
) -> Result<Box<dyn vmm::Driver>, CreateError> {
    let d = crate::lifecycle::driver_of(kind, Arch::host(), None, start)
        .map_err(|e| CreateError::Driver(e.0))?;
    d.available().map_err(CreateError::Unavailable)?;
    Ok(d)
}

/// A request the host's driver can carry out: made only by [`plan`], which refused everything
/// that needs no image; [`create`] checks only what the image decides.
pub struct Plan<'a> {
    req: Request<'a>,
    driver: Box<dyn vmm::Driver>,
    podman: Option<PodmanTarget>,
}

impl Plan<'_> {
    /// The architecture of the catalog image the machine gets when it names none.
    pub fn arch(&self) -> Arch {
        self.driver.capabilities().arches[0]
    }

    pub fn driver(&self) -> &dyn vmm::Driver {
        self.driver.as_ref()
    }
}

/// Checks `req` against `driver` on this host: `--podman-machine` (then `podman`, asked only
/// then), resources, folders. Nothing is pulled or written.
pub fn plan<'a>(
    driver: Box<dyn vmm::Driver>,
    req: Request<'a>,
    state_dirs: &[PathBuf],
    podman: impl FnOnce() -> Result<PodmanTarget, ExposeError>,
) -> Result<Plan<'a>, CreateError> {
    let podman = if req.podman_machine {
        if !driver.capabilities().podman_machine {
            return Err(CreateError::PodmanMachineDriver);
        }
        let t = podman()?;
        podman_machine::schema_of(&t.version)?;
        Some(t)
    } else {
        None
    };
    crate::spec::validate_resources(req.cpus, req.memory_mib, req.gpu, &driver.limits(req.gpu))?;
    crate::volumes::validate(&req.volumes, state_dirs)?;
    if !req.volumes.is_empty() && !driver.limits(false).shares {
        return Err(crate::volumes::VolumeError::Unsupported(
            driver.kind().name(),
            crate::volumes::INSTALL_HINT,
        )
        .into());
    }
    Ok(Plan {
        req,
        driver,
        podman,
    })
}

/// The Podman machine of a new machine, unless Podman already has one of that name.
fn reserve_podman_machine(name: &str, t: &PodmanTarget) -> Result<PodmanMachine, CreateError> {
    let file = podman_machine::store_dir(&t.config_home).join(format!("{name}.json"));
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

/// The image's architecture, if the driver runs it (QEMU runs both, another architecture than
/// the host's under TCG, slowly; krunkit aarch64 only: Apple Silicon).
fn check_arch(driver: &dyn vmm::Driver, img: &CachedImage) -> Result<Arch, CreateError> {
    let arches = driver.capabilities().arches;
    match Arch::from_name(&img.manifest.arch) {
        Some(a) if arches.contains(&a) => Ok(a),
        _ => Err(CreateError::Arch {
            image: img.record.id.short(),
            arch: img.manifest.arch.clone(),
            driver: driver.kind().name(),
            runs: arches
                .iter()
                .map(|a| a.name())
                .collect::<Vec<_>>()
                .join(" and "),
        }),
    }
}

/// Makes the planned machine from `img`.
pub fn create(store: &Store, plan: &Plan, img: &CachedImage) -> Result<MachineDir, CreateError> {
    let o = &plan.req;
    let arch = check_arch(plan.driver(), img)?;
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
    let podman_machine = plan
        .podman
        .as_ref()
        .map(|t| reserve_podman_machine(o.name, t))
        .transpose()?;
    let io = |e| StoreError::Io(machines.to_owned(), e);
    // Its lock is the machine's: held until the machine is complete, so the sweep leaves the
    // scratch alone and a start of the new machine waits for it.
    let scratch = scratch::Scratch::new_in(machines, o.name, LOCK).map_err(io)?;
    let disk = scratch.path().join(DISK);
    clone_disk(&image_disk, &disk, u64::from(o.disk_gib) << 30).map_err(CreateError::Disk)?;
    // The guest's first boot then grows only the filesystem (docs/internals.md, "The guest's boot").
    guest_image::grow::grow_root(&disk, &img.manifest.boot.root_partition)
        .map_err(CreateError::GrowRoot)?;
    keygen(&scratch.path().join(KEY), o.name)?;
    let spec = spec_of(
        plan,
        img,
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
    let (tmp, _lock) = scratch.keep();
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
    if let (Some(p), Some(t)) = (&spec.podman_machine, &plan.podman)
        && let Err(e) = podman_machine::expose(&m, &spec, p, &t.version)
    {
        let _ = std::fs::remove_dir_all(&m.dir); // no machine without the file it was asked for
        return Err(e.into());
    }
    Ok(m)
}

fn spec_of(
    plan: &Plan,
    img: &CachedImage,
    arch: Arch,
    kernel: PathBuf,
    initrd: PathBuf,
    podman_machine: Option<PodmanMachine>,
) -> Spec {
    let o = &plan.req;
    Spec {
        name: o.name.into(),
        driver: plan.driver.kind(),
        arch: arch.name().into(),
        cpus: o.cpus,
        memory_mib: o.memory_mib,
        disk_gib: o.disk_gib,
        gpu: o.gpu,
        image: img.record.id,
        kernel,
        initrd,
        cmdline: img.manifest.boot.cmdline.clone(),
        root_partition: img.manifest.boot.root_partition.clone(),
        podman_default: o.podman_default,
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        podman_machine,
        volumes: o.volumes.clone(),
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
