//! `carbon-vm doctor`: what this host has and lacks, one line per requirement with a fix.

use crate::home::Home;
use crate::output::Printer;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Serialize)]
struct Check {
    requirement: &'static str,
    needed_for: &'static str,
    ok: bool,
    found: Option<PathBuf>,
    fix: &'static str,
}

#[derive(Serialize)]
struct Report<'a> {
    state: &'a Home,
    checks: Vec<Check>,
}

/// Tools carbon-vm runs: (tool, what needs it, the fix on Debian).
const TOOLS: [(&str, &str, &str); 9] = [
    ("mmdebstrap", "image build", "apt-get install mmdebstrap"),
    (
        "mkfs.ext4",
        "image build / pack",
        "apt-get install e2fsprogs",
    ),
    (
        "mkfs.vfat",
        "image build / pack",
        "apt-get install dosfstools",
    ),
    ("mcopy", "image build / pack", "apt-get install mtools"),
    (
        "qemu-system-x86_64",
        "machines (qemu)",
        "apt-get install qemu-system-x86",
    ),
    (
        "gvproxy",
        "machines (network)",
        "scripts/install-deps (Debian trixie's gvproxy)",
    ),
    ("ssh-keygen", "create", "apt-get install openssh-client"),
    ("ssh", "carbon-vm ssh", "apt-get install openssh-client"),
    ("podman", "the Podman connection", "apt-get install podman"),
];

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

pub fn run(home: &Home, out: Printer) -> anyhow::Result<()> {
    let checks: Vec<Check> = TOOLS
        .iter()
        .map(|&(tool, needed_for, fix)| {
            let found = which(tool);
            Check {
                requirement: tool,
                needed_for,
                ok: found.is_some(),
                found,
                fix,
            }
        })
        .collect();
    let failed = checks.iter().filter(|c| !c.ok).count();
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
            let mark = if c.ok { "ok  " } else { "MISSING" };
            s += &format!("{mark} {:<20} ({})", c.requirement, c.needed_for);
            if !c.ok {
                s += &format!("  fix: {}", c.fix);
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

#[derive(Debug, thiserror::Error)]
#[error("{0} requirement(s) missing")]
pub struct HostNotReady(pub usize);
