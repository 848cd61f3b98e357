//! The guest's initrd, made on the build host from the root being built: the root's static
//! busybox, the kernel modules that mount the root (configs/guest/initrd/modules, with what they
//! depend on), and an /init that mounts the root and hands over to systemd
//! (configs/guest/initrd/init). It replaces initramfs-tools' initrd, which is made by running
//! the guest's own tools (emulated, for another architecture's image: minutes) and boots
//! through udev (seconds more at every boot under TCG).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Cursor, Read};
use std::path::{Path, PathBuf};

const INIT: &str = include_str!("../../../configs/guest/initrd/init");
const MODULES: &str = include_str!("../../../configs/guest/initrd/modules");
/// busybox-static's binary in the root.
const BUSYBOX: &str = "usr/bin/busybox";

#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] io::Error),
    #[error("the root's kernel {0} has no module {1} and does not build it in")]
    NoModule(String, String),
    #[error("cannot decompress kernel module {0}")]
    Decompress(PathBuf, #[source] io::Error),
    #[error("cannot write the initrd {0}")]
    Write(PathBuf, #[source] io::Error),
}

/// A kernel's modules as depmod described them: `modules.dep`, `modules.softdep`,
/// `modules.alias` and `modules.builtin`.
struct Depmod {
    /// Module name -> (path under the modules directory, hard dependencies' names).
    modules: BTreeMap<String, (String, Vec<String>)>,
    /// Module name -> soft dependencies to load first (names or aliases).
    pre: BTreeMap<String, Vec<String>>,
    /// Alias -> module names.
    aliases: BTreeMap<String, Vec<String>>,
    builtin: BTreeSet<String>,
}

/// `kernel/fs/ext4/ext4.ko.xz` -> `ext4`; `-` and `_` are one in module names.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

impl Depmod {
    fn parse(dep: &str, softdep: &str, alias: &str, builtin: &str) -> Depmod {
        let modules = dep
            .lines()
            .filter_map(|l| {
                let (path, deps) = l.split_once(':')?;
                let deps = deps.split_whitespace().map(module_name).collect();
                Some((module_name(path), (path.to_owned(), deps)))
            })
            .collect();
        let pre = softdep
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                (w.next()? == "softdep").then_some(())?;
                let name = w.next()?.replace('-', "_");
                let pre: Vec<String> = w
                    .skip_while(|t| *t != "pre:")
                    .skip(1)
                    .take_while(|t| !t.ends_with(':'))
                    .map(str::to_owned)
                    .collect();
                Some((name, pre))
            })
            .collect();
        let mut aliases: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for l in alias.lines() {
            let mut w = l.split_whitespace();
            if let (Some("alias"), Some(a), Some(m)) = (w.next(), w.next(), w.next()) {
                aliases
                    .entry(a.to_owned())
                    .or_default()
                    .push(m.replace('-', "_"));
            }
        }
        let builtin = builtin.lines().map(module_name).collect();
        Depmod {
            modules,
            pre,
            aliases,
            builtin,
        }
    }

    /// The modules to load for `wanted`, each after what it needs; built-in ones are left out.
    /// A soft dependency that names nothing loadable is skipped (it may be built in).
    fn load_order(&self, kernel: &str, wanted: &[&str]) -> Result<Vec<String>, InitrdError> {
        let mut order = Vec::new();
        for w in wanted {
            let name = w.replace('-', "_");
            if self.builtin.contains(&name) {
                continue;
            }
            if !self.modules.contains_key(&name) {
                return Err(InitrdError::NoModule(kernel.into(), name));
            }
            self.visit(&name, &mut order);
        }
        Ok(order)
    }

    fn visit(&self, name: &str, order: &mut Vec<String>) {
        if order.iter().any(|m| m == name) || self.builtin.contains(name) {
            return;
        }
        let Some((_, deps)) = self.modules.get(name) else {
            return;
        };
        for soft in self.pre.get(name).into_iter().flatten() {
            let targets = match self.aliases.get(soft.as_str()) {
                Some(names) => names.clone(),
                None => vec![soft.replace('-', "_")],
            };
            for t in targets {
                self.visit(&t, order);
            }
        }
        // modules.dep lists the nearest dependency first: the farthest loads first.
        for d in deps.iter().rev() {
            self.visit(d, order);
        }
        order.push(name.to_owned());
    }
}

/// A module file's contents, decompressed (busybox's insmod takes plain ELF).
fn module_bytes(path: &Path) -> Result<Vec<u8>, InitrdError> {
    let raw = fs::read(path).map_err(|e| InitrdError::Read(path.into(), e))?;
    let name = path.to_string_lossy();
    let bad = |e: io::Error| InitrdError::Decompress(path.into(), e);
    if name.ends_with(".xz") {
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut io::BufReader::new(raw.as_slice()), &mut out)
            .map_err(|e| bad(io::Error::new(io::ErrorKind::InvalidData, e.to_string())))?;
        Ok(out)
    } else if name.ends_with(".zst") {
        zstd::decode_all(raw.as_slice()).map_err(bad)
    } else if name.ends_with(".gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(bad)?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// Writes the initrd for the root's kernel `version` to `out` (an uncompressed newc cpio:
/// a few MiB that need no decompression at boot).
pub fn build(root: &Path, version: &str, out: &Path) -> Result<(), InitrdError> {
    let mods = root.join("usr/lib/modules").join(version);
    let read = |f: &str| {
        let p = mods.join(f);
        fs::read_to_string(&p).map_err(|e| InitrdError::Read(p, e))
    };
    let depmod = Depmod::parse(
        &read("modules.dep")?,
        &read("modules.softdep").unwrap_or_default(),
        &read("modules.alias").unwrap_or_default(),
        &read("modules.builtin").unwrap_or_default(),
    );
    let wanted: Vec<&str> = MODULES
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let order = depmod.load_order(version, &wanted)?;

    let busybox = root.join(BUSYBOX);
    let busybox = fs::read(&busybox).map_err(|e| InitrdError::Read(busybox, e))?;
    let dir = |name: &str| (entry(name, 0o040755), Vec::new());
    let mut files = vec![
        dir("bin"),
        dir("dev"),
        dir("lib"),
        dir("lib/modules"),
        dir("proc"),
        dir("root"),
        dir("sys"),
        // The console the kernel opens for /init before anything is mounted.
        (
            entry("dev/console", 0o020600).rdev_major(5).rdev_minor(1),
            Vec::new(),
        ),
        (entry("bin/busybox", 0o100755), busybox),
        (entry("init", 0o100755), INIT.as_bytes().to_vec()),
        (
            entry("lib/modules/order", 0o100644),
            order
                .iter()
                .map(|m| format!("{m}\n"))
                .collect::<String>()
                .into_bytes(),
        ),
    ];
    for m in &order {
        let (path, _) = &depmod.modules[m];
        files.push((
            entry(&format!("lib/modules/{m}.ko"), 0o100644),
            module_bytes(&mods.join(path))?,
        ));
    }
    let write = |e| InitrdError::Write(out.into(), e);
    let f = fs::File::create(out).map_err(write)?;
    let f = cpio::write_cpio(
        files.into_iter().map(|(b, data)| (b, Cursor::new(data))),
        io::BufWriter::new(f),
    )
    .map_err(write)?;
    f.into_inner()
        .map_err(|e| write(e.into_error()))?
        .sync_all()
        .map_err(write)
}

/// An entry owned by root, with `mode` (file type included) and no timestamp (reproducible).
fn entry(name: &str, mode: u32) -> cpio::NewcBuilder {
    cpio::NewcBuilder::new(name)
        .mode(mode)
        .uid(0)
        .gid(0)
        .nlink(1)
        .mtime(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// From Debian trixie's 6.12 amd64 kernel: virtio_pci built in, ext4 a module with hard
    /// dependencies and a soft one on an alias that two modules provide.
    fn depmod() -> Depmod {
        Depmod::parse(
            "kernel/fs/mbcache.ko.xz:\n\
             kernel/fs/ext4/ext4.ko.xz: kernel/lib/crc16.ko.xz kernel/fs/mbcache.ko.xz kernel/fs/jbd2/jbd2.ko.xz\n\
             kernel/fs/jbd2/jbd2.ko.xz:\n\
             kernel/crypto/crc32c_generic.ko.xz:\n\
             kernel/arch/x86/crypto/crc32c-intel.ko.xz:\n\
             kernel/lib/crc16.ko.xz:\n\
             kernel/drivers/virtio/virtio_mmio.ko.xz:\n\
             kernel/drivers/block/virtio_blk.ko.xz:\n",
            "# Soft dependencies extracted from modules themselves.\n\
             softdep ext4 pre: crypto-crc32c\n\
             softdep jbd2 pre: crypto-crc32c\n",
            "alias crypto-crc32c crc32c_generic\nalias crypto-crc32c crc32c_intel\n",
            "kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_pci.ko\n",
        )
    }

    #[test]
    fn modules_load_after_what_they_need_and_built_ins_are_left_out() {
        let order = depmod()
            .load_order("6.12", &["virtio_pci", "virtio_mmio", "virtio_blk", "ext4"])
            .unwrap();
        assert_eq!(
            order,
            [
                "virtio_mmio",
                "virtio_blk",
                "crc32c_generic",
                "crc32c_intel",
                "jbd2",
                "mbcache",
                "crc16",
                "ext4"
            ]
        );
    }

    #[test]
    fn a_module_the_kernel_lacks_is_named() {
        let e = depmod().load_order("6.12", &["virtio_scsi"]).unwrap_err();
        assert!(e.to_string().contains("virtio_scsi"), "{e}");
    }

    #[test]
    fn the_initrd_is_a_cpio_with_init_busybox_and_the_modules() {
        let root = tempfile::tempdir().unwrap();
        let mods = root.path().join("usr/lib/modules/6.12");
        fs::create_dir_all(mods.join("kernel")).unwrap();
        fs::create_dir_all(root.path().join("usr/bin")).unwrap();
        fs::write(root.path().join(BUSYBOX), b"\x7fELF busybox").unwrap();
        fs::write(
            mods.join("modules.dep"),
            "kernel/virtio_blk.ko.zst:\nkernel/virtio_mmio.ko:\nkernel/ext4.ko.zst:\n\
             kernel/virtio_net.ko: kernel/net_failover.ko kernel/failover.ko\n\
             kernel/net_failover.ko: kernel/failover.ko\nkernel/failover.ko:\n\
             kernel/virtio_console.ko:\n\
             kernel/nf_tables.ko:\nkernel/nft_reject_inet.ko: kernel/nf_tables.ko\n\
             kernel/nft_socket.ko: kernel/nf_tables.ko\n",
        )
        .unwrap();
        fs::write(
            mods.join("modules.builtin"),
            "kernel/virtio_pci.ko\nkernel/vmw_vsock_virtio_transport.ko\n",
        )
        .unwrap();
        for m in [
            "virtio_net",
            "net_failover",
            "failover",
            "virtio_console",
            "nf_tables",
            "nft_reject_inet",
            "nft_socket",
        ] {
            fs::write(mods.join(format!("kernel/{m}.ko")), format!("\x7fELF {m}")).unwrap();
        }
        fs::write(
            mods.join("kernel/virtio_blk.ko.zst"),
            zstd::encode_all(&b"\x7fELF blk"[..], 3).unwrap(),
        )
        .unwrap();
        fs::write(mods.join("kernel/virtio_mmio.ko"), b"\x7fELF mmio").unwrap();
        fs::write(
            mods.join("kernel/ext4.ko.zst"),
            zstd::encode_all(&b"\x7fELF ext4"[..], 3).unwrap(),
        )
        .unwrap();
        let out = root.path().join("initrd.img");
        build(root.path(), "6.12", &out).unwrap();

        let mut r = fs::File::open(&out).unwrap();
        let mut seen = BTreeMap::new();
        loop {
            let mut e = cpio::NewcReader::new(r).unwrap();
            if e.entry().is_trailer() {
                break;
            }
            let (name, mode) = (e.entry().name().to_owned(), e.entry().mode());
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            seen.insert(name, (mode, data));
            r = e.finish().unwrap();
        }
        assert_eq!(seen["init"].0, 0o100755);
        assert!(seen["init"].1.starts_with(b"#!/bin/busybox sh"));
        assert_eq!(seen["bin/busybox"].1, b"\x7fELF busybox");
        assert_eq!(seen["lib/modules/virtio_blk.ko"].1, b"\x7fELF blk");
        assert_eq!(seen["lib/modules/ext4.ko"].1, b"\x7fELF ext4");
        assert_eq!(
            seen["lib/modules/order"].1,
            b"virtio_mmio\nvirtio_blk\next4\nfailover\nnet_failover\nvirtio_net\nvirtio_console\n\
              nf_tables\nnft_reject_inet\nnft_socket\n"
        );
        assert_eq!(seen["dev/console"].0, 0o020600);
    }

    #[test]
    fn a_root_without_busybox_is_named() {
        let root = tempfile::tempdir().unwrap();
        let mods = root.path().join("usr/lib/modules/6.12");
        fs::create_dir_all(&mods).unwrap();
        fs::write(
            mods.join("modules.dep"),
            "kernel/virtio_pci.ko:\nkernel/virtio_mmio.ko:\nkernel/virtio_blk.ko:\nkernel/ext4.ko:\n\
             kernel/virtio_net.ko:\nkernel/virtio_console.ko:\nkernel/vmw_vsock_virtio_transport.ko:\n\
             kernel/nf_tables.ko:\nkernel/nft_reject_inet.ko:\nkernel/nft_socket.ko:\n",
        )
        .unwrap();
        let e = build(root.path(), "6.12", &root.path().join("i")).unwrap_err();
        assert!(e.to_string().contains("usr/bin/busybox"), "{e}");
    }
}
