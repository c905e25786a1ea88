//! Inter-process communication between tambo's processes.
//!
//! Every channel is a Unix-domain socket pair created by the supervisor.
//! Frames are length-prefixed bincode messages with a hard maximum size
//! ([`MAX_FRAME`]); file descriptors travel beside them with SCM_RIGHTS.
//! Each channel starts with a version handshake. [`proto`] holds one request
//! and one reply enum per channel.

pub mod async_chan;
pub mod fdpass;
pub mod frame;
pub mod metrics;
pub mod privdrop;
pub mod proto;
pub mod rpc;
pub mod sandbox;
pub mod secrets;
pub mod sync_chan;
pub mod worker;

pub use frame::{IpcError, MAX_FRAME, PROTOCOL_VERSION};
