//! Layer blob compression, done when a layer leaves the machine (an archive or a push) and
//! remembered by diff_id: gzip by default, zstd on request.

use anyhow::{Context, Result};
use kiln_cache::{CacheIndexStore, ContentStore};

use super::apply::decompressed;
use super::gzip::ParallelGzip;
use super::write::{LAYER_MEDIA_TYPE, LayerBlob};
use crate::parallel::map_on_every_core;

/// The media type of a zstd-compressed OCI layer.
pub const ZSTD_LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// How layer blobs are compressed in an exported image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LayerCompression {
    /// gzip (zlib-rs), what every registry and runtime reads.
    #[default]
    Gzip,
    /// zstd: smaller and faster to unpack; needs containerd 1.5+ or Docker 23+.
    Zstd,
}

impl LayerCompression {
    /// Whether a blob of `media_type` (OCI or Docker) is compressed this way.
    pub fn describes(self, media_type: &str) -> bool {
        match self {
            Self::Gzip => media_type.ends_with("gzip"),
            Self::Zstd => media_type.ends_with("zstd"),
        }
    }

    /// The OCI media type of layers compressed this way.
    pub fn media_type(self) -> &'static str {
        match self {
            Self::Gzip => LAYER_MEDIA_TYPE,
            Self::Zstd => ZSTD_LAYER_MEDIA_TYPE,
        }
    }
}

/// `layers` compressed with `compression`, stored in `content`, in their order: a layer
/// that already is stays as it is, any other gets a blob with the same diff_id, made once
/// and remembered in `memo` by diff_id and compression. Several layers are compressed at
/// once (each also on every core, which a layer smaller than one gzip member cannot use).
pub fn recompress_all(
    content: &ContentStore,
    layers: &[LayerBlob],
    compression: LayerCompression,
    memo: &CacheIndexStore,
) -> Result<Vec<LayerBlob>> {
    map_on_every_core(layers, |layer| {
        recompress(content, layer, compression, memo)
    })
}

/// One layer of [`recompress_all`].
pub(crate) fn recompress(
    content: &ContentStore,
    layer: &LayerBlob,
    compression: LayerCompression,
    memo: &CacheIndexStore,
) -> Result<LayerBlob> {
    if compression.describes(&layer.media_type) {
        return Ok(layer.clone());
    }
    let key = format!("compressed:{}:{}", compression.media_type(), layer.diff_id);
    if let Some(known) = memo
        .get(&key)
        .and_then(|v| serde_json::from_slice::<LayerBlob>(&v).ok())
        .filter(|known| content.contains(&known.digest))
    {
        return Ok(LayerBlob {
            created: layer.created,
            ..known
        });
    }
    let source = content
        .open_verified(&layer.digest)
        .with_context(|| format!("layer {} is missing", layer.digest))?;
    let mut tar = decompressed(source)?;
    let blob = content.writer().context("cannot start a layer blob")?;
    let blob = match compression {
        LayerCompression::Gzip => {
            let mut gzip = ParallelGzip::new(blob, 6);
            std::io::copy(&mut tar, &mut gzip)?;
            gzip.finish()?
        }
        LayerCompression::Zstd => {
            let mut zstd = zstd::Encoder::new(blob, 3)?;
            std::io::copy(&mut tar, &mut zstd)?;
            zstd.finish()?
        }
    };
    let (digest, size) = blob.commit(None).context("cannot store the layer blob")?;
    let compressed = LayerBlob {
        diff_id: layer.diff_id,
        digest,
        size,
        media_type: compression.media_type().to_string(),
        created: layer.created,
    };
    if let Ok(value) = serde_json::to_vec(&compressed) {
        memo.put(&key, &value);
    }
    Ok(compressed)
}
