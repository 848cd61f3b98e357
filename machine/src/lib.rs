//! carbon-vm machines: one directory per machine, the lifecycle that drives the VMM and gvproxy,
//! and the Podman connection. Nothing is kept in memory between invocations: state is derived
//! from the machine directory on every call.

pub mod create;
pub mod gpu;
pub mod lifecycle;
mod platform;
pub mod podman;
pub mod podman_machine;
pub mod process;
pub mod ssh;
pub mod store;

pub use store::{MachineDir, Store};
