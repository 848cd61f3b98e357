//! Every environment variable carbon-vm reads (documented in docs/configuration.md).

/// Relocates all of carbon-vm's state: config, image cache, machines, runtime sockets.
pub const HOME: &str = "CARBON_VM_HOME";
/// Debian mirror the image recipe installs from.
pub const DEBIAN_MIRROR: &str = "CARBON_VM_DEBIAN_MIRROR";
/// An image catalog file replacing the built-in one (configs/catalog.json): a mirror, a pinned
/// release, your own images.
pub const CATALOG: &str = "CARBON_VM_CATALOG";
/// Log filter for diagnostics on stderr (tracing's EnvFilter syntax, e.g. `debug`).
pub const LOG: &str = "CARBON_VM_LOG";
/// Reproducible builds: the timestamp the recipe and `image pack` stamp into the artifact.
pub const SOURCE_DATE_EPOCH: &str = "SOURCE_DATE_EPOCH";
/// QEMU accelerator: `auto` (default: KVM where a probe shows it runs guests, else TCG), `kvm`, `tcg`.
pub const ACCEL: &str = "CARBON_VM_ACCEL";
/// The krunkit executable (default: `krunkit` from PATH).
pub const KRUNKIT: &str = "CARBON_VM_KRUNKIT";
/// The gvproxy executable (default: `gvproxy` from PATH), e.g. the one Podman's installer keeps
/// in /opt/podman/bin.
pub const GVPROXY: &str = "CARBON_VM_GVPROXY";
/// The ggml device's server command line (default: `ggml-rpc-server` from PATH), e.g.
/// `ggml-rpc-server -d Vulkan0` or a wrapper that runs one from a root.
pub const GGML_SERVER: &str = "CARBON_VM_GGML_SERVER";
/// Seconds `start` waits for the guest's Ready signal once the VMM runs (default 900: a first boot
/// under TCG on a small host takes minutes).
pub const START_TIMEOUT: &str = "CARBON_VM_START_TIMEOUT";
/// Seconds `start` waits for the Podman API once the guest is Ready (default: what is left of
/// start's 15 minutes). For tests and slow hosts.
pub const PODMAN_TIMEOUT: &str = "CARBON_VM_PODMAN_TIMEOUT";
