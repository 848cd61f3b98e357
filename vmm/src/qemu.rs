//! The QEMU driver: its command line, as a pure function of the machine's configuration, so that
//! unit tests pin exactly what QEMU is asked to do; the process lifecycle is in driver.rs.

mod driver;
pub mod virtiofs;

pub use driver::Qemu;

use std::path::{Path, PathBuf};
use venus::probe::Display;

use crate::Arch;

/// QEMU's view of a guest architecture. KVM runs only the host's own; another architecture is
/// emulated by TCG (the aarch64 image on an x86_64 host, as CI proves it).
impl Arch {
    /// The system emulator for this architecture.
    pub const fn qemu(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
        }
    }

    fn machine(self) -> &'static str {
        match self {
            Arch::X86_64 => "q35",
            // GICv3 where the host has it: GICv2 stops at 8 CPUs.
            Arch::Aarch64 => "virt,gic-version=max",
        }
    }

    /// The first serial port's name in the guest kernel.
    fn console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Aarch64 => "ttyAMA0",
        }
    }
}

/// How QEMU executes guest code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

/// What the user asked for (`CARBON_VM_ACCEL`): `Auto` is KVM where the probe (crate::kvm) shows
/// it runs guests, else TCG; decided only when a machine starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelChoice {
    Auto,
    Use(Accel),
}

/// Everything QEMU needs for one machine; paths are absolute.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    pub name: String,
    pub arch: Arch,
    pub cpus: u8,
    pub memory_mib: u32,
    pub accel: Accel,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    pub disk: PathBuf,
    /// gvproxy's `-listen-qemu` socket.
    pub net_socket: PathBuf,
    pub mac: String,
    /// QMP control socket (QEMU listens).
    pub qmp_socket: PathBuf,
    /// The guest's Ready channel (virtio-serial port `carbon.ready`); carbon-vm listens.
    pub ready_socket: PathBuf,
    pub console_log: PathBuf,
    /// QEMU's own messages for the whole run (`-D`: once daemonized, its stderr goes there too),
    /// and the blob trace of a GPU machine.
    pub log: PathBuf,
    pub pidfile: PathBuf,
    /// SMBIOS type 11 OEM strings (systemd credentials).
    pub oem_strings: Vec<String>,
    pub gpu: Option<Gpu>,
    /// Folders served by virtiofsd on each share's socket.
    pub shares: Vec<crate::Share>,
}

/// A virtio-gpu Venus device.
#[derive(Debug, Clone)]
pub struct Gpu {
    /// The host-memory window for Venus blobs (`venus::window::qemu_hostmem_bytes`).
    pub hostmem_bytes: u64,
    pub display: Display,
}

/// The virtio-serial port name the guest's carbon-ready unit writes to.
pub const READY_PORT: &str = "carbon.ready";

/// A path as a value inside a QEMU option list, where ',' separates options and ',,' is a comma.
fn opt(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// What identifies this machine's QEMU on its command line (`process::live_pid`'s marker).
pub fn marker(disk: &Path) -> String {
    format!("file={},", opt(disk))
}

pub fn command_line(c: &QemuConfig) -> Vec<String> {
    let p = |p: &PathBuf| p.display().to_string();
    let accel = match (c.accel, c.arch) {
        (Accel::Kvm, _) => "kvm",
        // One thread runs every x86 vCPU: under multi-threaded TCG (QEMU 7.2) a guest kernel was
        // seen dying early in boot on the int3 of a jump label another vCPU had already patched
        // (RIP one byte into the patched site). Serialised vCPUs see kernel text patching whole;
        // the price is about 1.6x on a TCG boot (48 s -> 76 s on a 2-core host).
        (Accel::Tcg, Arch::X86_64) => "tcg,thread=single",
        (Accel::Tcg, Arch::Aarch64) => "tcg",
    };
    let mut a: Vec<String> = vec![
        "-name".into(),
        format!("carbon-vm-{},process=carbon-vm-{}", c.name, c.name),
        "-machine".into(),
        c.arch.machine().into(),
        "-accel".into(),
        accel.into(),
        "-cpu".into(),
        if c.accel == Accel::Kvm { "host" } else { "max" }.into(),
        "-smp".into(),
        c.cpus.to_string(),
        "-m".into(),
        format!("{}M", c.memory_mib),
        "-nodefaults".into(),
        "-kernel".into(),
        p(&c.kernel),
        "-initrd".into(),
        p(&c.initrd),
        "-append".into(),
        // A guest kernel panic reboots at once, and -no-reboot turns that into QEMU exiting: the
        // start fails in seconds with the panic in the console tail, instead of waiting for Ready.
        format!(
            "{} console={} panic=-1{}",
            c.cmdline,
            c.arch.console(),
            cmdline_credentials(c)
        ),
        "-no-reboot".into(),
        "-drive".into(),
        // A write the host's full filesystem refuses pauses the guest (QMP run state io-error,
        // which the driver reports) rather than failing it: the guest loses nothing.
        format!(
            "{}if=virtio,format=raw,discard=unmap,werror=enospc,rerror=report",
            marker(&c.disk)
        ),
        "-netdev".into(),
        format!(
            "stream,id=net0,addr.type=unix,addr.path={}",
            opt(&c.net_socket)
        ),
        "-device".into(),
        format!("virtio-net-pci,netdev=net0,mac={}", c.mac),
        "-device".into(),
        "virtio-rng-pci".into(),
        "-device".into(),
        "virtio-serial-pci".into(),
        "-chardev".into(),
        format!("socket,id=ready,path={}", opt(&c.ready_socket)),
        "-device".into(),
        format!("virtserialport,chardev=ready,name={READY_PORT}"),
        "-chardev".into(),
        format!("file,id=console,path={}", opt(&c.console_log)),
        "-serial".into(),
        "chardev:console".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", opt(&c.qmp_socket)),
        "-pidfile".into(),
        p(&c.pidfile),
        // Without a log file a daemonized QEMU sends its stderr to /dev/null: runtime messages
        // (KVM giving up, virglrenderer's errors) would be lost.
        "-D".into(),
        p(&c.log),
        "-daemonize".into(),
    ];
    // vhost-user devices (virtiofsd) and Venus blobs both need guest RAM that another process
    // can map: a shared memfd backend.
    if c.gpu.is_some() || !c.shares.is_empty() {
        a.extend([
            "-object".into(),
            format!(
                "memory-backend-memfd,id=mem,size={}M,share=on",
                c.memory_mib
            ),
            "-machine".into(),
            "memory-backend=mem".into(),
        ]);
    }
    match &c.gpu {
        None => a.extend(["-display".into(), "none".into()]),
        Some(gpu) => a.extend(gpu_args(gpu)),
    }
    for (i, s) in c.shares.iter().enumerate() {
        a.extend([
            "-chardev".into(),
            format!("socket,id=fs{i},path={}", opt(&s.socket)),
            "-device".into(),
            format!(
                "vhost-user-fs-pci,chardev=fs{i},tag={}",
                s.tag.replace(',', ",,")
            ),
        ]);
    }
    for s in &c.oem_strings {
        // QEMU's option parser treats ',' as a separator; ',,' is a literal comma.
        a.push("-smbios".into());
        a.push(format!("type=11,value={}", s.replace(',', ",,")));
    }
    a
}

/// On aarch64 a directly booted kernel has no firmware, so no SMBIOS tables and no OEM strings:
/// the same systemd credentials go on the kernel command line. They are public (root's SSH
/// public key, the hostname, the shared folders' mounts): /proc/cmdline is readable by anyone
/// in the guest, which is why the command line is not used where SMBIOS works.
fn cmdline_credentials(c: &QemuConfig) -> String {
    use base64::Engine;
    if c.arch != Arch::Aarch64 {
        return String::new();
    }
    let b64 = |v: &str| base64::engine::general_purpose::STANDARD.encode(v);
    c.oem_strings
        .iter()
        .filter_map(|s| {
            if let Some((name, v)) = s
                .strip_prefix("io.systemd.credential.binary:")
                .and_then(|r| r.split_once('='))
            {
                Some(format!(" systemd.set_credential_binary={name}:{v}"))
            } else {
                let (name, v) = s.strip_prefix("io.systemd.credential:")?.split_once('=')?;
                Some(format!(" systemd.set_credential_binary={name}:{}", b64(v)))
            }
        })
        .collect()
}

/// Venus needs blob resources mapped through `hostmem` (and the shared RAM above);
/// virtio-gpu-gl also needs a GL display.
fn gpu_args(gpu: &Gpu) -> Vec<String> {
    let display = match &gpu.display {
        Display::EglHeadless { render_node } => {
            format!("egl-headless,rendernode={}", opt(render_node))
        }
        Display::SdlOffscreen => "sdl,gl=on".into(),
    };
    vec![
        "-device".into(),
        format!(
            "virtio-gpu-gl-pci,venus=on,blob=on,hostmem={}M",
            gpu.hostmem_bytes >> 20
        ),
        "-display".into(),
        display,
        // One line per blob, in the log (`-D`): what a Mac host's 16 KiB mappings would make of
        // this guest. A trace `file=` would take QEMU's log, and its messages, away from `-D`.
        "-trace".into(),
        format!("enable={}", venus::blobs::TRACE_EVENT),
    ]
}

/// Environment QEMU needs besides its arguments: SDL's offscreen video driver renders without an
/// X server or Wayland compositor.
pub fn environment(c: &QemuConfig) -> Vec<(&'static str, &'static str)> {
    match c.gpu.as_ref().map(|g| &g.display) {
        Some(Display::SdlOffscreen) => vec![("SDL_VIDEODRIVER", "offscreen")],
        _ => vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> QemuConfig {
        QemuConfig {
            name: "dev".into(),
            arch: Arch::X86_64,
            cpus: 2,
            memory_mib: 2048,
            accel: Accel::Tcg,
            kernel: "/img/boot/vmlinuz".into(),
            initrd: "/img/boot/initrd.img".into(),
            cmdline: "root=PARTUUID=x rw".into(),
            disk: "/m/dev/disk.raw".into(),
            net_socket: "/run/c/dev/net.sock".into(),
            mac: "5a:94:ef:e4:0c:ee".into(),
            qmp_socket: "/run/c/dev/qmp.sock".into(),
            ready_socket: "/run/c/dev/ready.sock".into(),
            console_log: "/m/dev/console.log".into(),
            log: "/m/dev/vmm.log".into(),
            pidfile: "/m/dev/qemu.pid".into(),
            oem_strings: vec![
                "io.systemd.credential:system.hostname=dev".into(),
                "a,b".into(),
            ],
            gpu: None,
            shares: vec![],
        }
    }

    fn pairs(argv: &[String]) -> Vec<(String, String)> {
        argv.windows(2)
            .map(|w| (w[0].clone(), w[1].clone()))
            .collect()
    }

    #[test]
    fn tcg_machine_boots_the_image_kernel_with_gvproxy_qmp_and_ready_channel() {
        let argv = command_line(&config());
        let p = pairs(&argv);
        let has = |k: &str, v: &str| p.contains(&(k.to_owned(), v.to_owned()));
        assert!(has("-accel", "tcg,thread=single") && has("-cpu", "max"));
        assert!(has("-smp", "2") && has("-m", "2048M"));
        assert!(has("-kernel", "/img/boot/vmlinuz") && has("-initrd", "/img/boot/initrd.img"));
        assert!(has("-append", "root=PARTUUID=x rw console=ttyS0 panic=-1"));
        assert!(
            argv.contains(&"-no-reboot".to_owned()),
            "a panicked guest ends QEMU"
        );
        assert!(has(
            "-drive",
            "file=/m/dev/disk.raw,if=virtio,format=raw,discard=unmap,werror=enospc,rerror=report"
        ));
        assert!(has(
            "-netdev",
            "stream,id=net0,addr.type=unix,addr.path=/run/c/dev/net.sock"
        ));
        assert!(has(
            "-device",
            "virtio-net-pci,netdev=net0,mac=5a:94:ef:e4:0c:ee"
        ));
        assert!(has(
            "-chardev",
            "socket,id=ready,path=/run/c/dev/ready.sock"
        ));
        assert!(has(
            "-device",
            "virtserialport,chardev=ready,name=carbon.ready"
        ));
        assert!(has("-qmp", "unix:/run/c/dev/qmp.sock,server=on,wait=off"));
        assert!(has("-pidfile", "/m/dev/qemu.pid"));
        assert!(has(
            "-smbios",
            "type=11,value=io.systemd.credential:system.hostname=dev"
        ));
        assert!(has("-smbios", "type=11,value=a,,b"), "commas are escaped");
        assert!(argv.contains(&"-daemonize".to_owned()));
        assert!(has("-display", "none"), "no GPU, no display");
        assert!(!argv.iter().any(|a| a.contains("virtio-gpu")));
        assert!(environment(&config()).is_empty());
    }

    #[test]
    fn gpu_machine_gets_venus_with_blob_hostmem_shared_memory_and_a_gl_display() {
        let mut c = config();
        c.gpu = Some(Gpu {
            hostmem_bytes: 8 << 30,
            display: Display::SdlOffscreen,
        });
        let argv = command_line(&c);
        let p = pairs(&argv);
        let has = |k: &str, v: &str| p.contains(&(k.to_owned(), v.to_owned()));
        assert!(has(
            "-device",
            "virtio-gpu-gl-pci,venus=on,blob=on,hostmem=8192M"
        ));
        assert!(has(
            "-object",
            "memory-backend-memfd,id=mem,size=2048M,share=on"
        ));
        assert!(has("-machine", "memory-backend=mem"));
        assert!(has("-display", "sdl,gl=on") && !has("-display", "none"));
        assert_eq!(environment(&c), [("SDL_VIDEODRIVER", "offscreen")]);
        // Every blob the guest creates is logged (in the -D log), for the Mac page audit.
        assert!(has("-trace", "enable=virtio_gpu_cmd_res_create_blob"));

        c.gpu = Some(Gpu {
            hostmem_bytes: 1 << 30,
            display: Display::EglHeadless {
                render_node: "/dev/dri/renderD128".into(),
            },
        });
        let p = pairs(&command_line(&c));
        assert!(p.contains(&(
            "-display".into(),
            "egl-headless,rendernode=/dev/dri/renderD128".into()
        )));
        assert!(environment(&c).is_empty());
    }

    #[test]
    fn shared_folders_get_vhost_user_fs_devices_on_shared_memory() {
        let mut c = config();
        assert!(!command_line(&c).iter().any(|a| a.contains("memfd")));
        c.shares = vec![
            crate::Share {
                dir: "/home/u".into(),
                tag: "carbon-vol0".into(),
                socket: "/run/c/dev/fs0.sock".into(),
                hidden: vec![],
            },
            crate::Share {
                dir: "/w".into(),
                tag: "carbon-vol1".into(),
                socket: "/run/c/dev/fs1.sock".into(),
                hidden: vec![],
            },
        ];
        let p = pairs(&command_line(&c));
        let has = |k: &str, v: &str| p.contains(&(k.to_owned(), v.to_owned()));
        assert!(has("-chardev", "socket,id=fs0,path=/run/c/dev/fs0.sock"));
        assert!(has(
            "-device",
            "vhost-user-fs-pci,chardev=fs0,tag=carbon-vol0"
        ));
        assert!(has("-chardev", "socket,id=fs1,path=/run/c/dev/fs1.sock"));
        assert!(has(
            "-device",
            "vhost-user-fs-pci,chardev=fs1,tag=carbon-vol1"
        ));
        assert!(has(
            "-object",
            "memory-backend-memfd,id=mem,size=2048M,share=on"
        ));
        assert!(has("-machine", "memory-backend=mem"));
        assert!(has("-display", "none"));
    }

    #[test]
    fn commas_in_paths_are_escaped_in_option_values() {
        let mut c = config();
        c.disk = "/m/a,b/disk.raw".into();
        c.qmp_socket = "/r/a,b/qmp.sock".into();
        let p = pairs(&command_line(&c));
        assert!(p.contains(&(
            "-drive".into(),
            "file=/m/a,,b/disk.raw,if=virtio,format=raw,discard=unmap,werror=enospc,rerror=report".into()
        )));
        assert!(p.contains(&(
            "-qmp".into(),
            "unix:/r/a,,b/qmp.sock,server=on,wait=off".into()
        )));
        assert_eq!(marker(&c.disk), "file=/m/a,,b/disk.raw,");
    }

    #[test]
    fn aarch64_gets_its_credentials_on_the_kernel_command_line() {
        let mut c = config();
        c.oem_strings = vec![
            "io.systemd.credential:system.hostname=dev".into(),
            "io.systemd.credential.binary:fstab.extra=Zm9v".into(),
        ];
        let append = |c: &QemuConfig| {
            let argv = command_line(c);
            let i = argv.iter().position(|a| a == "-append").unwrap();
            argv[i + 1].clone()
        };
        assert!(!append(&c).contains("set_credential"), "x86_64: SMBIOS");
        c.arch = Arch::Aarch64;
        let line = append(&c);
        assert!(
            line.ends_with(
                " systemd.set_credential_binary=system.hostname:ZGV2 \
                 systemd.set_credential_binary=fstab.extra:Zm9v"
            ),
            "{line}"
        );
    }

    #[test]
    fn aarch64_gets_the_virt_machine_and_its_serial_console() {
        let mut c = config();
        c.arch = Arch::Aarch64;
        let p = pairs(&command_line(&c));
        assert!(p.contains(&("-machine".into(), "virt,gic-version=max".into())));
        assert!(
            p.contains(&("-accel".into(), "tcg".into())),
            "multi-threaded TCG on aarch64"
        );
        assert!(p.iter().any(|(k, v)| k == "-append"
            && v.starts_with("root=PARTUUID=x rw console=ttyAMA0 panic=-1 ")));
        assert_eq!(Arch::Aarch64.qemu(), "qemu-system-aarch64");
    }

    #[test]
    fn kvm_uses_the_host_cpu() {
        let mut c = config();
        c.accel = Accel::Kvm;
        let p = pairs(&command_line(&c));
        assert!(p.contains(&("-accel".into(), "kvm".into())));
        assert!(p.contains(&("-cpu".into(), "host".into())));
    }
}
