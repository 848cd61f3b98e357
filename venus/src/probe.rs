//! Host probes: can this host serve Venus to a QEMU guest? Each probe asks the real component
//! (QEMU's own device and display lists, the render server's binary, the Vulkan loader through
//! vulkaninfo) rather than guessing from package names.

use crate::vulkaninfo::{self, Device};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const QEMU: &str = "qemu-system-x86_64";

/// Where distributions install virglrenderer's render server (QEMU starts it itself; with
/// virglrenderer >= 1.0 Venus is served only through it).
pub const RENDER_SERVERS: [&str; 2] = [
    "/usr/libexec/virgl_render_server",
    "/usr/lib/virglrenderer/virgl_render_server",
];

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot run {0}")]
    Run(String, #[source] std::io::Error),
    #[error("QEMU has no virtio-gpu-gl device (its OpenGL module is missing): {0}")]
    NoGlDevice(String),
    #[error(
        "QEMU {0}'s virtio-gpu-gl device has no venus property (needs QEMU >= 9.2 built with virglrenderer >= 1.0)"
    )]
    NoVenus(String),
    #[error(
        "QEMU offers no GL display: egl-headless needs a DRM render node (/dev/dri/renderD*), sdl needs QEMU's SDL module"
    )]
    NoDisplay,
    #[error("virglrenderer's render server is not installed (looked for {})", RENDER_SERVERS.join(", "))]
    NoRenderServer,
    #[error("the host has no Vulkan device (vulkaninfo lists none)")]
    NoVulkan,
}

/// The GL display QEMU's virtio-gpu-gl renders through (it refuses `-display none`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Display {
    /// EGL on a DRM render node: a real GPU's (or a virtual one's) node.
    EglHeadless { render_node: PathBuf },
    /// SDL with its offscreen video driver: needs no X server and no render node.
    SdlOffscreen,
}

/// What QEMU offers for Venus.
#[derive(Debug, Clone, Serialize)]
pub struct QemuGpu {
    pub version: String,
    /// `-display` back-ends this QEMU knows.
    pub displays: Vec<String>,
}

fn output(program: &str, args: &[&str]) -> Result<String, ProbeError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| ProbeError::Run(program.to_owned(), e))?;
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s += &String::from_utf8_lossy(&out.stderr);
    Ok(s)
}

/// `QEMU emulator version 10.0.13 (Debian ...)` -> `10.0.13`.
pub fn parse_qemu_version(text: &str) -> Option<String> {
    let rest = text.lines().next()?.split("version ").nth(1)?;
    Some(rest.split_whitespace().next()?.to_owned())
}

/// The back-end names of `-display help` (the lines after the heading, up to a blank line).
pub fn parse_displays(text: &str) -> Vec<String> {
    text.lines()
        .skip_while(|l| !l.starts_with("Available display backend types"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_owned())
        .collect()
}

/// Asks QEMU whether its virtio-gpu-gl device speaks Venus, and which displays it has.
pub fn qemu(program: &str) -> Result<QemuGpu, ProbeError> {
    let version = parse_qemu_version(&output(program, &["--version"])?)
        .unwrap_or_else(|| "(unknown version)".into());
    let props = output(program, &["-device", "virtio-gpu-gl-pci,help"])?;
    if !props.contains("blob=") {
        return Err(ProbeError::NoGlDevice(props.trim().to_owned()));
    }
    if !props.contains("venus=") {
        return Err(ProbeError::NoVenus(version));
    }
    let displays = parse_displays(&output(program, &["-display", "help"])?);
    Ok(QemuGpu { version, displays })
}

/// The display to give QEMU: EGL on a render node when the host has one, else SDL offscreen.
pub fn choose_display(qemu: &QemuGpu, render_nodes: &[PathBuf]) -> Result<Display, ProbeError> {
    let has = |d: &str| qemu.displays.iter().any(|x| x == d);
    match render_nodes.first() {
        Some(node) if has("egl-headless") => Ok(Display::EglHeadless {
            render_node: node.clone(),
        }),
        _ if has("sdl") => Ok(Display::SdlOffscreen),
        _ => Err(ProbeError::NoDisplay),
    }
}

/// The host's DRM render nodes, in name order.
pub fn render_nodes(dri: &Path) -> Vec<PathBuf> {
    let mut nodes: Vec<PathBuf> = std::fs::read_dir(dri)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("renderD"))
        .map(|e| e.path())
        .collect();
    nodes.sort();
    nodes
}

pub fn render_server() -> Result<PathBuf, ProbeError> {
    RENDER_SERVERS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or(ProbeError::NoRenderServer)
}

/// The host's own Vulkan devices (what Venus will expose to the guest).
pub fn host_vulkan() -> Result<Vec<Device>, ProbeError> {
    let devices = vulkaninfo::parse_summary(&output("vulkaninfo", &["--summary"])?);
    if devices.is_empty() {
        return Err(ProbeError::NoVulkan);
    }
    Ok(devices)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_version_and_displays_parse() {
        assert_eq!(
            parse_qemu_version(
                "QEMU emulator version 10.0.13 (Debian 1:10.0.13+ds-0+deb13u1)\nCopyright"
            )
            .as_deref(),
            Some("10.0.13")
        );
        assert_eq!(parse_qemu_version("qemu: not found"), None);
        let text = "Available display backend types:\nnone\ngtk\nsdl\negl-headless\n\nSome display backends support";
        assert_eq!(parse_displays(text), ["none", "gtk", "sdl", "egl-headless"]);
    }

    fn qemu_with(displays: &[&str]) -> QemuGpu {
        QemuGpu {
            version: "10.0".into(),
            displays: displays.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_render_node_gets_egl_headless_else_sdl_offscreen() {
        let node = PathBuf::from("/dev/dri/renderD128");
        let q = qemu_with(&["none", "sdl", "egl-headless"]);
        assert_eq!(
            choose_display(&q, std::slice::from_ref(&node)).unwrap(),
            Display::EglHeadless {
                render_node: node.clone()
            }
        );
        assert_eq!(choose_display(&q, &[]).unwrap(), Display::SdlOffscreen);
        // A QEMU without the SDL module and a host without a render node: refused, not `none`.
        let bare = qemu_with(&["none", "egl-headless"]);
        assert!(matches!(
            choose_display(&bare, &[]),
            Err(ProbeError::NoDisplay)
        ));
        assert_eq!(
            choose_display(&bare, std::slice::from_ref(&node)).unwrap(),
            Display::EglHeadless { render_node: node }
        );
    }

    #[test]
    fn render_nodes_are_listed_from_the_dri_directory() {
        let d = tempfile::tempdir().unwrap();
        for n in ["card0", "renderD129", "renderD128"] {
            std::fs::write(d.path().join(n), "").unwrap();
        }
        assert_eq!(
            render_nodes(d.path()),
            [d.path().join("renderD128"), d.path().join("renderD129")]
        );
        assert!(render_nodes(&d.path().join("missing")).is_empty());
    }
}
