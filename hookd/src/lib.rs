//! tambo's runner of operator programs: `hooks/post-data`,
//! `hooks/alias-resolve` and pipe aliases run from `tambo-hookd`, under a
//! user of their own and a sandbox that hides the queue and the secrets.
//! [`runner`] starts one program; [`service`] answers queued's and
//! deliverd's requests with it. deliverd also runs its delivery agent with
//! [`runner`].

pub mod runner;
pub mod service;

/// The watcher's handover (in its own small crate, `tambo-watcher`).
pub use tambo_watcher as witness;
