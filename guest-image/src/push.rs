//! `image push FILE... oci://REF`: publish an artifact as a single-layer OCI artifact, the form
//! `pull` reads. The layer's digest is the artifact's sha256, so one pin serves both transports.
//! Several artifacts (one per architecture) go under one tag as an OCI image index
//! ([`crate::index`]).

use crate::digest::Sha256Digest;
use crate::fetch::{FetchError, oci_client_for, registry_auth, runtime};
use crate::index::oci_arch;
use crate::manifest::{MANIFEST_NAME, MAX_METADATA_BYTES, Manifest};
use crate::untrusted::Untrusted;
use futures_util::StreamExt;
use oci_client::RegistryOperation;
use oci_client::manifest::{
    ImageIndexEntry, OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, OciDescriptor,
    OciImageIndex, OciImageManifest,
};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

pub const ARTIFACT_TYPE: &str = "application/vnd.carbon-vm.image.v1";
pub const LAYER_TYPE: &str = "application/vnd.carbon-vm.image.layer.v1.tar+zstd";
const EMPTY_CONFIG_TYPE: &str = "application/vnd.oci.empty.v1+json";

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("cannot read {0}")]
    Read(PathBuf, #[source] io::Error),
    #[error(transparent)]
    Registry(#[from] FetchError),
    #[error("registry refused the upload")]
    Upload(#[source] Untrusted),
    #[error("{0} is not a carbon-vm image artifact (its first member must be manifest.json)")]
    NotImage(PathBuf),
    #[error("two artifacts are for {0}: an index holds one per architecture")]
    SameArch(String),
    #[error("{0}: the image's architecture {1:?} has no OCI platform name")]
    UnknownArch(PathBuf, String),
}

/// One artifact in the registry.
pub struct Pushed {
    pub arch: String,
    pub sha256: Sha256Digest,
    pub manifest: Sha256Digest,
}

/// Pushes `files` to `reference`: one artifact as its manifest, several as an index of their
/// manifests (each pushed by digest). Returns the artifacts and the digest the tag now names.
pub fn push_all(
    files: &[PathBuf],
    reference: &oci_client::Reference,
) -> Result<(Vec<Pushed>, Sha256Digest), PushError> {
    // Every artifact is read and checked before anything is uploaded.
    let mut archs: Vec<(String, &'static str)> = Vec::new();
    for file in files {
        let arch = manifest_of(file)?.arch;
        let platform =
            oci_arch(&arch).ok_or_else(|| PushError::UnknownArch(file.clone(), arch.clone()))?;
        if archs.iter().any(|(a, _)| *a == arch) {
            return Err(PushError::SameArch(arch));
        }
        archs.push((arch, platform));
    }
    if let ([file], [(arch, _)]) = (files, &archs[..]) {
        let (sha256, manifest, _) = push_manifest(file, reference, true)?;
        let pushed = Pushed {
            arch: arch.clone(),
            sha256,
            manifest,
        };
        return Ok((vec![pushed], manifest));
    }
    let mut pushed: Vec<Pushed> = Vec::new();
    let mut entries = Vec::new();
    for (file, (arch, platform)) in files.iter().zip(archs) {
        let (sha256, manifest, size) = push_manifest(file, reference, false)?;
        entries.push(ImageIndexEntry {
            media_type: OCI_IMAGE_MEDIA_TYPE.into(),
            digest: manifest.oci(),
            size,
            platform: Some(crate::index::linux(platform)),
            annotations: None,
            artifact_type: None,
        });
        pushed.push(Pushed {
            arch,
            sha256,
            manifest,
        });
    }
    let index = OciImageIndex {
        schema_version: 2,
        media_type: Some(OCI_IMAGE_INDEX_MEDIA_TYPE.into()),
        artifact_type: Some(ARTIFACT_TYPE.into()),
        manifests: entries,
        annotations: None,
    };
    let body = serde_json::to_vec(&index).expect("index serializes");
    let digest = Sha256Digest::of(&body);
    runtime()?.block_on(async {
        let client = oci_client_for(reference.registry());
        client
            .auth(reference, &registry_auth(), RegistryOperation::Push)
            .await
            .map_err(|e| PushError::Upload(Untrusted::of(e)))?;
        client
            .push_manifest_raw(
                reference,
                body,
                OCI_IMAGE_INDEX_MEDIA_TYPE.parse().expect("media type"),
            )
            .await
            .map_err(|e| PushError::Upload(Untrusted::of(e)))
    })?;
    Ok((pushed, digest))
}

/// The manifest an artifact starts with (read without unpacking the rest).
fn manifest_of(file: &Path) -> Result<Manifest, PushError> {
    let not_image = || PushError::NotImage(file.to_owned());
    let f = File::open(file).map_err(|e| PushError::Read(file.into(), e))?;
    let decoder =
        zstd::stream::read::Decoder::new(f).map_err(|e| PushError::Read(file.into(), e))?;
    let mut archive = tar::Archive::new(decoder);
    let mut entries = archive.entries().map_err(|_| not_image())?;
    let mut first = entries
        .next()
        .ok_or_else(not_image)?
        .map_err(|_| not_image())?;
    if first.path().ok().as_deref() != Some(Path::new(MANIFEST_NAME)) {
        return Err(not_image());
    }
    let mut json = Vec::new();
    (&mut first)
        .take(MAX_METADATA_BYTES)
        .read_to_end(&mut json)
        .map_err(|_| not_image())?;
    serde_json::from_slice(&json).map_err(|_| not_image())
}

/// Pushes the artifact's blobs and manifest; `tagged`: under the reference's tag, else by digest
/// only. Returns (artifact digest, manifest digest, manifest size).
fn push_manifest(
    file: &Path,
    reference: &oci_client::Reference,
    tagged: bool,
) -> Result<(Sha256Digest, Sha256Digest, i64), PushError> {
    let rerr = |e| PushError::Read(file.into(), e);
    let mut f = File::open(file).map_err(rerr)?;
    let size = f.metadata().map_err(rerr)?.len();
    let mut h = <sha2::Sha256 as sha2::Digest>::new();
    io::copy(&mut f, &mut h).map_err(rerr)?;
    let digest = Sha256Digest::from_hasher(h);

    let rt = runtime()?;
    let client = oci_client_for(reference.registry());
    let config = b"{}".to_vec();
    let manifest = OciImageManifest {
        schema_version: 2,
        media_type: Some(OCI_IMAGE_MEDIA_TYPE.into()),
        artifact_type: Some(ARTIFACT_TYPE.into()),
        config: OciDescriptor {
            media_type: EMPTY_CONFIG_TYPE.into(),
            digest: Sha256Digest::of(&config).oci(),
            size: config.len() as i64,
            ..Default::default()
        },
        layers: vec![OciDescriptor {
            media_type: LAYER_TYPE.into(),
            digest: digest.oci(),
            size: size as i64,
            ..Default::default()
        }],
        subject: None,
        annotations: Some(BTreeMap::new()),
    };
    let body = serde_json::to_vec(&manifest).expect("manifest serializes");
    let manifest_digest = Sha256Digest::of(&body);
    let target = if tagged {
        reference.clone()
    } else {
        oci_client::Reference::with_digest(
            reference.registry().to_owned(),
            reference.repository().to_owned(),
            manifest_digest.oci(),
        )
    };
    let path = file.to_owned();
    rt.block_on(async {
        client
            .auth(&target, &registry_auth(), RegistryOperation::Push)
            .await
            .map_err(|e| PushError::Upload(Untrusted::of(e)))?;
        let chunks = file_stream(path).map_err(rerr)?;
        client
            .push_blob_stream(reference, chunks, &digest.oci(), Some(size))
            .await
            .map_err(|e| PushError::Upload(Untrusted::of(e)))?;
        let config_digest = Sha256Digest::of(&config).oci();
        client
            .push_blob(reference, config, &config_digest)
            .await
            .map_err(|e| PushError::Upload(Untrusted::of(e)))?;
        client
            .push_manifest_raw(
                &target,
                body.clone(),
                OCI_IMAGE_MEDIA_TYPE.parse().expect("media type"),
            )
            .await
            .map_err(|e| PushError::Upload(Untrusted::of(e)))?;
        Ok::<_, PushError>(())
    })?;
    Ok((digest, manifest_digest, body.len() as i64))
}

fn file_stream(
    path: PathBuf,
) -> io::Result<
    impl futures_util::Stream<Item = oci_client::errors::Result<bytes::Bytes>> + Send + 'static,
> {
    let file = File::open(path)?;
    Ok(futures_util::stream::unfold(file, |mut f| async move {
        let mut buf = vec![0u8; 1 << 20];
        match f.read(&mut buf) {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e.into()), f)),
        }
    })
    .boxed())
}
