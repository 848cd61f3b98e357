//! Text a guest sends back: the GPU check script's output (`venus::check::diagnose`, with the
//! `vulkaninfo --summary` parser), the llama.cpp workloads' (`venus::llama::diagnose`, and
//! `venus::llama::rpc::diagnose` for the ggml device's), and the QEMU trace log of the guest's GPU blobs (`venus::blobs::audit`); each report as JSON, as
//! `gpu check --json` prints it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let check = venus::check::diagnose(&text);
    assert_eq!(check.ok, check.missing.is_none());
    serde_json::to_string(&check).unwrap();
    let llama = venus::llama::diagnose(&text);
    assert_eq!(llama.ok, llama.failure.is_none());
    serde_json::to_string(&llama).unwrap();
    let rpc = venus::llama::rpc::diagnose(&text, Some("8.0.0"));
    assert_eq!(rpc.ok, rpc.failure.is_none());
    serde_json::to_string(&rpc).unwrap();
    let blobs = venus::blobs::audit(&text);
    assert!(blobs.unaligned <= blobs.blobs && blobs.unaligned_sizes.len() <= blobs.unaligned);
    serde_json::to_string(&blobs).unwrap();
});
