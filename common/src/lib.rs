//! Shared code for tambo: configuration (chasquid.conf), the user
//! database, name normalisation and the protobuf text-format parser.

pub mod aliases;
pub mod config;
pub mod dates;
pub mod dkimkey;
pub mod domaininfo;
pub mod gofmt;
pub mod names;
pub mod relayauth;
pub mod textproto;
pub mod userdb;
