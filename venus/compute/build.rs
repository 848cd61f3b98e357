//! Compiles the WGSL compute shader to SPIR-V at build time (naga), so the program needs no
//! shader compiler at run time and none on the build host.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let src = "src/matmul.wgsl";
    println!("cargo::rerun-if-changed={src}");
    let module = naga::front::wgsl::parse_str(&std::fs::read_to_string(src)?)?;
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::PUSH_CONSTANT,
    )
    .validate(&module)?;
    let options = naga::back::spv::Options {
        lang_version: (1, 3),
        ..Default::default()
    };
    let pipeline = naga::back::spv::PipelineOptions {
        shader_stage: naga::ShaderStage::Compute,
        entry_point: "main".into(),
    };
    let words = naga::back::spv::write_vec(&module, &info, &options, Some(&pipeline))?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    std::fs::write(
        std::path::Path::new(&std::env::var("OUT_DIR")?).join("matmul.spv"),
        bytes,
    )?;
    Ok(())
}
