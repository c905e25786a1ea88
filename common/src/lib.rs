//! Shared code for tambo: configuration (chasquid.conf), the user
//! database, name normalisation, the protobuf text-format parser and
//! chasquid's queue items.

pub mod aliases;
pub mod chasquid_queue;
pub mod config;
pub mod dates;
pub mod dkimkey;
pub mod domaininfo;
pub mod gofmt;
pub mod lineend;
pub mod names;
pub mod relayauth;
pub mod textproto;
pub mod unixsock;
pub mod userdb;
