//! `image push FILE oci://REF`: publish an artifact as a single-layer OCI artifact, the form
//! `pull` reads. The layer's digest is the artifact's sha256, so one pin serves both transports.

use crate::digest::Sha256Digest;
use crate::fetch::{FetchError, oci_client_for, runtime};
use crate::untrusted::Untrusted;
use futures_util::StreamExt;
use oci_client::manifest::{OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest};
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
}

/// Pushes `file` to `reference`; returns (artifact digest, manifest digest).
pub fn push(
    file: &Path,
    reference: &oci_client::Reference,
) -> Result<(Sha256Digest, Sha256Digest), PushError> {
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
    let path = file.to_owned();
    rt.block_on(async {
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
                reference,
                body.clone(),
                OCI_IMAGE_MEDIA_TYPE.parse().expect("media type"),
            )
            .await
            .map_err(|e| PushError::Upload(Untrusted::of(e)))?;
        Ok::<_, PushError>(())
    })?;
    Ok((digest, Sha256Digest::of(&body)))
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
