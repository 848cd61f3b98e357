//! The image catalog: guest images by name and architecture, and where to pull them from.
//! `create` takes its image from here when `--image` names no cached image.
//!
//! An entry pinned by `sha256` means exactly that artifact. An unpinned entry means the newest
//! cached image of that name and architecture (one built locally, or pulled earlier), and when
//! none is cached, its source pulled under a trusted signature.

use crate::cache::{Cache, CacheError, CachedImage};
use crate::digest::Sha256Digest;
use crate::progress::Progress;
use crate::pull::{PullError, PullOptions, pull};
use crate::source::Source;
use crate::trust::Trust;
use serde::{Deserialize, Deserializer};
use std::sync::Arc;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// The name `create` uses when no `--image` is given.
    pub default: String,
    pub images: Vec<Entry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub name: String,
    pub arch: String,
    #[serde(deserialize_with = "source_from_text")]
    pub source: Source,
    #[serde(default)]
    pub sha256: Option<Sha256Digest>,
    /// The release key (a minisign public key, base64) the image must be signed by; with it, no
    /// other key is trusted for this entry.
    #[serde(default)]
    pub key: Option<String>,
}

fn source_from_text<'de, D: Deserializer<'de>>(d: D) -> Result<Source, D::Error> {
    String::deserialize(d)?
        .parse()
        .map_err(serde::de::Error::custom)
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("the image catalog {origin} is not valid: {reason}")]
    Invalid { origin: String, reason: String },
    #[error("the image catalog has no {name:?} image for {arch}")]
    NoEntry { name: String, arch: String },
    #[error("cannot get the catalog's {name:?} image")]
    Pull {
        name: String,
        #[source]
        source: Box<PullError>,
    },
    #[error(
        "{source_ref} gave image {got_name:?} for {got_arch}, but the catalog's entry is {name:?} for {arch}; it was not kept"
    )]
    WrongImage {
        source_ref: String,
        name: String,
        arch: String,
        got_name: String,
        got_arch: String,
    },
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// Where the catalog itself is at fault.
const CATALOG_HINT: &str = "CARBON_VM_CATALOG names the catalog file (docs/configuration.md)";
/// Where the catalog's image is neither cached nor fetchable.
const BUILD_HINT: &str = "no image of that name is cached: `carbon-vm image build -o guest.tar.zst` \
    then `image pull guest.tar.zst --sha256 HEX` caches one (or `--image ID` picks a cached image)";

impl exit_class::Classify for CatalogError {
    fn class(&self) -> Option<exit_class::Class> {
        use exit_class::{Class, Code};
        match self {
            CatalogError::Invalid { .. } => Some(Code::Usage.hint(CATALOG_HINT)),
            CatalogError::NoEntry { .. } => Some(
                Code::NotFound.hint("`--image ID` names a cached image (`carbon-vm image ls`)"),
            ),
            // Boxed, so the chain holds no PullError of its own to find below.
            CatalogError::Pull { source, .. } => {
                let pulled = source.class()?;
                let not_cached = matches!(
                    source.failure,
                    crate::pull::PullFailure::Unpinned | crate::pull::PullFailure::Fetch(_)
                );
                Some(Class {
                    hint: if not_cached {
                        Some(BUILD_HINT)
                    } else {
                        pulled.hint
                    },
                    ..pulled
                })
            }
            CatalogError::WrongImage { .. } => Some(Code::Verification.hint(CATALOG_HINT)),
            _ => None,
        }
    }
}

impl Catalog {
    /// Parses and checks a catalog; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Catalog, CatalogError> {
        let invalid = |reason: String| CatalogError::Invalid {
            origin: origin.to_owned(),
            reason,
        };
        let catalog: Catalog = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if !catalog.images.iter().any(|e| e.name == catalog.default) {
            return Err(invalid(format!(
                "no image is named {:?}, its default",
                catalog.default
            )));
        }
        Ok(catalog)
    }

    pub fn entry(&self, name: &str, arch: &str) -> Result<&Entry, CatalogError> {
        self.images
            .iter()
            .find(|e| e.name == name && e.arch == arch)
            .ok_or_else(|| CatalogError::NoEntry {
                name: name.to_owned(),
                arch: arch.to_owned(),
            })
    }

    pub fn has_name(&self, name: &str) -> bool {
        self.images.iter().any(|e| e.name == name)
    }
}

/// The cached image an entry stands for, pulled (and verified) first when none is cached.
pub fn resolve(
    cache: &Cache,
    entry: &Entry,
    trust: &Trust,
    progress: Arc<dyn Progress>,
) -> Result<CachedImage, CatalogError> {
    match entry.sha256 {
        Some(id) if cache.contains(&id) => return Ok(cache.get(&id.to_string())?),
        Some(_) => {}
        None => {
            // With a key, only an image that key verified: the record says which one did.
            let by_key = |i: &CachedImage| {
                entry.key.as_deref().is_none_or(|k| {
                    crate::trust::key_lines(k).any(|l| i.record.signed_by.as_deref() == Some(l))
                })
            };
            if let Some(newest) = cache.list()?.into_iter().find(|i| {
                i.manifest.name == entry.name && i.manifest.arch == entry.arch && by_key(i)
            }) {
                return Ok(newest);
            }
        }
    }
    let own_key = entry
        .key
        .as_deref()
        .map(|k| {
            let mut t = Trust::default();
            t.add_keys(k).map(|()| t)
        })
        .transpose()
        .map_err(|e| CatalogError::Invalid {
            origin: format!("entry {:?} ({})", entry.name, entry.arch),
            reason: e.to_string(),
        })?;
    let opts = PullOptions {
        pin: entry.sha256,
        trust: own_key.as_ref().unwrap_or(trust),
        require_signature: own_key.is_some(),
        arch: &entry.arch,
        progress,
    };
    let pulled = pull(cache, &entry.source, &opts).map_err(|source| CatalogError::Pull {
        name: entry.name.clone(),
        source: Box::new(source),
    })?;
    let m = &pulled.image.manifest;
    if m.name != entry.name || m.arch != entry.arch {
        let err = CatalogError::WrongImage {
            source_ref: entry.source.to_string(),
            name: entry.name.clone(),
            arch: entry.arch.clone(),
            got_name: m.name.clone(),
            got_arch: m.arch.clone(),
        };
        if pulled.downloaded {
            cache.remove(&pulled.image.record.id.to_string())?;
        }
        return Err(err);
    }
    Ok(pulled.image)
}
