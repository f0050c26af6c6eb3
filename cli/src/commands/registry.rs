//! `kiln pull` and `kiln push`: moving images between the local store and registries.

use clap::Args;
use kiln_cache::StateDir;
use kiln_image::Reference;
use kiln_registry::{RegistryClient, RegistryOptions};
use kiln_solver::Platform;

use super::Failure;

/// Arguments of `kiln pull`.
#[derive(Args)]
pub struct PullArgs {
    /// The image, e.g. `busybox`, `127.0.0.1:5000/app:1` or `app@sha256:…`.
    name: String,
    /// The platform to pull from a multi-platform image (default: this machine's).
    #[arg(long)]
    platform: Option<String>,
}

/// Arguments of `kiln push`.
#[derive(Args)]
pub struct PushArgs {
    /// The image in the local store; its name says where it goes.
    name: String,
}

fn reference(name: &str) -> Result<Reference, Failure> {
    Reference::parse_normalized(name).map_err(Failure::msg)
}

fn client(options: &RegistryOptions) -> Result<RegistryClient, Failure> {
    RegistryClient::new(options.clone()).map_err(|e| Failure::msg(format!("{e:#}")))
}

/// `kiln pull NAME`.
pub fn pull(state: &StateDir, options: &RegistryOptions, args: PullArgs) -> Result<(), Failure> {
    let reference = reference(&args.name)?;
    let platform = match &args.platform {
        Some(p) => p.parse::<Platform>().map_err(Failure::msg)?,
        None => Platform::host(),
    };
    let _lock = state.lock(false).map_err(Failure::msg)?;
    let content = state.content().map_err(Failure::msg)?;
    let images = state.images().map_err(Failure::msg)?;
    let digest = kiln_registry::pull::pull(
        &client(options)?,
        &content,
        &images,
        &reference,
        &kiln_worker::platform_wanted(&platform),
        &|line| eprintln!("{line}"),
    )
    .map_err(|e| Failure::msg(format!("cannot pull {reference}: {e:#}")))?;
    println!("Digest: {digest}");
    println!("Pulled: {reference}");
    Ok(())
}

/// `kiln push NAME`.
pub fn push(state: &StateDir, options: &RegistryOptions, args: PushArgs) -> Result<(), Failure> {
    let reference = reference(&args.name)?;
    let _lock = state.lock(false).map_err(Failure::msg)?;
    let report = kiln_engine::push_stored(state, &client(options)?, &reference, &|line| {
        eprintln!("{line}")
    })
    .map_err(|e| Failure::msg(format!("{e:#}")))?;
    println!(
        "{}: digest: {} ({} blobs pushed, {} mounted, {} already there)",
        reference,
        report.digest.map(|d| d.to_string()).unwrap_or_default(),
        report.uploaded,
        report.mounted,
        report.skipped
    );
    Ok(())
}

/// Arguments of `kiln login`.
#[derive(Args)]
pub struct LoginArgs {
    /// The registry (`host[:port]`); Docker Hub when left out.
    server: Option<String>,
    /// User name.
    #[arg(short, long)]
    username: String,
    /// Password (prefer --password-stdin: command lines are visible to other users).
    #[arg(short, long, conflicts_with = "password_stdin")]
    password: Option<String>,
    /// Read the password from standard input.
    #[arg(long)]
    password_stdin: bool,
}

/// Arguments of `kiln logout`.
#[derive(Args)]
pub struct LogoutArgs {
    /// The registry (`host[:port]`); Docker Hub when left out.
    server: Option<String>,
}

/// The registry a `login`/`logout` argument names, as references name it.
fn server_domain(server: Option<&str>) -> String {
    match server {
        None => kiln_image::DOCKER_HUB.to_string(),
        Some(s) => {
            let host = s
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/');
            match host {
                "index.docker.io" | "registry-1.docker.io" | "index.docker.io/v1" => {
                    kiln_image::DOCKER_HUB.to_string()
                }
                other => other.to_string(),
            }
        }
    }
}

/// `kiln login [SERVER] -u USER (-p PASS | --password-stdin)`: checks the credentials
/// with the registry, then stores them with the credential helper docker's config.json
/// names for it (`credHelpers`, `credsStore`), else in the file.
pub fn login(options: &RegistryOptions, args: LoginArgs) -> Result<(), Failure> {
    let domain = server_domain(args.server.as_deref());
    let password = match (&args.password, args.password_stdin) {
        (Some(password), _) => password.clone(),
        (None, true) => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .map_err(|e| Failure::msg(format!("cannot read the password: {e}")))?;
            text.trim_end_matches(['\n', '\r']).to_string()
        }
        (None, false) => return Err(Failure::msg("give a password with -p or --password-stdin")),
    };
    client(options)?
        .check_login(&domain, &args.username, &password)
        .map_err(|e| Failure::msg(format!("{e:#}")))?;
    let stored_in = kiln_registry::credentials::store(&domain, &args.username, &password)
        .map_err(|e| Failure::msg(format!("{e:#}")))?;
    println!("Login Succeeded (credentials in {stored_in})");
    Ok(())
}

/// `kiln logout [SERVER]`: has the credential helper erase the credentials it keeps, and
/// drops the server's entry from docker's config.json.
pub fn logout(args: LogoutArgs) -> Result<(), Failure> {
    let domain = server_domain(args.server.as_deref());
    let removed =
        kiln_registry::credentials::remove(&domain).map_err(|e| Failure::msg(format!("{e:#}")))?;
    if removed {
        println!("Removing login credentials for {domain}");
    } else {
        println!("Not logged in to {domain}");
    }
    Ok(())
}
