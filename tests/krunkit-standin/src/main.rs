//! A STAND-IN for krunkit, for tests on Linux, where krunkit (macOS, Hypervisor.framework)
//! cannot run: krunkit's command line and REST API in front, the machine krunkit would give the
//! guest behind them, run by QEMU (vm.rs says how, and where it must differ).
//!
//! It follows krunkit's documented contract (docs/usage.md and the argument parsing and REST
//! server in src/ of github.com/libkrun/krunkit, 1.3.x):
//! - the command line: the same options, the same `--device` kinds and arguments, the same
//!   `key=value,...` parsing; as in krunkit, clap refuses unknown options and values its parsers
//!   reject (unknown device kinds, duplicate, missing and unknown device arguments, bad URIs)
//!   with exit status 2 and krunkit's message; then the VM set-up refuses more than 61440 MiB,
//!   no virtio-blk, repeated vsock ports and unusable files with `Error: ...` and status 1;
//! - `--pidfile`, written at start and never removed;
//! - the REST API on `--restful-uri` (`unix://`, `tcp://`, or `none://`, the default): `GET
//!   /vm/state` answers `{"state":"VirtualMachineStateRunning","canStart":false,...}`;
//!   `POST /vm/state` with `{"state":"Stop"}` answers `VirtualMachineStateStopping`, reports
//!   Stopping while the guest powers off, and exits with the VM; `{"state":"HardStop"}` ends
//!   the VM at once;
//! - virtio-vsock `listen` mode (the default): the guest connects out and krunkit connects to
//!   the host's unix socket, so the host must listen there; `connect` mode: krunkit creates a
//!   listening unix socket (refusing an existing file) and passes each connection to the guest's
//!   port; it never removes either;
//! - virtio-net `unixSocketPath`: a datagram socket bound next to gvproxy's, the vfkit magic
//!   sent first, then one frame per datagram;
//! - virtio-serial: the guest's console (hvc0), written to the log file; virtio-fs, virtio-rng,
//!   `--oem-string` (SMBIOS type 11), and the Venus GPU krunkit always adds;
//! - the Mac's 16 KiB pages: a GPU blob a Mac could not map ends the VM (vm.rs).
//!
//! What it does not emulate: the pre-1.3 REST protocol, `--timesync` (accepted), `--log-file`
//! levels, virtio-net over an fd or a stream socket.
//!
//! It needs what the VM runs on: QEMU >= 9.2 with virglrenderer (Venus), EDK2 for aarch64
//! (`qemu-efi-aarch64`), vhost-device-vsock, virtiofsd: scripts/gpu-root has them.
//!
//! `KRUNKIT_STANDIN_CHECK=1` stops after krunkit's own checks of the command line and prints
//! what it accepted (JSON), for tests of command lines other programs build (Podman's).

mod devices;
mod rest;
#[cfg(target_os = "linux")]
mod vm;
#[cfg(not(target_os = "linux"))]
#[path = "vm_elsewhere.rs"]
mod vm;
#[cfg(target_os = "linux")]
mod vsock;

use clap::Parser;
use devices::Device;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;

/// krunkit refuses more guest memory than this (MiB).
const MAX_MEMORY_MIB: u32 = 61440;

/// krunkit's options (src/cmdline.rs).
#[derive(Parser)]
#[command(name = "krunkit", version = "1.3.0")]
struct Args {
    #[arg(long, short)]
    cpus: u8,
    #[arg(long, short, value_parser = parse_memory)]
    memory: u32,
    /// Accepted for vfkit parity and ignored.
    #[arg(long)]
    bootloader: Option<devices::Bootloader>,
    #[arg(long = "device")]
    devices: Vec<Device>,
    #[arg(long = "restful-uri")]
    restful_uri: Option<rest::Uri>,
    #[arg(long, default_value_t = false)]
    gui: bool,
    #[arg(long = "oem-string")]
    oem_strings: Vec<String>,
    #[arg(long = "krun-log-level")]
    krun_log_level: Option<u32>,
    #[arg(long, short)]
    nested: bool,
    #[arg(long)]
    pidfile: Option<PathBuf>,
    #[arg(long = "log-file")]
    log_file: Option<PathBuf>,
    #[arg(long, short)]
    firmware_path: Option<PathBuf>,
    #[arg(long, value_parser = parse_timesync)]
    timesync: Option<u32>,
}

fn parse_memory(s: &str) -> Result<u32, String> {
    let (num, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c.to_ascii_uppercase()),
        _ => (s, 'M'),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid memory value: '{s}'"))?;
    let shift = match unit {
        'M' => 0,
        'G' => 10,
        'T' => 20,
        'P' => 30,
        _ => {
            return Err(format!(
                "unknown memory suffix '{unit}', valid suffixes are MGTP"
            ));
        }
    };
    n.checked_mul(1 << shift)
        .and_then(|m| u32::try_from(m).ok())
        .ok_or_else(|| format!("memory value '{s}' is too large"))
}

fn parse_timesync(s: &str) -> Result<u32, String> {
    s.strip_prefix("vsockPort=")
        .ok_or("expected 'vsockPort=<port>'")?
        .parse()
        .map_err(|e| format!("invalid timesync port: {e}"))
}

/// What the stand-in's main loop hears.
pub enum Event {
    /// REST `Stop`: the guest is asked to power off.
    Stop,
    /// REST `HardStop`.
    HardStop,
    /// The VM's process exited (the guest powered off, or it failed).
    Exited(std::process::ExitStatus),
    /// A GPU blob whose size a Mac could not map.
    Unmappable(u64),
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    if args.memory > MAX_MEMORY_MIB {
        return Err(format!(
            "memory {} MiB exceeds the maximum of {MAX_MEMORY_MIB} MiB",
            args.memory
        ));
    }
    devices::check_set(&args.devices)?;
    if std::env::var_os("KRUNKIT_STANDIN_CHECK").is_some() {
        let accepted = serde_json::json!({
            "devices": args.devices.iter().map(Device::describe).collect::<Vec<_>>(),
            "restful_uri": args.restful_uri.as_ref().map(rest::Uri::describe),
            "timesync_port": args.timesync,
            "nested": args.nested,
        });
        println!("{accepted}");
        return Ok(());
    }
    let rest = args.restful_uri.unwrap_or(rest::Uri::None);
    // What libkrun does while configuring the VM: open the disks, attach the network, create
    // the connect-mode vsock listeners, open the console.
    let attached = devices::attach(args.devices)?;
    let (tx, rx) = mpsc::channel();
    let vm = vm::boot(
        attached,
        &args.oem_strings,
        args.cpus,
        args.memory,
        tx.clone(),
    )?;
    if let Some(p) = &args.pidfile {
        std::fs::write(p, std::process::id().to_string())
            .map_err(|e| format!("unable to write pidfile {}: {e}", p.display()))?;
    }
    // `tx` lives as long as main: without a REST API only the VM's end (or a signal) ends it.
    rest::serve(rest, tx.clone())?;
    let mut pressed = false;
    loop {
        match rx.recv() {
            Ok(Event::Exited(status)) if !status.success() => {
                return Err(format!(
                    "the VM ended: QEMU {status} (its messages are above)"
                ));
            }
            Ok(Event::Exited(_)) | Err(_) => return Ok(()),
            Ok(Event::HardStop) => {
                vm.kill();
                return Ok(());
            }
            Ok(Event::Stop) if !pressed => {
                pressed = true;
                vm.power_button()?;
            }
            Ok(Event::Stop) => {}
            Ok(Event::Unmappable(size)) => {
                vm.kill();
                // What libkrun logs when hv_vm_map refuses a mapping (krunkit#114).
                return Err(format!(
                    "map_memory: err -85377021: a GPU blob of {size} bytes is not a multiple of \
                     the host's {} byte pages (hv_vm_map refuses it on a Mac)",
                    vm::MAC_PAGE
                ));
            }
        }
    }
}
