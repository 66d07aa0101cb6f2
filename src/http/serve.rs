//! What every TCP face of the daemon (HTTP, Modbus TCP, OPC UA) does the same way: bind
//! the configured address before start-up returns, so a taken port is a start-up error
//! naming its key, then serve on a thread of its own with a single-threaded runtime.

use std::future::Future;
use std::net::ToSocketAddrs;
use std::thread::JoinHandle;

use tokio::runtime::Runtime;
use tracing::error;

/// Binds `addr` for the server configured at `key` (e.g. `http.listen`), ready for
/// tokio; an error names the key and `shown` (the address as configured).
pub fn bind(
    key: &str,
    shown: &str,
    addr: impl ToSocketAddrs,
) -> Result<std::net::TcpListener, String> {
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| format!("{key} {shown}: cannot listen: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("{key} {shown}: {e}"))?;
    Ok(listener)
}

/// A single-threaded runtime with I/O and timers for the server called `what`.
pub fn runtime(what: &str) -> Result<Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| format!("{what} runtime: {e}"))
}

/// Runs `serve` on the thread `name`, driving `runtime`, with `listener` handed over to
/// tokio. `what` names the server in the log when the socket cannot be used. Dropping
/// the runtime when `serve` returns ends every connection still open.
pub fn spawn<F, Fut>(
    name: &str,
    what: &'static str,
    runtime: Runtime,
    listener: std::net::TcpListener,
    serve: F,
) -> Result<JoinHandle<()>, String>
where
    F: FnOnce(tokio::net::TcpListener) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => serve(l).await,
                    Err(e) => error!(error = %e, "{what}: cannot use the listening socket."),
                }
            });
        })
        .map_err(|e| format!("cannot start the {name} thread: {e}"))
}
