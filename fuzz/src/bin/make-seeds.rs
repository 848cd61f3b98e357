//! Writes the seed corpus (`fuzz/corpus/TARGET/`) and the seeds' public key (`fuzz/keys/`):
//! small, real inputs made the way carbon-vm's own writers make them (`pack`'s layout, `image
//! sign`, `push`'s OCI documents, the GPT `pack` writes, `mkfs.ext4 -d`), each checked to pass
//! the parser it seeds. `scripts/fuzz seeds` runs it; the regression seeds found by
//! fuzzing (`regression-*`) are kept as they are.

use carbon_vm_fuzz::{
    CONTAINER_IMAGE, EFI_PARTITION, ROOT_PARTITION, VENUS_LIBRARY, corpus_dir, manifest,
};
use guest_image::Sha256Digest;
use oci_client::manifest::{ImageIndexEntry, OCI_IMAGE_INDEX_MEDIA_TYPE, OciImageIndex};
use guest_image::manifest::{MANIFEST_NAME, SIGNATURE_NAME};
use guest_image::sign::SigningKey;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

const EPOCH: u64 = 1_700_000_000;
const KERNEL: &[u8] = b"MZ fuzz kernel\n";
const INITRD: &[u8] = b"070701 fuzz initrd\n";
const SECTOR: u64 = 512;

fn main() {
    let scratch = tempfile::tempdir().unwrap();
    let (key, pub_text) = seed_key(scratch.path());
    archive(scratch.path(), &key, &pub_text);
    manifest_seeds();
    disk(scratch.path());
    oci();
    minisign(&key, &pub_text);
    catalog(&pub_text);
    icd();
    guest_output();
    ready();
}

fn write(target: &str, name: &str, data: &[u8]) {
    let dir = corpus_dir(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(name), data).unwrap();
    println!("{target}/{name}: {} bytes", data.len());
}

/// A fresh unencrypted minisign key: its public half goes to `fuzz/keys/seeds.pub`.
fn seed_key(scratch: &Path) -> (SigningKey, String) {
    // An empty password: what `minisign -G -W` writes, the form `SigningKey::from_file` reads.
    let kp = minisign::KeyPair::generate_encrypted_keypair(Some(String::new())).unwrap();
    let pub_text = kp.pk.to_box().unwrap().to_string();
    let keys = Path::new(env!("CARGO_MANIFEST_DIR")).join("keys");
    fs::create_dir_all(&keys).unwrap();
    fs::write(keys.join("seeds.pub"), &pub_text).unwrap();
    let sk = scratch.join("seeds.key");
    fs::write(&sk, kp.sk.to_box(None).unwrap().to_string()).unwrap();
    (SigningKey::from_file(&sk, None).unwrap(), pub_text)
}

/// A ustar member as `pack` appends it.
fn append(tar: &mut tar::Builder<impl Write>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_ustar();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(EPOCH);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, name, data).unwrap();
}

/// A pax extended header (`x`) holding `records`.
fn append_pax(tar: &mut tar::Builder<impl Write>, records: &[(&str, &str)]) {
    let mut body = Vec::new();
    for (k, v) in records {
        let rest = format!(" {k}={v}\n");
        let mut len = rest.len() + 1;
        while (len.to_string().len() + rest.len()) != len {
            len += 1;
        }
        body.extend_from_slice(format!("{len}{rest}").as_bytes());
    }
    let mut h = tar::Header::new_ustar();
    h.set_size(body.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(EPOCH);
    h.set_entry_type(tar::EntryType::XHeader);
    tar.append_data(&mut h, "PaxHeaders/member", &body[..])
        .unwrap();
}

/// A disk member: a few blocks, zeros in the middle (the unpacker writes those as holes).
fn disk_member() -> Vec<u8> {
    let mut d = b"disk head".to_vec();
    d.resize(3 * 4096, 0);
    d.extend_from_slice(b"disk tail");
    d
}

/// `pack`'s layout: the manifest member in a zstd frame of its own, then the other members in
/// one more frame (uncompressed tar and gzip are accepted too).
fn archive(scratch: &Path, key: &SigningKey, pub_text: &str) {
    let disk = disk_member();
    let members: [(&str, &[u8]); 3] = [
        ("boot/vmlinuz", KERNEL),
        ("boot/initrd.img", INITRD),
        ("disk.raw", &disk),
    ];
    let m = manifest(&members);
    let json = serde_json::to_vec_pretty(&m).unwrap();

    let mut head = tar::Builder::new(Vec::new());
    append(&mut head, MANIFEST_NAME, &json);
    let mut head = head.into_inner().unwrap();
    head.truncate(512 + json.len().div_ceil(512) * 512);
    let mut rest = tar::Builder::new(Vec::new());
    for (name, data) in members {
        append(&mut rest, name, data);
    }
    let rest = rest.into_inner().unwrap();
    let mut unsigned = zstd::bulk::compress(&head, 3).unwrap();
    unsigned.extend(zstd::bulk::compress(&rest, 3).unwrap());
    write("archive", "unsigned.tar.zst", &unsigned);

    // `image sign` inserts the signature member after the manifest's frame.
    let (input, output) = (scratch.join("in.tar.zst"), scratch.join("out.tar.zst"));
    fs::write(&input, &unsigned).unwrap();
    guest_image::sign::sign_artifact(&input, &output, key).unwrap();
    let signed = fs::read(&output).unwrap();
    write("archive", "signed.tar.zst", &signed);

    let plain = [&head[..], &rest[..]].concat();
    write("archive", "unsigned.tar", &plain);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&plain).unwrap();
    write("archive", "unsigned.tar.gz", &gz.finish().unwrap());

    // Long member names: a GNU long name (the tar crate's, past 100 bytes) and a pax `path`
    // with a pax `size`.
    let long = format!("boot/{}/vmlinuz", "k".repeat(120));
    let paxed = format!("pax/{}/initrd.img", "i".repeat(110));
    let mut m = manifest(&[(&long, KERNEL), (&paxed, INITRD), ("disk.raw", &disk)]);
    m.boot.kernel = long.clone();
    m.boot.initrd = paxed.clone();
    let json = serde_json::to_vec(&m).unwrap();
    let mut t = tar::Builder::new(Vec::new());
    append(&mut t, MANIFEST_NAME, &json);
    append(&mut t, &long, KERNEL);
    append_pax(
        &mut t,
        &[("path", &paxed), ("size", &INITRD.len().to_string())],
    );
    append(&mut t, "short-name", INITRD);
    append(&mut t, "disk.raw", &disk);
    write("archive", "long-names.tar", &t.into_inner().unwrap());

    // What the unpacker refuses: a signature that does not verify, a symlink member.
    let sig = key.sign(b"another manifest").unwrap();
    let mut t = tar::Builder::new(Vec::new());
    append(
        &mut t,
        MANIFEST_NAME,
        &serde_json::to_vec(&manifest(&members)).unwrap(),
    );
    append(&mut t, SIGNATURE_NAME, sig.as_bytes());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    t.append_link(&mut h, "boot/vmlinuz", "/etc/passwd")
        .unwrap();
    write("archive", "refused.tar", &t.into_inner().unwrap());

    // Each seed passes (or is refused) as meant.
    let trust = carbon_vm_fuzz::trust(pub_text);
    for (name, ok) in [
        ("unsigned.tar.zst", true),
        ("signed.tar.zst", true),
        ("unsigned.tar", true),
        ("unsigned.tar.gz", true),
        ("long-names.tar", true),
        ("refused.tar", false),
    ] {
        let bytes = fs::read(corpus_dir("archive").join(name)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let r = guest_image::unpack::unpack(std::io::Cursor::new(bytes), dir.path(), &trust, false);
        assert_eq!(r.is_ok(), ok, "{name}: {:?}", r.err());
        if name == "signed.tar.zst" {
            assert!(r.unwrap().signed_by.is_some());
        }
    }
}

fn manifest_seeds() {
    let disk = disk_member();
    let m = manifest(&[
        ("boot/vmlinuz", KERNEL),
        ("boot/initrd.img", INITRD),
        ("disk.raw", &disk),
    ]);
    m.validate().unwrap();
    write(
        "manifest",
        "pack.json",
        &serde_json::to_vec_pretty(&m).unwrap(),
    );
    let mut m2 = m.clone();
    m2.bundles.page_size = None;
    m2.bundles.container_images.clear();
    m2.arch = "aarch64".into();
    write(
        "manifest",
        "compact.json",
        &serde_json::to_vec(&m2).unwrap(),
    );
}

/// A GPT disk as `pack` assembles it (protective MBR, the `gpt` crate's headers), the EFI and
/// root partitions at `efi` and `root` (first sector, sectors), `total` sectors long.
fn gpt_disk(path: &Path, efi: (u64, u64), root: (u64, u64), total: u64) {
    let mut f = fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.set_len(total * SECTOR).unwrap();
    let mbr = gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(total - 1).unwrap());
    mbr.overwrite_lba0(&mut f).unwrap();
    let uuid = |n: u8| uuid::Uuid::from_bytes([n; 16]);
    let mut g = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(f, Some(uuid(1)))
        .unwrap();
    g.add_partition_at(EFI_PARTITION, 1, efi.0, efi.1, gpt::partition_types::EFI, 0)
        .unwrap();
    g.add_partition_at(
        ROOT_PARTITION,
        2,
        root.0,
        root.1,
        gpt::partition_types::LINUX_ROOT_X64,
        0,
    )
    .unwrap();
    let mut parts = g.partitions().clone();
    for (n, p) in parts.values_mut().enumerate() {
        p.part_guid = uuid(2 + n as u8);
    }
    g.update_partitions(parts).unwrap();
    g.write().unwrap();
}

fn disk(scratch: &Path) {
    let m = manifest(&[]);
    // The partition table alone: the root partition holds no filesystem.
    let p = scratch.join("gpt.raw");
    gpt_disk(&p, (34, 8), (42, 16), 34 + 8 + 16 + 33);
    let bytes = fs::read(&p).unwrap();
    assert!(matches!(
        guest_image::inspect::verify_venus(&p, &m),
        Err(guest_image::inspect::InspectError::Ext4(_))
    ));
    write("disk", "gpt-only.raw", &bytes);

    // A root filesystem with what `verify_venus` looks for: the ICD (a bare library name, as
    // Debian's), the library behind a symlink, a bundled container image.
    let root = scratch.join("root");
    let icd_dir = root.join("usr/share/vulkan/icd.d");
    let lib_dir = root.join("usr/lib/x86_64-linux-gnu");
    let img_dir = root.join(CONTAINER_IMAGE.trim_start_matches('/'));
    fs::create_dir_all(&icd_dir).unwrap();
    fs::create_dir_all(&lib_dir).unwrap();
    fs::create_dir_all(img_dir.parent().unwrap()).unwrap();
    fs::write(icd_dir.join("virtio_icd.json"), ICD_DEBIAN).unwrap();
    fs::write(lib_dir.join("libvulkan_virtio.so.1"), b"\x7fELF fuzz").unwrap();
    std::os::unix::fs::symlink(
        "libvulkan_virtio.so.1",
        root.join(VENUS_LIBRARY.trim_start_matches('/')),
    )
    .unwrap();
    fs::write(&img_dir, b"oci archive").unwrap();
    // As `pack` makes it (metadata checksums on), and without checksums: a mutated inode or
    // directory block then still reaches the code that reads it.
    for (name, features) in [
        ("gpt-ext4.raw", "^has_journal,^resize_inode"),
        (
            "gpt-ext4-nocsum.raw",
            "^has_journal,^resize_inode,^metadata_csum",
        ),
    ] {
        let fs_img = scratch.join("root.img");
        let status = Command::new("mkfs.ext4")
            .args([
                "-q", "-F", "-t", "ext4", "-b", "1024", "-m", "0", "-N", "32",
            ])
            .args(["-O", features, "-L", ROOT_PARTITION])
            .args(["-U", "5f1d3c2e-8d4b-4c1a-9d7e-2b6a0c9e4f10"])
            .args([
                "-E",
                "hash_seed=5f1d3c2e-8d4b-4c1a-9d7e-2b6a0c9e4f10,root_owner=0:0",
            ])
            .arg("-d")
            .arg(&root)
            .arg(&fs_img)
            .arg("128K")
            .env("E2FSPROGS_FAKE_TIME", EPOCH.to_string())
            .stdout(std::process::Stdio::null())
            .status()
            .expect("running mkfs.ext4 (e2fsprogs)");
        assert!(status.success());
        let fs_bytes = fs::read(&fs_img).unwrap();
        let root_sectors = fs_bytes.len() as u64 / SECTOR;
        let p = scratch.join(name);
        gpt_disk(&p, (34, 2), (36, root_sectors), 36 + root_sectors + 33);
        let mut f = fs::File::options().write(true).open(&p).unwrap();
        f.seek(SeekFrom::Start(36 * SECTOR)).unwrap();
        f.write_all(&fs_bytes).unwrap();
        drop(f);
        let lib = guest_image::inspect::verify_venus(&p, &m).unwrap();
        assert_eq!(lib, Path::new(VENUS_LIBRARY));
        write("disk", name, &fs::read(&p).unwrap());
    }
}

/// Mesa's Venus ICD as Debian trixie installs it.
const ICD_DEBIAN: &str = r#"{
    "ICD": {
        "api_version": "1.3.305",
        "library_path": "libvulkan_virtio.so"
    },
    "file_format_version": "1.0.0"
}"#;

/// The documents `image push` writes, and a registry's other forms.
fn oci() {
    use oci_client::manifest::{OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest};
    let artifact = Sha256Digest::of(b"artifact");
    let config = b"{}";
    let manifest = OciImageManifest {
        schema_version: 2,
        media_type: Some(OCI_IMAGE_MEDIA_TYPE.into()),
        artifact_type: Some(guest_image::push::ARTIFACT_TYPE.into()),
        config: OciDescriptor {
            media_type: "application/vnd.oci.empty.v1+json".into(),
            digest: Sha256Digest::of(config).oci(),
            size: config.len() as i64,
            ..Default::default()
        },
        layers: vec![OciDescriptor {
            media_type: guest_image::push::LAYER_TYPE.into(),
            digest: artifact.oci(),
            size: 123_456_789,
            ..Default::default()
        }],
        subject: None,
        annotations: Some(Default::default()),
    };
    let body = serde_json::to_vec(&manifest).unwrap();
    guest_image::fetch::single_layer(&body).unwrap();
    write("oci", "manifest.json", &body);

    let entry = |arch: &str, d: &[u8]| ImageIndexEntry {
        media_type: OCI_IMAGE_MEDIA_TYPE.into(),
        digest: Sha256Digest::of(d).oci(),
        size: body.len() as i64,
        platform: Some(guest_image::index::linux(arch)),
        annotations: None,
        artifact_type: None,
    };
    let index = OciImageIndex {
        schema_version: 2,
        media_type: Some(OCI_IMAGE_INDEX_MEDIA_TYPE.into()),
        artifact_type: Some(guest_image::push::ARTIFACT_TYPE.into()),
        manifests: vec![entry("amd64", b"x86_64"), entry("arm64", b"aarch64")],
        annotations: None,
    };
    let index = serde_json::to_vec(&index).unwrap();
    assert!(
        guest_image::fetch::index_entry(&index, "aarch64")
            .unwrap()
            .is_some()
    );
    write("oci", "index.json", &index);
    let docker_list = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"sha256:e692418e4cbaf90ca69d05a66403747baa33ee08806650b51fab815ad7fc331f","size":7143,"platform":{"architecture":"amd64","os":"linux"}},{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"sha256:5b0bcabd1ed22e9fb1310cf6c2dec7cdef19f0ad69efa1f392e94a4333501270","size":7682,"platform":{"architecture":"arm64","os":"linux","variant":"v8"}}]}"#;
    write("oci", "docker-list.json", docker_list);
    let docker_manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":7023,"digest":"sha256:b5b2b2c507a0944348e0303114d8d93aaaa081732b86451d9bce1f432a537bc7"},"layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":32654,"digest":"sha256:e692418e4cbaf90ca69d05a66403747baa33ee08806650b51fab815ad7fc331f"}]}"#;
    write("oci", "docker-manifest.json", docker_manifest);
}

fn minisign(key: &SigningKey, pub_text: &str) {
    let data = serde_json::to_vec_pretty(&manifest(&[("boot/vmlinuz", KERNEL)])).unwrap();
    let sig = key.sign(&data).unwrap();
    let mut t = guest_image::Trust::default();
    t.add_keys(pub_text).unwrap();
    t.verify(&data, &sig).unwrap();
    write(
        "minisign",
        "signed",
        &[pub_text.as_bytes(), &sig.into_bytes(), &data].join(&0u8),
    );
    let pinned = include_str!("../../../configs/trusted-keys.pub");
    write("minisign", "pinned-keys", pinned.as_bytes());
}

fn catalog(pub_text: &str) {
    let built_in = include_str!("../../../configs/catalog.json");
    guest_image::catalog::Catalog::parse(built_in, "built in").unwrap();
    write("catalog", "built-in.json", built_in.as_bytes());
    let key = pub_text.lines().nth(1).unwrap();
    let pinned = format!(
        r#"{{
  "default": "mine",
  "images": [
    {{ "name": "mine", "arch": "x86_64", "source": "https://example.org/guest.tar.zst",
       "sha256": "{}" }},
    {{ "name": "mine", "arch": "aarch64", "source": "oci://localhost:5000/carbon/guest@sha256:{}",
       "key": "{key}" }},
    {{ "name": "local", "arch": "x86_64", "source": "file:///var/images/guest.tar.zst" }}
  ]
}}
"#,
        Sha256Digest::of(b"x86_64"),
        Sha256Digest::of(b"aarch64"),
    );
    guest_image::catalog::Catalog::parse(&pinned, "seed").unwrap();
    write("catalog", "pinned.json", pinned.as_bytes());
}

fn icd() {
    write("icd", "debian.json", ICD_DEBIAN.as_bytes());
    write(
        "icd",
        "absolute.json",
        br#"{"file_format_version":"1.0.1","ICD":{"library_path":"/usr/lib/x86_64-linux-gnu/libvulkan_virtio.so","api_version":"1.4.305"}}"#,
    );
    write(
        "icd",
        "relative.json",
        br#"{"ICD":{"library_path":"../../../lib/libvulkan_virtio.so"}}"#,
    );
}

fn guest_output() {
    let check = include_str!("../../../venus/tests/data/guest-check-venus.txt");
    assert!(venus::check::diagnose(check).ok);
    write("guest_output", "gpu-check.txt", check.as_bytes());
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    let text = "carbon-vm runs llama.cpp xy";
    let llama = format!(
        "@@vulkan-status\n0\n@@vulkan\n{}\n@@vulkan-log\n\
0.00.159 I llama_prepare_model_devices: using device Vulkan0 (Virtio-GPU Venus (llvmpipe (LLVM 19.1.7, 256 bits))) (unknown id) - 3891 MiB free\n\
0.00.273 I load_tensors: offloaded 3/3 layers to GPU\n\
@@cpu-status\n0\n@@cpu\n{}\n@@cpu-log\n\
warning: no usable GPU found, --gpu-layers option will be ignored\n",
        hex(text),
        hex(text)
    );
    assert!(venus::llama::diagnose(&llama).ok);
    write("guest_output", "llama.txt", llama.as_bytes());
    let rpc = format!(
        "@@rpc-status\n0\n@@rpc\n{}\n@@rpc-log\n\
0.00.275 I llama_prepare_model_devices: using device RPC0 (127.0.0.1:50052) (unknown id) - 24105 MiB free\n\
0.00.374 I load_tensors: offloaded 3/3 layers to GPU\n\
@@cpu-status\n0\n@@cpu\n{}\n@@cpu-log\n\n@@image-ggml\n{}\n",
        hex(text),
        hex(text),
        hex("0.27.0-1")
    );
    assert!(venus::llama::rpc::diagnose(&rpc, Some("8.0.0")).ok);
    write("guest_output", "llama-rpc.txt", rpc.as_bytes());
    let trace = "\
12345@1764640000.123456:virtio_gpu_cmd_res_create_blob res 0x1, size 147456
virtio_gpu_cmd_res_create_blob res 0x2, size 16384
qemu-system-aarch64: some warning
12345@1764640000.2:virtio_gpu_cmd_res_create_blob res 0xa, size 4096
";
    assert_eq!(venus::blobs::audit(trace).blobs, 3);
    write("guest_output", "blob-trace.log", trace.as_bytes());
}

fn ready() {
    write(
        "ready",
        "key.txt",
        b"[  OK  ] Started ssh.service\nReady ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPmWq5kQ3m2bUO0hA0n0qQ3e0n7Q3Y3b2fJm0T6qgk1Z\n",
    );
    write("ready", "bare.txt", b"booting\r\nReady\n");
    write(
        "ready",
        "partial.txt",
        b"Rea\x00dy x\nReady  \t\n\xffReady k",
    );
}
