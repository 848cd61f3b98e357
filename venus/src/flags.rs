//! virglrenderer flag sets per VMM, as libkrun's `krun_set_gpu_options2` takes them.

/// virglrenderer's flag bits (libkrun.h `VIRGLRENDERER_*`).
pub mod bits {
    pub const USE_EGL: u32 = 1 << 0;
    pub const THREAD_SYNC: u32 = 1 << 1;
    pub const USE_GLX: u32 = 1 << 2;
    pub const USE_SURFACELESS: u32 = 1 << 3;
    pub const USE_GLES: u32 = 1 << 4;
    pub const USE_EXTERNAL_BLOB: u32 = 1 << 5;
    pub const VENUS: u32 = 1 << 6;
    pub const NO_VIRGL: u32 = 1 << 7;
    pub const USE_ASYNC_FENCE_CB: u32 = 1 << 8;
    pub const RENDER_SERVER: u32 = 1 << 9;
    pub const DRM: u32 = 1 << 10;
}

use bits::*;

/// krunkit's fixed set on macOS: Venus only (MoltenVK has no GL for virgl), no choice offered.
pub const KRUNKIT: u32 = VENUS | NO_VIRGL;

/// libkrun on Linux. virglrenderer >= 1.0 serves Venus only through its render server (without
/// RENDER_SERVER the guest silently falls back to llvmpipe), and fences retire only with
/// THREAD_SYNC and the asynchronous fence callback.
pub const LIBKRUN_LINUX: u32 = VENUS | NO_VIRGL | RENDER_SERVER | THREAD_SYNC | USE_ASYNC_FENCE_CB;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn krunkit_is_venus_without_virgl() {
        assert_eq!(
            KRUNKIT, 0xC0,
            "the value krunkit passes (REFERENCE.md section 1)"
        );
    }

    #[test]
    fn libkrun_on_linux_needs_the_render_server_and_fence_threads() {
        for needed in [VENUS, RENDER_SERVER, THREAD_SYNC, USE_ASYNC_FENCE_CB] {
            assert_ne!(LIBKRUN_LINUX & needed, 0, "{needed:#x}");
        }
        assert_eq!(LIBKRUN_LINUX & (USE_EGL | USE_GLX | DRM), 0, "no GL paths");
    }
}
