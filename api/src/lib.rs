//! BuildKit's wire protocol, generated from `proto/`: the `moby.buildkit.v1.Control`
//! service, and the session services a client serves to the daemon (file sync, file send,
//! auth, health).
//!
//! The generated modules nest as the protobuf packages do (cross-package references are
//! relative paths); the short names below are what the rest of kiln uses.

pub mod client;
mod pipe;
mod raw;
pub mod server;
pub mod session;
pub mod tls;
pub mod transfer;

/// Generated code, one module per protobuf package.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod generated {
    pub mod moby {
        pub mod buildkit {
            pub mod v1 {
                tonic::include_proto!("moby.buildkit.v1");
                pub mod frontend {
                    tonic::include_proto!("moby.buildkit.v1.frontend");
                }
                pub mod types {
                    tonic::include_proto!("moby.buildkit.v1.types");
                }
            }
            pub mod secrets {
                pub mod v1 {
                    tonic::include_proto!("moby.buildkit.secrets.v1");
                }
            }
        }
        pub mod filesync {
            pub mod v1 {
                tonic::include_proto!("moby.filesync.v1");
            }
        }
        pub mod sshforward {
            pub mod v1 {
                tonic::include_proto!("moby.sshforward.v1");
            }
        }
    }
    pub mod pb {
        tonic::include_proto!("pb");
    }
    pub mod fsutil {
        pub mod types {
            tonic::include_proto!("fsutil.types");
        }
    }
    pub mod grpc {
        pub mod health {
            pub mod v1 {
                tonic::include_proto!("grpc.health.v1");
            }
        }
    }
}

/// `fsutil.types`: file transfer packets.
pub use generated::fsutil::types as fsutil;
/// `grpc.health.v1`: the health service.
pub use generated::grpc::health::v1 as health;
/// `moby.buildkit.secrets.v1`: secrets a client's session hands the daemon.
pub use generated::moby::buildkit::secrets::v1 as secrets;
/// `moby.buildkit.v1`: the Control service.
pub use generated::moby::buildkit::v1 as control;
/// `moby.buildkit.v1.frontend`: the gateway API a client's build function calls.
pub use generated::moby::buildkit::v1::frontend as gateway;
/// `moby.buildkit.v1.types`: worker records.
pub use generated::moby::buildkit::v1::types;
/// `moby.filesync.v1`: file sync, file send and auth.
pub use generated::moby::filesync::v1 as filesync;
/// `moby.sshforward.v1`: SSH agents a client's session lends the daemon's steps.
pub use generated::moby::sshforward::v1 as sshforward;

/// The metadata naming the build an LLBBridge call belongs to (BuildKit's `buildid`).
pub const BUILD_ID_METADATA: &str = "buildkit-controlapi-buildid";
/// The frontend kiln serves: BuildKit's Dockerfile frontend.
pub const DOCKERFILE_FRONTEND: &str = "dockerfile.v0";
/// The metadata naming the agent a `ForwardAgent` stream is for (BuildKit's `KeySSHID`).
pub const SSH_ID_METADATA: &str = "buildkit.ssh.id";
/// `pb`: the LLB types the Control API refers to.
pub use generated::pb;
