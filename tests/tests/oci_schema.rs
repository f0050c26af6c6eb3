//! The OCI schema validator the build tests rely on gives upstream's answers on the
//! image-spec's own examples.

use kiln_tests::conformance_dir;
use kiln_tests::oci_schema::OciSchemas;

#[test]
fn the_validator_agrees_with_upstream_examples() {
    let schemas = OciSchemas::load();
    let rows: Vec<serde_json::Value> = serde_json::from_slice(
        &std::fs::read(conformance_dir("oci-image-spec").join("examples.json")).unwrap(),
    )
    .unwrap();
    let mut disagreements = Vec::new();
    let mut checked = 0;
    for row in &rows {
        let media_type = row["media_type"].as_str().unwrap();
        let document = row["document"].as_str().unwrap();
        let result = schemas.check(media_type, document.as_bytes());
        checked += 1;
        if result.is_err() != row["fail"].as_bool().unwrap() {
            disagreements.push(format!(
                "{} #{} (beyond schema: {}): {result:?}",
                row["source"], row["index"], row["beyond_schema"]
            ));
        }
    }
    println!("{checked} checked; disagreements: {disagreements:#?}");
    assert_eq!(rows.len(), 71);
    // Only base64 `data` is not checked (upstream's JSON Schema library enforces it).
    assert_eq!(disagreements.len(), 1, "{disagreements:#?}");
    assert!(disagreements[0].contains("base64"), "{disagreements:#?}");
}
