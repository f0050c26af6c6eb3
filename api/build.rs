//! Compiles `proto/*.proto` with protox (no system `protoc` needed) and generates the
//! prost messages and tonic clients and servers.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "control.proto",
        "filesync.proto",
        "health.proto",
        "ops.proto",
        "wire.proto",
        "worker.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed=proto/{file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
