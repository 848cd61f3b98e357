//! virtio-gpu Venus: what the guest needs to run Vulkan on the host GPU, the flags and memory
//! window each VMM is given, host probes, and the check that proves it works end to end.

pub mod blobs;
pub mod bundle;
pub mod check;
pub mod flags;
pub mod icd;
pub mod llama;
pub mod probe;
pub mod vulkaninfo;
pub mod window;
