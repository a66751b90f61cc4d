//! `probe [PATH]`: the health check of a dozen container, for runtimes that run a command inside
//! the container (compose, ECS) rather than calling HTTP themselves (Kubernetes).
//!
//! It sends `GET PATH` (default `/readyz`) to `127.0.0.1:$PORT` (default 8080, the images'
//! port) and exits 0 when the answer is 200, 1 otherwise, printing why. The images have no
//! shell and no curl; this is the one tool they carry besides the service. Standard library
//! only: it must stay tiny and build anywhere.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

/// How long the whole check may take; a health check that hangs is worse than one that fails.
const TIMEOUT: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let path = std::env::args().nth(1).unwrap_or_else(|| "/readyz".to_owned());
    let port = match std::env::var("PORT") {
        Ok(text) => match text.parse::<u16>() {
            Ok(port) => port,
            Err(_) => {
                eprintln!("probe: invalid PORT '{text}'");
                return ExitCode::FAILURE;
            }
        },
        Err(_) => 8080,
    };
    match status_of(port, &path) {
        Ok(200) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("probe: GET {path} answered {status}");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("probe: GET {path} on port {port} failed: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The HTTP status of `GET path` on the local port.
fn status_of(port: u16, path: &str) -> std::io::Result<u16> {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&address, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: dozen-probe\r\nConnection: close\r\n\r\n"
    )?;
    // The status line is all we need: "HTTP/1.1 200 OK".
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < head.len() {
        let n = stream.read(&mut head[read..])?;
        if n == 0 || head[..read + n].contains(&b'\n') {
            read += n;
            break;
        }
        read += n;
    }
    let line = String::from_utf8_lossy(&head[..read]);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {line:?}")))
}
