//! What the CLI asks of the host and of the layers below `machine`: the probes `doctor` and the
//! settings run, and the error types the CLI's exit codes are chosen by.

pub use venus::blobs::BlobAudit;
pub use venus::check::{Missing as GpuMissing, Report as GpuReport};
pub use venus::llama::rpc::{HINT as LLAMA_RPC_HINT, Report as LlamaRpcReport};
pub use venus::llama::{COMPLETION as LLAMA_COMPLETION, HINT as LLAMA_HINT, Report as LlamaReport};
pub use venus::probe as gpu_probe;
pub use vmm::krunkit::{INSTALL_HINT as KRUNKIT_INSTALL_HINT, JSON_REST, probe as krunkit};
pub use vmm::qemu::virtiofs::{
    INSTALL_HINT as VIRTIOFSD_INSTALL_HINT, check_walls as shared_folder_walls, find as virtiofsd,
};
pub use vmm::qemu::{Accel, AccelChoice};
pub use vmm::{Arch, kvm};

/// `program` as carbon-vm runs it: a path as it is, a bare name found as a shell would (PATH),
/// or in the system directories a user's PATH may lack (/usr/sbin, /sbin); an executable file
/// only.
pub fn which(program: impl AsRef<std::ffi::OsStr>) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin", "/sbin"].map(Into::into));
    let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
    which::which_in(program, std::env::join_paths(dirs).ok(), cwd).ok()
}

/// Bytes available to this user on the filesystem holding `path`.
pub fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}
