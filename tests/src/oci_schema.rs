//! The OCI image-spec JSON Schemas from `../shared/conformance/oci-image-spec`, for checking
//! what kiln writes with a validator kiln did not write.

use std::collections::HashMap;

use jsonschema::{Draft, Validator};
use serde_json::Value;

use crate::conformance_dir;

/// Each schema file and the URLs its `$ref`s know it by (upstream's `schema/schema.go`).
const FILES: [(&str, &[&str]); 7] = [
    (
        "config-schema.json",
        &["https://opencontainers.org/schema/image/config"],
    ),
    (
        "content-descriptor.json",
        &[
            "https://opencontainers.org/schema/descriptor",
            "https://opencontainers.org/schema/image/content-descriptor.json",
        ],
    ),
    (
        "defs-descriptor.json",
        &[
            "https://opencontainers.org/schema/image/descriptor/mediaType",
            "https://opencontainers.org/schema/defs-descriptor.json",
            "https://opencontainers.org/schema/image/defs-descriptor.json",
        ],
    ),
    (
        "defs.json",
        &[
            "https://opencontainers.org/schema/defs.json",
            "https://opencontainers.org/schema/image/defs.json",
            "https://opencontainers.org/schema/image/descriptor/defs.json",
        ],
    ),
    (
        "image-index-schema.json",
        &["https://opencontainers.org/schema/image/index"],
    ),
    (
        "image-layout-schema.json",
        &["https://opencontainers.org/schema/image/layout"],
    ),
    (
        "image-manifest-schema.json",
        &["https://opencontainers.org/schema/image/manifest"],
    ),
];

/// The root schema file for each media type kiln writes.
const ROOTS: [(&str, &str); 5] = [
    (
        "application/vnd.oci.descriptor.v1+json",
        "content-descriptor.json",
    ),
    (
        "application/vnd.oci.image.config.v1+json",
        "config-schema.json",
    ),
    (
        "application/vnd.oci.image.index.v1+json",
        "image-index-schema.json",
    ),
    (
        "application/vnd.oci.image.manifest.v1+json",
        "image-manifest-schema.json",
    ),
    (
        "application/vnd.oci.layout.header.v1+json",
        "image-layout-schema.json",
    ),
];

/// Draft-04 validators for the OCI documents, keyed by media type.
pub struct OciSchemas {
    validators: HashMap<&'static str, Validator>,
}

impl OciSchemas {
    /// Loads the schemas, with every alias registered so that `$ref`s resolve offline.
    pub fn load() -> Self {
        let dir = conformance_dir("oci-image-spec/schema");
        let read = |file: &str| -> Value {
            serde_json::from_slice(&std::fs::read(dir.join(file)).unwrap())
                .unwrap_or_else(|e| panic!("{file}: {e}"))
        };
        let mut options = jsonschema::options().with_draft(Draft::Draft4);
        for (file, aliases) in FILES {
            for alias in aliases {
                options = options.with_resource(*alias, Draft::Draft4.create_resource(read(file)));
            }
        }
        let validators = ROOTS
            .iter()
            .map(|(media_type, file)| {
                let validator = options
                    .build(&read(file))
                    .unwrap_or_else(|e| panic!("{file}: {e}"));
                (*media_type, validator)
            })
            .collect();
        OciSchemas { validators }
    }

    /// Checks `document` against the schema of `media_type`; the error lists what is wrong.
    pub fn check(&self, media_type: &str, document: &[u8]) -> Result<(), String> {
        let validator = self
            .validators
            .get(media_type)
            .ok_or_else(|| format!("no schema for {media_type}"))?;
        let value: Value =
            serde_json::from_slice(document).map_err(|e| format!("not JSON: {e}"))?;
        let mut errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        beyond_schema(&value, media_type, &mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

/// The checks upstream's Go validator makes besides the schema: sha256 digests are 64
/// lowercase hex characters, and a config's `Env` entries are `KEY=VALUE`.
fn beyond_schema(value: &Value, media_type: &str, errors: &mut Vec<String>) {
    fn digests(value: &Value, errors: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    if key == "digest"
                        && let Some(hex) = child.as_str().and_then(|d| d.strip_prefix("sha256:"))
                        && !(hex.len() == 64
                            && hex
                                .bytes()
                                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
                    {
                        errors.push(format!("bad sha256 digest {child}"));
                    }
                    digests(child, errors);
                }
            }
            Value::Array(items) => items.iter().for_each(|item| digests(item, errors)),
            _ => {}
        }
    }
    digests(value, errors);
    if media_type == "application/vnd.oci.image.config.v1+json" {
        for entry in value["config"]["Env"].as_array().into_iter().flatten() {
            let ok = entry
                .as_str()
                .and_then(|e| e.split_once('='))
                .is_some_and(|(key, _)| !key.is_empty());
            if !ok {
                errors.push(format!("Env entry {entry} is not KEY=VALUE"));
            }
        }
    }
}

/// Asserts that the OCI layout's `oci-layout`, `index.json`, and each index, manifest
/// and config it reaches pass the image-spec's JSON Schemas.
pub fn assert_valid_layout(layout: &std::path::Path) {
    let schemas = OciSchemas::load();
    let check = |media_type: &str, path: &std::path::Path| {
        let bytes = std::fs::read(path).unwrap();
        if let Err(errors) = schemas.check(media_type, &bytes) {
            panic!("{} is not a valid {media_type}: {errors}", path.display());
        }
        serde_json::from_slice::<Value>(&bytes).unwrap()
    };
    let blob = |descriptor: &Value| {
        let digest = descriptor["digest"].as_str().unwrap();
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    check(
        "application/vnd.oci.layout.header.v1+json",
        &layout.join("oci-layout"),
    );
    const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    let mut pending = vec![check(INDEX, &layout.join("index.json"))];
    while let Some(index) = pending.pop() {
        for descriptor in index["manifests"].as_array().unwrap() {
            if descriptor["mediaType"] == INDEX {
                pending.push(check(INDEX, &blob(descriptor)));
                continue;
            }
            let manifest = check(
                "application/vnd.oci.image.manifest.v1+json",
                &blob(descriptor),
            );
            check(
                "application/vnd.oci.image.config.v1+json",
                &blob(&manifest["config"]),
            );
        }
    }
}
