//! Pulling from and pushing to a real registry (Debian's `docker-registry` on loopback),
//! read back by skopeo.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use kiln_tests::images::{sha256, single_layer_image};
use kiln_tests::oci_schema::OciSchemas;
use kiln_tests::registry::Registry;
use kiln_tests::{busybox_archives, docker_config_with_login, kiln, run};

/// Puts the busybox test image into `registry` as `busybox:1`, with skopeo; returns the
/// digest of its one layer.
fn seed_busybox(registry: &Registry, creds: Option<&str>) -> String {
    let archives = busybox_archives();
    let mut copy = Command::new("skopeo");
    copy.args(["copy", "-q", "--dest-tls-verify=false"]);
    if let Some(creds) = creds {
        copy.args(["--dest-creds", creds]);
    }
    run(
        copy.arg(format!("oci-archive:{}", archives.oci.display()))
            .arg(format!("docker://{}/busybox:1", registry.host)),
        true,
    );
    let mut inspect = Command::new("skopeo");
    inspect.args(["inspect", "--tls-verify=false"]);
    if let Some(creds) = creds {
        inspect.args(["--creds", creds]);
    }
    let out = run(
        inspect.arg(format!("docker://{}/busybox:1", registry.host)),
        true,
    );
    let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    inspected["Layers"][0].as_str().unwrap().to_string()
}

/// `kiln build` in `context` with a fresh or given state directory.
fn build(root: &Path, context: &Path, extra: &[&str], docker_config: Option<&Path>) -> Output {
    let mut command = kiln();
    command
        .arg("--root")
        .arg(root)
        .args(["build", "--progress", "plain"])
        .args(extra)
        .arg(context);
    if let Some(dir) = docker_config {
        command.env("DOCKER_CONFIG", dir);
    }
    command.output().unwrap()
}

fn ok(out: Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "build failed:\n{stderr}");
    stderr
}

fn skopeo_inspect(reference: &str) -> serde_json::Value {
    let out = run(
        Command::new("skopeo")
            .args(["inspect", "--tls-verify=false"])
            .arg(format!("docker://{reference}")),
        true,
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn builds_from_a_registry_and_pushes_only_what_changed() {
    let registry = Registry::start(None);
    let base_layer = seed_busybox(&registry, None);
    let host = &registry.host;
    let root = tempfile::tempdir().unwrap();
    let context = tempfile::tempdir().unwrap();
    let dockerfile = |last: &str| {
        fs::write(
            context.path().join("Dockerfile"),
            format!(
                "FROM {host}/busybox:1 AS build\nRUN echo made > /made\n\
                 FROM {host}/busybox:1\nCOPY --from=build /made /made\nRUN {last}\n"
            ),
        )
        .unwrap();
    };
    dockerfile("echo one > /last");
    let app = format!("{host}/app:1");
    let latest = format!("{host}/app:latest");
    let metadata = context.path().join("metadata.json");
    let progress = ok(build(
        root.path(),
        context.path(),
        &[
            "-t",
            &app,
            "-t",
            &latest,
            "--push",
            "--metadata-file",
            metadata.to_str().unwrap(),
        ],
        None,
    ));
    assert!(
        progress.contains(&format!("pulling {host}/busybox:1")),
        "{progress}"
    );

    let inspected = skopeo_inspect(&app);
    assert_eq!(skopeo_inspect(&latest)["Digest"], inspected["Digest"]);
    // The digest kiln reports is the one the registry serves, for signing and deploying.
    let metadata: serde_json::Value =
        serde_json::from_slice(&fs::read(&metadata).unwrap()).unwrap();
    assert_eq!(metadata["containerimage.digest"], inspected["Digest"]);
    let layers = inspected["Layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3, "{inspected}");
    assert_eq!(
        layers[0],
        base_layer.as_str(),
        "the base layer is kept bit for bit"
    );
    // The base layer was mounted from busybox's repository, never uploaded.
    let uploads = registry.requests("\"PUT /v2/app/blobs/uploads/");
    assert_eq!(uploads, 3, "two new layers and the config");

    // skopeo copies it out, checking every digest; the documents pass the OCI schemas.
    let layout = tempfile::tempdir().unwrap();
    run(
        Command::new("skopeo")
            .args(["copy", "-q", "--src-tls-verify=false"])
            .arg(format!("docker://{app}"))
            .arg(format!("oci:{}:app", layout.path().display())),
        true,
    );
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.path().join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest = fs::read(
        layout
            .path()
            .join("blobs/sha256")
            .join(manifest_digest.trim_start_matches("sha256:")),
    )
    .unwrap();
    OciSchemas::load()
        .check("application/vnd.oci.image.manifest.v1+json", &manifest)
        .unwrap();

    // Only the last step changes: one new layer and a config go up.
    dockerfile("echo two > /last");
    ok(build(
        root.path(),
        context.path(),
        &["-t", &app, "--push"],
        None,
    ));
    assert_eq!(
        registry.requests("\"PUT /v2/app/blobs/uploads/") - uploads,
        2
    );
    assert_eq!(skopeo_inspect(&app)["Layers"][0], base_layer.as_str());

    // A base pinned by digest that the store holds is never asked for again.
    let busybox = skopeo_inspect(&format!("{host}/busybox:1"));
    let pinned = format!("{host}/busybox@{}", busybox["Digest"].as_str().unwrap());
    fs::write(
        context.path().join("Dockerfile"),
        format!("FROM {pinned}\nRUN echo pinned\n"),
    )
    .unwrap();
    ok(build(root.path(), context.path(), &[], None));
    let asked = registry.requests("\"GET /v2/busybox/manifests/");
    ok(build(
        root.path(),
        context.path(),
        &["--pull", "--no-cache"],
        None,
    ));
    assert_eq!(registry.requests("\"GET /v2/busybox/manifests/"), asked);
}

#[test]
fn basic_auth_uses_docker_config_and_names_what_failed() {
    let registry = Registry::start(Some(("kiln", "s3cret")));
    seed_busybox(&registry, Some("kiln:s3cret"));
    let host = &registry.host;
    let root = tempfile::tempdir().unwrap();
    let context = tempfile::tempdir().unwrap();
    fs::write(
        context.path().join("Dockerfile"),
        format!("FROM {host}/busybox:1\nRUN echo private\n"),
    )
    .unwrap();

    let nobody = tempfile::tempdir().unwrap();
    let out = build(root.path(), context.path(), &[], Some(nobody.path()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("{host}/busybox: the registry needs a login")),
        "{stderr}"
    );

    // A hand-written config.json with a wrong password.
    let wrong = docker_config_with_login(host, "kiln", "nope");
    let out = build(root.path(), context.path(), &[], Some(wrong.path()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("refused the credentials"), "{stderr}");

    // kiln login checks the password before storing it.
    let docker_config = tempfile::tempdir().unwrap();
    let login = |password: &str| {
        kiln()
            .env("DOCKER_CONFIG", docker_config.path())
            .args(["login", host, "-u", "kiln", "--password-stdin"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(format!("{password}\n").as_bytes())?;
                child.wait_with_output()
            })
            .unwrap()
    };
    let refused = login("nope");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("login refused"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(!docker_config.path().join("config.json").exists());
    let accepted = login("s3cret");
    assert!(
        accepted.status.success(),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );

    let app = format!("{host}/private:1");
    ok(build(
        root.path(),
        context.path(),
        &["-t", &app, "--push"],
        Some(docker_config.path()),
    ));
    let out = run(
        Command::new("skopeo")
            .args(["inspect", "--tls-verify=false", "--creds", "kiln:s3cret"])
            .arg(format!("docker://{app}")),
        true,
    );
    assert!(!out.stdout.is_empty());

    // A credential helper named in credHelpers answers too.
    let helper_dir = tempfile::tempdir().unwrap();
    let helper = helper_dir.path().join("docker-credential-kilntest");
    fs::write(
        &helper,
        "#!/bin/sh\nread -r server\n[ \"$1\" = get ] && echo '{\"Username\":\"kiln\",\"Secret\":\"s3cret\"}'\n",
    )
    .unwrap();
    run(Command::new("chmod").arg("+x").arg(&helper), true);
    let helper_config = tempfile::tempdir().unwrap();
    fs::write(
        helper_config.path().join("config.json"),
        format!(r#"{{"credHelpers":{{"{host}":"kilntest"}}}}"#),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        helper_dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    run(
        kiln()
            .env("DOCKER_CONFIG", helper_config.path())
            .env("PATH", path)
            .arg("--root")
            .arg(tempfile::tempdir().unwrap().path())
            .args(["pull", &format!("{host}/busybox:1")]),
        true,
    );

    run(
        kiln()
            .env("DOCKER_CONFIG", docker_config.path())
            .args(["logout", host]),
        true,
    );
    let out = build(
        root.path(),
        context.path(),
        &["--pull"],
        Some(docker_config.path()),
    );
    assert!(!out.status.success(), "logged out: the registry refuses");
}

#[test]
fn registry_failures_name_the_reference_and_the_cause() {
    let registry = Registry::start(None);
    let host = registry.host.clone();
    let root = tempfile::tempdir().unwrap();
    let context = tempfile::tempdir().unwrap();
    fs::write(
        context.path().join("Dockerfile"),
        format!("FROM {host}/nothing:here\n"),
    )
    .unwrap();
    let out = build(root.path(), context.path(), &[], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("{host}/nothing:here: not found in the registry")),
        "{stderr}"
    );

    drop(registry);
    let out = build(root.path(), context.path(), &[], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("cannot reach the registry {host}")),
        "{stderr}"
    );
    // The store is intact: it still lists (nothing) without error.
    run(kiln().arg("--root").arg(root.path()).arg("images"), true);
}

/// `kiln pull HOST/NAME:1` into `root`, which must fail; what it printed.
fn failed_pull(root: &Path, host: &str, name: &str) -> String {
    let out = run(
        kiln()
            .arg("--root")
            .arg(root)
            .args(["pull", &format!("{host}/{name}:1")]),
        false,
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_corrupt_blob_is_refused_and_nothing_is_named() {
    // A registry that serves a layer whose bytes do not match its digest.
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000000"]},"config":{}}"#;
    let config_digest = sha256(config);
    let claimed = sha256(b"the real layer");
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{claimed}","size":14}}]}}"#,
        config.len()
    );
    // bad:1's layer has other bytes than its digest; cut:1's breaks off half way.
    let cut_manifest = manifest
        .replace(&claimed, &sha256(b"the whole layer, cut short"))
        .replace(r#""size":14}]"#, r#""size":1000}]"#);
    let served_claim = claimed.clone();
    let base = kiln_tests::serve(move |request| {
        let target = request.target.as_str();
        let (headers, body): (Vec<(String, String)>, Vec<u8>) = match target {
            "/v2/bad/manifests/1" => (Vec::new(), manifest.clone().into_bytes()),
            "/v2/cut/manifests/1" => (Vec::new(), cut_manifest.clone().into_bytes()),
            _ if target.ends_with(&config_digest) => (Vec::new(), config.to_vec()),
            _ if target.ends_with(&served_claim) => (Vec::new(), b"something else".to_vec()),
            _ if target.starts_with("/v2/cut/blobs/") => (
                vec![("Content-Length".into(), "1000".into())],
                b"the whole layer".to_vec(),
            ),
            _ => return ("404 Not Found", Vec::new(), Vec::new()),
        };
        ("200 OK", headers, body)
    });
    let host = base.trim_start_matches("http://");
    let root = tempfile::tempdir().unwrap();
    let stderr = failed_pull(root.path(), host, "bad");
    assert!(
        stderr.contains(&format!("{host}/bad: blob {claimed} arrived corrupt")),
        "{stderr}"
    );
    let stderr = failed_pull(root.path(), host, "cut");
    assert!(
        stderr.contains(&format!("{host}/cut: the download of blob")),
        "{stderr}"
    );
    assert!(stderr.contains("broke off"), "{stderr}");
    let images = run(kiln().arg("--root").arg(root.path()).arg("images"), true);
    assert_eq!(String::from_utf8_lossy(&images.stdout).lines().count(), 1);
    let ingest: Vec<_> = fs::read_dir(root.path().join("content/ingest"))
        .unwrap()
        .collect();
    assert!(ingest.is_empty(), "half-written blobs: {ingest:?}");
}

#[test]
fn bearer_tokens_and_the_platform_of_an_index() {
    use std::sync::{Arc, Mutex, OnceLock};
    // Two single-layer images under one index: linux/amd64 and linux/arm64/v8.
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut entries = Vec::new();
    for (arch, variant) in [("amd64", None), ("arm64", Some("v8"))] {
        let layer = format!("layer for {arch}").into_bytes();
        let (manifest, config) = single_layer_image(arch, &layer);
        let variant = variant
            .map(|v| format!(r#","variant":"{v}""#))
            .unwrap_or_default();
        entries.push(format!(
            r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{},"platform":{{"architecture":"{arch}","os":"linux"{variant}}}}}"#,
            sha256(&manifest),
            manifest.len()
        ));
        blobs.extend([
            (arch.to_string(), layer),
            (arch.to_string(), config),
            (arch.to_string(), manifest),
        ]);
    }
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{}]}}"#,
        entries.join(",")
    )
    .into_bytes();

    let index_digest = sha256(&index);
    let base: Arc<OnceLock<String>> = Arc::default();
    let fetched: Arc<Mutex<Vec<String>>> = Arc::default();
    let (base_in, fetched_in) = (Arc::clone(&base), Arc::clone(&fetched));
    let good = format!("Basic {}", kiln_tests::base64("kiln:pw"));
    let url = kiln_tests::serve(move |request| {
        let target = request.target.as_str();
        if target.starts_with("/token?") {
            return if request.header("authorization") == Some(good.as_str())
                && target.contains("scope=repository%3Amulti%3Apull")
            {
                ("200 OK", Vec::new(), br#"{"token":"good-token"}"#.to_vec())
            } else {
                ("401 Unauthorized", Vec::new(), Vec::new())
            };
        }
        if request.header("authorization") != Some("Bearer good-token") {
            let challenge = format!(
                r#"Bearer realm="{}/token",service="fake""#,
                base_in.get().unwrap()
            );
            return (
                "401 Unauthorized",
                vec![("WWW-Authenticate".into(), challenge)],
                Vec::new(),
            );
        }
        let digest = target.rsplit('/').next().unwrap_or_default();
        let body = if target == "/v2/multi/manifests/1" {
            Some(index.clone())
        } else {
            blobs
                .iter()
                .find(|(_, data)| sha256(data) == digest)
                .map(|(arch, data)| {
                    fetched_in.lock().unwrap().push(arch.clone());
                    data.clone()
                })
        };
        match body {
            Some(body) => ("200 OK", Vec::new(), body),
            None => ("404 Not Found", Vec::new(), Vec::new()),
        }
    });
    base.set(url.clone()).unwrap();
    let host = url.trim_start_matches("http://").to_string();

    let docker_config = docker_config_with_login(&host, "kiln", "pw");
    let root = tempfile::tempdir().unwrap();
    let out = run(
        kiln()
            .env("DOCKER_CONFIG", docker_config.path())
            .arg("--root")
            .arg(root.path())
            .args([
                "pull",
                "--platform",
                "linux/arm64/v8",
                &format!("{host}/multi:1"),
            ]),
        true,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("Digest: {index_digest}")),
        "{stdout}"
    );
    let fetched = fetched.lock().unwrap().clone();
    assert_eq!(fetched, ["arm64", "arm64", "arm64"], "only the arm64 image");
}

#[test]
fn image_outputs_push_with_docker_or_oci_media_types() {
    let registry = Registry::start(None);
    let base_layer = seed_busybox(&registry, None);
    let host = &registry.host;
    let root = tempfile::tempdir().unwrap();
    let context = tempfile::tempdir().unwrap();
    fs::write(
        context.path().join("Dockerfile"),
        format!("FROM {host}/busybox:1\nRUN echo out > /out\n"),
    )
    .unwrap();
    ok(build(
        root.path(),
        context.path(),
        &[
            "-o",
            &format!("type=image,name={host}/docker-types:1,push=true,oci-mediatypes=false"),
            "-o",
            &format!("type=registry,name={host}/oci-types:1"),
        ],
        None,
    ));
    let raw = |name: &str| -> serde_json::Value {
        let out = run(
            Command::new("skopeo")
                .args(["inspect", "--raw", "--tls-verify=false"])
                .arg(format!("docker://{host}/{name}")),
            true,
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let docker = raw("docker-types:1");
    assert_eq!(
        docker["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(
        docker["config"]["mediaType"],
        "application/vnd.docker.container.image.v1+json"
    );
    for layer in docker["layers"].as_array().unwrap() {
        assert_eq!(
            layer["mediaType"],
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
    }
    assert_eq!(docker["layers"][0]["digest"], base_layer.as_str());
    let oci = raw("oci-types:1");
    assert_eq!(
        oci["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(oci["layers"][0]["digest"], base_layer.as_str());
    // Pushed, not loaded, as buildx's registry exporter: the local store does not name
    // them (so an imported cache's layers need not be downloaded to push them).
    let listing = run(kiln().arg("--root").arg(root.path()).arg("images"), true);
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        !listing.contains(&format!("{host}/docker-types")),
        "{listing}"
    );
    assert!(!listing.contains(&format!("{host}/oci-types")), "{listing}");
}

/// A registry cannot collect the stored password by naming a plain-HTTP token service on
/// another host: kiln refuses to send it there, and says why.
#[test]
fn credentials_never_go_to_a_plain_http_token_service_elsewhere() {
    use std::sync::{Arc, Mutex};
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let seen_in = Arc::clone(&seen);
    let token_service = kiln_tests::serve(move |request| {
        seen_in
            .lock()
            .unwrap()
            .push(request.header("authorization").map(str::to_string));
        ("200 OK", Vec::new(), br#"{"token":"t"}"#.to_vec())
    });
    // The same machine, named otherwise: another host as far as the registry's name goes.
    let realm = token_service.replace("127.0.0.1", "localhost");
    let registry = kiln_tests::serve(move |_| {
        (
            "401 Unauthorized",
            vec![(
                "WWW-Authenticate".into(),
                format!(r#"Bearer realm="{realm}/token",service="fake""#),
            )],
            Vec::new(),
        )
    });
    let host = registry.trim_start_matches("http://").to_string();
    let docker_config = docker_config_with_login(&host, "kiln", "secret-password");
    let root = tempfile::tempdir().unwrap();
    let out = run(
        kiln()
            .env("DOCKER_CONFIG", docker_config.path())
            .arg("--root")
            .arg(root.path())
            .args(["pull", &format!("{host}/app:1")]),
        false,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not sending the credentials for") && stderr.contains("neither HTTPS"),
        "{stderr}"
    );
    assert!(
        seen.lock().unwrap().iter().all(Option::is_none),
        "credentials reached the token service: {:?}",
        seen.lock().unwrap()
    );
}

/// A hostile registry cannot make kiln buffer an oversized manifest, nor stream more of a
/// blob than its descriptor declares.
#[test]
fn oversized_manifests_and_blobs_are_refused() {
    let layer = vec![7u8; 1000];
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    // The manifest declares the layer at 10 bytes; the registry sends 1,000.
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":10}}]}}"#,
        sha256(&config),
        config.len(),
        sha256(&layer),
    )
    .into_bytes();
    let huge = vec![b' '; 5 << 20];
    let url = kiln_tests::serve(move |request| {
        let body = match request.target.as_str() {
            "/v2/huge/manifests/1" => Some(huge.clone()),
            "/v2/liar/manifests/1" => Some(manifest.clone()),
            target if target.ends_with(&sha256(&config)) => Some(config.clone()),
            target if target.ends_with(&sha256(&layer)) => Some(layer.clone()),
            _ => None,
        };
        match body {
            Some(body) => ("200 OK", Vec::new(), body),
            None => ("404 Not Found", Vec::new(), Vec::new()),
        }
    });
    let host = url.trim_start_matches("http://");
    let root = tempfile::tempdir().unwrap();
    let stderr = failed_pull(root.path(), host, "huge");
    assert!(
        stderr.contains("the registry sent a manifest larger than 4194304 bytes"),
        "{stderr}"
    );
    let stderr = failed_pull(root.path(), host, "liar");
    assert!(
        stderr.contains("the registry sent more than the 10 bytes its manifest declares"),
        "{stderr}"
    );
    let images = run(kiln().arg("--root").arg(root.path()).arg("images"), true);
    assert!(!String::from_utf8_lossy(&images.stdout).contains("liar"));
}

/// docker's config.json that is valid JSON but not an object is an error, not a panic.
#[test]
fn a_docker_config_that_is_not_an_object_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    for content in ["[1, 2]", "\"text\"", "null"] {
        fs::write(dir.path().join("config.json"), content).unwrap();
        let out = run(
            kiln()
                .env("DOCKER_CONFIG", dir.path())
                .args(["logout", "127.0.0.1:5000"]),
            false,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("holds JSON that is not an object"),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
