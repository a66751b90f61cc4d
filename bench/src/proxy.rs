//! What the benchmarks that drive the gateway share: a small upstream answering every request
//! (this crate's binaries serve it when started with [`UPSTREAM_MODE`]), the release gateway in
//! front of it, wrk's figures, and child processes stopped when dropped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::ReservedPort;

/// The upstream's answer to every request.
pub const ANSWER: &str =
    r#"[{"id":"0190b3c4-1d2e-7a00-8000-000000000002","display_name":"Bob","since":"2026-11-22T03:00:00Z"}]"#;

/// The argument that makes this binary the upstream.
pub const UPSTREAM_MODE: &str = "serve-upstream";

/// The gateway's release binary, beside this one.
pub fn gateway_binary() -> anyhow::Result<PathBuf> {
    let folder = std::env::current_exe()?
        .parent()
        .context("binary folder")?
        .to_path_buf();
    let gateway_binary = folder.join("dozen-gateway");
    if !gateway_binary.exists() {
        bail!(
            "{} is missing: run `cargo build --release -p dozen-gateway -p dozen-bench` first",
            gateway_binary.display()
        );
    }
    Ok(gateway_binary)
}

/// This binary as the upstream, answering; and its port.
pub fn start_upstream() -> anyhow::Result<(Running, u16)> {
    let port_reservation = ReservedPort::new();
    let port = port_reservation.port;
    let upstream =
        Running::start(Command::new(std::env::current_exe()?).args([UPSTREAM_MODE, &port.to_string()]))?;
    wait_answering(port, "/api/friends")?;
    Ok((upstream, port))
}

/// The upstream: a small JSON answer to any request, on one runtime with a worker per core.
pub fn serve_upstream(port: u16) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let app = axum::Router::new()
            .fallback(|| async { ([(axum::http::header::CONTENT_TYPE, "application/json")], ANSWER) });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        axum::serve(listener, app).await?;
        Ok(())
    })
}

/// What one wrk run measured.
#[derive(Debug)]
pub struct Run {
    /// Requests answered in the run.
    pub requests: u64,
    pub per_second: f64,
    pub p50: Duration,
    pub p99: Duration,
    /// Answers that were not 2xx or 3xx.
    pub failed: u64,
}

pub fn wrk(url: &str, threads: u32, connections: u32, seconds: u64) -> anyhow::Result<Run> {
    let output = Command::new("wrk")
        .args([
            "--latency",
            "-t",
            &threads.to_string(),
            "-c",
            &connections.to_string(),
            "-d",
            &format!("{seconds}s"),
            "-H",
            "Authorization: Bearer bench",
            url,
        ])
        .output()
        .context("cannot run wrk")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed on {url}: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|line| line.strip_prefix(prefix).map(str::trim))
    };
    let per_second = field("Requests/sec:")
        .and_then(|value| value.parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's report: {text}"))?;
    let percentile = |name: &str| {
        field(name)
            .and_then(parse_wrk_duration)
            .with_context(|| format!("no {name} latency in wrk's report: {text}"))
    };
    let requests = text
        .lines()
        .find_map(|line| line.trim().split_once(" requests in "))
        .and_then(|(count, _)| count.parse().ok())
        .with_context(|| format!("no request count in wrk's report: {text}"))?;
    Ok(Run {
        requests,
        per_second,
        p50: percentile("50%")?,
        p99: percentile("99%")?,
        failed: field("Non-2xx or 3xx responses:")
            .and_then(|value| value.parse().ok())
            .unwrap_or(0),
    })
}

/// wrk's `123.45us`, `1.23ms`, `2.00s`.
fn parse_wrk_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit {
        "us" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

/// A child process, stopped when dropped: SIGTERM, and SIGKILL if it is still there after a
/// second (a killed nginx master would leave its workers running).
#[derive(Debug)]
pub struct Running(Child);

impl Running {
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    pub fn start(command: &mut Command) -> anyhow::Result<Self> {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {:?}", command.get_program()))?;
        Ok(Self(child))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Poll with raw HTTP/1.1 until `path` on `port` answers 200.
pub fn wait_answering(port: u16, path: &str) -> anyhow::Result<()> {
    // Long enough for the gateway to start under valgrind on a busy machine.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if get(port, path).is_ok_and(|answer| answer.starts_with("HTTP/1.1 200")) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("nothing answered 200 on port {port}{path} within 30 s")
}

/// The whole answer, head and body, to a GET of `path` on `port` over raw HTTP/1.1.
pub fn get(port: u16, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer bench\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes())?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// The release gateway in front of the upstream on `upstream_port` (its every peer), quiet, its
/// read limit off (wrk sends one token at full speed), answering; and the port it listens on.
pub fn start_gateway(upstream_port: u16) -> anyhow::Result<(Running, ReservedPort)> {
    let port = ReservedPort::new();
    let upstream_url = format!("http://127.0.0.1:{upstream_port}");
    let gateway = Running::start(
        Command::new(gateway_binary()?)
            .env("PORT", port.port.to_string())
            .env("HOST", "127.0.0.1")
            .env("LOG_LEVEL", "warn")
            .env("RATE_LIMIT_READS", "off")
            .env("FRIENDS_URL", &upstream_url)
            .env("USERS_URL", &upstream_url)
            .env("VERIFICATION_URL", &upstream_url)
            .envs(dozen_tests::identity::identities().env("gateway")),
    )?;
    wait_answering(port.port, "/readyz")?;
    Ok((gateway, port))
}
