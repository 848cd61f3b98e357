//! Transports: resolve a source to the artifact's expected digest and size, then pump its bytes,
//! hashed on the way, into a bounded channel that the unpacker reads on another thread.
//!
//! HTTP and OCI downloads that break off are resumed with a Range request from the byte they
//! reached; the whole-artifact digest check at the end is what makes a resumed stream trustworthy.

use crate::digest::Sha256Digest;
use crate::progress::Progress;
use crate::source::{Source, is_loopback_host};
use crate::untrusted::Untrusted;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use sha2::{Digest as _, Sha256};
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

/// Chunks in flight between the transport and the unpacker: bounds memory whatever the image size.
const CHANNEL_DEPTH: usize = 32;
const FILE_CHUNK: usize = 256 * 1024;
/// Attempts to resume a broken download before giving up.
pub const MAX_RESUMES: u32 = 5;

pub const OCI_MANIFEST_TYPES: [&str; 2] = [
    oci_client::manifest::OCI_IMAGE_MEDIA_TYPE,
    oci_client::manifest::IMAGE_MANIFEST_MEDIA_TYPE,
];

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot read {0}")]
    File(PathBuf, #[source] io::Error),
    #[error("HTTP request failed")]
    Http(#[source] reqwest::Error),
    #[error("server answered {0}")]
    HttpStatus(reqwest::StatusCode),
    #[error("server answered a range request with the wrong range ({0:?})")]
    BadRange(Option<String>),
    #[error("download broke off {attempts} times; last at byte {offset}")]
    GaveUp {
        attempts: u32,
        offset: u64,
        #[source]
        last: io::Error,
    },
    #[error("registry request failed")]
    Registry(#[source] Untrusted),
    #[error("registry sent a manifest whose digest is {got}, not the {want} asked for")]
    ManifestDigest { want: String, got: Sha256Digest },
    #[error("registry manifest is not an OCI image manifest")]
    ManifestJson(#[source] Untrusted),
    #[error("registry image has {0} layers; a carbon-vm image is a single-layer artifact")]
    LayerCount(usize),
    #[error("registry index is not an OCI image index")]
    IndexJson(#[source] Untrusted),
    #[error("the registry index has no linux/{arch} image; it has {there}")]
    NoPlatform { arch: String, there: String },
    #[error("registry layer digest {0:?} is not sha256")]
    LayerDigest(String),
    #[error("cannot start the async runtime")]
    Runtime(#[source] io::Error),
}

/// A source resolved to what it claims to deliver.
pub struct Transport {
    rt: tokio::runtime::Runtime,
    kind: Kind,
    /// The artifact digest the source itself vouches for (an OCI manifest's layer digest).
    pub digest: Option<Sha256Digest>,
    pub size: Option<u64>,
}

enum Kind {
    File(PathBuf),
    /// With the first response once `connect` has asked for it.
    Http(reqwest::Client, reqwest::Url, Option<Opened>),
    Oci(
        Box<oci_client::Client>,
        oci_client::Reference,
        OciDescriptor,
    ),
}

/// What the pump saw once the stream ended.
#[derive(Debug, Clone, Copy)]
pub struct Fetched {
    pub digest: Sha256Digest,
    pub bytes: u64,
}

/// reqwest is built without a crypto provider (`rustls-no-provider`): ring becomes the process
/// default before the first client. Later calls find it installed and change nothing.
fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn oci_client_for(registry: &str) -> oci_client::Client {
    install_tls_provider();
    let protocol = if is_loopback_host(registry) {
        oci_client::client::ClientProtocol::Http
    } else {
        oci_client::client::ClientProtocol::Https
    };
    oci_client::Client::new(oci_client::client::ClientConfig {
        protocol,
        ..Default::default()
    })
}

/// Registry credentials: `CARBON_VM_REGISTRY_USER` and `CARBON_VM_REGISTRY_PASSWORD` (a token for
/// ghcr.io) where both are set, else anonymous.
pub fn registry_auth() -> RegistryAuth {
    match (
        std::env::var("CARBON_VM_REGISTRY_USER"),
        std::env::var("CARBON_VM_REGISTRY_PASSWORD"),
    ) {
        (Ok(user), Ok(password)) => RegistryAuth::Basic(user, password),
        _ => RegistryAuth::Anonymous,
    }
}

pub fn runtime() -> Result<tokio::runtime::Runtime, FetchError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(FetchError::Runtime)
}

impl Transport {
    /// `arch`: the image architecture to take where an OCI reference names a multi-arch index.
    pub fn resolve(source: &Source, arch: &str) -> Result<Transport, FetchError> {
        let rt = runtime()?;
        let (kind, digest, size) = match source {
            Source::File(p) => {
                let meta = std::fs::metadata(p).map_err(|e| FetchError::File(p.clone(), e))?;
                (Kind::File(p.clone()), None, Some(meta.len()))
            }
            Source::Http(url) => {
                install_tls_provider();
                let client = reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(30))
                    .read_timeout(Duration::from_secs(60))
                    .build()
                    .map_err(FetchError::Http)?;
                (Kind::Http(client, url.clone(), None), None, None)
            }
            Source::Oci(reference) => {
                let client = oci_client_for(reference.registry());
                let layer = rt.block_on(resolve_oci_layer(&client, reference, arch))?;
                let digest = layer
                    .digest
                    .parse()
                    .map_err(|_| FetchError::LayerDigest(layer.digest.clone()))?;
                let size = u64::try_from(layer.size).ok();
                let kind = Kind::Oci(Box::new(client), reference.clone(), layer);
                (kind, Some(digest), size)
            }
        };
        Ok(Transport {
            rt,
            kind,
            digest,
            size,
        })
    }

    /// Sends the first request where that is what tells the artifact's size (HTTP's
    /// Content-Length); the transfer itself starts with `spawn`.
    pub fn connect(&mut self) -> Result<(), FetchError> {
        if let Kind::Http(client, url, first @ None) = &mut self.kind {
            let opened = self.rt.block_on(open_http(client, url, 0))?;
            self.size = opened.length;
            *first = Some(opened);
        }
        Ok(())
    }

    /// Starts the transfer on its own thread. The returned reader yields the artifact's bytes;
    /// the handle yields their digest once the stream ended (or the transport's error).
    pub fn spawn(
        self,
        progress: Arc<dyn Progress>,
    ) -> (ChunkReader, JoinHandle<Result<Fetched, FetchError>>) {
        let (tx, rx) = sync_channel(CHANNEL_DEPTH);
        let handle = std::thread::Builder::new()
            .name("carbon-fetch".into())
            .spawn(move || {
                let mut pump = Pump {
                    tx,
                    hasher: Sha256::new(),
                    bytes: 0,
                    progress,
                };
                let Transport { rt, kind, .. } = self;
                let result = match kind {
                    Kind::File(p) => pump.file(&p),
                    Kind::Http(client, url, first) => {
                        rt.block_on(pump.resumable(first, async |offset| {
                            open_http(&client, &url, offset).await
                        }))
                    }
                    Kind::Oci(client, reference, layer) => {
                        rt.block_on(pump.resumable(None, async |offset| {
                            open_oci(&client, &reference, &layer, offset).await
                        }))
                    }
                };
                let fetched = Fetched {
                    digest: Sha256Digest::from_hasher(pump.hasher),
                    bytes: pump.bytes,
                };
                if let Err(e) = &result {
                    // Wake the reader with an error instead of a clean end of stream.
                    let _ = pump.tx.send(Err(io::Error::other(e.to_string())));
                }
                result.map(|()| fetched)
            })
            .expect("spawning a thread");
        (ChunkReader::new(rx), handle)
    }
}

/// The registry's manifest for `reference`, checked against the digest the reference names.
async fn manifest_bytes(
    client: &oci_client::Client,
    reference: &oci_client::Reference,
    types: &[&str],
) -> Result<Bytes, FetchError> {
    let (raw, _) = client
        .pull_manifest_raw(reference, &registry_auth(), types)
        .await
        .map_err(registry_error)?;
    if let Some(want) = reference.digest() {
        // Check the bytes ourselves rather than trusting the registry's header.
        let got = Sha256Digest::of(&raw);
        if got.oci() != want {
            return Err(FetchError::ManifestDigest {
                want: want.to_owned(),
                got,
            });
        }
    }
    Ok(raw)
}

async fn resolve_oci_layer(
    client: &oci_client::Client,
    reference: &oci_client::Reference,
    arch: &str,
) -> Result<OciDescriptor, FetchError> {
    let types = [
        &OCI_MANIFEST_TYPES[..],
        &[oci_client::manifest::OCI_IMAGE_INDEX_MEDIA_TYPE],
    ]
    .concat();
    let mut raw = manifest_bytes(client, reference, &types).await?;
    if let Some(entry) = index_entry(&raw, arch)? {
        // By the digest the index names: the index's own digest then pins this manifest too.
        let by_digest = oci_client::Reference::with_digest(
            reference.registry().to_owned(),
            reference.repository().to_owned(),
            entry.digest,
        );
        raw = manifest_bytes(client, &by_digest, &OCI_MANIFEST_TYPES).await?;
    }
    single_layer(&raw)
}

/// Where a registry's manifest answer `raw` is an image index: its entry for linux/`arch`.
/// `None`: it is not an index (an image manifest, or not JSON at all).
pub fn index_entry(
    raw: &[u8],
    arch: &str,
) -> Result<Option<oci_client::manifest::ImageIndexEntry>, FetchError> {
    if !crate::index::is_index(raw) {
        return Ok(None);
    }
    let index: oci_client::manifest::OciImageIndex =
        serde_json::from_slice(raw).map_err(|e| FetchError::IndexJson(Untrusted::of(e)))?;
    let entry = crate::index::select(&index, arch).map_err(|there| FetchError::NoPlatform {
        arch: arch.to_owned(),
        there,
    })?;
    Ok(Some(entry.clone()))
}

/// The one layer of the image manifest `raw` (a registry's answer): the artifact.
pub fn single_layer(raw: &[u8]) -> Result<OciDescriptor, FetchError> {
    let manifest: OciImageManifest =
        serde_json::from_slice(raw).map_err(|e| FetchError::ManifestJson(Untrusted::of(e)))?;
    match <[OciDescriptor; 1]>::try_from(manifest.layers) {
        Ok([layer]) => Ok(layer),
        Err(layers) => Err(FetchError::LayerCount(layers.len())),
    }
}

/// A registry's errors carry its own answer's text.
fn registry_error(e: oci_client::errors::OciDistributionError) -> FetchError {
    FetchError::Registry(Untrusted::of(e))
}

type ByteStream = BoxStream<'static, io::Result<Bytes>>;

/// An answer whose body is still to be read.
struct Opened {
    stream: ByteStream,
    /// The offset in the artifact the body really starts at (a server may ignore a range).
    start: u64,
    /// The whole artifact's length, where the server says it.
    length: Option<u64>,
}

/// Opens the artifact at `offset`.
async fn open_http(
    client: &reqwest::Client,
    url: &reqwest::Url,
    offset: u64,
) -> Result<Opened, FetchError> {
    let mut req = client.get(url.clone());
    if offset > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={offset}-"));
    }
    let resp = req.send().await.map_err(FetchError::Http)?;
    let status = resp.status();
    let start = match status {
        reqwest::StatusCode::OK => 0,
        reqwest::StatusCode::PARTIAL_CONTENT => {
            let range = resp
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if range
                .as_deref()
                .and_then(|r| r.strip_prefix("bytes "))
                .and_then(|r| r.split('-').next())
                != Some(offset.to_string().as_str())
            {
                return Err(FetchError::BadRange(range));
            }
            offset
        }
        s => return Err(FetchError::HttpStatus(s)),
    };
    let length = resp.content_length().map(|n| n + start);
    let stream = resp.bytes_stream().map(|r| r.map_err(io::Error::other));
    Ok(Opened {
        stream: stream.boxed(),
        start,
        length,
    })
}

async fn open_oci(
    client: &oci_client::Client,
    reference: &oci_client::Reference,
    layer: &OciDescriptor,
    offset: u64,
) -> Result<Opened, FetchError> {
    use oci_client::client::BlobResponse;
    let resp = client
        .pull_blob_stream_partial(reference, layer, offset, None)
        .await
        .map_err(registry_error)?;
    let (stream, start) = match resp {
        BlobResponse::Full(s) => (s.stream, 0),
        BlobResponse::Partial(s) => (s.stream, offset),
    };
    Ok(Opened {
        stream,
        start,
        length: None,
    })
}

struct Pump {
    tx: SyncSender<io::Result<Bytes>>,
    hasher: Sha256,
    bytes: u64,
    progress: Arc<dyn Progress>,
}

impl Pump {
    /// Hands one chunk downstream. Returns false when the reader is gone (it failed or finished).
    fn push(&mut self, chunk: Bytes) -> bool {
        self.hasher.update(&chunk);
        self.bytes += chunk.len() as u64;
        self.progress.advance(chunk.len() as u64);
        self.tx.send(Ok(chunk)).is_ok()
    }

    fn file(&mut self, path: &PathBuf) -> Result<(), FetchError> {
        let err = |e| FetchError::File(path.clone(), e);
        let mut f = std::fs::File::open(path).map_err(err)?;
        loop {
            let mut buf = vec![0u8; FILE_CHUNK];
            let n = f.read(&mut buf).map_err(err)?;
            if n == 0 {
                return Ok(());
            }
            buf.truncate(n);
            if !self.push(Bytes::from(buf)) {
                return Ok(());
            }
        }
    }

    async fn resumable(
        &mut self,
        mut first: Option<Opened>,
        mut open: impl AsyncFnMut(u64) -> Result<Opened, FetchError>,
    ) -> Result<(), FetchError> {
        let mut failures = 0u32;
        loop {
            let Opened {
                mut stream, start, ..
            } = match first.take() {
                Some(o) => o,
                None => open(self.bytes).await?,
            };
            // Bytes already handed downstream cannot be taken back: skip them if the server
            // started over. The final digest check covers a server that sent something else.
            let mut skip = self.bytes - start;
            let broke = loop {
                match stream.next().await {
                    None => return Ok(()),
                    Some(Err(e)) => break e,
                    Some(Ok(mut chunk)) => {
                        let drop_n = skip.min(chunk.len() as u64) as usize;
                        skip -= drop_n as u64;
                        let chunk = chunk.split_off(drop_n);
                        if !chunk.is_empty() && !self.push(chunk) {
                            return Ok(());
                        }
                    }
                }
            };
            failures += 1;
            tracing::warn!(offset = self.bytes, error = %broke, "download broke off; resuming");
            if failures > MAX_RESUMES {
                return Err(FetchError::GaveUp {
                    attempts: failures,
                    offset: self.bytes,
                    last: broke,
                });
            }
            // Back off a little so a restarting server gets a chance (this is not test timing).
            tokio::time::sleep(Duration::from_millis(100 << failures)).await;
        }
    }
}

/// The unpacker's end of the channel, as a `Read`.
pub struct ChunkReader {
    rx: Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl ChunkReader {
    pub fn new(rx: Receiver<io::Result<Bytes>>) -> Self {
        Self {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.recv() {
                Ok(chunk) => self.current = chunk?,
                Err(_) => return Ok(0), // sender finished: end of stream
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// reqwest and oci-client bring no crypto provider of their own: building their HTTPS
    /// clients panics unless ours is installed first.
    #[test]
    fn https_clients_build() {
        let url = "https://example.org/guest.tar.zst".parse().unwrap();
        Transport::resolve(&Source::Http(url), "x86_64").unwrap();
        oci_client_for("registry.example.org");
    }
}
