//! virtio-gpu Venus: what the guest needs to run Vulkan on the host GPU, and how to check it.

pub mod icd;
