//! The images machines boot: a machine boots its image's kernel and initrd from the image cache,
//! so an image in use is removed only when asked to by force (docs/internals.md).

use crate::store::{Store, StoreError};
use exit_class::{Class, Classify, Code};
use guest_image::Sha256Digest;
use guest_image::cache::{Cache, CacheError};

#[derive(Debug, thiserror::Error)]
pub enum ImageRmError {
    #[error("image {0} is in use by machine(s) {1}: they boot its kernel")]
    InUse(Sha256Digest, String),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Classify for ImageRmError {
    fn class(&self) -> Option<Class> {
        match self {
            ImageRmError::InUse(..) => Some(
                Code::Failure.hint("`carbon-vm rm` those machines first, or `image rm --force`"),
            ),
            ImageRmError::Cache(e) => e.class(),
            ImageRmError::Store(e) => e.class(),
        }
    }
}

/// The machines created from image `id`.
pub fn users_of(store: &Store, id: &Sha256Digest) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    for name in store.names()? {
        if store.open(&name)?.spec()?.image == *id {
            out.push(name);
        }
    }
    Ok(out)
}

/// Removes the cached image `id` (or an ID prefix) unless machines boot it; `force` removes it
/// anyway (they will not start again). Returns its full ID.
pub fn remove(
    store: &Store,
    cache: &Cache,
    id: &str,
    force: bool,
) -> Result<Sha256Digest, ImageRmError> {
    let image = cache.get(id)?;
    let users = users_of(store, &image.record.id)?;
    if !users.is_empty() && !force {
        return Err(ImageRmError::InUse(image.record.id, users.join(", ")));
    }
    Ok(cache.remove(&image.record.id.to_string())?)
}
