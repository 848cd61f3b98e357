//! carbon-vm machines: one directory per machine, the one lifecycle that drives every VMM and
//! gvproxy, and the Podman connection. Nothing is kept in memory between invocations: state is
//! derived from the machine directory on every call.
//!
//! The CLI depends on this crate alone: what it needs of the layers below (drivers, host probes)
//! is re-exported here.

mod atomic;
mod child;
pub mod clients;
pub mod create;
pub mod docker;
pub mod ggml;
pub mod gpu;
pub mod host;
pub mod images;
pub mod lifecycle;
pub mod podman;
pub mod podman_machine;
pub mod spec;
pub mod ssh;
pub mod store;
pub mod volumes;

pub use exit_class;
pub use guest_image;
pub use store::{MachineDir, Store};
pub use vmm::DriverKind;
