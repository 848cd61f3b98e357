//! Early writeback: pulled images are fsynced before they enter the cache, and asking the kernel
//! to start writing each stretch as soon as it is written lets the disk work while the pipeline
//! decompresses, so that final fsync finds little left to do.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub use linux::start;

/// Elsewhere the final fsync does all the work.
#[cfg(not(target_os = "linux"))]
pub fn start(_file: &std::fs::File, _offset: u64, _len: u64) {}
