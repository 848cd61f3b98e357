//! Whether QEMU can run guests with KVM on this host. A `/dev/kvm` that opens is no proof: nested
//! or sandboxed KVMs can refuse what a guest needs (on one development machine `-cpu host`
//! aborted QEMU on an MSR it cannot set), so the probe boots a few instructions of firmware with
//! exactly the accelerator, machine and CPU model a machine gets, and expects the exit code the
//! firmware asks QEMU for. That firmware runs on PVM too, the paravirtual KVM of some cloud
//! sandboxes (module `kvm_pvm`, no VT-x or AMD-V underneath), which runs only guest kernels built
//! for it: an ordinary kernel stops at its first instruction PVM cannot emulate ("KVM internal
//! error", the VM paused for good). So a KVM that is PVM alone is refused before the probe.

use std::io::{self, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The x86 reset vector's offset in a firmware image mapped to end at 4 GiB.
const RESET_VECTOR: usize = 0xfff0;
const FIRMWARE_SIZE: usize = 0x10000;
const EXIT_PORT: u8 = 0xf4;
const EXIT_VALUE: u8 = 0x31;
/// isa-debug-exit makes QEMU exit with `(value << 1) | 1`.
const EXPECTED_STATUS: i32 = ((EXIT_VALUE as i32) << 1) | 1;
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum KvmUnusable {
    #[error("cannot open /dev/kvm: {0}")]
    Device(#[source] io::Error),
    #[error("cannot run the probe: {0}")]
    Probe(#[source] io::Error),
    #[error("QEMU could not run a guest with KVM ({0})")]
    Refused(String),
    #[error("QEMU did not finish the KVM probe within {0:?}")]
    Timeout(Duration),
    #[error("the KVM probe runs on x86_64 hosts only (set CARBON_VM_ACCEL=kvm to use KVM here)")]
    NoProbe,
    #[error("this host's KVM is PVM (kvm_pvm), which runs only guest kernels built for it")]
    Pvm,
}

/// Where the kernel lists its loaded modules.
const SYS_MODULE: &str = "/sys/module";

/// Whether the KVM under `sys_module` is PVM alone (no hardware KVM module beside it).
fn pvm_only(sys_module: &Path) -> bool {
    let loaded = |m: &str| sys_module.join(m).is_dir();
    loaded("kvm_pvm") && !loaded("kvm_intel") && !loaded("kvm_amd")
}

/// Real-mode firmware: `mov al, EXIT_VALUE; out EXIT_PORT, al`, then halt forever.
fn firmware() -> Vec<u8> {
    const HLT: u8 = 0xf4;
    let mut f = vec![HLT; FIRMWARE_SIZE];
    let code = [0xb0, EXIT_VALUE, 0xe6, EXIT_PORT, HLT, 0xeb, 0xfd];
    f[RESET_VECTOR..RESET_VECTOR + code.len()].copy_from_slice(&code);
    f
}

fn probe_args(firmware: &Path) -> Vec<String> {
    [
        "-machine",
        "q35",
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-m",
        "16",
        "-nodefaults",
        "-display",
        "none",
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=1",
        "-bios",
    ]
    .into_iter()
    .map(String::from)
    .chain([firmware.display().to_string()])
    .collect()
}

/// Ok when QEMU runs guest code under KVM here; else why not.
pub fn probe(arch: crate::Arch) -> Result<(), KvmUnusable> {
    if arch != crate::Arch::X86_64 {
        return Err(KvmUnusable::NoProbe);
    }
    if pvm_only(Path::new(SYS_MODULE)) {
        return Err(KvmUnusable::Pvm);
    }
    let qemu = arch.qemu();
    std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(KvmUnusable::Device)?;
    let dir = tempfile::tempdir().map_err(KvmUnusable::Probe)?;
    let fw = dir.path().join("probe.bin");
    std::fs::write(&fw, firmware()).map_err(KvmUnusable::Probe)?;
    let mut child = Command::new(qemu)
        .args(probe_args(&fw))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(KvmUnusable::Probe)?;
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().map_err(KvmUnusable::Probe)? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(KvmUnusable::Timeout(TIMEOUT));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if status.code() == Some(EXPECTED_STATUS) {
        return Ok(());
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let first = err.lines().find(|l| !l.contains("warning:")).unwrap_or("");
    Err(KvmUnusable::Refused(format!("{status}: {}", first.trim())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firmware_asks_for_the_expected_exit_at_the_reset_vector() {
        let f = firmware();
        assert_eq!(
            f.len(),
            FIRMWARE_SIZE,
            "QEMU maps -bios images in 64 KiB units"
        );
        // The reset vector is 16 bytes below the end of the 4 GiB space, i.e. of the image.
        assert_eq!(FIRMWARE_SIZE - RESET_VECTOR, 16);
        assert_eq!(
            &f[RESET_VECTOR..RESET_VECTOR + 4],
            &[0xb0, 0x31, 0xe6, 0xf4]
        );
        assert_eq!(EXPECTED_STATUS, 99);
    }

    #[test]
    fn a_kvm_that_is_pvm_alone_is_refused() {
        let sys = tempfile::tempdir().unwrap();
        let load = |m: &str| std::fs::create_dir(sys.path().join(m)).unwrap();
        assert!(
            !pvm_only(sys.path()),
            "no KVM at all is the probe's to find"
        );
        load("kvm");
        load("kvm_pvm");
        assert!(pvm_only(sys.path()));
        load("kvm_intel");
        assert!(
            !pvm_only(sys.path()),
            "hardware KVM beside PVM runs ordinary guests"
        );
    }

    #[test]
    fn probe_uses_the_accelerator_and_cpu_machines_get() {
        let a = probe_args(Path::new("/t/fw"));
        let pairs: Vec<_> = a
            .windows(2)
            .map(|w| (w[0].as_str(), w[1].as_str()))
            .collect();
        for want in [
            ("-accel", "kvm"),
            ("-cpu", "host"),
            ("-machine", "q35"),
            ("-bios", "/t/fw"),
        ] {
            assert!(pairs.contains(&want), "{want:?} in {a:?}");
        }
    }

    /// The firmware really produces the exit status the probe waits for: run it under TCG,
    /// which works wherever QEMU is installed (skipped loudly where it is not; under CI, which
    /// installs QEMU, its absence fails).
    #[test]
    fn firmware_exits_qemu_with_the_expected_status_under_tcg() {
        let dir = tempfile::tempdir().unwrap();
        let fw = dir.path().join("fw");
        std::fs::write(&fw, firmware()).unwrap();
        let args: Vec<String> = probe_args(&fw)
            .into_iter()
            .map(|a| match a.as_str() {
                "kvm" => "tcg".into(),
                "host" => "max".into(),
                _ => a,
            })
            .collect();
        match Command::new("qemu-system-x86_64")
            .args(&args)
            .stderr(Stdio::null())
            .status()
        {
            Ok(s) => assert_eq!(s.code(), Some(EXPECTED_STATUS)),
            // The suite's rule (docs/ci.md): a missing subject fails unless skips were asked
            // for, outside CI.
            Err(e)
                if std::env::var_os("CI").is_none()
                    && std::env::var_os("CARBON_VM_ALLOW_SKIP").is_some() =>
            {
                eprintln!("SKIP: qemu-system-x86_64 cannot run here ({e})")
            }
            Err(e) => panic!(
                "qemu-system-x86_64 cannot run here ({e}): scripts/install-deps installs it; \
                 CARBON_VM_ALLOW_SKIP=1 skips instead, outside CI"
            ),
        }
    }
}
