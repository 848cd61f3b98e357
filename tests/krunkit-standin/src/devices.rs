//! `--device KIND,key=value,...` as krunkit parses it (src/virtio.rs, src/cmdline.rs), and what
//! libkrun sets up for each device before the guest runs.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::path::PathBuf;
use std::str::FromStr;

/// The first datagram krunkit sends gvproxy in vfkit mode.
const VFKIT_MAGIC: &[u8] = b"VFKT";

#[derive(Debug, Clone)]
pub enum Device {
    Blk {
        path: PathBuf,
        /// `raw` or `qcow2`.
        format: String,
    },
    Rng,
    Serial {
        log: PathBuf,
    },
    Vsock {
        port: u32,
        socket: PathBuf,
        connect: bool,
    },
    Net {
        socket: Option<PathBuf>,
        vfkit_magic: bool,
        mac: String,
    },
    Fs {
        dir: PathBuf,
        tag: String,
    },
    /// virtio-gpu and virtio-input are parsed and ignored.
    Ignored,
}

impl Device {
    /// The device as krunkit accepted it (`KRUNKIT_STANDIN_CHECK`).
    pub fn describe(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Device::Blk { path, format } => {
                json!({"kind": "virtio-blk", "path": path, "format": format})
            }
            Device::Rng => json!({"kind": "virtio-rng"}),
            Device::Serial { log } => json!({"kind": "virtio-serial", "log": log}),
            Device::Vsock {
                port,
                socket,
                connect,
            } => {
                json!({"kind": "virtio-vsock", "port": port, "socket": socket, "connect": connect})
            }
            Device::Net {
                socket,
                vfkit_magic,
                mac,
            } => {
                json!({"kind": "virtio-net", "socket": socket, "vfkit_magic": vfkit_magic, "mac": mac})
            }
            Device::Fs { dir, tag } => json!({"kind": "virtio-fs", "dir": dir, "tag": tag}),
            Device::Ignored => json!({"kind": "ignored"}),
        }
    }
}

/// krunkit's `key[=value],...` parsing: no escaping, each key once.
fn parse_args(s: &str) -> Result<HashMap<String, String>, String> {
    let mut map = HashMap::new();
    if s.is_empty() {
        return Ok(map);
    }
    for arg in s.split(',') {
        let parts: Vec<&str> = arg.split('=').collect();
        let value = match parts.len() {
            1 => String::new(),
            2 => parts[1].to_owned(),
            _ => return Err(format!("invalid argument format: {arg}")),
        };
        if map.insert(parts[0].to_owned(), value).is_some() {
            return Err(format!("argument {arg} is only expected once"));
        }
    }
    Ok(map)
}

struct Args {
    label: &'static str,
    map: HashMap<String, String>,
}

impl Args {
    fn new(label: &'static str, s: &str, required: &[&str]) -> Result<Args, String> {
        let map = parse_args(s)?;
        if let Some(r) = required.iter().find(|r| !map.contains_key(**r)) {
            return Err(format!("{label} is missing argument: {r}"));
        }
        Ok(Args { label, map })
    }

    fn take(&mut self, key: &str) -> Option<String> {
        self.map.remove(key)
    }

    /// A flag without a value (`listen`, `connect`).
    fn flag(&mut self, key: &str) -> Result<bool, String> {
        match self.map.remove(key) {
            None => Ok(false),
            Some(v) if v.is_empty() => Ok(true),
            Some(v) => Err(format!(
                "unexpected value for {} argument: {key}={v}",
                self.label
            )),
        }
    }

    fn done(self) -> Result<(), String> {
        if self.map.is_empty() {
            return Ok(());
        }
        let mut unknown: Vec<String> = self.map.iter().map(|(k, v)| format!("{k}={v}")).collect();
        unknown.sort();
        Err(format!("unknown {} arguments: {unknown:?}", self.label))
    }
}

fn boolean(v: &str) -> Result<bool, String> {
    match v {
        "true" | "on" => Ok(true),
        "false" | "off" => Ok(false),
        _ => Err(format!("invalid boolean value {v}")),
    }
}

impl FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Device, String> {
        let (kind, rest) = s.split_once(',').unwrap_or((s, ""));
        match kind {
            "virtio-blk" => {
                let mut a = Args::new("virtio-blk", rest, &["path"])?;
                let path = a.take("path").unwrap_or_default().into();
                let format = a
                    .take("format")
                    .unwrap_or_else(|| "raw".into())
                    .to_lowercase();
                if !matches!(format.as_str(), "raw" | "qcow2") {
                    return Err("unsupported disk image format".into());
                }
                for k in ["serial", "id", "sync"] {
                    a.take(k);
                }
                a.done()?;
                Ok(Device::Blk { path, format })
            }
            // krunkit ignores anything after "virtio-rng".
            "virtio-rng" => Ok(Device::Rng),
            "virtio-serial" => {
                let mut a = Args::new("virtio-serial", rest, &["logFilePath"])?;
                let log = a.take("logFilePath").unwrap_or_default().into();
                a.done()?;
                Ok(Device::Serial { log })
            }
            "virtio-vsock" => {
                let mut a = Args::new("virtio-vsock", rest, &["port", "socketURL"])?;
                let port = a
                    .take("port")
                    .unwrap_or_default()
                    .parse()
                    .map_err(|_| "port argument invalid".to_owned())?;
                let socket = a.take("socketURL").unwrap_or_default().into();
                let connect = a.flag("connect")?;
                if a.flag("listen")? && connect {
                    return Err(
                        "virtio-vsock argument \"listen\" and \"connect\" are mutually \
                                exclusive and cannot be used together."
                            .into(),
                    );
                }
                a.done()?;
                Ok(Device::Vsock {
                    port,
                    socket,
                    connect,
                })
            }
            "virtio-net" => parse_net(rest),
            "virtio-fs" => {
                let mut a = Args::new("virtio-fs", rest, &["sharedDir", "mountTag"])?;
                let dir = a.take("sharedDir").unwrap_or_default().into();
                let tag = a.take("mountTag").unwrap_or_default();
                if let Some(p) = a.take("permissionSemantics")
                    && !matches!(p.to_lowercase().as_str(), "complete" | "simplified")
                {
                    return Err("unsupported permission semantics".into());
                }
                a.done()?;
                Ok(Device::Fs { dir, tag })
            }
            "virtio-gpu" => {
                let mut a = Args::new("virtio-gpu", rest, &["height", "width"])?;
                for k in ["width", "height"] {
                    a.take(k)
                        .unwrap_or_default()
                        .parse::<u32>()
                        .map_err(|_| format!("GPU {k} argument out of range"))?;
                }
                a.done()?;
                Ok(Device::Ignored)
            }
            "virtio-input" => {
                let a = parse_args(rest)?;
                match a.into_iter().collect::<Vec<_>>().as_slice() {
                    [(k, v)] if v.is_empty() && (k == "keyboard" || k == "pointing") => {
                        Ok(Device::Ignored)
                    }
                    _ => Err(format!("invalid virtio-input config: {rest}")),
                }
            }
            _ => Err(format!("invalid virtio device label specified: {kind}")),
        }
    }
}

fn parse_net(rest: &str) -> Result<Device, String> {
    let mut a = Args::new("virtio-net", rest, &["mac"])?;
    let mac = a.take("mac").unwrap_or_default();
    let octets = mac.split(':').collect::<Vec<_>>();
    if octets.len() != 6 || octets.iter().any(|o| u8::from_str_radix(o, 16).is_err()) {
        return Err("virtio-net unable to parse address from \"mac\" argument".into());
    }
    let unix_path = a.take("unixSocketPath");
    let kind = a.take("type");
    let device = match (unix_path, kind) {
        (Some(_), Some(_)) => {
            return Err(
                "virtio-net \"type\" and \"unixSocketPath\" are mutually exclusive and \
                        cannot be used together."
                    .into(),
            );
        }
        (None, None) => {
            return Err("virtio-net device is missing \"type\" or \"unixSocketPath\"".into());
        }
        (Some(p), None) => Device::Net {
            socket: Some(p.into()),
            vfkit_magic: true,
            mac,
        },
        (None, Some(t)) => {
            let gram = match t.as_str() {
                "unixgram" => true,
                "unixstream" => false,
                _ => return Err(format!("virtio-net unsupported \"type\" input {t}")),
            };
            let path = a.take("path");
            let fd = a.take("fd");
            if path.is_some() && fd.is_some() {
                return Err(
                    "virtio-net device arguments \"path\" and \"fd\" are mutually \
                            exclusive and cannot be used together"
                        .into(),
                );
            }
            if let Some(o) = a.take("offloading") {
                boolean(&o)?;
            }
            let mut vfkit_magic = false;
            if let Some(m) = a.take("vfkitMagic") {
                if !gram {
                    return Err(
                        "virtio-net only \"type=unixgram\" supports the vfkitMagic argument".into(),
                    );
                }
                vfkit_magic = boolean(&m)?;
            }
            Device::Net {
                socket: path.filter(|_| gram).map(PathBuf::from),
                vfkit_magic,
                mac,
            }
        }
    };
    a.done()?;
    Ok(device)
}

/// `--bootloader efi,variable-store=PATH,create`: checked, then ignored.
#[derive(Debug, Clone)]
pub struct Bootloader;

impl FromStr for Bootloader {
    type Err = String;

    fn from_str(s: &str) -> Result<Bootloader, String> {
        let mut a = Args::new("bootloader", s, &["efi", "variable-store", "create"])?;
        for k in ["efi", "create"] {
            if let Some(v) = a.take(k).filter(|v| !v.is_empty()) {
                return Err(format!("unknown bootloader argument: {k}={v}"));
            }
        }
        a.take("variable-store");
        a.done().map(|()| Bootloader)
    }
}

/// What krunkit checks across devices.
pub fn check_set(devices: &[Device]) -> Result<(), String> {
    if !devices.iter().any(|d| matches!(d, Device::Blk { .. })) {
        return Err("at least one virtio-blk device (the root disk) is required".into());
    }
    let mut ports: Vec<u32> = devices
        .iter()
        .filter_map(|d| match d {
            Device::Vsock { port, .. } => Some(*port),
            _ => None,
        })
        .collect();
    ports.sort_unstable();
    if let Some(w) = ports.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("vsock port {} is specified more than once", w[0]));
    }
    Ok(())
}

/// The devices as libkrun has set them up, for the VM.
pub struct Attached {
    /// Disks in order (the first is the root disk the firmware boots) and their formats.
    pub disks: Vec<(PathBuf, String)>,
    pub rng: bool,
    /// The virtio console's log file.
    pub console: Option<PathBuf>,
    /// The network's datagram socket (connected to gvproxy), and the guest's MAC address.
    pub net: Option<(OwnedFd, String)>,
    /// Guest-to-host vsock ports and the host sockets they reach.
    pub vsock_listen: Vec<(u32, PathBuf)>,
    /// Host-to-guest vsock ports and krunkit's listeners for them.
    pub vsock_connect: Vec<(u32, UnixListener)>,
    /// Shared directories and their virtio-fs tags.
    pub shares: Vec<(PathBuf, String)>,
}

/// Sets the devices up as libkrun does before the guest runs.
pub fn attach(devices: Vec<Device>) -> Result<Attached, String> {
    let mut a = Attached {
        disks: Vec::new(),
        rng: false,
        console: None,
        net: None,
        vsock_listen: Vec::new(),
        vsock_connect: Vec::new(),
        shares: Vec::new(),
    };
    for d in devices {
        match d {
            Device::Blk { path, format } => {
                std::fs::File::options()
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| {
                        format!("unable to set virtio-blk disk for {}: {e}", path.display())
                    })?;
                a.disks.push((path, format));
            }
            Device::Rng => a.rng = true,
            Device::Serial { log } => {
                // libkrun truncates the console log at start.
                std::fs::File::create(&log)
                    .map_err(|e| format!("unable to open console log {}: {e}", log.display()))?;
                a.console = Some(log);
            }
            Device::Vsock {
                socket,
                connect: true,
                port,
            } => {
                // libkrun creates the host-side listener and refuses an existing file.
                let l = UnixListener::bind(&socket).map_err(|e| {
                    format!(
                        "unable to add vsock port {port} for path {}: {e}",
                        socket.display()
                    )
                })?;
                a.vsock_connect.push((port, l));
            }
            Device::Vsock {
                socket,
                connect: false,
                port,
            } => a.vsock_listen.push((port, socket)),
            Device::Net {
                socket: Some(path),
                vfkit_magic,
                mac,
            } => {
                // libkrun binds its end next to gvproxy's socket (net/unixgram.rs): gvproxy
                // answers to that address and refuses an unnamed peer.
                let local = PathBuf::from(format!("{}-krun.sock", path.display()));
                let _ = std::fs::remove_file(&local);
                let s = UnixDatagram::bind(&local)
                    .map_err(|e| format!("virtio-net unable to bind {}: {e}", local.display()))?;
                s.connect(&path).map_err(|e| {
                    format!("virtio-net unable to connect to {}: {e}", path.display())
                })?;
                if vfkit_magic {
                    s.send(VFKIT_MAGIC).map_err(|e| e.to_string())?;
                }
                a.net = Some((OwnedFd::from(s), mac));
            }
            Device::Net { socket: None, .. } => {
                return Err(
                    "the stand-in attaches virtio-net to a unixgram path only (no fd, no unixstream)"
                        .into(),
                );
            }
            Device::Fs { dir, tag } => a.shares.push((dir, tag)),
            Device::Ignored => {}
        }
    }
    Ok(a)
}
