//! `image verify`: re-hash what is cached against the manifest and re-check the Venus bundle.

use crate::cache::{Cache, CacheError, CachedImage};
use crate::digest::Sha256Digest;
use crate::inspect::{InspectError, verify_venus};
use crate::progress::Progress;
use sha2::{Digest as _, Sha256};
use std::fs::File;
use std::io::{self, Read};

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("member {0:?} cannot be read")]
    Read(String, #[source] io::Error),
    #[error("member {path:?} changed: sha256 {actual}, manifest says {declared}")]
    Changed {
        path: String,
        declared: Sha256Digest,
        actual: Sha256Digest,
    },
    #[error("member {path:?} is {actual} bytes, manifest says {declared}")]
    Size {
        path: String,
        declared: u64,
        actual: u64,
    },
    #[error("Venus bundle check failed")]
    Venus(#[from] InspectError),
}

impl exit_class::Classify for VerifyError {
    fn class(&self) -> Option<exit_class::Class> {
        match self {
            VerifyError::Cache(_) => None,
            _ => Some(
                exit_class::Code::Verification
                    .hint("re-pull the image: `carbon-vm image rm ID` then `image pull`"),
            ),
        }
    }
}

/// Re-hashes every member of image `id`; returns it when all still match.
pub fn verify(
    cache: &Cache,
    id: &str,
    progress: &dyn Progress,
) -> Result<CachedImage, VerifyError> {
    let image = cache.get(id)?;
    let _lock = cache.lock(&image.record.id)?;
    let total = image.manifest.total_size().unwrap_or(0);
    progress.begin("verify", Some(total));
    for m in &image.manifest.members {
        let path = image.member_path(&m.path);
        let rerr = |e| VerifyError::Read(m.path.clone(), e);
        let mut f = File::open(&path).map_err(rerr)?;
        let actual = f.metadata().map_err(rerr)?.len();
        if actual != m.size {
            return Err(VerifyError::Size {
                path: m.path.clone(),
                declared: m.size,
                actual,
            });
        }
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(rerr)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            progress.advance(n as u64);
        }
        let actual = Sha256Digest::from_hasher(h);
        if actual != m.sha256 {
            return Err(VerifyError::Changed {
                path: m.path.clone(),
                declared: m.sha256,
                actual,
            });
        }
    }
    progress.finish();
    verify_venus(
        &image.member_path(&image.manifest.boot.disk),
        &image.manifest,
    )?;
    Ok(image)
}
