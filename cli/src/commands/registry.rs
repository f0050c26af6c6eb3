//! `kiln pull` and `kiln push`: moving images between the local store and registries.

use clap::Args;
use kiln_cache::StateDir;
use kiln_image::{PlatformWanted, Reference};
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
    let variant = (!platform.variant.is_empty()).then_some(platform.variant.as_str());
    let wanted = PlatformWanted {
        os: &platform.os,
        architecture: &platform.architecture,
        variant,
    };
    let _lock = state.lock(false).map_err(Failure::msg)?;
    let content = state.content().map_err(Failure::msg)?;
    let images = state.images().map_err(Failure::msg)?;
    let digest = kiln_registry::pull::pull(
        &client(options)?,
        &content,
        &images,
        &reference,
        &wanted,
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
    let content = state.content().map_err(Failure::msg)?;
    let images = state.images().map_err(Failure::msg)?;
    let report = kiln_registry::push::push(
        &client(options)?,
        &content,
        &images,
        &reference.to_string(),
        &reference,
        &|line| eprintln!("{line}"),
    )
    .map_err(|e| Failure::msg(format!("cannot push {reference}: {e:#}")))?;
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
