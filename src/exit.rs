//! Stable exit codes (docs/cli.md) and the hint printed under an error.

use guest_image::cache::CacheError;
use guest_image::pack::PackError;
use guest_image::pull::{PullError, PullFailure};
use guest_image::recipe::RecipeError;
use guest_image::verify::VerifyError;

pub const FAILURE: u8 = 1;
pub const USAGE: u8 = 2;
pub const NOT_FOUND: u8 = 3;
pub const VERIFICATION: u8 = 4;
pub const FETCH: u8 = 5;
pub const HOST: u8 = 6;
pub const NOT_IMPLEMENTED: u8 = 7;
pub const GPU_CHECK: u8 = 8;

/// Classifies an error by the first cause carbon-vm knows.
pub fn classify(err: &anyhow::Error) -> (u8, Option<&'static str>) {
    for cause in err.chain() {
        if let Some(p) = cause.downcast_ref::<PullError>() {
            return match &p.failure {
                PullFailure::Fetch(_) => (
                    FETCH,
                    Some("check the source and the network; nothing was cached"),
                ),
                PullFailure::Unpinned => (
                    VERIFICATION,
                    Some("`carbon-vm image build` and `image pack` print the sha256 to pin"),
                ),
                PullFailure::Cache(_) => (FAILURE, None),
                _ => (
                    VERIFICATION,
                    Some(
                        "the image was refused and nothing was cached; check the source and its sha256",
                    ),
                ),
            };
        }
        if let Some(v) = cause.downcast_ref::<VerifyError>() {
            if !matches!(v, VerifyError::Cache(_)) {
                return (
                    VERIFICATION,
                    Some("re-pull the image: `carbon-vm image rm ID` then `image pull`"),
                );
            }
        }
        if let Some(c) = cause.downcast_ref::<CacheError>() {
            if matches!(
                c,
                CacheError::NotFound(_) | CacheError::Ambiguous(_) | CacheError::ShortId(_)
            ) {
                return (NOT_FOUND, Some("`carbon-vm image ls` lists cached images"));
            }
        }
        if matches!(
            cause.downcast_ref::<PackError>(),
            Some(PackError::MissingTool(..) | PackError::NoBootloader(_))
        ) || matches!(
            cause.downcast_ref::<RecipeError>(),
            Some(RecipeError::NoMmdebstrap(_))
        ) {
            return (
                HOST,
                Some("`carbon-vm doctor` lists what this host is missing"),
            );
        }
        match cause.downcast_ref::<machine::store::StoreError>() {
            Some(machine::store::StoreError::NotFound(_)) => {
                return (NOT_FOUND, Some("`carbon-vm list` lists machines"));
            }
            Some(machine::store::StoreError::BadName(_)) => return (USAGE, None),
            _ => {}
        }
        if cause
            .downcast_ref::<crate::commands::machine::NoImage>()
            .is_some()
        {
            return (NOT_FOUND, None);
        }
        if let Some(e) = cause.downcast_ref::<machine::lifecycle::LifecycleError>() {
            use machine::lifecycle::LifecycleError as L;
            return match e {
                L::Gpu(_) => (
                    HOST,
                    Some("`carbon-vm doctor` shows what the host's Venus stack lacks"),
                ),
                L::Missing(..) => (
                    HOST,
                    Some("`carbon-vm doctor` lists what this host is missing"),
                ),
                L::NotReady(..) | L::Exited(..) => (
                    FAILURE,
                    Some(
                        "the machine's console.log (in the dir `carbon-vm inspect` shows) has the whole boot",
                    ),
                ),
                _ => (FAILURE, None),
            };
        }
        if cause
            .downcast_ref::<crate::commands::doctor::HostNotReady>()
            .is_some()
        {
            return (HOST, None);
        }
        if let Some(f) = cause.downcast_ref::<crate::commands::machine::GpuCheckFailed>() {
            return (GPU_CHECK, Some(f.0.hint));
        }
        if let Some(machine::create::CreateError::Driver(_)) = cause.downcast_ref() {
            return (NOT_IMPLEMENTED, None);
        }
        if cause
            .downcast_ref::<guest_image::source::SourceError>()
            .is_some()
            || cause
                .downcast_ref::<guest_image::digest::BadDigest>()
                .is_some()
            || cause.downcast_ref::<vmm::UnknownDriver>().is_some()
        {
            return (USAGE, None);
        }
    }
    (FAILURE, None)
}
