//! Messages passed through undecoded: the client's `FileSend` server gets each message's
//! bytes and decodes them as what its target expects (`BytesMessage` or an fsutil
//! `Packet`), since BuildKit sends both kinds on the one method.

use bytes::{Buf as _, BufMut as _};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Generated from `proto/raw_filesend.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod file_send {
    include!(concat!(env!("OUT_DIR"), "/raw/moby.filesync.v1.rs"));
}

pub use file_send::RawMessage;

/// A codec that hands over each message's encoded bytes as [`RawMessage::data`], and
/// sends `data` as the whole encoded message.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = RawMessage;
    type Decode = RawMessage;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = RawMessage;
    type Error = Status;

    fn encode(&mut self, item: RawMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item.data);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = RawMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<RawMessage>, Status> {
        let data = src.copy_to_bytes(src.remaining()).to_vec();
        Ok(Some(RawMessage { data }))
    }
}
