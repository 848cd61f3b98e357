//! QEMU's process lifecycle: `-daemonize` (QEMU returns once the VM runs), state from the
//! pidfile checked against the command line, QMP `system_powerdown` for a graceful stop.

use super::virtiofs;
use super::{Accel, AccelChoice, Arch, Gpu, QemuConfig, command_line, environment, marker};
use crate::process::{self, Signal};
use crate::{Capabilities, Driver, DriverKind, Error, Limits, Vm};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

const KILL_TIMEOUT: Duration = Duration::from_secs(10);
/// What QEMU prints when KVM cannot go on running the guest.
const KVM_FAILED: &str = "KVM internal error";
/// QMP's run state of a VM QEMU paused on a write error (the drive's `werror=enospc`: the host's
/// filesystem is full).
const IO_ERROR: &str = "io-error";
/// How long a command QEMU is asked over QMP may take.
const QMP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the run state may take: it is asked often (every state, every check during a start).
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Qemu {
    pub arch: Arch,
    choice: AccelChoice,
    /// The accelerator and the Venus device, each probed at most once per invocation.
    accel: OnceLock<Accel>,
    gpu: OnceLock<Gpu>,
}

/// The host's virtiofsd, or what to install.
fn virtiofsd() -> Result<std::path::PathBuf, Error> {
    virtiofs::find().ok_or_else(|| {
        Error::Missing(
            "virtiofsd".into(),
            virtiofs::INSTALL_HINT,
            std::io::ErrorKind::NotFound.into(),
        )
    })
}

impl Qemu {
    pub fn new(arch: Arch, choice: AccelChoice) -> Qemu {
        Qemu {
            arch,
            choice,
            accel: OnceLock::new(),
            gpu: OnceLock::new(),
        }
    }

    fn accel(&self) -> Accel {
        *self.accel.get_or_init(|| match self.choice {
            AccelChoice::Use(a) => a,
            AccelChoice::Auto if self.arch != Arch::host() => Accel::Tcg,
            AccelChoice::Auto => match crate::kvm::probe(self.arch) {
                Ok(()) => Accel::Kvm,
                Err(e) => {
                    tracing::info!(reason = %e, "KVM is not usable: TCG");
                    Accel::Tcg
                }
            },
        })
    }

    fn pid(&self, vm: &Vm) -> Option<i32> {
        process::live_pid(&vm.pidfile, &marker(&vm.disk))
    }

    /// The Venus device for a `--gpu` machine, from what this host's QEMU and display can do.
    fn probe_gpu(&self) -> Result<Gpu, Error> {
        use venus::probe;
        let qemu = probe::qemu(self.arch.qemu())?;
        probe::render_server()?;
        let display = probe::choose_display(&qemu, &probe::render_nodes("/dev/dri".as_ref()))?;
        Ok(Gpu {
            hostmem_bytes: venus::window::qemu_hostmem_bytes(crate::platform::host_ram_bytes()),
            display,
        })
    }

    fn config(&self, vm: &Vm, gpu: Option<Gpu>) -> QemuConfig {
        QemuConfig {
            name: vm.name.clone(),
            arch: self.arch,
            cpus: vm.cpus,
            memory_mib: vm.memory_mib,
            accel: self.accel(),
            kernel: vm.kernel.clone(),
            initrd: vm.initrd.clone(),
            cmdline: vm.cmdline.clone(),
            disk: vm.disk.clone(),
            net_socket: vm.net_socket.clone(),
            mac: crate::gvproxy::GUEST_MAC.into(),
            qmp_socket: vm.control_socket.clone(),
            ready_socket: vm.ready_socket.clone(),
            console_log: vm.console_log.clone(),
            log: vm.vmm_log.clone(),
            pidfile: vm.pidfile.clone(),
            oem_strings: vm.oem_strings.clone(),
            gpu,
            shares: vm.shares.clone(),
        }
    }

    /// QEMU itself; `-daemonize` returns once the VM runs.
    fn launch_qemu(&self, cfg: &QemuConfig) -> Result<(), Error> {
        let out = Command::new(self.arch.qemu())
            .args(command_line(cfg))
            .envs(environment(cfg))
            .stdin(Stdio::null())
            .process_group(0) // outlives this command, and a ^C to it
            .output()
            .map_err(|e| {
                Error::Missing(
                    self.arch.qemu().into(),
                    match self.arch {
                        Arch::X86_64 => "apt-get install qemu-system-x86",
                        Arch::Aarch64 => "apt-get install qemu-system-arm",
                    },
                    e,
                )
            })?;
        if !out.status.success() {
            return Err(Error::Exited(
                "qemu",
                String::from_utf8_lossy(&out.stderr).trim().into(),
            ));
        }
        Ok(())
    }
}

/// The host's own architecture first: KVM may run it; the other runs under TCG.
const ARCHES: &[Arch] = match Arch::host() {
    Arch::X86_64 => &[Arch::X86_64, Arch::Aarch64],
    Arch::Aarch64 => &[Arch::Aarch64, Arch::X86_64],
};

impl Driver for Qemu {
    fn kind(&self) -> DriverKind {
        DriverKind::Qemu
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            arches: ARCHES,
            always_gpu: false,
            maps_16k_pages: false,
            traces_blobs: true,
            podman_machine: false,
        }
    }

    /// QEMU itself is looked for when a machine starts (its architecture's emulator).
    fn available(&self) -> Result<(), Error> {
        Ok(())
    }

    fn accelerator(&self) -> &'static str {
        match self.accel() {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    fn limits(&self, _gpu: bool) -> Limits {
        Limits {
            shares: virtiofs::usable(),
            ..Limits::host()
        }
    }

    fn check_host(&self, vm: &Vm) -> Result<(), Error> {
        if vm.gpu && self.gpu.get().is_none() {
            let gpu = self.probe_gpu()?;
            let _ = self.gpu.set(gpu);
        }
        if !vm.shares.is_empty() {
            virtiofsd()?;
        }
        Ok(())
    }

    fn network(&self, vm: &Vm) -> crate::gvproxy::Listen {
        crate::gvproxy::Listen::Qemu(vm.net_socket.clone())
    }

    fn launch(&self, vm: &Vm) -> Result<(), Error> {
        self.check_host(vm)?;
        let cfg = self.config(vm, self.gpu.get().cloned());
        let mut daemons = match vm.shares.is_empty() {
            true => vec![],
            false => virtiofs::spawn(&virtiofsd()?, &vm.shares, &vm.vmm_log)?,
        };
        let launched = self.launch_qemu(&cfg);
        if let Err(e) = &launched {
            // A virtiofsd QEMU could not talk to is to blame (QEMU names its socket); one that
            // exited because a failing QEMU let go of it is not.
            let message = format!("{e:?}");
            let blamed = vm
                .shares
                .iter()
                .any(|s| message.contains(&*s.socket.to_string_lossy()));
            let died = virtiofs::any_exited(&mut daemons);
            virtiofs::kill(daemons);
            if died && blamed {
                let log = std::fs::read(&vm.vmm_log).unwrap_or_default();
                let tail = String::from_utf8_lossy(&log[log.len().saturating_sub(2000)..]);
                return Err(Error::Exited("virtiofsd", tail.trim().into()));
            }
        }
        launched
    }

    /// A QEMU that runs a guest KVM gave up on (it pauses the VM and says so on stderr), or one
    /// that paused it when a write to its disk found the host's filesystem full (QMP's
    /// `io-error`), is a VM that will not answer: an error, not "running".
    fn running(&self, vm: &Vm) -> Result<bool, Error> {
        if self.pid(vm).is_none() {
            return Ok(false);
        }
        let log = std::fs::read(&vm.vmm_log).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        if let Some(line) = log.lines().find(|l| l.starts_with(KVM_FAILED)) {
            return Err(Error::KvmFailed(line.trim().into()));
        }
        // A QMP that does not answer (still starting, or busy with another client) says nothing
        // either way: the VM counts as running.
        let status = crate::qmp::Qmp::connect(&vm.control_socket, STATUS_TIMEOUT)
            .and_then(|mut q| q.status());
        match status {
            Ok(s) if s == IO_ERROR => Err(Error::DiskFull(vm.disk.clone())),
            _ => Ok(true),
        }
    }

    fn shut_down(&self, vm: &Vm, within: Duration) -> Result<bool, Error> {
        let Some(pid) = self.pid(vm) else {
            return Ok(true);
        };
        let deadline = std::time::Instant::now() + within;
        loop {
            crate::qmp::Qmp::connect(&vm.control_socket, QMP_TIMEOUT)
                .and_then(|mut q| q.execute("system_powerdown"))
                .map_err(|e| Error::vmm("QMP", e))?;
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if process::wait_exit(pid, left.min(crate::PRESS_AGAIN)) {
                return Ok(true);
            }
            if left <= crate::PRESS_AGAIN {
                return Ok(false);
            }
        }
    }

    fn kill(&self, vm: &Vm) -> Result<(), Error> {
        let Some(pid) = self.pid(vm) else {
            return Ok(());
        };
        process::signal(pid, Signal::KILL);
        if process::wait_exit(pid, KILL_TIMEOUT) {
            Ok(())
        } else {
            Err(Error::Unkillable(pid))
        }
    }

    fn clean_stale(&self, vm: &Vm) {
        if self.pid(vm).is_none() {
            let _ = std::fs::remove_file(&vm.pidfile);
            let _ = std::fs::remove_file(&vm.control_socket);
            virtiofs::kill_stale(&vm.shares);
        }
    }
}
