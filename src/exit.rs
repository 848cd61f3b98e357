//! Stable exit codes (docs/cli.md) and the hint printed under an error.

use guest_image::cache::CacheError;
use guest_image::catalog::CatalogError;
use guest_image::pack::PackError;
use guest_image::pull::{PullError, PullFailure};
use guest_image::recipe::RecipeError;
use guest_image::verify::VerifyError;
use machine::guest_image;
use machine::host::VmmError;
use machine::store::StoreError;

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

const MAC_PAGES_HINT: &str = "a 16 KiB-page guest kernel rounds every blob (the aarch64 default image \
     boots one); on a 4 KiB-page guest only a Mesa that aligns its allocations to 16 KiB does";
const CATALOG_HINT: &str = "CARBON_VM_CATALOG names the catalog file (docs/configuration.md)";
const BUILD_HINT: &str = "no image of that name is cached: `carbon-vm image build -o guest.tar.zst` \
    then `image pull guest.tar.zst --sha256 HEX` caches one (or `--image ID` picks a cached image)";

fn classify_pull(p: &PullError) -> (u8, Option<&'static str>) {
    match &p.failure {
        PullFailure::Fetch(_) => (
            FETCH,
            Some("check the source and the network; nothing was cached"),
        ),
        PullFailure::Unpinned => (
            VERIFICATION,
            Some("`carbon-vm image build` and `image pack` print the sha256 to pin"),
        ),
        PullFailure::Cache(_) => (FAILURE, None),
        PullFailure::NoSpace(_) => (
            FAILURE,
            Some("free space where CARBON_VM_HOME keeps its cache; nothing was cached"),
        ),
        _ => (
            VERIFICATION,
            Some("the image was refused and nothing was cached; check the source and its sha256"),
        ),
    }
}

fn store_class(e: &StoreError) -> (u8, Option<&'static str>) {
    match e {
        StoreError::NotFound(_) => (NOT_FOUND, Some("`carbon-vm list` lists machines")),
        StoreError::BadName(_) => (USAGE, None),
        StoreError::Busy(..) => (
            BUSY,
            Some("wait for it to finish; `carbon-vm stop --force NAME` interrupts a start"),
        ),
        StoreError::NotPrivate(..) => (HOST, None),
        _ => (FAILURE, None),
    }
}

/// Classifies an error by the first cause carbon-vm knows.
pub fn classify(err: &anyhow::Error) -> (u8, Option<&'static str>) {
    for cause in err.chain() {
        if let Some(p) = cause.downcast_ref::<PullError>() {
            return classify_pull(p);
        }
        if let Some(v) = cause.downcast_ref::<VerifyError>()
            && !matches!(v, VerifyError::Cache(_))
        {
            return (
                VERIFICATION,
                Some("re-pull the image: `carbon-vm image rm ID` then `image pull`"),
            );
        }
        if let Some(c) = cause.downcast_ref::<CacheError>()
            && matches!(
                c,
                CacheError::NotFound(_) | CacheError::Ambiguous(_) | CacheError::ShortId(_)
            )
        {
            return (NOT_FOUND, Some("`carbon-vm image ls` lists cached images"));
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
        if let Some(e) = cause.downcast_ref::<StoreError>() {
            return store_class(e);
        }
        if let Some(
            guest_image::sign::SignError::Key(_)
            | guest_image::sign::SignError::KeyRead(..)
            | guest_image::sign::SignError::Layout(_),
        ) = cause.downcast_ref::<guest_image::sign::SignError>()
        {
            return (
                USAGE,
                Some(
                    "a key from `minisign -G -W` (or its password in CARBON_VM_SIGN_PASSWORD) and an artifact from `image build` or `image pack`",
                ),
            );
        }
        if cause.downcast_ref::<machine::spec::InvalidSpec>().is_some() {
            return (USAGE, None);
        }
        match cause.downcast_ref::<machine::volumes::VolumeError>() {
            Some(machine::volumes::VolumeError::Gone(..)) => return (FAILURE, None),
            Some(_) => {
                return (
                    USAGE,
                    Some("nothing was created; see `carbon-vm create --help`"),
                );
            }
            None => {}
        }
        match cause.downcast_ref::<CatalogError>() {
            Some(CatalogError::Invalid { .. }) => return (USAGE, Some(CATALOG_HINT)),
            Some(CatalogError::NoEntry { .. }) => {
                return (
                    NOT_FOUND,
                    Some("`--image ID` names a cached image (`carbon-vm image ls`)"),
                );
            }
            // Boxed, so the chain holds no PullError of its own to find below.
            Some(CatalogError::Pull { source, .. }) => {
                let (code, hint) = classify_pull(source);
                let not_cached = matches!(
                    source.failure,
                    PullFailure::Unpinned | PullFailure::Fetch(_)
                );
                return (code, if not_cached { Some(BUILD_HINT) } else { hint });
            }
            Some(CatalogError::WrongImage { .. }) => return (VERIFICATION, Some(CATALOG_HINT)),
            _ => {}
        }
        if let Some(e) = cause.downcast_ref::<machine::lifecycle::LifecycleError>() {
            use machine::lifecycle::LifecycleError as L;
            return match e {
                L::Vmm(VmmError::Gpu(_)) => (
                    HOST,
                    Some("`carbon-vm doctor` shows what the host's Venus stack lacks"),
                ),
                // The error's text has the remedy (CARBON_VM_ACCEL=tcg).
                L::Vmm(VmmError::KvmFailed(_)) => (HOST, None),
                L::Vmm(VmmError::Missing(..)) | L::Missing(..) => (
                    HOST,
                    Some("`carbon-vm doctor` lists what this host is missing"),
                ),
                L::NoGgmlServer(_) => (
                    HOST,
                    Some("`carbon-vm doctor` shows the ggml server it looks for"),
                ),
                L::GgmlFailed(_) => (
                    FAILURE,
                    Some(
                        "ggml.log in the machine's dir says more; on Linux the server needs unprivileged user namespaces",
                    ),
                ),
                L::Exited("gvproxy", _) => (
                    FAILURE,
                    Some(
                        "gvproxy.log in the machine's dir (`carbon-vm inspect` shows it) says more; krunkit machines need a gvproxy that listens in vfkit mode (macOS builds do; on Linux, 0.8.9 and later; CARBON_VM_GVPROXY names another)",
                    ),
                ),
                L::NotReady(..) | L::Exited(..) | L::Vmm(VmmError::Exited(..)) => (
                    FAILURE,
                    Some(
                        "the machine's console.log (in the dir `carbon-vm inspect` shows) has the whole boot, and its vmm.log the VMM's own messages",
                    ),
                ),
                L::Vmm(VmmError::Resources(_))
                | L::Invalid(_)
                | L::Shrink { .. }
                | L::PodmanOwnsResources(_) => (USAGE, None),
                L::NoPodman(..) => (
                    FAILURE,
                    Some(
                        "the guest booted but its Podman API did not answer, so the machine was stopped; the podman-forward.log and console.log in its dir say more",
                    ),
                ),
                L::PortTaken(..) => (
                    FAILURE,
                    Some("the port is fixed in the Podman machine file; free it and start again"),
                ),
                L::Store(s) => store_class(s),
                _ => (FAILURE, None),
            };
        }
        if cause
            .downcast_ref::<crate::settings::BadSetting>()
            .is_some()
        {
            return (
                USAGE,
                Some("docs/configuration.md lists carbon-vm's environment variables"),
            );
        }
        if cause
            .downcast_ref::<crate::commands::doctor::HostNotReady>()
            .is_some()
        {
            return (HOST, None);
        }
        if cause
            .downcast_ref::<crate::commands::image::ImageInUse>()
            .is_some()
        {
            return (
                FAILURE,
                Some("`carbon-vm rm` those machines first, or `image rm --force`"),
            );
        }
        if let Some(f) = cause.downcast_ref::<crate::commands::machine::GpuCheckFailed>() {
            return (GPU_CHECK, Some(f.0.hint));
        }
        if cause
            .downcast_ref::<crate::commands::machine::MacPagesFailed>()
            .is_some()
        {
            return (GPU_CHECK, Some(MAC_PAGES_HINT));
        }
        if let Some(w) = cause.downcast_ref::<crate::commands::machine::WorkloadFailed>() {
            return (GPU_CHECK, Some(w.1));
        }
        match cause.downcast_ref::<machine::create::CreateError>() {
            Some(machine::create::CreateError::Driver(_)) => return (NOT_IMPLEMENTED, None),
            Some(machine::create::CreateError::Unavailable(VmmError::Unavailable {
                hint, ..
            })) => return (NOT_IMPLEMENTED, Some(hint)),
            Some(
                machine::create::CreateError::PodmanMachineDriver
                | machine::create::CreateError::Arch { .. }
                | machine::create::CreateError::Invalid(_),
            ) => return (USAGE, None),
            Some(machine::create::CreateError::NoSpace { .. }) => {
                return (
                    FAILURE,
                    Some(
                        "free space there, or put CARBON_VM_HOME on a larger filesystem; nothing was created",
                    ),
                );
            }
            Some(machine::create::CreateError::Store(e)) => return store_class(e),
            _ => {}
        }
        if let Some(e) = cause.downcast_ref::<machine::podman_machine::ExposeError>() {
            use machine::podman_machine::ExposeError as E;
            return match e {
                E::NoPodman(_) | E::Unparseable(_) | E::Unsupported(_) => (
                    HOST,
                    Some(
                        "without --podman-machine, `podman -c NAME` reaches the machine through the connection `start` registers",
                    ),
                ),
                E::Exists(_) => (
                    FAILURE,
                    Some("choose another machine name; `podman machine ls` lists Podman's"),
                ),
                _ => (FAILURE, None),
            };
        }
        if cause
            .downcast_ref::<guest_image::source::SourceError>()
            .is_some()
            || cause
                .downcast_ref::<guest_image::digest::BadDigest>()
                .is_some()
            || cause
                .downcast_ref::<machine::host::UnknownDriver>()
                .is_some()
        {
            return (USAGE, None);
        }
    }
    (FAILURE, None)
}
