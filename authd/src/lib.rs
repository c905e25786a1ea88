//! The part of authd that other tambo programs use: the Dovecot auth
//! client (`dovecot-auth-cli` in the tools crate runs exactly authd's).

pub mod dovecot;
