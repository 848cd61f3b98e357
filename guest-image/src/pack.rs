//! `image pack ROOTFS -o FILE`: turn a root filesystem into a carbon-vm artifact. Mesa's version
//! comes from the root's package database (dpkg, or rpm for Fedora-style roots) unless given;
//! systemd-boot from the root unless a loader is given.
//!
//! The disk is a GPT with an EFI system partition (systemd-boot, the kernel and initrd: what
//! krunkit's EFI firmware boots) and an ext4 root made by `mkfs.ext4 -d` (no loop devices, no
//! mounts). The artifact is a zstd-compressed tar: manifest first, then kernel, initrd and disk.

use crate::digest::Sha256Digest;
use crate::hashing::HashingWriter;
use crate::interrupt;
use crate::manifest::{
    Boot, Bundles, ContainerDriver, ContainerImage, MANIFEST_NAME, Manifest, Member, SCHEMA,
    SIGNATURE_NAME,
};
use crate::progress::Progress;
use crate::sparse::copy_sparse;
use sha2::{Digest as _, Sha256};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const ROOT_PARTITION: &str = "carbon-root";
pub const EFI_PARTITION: &str = "carbon-efi";
/// Where the recipe puts container images (OCI archives) that ship inside the guest.
pub const CONTAINER_DIR: &str = "usr/share/carbon-vm/containers";
const MIB: u64 = 1024 * 1024;
const SECTOR: u64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{0} has no kernel: expected exactly one boot/vmlinuz-VERSION")]
    Kernel(PathBuf),
    #[error("{0} is missing (the image would not bundle Venus: install mesa-vulkan-drivers)")]
    NoVenus(PathBuf),
    #[error("the Venus ICD is invalid")]
    Icd(#[source] venus::icd::IcdError),
    #[error(
        "{0} does not describe the Venus bundle (mesa, vulkan_loader and glibc lines; scripts/venus-bundle writes it)"
    )]
    VenusBundle(PathBuf),
    #[error("the library the Venus ICD names is not in the root filesystem: {0:?}")]
    NoVenusLibrary(String),
    #[error(
        "{0} is missing (install systemd-boot-efi or systemd-boot-unsigned in the root, or pass --bootloader FILE)"
    )]
    NoBootloader(PathBuf),
    #[error("cannot read the package database in {0}")]
    Dpkg(PathBuf, #[source] io::Error),
    #[error(
        "package {0} is not installed in the root filesystem (a root without its package database: pass --mesa-version)"
    )]
    NoPackage(&'static str),
    #[error(
        "{0} has neither a dpkg nor an rpm database: pass --mesa-version VERSION (and --bootloader FILE without systemd-boot)"
    )]
    NoPackageDb(PathBuf),
    #[error("`{0}` failed: {1}")]
    Tool(String, String),
    #[error("cannot run `{0}` (install {1})")]
    MissingTool(&'static str, &'static str, #[source] io::Error),
    #[error("cannot write the partition table")]
    Gpt(#[source] gpt::GptError),
    #[error(transparent)]
    Sign(#[from] crate::sign::SignError),
    #[error("I/O error at {0}")]
    Io(PathBuf, #[source] io::Error),
    #[error("image pack stopped")]
    Interrupted(#[from] crate::interrupt::Interrupted),
}

impl exit_class::Classify for PackError {
    fn class(&self) -> Option<exit_class::Class> {
        match self {
            PackError::MissingTool(..) | PackError::NoBootloader(_) => {
                Some(exit_class::Code::Host.hint(exit_class::DOCTOR_HINT))
            }
            _ => None,
        }
    }
}

pub struct PackOptions {
    pub name: String,
    pub arch: String,
    /// Timestamps and identifiers derive from this (SOURCE_DATE_EPOCH) so rebuilds match.
    pub epoch: u64,
    pub zstd_level: i32,
    /// Signs the manifest (minisign): the signature is the artifact's second member.
    pub sign: Option<crate::sign::SigningKey>,
    /// Mesa's version, for a root whose package database cannot be read.
    pub mesa_version: Option<String>,
    /// systemd-boot's EFI binary, for a root that has none.
    pub bootloader: Option<PathBuf>,
}

/// Packs `rootfs` into the artifact `output` (written atomically); returns its sha256. A signal
/// ([`crate::interrupt`]) stops it with its scratch removed and no artifact written.
pub fn pack(
    rootfs: &Path,
    output: &Path,
    opts: &PackOptions,
    progress: &dyn Progress,
) -> Result<Sha256Digest, PackError> {
    pack_steps(rootfs, output, opts, progress).map_err(interrupt::or_interrupted)
}

fn pack_steps(
    rootfs: &Path,
    output: &Path,
    opts: &PackOptions,
    progress: &dyn Progress,
) -> Result<Sha256Digest, PackError> {
    let io_err = |p: &Path| {
        let p = p.to_owned();
        move |e| PackError::Io(p, e)
    };
    let (kernel, initrd, kernel_version) = find_kernel(rootfs)?;
    let icd_rel = venus::icd::VENUS_ICD_PATH.trim_start_matches('/');
    let icd_json =
        fs::read(rootfs.join(icd_rel)).map_err(|_| PackError::NoVenus(rootfs.join(icd_rel)))?;
    let lib = venus::icd::library(Path::new(venus::icd::VENUS_ICD_PATH), &icd_json)
        .map_err(PackError::Icd)?;
    let venus_library = lib
        .candidates(&opts.arch)
        .into_iter()
        .find(|c| rootfs.join(c.strip_prefix("/").unwrap_or(c)).exists())
        .ok_or_else(|| PackError::NoVenusLibrary(format!("{lib:?}")))?;
    let mesa_version = match &opts.mesa_version {
        Some(v) => v.clone(),
        None => package_version(rootfs, "mesa-vulkan-drivers")?,
    };
    let page_size = page_size(rootfs, &kernel_version, &opts.arch);
    let container_images = container_images(rootfs)?;
    let container_driver = container_driver(rootfs)?;

    let out_dir = parent_dir(output);
    let work = tempfile::Builder::new()
        .prefix(".carbon-pack-")
        .tempdir_in(out_dir)
        .map_err(io_err(out_dir))?;
    let root_uuid = stable_uuid(opts, ROOT_PARTITION);
    let cmdline = format!("root=PARTUUID={root_uuid} rw");

    progress.begin("root filesystem", None);
    let root_img = work.path().join("root.img");
    make_root_fs(rootfs, &root_img, opts)?;
    interrupt::check()?;
    progress.begin("EFI partition", None);
    let esp_img = work.path().join("esp.img");
    make_esp(rootfs, &esp_img, &kernel, &initrd, &cmdline, opts)?;
    interrupt::check()?;
    progress.begin("disk", None);
    let disk = work.path().join("disk.raw");
    assemble_disk(&disk, &esp_img, &root_img, root_uuid, opts)?;
    fs::remove_file(&root_img).map_err(io_err(&root_img))?;
    fs::remove_file(&esp_img).map_err(io_err(&esp_img))?;
    progress.finish();

    let members_src = [
        ("boot/vmlinuz", kernel.clone()),
        ("boot/initrd.img", initrd.clone()),
        ("disk.raw", disk.clone()),
    ];
    let mut members = Vec::new();
    for (name, path) in &members_src {
        interrupt::check()?;
        let (size, sha256) = hash_file(path).map_err(io_err(path))?;
        members.push(Member {
            path: (*name).into(),
            size,
            sha256,
        });
    }
    let manifest = Manifest {
        schema: SCHEMA,
        name: opts.name.clone(),
        arch: opts.arch.clone(),
        created: opts.epoch,
        boot: Boot {
            kernel: "boot/vmlinuz".into(),
            initrd: "boot/initrd.img".into(),
            disk: "disk.raw".into(),
            cmdline,
            root_partition: ROOT_PARTITION.into(),
            efi_partition: EFI_PARTITION.into(),
        },
        bundles: Bundles {
            kernel_version,
            mesa_version,
            page_size,
            venus_icd: venus::icd::VENUS_ICD_PATH.into(),
            venus_library: venus_library.display().to_string(),
            container_images,
            container_driver,
        },
        members,
    };
    let manifest_json = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");

    let total = manifest.total_size().unwrap_or(0);
    progress.begin("compress", Some(total));
    let tmp_out = tempfile::Builder::new()
        .prefix(".carbon-artifact-")
        .tempfile_in(out_dir)
        .map_err(io_err(out_dir))?;
    let mut hashing = HashingWriter::new(BufWriter::with_capacity(MIB as usize, tmp_out.as_file()));
    // The manifest member is a zstd frame of its own: `image sign` reads it and inserts the
    // signature member after it without recompressing the rest (zstd frames concatenate).
    let head = crate::sign::member_frame(MANIFEST_NAME, &manifest_json, opts.epoch)
        .map_err(io_err(output))?;
    hashing.write_all(&head).map_err(io_err(output))?;
    if let Some(key) = &opts.sign {
        let sig = key.sign(&manifest_json)?;
        let frame = crate::sign::member_frame(SIGNATURE_NAME, sig.as_bytes(), opts.epoch)
            .map_err(io_err(output))?;
        hashing.write_all(&frame).map_err(io_err(output))?;
    }
    let mut zw =
        zstd::stream::write::Encoder::new(hashing, opts.zstd_level).map_err(io_err(output))?;
    zw.multithread(std::thread::available_parallelism().map_or(1, |n| n.get() as u32))
        .map_err(io_err(output))?;
    zw.include_checksum(true).map_err(io_err(output))?;
    let mut tar = tar::Builder::new(zw);
    for ((name, path), m) in members_src.iter().zip(&manifest.members) {
        let f = File::open(path).map_err(io_err(path))?;
        let reader = ProgressReader { inner: f, progress };
        append(&mut tar, name, m.size, reader, opts.epoch).map_err(io_err(path))?;
    }
    let zw = tar.into_inner().map_err(io_err(output))?;
    let (buffered, digest, _) = zw
        .finish()
        .and_then(HashingWriter::finish)
        .map_err(io_err(output))?;
    drop(buffered);
    tmp_out
        .as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(io_err(output))?;
    tmp_out.as_file().sync_all().map_err(io_err(output))?;
    tmp_out
        .persist(output)
        .map_err(|e| PackError::Io(output.into(), e.error))?;
    progress.finish();
    Ok(digest)
}

/// The directory a file is written in: scratch space goes there so the final rename stays on
/// one filesystem.
pub(crate) fn parent_dir(file: &Path) -> &Path {
    file.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

pub(crate) fn append(
    tar: &mut tar::Builder<impl Write>,
    name: &str,
    size: u64,
    data: impl Read,
    epoch: u64,
) -> io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(epoch);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, name, data)
}

/// The version of the one kernel in `rootfs/boot` (`vmlinuz-VERSION`).
pub(crate) fn kernel_version(rootfs: &Path) -> Result<String, PackError> {
    let entries =
        fs::read_dir(rootfs.join("boot")).map_err(|_| PackError::Kernel(rootfs.into()))?;
    let versions: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("vmlinuz-")
                .map(str::to_owned)
        })
        .collect();
    match versions.as_slice() {
        [version] => Ok(version.clone()),
        _ => Err(PackError::Kernel(rootfs.into())),
    }
}

fn find_kernel(rootfs: &Path) -> Result<(PathBuf, PathBuf, String), PackError> {
    let version = kernel_version(rootfs)?;
    let boot = rootfs.join("boot");
    let initrd = boot.join(format!("initrd.img-{version}"));
    if !initrd.is_file() {
        return Err(PackError::Kernel(rootfs.into()));
    }
    Ok((boot.join(format!("vmlinuz-{version}")), initrd, version))
}

/// The kernel's page size, from its build configuration (`/boot/config-VERSION`); x86_64 has
/// only 4 KiB pages. `None` when an aarch64 root carries no config.
fn page_size(rootfs: &Path, kernel_version: &str, arch: &str) -> Option<u32> {
    if arch == "x86_64" {
        return Some(4096);
    }
    let config = fs::read_to_string(rootfs.join(format!("boot/config-{kernel_version}"))).ok()?;
    config.lines().find_map(|l| match l {
        "CONFIG_ARM64_4K_PAGES=y" => Some(4096),
        "CONFIG_ARM64_16K_PAGES=y" => Some(16384),
        "CONFIG_ARM64_64K_PAGES=y" => Some(65536),
        _ => None,
    })
}

/// The installed version of `package` (`VERSION-RELEASE`), from the root's dpkg status file or
/// its rpm database (Fedora: /usr/lib/sysimage/rpm, older: /var/lib/rpm; read by the host's rpm).
fn package_version(rootfs: &Path, package: &'static str) -> Result<String, PackError> {
    if rootfs.join("var/lib/dpkg/status").is_file() {
        return dpkg_version(rootfs, package);
    }
    let Some(db) = ["usr/lib/sysimage/rpm", "var/lib/rpm"]
        .into_iter()
        .find(|d| rootfs.join(d).is_dir())
    else {
        return Err(PackError::NoPackageDb(rootfs.into()));
    };
    // The database path is the root's own: the host's rpm may default to another (Debian's).
    let out = interrupt::output(
        Command::new("rpm")
            .arg("--root")
            .arg(rootfs)
            .arg("--dbpath")
            .arg(format!("/{db}"))
            .args(["-q", "--qf", "%{VERSION}-%{RELEASE}", package]),
    )
    .map_err(|e| PackError::MissingTool("rpm", "rpm", e))?;
    if !out.status.success() {
        return Err(PackError::NoPackage(package));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The installed version of `package`, from the root's dpkg status file.
fn dpkg_version(rootfs: &Path, package: &'static str) -> Result<String, PackError> {
    let path = rootfs.join("var/lib/dpkg/status");
    let status = fs::read_to_string(&path).map_err(|e| PackError::Dpkg(path, e))?;
    status
        .split("\n\n")
        .find(|stanza| stanza.lines().any(|l| l == format!("Package: {package}")))
        .and_then(|stanza| stanza.lines().find_map(|l| l.strip_prefix("Version: ")))
        .map(str::to_owned)
        .ok_or(PackError::NoPackage(package))
}

fn container_images(rootfs: &Path) -> Result<Vec<ContainerImage>, PackError> {
    let dir = rootfs.join(CONTAINER_DIR);
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(vec![]);
    };
    let mut out: Vec<ContainerImage> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            let stem = name.strip_suffix(".oci.tar")?;
            Some(ContainerImage {
                name: format!("localhost/carbon-{stem}:latest"),
                path: format!("/{CONTAINER_DIR}/{name}"),
            })
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// The Venus bundle at `venus::bundle::DIR`, described by its VERSION file; none if the root
/// has no bundle. A bundle whose description cannot be read is refused, not left out.
fn container_driver(rootfs: &Path) -> Result<Option<ContainerDriver>, PackError> {
    let dir = rootfs.join(venus::bundle::DIR.trim_start_matches('/'));
    if !dir.exists() {
        return Ok(None);
    }
    let file = dir.join(venus::bundle::VERSION_FILE);
    let text = fs::read_to_string(&file).map_err(|e| PackError::Io(file.clone(), e))?;
    let v = venus::bundle::Version::parse(&text).ok_or(PackError::VenusBundle(file))?;
    Ok(Some(ContainerDriver {
        mesa_version: v.mesa,
        vulkan_loader: v.vulkan_loader,
        glibc: v.glibc,
    }))
}

/// A UUID derived from the build's name, epoch and role, so the same inputs give the same disk.
fn stable_uuid(opts: &PackOptions, role: &str) -> uuid::Uuid {
    let h = Sha256::digest(format!("carbon-vm:{}:{}:{role}", opts.name, opts.epoch));
    let mut b: [u8; 16] = h[..16].try_into().expect("16 bytes");
    b[6] = (b[6] & 0x0f) | 0x40; // version 4 layout, RFC 4122 variant
    b[8] = (b[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(b)
}

fn run(cmd: &mut Command, tool: &'static str, package: &'static str) -> Result<(), PackError> {
    let out = interrupt::output(cmd).map_err(|e| PackError::MissingTool(tool, package, e))?;
    if !out.status.success() {
        return Err(PackError::Tool(
            format!("{cmd:?}"),
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(())
}

fn tree_bytes(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    for e in fs::read_dir(dir)? {
        let e = e?;
        let meta = e.path().symlink_metadata()?;
        total += meta.len().div_ceil(4096) * 4096 + 256;
        if meta.is_dir() {
            total += tree_bytes(&e.path())?;
        }
    }
    Ok(total)
}

fn make_root_fs(rootfs: &Path, img: &Path, opts: &PackOptions) -> Result<(), PackError> {
    let used = tree_bytes(rootfs).map_err(|e| PackError::Io(rootfs.into(), e))?;
    // Room for ext4's own metadata and first-boot writes; machines grow it to --disk-size.
    let size_mib = (used + used / 5 + 64 * MIB).div_ceil(MIB);
    let uuid = stable_uuid(opts, "root-fs");
    run(
        Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-t",
                "ext4",
                "-b",
                "4096",
                "-m",
                "0",
                "-L",
                ROOT_PARTITION,
            ])
            .arg("-U")
            .arg(uuid.to_string())
            .arg("-E")
            .arg(format!("hash_seed={uuid},root_owner=0:0,nodiscard"))
            .arg("-d")
            .arg(rootfs)
            .arg(img)
            .arg(format!("{size_mib}M"))
            .env("E2FSPROGS_FAKE_TIME", opts.epoch.to_string()),
        "mkfs.ext4",
        "e2fsprogs",
    )
}

fn make_esp(
    rootfs: &Path,
    img: &Path,
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
    opts: &PackOptions,
) -> Result<(), PackError> {
    let (efi_name, boot_name) = match opts.arch.as_str() {
        "aarch64" => ("systemd-bootaa64.efi", "BOOTAA64.EFI"),
        _ => ("systemd-bootx64.efi", "BOOTX64.EFI"),
    };
    let loader = opts
        .bootloader
        .clone()
        .unwrap_or_else(|| rootfs.join("usr/lib/systemd/boot/efi").join(efi_name));
    if !loader.is_file() {
        return Err(PackError::NoBootloader(loader));
    }
    let sizes: u64 = [kernel, initrd, &loader]
        .iter()
        .map(|p| p.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    // FAT32 needs at least 65525 clusters: 64 MiB is the floor for 512-byte sectors.
    let size_kib = (sizes + 16 * MIB).max(64 * MIB).div_ceil(MIB) * 1024;
    let serial = &stable_uuid(opts, EFI_PARTITION).simple().to_string()[..8];
    run(
        Command::new("mkfs.vfat")
            .args([
                "-C",
                "-F",
                "32",
                "-n",
                "CARBON-EFI",
                "-i",
                serial,
                "--invariant",
            ])
            .arg(img)
            .arg(size_kib.to_string())
            .env("SOURCE_DATE_EPOCH", opts.epoch.to_string()),
        "mkfs.vfat",
        "dosfstools",
    )?;
    let conf_dir = img.with_extension("conf");
    fs::create_dir_all(&conf_dir).map_err(|e| PackError::Io(conf_dir.clone(), e))?;
    let entry = format!(
        "title carbon-vm guest\nlinux /vmlinuz\ninitrd /initrd.img\noptions {cmdline} console=hvc0 console=ttyS0\n"
    );
    let files = [
        ("loader.conf", "timeout 0\ndefault carbon.conf\n".to_owned()),
        ("carbon.conf", entry),
    ];
    for (name, text) in &files {
        fs::write(conf_dir.join(name), text).map_err(|e| PackError::Io(conf_dir.join(name), e))?;
    }
    let mtools = |args: &[&std::ffi::OsStr]| {
        run(
            Command::new(args[0])
                .args(&args[1..])
                .env("MTOOLS_SKIP_CHECK", "1"),
            "mtools",
            "mtools",
        )
    };
    let i = img.as_os_str();
    mtools(&[
        "mmd".as_ref(),
        "-i".as_ref(),
        i,
        "::/EFI".as_ref(),
        "::/EFI/BOOT".as_ref(),
        "::/loader".as_ref(),
        "::/loader/entries".as_ref(),
    ])?;
    for (src, dst) in [
        (loader.as_path(), format!("::/EFI/BOOT/{boot_name}")),
        (kernel, "::/vmlinuz".into()),
        (initrd, "::/initrd.img".into()),
        (
            &conf_dir.join("loader.conf"),
            "::/loader/loader.conf".into(),
        ),
        (
            &conf_dir.join("carbon.conf"),
            "::/loader/entries/carbon.conf".into(),
        ),
    ] {
        mtools(&[
            "mcopy".as_ref(),
            "-m".as_ref(),
            "-i".as_ref(),
            i,
            src.as_os_str(),
            dst.as_ref(),
        ])?;
    }
    Ok(())
}

fn assemble_disk(
    disk: &Path,
    esp: &Path,
    root: &Path,
    root_uuid: uuid::Uuid,
    opts: &PackOptions,
) -> Result<(), PackError> {
    let ioe = |p: &Path| {
        let p = p.to_owned();
        move |e| PackError::Io(p, e)
    };
    let esp_len = esp.metadata().map_err(ioe(esp))?.len();
    let root_len = root.metadata().map_err(ioe(root))?.len();
    let esp_start = MIB;
    let root_start = esp_start + esp_len.div_ceil(MIB) * MIB;
    let total = root_start + root_len.div_ceil(MIB) * MIB + MIB;
    let mut f = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(disk)
        .map_err(ioe(disk))?;
    f.set_len(total).map_err(ioe(disk))?;
    let mbr = gpt::mbr::ProtectiveMBR::with_lb_size(
        u32::try_from(total / SECTOR - 1).unwrap_or(u32::MAX),
    );
    mbr.overwrite_lba0(&mut f)
        .map_err(|e| PackError::Io(disk.into(), io::Error::other(e.to_string())))?;
    let mut g = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(f, Some(stable_uuid(opts, "disk")))
        .map_err(PackError::Gpt)?;
    let root_type = match opts.arch.as_str() {
        "aarch64" => gpt::partition_types::LINUX_ROOT_ARM_64,
        _ => gpt::partition_types::LINUX_ROOT_X64,
    };
    g.add_partition_at(
        EFI_PARTITION,
        1,
        esp_start / SECTOR,
        esp_len / SECTOR,
        gpt::partition_types::EFI,
        0,
    )
    .map_err(PackError::Gpt)?;
    g.add_partition_at(
        ROOT_PARTITION,
        2,
        root_start / SECTOR,
        root_len / SECTOR,
        root_type,
        0,
    )
    .map_err(PackError::Gpt)?;
    let mut parts = g.partitions().clone();
    for p in parts.values_mut() {
        p.part_guid = if p.name == ROOT_PARTITION {
            root_uuid
        } else {
            stable_uuid(opts, EFI_PARTITION)
        };
    }
    g.update_partitions(parts).map_err(PackError::Gpt)?;
    let mut f = g.write().map_err(PackError::Gpt)?;
    for (src, at) in [(esp, esp_start), (root, root_start)] {
        let mut s = File::open(src).map_err(ioe(src))?;
        copy_sparse(&mut s, &mut f, at).map_err(ioe(disk))?;
    }
    Ok(())
}

fn hash_file(path: &Path) -> io::Result<(u64, Sha256Digest)> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let n = io::copy(&mut f, &mut h)?;
    Ok((n, Sha256Digest::from_hasher(h)))
}

struct ProgressReader<'a, R> {
    inner: R,
    progress: &'a dyn Progress,
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // The longest step of all: a signal stops it here (`pack` reports why).
        interrupt::check().map_err(io::Error::other)?;
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}
