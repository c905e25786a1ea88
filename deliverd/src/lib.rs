//! deliverd's delivery agents, as a library so that integration tests can
//! drive the remote courier against real peers.

pub mod agent_log;
pub mod ledger;
pub mod lmtp;
pub mod mda;
pub mod remote;
