//! `carbon-vm doctor`: what this host has and lacks, one line per requirement with a fix.

use crate::home::Home;
use crate::output::Printer;
use machine::exit_class::{Class, Classify, Code};
use machine::host::which;
use serde::Serialize;
use std::path::Path;

#[derive(Serialize)]
struct Check {
    requirement: &'static str,
    needed_for: &'static str,
    ok: bool,
    /// Not met only costs speed: it is reported, and doctor still succeeds.
    optional: bool,
    /// What was found (a path, a version, devices), or why the requirement is not met.
    found: Option<String>,
    fix: &'static str,
}

#[derive(Serialize)]
struct Report<'a> {
    state: &'a Home,
    checks: Vec<Check>,
}

/// Tools carbon-vm runs: (tool, what needs it, the fix on Debian).
const TOOLS: [(&str, &str, &str); 10] = [
    ("mmdebstrap", "image build", "apt-get install mmdebstrap"),
    ("mkfs.ext4", IMAGE_BUILD, "apt-get install e2fsprogs"),
    ("mkfs.vfat", IMAGE_BUILD, "apt-get install dosfstools"),
    ("mcopy", IMAGE_BUILD, "apt-get install mtools"),
    (
        machine::host::Arch::host().qemu(),
        "machines (qemu)",
        "apt-get install qemu-system-x86 (on aarch64: qemu-system-arm)",
    ),
    (
        "gvproxy",
        "machines (network)",
        "scripts/install-deps (Debian trixie's gvproxy)",
    ),
    ("ssh-keygen", "create", "apt-get install openssh-client"),
    ("ssh", "carbon-vm ssh", "apt-get install openssh-client"),
    ("podman", "the Podman connection", "apt-get install podman"),
    ("docker", "the docker context", "apt-get install docker-cli"),
];

pub fn run(home: &Home, out: Printer) -> anyhow::Result<()> {
    // Each host is checked for its own driver: QEMU (and its GPU stack) on Linux, krunkit on macOS.
    let mac = cfg!(target_os = "macos");
    let mut checks: Vec<Check> = TOOLS
        .iter()
        .filter(|(tool, ..)| !mac || !tool.starts_with("qemu-"))
        .map(|&(tool, needed_for, fix)| {
            // gvproxy is whichever CARBON_VM_GVPROXY names.
            let found = match tool {
                "gvproxy" => which(crate::settings::gvproxy()),
                _ => which(tool),
            };
            Check {
                requirement: tool,
                needed_for,
                ok: found.is_some(),
                // A Mac pulls images; building them is for Linux hosts. The docker CLI is the
                // user's choice: without it there is no context to register.
                optional: (mac && needed_for.starts_with("image build")) || tool == "docker",
                found: found.map(|p| p.display().to_string()),
                fix,
            }
        })
        .collect();
    checks.push(ggml_check());
    if mac {
        checks.push(krunkit_check());
    } else {
        checks.push(kvm_check());
        checks.extend(folder_checks());
        checks.extend(gpu_checks());
    }
    let failed = checks.iter().filter(|c| !c.ok && !c.optional).count();
    let report = Report {
        state: home,
        checks,
    };
    out.record(&report, || {
        let mut s = format!(
            "state: config {}\n       images {}\n       machines {}\n       runtime {}\n",
            home.config.display(),
            home.images.display(),
            home.machines.display(),
            home.runtime.display()
        );
        for c in &report.checks {
            let mark = match (c.ok, c.optional) {
                (true, _) => "ok  ",
                (false, true) => "note",
                (false, false) => "MISSING",
            };
            s += &format!("{mark} {:<20} ({})", c.requirement, c.needed_for);
            match (&c.found, c.ok) {
                (Some(f), true) if c.needed_for == GPU || c.optional => s += &format!(": {f}"),
                (Some(f), false) => s += &format!(": {f}\n        fix: {}", c.fix),
                (None, false) => s += &format!("  fix: {}", c.fix),
                _ => {}
            }
            s += "\n";
        }
        s.trim_end().to_owned()
    });
    if failed > 0 {
        anyhow::bail!(HostNotReady(failed));
    }
    Ok(())
}

const GPU: &str = "--gpu (qemu)";
const IMAGE_BUILD: &str = "image build / pack";

/// krunkit, the macOS VMM (Venus always on): its version decides the REST protocol.
fn krunkit_check() -> Check {
    use machine::host::{JSON_REST, KRUNKIT_INSTALL_HINT as INSTALL_HINT, krunkit};
    let found = krunkit(&crate::settings::krunkit());
    Check {
        requirement: "krunkit",
        needed_for: "machines (krunkit), --gpu",
        ok: found.is_ok(),
        optional: false,
        found: Some(match found {
            Ok(v) if v < JSON_REST => format!("krunkit {v} (older REST protocol; supported)"),
            Ok(v) => format!("krunkit {v}"),
            Err(e) => match std::error::Error::source(&e) {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            },
        }),
        fix: INSTALL_HINT,
    }
}

/// The ggml device's server: needed only by machines created with --ggml.
fn ggml_check() -> Check {
    let server = crate::settings::ggml_server();
    let found = match &server {
        Ok(line) if line.is_empty() => None,
        Ok(line) => Some(shlex::try_join(line.iter().map(String::as_str)).unwrap_or_default()),
        Err(e) => Some(e.to_string()),
    };
    Check {
        requirement: "ggml-rpc-server",
        needed_for: "--ggml",
        ok: server.is_ok_and(|l| !l.is_empty()),
        optional: true,
        found,
        fix: "apt-get install llama.cpp-tools-extra (Debian sid), or name a server in CARBON_VM_GGML_SERVER (docs/gpu.md)",
    }
}

/// KVM is a matter of speed: without it machines run under TCG.
fn kvm_check() -> Check {
    let probe = machine::host::kvm::probe(machine::host::Arch::host());
    Check {
        requirement: "kvm",
        needed_for: "machines (qemu) at native speed",
        ok: probe.is_ok(),
        optional: true,
        found: Some(match probe {
            Ok(()) => "QEMU runs guests with KVM".into(),
            Err(e) => format!("{e}; machines run under TCG (slower)"),
        }),
        fix: "enable hardware virtualization (in a VM: nested virtualization) and give yourself read/write access to /dev/kvm (the kvm group)",
    }
}

/// Host folders under QEMU: a virtiofsd 1.x, and the walls carbon-vm puts around it (tried).
fn folder_checks() -> [Check; 2] {
    let virtiofsd = machine::host::virtiofsd();
    let walls = machine::host::shared_folder_walls();
    [
        Check {
            requirement: "virtiofsd",
            needed_for: FOLDERS,
            ok: virtiofsd.is_some(),
            optional: false,
            found: virtiofsd.map(|p| p.display().to_string()),
            fix: machine::host::VIRTIOFSD_INSTALL_HINT,
        },
        Check {
            requirement: "folder walls",
            needed_for: FOLDERS,
            ok: walls.is_ok(),
            optional: false,
            found: Some(match walls {
                Ok(()) => "namespaces and seccomp filter for virtiofsd".into(),
                Err(e) => format!("cannot wall virtiofsd in: {e}"),
            }),
            fix: "allow unprivileged user namespaces (sysctl user.max_user_namespaces > 0; \
                  Debian's kernel.unprivileged_userns_clone=1; Ubuntu's AppArmor \
                  kernel.apparmor_restrict_unprivileged_userns=0), or share no folders \
                  (create --no-volumes)",
        },
    ]
}

const FOLDERS: &str = "host folders (qemu)";

/// Venus under QEMU: each link asked of the real component (venus::probe).
fn gpu_checks() -> Vec<Check> {
    use machine::host::gpu_probe as probe;
    let check = |requirement, result: Result<String, probe::ProbeError>, fix| Check {
        requirement,
        needed_for: GPU,
        ok: result.is_ok(),
        optional: false,
        found: Some(result.unwrap_or_else(|e| e.to_string())),
        fix,
    };
    let qemu = probe::qemu(machine::host::Arch::host().qemu());
    let display = match &qemu {
        Ok(q) => probe::choose_display(q, &probe::render_nodes(Path::new("/dev/dri"))),
        Err(_) => Err(probe::ProbeError::NoDisplay),
    };
    vec![
        check(
            "qemu venus device",
            qemu.map(|q| format!("QEMU {} (virtio-gpu-gl-pci venus=on)", q.version)),
            "QEMU >= 9.2 with its OpenGL module: Debian trixie `apt-get install qemu-system-x86 qemu-system-modules-opengl qemu-system-gui`, Fedora `dnf install qemu-system-x86 qemu-device-display-virtio-gpu-gl qemu-ui-sdl`; on Debian bookworm run carbon-vm inside `scripts/gpu-root run`",
        ),
        check(
            "gl display",
            display.map(|d| match d {
                probe::Display::EglHeadless { render_node } => {
                    format!("egl-headless on {}", render_node.display())
                }
                probe::Display::SdlOffscreen => "sdl, offscreen (no render node)".into(),
            }),
            "a DRM render node (/dev/dri/renderD*) for egl-headless, or QEMU's SDL module (Debian qemu-system-gui, Fedora qemu-ui-sdl)",
        ),
        check(
            "virgl render server",
            probe::render_server().map(|p| p.display().to_string()),
            "Debian trixie `apt-get install virgl-server`, Fedora `dnf install virglrenderer`",
        ),
        check(
            "host vulkan device",
            probe::host_vulkan().map(|d| {
                d.iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }),
            "the GPU's Mesa Vulkan driver and vulkaninfo: Debian `apt-get install mesa-vulkan-drivers vulkan-tools`, Fedora `dnf install mesa-vulkan-drivers vulkan-tools`",
        ),
    ]
}

#[derive(Debug, thiserror::Error)]
#[error("{0} requirement(s) missing")]
pub struct HostNotReady(pub usize);

impl Classify for HostNotReady {
    fn class(&self) -> Option<Class> {
        Some(Code::Host.bare())
    }
}
