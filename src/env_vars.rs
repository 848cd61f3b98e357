//! Every environment variable carbon-vm reads (documented in docs/configuration.md).

/// Relocates all of carbon-vm's state: config, image cache, machines, runtime sockets.
pub const HOME: &str = "CARBON_VM_HOME";
/// Debian mirror the image recipe installs from.
pub const DEBIAN_MIRROR: &str = "CARBON_VM_DEBIAN_MIRROR";
/// Log filter for diagnostics on stderr (tracing's EnvFilter syntax, e.g. `debug`).
pub const LOG: &str = "CARBON_VM_LOG";
/// Reproducible builds: the timestamp the recipe and `image pack` stamp into the artifact.
pub const SOURCE_DATE_EPOCH: &str = "SOURCE_DATE_EPOCH";
/// QEMU accelerator: `auto` (default: KVM where a probe shows it runs guests, else TCG), `kvm`, `tcg`.
pub const ACCEL: &str = "CARBON_VM_ACCEL";
