//! chasquid's helper programs on tambo's code: `mda-lmtp` (deliverd's LMTP
//! client), `smtp-check` (deliverd's DNS, MTA-STS and TLS, mail-auth's
//! SPF) and `dovecot-auth-cli` (authd's Dovecot client), with chasquid's
//! flags, messages and exit codes.

pub mod dovecot_cli;
pub mod goflag;
pub mod golog;
pub mod mda;
pub mod puny;
pub mod smtp_check;
