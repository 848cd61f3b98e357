//! Guest images for carbon-vm: the artifact format, the verifying pull pipeline, the
//! content-addressed cache, and the recipe that builds the default guest from Debian packages.

pub mod cache;
pub mod catalog;
pub mod digest;
pub mod fetch;
pub mod grow;
mod hashing;
pub mod index;
pub mod inspect;
pub mod interrupt;
pub mod manifest;
pub mod pack;
pub mod progress;
pub mod pull;
pub mod push;
pub mod recipe;
pub mod sign;
pub mod source;
pub mod space;
mod sparse;
pub mod trust;
pub mod unpack;
pub mod untrusted;
pub mod verify;
mod writeback;

pub use cache::{Cache, CachedImage};
pub use digest::Sha256Digest;
pub use manifest::Manifest;
pub use progress::{Progress, Silent};
pub use pull::{PullOptions, pull};
pub use source::Source;
pub use trust::Trust;
