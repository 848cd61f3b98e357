//! A STAND-IN for krunkit, for tests on Linux, where krunkit (macOS, Hypervisor.framework)
//! cannot run. It is not a VMM: no guest runs.
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
//!   Stopping while the "guest" powers off, then exits; `{"state":"HardStop"}` exits at once;
//! - virtio-vsock `listen` mode (the default): the "guest" connects out and krunkit connects to
//!   the host's unix socket, so the host must listen there; `connect` mode: krunkit creates a
//!   listening unix socket (refusing an existing file), and never removes either;
//! - virtio-net `unixSocketPath`: one datagram with the vfkit magic to gvproxy's socket;
//! - virtio-serial: the console log file.
//!
//! The simulated guest boots, then sends `Ready ssh-ed25519 <key> krunkit-standin` on each
//! listen-mode vsock device on port 1025, retrying while the host is not listening yet. It
//! writes its boot and, on a graceful `Stop`, its power-off to the virtio-serial console.
//!
//! What it does not emulate: any guest (disk contents are not read, EFI does not run), networking
//! beyond the vfkit magic, virtio-fs, the GPU, the pre-1.3 REST protocol, `--log-file` levels.
//!
//! `KRUNKIT_STANDIN_GUEST=hang` simulates a guest that never reaches Ready and ignores `Stop`
//! (krunkit still exits on `HardStop` and on signals).

mod devices;
mod rest;

use clap::Parser;
use devices::Device;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;

/// krunkit refuses more guest memory than this (MiB).
const MAX_MEMORY_MIB: u32 = 61440;
const READY_PORT: u32 = 1025;
/// How long the simulated guest takes to boot, and to power off after `Stop`.
const BOOT: Duration = Duration::from_millis(300);
const POWER_OFF: Duration = Duration::from_millis(300);

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

/// What ends the VM.
pub enum Shutdown {
    /// The guest was asked to power off.
    Stop,
    HardStop,
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
    let devices = args.devices;
    devices::check_set(&devices)?;
    let rest = args.restful_uri.unwrap_or(rest::Uri::None);
    let hang = std::env::var("KRUNKIT_STANDIN_GUEST").as_deref() == Ok("hang");

    // What libkrun does while configuring the VM: open the disks, attach the network, create
    // the connect-mode vsock listeners, open the console.
    let console = devices::attach(&devices)?;
    // The guest's last words on a graceful stop, after the boot messages.
    let mut power_off_log = console.as_ref().and_then(|c| c.try_clone().ok());
    if let Some(p) = &args.pidfile {
        std::fs::write(p, std::process::id().to_string())
            .map_err(|e| format!("unable to write pidfile {}: {e}", p.display()))?;
    }
    let (tx, rx) = mpsc::channel();
    // `tx` lives as long as main: without a REST API only a signal ends the VM.
    rest::serve(rest, tx.clone())?;
    if !hang {
        let ready: Vec<PathBuf> = devices
            .iter()
            .filter_map(|d| match d {
                Device::Vsock {
                    port: READY_PORT,
                    socket,
                    connect: false,
                } => Some(socket.clone()),
                _ => None,
            })
            .collect();
        std::thread::spawn(move || devices::guest_boots(BOOT, console, &ready));
    }
    loop {
        match rx.recv() {
            Ok(Shutdown::HardStop) | Err(_) => return Ok(()),
            Ok(Shutdown::Stop) if !hang => {
                std::thread::sleep(POWER_OFF);
                if let Some(c) = power_off_log.as_mut() {
                    let _ = writeln!(c, "krunkit-standin: guest powered off");
                }
                return Ok(());
            }
            Ok(Shutdown::Stop) => {} // the guest ignores the power button
        }
    }
}
