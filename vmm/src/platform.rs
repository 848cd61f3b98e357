//! What needs a different system call on Linux and on macOS: a process's command line, waiting
//! for a process that is not our child, the host's memory, cloning a disk.
//!
//! The macOS module is type-checked on Linux by scripts/macos-check (docs/macos.md) but runs
//! only on a Mac: keep it small.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "macos")]
mod macos;

#[cfg(target_os = "linux")]
pub use linux::{clone_file, command_line, host_ram_bytes, wait_exit};
#[cfg(target_os = "macos")]
pub use macos::{clone_file, command_line, host_ram_bytes, wait_exit};
