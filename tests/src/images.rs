//! Tiny images made by hand, for fake registries: one layer of any bytes, a config and a
//! manifest, with their digests.

/// `sha256:` + the hex SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// A single-layer linux image of architecture `arch` whose layer is `layer`, as
/// `(manifest, config)`.
pub fn single_layer_image(arch: &str, layer: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let config = format!(
        r#"{{"architecture":"{arch}","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}},"config":{{}}}}"#,
        sha256(layer)
    )
    .into_bytes();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{}}}]}}"#,
        sha256(&config),
        config.len(),
        sha256(layer),
        layer.len()
    )
    .into_bytes();
    (manifest, config)
}
