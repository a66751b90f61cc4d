//! The socket a service listens on: bound to `HOST:PORT`, or handed over by the process that
//! started it.
//!
//! Handing over follows systemd's socket activation: `LISTEN_FDS=1` (and, when set,
//! `LISTEN_PID` naming this process) says file descriptor 3 is a listening TCP socket to serve
//! on. `dozen up` binds every service's port itself and hands it over this way, so a port of 0
//! is known before its service starts (its callers are told it) and a restarted service gets
//! the same socket back.

use std::net::SocketAddr;
use std::os::fd::BorrowedFd;

use anyhow::{Context as _, bail};
use tokio::net::TcpListener;

/// The file descriptor of the first socket handed over (`SD_LISTEN_FDS_START`).
const FIRST_HANDED_OVER: i32 = 3;

/// The handed-over socket if there is one, else a new one bound to `address`.
pub async fn listen(address: SocketAddr) -> anyhow::Result<TcpListener> {
    match handed_over()? {
        Some(listener) => Ok(listener),
        None => TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address} (PORT)")),
    }
}

fn handed_over() -> anyhow::Result<Option<TcpListener>> {
    let Ok(count) = std::env::var("LISTEN_FDS") else {
        return Ok(None);
    };
    if let Ok(pid) = std::env::var("LISTEN_PID")
        && pid != std::process::id().to_string()
    {
        // Meant for another process (a parent that did not clear it).
        return Ok(None);
    }
    if count != "1" {
        bail!("LISTEN_FDS={count}: expected 1, the one socket to serve HTTP on");
    }
    // SAFETY: LISTEN_FDS=1 says descriptor 3 was handed over to this process, and nothing else
    // in it uses 3 by that name; it is only borrowed for the moment of duplicating it, and a
    // descriptor that is not open makes the duplication fail instead of being used.
    #[allow(unsafe_code)]
    let borrowed = unsafe { BorrowedFd::borrow_raw(FIRST_HANDED_OVER) };
    let listener = borrowed
        .try_clone_to_owned()
        .map(std::net::TcpListener::from)
        .context("LISTEN_FDS=1 but file descriptor 3 is not open")?;
    let address = listener
        .local_addr()
        .context("LISTEN_FDS=1 but file descriptor 3 is not a TCP socket")?;
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)
        .with_context(|| format!("cannot serve on the handed-over socket {address}"))?;
    Ok(Some(listener))
}
