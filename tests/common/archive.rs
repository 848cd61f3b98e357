//! Artifacts for tests: a tiny but real one made by `image pack` from a synthetic root, and
//! hand-crafted tar streams with arbitrary names, types and sizes for the hostile cases.

use serde_json::{Value, json};
use sha2::Digest;
use std::io::Write;
use std::path::Path;

pub struct Entry {
    /// Raw tar name, written byte for byte (no validation: hostile names must get through).
    pub name: String,
    pub data: Vec<u8>,
    pub kind: tar::EntryType,
    pub link: Option<String>,
    /// The size the header states when it is not the data's (a pax `size` record says the real
    /// one, or the header lies); the data is written in full either way.
    pub header_size: Option<u64>,
    /// Raw bytes laid over the header at an offset before its checksum is computed.
    pub patch: Option<(usize, Vec<u8>)>,
}

impl Entry {
    pub fn file(name: &str, data: &[u8]) -> Entry {
        Entry {
            name: name.into(),
            data: data.to_vec(),
            kind: tar::EntryType::Regular,
            link: None,
            header_size: None,
            patch: None,
        }
    }

    /// A pax extended header (`x`) with `records` for the member that follows it.
    pub fn pax(records: &[(&str, &[u8])]) -> Entry {
        let mut data = Vec::new();
        for (key, value) in records {
            // "LEN key=value\n", where LEN counts itself.
            let body = [b" ", key.as_bytes(), b"=", value, b"\n"].concat();
            let mut len = body.len() + 1;
            while (len.to_string().len() + body.len()) != len {
                len += 1;
            }
            data.extend_from_slice(len.to_string().as_bytes());
            data.extend_from_slice(&body);
        }
        Entry {
            kind: tar::EntryType::XHeader,
            ..Entry::file("PaxHeaders/member", &data)
        }
    }

    /// A GNU long name (`L`) for the member that follows it.
    pub fn gnu_long_name(name: &[u8]) -> Entry {
        Entry {
            data: [name, b"\0"].concat(),
            kind: tar::EntryType::GNULongName,
            ..Entry::file("././@LongLink", b"")
        }
    }

    pub fn special(name: &str, kind: tar::EntryType, link: Option<&str>) -> Entry {
        Entry {
            name: name.into(),
            data: vec![],
            kind,
            link: link.map(str::to_owned),
            header_size: None,
            patch: None,
        }
    }
}

pub fn sha256(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

/// The three boot members every manifest needs, with small fake contents.
pub fn boot_members() -> Vec<(String, Vec<u8>)> {
    vec![
        ("boot/vmlinuz".into(), b"kernel".to_vec()),
        ("boot/initrd.img".into(), b"initrd".to_vec()),
        ("disk.raw".into(), vec![0x55; 4096]),
    ]
}

/// A valid manifest listing `members`.
pub fn manifest(members: &[(String, Vec<u8>)]) -> Value {
    json!({
        "schema": 1, "name": "crafted", "arch": "x86_64", "created": 0,
        "boot": {"kernel": "boot/vmlinuz", "initrd": "boot/initrd.img", "disk": "disk.raw",
                 "cmdline": "root=PARTLABEL=carbon-root rw", "root_partition": "carbon-root",
                 "efi_partition": "carbon-efi"},
        "bundles": {"kernel_version": "6.12.0", "mesa_version": "25.0.7",
                    "venus_icd": "/usr/share/vulkan/icd.d/virtio_icd.json",
                    "venus_library": "/usr/lib/x86_64-linux-gnu/libvulkan_virtio.so",
                    "container_images": []},
        "members": members.iter().map(|(p, d)| json!({"path": p, "size": d.len(), "sha256": sha256(d)})).collect::<Vec<_>>()
    })
}

/// The entries of a well-formed archive: manifest, then members.
pub fn entries(manifest: &Value, members: &[(String, Vec<u8>)]) -> Vec<Entry> {
    let mut out = vec![Entry::file(
        "manifest.json",
        &serde_json::to_vec(manifest).unwrap(),
    )];
    out.extend(members.iter().map(|(p, d)| Entry::file(p, d)));
    out
}

/// The archive, block by block: each header, its data padded to 512 bytes, two zero blocks.
pub fn tar_bytes(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let old = h.as_old_mut();
        old.name[..e.name.len()].copy_from_slice(e.name.as_bytes());
        if let Some(l) = &e.link {
            old.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        h.set_size(e.header_size.unwrap_or(e.data.len() as u64));
        h.set_mode(0o644);
        h.set_entry_type(e.kind);
        if matches!(e.kind, tar::EntryType::Char | tar::EntryType::Block) {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        if let Some((at, bytes)) = &e.patch {
            h.as_mut_bytes()[*at..at + bytes.len()].copy_from_slice(bytes);
        }
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(&e.data);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

pub fn zstd_bytes(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 1).unwrap()
}

/// A root filesystem with just what `image pack` needs: kernel, initrd, the Venus ICD and its
/// library, systemd-boot, a dpkg status entry for Mesa, and a bundled container archive; the
/// loader and library of both architectures, so it packs with `--arch x86_64` or `aarch64`.
pub fn synthetic_rootfs(root: &Path, with_venus: bool) {
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("boot/vmlinuz-6.12.0-test", b"fake kernel".to_vec()),
        ("boot/initrd.img-6.12.0-test", b"fake initrd".to_vec()),
        (
            "usr/lib/systemd/boot/efi/systemd-bootx64.efi",
            b"fake loader".to_vec(),
        ),
        (
            "usr/lib/systemd/boot/efi/systemd-bootaa64.efi",
            b"fake loader".to_vec(),
        ),
        (
            "usr/lib/x86_64-linux-gnu/libvulkan_virtio.so",
            vec![0x7f; 8192],
        ),
        (
            "usr/lib/aarch64-linux-gnu/libvulkan_virtio.so",
            vec![0x7f; 8192],
        ),
        (
            "usr/share/carbon-vm/containers/venus.oci.tar",
            vec![1; 1000],
        ),
        (
            "var/lib/dpkg/status",
            b"Package: mesa-vulkan-drivers\nStatus: install ok installed\nVersion: 25.0.7-2\n\n"
                .to_vec(),
        ),
    ];
    for (p, d) in files {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, d).unwrap();
    }
    if with_venus {
        let icd = root.join("usr/share/vulkan/icd.d/virtio_icd.json");
        std::fs::create_dir_all(icd.parent().unwrap()).unwrap();
        let mut f = std::fs::File::create(icd).unwrap();
        f.write_all(br#"{"file_format_version":"1.0.0","ICD":{"library_path":"libvulkan_virtio.so","api_version":"1.3.305"}}"#).unwrap();
    }
}

/// Reads a (zstd) artifact's entries back: (name, data).
pub fn read_artifact(path: &Path) -> Vec<(String, Vec<u8>)> {
    let data = zstd::decode_all(std::fs::File::open(path).unwrap()).unwrap();
    let mut a = tar::Archive::new(&data[..]);
    a.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut d = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut d).unwrap();
            (name, d)
        })
        .collect()
}
