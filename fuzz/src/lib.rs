//! What the fuzz targets share: the fixed inputs beside the fuzzed one, and scratch space.

use guest_image::manifest::{Boot, Bundles, ContainerImage, Manifest, Member, SCHEMA};
use guest_image::{Sha256Digest, Trust};
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;

/// The largest single allocation a run may make: a larger one fails, which aborts the run as a
/// crash ("memory allocation of N bytes failed"). libFuzzer's own `-malloc_limit_mb` needs a
/// sanitizer's allocator hooks, which a stable toolchain's build (`--sanitizer none`) lacks; its
/// `-rss_limit_mb` still catches memory that is really used. C code (zstd) allocates outside.
pub const MAX_ALLOCATION: usize = 256 << 20;

struct Limited;

// SAFETY: every call is passed to the system allocator unchanged, or refused with a null
// pointer, which the GlobalAlloc contract allows for any request.
unsafe impl GlobalAlloc for Limited {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's layout, as GlobalAlloc::alloc requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOCATION {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's layout, as GlobalAlloc::alloc_zeroed requires.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from System through this allocator, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > MAX_ALLOCATION {
            return std::ptr::null_mut();
        }
        // SAFETY: `ptr` came from System through this allocator, with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Limited = Limited;

/// What the targets that verify signatures trust: the pinned release keys and `seed_key`, the
/// public key the signed seeds are signed with (`fuzz/keys/seeds.pub`: `make-seeds` writes it and
/// throws the secret key away).
pub fn trust(seed_key: &str) -> Trust {
    Trust::with_pinned(&[seed_key.to_owned()]).expect("the seed key parses")
}

/// A fresh empty directory for one run, under `$TMPDIR` (scripts/fuzz points it at a scratch
/// directory it removes).
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("carbon-fuzz-")
        .tempdir()
        .expect("creating a scratch directory")
}

/// Splits `data` at its first `n - 1` NUL bytes into `n` parts (missing parts are empty).
pub fn parts<const N: usize>(data: &[u8]) -> [&[u8]; N] {
    let mut out = [&[][..]; N];
    let mut it = data.splitn(N, |&b| b == 0);
    for slot in &mut out {
        *slot = it.next().unwrap_or_default();
    }
    out
}

/// The root partition's name in the disk seeds: what `pack` names it.
pub const ROOT_PARTITION: &str = "carbon-root";
pub const EFI_PARTITION: &str = "carbon-efi";
pub const VENUS_LIBRARY: &str = "/usr/lib/x86_64-linux-gnu/libvulkan_virtio.so";
pub const CONTAINER_IMAGE: &str = "/usr/share/carbon/images/venus.oci.tar";

/// A manifest like the one `pack` writes, with the members given as (path, bytes).
pub fn manifest(members: &[(&str, &[u8])]) -> Manifest {
    Manifest {
        schema: SCHEMA,
        name: "carbon-guest-fuzz".into(),
        arch: "x86_64".into(),
        created: 1_700_000_000,
        boot: Boot {
            kernel: "boot/vmlinuz".into(),
            initrd: "boot/initrd.img".into(),
            disk: "disk.raw".into(),
            cmdline: "root=PARTUUID=5f1d3c2e-8d4b-4c1a-9d7e-2b6a0c9e4f10 rw".into(),
            root_partition: ROOT_PARTITION.into(),
            efi_partition: EFI_PARTITION.into(),
        },
        bundles: Bundles {
            kernel_version: "6.12.48+deb13-amd64".into(),
            mesa_version: "25.0.7-2".into(),
            page_size: Some(4096),
            venus_icd: venus::icd::VENUS_ICD_PATH.into(),
            venus_library: VENUS_LIBRARY.into(),
            container_images: vec![ContainerImage {
                name: "localhost/carbon-venus:latest".into(),
                path: CONTAINER_IMAGE.into(),
            }],
            container_driver: None,
        },
        members: members
            .iter()
            .map(|(path, data)| Member {
                path: (*path).into(),
                size: data.len() as u64,
                sha256: Sha256Digest::of(data),
            })
            .collect(),
    }
}

/// Where `make-seeds` writes: `fuzz/corpus/TARGET`.
pub fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}
