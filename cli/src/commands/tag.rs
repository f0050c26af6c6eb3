//! `kiln tag`: another name for an image of the local store.

use clap::Args;
use kiln_cache::{ImageRecord, StateDir};
use kiln_image::Reference;

use super::Failure;
use super::lookup::LocalImages;

/// Arguments of `kiln tag`.
#[derive(Args)]
pub struct TagArgs {
    /// The image: a name (`busybox`, `app:1`) or an image ID.
    #[arg(value_name = "SOURCE_IMAGE[:TAG]")]
    source: String,
    /// The new name, e.g. `127.0.0.1:5000/app:2`.
    #[arg(value_name = "TARGET_IMAGE[:TAG]")]
    target: String,
}

/// `kiln tag SOURCE TARGET`: names the image SOURCE names TARGET as well (replacing what
/// TARGET named), printing nothing, as `docker tag`.
pub fn run(state: &StateDir, args: TagArgs) -> Result<(), Failure> {
    let target = Reference::parse_normalized(&args.target).map_err(|e| {
        Failure::msg(format!(
            "{:?} is not a valid repository/tag: {e}",
            args.target
        ))
    })?;
    if target.digest.is_some() {
        return Err(Failure::msg(format!(
            "refusing to create a tag with a digest reference: {}",
            args.target
        )));
    }
    let _lock = state.lock(false).map_err(Failure::msg)?;
    let image = LocalImages::open(state)?.find(&args.source)?;
    let record = ImageRecord::named_now(
        target.to_string(),
        image.record.media_type,
        image.record.digest,
        image.record.size,
    );
    state
        .images()
        .map_err(Failure::msg)?
        .put(&record)
        .map_err(Failure::msg)
}
