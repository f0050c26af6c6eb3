//! Registry authentication beyond passwords, through the real `kiln` binary: private CAs
//! and client certificates from `certs.d`, identity tokens traded at the token service,
//! and `kiln login`/`logout` through a credential helper (`credsStore`).

use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, OnceLock};

use kiln_tests::daemon::Daemon;
use kiln_tests::images::{sha256, single_layer_image};
use kiln_tests::registry::{Registry, RegistryTls};
use kiln_tests::tls::TestPki;
use kiln_tests::{kiln, run, state_with_busybox};

/// `kiln` with `args`, its docker configuration in `docker_config`, and `env` besides.
fn kiln_with(docker_config: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = kiln();
    command.env("DOCKER_CONFIG", docker_config).args(args);
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("run kiln")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A `certs.d` base directory whose `host` directory holds the named files, each a copy
/// of its source.
fn certs_d(host: &str, files: &[(&str, &Path)]) -> tempfile::TempDir {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join(host);
    fs::create_dir(&dir).unwrap();
    for (name, source) in files {
        fs::copy(source, dir.join(name)).unwrap();
    }
    base
}

#[test]
fn a_private_ca_and_a_client_certificate_from_certs_d() {
    let pki = TestPki::generate();
    let registry = Registry::start_with(
        None,
        Some(&RegistryTls {
            certificate: &pki.server_cert,
            key: &pki.server_key,
            client_ca: Some(&pki.ca),
        }),
    );
    let host = &registry.host;
    let docker_config = tempfile::tempdir().unwrap();
    let all = certs_d(
        host,
        &[
            ("ca.crt", &pki.ca),
            ("client.cert", &pki.client_cert),
            ("client.key", &pki.client_key),
        ],
    );

    // A loopback registry with a certs.d directory is spoken to over HTTPS.
    let root = state_with_busybox();
    let root_arg = root.path().to_str().unwrap();
    let context = tempfile::tempdir().unwrap();
    fs::write(context.path().join("hello"), "hello\n").unwrap();
    fs::write(
        context.path().join("Dockerfile"),
        "FROM busybox:1\nCOPY hello /hello\n",
    )
    .unwrap();
    let app = format!("{host}/app:1");
    let certs_dirs = all.path().to_str().unwrap();
    let out = kiln_with(
        docker_config.path(),
        &[("KILN_CERTS_DIRS", certs_dirs)],
        &[
            "--root",
            root_arg,
            "build",
            "--progress",
            "plain",
            "-t",
            &app,
            "--push",
            context.path().to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(registry.requests("\"PUT /v2/app/manifests/1"), 1);
    // skopeo reads the same directory layout (docker's).
    run(
        Command::new("skopeo")
            .args(["inspect", "--cert-dir"])
            .arg(all.path().join(host))
            .arg(format!("docker://{app}")),
        true,
    );
    // Pulls go the same way.
    let pulled = tempfile::tempdir().unwrap();
    let out = kiln_with(
        docker_config.path(),
        &[("KILN_CERTS_DIRS", certs_dirs)],
        &["--root", pulled.path().to_str().unwrap(), "pull", &app],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    let push = |certs: &tempfile::TempDir| {
        let out = kiln_with(
            docker_config.path(),
            &[("KILN_CERTS_DIRS", certs.path().to_str().unwrap())],
            &["--root", root_arg, "push", &app],
        );
        assert!(!out.status.success(), "pushed without the TLS material");
        stderr(&out)
    };
    // The registry wants a client certificate.
    let without_client = push(&certs_d(host, &[("ca.crt", &pki.ca)]));
    assert!(
        without_client.contains(&format!(
            "cannot reach the registry {host} (the registry refused the TLS handshake; \
             if it wants a client certificate"
        )),
        "{without_client}"
    );
    // kiln does not know the registry's CA.
    let without_ca = push(&certs_d(
        host,
        &[
            ("client.cert", &pki.client_cert),
            ("client.key", &pki.client_key),
        ],
    ));
    assert!(
        without_ca.contains(&format!(
            "cannot reach the registry {host} (if a private CA signed its certificate"
        )) && without_ca.contains("UnknownIssuer"),
        "{without_ca}"
    );
    // A client certificate without its key is named, as docker names it.
    let without_key = push(&certs_d(
        host,
        &[("ca.crt", &pki.ca), ("client.cert", &pki.client_cert)],
    ));
    assert!(
        without_key.contains(&format!("cannot use the TLS material for {host} in "))
            && without_key.contains("missing key client.key for client certificate client.cert"),
        "{without_key}"
    );
}

/// A single-layer linux/amd64 image: (manifest, [config, layer]).
fn tiny_image() -> (Vec<u8>, Vec<Vec<u8>>) {
    let layer = b"layer".to_vec();
    let (manifest, config) = single_layer_image("amd64", &layer);
    (manifest, vec![config, layer])
}

/// What a fake server saw, shared with its handler.
type Log<T> = Arc<Mutex<Vec<T>>>;

/// The fields of a form, decoded, in order.
type FormFields = Vec<(String, String)>;

/// `a=b&c=d+e%3A` → [(a, b), (c, "d e:")].
fn form_fields(body: &[u8]) -> FormFields {
    let decode = |text: &str| {
        let bytes = text.replace('+', " ").into_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    };
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

#[test]
fn identity_tokens_are_traded_for_access_tokens() {
    let (manifest, blobs) = tiny_image();
    let base: Arc<OnceLock<String>> = Arc::default();
    // The token requests' methods and form fields, and every registry request's
    // target and Authorization header.
    let token_requests: Log<(String, FormFields)> = Arc::default();
    let registry_requests: Log<(String, Option<String>)> = Arc::default();
    let (base_in, tokens_in, requests_in) = (
        Arc::clone(&base),
        Arc::clone(&token_requests),
        Arc::clone(&registry_requests),
    );
    let url = kiln_tests::serve_reading_bodies(move |request| {
        if request.target.starts_with("/token") {
            let fields = form_fields(&request.body);
            tokens_in
                .lock()
                .unwrap()
                .push((request.method.clone(), fields.clone()));
            let access = fields
                .iter()
                .find(|(k, _)| k == "refresh_token")
                .map(|(_, refresh)| format!("access-for-{refresh}"));
            return match access {
                Some(access) if request.method == "POST" => (
                    "200 OK",
                    Vec::new(),
                    format!(r#"{{"access_token":"{access}","expires_in":300}}"#).into_bytes(),
                ),
                _ => ("401 Unauthorized", Vec::new(), Vec::new()),
            };
        }
        let authorization = request.header("authorization").map(str::to_string);
        requests_in
            .lock()
            .unwrap()
            .push((request.target.clone(), authorization.clone()));
        if !authorization.is_some_and(|a| a.starts_with("Bearer access-for-")) {
            let challenge = format!(
                r#"Bearer realm="{}/token",service="x""#,
                base_in.get().unwrap()
            );
            return (
                "401 Unauthorized",
                vec![("WWW-Authenticate".into(), challenge)],
                Vec::new(),
            );
        }
        let digest = request.target.rsplit('/').next().unwrap_or_default();
        let body = if request.target == "/v2/app/manifests/1" {
            Some(manifest.clone())
        } else {
            blobs.iter().find(|b| sha256(b) == digest).cloned()
        };
        match body {
            Some(body) => ("200 OK", Vec::new(), body),
            None => ("404 Not Found", Vec::new(), Vec::new()),
        }
    });
    base.set(url.clone()).unwrap();
    let host = url.trim_start_matches("http://").to_string();
    let pull = |docker_config: &Path, env: &[(&str, &str)]| {
        let root = tempfile::tempdir().unwrap();
        let out = kiln_with(
            docker_config,
            env,
            &[
                "--root",
                root.path().to_str().unwrap(),
                "pull",
                "--platform",
                "linux/amd64",
                &format!("{host}/app:1"),
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
    };
    let expect_trade = |refresh: &str| {
        let token_requests = std::mem::take(&mut *token_requests.lock().unwrap());
        assert!(!token_requests.is_empty());
        for (method, fields) in &token_requests {
            assert_eq!(method, "POST", "{fields:?}");
            let field = |name: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str())
            };
            assert_eq!(field("grant_type"), Some("refresh_token"), "{fields:?}");
            assert_eq!(field("refresh_token"), Some(refresh), "{fields:?}");
            assert_eq!(field("service"), Some("x"), "{fields:?}");
            assert_eq!(field("scope"), Some("repository:app:pull"), "{fields:?}");
            assert_eq!(field("client_id"), Some("kiln"), "{fields:?}");
        }
        let registry_requests = std::mem::take(&mut *registry_requests.lock().unwrap());
        let bearer = format!("Bearer access-for-{refresh}");
        let served: Vec<_> = registry_requests
            .iter()
            .filter(|(_, auth)| auth.as_deref() == Some(bearer.as_str()))
            .map(|(target, _)| target.as_str())
            .collect();
        assert!(
            served.contains(&"/v2/app/manifests/1") && served.len() >= 3,
            "the manifest and both blobs with the access token: {registry_requests:?}"
        );
    };

    // docker's config.json keeps the identity token beside an `auth` of an empty password.
    let docker_config = tempfile::tempdir().unwrap();
    fs::write(
        docker_config.path().join("config.json"),
        format!(
            r#"{{"auths":{{"{host}":{{"auth":"{}","identitytoken":"refresh-1"}}}}}}"#,
            kiln_tests::base64("00000000-0000-0000-0000-000000000000:")
        ),
    )
    .unwrap();
    pull(docker_config.path(), &[]);
    expect_trade("refresh-1");

    // A credential helper answers the user `<token>` for an identity token.
    let helper_dir = tempfile::tempdir().unwrap();
    write_script(
        &helper_dir.path().join("docker-credential-kilntoken"),
        "#!/bin/sh\ncat >/dev/null\n[ \"$1\" = get ] && echo '{\"Username\":\"<token>\",\"Secret\":\"refresh-2\"}'\n",
    );
    let helper_config = tempfile::tempdir().unwrap();
    fs::write(
        helper_config.path().join("config.json"),
        format!(r#"{{"credHelpers":{{"{host}":"kilntoken"}}}}"#),
    )
    .unwrap();
    pull(
        helper_config.path(),
        &[("PATH", &path_with(helper_dir.path()))],
    );
    expect_trade("refresh-2");

    // Through kiln serve: the client's session answers an identity token as a secret
    // without a user name (BuildKit's form), and the daemon trades it.
    let daemon = Daemon::start(&kiln_tests::busybox_archives(), &[]);
    let context = tempfile::tempdir().unwrap();
    fs::write(
        context.path().join("Dockerfile"),
        format!("FROM {host}/app:1\n"),
    )
    .unwrap();
    let built = kiln_with(
        docker_config.path(),
        &[],
        &[
            "build",
            "--builder",
            &daemon.address,
            "--platform",
            "linux/amd64",
            context.path().to_str().unwrap(),
        ],
    );
    assert!(built.status.success(), "{}", stderr(&built));
    expect_trade("refresh-1");
}

/// Writes the executable script `path`.
fn write_script(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// `$PATH` with `dir` first.
fn path_with(dir: &Path) -> String {
    format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

#[test]
fn login_and_logout_go_through_the_creds_store() {
    let registry = Registry::start(Some(("kiln", "s3cret")));
    let host = &registry.host;
    // A helper that keeps the credentials in a file and logs its calls; it fails to store
    // when KILNTEST_FAIL is set, as a locked keychain would.
    let helper_dir = tempfile::tempdir().unwrap();
    let store = helper_dir.path().join("store");
    fs::create_dir(&store).unwrap();
    write_script(
        &helper_dir.path().join("docker-credential-kilntest"),
        &format!(
            r#"#!/bin/sh
store={store}
input=$(cat)
echo "$1 $input" >> "$store/calls"
case "$1" in
  store)
    [ -n "$KILNTEST_FAIL" ] && {{ echo "the keychain is locked" >&2; exit 1; }}
    printf '%s' "$input" > "$store/creds.json" ;;
  get)
    [ -f "$store/creds.json" ] || {{ echo "credentials not found in native keychain"; exit 1; }}
    cat "$store/creds.json" ;;
  erase) rm -f "$store/creds.json" ;;
esac
"#,
            store = store.display()
        ),
    );
    let path = path_with(helper_dir.path());
    let docker_config = tempfile::tempdir().unwrap();
    let config_json = docker_config.path().join("config.json");
    fs::write(&config_json, r#"{"credsStore":"kilntest"}"#).unwrap();
    let kiln_helped = |env: &[(&str, &str)], args: &[&str]| {
        let mut env = env.to_vec();
        env.push(("PATH", &path));
        kiln_with(docker_config.path(), &env, args)
    };
    let calls = || fs::read_to_string(store.join("calls")).unwrap_or_default();

    let failed = kiln_helped(
        &[("KILNTEST_FAIL", "1")],
        &["login", host, "-u", "kiln", "-p", "s3cret"],
    );
    assert!(!failed.status.success());
    assert!(
        stderr(&failed).contains("docker-credential-kilntest store")
            && stderr(&failed).contains("the keychain is locked"),
        "{}",
        stderr(&failed)
    );

    let login = kiln_helped(&[], &["login", host, "-u", "kiln", "-p", "s3cret"]);
    assert!(login.status.success(), "{}", stderr(&login));
    assert!(
        String::from_utf8_lossy(&login.stdout).contains("docker-credential-kilntest"),
        "{}",
        String::from_utf8_lossy(&login.stdout)
    );
    let stored: serde_json::Value =
        serde_json::from_slice(&fs::read(store.join("creds.json")).unwrap()).unwrap();
    assert_eq!(
        stored,
        serde_json::json!({"ServerURL": host, "Username": "kiln", "Secret": "s3cret"})
    );
    // config.json keeps an empty entry for the host, as docker does, and no secret.
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(&config_json).unwrap()).unwrap();
    assert_eq!(
        config,
        serde_json::json!({"credsStore": "kilntest", "auths": {host.as_str(): {}}})
    );

    // A push asks the helper.
    let root = state_with_busybox();
    let root_arg = root.path().to_str().unwrap();
    let app = format!("{host}/busybox:1");
    run(
        kiln().args(["--root", root_arg, "tag", "busybox:1", &app]),
        true,
    );
    let push = kiln_helped(&[], &["--root", root_arg, "push", &app]);
    assert!(push.status.success(), "{}", stderr(&push));
    assert!(calls().contains(&format!("get {host}")), "{}", calls());

    let logout = kiln_helped(&[], &["logout", host]);
    assert!(logout.status.success(), "{}", stderr(&logout));
    assert!(calls().ends_with(&format!("erase {host}\n")), "{}", calls());
    assert!(!store.join("creds.json").exists());
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(&config_json).unwrap()).unwrap();
    assert_eq!(config["auths"], serde_json::json!({}));
    let refused = kiln_helped(&[], &["--root", root_arg, "push", &app]);
    assert!(
        !refused.status.success(),
        "logged out: the registry refuses"
    );

    // A helper that is not installed is named.
    fs::write(&config_json, r#"{"credsStore":"kilnmissing"}"#).unwrap();
    let missing = kiln_helped(&[], &["login", host, "-u", "kiln", "-p", "s3cret"]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("docker-credential-kilnmissing"),
        "{}",
        stderr(&missing)
    );
}
