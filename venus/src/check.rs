//! `gpu check`: prove Venus works in a guest and in a container there, or name the missing link.
//!
//! One shell script runs in the guest (over SSH) and prints marked sections; [`diagnose`] walks the
//! chain from the VMM's device to the container's Vulkan driver and stops at the first broken link.

use crate::vulkaninfo::{self, Device};
use serde::Serialize;
use std::collections::HashMap;

/// The guest-side probe: `sh -s -- IMAGE vm|container [cdi]`. The GPU is found on the virtio bus
/// (device ID 16), so over PCI (QEMU) and MMIO (libkrun, krunkit) alike. Without `cdi` the
/// container gets no explicit `--device`: the guest's containers.conf must give it /dev/dri by
/// default; with `cdi` it gets the CDI device (`crate::bundle::CDI_DEVICE`), and the check also
/// reads the Venus bundle's description and, in the container, as the image's own user: whether
/// the render node opens, the C library, the Vulkan loader, and the loader's driver-list variables.
/// The container's script needs only a POSIX shell and ends well whatever vulkaninfo did: an
/// image without it lists no device, which is not a container that did not run. vulkaninfo is
/// bounded ([`STALL_SECONDS`], where the image has `timeout`): Mesa's Venus driver waits for a
/// renderer that stopped serving its ring for about 15 minutes before it aborts.
pub const GUEST_SCRIPT: &str = r#"
echo @@virtio-gpu; grep -lx 0x0010 /sys/bus/virtio/devices/*/device 2>/dev/null
echo @@render; stat -c '%n %a' /dev/dri/renderD* 2>/dev/null
echo @@icd; ls /usr/share/vulkan/icd.d/ 2>&1
echo @@vm; timeout 180 vulkaninfo --summary 2>&1; echo @@vm-exit; echo $?
[ "$2" = container ] || exit 0
set --  "$1" "$2" "${3:-}"
if [ "$3" = cdi ]; then
    echo @@bundle; cat /usr/lib/carbon-vm/venus/VERSION 2>/dev/null
    set -- "$@" --device carbon-vm.dev/gpu=all
fi
image=$1; shift 3
if out=$(podman run --rm "$@" "$image" sh -c 'echo @@container-dri; ls /dev/dri 2>&1
echo @@container-access
for n in /dev/dri/renderD*; do
    if [ -r "$n" ] && [ -w "$n" ]; then echo "$n rw"; else echo "$n denied"; fi
done
echo "uid $(id -u 2>/dev/null)"
echo @@container-libc
for f in /lib/ld-musl-*; do [ -e "$f" ] && echo musl; done
for f in /lib/*-linux-gnu/libc.so.6 /lib64/libc.so.6 /usr/lib64/libc.so.6; do
    [ -e "$f" ] && { "$f" 2>/dev/null | { read -r l; echo "$l"; }; break; }
done
echo @@container-loader
for f in /lib/*-linux-gnu/libvulkan.so.1 /usr/lib/*-linux-gnu/libvulkan.so.1 /lib64/libvulkan.so.1     /usr/lib64/libvulkan.so.1 /usr/lib/libvulkan.so.1; do [ -e "$f" ] && echo "$f"; done
echo @@container-env
echo "VK_DRIVER_FILES=${VK_DRIVER_FILES:-}"
echo "VK_ICD_FILENAMES=${VK_ICD_FILENAMES:-}"
echo @@container
if command -v timeout >/dev/null 2>&1; then timeout 180 vulkaninfo --summary 2>&1
else vulkaninfo --summary 2>&1; fi
echo @@container-exit; echo $?; exit 0' 2>&1)
then echo "$out"
else echo @@container-run; echo "$out"
fi
"#;

/// How long the check gives one `vulkaninfo` (GUEST_SCRIPT's `timeout 180`): far above what it
/// takes under emulation on a loaded host (seconds), far below Venus's own wait for a dead ring.
pub const STALL_SECONDS: u32 = 180;

/// The links of the chain, in the order a frame of Vulkan work crosses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// The machine was created without a GPU.
    NoGpu,
    /// The VMM gave the guest no virtio-gpu device.
    QemuDevice,
    /// The guest kernel did not bind virtio_gpu (no render node).
    GuestKernelDriver,
    /// The render node exists but not every user may open it.
    RenderNodePermissions,
    /// The guest has no Venus ICD (Mesa's mesa-vulkan-drivers).
    GuestMesa,
    /// The device is there but Venus did not come up: the host's virglrenderer, render server or
    /// Vulkan driver.
    HostStack,
    /// Venus came up but stopped answering: a Vulkan call waited [`STALL_SECONDS`] for the host's
    /// renderer.
    VenusStalled,
    /// Containers do not get /dev/dri.
    ContainerDevice,
    /// The container sees /dev/dri but its own Mesa has no working Venus driver.
    ContainerMesa,
    /// The container was given carbon-vm's Venus driver (the CDI device), but its C library
    /// cannot load it (musl, or a glibc older than the driver's).
    ContainerLibc,
    /// The image's user cannot open the render node.
    ContainerRenderNode,
    /// The image has no Vulkan loader (libvulkan.so.1) to load any driver.
    ContainerLoader,
    /// The image sets the loader's driver list itself, over carbon-vm's.
    ContainerIcdOverride,
}

impl Link {
    /// The name `--json` gives the link.
    pub fn name(self) -> &'static str {
        match self {
            Link::NoGpu => "no-gpu",
            Link::QemuDevice => "qemu-device",
            Link::GuestKernelDriver => "guest-kernel-driver",
            Link::RenderNodePermissions => "render-node-permissions",
            Link::GuestMesa => "guest-mesa",
            Link::HostStack => "host-stack",
            Link::VenusStalled => "venus-stalled",
            Link::ContainerDevice => "container-device",
            Link::ContainerMesa => "container-mesa",
            Link::ContainerLibc => "container-libc",
            Link::ContainerRenderNode => "container-render-node",
            Link::ContainerLoader => "container-loader",
            Link::ContainerIcdOverride => "container-icd-override",
        }
    }

    pub fn hint(self) -> &'static str {
        match self {
            Link::NoGpu => "create the machine with `carbon-vm create --gpu NAME`",
            Link::QemuDevice => {
                "the VMM was started without virtio-gpu: run `carbon-vm doctor` and restart the machine"
            }
            Link::GuestKernelDriver => {
                "the guest kernel needs DRM_VIRTIO_GPU: `carbon-vm ssh NAME -- dmesg | grep -i virtio` shows why it did not bind"
            }
            Link::RenderNodePermissions => {
                "the guest's udev rule (70-carbon-render.rules) should make /dev/dri/renderD128 mode 0666"
            }
            Link::GuestMesa => {
                "install mesa-vulkan-drivers in the guest, or use the default guest image"
            }
            Link::HostStack => {
                "the host's Venus stack failed: `carbon-vm doctor` checks QEMU, virglrenderer's render server and the host Vulkan driver; the machine's vmm.log has QEMU's and virglrenderer's messages, its console.log the guest's"
            }
            Link::VenusStalled => {
                "the host's renderer stopped serving the machine's GPU: restart the machine (`carbon-vm stop --force NAME`, then `start`); its vmm.log has QEMU's and virglrenderer's messages (docs/gpu.md, Known problems)"
            }
            Link::ContainerDevice => {
                "containers get /dev/dri from the guest's containers.conf.d/50-carbon-gpu.conf (carbon-gpu-devices.service), or pass --device /dev/dri"
            }
            Link::ContainerMesa => {
                "give the container carbon-vm's Venus driver (--device carbon-vm.dev/gpu=all), or an image with Mesa's Venus driver (mesa-vulkan-drivers)"
            }
            Link::ContainerLibc => {
                "use an image based on glibc (Debian 11+, Ubuntu 20.04+, Fedora, RHEL 9), or one that brings its own Venus driver, with --device /dev/dri instead"
            }
            Link::ContainerRenderNode => {
                "run the container as a user who may open /dev/dri/renderD128 (the guest makes it mode 0666; a custom image may need --group-add keep-groups or the render group)"
            }
            Link::ContainerLoader => {
                "install the Vulkan loader in the image (libvulkan1), or use carbon-vm's: -e LD_LIBRARY_PATH=/usr/lib/carbon-vm/venus/loader"
            }
            Link::ContainerIcdOverride => {
                "the image's VK_DRIVER_FILES or VK_ICD_FILENAMES replaces the driver list: unset it (-e VK_DRIVER_FILES= -e VK_ICD_FILENAMES=) or point it at /usr/lib/carbon-vm/venus/icd.d/carbon-venus.json"
            }
        }
    }
}

impl Serialize for Link {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Missing {
    pub link: Link,
    pub detail: String,
    pub hint: &'static str,
}

impl Missing {
    pub fn new(link: Link, detail: impl Into<String>) -> Missing {
        Missing {
            link,
            detail: detail.into(),
            hint: link.hint(),
        }
    }
}

/// What the check saw; `missing` is `None` when Venus works in the VM and in the container.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    /// The Venus device's name, e.g. `Virtio-GPU Venus (llvmpipe (LLVM 19.1.7, 256 bits))`.
    pub device: Option<String>,
    /// The host GPU behind Venus.
    pub host_device: Option<String>,
    /// The guest Venus driver's Mesa version and Vulkan API version.
    pub driver_info: Option<String>,
    pub api_version: Option<String>,
    pub vm_devices: Vec<Device>,
    pub container_devices: Vec<Device>,
    pub missing: Option<Missing>,
    /// The guest's GPU blobs against a Mac host's 16 KiB pages, where the VMM traces them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blobs: Option<crate::blobs::BlobAudit>,
}

/// Splits the script's output at its `@@name` lines.
pub fn sections(output: &str) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = HashMap::new();
    let mut current: Option<String> = None;
    for line in output.lines() {
        if let Some(name) = line.strip_prefix("@@") {
            current = Some(name.trim().to_owned());
            out.entry(name.trim().to_owned()).or_default();
        } else if let Some(c) = &current {
            let s = out.get_mut(c).expect("entry made above");
            s.push_str(line);
            s.push('\n');
        }
    }
    out
}

/// Walks the chain over the guest script's output.
pub fn diagnose(output: &str) -> Report {
    let s = sections(output);
    let get = |k: &str| s.get(k).map(String::as_str).unwrap_or("");
    let vm_devices = vulkaninfo::parse_summary(get("vm"));
    let container_devices = vulkaninfo::parse_summary(get("container"));
    let venus = vm_devices.iter().find(|d| d.is_venus());
    let missing = find_missing(&s, &vm_devices, &container_devices);
    Report {
        ok: missing.is_none(),
        device: venus.map(|d| d.name.clone()),
        host_device: venus.and_then(|d| d.host_device()).map(str::to_owned),
        driver_info: venus.map(|d| d.driver_info.clone()),
        api_version: venus.map(|d| d.api_version.clone()),
        vm_devices,
        container_devices,
        missing,
        blobs: None,
    }
}

fn names(devices: &[Device]) -> String {
    if devices.is_empty() {
        return "no Vulkan device".into();
    }
    let n: Vec<String> = devices
        .iter()
        .map(|d| format!("{} ({})", d.name, d.driver_id))
        .collect();
    format!("only {}", n.join(", "))
}

fn find_missing(
    s: &HashMap<String, String>,
    vm: &[Device],
    container: &[Device],
) -> Option<Missing> {
    let get = |k: &str| s.get(k).map(String::as_str).unwrap_or("").trim();
    if get("virtio-gpu").is_empty() {
        return Some(Missing::new(
            Link::QemuDevice,
            "the guest has no virtio-gpu device (PCI or MMIO)",
        ));
    }
    let render = get("render");
    let Some(node) = render.lines().next() else {
        return Some(Missing::new(
            Link::GuestKernelDriver,
            "virtio-gpu is present but /dev/dri/renderD* is not",
        ));
    };
    if !node.ends_with(" 666") {
        return Some(Missing::new(
            Link::RenderNodePermissions,
            format!("render node mode: {node}"),
        ));
    }
    if !get("icd").lines().any(|l| l.trim() == "virtio_icd.json") {
        return Some(Missing::new(
            Link::GuestMesa,
            "no Venus ICD (virtio_icd.json) in /usr/share/vulkan/icd.d",
        ));
    }
    if stalled(get("vm-exit")) {
        return Some(Missing::new(
            Link::VenusStalled,
            format!("vulkaninfo in the machine did not answer within {STALL_SECONDS} s"),
        ));
    }
    if !vm.iter().any(Device::is_venus) {
        let mut lists = format!("the guest's Vulkan loader lists {}", names(vm));
        if vm.is_empty() {
            lists.push_str(&said(get("vm"), get("vm-exit")));
        }
        return Some(Missing::new(Link::HostStack, lists));
    }
    if s.contains_key("container-run") || !s.contains_key("container-dri") {
        return Some(Missing::new(
            Link::ContainerDevice,
            format!(
                "the container did not run: {}",
                get("container-run").lines().last().unwrap_or("")
            ),
        ));
    }
    if !get("container-dri")
        .lines()
        .any(|l| l.starts_with("renderD"))
    {
        return Some(Missing::new(
            Link::ContainerDevice,
            "the container has no /dev/dri/renderD*",
        ));
    }
    if stalled(get("container-exit")) {
        return Some(Missing::new(
            Link::VenusStalled,
            format!(
                "vulkaninfo in the container did not answer within {STALL_SECONDS} s (the machine's \
                 own had listed {})",
                names(vm)
            ),
        ));
    }
    if !container.iter().any(Device::is_venus) {
        let mut lists = format!("the container's Vulkan loader lists {}", names(container));
        if container.is_empty() {
            lists.push_str(&said(get("container"), get("container-exit")));
        }
        if let Some((link, why)) = why_no_venus(s) {
            return Some(Missing::new(link, format!("{why}; {lists}")));
        }
        return Some(Missing::new(Link::ContainerMesa, lists));
    }
    None
}

/// Whether a `vulkaninfo` exit status is `timeout`'s: it ran out of time.
fn stalled(exit: &str) -> bool {
    exit.trim() == "124"
}

/// What vulkaninfo said when it listed nothing: its error lines (the loader's, the driver's),
/// else its last line, and how it ended, so that a failure names its cause rather than only its
/// absence.
fn said(output: &str, exit: &str) -> String {
    let ended = match exit.trim() {
        "" | "0" => String::new(),
        "127" => "; not found in the image (exit 127)".to_owned(),
        n => match n.parse::<u32>() {
            Ok(c) if c > 128 => format!("; killed by signal {} (exit {c})", c - 128),
            _ => format!("; exit {n}"),
        },
    };
    let lines: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let errors: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            ["error", "failed", "abort"].iter().any(|w| l.contains(w))
        })
        .take(3)
        .collect();
    let shown = if errors.is_empty() {
        lines.last().map(|l| vec![*l]).unwrap_or_default()
    } else {
        errors
    };
    if shown.is_empty() {
        return format!(" (vulkaninfo printed nothing{ended})");
    }
    let text: String = shown.join(" | ").chars().take(400).collect();
    format!(" (vulkaninfo: {text}{ended})")
}

/// For a container given the Venus bundle (the CDI device) that lists no Venus device: what of
/// the image kept the driver from working, in the order the driver needs them.
fn why_no_venus(s: &HashMap<String, String>) -> Option<(Link, String)> {
    let need = crate::bundle::Version::parse(s.get("bundle")?)?.glibc;
    let get = |k: &str| s.get(k).map(String::as_str).unwrap_or("");
    let access = get("container-access");
    if let Some(node) = access.lines().find_map(|l| l.strip_suffix(" denied")) {
        let uid = access
            .lines()
            .find_map(|l| l.strip_prefix("uid "))
            .unwrap_or("?");
        return Some((
            Link::ContainerRenderNode,
            format!("the image's user (uid {uid}) cannot open {node}"),
        ));
    }
    if let Some(why) = unserved(get("container-libc"), &need) {
        return Some((Link::ContainerLibc, why));
    }
    if get("container-loader").trim().is_empty() {
        return Some((
            Link::ContainerLoader,
            "the image has no Vulkan loader (libvulkan.so.1)".into(),
        ));
    }
    let ours = crate::bundle::ICD;
    if let Some(var) = get("container-env").lines().find(|l| {
        l.split_once('=')
            .is_some_and(|(_, v)| !v.is_empty() && v != ours)
    }) {
        return Some((
            Link::ContainerIcdOverride,
            format!("the image sets {var}, which replaces carbon-vm's driver ({ours})"),
        ));
    }
    None
}

/// Why a C library (the container's `container-libc` section) cannot load a bundle that needs
/// glibc `need`, if it cannot.
fn unserved(libc: &str, need: &str) -> Option<String> {
    let glibc = libc
        .lines()
        .find_map(|l| l.split("release version ").nth(1))
        .map(|v| v.trim().trim_end_matches('.').to_owned());
    let have = match glibc {
        Some(v) if crate::bundle::glibc_serves(&v, need) => return None,
        Some(v) => format!("glibc {v}"),
        None if libc.lines().any(|l| l.trim() == "musl") => "musl".to_owned(),
        None => "no glibc".to_owned(),
    };
    Some(format!(
        "the image's C library is {have}; carbon-vm's Venus driver needs glibc {need} or newer"
    ))
}

/// The report for a machine created without a GPU: nothing to ask the guest.
pub fn no_gpu() -> Report {
    Report {
        ok: false,
        device: None,
        host_device: None,
        driver_info: None,
        api_version: None,
        vm_devices: Vec::new(),
        container_devices: Vec::new(),
        missing: Some(Missing::new(
            Link::NoGpu,
            "the machine was created without --gpu",
        )),
        blobs: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The script's real output in a `--gpu` machine under QEMU + lavapipe (captured here).
    const GOOD: &str = include_str!("../tests/data/guest-check-venus.txt");

    /// GOOD with one section's body replaced.
    fn with_section(name: &str, body: &str) -> String {
        let mut s = sections(GOOD);
        s.insert(name.into(), body.into());
        [
            "virtio-gpu",
            "render",
            "icd",
            "vm",
            "container-dri",
            "container",
            "container-run",
        ]
        .iter()
        .filter_map(|k| s.get(*k).map(|v| format!("@@{k}\n{v}")))
        .collect()
    }

    fn link(output: &str) -> Option<Link> {
        diagnose(output).missing.map(|m| m.link)
    }

    #[test]
    fn a_working_machine_passes_and_names_the_host_device() {
        let r = diagnose(GOOD);
        assert!(r.ok, "{:?}", r.missing);
        assert_eq!(
            r.host_device.as_deref(),
            Some("llvmpipe (LLVM 19.1.7, 256 bits)")
        );
        assert!(r.driver_info.unwrap().starts_with("Mesa 25"));
        assert!(r.container_devices.iter().any(Device::is_venus));
    }

    #[test]
    fn each_broken_link_is_named() {
        let llvmpipe_only: String = {
            let vm = sections(GOOD)["vm"].clone();
            let start = vm.find("GPU0:").unwrap();
            let end = vm.find("GPU1:").unwrap();
            format!("{}{}", &vm[..start], &vm[end..])
        };
        let cases = [
            (with_section("virtio-gpu", ""), Link::QemuDevice),
            (with_section("render", ""), Link::GuestKernelDriver),
            (
                with_section("render", "/dev/dri/renderD128 600\n"),
                Link::RenderNodePermissions,
            ),
            (with_section("icd", "lvp_icd.json\n"), Link::GuestMesa),
            (with_section("vm", &llvmpipe_only), Link::HostStack),
            (
                with_section("container-dri", "ls: /dev/dri: No such file\n"),
                Link::ContainerDevice,
            ),
            (
                with_section("container", &llvmpipe_only),
                Link::ContainerMesa,
            ),
            (
                with_section("container-run", "Error: no such image\n"),
                Link::ContainerDevice,
            ),
        ];
        for (output, want) in cases {
            assert_eq!(link(&output), Some(want), "{want:?}");
        }
    }

    #[test]
    fn a_machine_that_lists_nothing_says_what_its_vulkaninfo_said() {
        let aborted = format!(
            "{}@@vm-exit\n134\n",
            with_section("vm", "MESA-VIRTIO: debug: vn_ring_wait: aborting\n")
        );
        let m = diagnose(&aborted).missing.unwrap();
        assert_eq!(m.link, Link::HostStack);
        assert!(
            m.detail.ends_with(
                "lists no Vulkan device (vulkaninfo: MESA-VIRTIO: debug: vn_ring_wait: aborting; \
                 killed by signal 6 (exit 134))"
            ),
            "{}",
            m.detail
        );
    }

    #[test]
    fn a_container_that_lists_nothing_says_what_vulkaninfo_said() {
        let failed = "WARNING: [Loader Message] Code 0 : terminator_CreateInstance: skip\n\
                      ERROR: [Loader Message] Code 0 : vkCreateInstance: Found no drivers!\n\
                      Cannot create Vulkan instance.\n\
                      ERROR at vulkaninfo.h:649:vkCreateInstance failed with \
                      ERROR_INCOMPATIBLE_DRIVER\n";
        let m = diagnose(&with_section("container", failed))
            .missing
            .unwrap();
        assert_eq!(m.link, Link::ContainerMesa);
        assert!(m.detail.contains("Found no drivers!"), "{}", m.detail);
        assert!(
            m.detail.contains("ERROR_INCOMPATIBLE_DRIVER"),
            "{}",
            m.detail
        );
        let silent = diagnose(&with_section("container", "")).missing.unwrap();
        assert!(
            silent.detail.ends_with("(vulkaninfo printed nothing)"),
            "{}",
            silent.detail
        );
        let aborted = format!(
            "{}@@container-exit\n134\n",
            with_section("container", "MESA-VIRTIO: debug: aborting\n")
        );
        let m = diagnose(&aborted).missing.unwrap();
        assert_eq!(m.link, Link::ContainerMesa);
        assert!(
            m.detail.ends_with(
                "(vulkaninfo: MESA-VIRTIO: debug: aborting; killed by signal 6 (exit 134))"
            ),
            "{}",
            m.detail
        );
    }

    #[test]
    fn the_script_bounds_both_vulkaninfo_runs_by_stall_seconds() {
        let bounded = format!("timeout {STALL_SECONDS} vulkaninfo --summary");
        assert_eq!(GUEST_SCRIPT.matches(&bounded).count(), 2);
    }

    #[test]
    fn a_vulkaninfo_that_ran_out_of_time_is_a_stalled_venus() {
        let m = diagnose(&format!("{GOOD}@@container-exit\n124\n"))
            .missing
            .unwrap();
        assert_eq!(m.link, Link::VenusStalled);
        assert!(m.detail.contains("in the container"), "{}", m.detail);
        assert!(m.detail.contains("Virtio-GPU Venus"), "{}", m.detail);
        let m = diagnose(&format!("{GOOD}@@vm-exit\n124\n"))
            .missing
            .unwrap();
        assert_eq!(m.link, Link::VenusStalled);
        assert!(m.detail.contains("in the machine"), "{}", m.detail);
        assert!(diagnose(&format!("{GOOD}@@vm-exit\n0\n@@container-exit\n0\n")).ok);
    }

    #[test]
    fn what_of_an_image_keeps_the_bundle_from_working_is_named() {
        let llvmpipe_only: String = {
            let c = sections(GOOD)["container"].clone();
            let start = c.find("GPU0:").unwrap();
            let end = c.find("GPU1:").unwrap();
            format!("{}{}", &c[..start], &c[end..])
        };
        let glibc = "GNU C Library (Debian GLIBC 2.36-9+deb12u4) stable release version 2.36.";
        let loader = "/usr/lib/x86_64-linux-gnu/libvulkan.so.1";
        let env = format!("VK_DRIVER_FILES={}\nVK_ICD_FILENAMES=", crate::bundle::ICD);
        // An image the bundle serves: a glibc it loads in, a loader, a render node it opens.
        let image = |access: &str, libc: &str, loader: &str, env: &str| {
            format!(
                "{}@@bundle\nmesa=25.0.7-2\nvulkan_loader=1.4.309.0-1\nglibc=2.29\n\
                 @@container-access\n{access}\n@@container-libc\n{libc}\n\
                 @@container-loader\n{loader}\n@@container-env\n{env}\n",
                with_section("container", &llvmpipe_only)
            )
        };
        let rw = "/dev/dri/renderD128 rw\nuid 1000";
        let old = "GNU C Library (Debian GLIBC 2.28-10+deb10u2) stable release version 2.28.";
        let cases = [
            (
                image("/dev/dri/renderD128 denied\nuid 1000", glibc, loader, &env),
                Link::ContainerRenderNode,
                "uid 1000",
            ),
            (image(rw, "musl", "", ""), Link::ContainerLibc, "musl"),
            (
                image(rw, old, loader, &env),
                Link::ContainerLibc,
                "glibc 2.28",
            ),
            (
                image(rw, glibc, "", &env),
                Link::ContainerLoader,
                "libvulkan.so.1",
            ),
            (
                image(rw, glibc, loader, "VK_DRIVER_FILES=/etc/vk/mine.json"),
                Link::ContainerIcdOverride,
                "mine.json",
            ),
            // Nothing of the image's is to blame: Venus itself is not listed.
            (
                image(rw, glibc, loader, &env),
                Link::ContainerMesa,
                "lists only",
            ),
        ];
        for (output, want, says) in cases {
            let m = diagnose(&output).missing.unwrap();
            assert_eq!(m.link, want, "{}", m.detail);
            assert!(m.detail.contains(says), "{want:?}: {}", m.detail);
        }
    }

    #[test]
    fn the_vm_scope_stops_before_the_container() {
        let mut s = sections(GOOD);
        s.retain(|k, _| !k.starts_with("container"));
        let vm_only: String = ["virtio-gpu", "render", "icd", "vm"]
            .iter()
            .map(|k| format!("@@{k}\n{}", s[*k]))
            .collect();
        let r = diagnose(&vm_only);
        assert!(r.device.is_some(), "Venus seen in the VM");
        assert_eq!(r.missing.unwrap().link, Link::ContainerDevice);
    }

    #[test]
    fn a_machine_without_gpu_fails_with_that_reason() {
        let r = no_gpu();
        assert!(!r.ok);
        assert_eq!(r.missing.as_ref().unwrap().link, Link::NoGpu);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["missing"]["link"], "no-gpu");
    }
}
