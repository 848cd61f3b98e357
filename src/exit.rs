//! Stable exit codes (docs/cli.md) and the hint printed under an error. Each error type declares
//! its class next to its definition (machine::exit_class); this is where classes become numbers.

use machine::exit_class::{Class, Classify, Code};
use machine::guest_image;

pub const FAILURE: u8 = 1;
pub const USAGE: u8 = 2;
pub const NOT_FOUND: u8 = 3;
pub const VERIFICATION: u8 = 4;
pub const FETCH: u8 = 5;
pub const HOST: u8 = 6;
pub const NOT_IMPLEMENTED: u8 = 7;
pub const GPU_CHECK: u8 = 8;
/// Another carbon-vm command is changing the machine.
pub const BUSY: u8 = 9;

/// The exit code of a class.
fn code(c: Code) -> u8 {
    match c {
        Code::Failure => FAILURE,
        Code::Usage => USAGE,
        Code::NotFound => NOT_FOUND,
        Code::Verification => VERIFICATION,
        Code::Fetch => FETCH,
        Code::Host => HOST,
        Code::NotImplemented => NOT_IMPLEMENTED,
        Code::GpuCheck => GPU_CHECK,
        Code::Busy => BUSY,
    }
}

/// The class an error declares next to its definition, for the error types that declare one.
fn class_of(e: &(dyn std::error::Error + 'static)) -> Option<Class> {
    macro_rules! first_declared {
        ($($t:ty),* $(,)?) => {
            $(if let Some(e) = e.downcast_ref::<$t>() {
                return e.class();
            })*
        };
    }
    use guest_image::{cache, catalog, digest, pack, pull, recipe, sign, source, verify};
    first_declared!(
        pull::PullError,
        verify::VerifyError,
        cache::CacheError,
        pack::PackError,
        recipe::RecipeError,
        sign::SignError,
        catalog::CatalogError,
        source::SourceError,
        digest::BadDigest,
        machine::store::StoreError,
        machine::spec::InvalidSpec,
        machine::volumes::VolumeError,
        machine::lifecycle::LifecycleError,
        machine::create::CreateError,
        machine::podman_machine::ExposeError,
        machine::images::ImageRmError,
        crate::settings::BadSetting,
        crate::commands::doctor::HostNotReady,
        crate::commands::machine::GpuCheckFailed,
        crate::commands::machine::MacPagesFailed,
        crate::commands::machine::WorkloadFailed,
    );
    None
}

/// The exit code and hint of the first cause along the chain that declares a class.
pub fn classify(err: &anyhow::Error) -> (u8, Option<&'static str>) {
    err.chain()
        .find_map(class_of)
        .map_or((FAILURE, None), |c| (code(c.code), c.hint))
}
