//! The command line: clap types only. Each verb is implemented in `commands`.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "carbon-vm",
    version,
    about = "GPU-accelerated (virtio-gpu Venus) Podman machines"
)]
pub struct Cli {
    /// Print machine-readable JSON records instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print nothing but errors.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Guest images: build, pack, pull, push, list, remove, verify.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Create a machine from a guest image and register it with Podman.
    Create(CreateArgs),
    /// Boot a machine; returns when the guest is ready and the Podman API answers.
    Start(NameArg),
    /// Shut a machine down (gracefully unless --force).
    Stop(StopArgs),
    /// Change a stopped machine's CPUs, memory or disk size (disks only grow).
    Set(SetArgs),
    /// Remove a machine and its Podman connection.
    Rm(RmArgs),
    /// List machines.
    List,
    /// Show one machine's record.
    Inspect(NameArg),
    /// Open a shell, or run a command, in a machine over SSH.
    Ssh(SshArgs),
    /// Print CONTAINER_HOST / DOCKER_HOST exports for a machine.
    Env(NameArg),
    /// GPU (Venus) checks.
    #[command(subcommand)]
    Gpu(GpuCommand),
    /// Check the host's readiness for each driver and for the GPU.
    Doctor,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
    /// Print the man page, or write one page per command into a directory.
    Man(ManArgs),
}

/// carbon-vm's own command, not the user's (no completion, no man page): the ggml device's
/// server supervisor, which `start` runs as `carbon-vm ggml-serve ...`.
#[derive(Parser, Debug)]
#[command(name = machine::ggml::SERVE_COMMAND)]
pub struct GgmlServeArgs {
    #[arg(long)]
    pub socket: std::path::PathBuf,
    #[arg(long)]
    pub state: std::path::PathBuf,
    #[arg(long)]
    pub vmm_pid: i32,
    /// The server's command line.
    #[arg(last = true, required = true)]
    pub server: Vec<String>,
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Write carbon-vm.1 and a carbon-vm-COMMAND.1 page per command here instead of printing
    /// carbon-vm(1).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Build the default guest from Debian trixie packages (needs root or unprivileged user namespaces).
    Build(BuildArgs),
    /// Pack a root filesystem (kernel and initrd under ROOTFS/boot) into an image artifact.
    Pack(PackArgs),
    /// Sign an image artifact's manifest (minisign), replacing any earlier signature.
    Sign(SignArgs),
    /// Pull, verify and cache an image: http(s) URL, local path or oci://REGISTRY/REPO[:TAG|@sha256:DIGEST].
    Pull(PullArgs),
    /// Push an image artifact to an OCI registry.
    Push(PushArgs),
    /// List cached images.
    Ls,
    /// Remove a cached image (refused while machines use it, unless --force).
    Rm(ImageRmArgs),
    /// Re-hash a cached image against its manifest.
    Verify(IdArg),
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Where to write the artifact.
    #[arg(short, long)]
    pub output: PathBuf,
    #[arg(long, default_value = std::env::consts::ARCH)]
    pub arch: String,
    /// Debian mirror (default: CARBON_VM_DEBIAN_MIRROR, else deb.debian.org).
    #[arg(long)]
    pub mirror: Option<String>,
    /// zstd compression level of the artifact.
    #[arg(long, default_value_t = 6)]
    pub zstd_level: i32,
    /// Sign the manifest with this minisign secret key (an encrypted key's password:
    /// CARBON_VM_SIGN_PASSWORD).
    #[arg(long, value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
    /// The Venus bundle that GPU machines hand to containers (`scripts/venus-bundle path`
    /// prints one): its ARCH/ tree goes to /usr/lib/carbon-vm/venus in the guest.
    #[arg(long, value_name = "DIR")]
    pub venus_bundle: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PackArgs {
    pub rootfs: PathBuf,
    #[arg(short, long)]
    pub output: PathBuf,
    #[arg(long, default_value = std::env::consts::ARCH)]
    pub arch: String,
    /// The image's name in its manifest.
    #[arg(long, default_value = "custom-guest")]
    pub name: String,
    #[arg(long, default_value_t = 6)]
    pub zstd_level: i32,
    /// Sign the manifest with this minisign secret key (see `image build --sign-key`).
    #[arg(long, value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
    /// Mesa's version, for a root with neither a dpkg nor an rpm database (read from it otherwise).
    #[arg(long)]
    pub mesa_version: Option<String>,
    /// systemd-boot's EFI binary (systemd-bootx64.efi/-aa64.efi), for a root that has none.
    #[arg(long, value_name = "FILE")]
    pub bootloader: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct SignArgs {
    /// The image artifact (`image build`/`image pack` output).
    pub file: PathBuf,
    /// The minisign secret key (an encrypted key's password: CARBON_VM_SIGN_PASSWORD).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Where to write the signed artifact (default: FILE itself, replaced atomically).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct PullArgs {
    pub source: String,
    /// The artifact's sha256 (printed by `image build`/`image pack`); required unless the source
    /// is an OCI digest reference or the image is signed by a trusted key.
    #[arg(long)]
    pub sha256: Option<String>,
    /// The architecture to take from a multi-arch OCI index (default: this host's).
    #[arg(long, default_value = std::env::consts::ARCH)]
    pub arch: String,
}

#[derive(Args, Debug)]
pub struct PushArgs {
    /// Image artifacts: one is pushed as its manifest; several (one per architecture) as an OCI
    /// image index of their manifests under one tag.
    #[arg(required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// oci://REGISTRY/REPO[:TAG]
    pub destination: String,
}

#[derive(Args, Debug)]
pub struct IdArg {
    /// Image ID (its sha256, or a unique prefix of at least 4 digits).
    pub id: String,
}

#[derive(Args, Debug)]
pub struct ImageRmArgs {
    /// Image ID (its sha256, or a unique prefix of at least 4 digits).
    pub id: String,
    /// Remove it even though machines use it (they cannot start again).
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct NameArg {
    pub name: String,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    pub name: String,
    /// Give the machine a virtio-gpu Venus device.
    #[arg(long)]
    pub gpu: bool,
    /// Give its containers the ggml device carbon-vm.dev/ggml=all: ggml's RPC server on the
    /// host's own backend (CARBON_VM_GGML_SERVER, else ggml-rpc-server), for llama.cpp and
    /// other ggml tools.
    #[arg(long)]
    pub ggml: bool,
    #[arg(long, default_value_t = 2)]
    pub cpus: u8,
    /// Memory in MiB.
    #[arg(long, default_value_t = 4096)]
    pub memory: u32,
    /// Disk size in GiB (sparse: the host's space is used only as the guest writes).
    #[arg(long, default_value_t = 100)]
    pub disk_size: u32,
    /// A cached image's ID, or a name in the image catalog (default: the catalog's default).
    #[arg(long)]
    pub image: Option<String>,
    /// qemu, krunkit or libkrun (default: krunkit on macOS, qemu on Linux).
    #[arg(long)]
    pub driver: Option<machine::DriverKind>,
    /// Make this machine Podman's default connection.
    #[arg(long)]
    pub default: bool,
    /// Also list it among Podman's machines, as a libkrun machine (macOS; needs --driver
    /// krunkit and podman 5.2 to 6.1).
    #[arg(long)]
    pub podman_machine: bool,
    /// Share a host folder with the guest, at GUEST (default: the same path); repeatable.
    /// Without it the home directory is shared at its own path.
    #[arg(short, long = "volume", value_name = "HOST[:GUEST]")]
    pub volumes: Vec<String>,
    /// Share no host folder (not even the home directory).
    #[arg(long, conflicts_with = "volumes")]
    pub no_volumes: bool,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("change").required(true).multiple(true)))]
pub struct SetArgs {
    pub name: String,
    #[arg(long, group = "change")]
    pub cpus: Option<u8>,
    /// Memory in MiB.
    #[arg(long, group = "change")]
    pub memory: Option<u32>,
    /// Disk size in GiB, at least the current size; the guest grows its filesystem on next boot.
    #[arg(long, group = "change")]
    pub disk_size: Option<u32>,
}

#[derive(Args, Debug)]
pub struct StopArgs {
    pub name: String,
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    pub name: String,
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct SshArgs {
    pub name: String,
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum GpuCommand {
    /// Prove Venus works in the machine and in a container, or say which link is missing.
    Check(GpuCheckArgs),
}

#[derive(Args, Debug)]
pub struct GpuCheckArgs {
    pub name: String,
    /// Check your own image (one the machine has), given the CDI device carbon-vm.dev/gpu=all
    /// as you would run it, and name what of the image keeps Venus from working. Without it: the
    /// image the guest bundles for this, with the default /dev/dri.
    #[arg(long)]
    pub image: Option<String>,
    /// Also run a real application: `llama` decodes with llama.cpp on the Venus device and on
    /// the CPU in a container, and compares; `llama-rpc` does so through the ggml device
    /// (image: `scripts/llama-root image NAME`).
    #[arg(long, value_enum)]
    pub workload: Option<Workload>,
    /// The workload's image.
    #[arg(
        long,
        default_value = "localhost/carbon-llama:latest",
        requires = "workload"
    )]
    pub workload_image: String,
    /// Also fail unless every GPU blob the guest created since it started is a multiple of
    /// 16 KiB, as a Mac host's Hypervisor.framework maps them (QEMU machines: QEMU traces them;
    /// on krunkit the Mac enforces it, so a passing check passes it).
    #[arg(long)]
    pub mac_pages: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum Workload {
    Llama,
    /// llama.cpp through the ggml device (`create --ggml`): every layer on the host's ggml
    /// server, compared with the container's CPU.
    LlamaRpc,
}
