//! tonistiigi/fsutil's DiffCopy protocol: how a directory crosses a session.
//!
//! The sender streams a `STAT` packet for every entry (directories before their contents,
//! names in byte order), then an empty `STAT`. Each entry has an ID, its index in that
//! stream; the receiver asks for the data of the regular files it lacks with `REQ ID`, the
//! sender answers with `DATA ID bytes…` packets and an empty `DATA ID`. The receiver ends
//! the transfer with `FIN`, which the sender answers with `FIN`. Either side may send
//! `ERR message` instead.

mod mode;
mod receive;
mod send;

pub use mode::{from_unix_mode, to_unix_mode};
pub use receive::{ReceiveStats, receive};
pub use send::{Selection, send};

use crate::fsutil::packet::PacketType;
use crate::fsutil::{Packet, Stat};

/// Packets of the protocol, by kind.
pub(crate) fn packet(kind: PacketType, id: u32, data: Vec<u8>, stat: Option<Stat>) -> Packet {
    Packet {
        r#type: kind as i32,
        stat,
        id,
        data,
    }
}

/// An `ERR` packet carrying `message`.
pub(crate) fn error_packet(message: &str) -> Packet {
    packet(PacketType::PacketErr, 0, message.as_bytes().to_vec(), None)
}

#[cfg(test)]
mod tests;
