//! Helpers shared by the fuzz targets (included with `#[path]`).
#![allow(dead_code)]

use std::future::Future;

/// Run `f` to completion on a current-thread tokio runtime (timers and
/// sockets enabled), built once per process.
pub fn block_on<F: Future>(f: F) -> F::Output {
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
    }
    RT.with(|rt| rt.block_on(f))
}
