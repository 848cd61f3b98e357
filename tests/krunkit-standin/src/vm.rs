//! The machine krunkit gives its guest, run by QEMU (Linux): `qemu-system-aarch64` under TCG on
//! `-machine virt` (`KRUNKIT_STANDIN_QEMU` names another QEMU), EDK2 firmware booting the first
//! disk (krunkit's bundled KRUN_EFI is EDK2 too), virtio-mmio transports as libkrun has them, and
//! the Venus GPU krunkit always adds. Its helpers (vhost-device-vsock, virtiofsd) and QEMU die
//! with the stand-in (parent-death signal), as a VM dies with krunkit.
//!
//! Where QEMU differs from krunkit, the stand-in follows krunkit's contract:
//! - virtio-gpu is on PCI, not MMIO: QEMU's virtio-mmio transport has no shared-memory regions
//!   (its SHM_SEL/SHM_LEN registers are unimplemented), and Venus needs one for its blobs. The
//!   window is krunkit's (63488 MiB less the RAM rounded up to a GiB, at most the host's RAM),
//!   rounded down to a power of two, which QEMU's PCI BAR must be.
//! - Hypervisor.framework maps guest memory in 16 KiB pages; QEMU does not care. So every blob
//!   the guest creates is read from QEMU's trace (`virtio_gpu_cmd_res_create_blob`), and one
//!   whose size is not a multiple of 16 KiB ends the VM with libkrun's error, as `hv_vm_map`
//!   fails it on a Mac: a 4 KiB-page guest cannot pass here.
//! - vsock ports reach host unix sockets through vhost-device-vsock (guest-to-host: it connects
//!   to `<uds>_<port>`, which the stand-in links to the device's `socketURL`; host-to-guest: the
//!   stand-in's listener relays each connection after vhost-device-vsock's `CONNECT` handshake).
//! - REST `Stop` presses the power button (QMP `system_powerdown`); `HardStop` kills QEMU.

use crate::Event;
use crate::devices::Attached;
use rustix::process::{Pid, Signal};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

/// The page size of Apple Silicon's hypervisor: every blob mapping must be a multiple of it.
pub const MAC_PAGE: u64 = 16384;
/// QEMU's trace event for a blob the guest creates: `res 0x%x, size %` PRId64.
const BLOB_EVENT: &str = "virtio_gpu_cmd_res_create_blob";
/// The guest's vsock context id (vhost-device-vsock's default); the host is 2.
const GUEST_CID: &str = "3";
/// krunkit's firmware is EDK2 for virt; Debian's qemu-efi-aarch64 is the same family.
const FIRMWARE: (&str, &str) = (
    "/usr/share/AAVMF/AAVMF_CODE.fd",
    "/usr/share/AAVMF/AAVMF_VARS.fd",
);
/// How long a helper may take to create its socket.
const HELPER_START: Duration = Duration::from_secs(20);

pub struct Vm {
    qemu: Pid,
    /// vhost-device-vsock and virtiofsd.
    helpers: Vec<Child>,
    qmp: PathBuf,
    /// Sockets, the firmware's variable store: gone with the VM (swept, if it was killed).
    _run: scratch::Scratch,
}

impl Vm {
    /// Asks the guest to power off.
    pub fn power_button(&self) -> Result<(), String> {
        qmp(&self.qmp, "system_powerdown")
    }

    pub fn kill(&self) {
        let _ = rustix::process::kill_process(self.qemu, Signal::KILL);
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
        for h in &mut self.helpers {
            let _ = h.kill();
            let _ = h.wait();
        }
    }
}

/// krunkit's Venus window: what keeps RAM + window inside the guest's 36-bit address space
/// (2 GiB of it left for devices), at most the host's RAM.
pub fn gpu_window_mib(memory_mib: u32, host_ram_mib: u64) -> u64 {
    let ram_gib_rounded = u64::from(memory_mib).div_ceil(1024) * 1024;
    63488u64.saturating_sub(ram_gib_rounded).min(host_ram_mib)
}

fn host_ram_mib() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(8192, |kib| kib / 1024)
}

/// Children die with the stand-in, as the VM dies with krunkit.
fn with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            Ok(())
        })
    }
}

/// Starts a helper that creates `socket`, and waits for it.
fn helper(mut cmd: Command, socket: &Path, what: &str) -> Result<Child, String> {
    let mut child = with_parent(&mut cmd)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    let deadline = Instant::now() + HELPER_START;
    while !socket.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{what} exited: {status}"));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(format!("{what} did not create {}", socket.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

fn program(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// QEMU option values escape `,` as `,,`.
fn opt(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// Boots the VM of `a` with the SMBIOS type 11 `oem_strings`; its end and the blobs it maps are
/// reported to `events`.
pub fn boot(
    a: Attached,
    oem_strings: &[String],
    cpus: u8,
    memory_mib: u32,
    events: Sender<Event>,
) -> Result<Vm, String> {
    let run = krunkit_standin::runtime_dir("vm")
        .map_err(|e| format!("cannot create a runtime directory: {e}"))?;
    let r = run.path();
    let mut helpers = Vec::new();
    let mut q = Command::new(program("KRUNKIT_STANDIN_QEMU", "qemu-system-aarch64"));
    let m = format!("{memory_mib}M");
    q.args(["-nodefaults", "-no-user-config", "-no-reboot"])
        .args(["-machine", "virt,gic-version=max,memory-backend=mem"])
        .args(["-accel", "tcg", "-cpu", "max"])
        .args(["-smp", &cpus.to_string(), "-m", &m])
        // Shared guest RAM: vhost-user devices and Venus blobs map it.
        .arg("-object")
        .arg(format!("memory-backend-memfd,id=mem,size={m},share=on"))
        // libkrun's virtio-mmio devices are virtio 1.x.
        .args(["-global", "virtio-mmio.force-legacy=false"]);

    let vars = r.join("efi-vars.fd");
    fs::copy(FIRMWARE.1, &vars).map_err(|e| format!("cannot copy {}: {e}", FIRMWARE.1))?;
    q.arg("-drive")
        .arg(format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={}",
            FIRMWARE.0
        ))
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,unit=1,file={}", opt(&vars)));
    // The firmware's own console, for a boot that fails before the guest's.
    q.args(["-chardev", "file,id=fw,path=/proc/self/fd/2,append=on"])
        .args(["-serial", "chardev:fw"]);

    for (i, (path, format)) in a.disks.iter().enumerate() {
        q.arg("-drive")
            .arg(format!(
                "file={},if=none,id=blk{i},format={format}",
                opt(path)
            ))
            .arg("-device")
            .arg(format!("virtio-blk-device,drive=blk{i}"));
    }
    if a.rng {
        q.args(["-object", "rng-random,id=rng,filename=/dev/urandom"])
            .args(["-device", "virtio-rng-device,rng=rng"]);
    }
    if let Some(log) = &a.console {
        // krunkit's virtio console: the guest's hvc0, written to the log file.
        q.args(["-device", "virtio-serial-device", "-chardev"])
            .arg(format!("file,id=con,path={}", opt(log)))
            .args(["-device", "virtconsole,chardev=con"]);
    }
    let mut inherited: Vec<i32> = Vec::new();
    if let Some((fd, mac)) = &a.net {
        q.arg("-netdev")
            .arg(format!(
                "dgram,id=net,local.type=fd,local.str={}",
                fd.as_raw_fd()
            ))
            .arg("-device")
            .arg(format!("virtio-net-device,netdev=net,mac={mac}"));
        inherited.push(fd.as_raw_fd());
    }
    if !a.vsock_listen.is_empty() || !a.vsock_connect.is_empty() {
        let vhost = r.join("vsock-vhost.sock");
        let uds = r.join("vsock");
        // Guest to host: vhost-device-vsock connects to `<uds>_<port>`, here the device's socket.
        for (port, socket) in &a.vsock_listen {
            std::os::unix::fs::symlink(socket, format!("{}_{port}", uds.display()))
                .map_err(|e| format!("cannot link vsock port {port}: {e}"))?;
        }
        let mut v = Command::new(program("KRUNKIT_STANDIN_VHOST_VSOCK", "vhost-device-vsock"));
        v.arg(format!("--guest-cid={GUEST_CID}"))
            .arg(format!("--socket={}", vhost.display()))
            .arg(format!("--uds-path={}", uds.display()));
        helpers.push(helper(v, &vhost, "vhost-device-vsock")?);
        q.arg("-chardev")
            .arg(format!("socket,id=vsock,path={}", opt(&vhost)))
            .args(["-device", "vhost-user-vsock-device,chardev=vsock"]);
        crate::vsock::relay_connect_mode(a.vsock_connect, uds);
    }
    for (i, (dir, tag)) in a.shares.iter().enumerate() {
        let sock = r.join(format!("fs{i}.sock"));
        let mut v = Command::new(virtiofsd());
        v.arg(format!("--socket-path={}", sock.display()))
            .arg(format!("--shared-dir={}", dir.display()))
            // As root it confines itself with chroot (its namespace sandbox cannot pivot out of
            // a chroot such as scripts/gpu-root); as a user, with none.
            .arg(if rustix::process::geteuid().is_root() {
                "--sandbox=chroot"
            } else {
                "--sandbox=none"
            });
        helpers.push(helper(v, &sock, "virtiofsd")?);
        q.arg("-chardev")
            .arg(format!("socket,id=fs{i},path={}", opt(&sock)))
            .arg("-device")
            .arg(format!("vhost-user-fs-device,chardev=fs{i},tag={tag}"));
    }
    for s in oem_strings {
        q.arg("-smbios")
            .arg(format!("type=11,value={}", s.replace(',', ",,")));
    }

    // The GPU krunkit always gives the guest (see the module's comment on PCI).
    let window = 1u64 << gpu_window_mib(memory_mib, host_ram_mib()).ilog2();
    q.arg("-device").arg(format!(
        "virtio-gpu-gl-pci,venus=on,blob=on,hostmem={window}M"
    ));
    match fs::read_dir("/dev/dri").ok().and_then(|d| {
        d.flatten().map(|e| e.path()).find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("renderD"))
        })
    }) {
        Some(node) => {
            q.arg("-display")
                .arg(format!("egl-headless,rendernode={}", opt(&node)));
        }
        None => {
            // No render node: SDL renders offscreen through Mesa (lavapipe, llvmpipe).
            q.args(["-display", "sdl,gl=on"])
                .env("SDL_VIDEODRIVER", "offscreen");
        }
    }
    let (trace_r, trace_w) = rustix::pipe::pipe().map_err(|e| format!("pipe: {e}"))?;
    q.arg("-trace").arg(format!(
        "enable={BLOB_EVENT},file=/proc/self/fd/{}",
        trace_w.as_raw_fd()
    ));
    inherited.push(trace_w.as_raw_fd());
    let qmp_path = r.join("qmp.sock");
    q.arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", opt(&qmp_path)));

    // SAFETY: fcntl is async-signal-safe; it only clears close-on-exec on fds this process owns.
    unsafe {
        q.pre_exec(move || {
            for fd in &inherited {
                let fd = std::os::fd::BorrowedFd::borrow_raw(*fd);
                rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
            }
            Ok(())
        });
    }
    let mut child = with_parent(&mut q)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run QEMU (the stand-in's VMM): {e}"))?;
    drop(trace_w);
    drop(a.net);
    let qemu = Pid::from_child(&child);
    watch_blobs(trace_r, events.clone());
    std::thread::spawn(move || {
        if let Ok(status) = child.wait() {
            let _ = events.send(Event::Exited(status));
        }
    });
    wait_for(&qmp_path, qemu)?;
    Ok(Vm {
        qemu,
        helpers,
        qmp: qmp_path,
        _run: run,
    })
}

fn virtiofsd() -> String {
    let libexec = "/usr/libexec/virtiofsd";
    if Path::new(libexec).exists() {
        libexec.into()
    } else {
        program("KRUNKIT_STANDIN_VIRTIOFSD", "virtiofsd")
    }
}

/// Waits until QEMU serves QMP: it then runs the guest.
fn wait_for(qmp_path: &Path, qemu: Pid) -> Result<(), String> {
    let deadline = Instant::now() + HELPER_START;
    while UnixStream::connect(qmp_path).is_err() {
        if rustix::process::test_kill_process(qemu).is_err() {
            return Err("QEMU exited during start-up (its messages are above)".into());
        }
        if Instant::now() > deadline {
            return Err("QEMU did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Reads QEMU's blob trace; a blob a Mac cannot map is reported (once is enough: the VM ends).
fn watch_blobs(trace: OwnedFd, events: Sender<Event>) {
    std::thread::spawn(move || {
        for line in BufReader::new(fs::File::from(trace)).lines() {
            let Ok(line) = line else { return };
            let Some(size) = blob_size(&line) else {
                continue;
            };
            if size % MAC_PAGE != 0 {
                let _ = events.send(Event::Unmappable(size));
                return;
            }
            // The evidence that the check ran: one line per blob in krunkit's output.
            eprintln!("krunkit-standin: GPU blob of {size} bytes, a 16 KiB multiple: mapped");
        }
    });
}

/// The size in a trace line `[pid@time:]virtio_gpu_cmd_res_create_blob res 0x5, size 135168`.
pub fn blob_size(line: &str) -> Option<u64> {
    let rest = &line[line.find(BLOB_EVENT)? + BLOB_EVENT.len()..];
    rest.rsplit_once("size ")?.1.trim().parse().ok()
}

/// One QMP command: the greeting, capabilities, the command.
fn qmp(path: &Path, command: &str) -> Result<(), String> {
    let err = |e: std::io::Error| format!("QMP: {e}");
    let s = UnixStream::connect(path).map_err(err)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(err)?;
    let mut r = BufReader::new(s.try_clone().map_err(err)?);
    let mut w = s;
    let mut line = String::new();
    r.read_line(&mut line).map_err(err)?; // greeting
    for c in ["qmp_capabilities", command] {
        writeln!(w, "{{\"execute\":\"{c}\"}}").map_err(err)?;
        loop {
            line.clear();
            if r.read_line(&mut line).map_err(err)? == 0 {
                return Err("QMP: connection closed".into());
            }
            // Events may come before the answer.
            if line.contains("\"return\"") {
                break;
            }
            if line.contains("\"error\"") {
                return Err(format!("QMP {c}: {}", line.trim()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn krunkit_window_leaves_the_address_space_to_ram() {
        assert_eq!(gpu_window_mib(2048, 1 << 20), 63488 - 2048);
        assert_eq!(gpu_window_mib(2049, 1 << 20), 63488 - 3072);
        assert_eq!(gpu_window_mib(2048, 24000), 24000);
    }

    #[test]
    fn blob_sizes_from_both_trace_formats() {
        assert_eq!(
            blob_size("virtio_gpu_cmd_res_create_blob res 0x5, size 135168"),
            Some(135168)
        );
        assert_eq!(
            blob_size("1234@1700000000.000001:virtio_gpu_cmd_res_create_blob res 0x2, size 147456"),
            Some(147456)
        );
        assert_eq!(blob_size("virtio_gpu_cmd_res_flush res 0x1"), None);
    }
}
