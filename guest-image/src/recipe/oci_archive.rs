//! Writes a root filesystem tarball as a single-layer OCI image archive (`podman load` reads it).

use crate::digest::Sha256Digest;
use crate::hashing::HashingWriter;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

pub fn write(rootfs_tar: &Path, dest: &Path, name: &str, arch: &str, epoch: u64) -> io::Result<()> {
    // Compress the layer once, hashing the plain tar (diff_id) and the compressed blob together.
    let layer_path = dest.with_extension("layer");
    let mut diff_hasher = Sha256::new();
    let blob = HashingWriter::new(File::create(&layer_path)?);
    let mut enc = zstd::stream::write::Encoder::new(blob, 6)?;
    let mut src = BufReader::new(File::open(rootfs_tar)?);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        diff_hasher.update(&buf[..n]);
        enc.write_all(&buf[..n])?;
    }
    let (_, layer_digest, layer_size) = enc.finish()?.finish()?;
    let diff_id = Sha256Digest::from_hasher(diff_hasher);

    let config = serde_json::to_vec(&json!({
        "architecture": arch,
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["vulkaninfo", "--summary"]
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id.oci()]}
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": Sha256Digest::of(&config).oci(),
            "size": config.len()
        },
        "layers": [{"mediaType": LAYER_TYPE, "digest": layer_digest.oci(), "size": layer_size}]
    }))?;
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": Sha256Digest::of(&manifest).oci(),
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": name}
        }]
    }))?;

    let mut tar = tar::Builder::new(File::create(dest)?);
    let mut add = |path: &str, size: u64, data: &mut dyn Read| {
        let mut h = tar::Header::new_ustar();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(epoch);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, path, data)
    };
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    add("oci-layout", layout.len() as u64, &mut &layout[..])?;
    add("index.json", index.len() as u64, &mut &index[..])?;
    for blob in [&manifest, &config] {
        let path = format!("blobs/sha256/{}", Sha256Digest::of(blob));
        add(&path, blob.len() as u64, &mut &blob[..])?;
    }
    let mut layer = File::open(&layer_path)?;
    add(
        &format!("blobs/sha256/{layer_digest}"),
        layer_size,
        &mut layer,
    )?;
    tar.into_inner()?.sync_all()?;
    std::fs::remove_file(&layer_path)
}
