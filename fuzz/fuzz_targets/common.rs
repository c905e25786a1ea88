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

/// Run the reader `read` over `input` through a `BufReader` whose reads
/// are at most `cap` bytes; returns its result and what it left unread.
pub fn read_with<T>(
    input: &[u8],
    cap: usize,
    read: impl AsyncFnOnce(&mut tokio::io::BufReader<&[u8]>) -> T,
) -> (T, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    block_on(async {
        let mut r = tokio::io::BufReader::with_capacity(cap, input);
        let result = read(&mut r).await;
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.expect("reading a slice");
        (result, rest)
    })
}
