//! `image pull`: resolve, lock, stream through the verifying unpacker, check the artifact digest
//! and the Venus bundle, then commit to the cache. Nothing is visible in the cache until every
//! check passed; on any failure the scratch directory is removed.

use crate::cache::{Cache, CacheError, CachedImage, Record};
use crate::digest::Sha256Digest;
use crate::fetch::{FetchError, Transport};
use crate::inspect::{InspectError, verify_venus};
use crate::progress::Progress;
use crate::source::Source;
use crate::space::{self, SpaceError};
use crate::trust::Trust;
use crate::unpack::{UnpackError, unpack};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
#[error("cannot pull {image}")]
pub struct PullError {
    pub image: String,
    #[source]
    pub failure: PullFailure,
}

#[derive(Debug, thiserror::Error)]
pub enum PullFailure {
    #[error("cannot fetch it")]
    Fetch(#[source] FetchError),
    #[error("the source says its digest is {source_digest}, but it is pinned to {pin}")]
    PinMismatch {
        pin: Sha256Digest,
        source_digest: Sha256Digest,
    },
    #[error("artifact digest mismatch: expected {expected}, got {actual}")]
    Digest {
        expected: Sha256Digest,
        actual: Sha256Digest,
    },
    #[error("archive check failed")]
    Unpack(#[source] UnpackError),
    #[error("the image does not bundle a usable Venus driver")]
    Venus(#[source] InspectError),
    #[error(
        "nothing pins it: pass --sha256 HEX, use an oci://...@sha256: reference, or sign it with a trusted key"
    )]
    Unpinned,
    #[error("the cache has no room for it")]
    NoSpace(#[source] SpaceError),
    #[error(transparent)]
    Cache(CacheError),
}

impl exit_class::Classify for PullError {
    fn class(&self) -> Option<exit_class::Class> {
        use exit_class::Code;
        Some(match &self.failure {
            PullFailure::Fetch(_) => {
                Code::Fetch.hint("check the source and the network; nothing was cached")
            }
            PullFailure::Unpinned => Code::Verification
                .hint("`carbon-vm image build` and `image pack` print the sha256 to pin"),
            PullFailure::Cache(_) => Code::Failure.bare(),
            PullFailure::NoSpace(_) => Code::Failure
                .hint("free space where CARBON_VM_HOME keeps its cache; nothing was cached"),
            _ => Code::Verification.hint(
                "the image was refused and nothing was cached; check the source and its sha256",
            ),
        })
    }
}

pub struct PullOptions<'a> {
    /// The artifact's sha256 as the user (or the catalog) pinned it.
    pub pin: Option<Sha256Digest>,
    pub trust: &'a Trust,
    /// Require a trusted signature even where a pin or digest reference vouches for the bytes
    /// (a catalog entry that names its release key).
    pub require_signature: bool,
    /// The architecture to take from a multi-arch OCI index.
    pub arch: &'a str,
    pub progress: Arc<dyn Progress>,
}

/// What `pull` did.
pub struct Pulled {
    pub image: CachedImage,
    /// False when the image was already cached and nothing was downloaded.
    pub downloaded: bool,
}

pub fn pull(cache: &Cache, source: &Source, opts: &PullOptions) -> Result<Pulled, PullError> {
    let fail = |failure| PullError {
        image: source.to_string(),
        failure,
    };
    let mut transport =
        Transport::resolve(source, opts.arch).map_err(|e| fail(PullFailure::Fetch(e)))?;
    let expected = match (opts.pin, transport.digest) {
        (Some(pin), Some(d)) if pin != d => {
            return Err(fail(PullFailure::PinMismatch {
                pin,
                source_digest: d,
            }));
        }
        (pin, d) => pin.or(d),
    };
    // Only a user pin or a digest reference vouches for the bytes; otherwise the manifest must
    // carry a trusted signature.
    let require_signature =
        opts.require_signature || (opts.pin.is_none() && !source.digest_pinned());
    if require_signature && opts.trust.is_empty() {
        return Err(fail(PullFailure::Unpinned));
    }

    let _lock = match expected {
        Some(id) => {
            let lock = cache.lock(&id).map_err(|e| fail(PullFailure::Cache(e)))?;
            if cache.contains(&id) {
                let image = cache
                    .get(&id.to_string())
                    .map_err(|e| fail(PullFailure::Cache(e)))?;
                return Ok(Pulled {
                    image,
                    downloaded: false,
                });
            }
            Some(lock)
        }
        None => None,
    };

    transport
        .connect()
        .map_err(|e| fail(PullFailure::Fetch(e)))?;
    // The artifact's own size is a first measure of what it unpacks to; the manifest's declared
    // sizes are checked once it is read (in `unpack`).
    if let Some(size) = transport.size {
        space::ensure(cache.root(), size).map_err(|e| fail(PullFailure::NoSpace(e)))?;
    }
    let scratch = cache.scratch().map_err(|e| fail(PullFailure::Cache(e)))?;
    opts.progress.begin("pull", transport.size);
    let (reader, pump) = transport.spawn(opts.progress.clone());
    let unpacked = unpack(reader, scratch.path(), opts.trust, require_signature);
    let fetched = pump.join().expect("fetch thread panicked");
    opts.progress.finish();
    // A transport failure explains a broken archive better than the archive error itself.
    let fetched = fetched.map_err(|e| fail(PullFailure::Fetch(e)))?;
    let unpacked = unpacked.map_err(|e| {
        fail(match e {
            UnpackError::NoSpace(e) => PullFailure::NoSpace(e),
            e => PullFailure::Unpack(e),
        })
    })?;
    if let Some(expected) = expected
        && expected != fetched.digest
    {
        return Err(fail(PullFailure::Digest {
            expected,
            actual: fetched.digest,
        }));
    }
    verify_venus(
        &scratch.path().join(&unpacked.manifest.boot.disk),
        &unpacked.manifest,
    )
    .map_err(|e| fail(PullFailure::Venus(e)))?;

    let record = Record {
        id: fetched.digest,
        source: source.to_string(),
        pulled: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        artifact_bytes: fetched.bytes,
        signed: unpacked.signed_by.is_some(),
        signed_by: unpacked.signed_by,
    };
    let _late_lock = match expected {
        None => Some(
            cache
                .lock(&record.id)
                .map_err(|e| fail(PullFailure::Cache(e)))?,
        ),
        Some(_) => None,
    };
    let image = cache
        .commit(scratch, &record)
        .map_err(|e| fail(PullFailure::Cache(e)))?;
    Ok(Pulled {
        image,
        downloaded: true,
    })
}
