//! Compiles `proto/*.proto` with protox (no system `protoc` needed) and generates the
//! prost messages and tonic clients and servers.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "control.proto",
        "filesync.proto",
        "gateway.proto",
        "health.proto",
        "ops.proto",
        "secrets.proto",
        "sshforward.proto",
        "wire.proto",
        "worker.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed=proto/{file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;

    // The client's FileSend server, whose messages pass through undecoded.
    println!("cargo:rerun-if-changed=proto/raw_filesend.proto");
    let raw_out = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("raw");
    std::fs::create_dir_all(&raw_out)?;
    let descriptors = protox::compile(["raw_filesend.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .codec_path("crate::raw::RawCodec")
        .out_dir(raw_out)
        .compile_fds(descriptors)?;
    Ok(())
}
