//! Gateway benchmark: latency (p50, p99) and throughput of one request shape, `GET
//! /api/friends` with a bearer token, answered by a small upstream with a small JSON body —
//! (a) sent to the upstream directly, (b) through dozen's gateway (its `FRIENDS_URL` pointing at
//! the upstream), (c) through nginx (Debian's package, proxying with keep-alive to the same
//! upstream) and (d) through a bare hyper proxy doing only nginx's edge work (the floor for any
//! proxy built on hyper, which tells hyper's own cost from the gateway's), measured in one run.
//! Then `GET /api/me` through the gateway, which calls the
//! upstream four times at once (as users, as friends twice and as verification) and merges the
//! answers; with it, the successful upstream calls per answer, from the gateway's `/metrics`: 4
//! unless answers lacked parts (a call failed, or a breaker was open), which are cheaper and
//! would flatter the figure. It prints figures; it asserts nothing.
//!
//! Latency is measured with one connection (one request at a time: what a request costs);
//! throughput with many connections at once (`-- <connections>`, default 64). During the
//! throughput run, the CPU time the one in the middle spends (the upstream itself when called
//! directly; the gateway; nginx's master and workers), user and system apart, per request: on
//! a machine where the load generator, the proxy and the upstream share the cores, it tells
//! what each proxy costs more steadily than requests per second do. Load comes from
//! `wrk` (Debian package), so that the load generator is the same, and cheap, for all three.
//! Nobody logs each request: the gateway runs with `LOG_LEVEL=warn`, nginx with `access_log
//! off`. nginx does the gateway's work at the edge too: it passes on or makes a request id
//! (`x-request-id`, echoed on the answer), names the client in `x-forwarded-for`, and sets the
//! gateway's security headers on every answer.
//!
//! Run: `cargo build --release -p dozen-gateway -p dozen-bench && cargo run --release -p
//! dozen-bench --bin gateway` (optionally `-- <seconds per measurement> <connections>`,
//! default 10 and 64).
//!
//! `-- instructions [requests]` prints instead the instructions the gateway runs per proxied
//! request, counted by valgrind's callgrind (Debian package valgrind): the gateway runs once
//! under it for a warm-up only and once for the warm-up and `requests` more (default 2,000),
//! one at a time on one connection, and the difference is divided by `requests`. Unlike time,
//! the count is the same whatever else the machine is doing, so it shows what a change to the
//! request path costs or saves.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::{Context, bail};
use axum::http::{HeaderName, HeaderValue, Request, Response};
use dozen_bench::proxy::{
    ANSWER, Running, UPSTREAM_MODE, gateway_binary, get, serve_upstream, start_gateway, start_upstream,
    wait_answering, wrk,
};
use dozen_bench::{ReservedPort, callgrind_total, process_ids, process_stat};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

/// The argument that makes this binary the bare hyper proxy (`-- serve-bare-proxy <port>
/// <upstream port>`).
const BARE_PROXY_MODE: &str = "serve-bare-proxy";

/// The argument that counts instructions instead of measuring time.
const INSTRUCTIONS_MODE: &str = "instructions";

/// Requests sent before the count starts to matter: connection pools filled, metrics
/// registered, lazy statics made.
const WARM_UP_REQUESTS: u64 = 300;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(UPSTREAM_MODE) {
        let port: u16 = args.get(1).context("the upstream's port")?.parse()?;
        return serve_upstream(port);
    }
    if args.first().map(String::as_str) == Some(BARE_PROXY_MODE) {
        let port: u16 = args.get(1).context("the proxy's port")?.parse()?;
        let upstream_port: u16 = args.get(2).context("the upstream's port")?.parse()?;
        return serve_bare_proxy(port, upstream_port);
    }
    if args.first().map(String::as_str) == Some(INSTRUCTIONS_MODE) {
        let requests: u64 = args.get(1).map(|n| n.parse()).transpose()?.unwrap_or(2_000);
        return print_instructions_per_request(requests);
    }
    let seconds: u64 = args.first().map(|n| n.parse()).transpose()?.unwrap_or(10);
    let connections: u32 = args.get(1).map(|n| n.parse()).transpose()?.unwrap_or(64);
    if Command::new("wrk").arg("--version").output().is_err() {
        bail!("wrk is missing: install Debian's wrk package (apt-get install wrk) to run this benchmark");
    }
    let nginx = which("nginx").context(
        "nginx is missing: install Debian's nginx package (apt-get install nginx) to run this benchmark",
    )?;
    let (upstream, upstream_port) = start_upstream()?;
    let (gateway, gateway_port_reservation) = start_gateway(upstream_port)?;
    let gateway_port = gateway_port_reservation.port;

    let nginx_folder = tempfile::tempdir()?;
    let nginx_port_reservation = ReservedPort::new();
    let nginx_port = nginx_port_reservation.port;
    let config = nginx_config(nginx_folder.path(), nginx_port, upstream_port)?;
    let nginx = Running::start(
        Command::new(&nginx)
            .arg("-p")
            .arg(nginx_folder.path())
            .arg("-c")
            .arg(&config),
    )?;
    wait_answering(nginx_port, "/api/friends")?;

    let bare_port_reservation = ReservedPort::new();

    let bare_port = bare_port_reservation.port;
    let bare = Running::start(Command::new(std::env::current_exe()?).args([
        BARE_PROXY_MODE,
        &bare_port.to_string(),
        &upstream_port.to_string(),
    ]))?;
    wait_answering(bare_port, "/api/friends")?;

    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let build = if cfg!(debug_assertions) {
        "DEBUG build: measure with --release"
    } else {
        "release build"
    };
    println!(
        "GET /api/friends with a {}-byte JSON answer; wrk, {seconds} s per figure, {cores} cores, {build}",
        ANSWER.len()
    );
    println!(
        "{:<26} {:>10} {:>10} {:>12} {:>11} {:>11} {:>13} {:>12}",
        "path",
        "p50 µs (1)",
        "p99 µs (1)",
        format!("req/s ({connections})"),
        format!("p50 ms ({connections})"),
        format!("p99 ms ({connections})"),
        "user µs/req",
        "sys µs/req",
    );
    let targets = [
        ("upstream, direct", upstream_port, "/api/friends", upstream.id()),
        ("through the gateway", gateway_port, "/api/friends", gateway.id()),
        ("through nginx", nginx_port, "/api/friends", nginx.id()),
        ("through bare hyper", bare_port, "/api/friends", bare.id()),
        ("gateway /api/me (4 calls)", gateway_port, "/api/me", gateway.id()),
    ];
    let mut figures = Vec::new();
    for (name, port, path, process) in targets {
        let url = format!("http://127.0.0.1:{port}{path}");
        // Warm the connection pools and caches first.
        wrk(&url, 1, 2, 1)?;
        let single = wrk(&url, 1, 1, seconds)?;
        let before = CpuTime::of_process_and_children(process)?;
        // `/api/me` answers 200 with what it has when a call fails or its breaker is open:
        // such answers are cheaper, and would flatter the figure unseen.
        let aggregates = path == "/api/me";
        let calls_before = aggregates
            .then(|| successful_upstream_calls(gateway_port))
            .transpose()?;
        let loaded = wrk(&url, 2, connections, seconds)?;
        let spent = CpuTime::of_process_and_children(process)?.since(&before);
        let per_request = |seconds: f64| seconds * 1e6 / loaded.requests.max(1) as f64;
        println!(
            "{:<26} {:>10.0} {:>10.0} {:>12.0} {:>11.2} {:>11.2} {:>13.1} {:>12.1}",
            name,
            single.p50.as_secs_f64() * 1e6,
            single.p99.as_secs_f64() * 1e6,
            loaded.per_second,
            loaded.p50.as_secs_f64() * 1e3,
            loaded.p99.as_secs_f64() * 1e3,
            per_request(spent.user),
            per_request(spent.system),
        );
        for run in [&single, &loaded] {
            if run.failed > 0 {
                println!("  warning: {} answers were not 2xx", run.failed);
            }
        }
        if let Some(calls_before) = calls_before {
            let calls = successful_upstream_calls(gateway_port)? - calls_before;
            println!(
                "  {:.2} successful upstream calls per /api/me answer (4 when none lacked a part)",
                calls / loaded.requests.max(1) as f64
            );
        }
        figures.push((single, loaded));
    }
    let added = |index: usize| {
        let (single, _) = &figures[index];
        let (direct, _) = &figures[0];
        (single.p50.as_secs_f64() - direct.p50.as_secs_f64()) * 1e6
    };
    println!(
        "added p50 latency: gateway {:.0} µs, nginx {:.0} µs; throughput: gateway {:.0} req/s, nginx {:.0} req/s",
        added(1),
        added(2),
        figures[1].1.per_second,
        figures[2].1.per_second,
    );
    println!(
        "the floor for a proxy on hyper (bare hyper): added p50 latency {:.0} µs, throughput {:.0} req/s",
        added(3),
        figures[3].1.per_second,
    );
    Ok(())
}

/// Run the gateway under callgrind twice (warm-up only, then warm-up and `requests` more) and
/// print the instructions per proxied request.
fn print_instructions_per_request(requests: u64) -> anyhow::Result<()> {
    if Command::new("valgrind").arg("--version").output().is_err() {
        bail!("valgrind is missing: install Debian's valgrind package (apt-get install valgrind)");
    }
    let gateway_binary = gateway_binary()?;
    let (_upstream, upstream_port) = start_upstream()?;
    let upstream_url = format!("http://127.0.0.1:{upstream_port}");
    let folder = tempfile::tempdir()?;
    let mut totals = Vec::new();
    for extra in [0, requests] {
        let counts = folder.path().join(format!("callgrind.{extra}"));
        let port_reservation = ReservedPort::new();
        let port = port_reservation.port;
        let mut gateway = Command::new("valgrind")
            .arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", counts.display()))
            .arg(&gateway_binary)
            .env("PORT", port.to_string())
            .env("HOST", "127.0.0.1")
            .env("LOG_LEVEL", "warn")
            // One serving thread: every request takes the same path.
            .env("WORKER_THREADS", "1")
            .env("FRIENDS_URL", &upstream_url)
            .env("USERS_URL", &upstream_url)
            .env("VERIFICATION_URL", &upstream_url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start the gateway under valgrind")?;
        let sent = wait_answering(port, "/readyz")
            .and_then(|()| send_one_at_a_time(port, "/api/friends", WARM_UP_REQUESTS + extra));
        let pid = nix::unistd::Pid::from_raw(i32::try_from(gateway.id())?);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        gateway.wait()?;
        sent?;
        totals.push(callgrind_total(&counts)?);
    }
    let per_request = totals[1].saturating_sub(totals[0]) as f64 / requests as f64;
    println!(
        "GET /api/friends through the gateway, one serving thread, {requests} requests after {WARM_UP_REQUESTS} to warm up"
    );
    println!("instructions per proxied request (callgrind): {per_request:.0}");
    Ok(())
}

/// Send `count` GET requests for `path` one after another on one keep-alive connection, each
/// answer read to its end; fail unless each is a 200.
fn send_one_at_a_time(port: u16, path: &str, count: u64) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer bench\r\n\r\n");
    let mut pending = Vec::new();
    for _ in 0..count {
        stream.write_all(request.as_bytes())?;
        let (head_end, body_length) = loop {
            if let Some(head_end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&pending[..head_end]).to_ascii_lowercase();
                if !head.starts_with("http/1.1 200") {
                    bail!("the gateway answered {}", head.lines().next().unwrap_or_default());
                }
                let length = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:"))
                    .and_then(|value| value.trim().parse::<usize>().ok())
                    .context("an answer without content-length")?;
                break (head_end + 4, length);
            }
            read_more(&mut stream, &mut pending)?;
        };
        while pending.len() < head_end + body_length {
            read_more(&mut stream, &mut pending)?;
        }
        pending.drain(..head_end + body_length);
    }
    Ok(())
}

/// Read what has arrived on `stream` onto the end of `pending`.
fn read_more(stream: &mut TcpStream, pending: &mut Vec<u8>) -> anyhow::Result<()> {
    let mut chunk = [0u8; 4096];
    let read = stream.read(&mut chunk)?;
    if read == 0 {
        bail!("the gateway closed the connection");
    }
    pending.extend_from_slice(&chunk[..read]);
    Ok(())
}

/// The floor for a reverse proxy built on hyper, to tell hyper's cost from the gateway's: the
/// edge work nginx does here and nothing more, on one single-threaded runtime per core (as the
/// gateway serves), each client connection given a connection of its own to the upstream (no
/// pool to look in). No routing, middleware, metrics, breaker or timeouts.
fn serve_bare_proxy(port: u16, upstream_port: u16) -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
    listener.set_nonblocking(true)?;
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let mut serving = Vec::with_capacity(threads);
    for _ in 0..threads {
        let listener = listener.try_clone()?;
        serving.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                loop {
                    let (client, address) = listener.accept().await?;
                    tokio::spawn(async move {
                        if let Err(error) = proxy_connection(client, address, upstream_port).await {
                            eprintln!("bare proxy: {error:#}");
                        }
                    });
                }
            })
        }));
    }
    for thread in serving {
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("a bare proxy thread panicked"))??;
    }
    Ok(())
}

/// Serve one client connection of the bare proxy, over one upstream connection.
async fn proxy_connection(
    client: tokio::net::TcpStream,
    address: SocketAddr,
    upstream_port: u16,
) -> anyhow::Result<()> {
    client.set_nodelay(true)?;
    let upstream = tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await?;
    upstream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(upstream)).await?;
    tokio::spawn(connection);
    let sender = Arc::new(tokio::sync::Mutex::new(sender));
    let forwarded_for = HeaderValue::from_str(&address.ip().to_string())?;
    let proxy =
        hyper::service::service_fn(move |request| forward(sender.clone(), forwarded_for.clone(), request));
    match hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(client), proxy)
        .await
    {
        // wrk ends its run by closing connections in the middle of requests.
        Err(error) if !error.is_incomplete_message() => Err(error.into()),
        _ => Ok(()),
    }
}

/// The bare proxy's work on one request.
async fn forward(
    upstream: Arc<tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<Incoming>>>,
    forwarded_for: HeaderValue,
    mut request: Request<Incoming>,
) -> Result<Response<Incoming>, Box<dyn std::error::Error + Send + Sync>> {
    const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
    const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
    let headers = request.headers_mut();
    let request_id = match headers.get(&REQUEST_ID) {
        Some(id) => id.clone(),
        None => HeaderValue::from_str(&uuid::Uuid::new_v4().simple().to_string())?,
    };
    headers.insert(REQUEST_ID, request_id.clone());
    headers.insert(FORWARDED_FOR, forwarded_for);
    let mut answer = {
        let mut upstream = upstream.lock().await;
        upstream.ready().await?;
        upstream.send_request(request).await?
    };
    let headers = answer.headers_mut();
    headers.insert(REQUEST_ID, request_id);
    for (name, value) in &dozen_gateway::headers::SECURITY_HEADERS {
        headers.insert(name.clone(), value.clone());
    }
    Ok(answer)
}

/// nginx as a reverse proxy in front of the upstream, keeping connections to it open, in the
/// foreground, with every file it writes in `folder`.
fn nginx_config(folder: &Path, port: u16, upstream_port: u16) -> anyhow::Result<PathBuf> {
    let at = |name: &str| folder.join(name).display().to_string();
    // The gateway's security headers, as nginx directives.
    let security_headers: String = dozen_gateway::headers::SECURITY_HEADERS
        .iter()
        .map(|(name, value)| {
            format!(
                "            add_header {name} \"{}\" always;\n",
                value.to_str().unwrap_or_default()
            )
        })
        .collect();
    let config = format!(
        "daemon off;
worker_processes auto;
pid {pid};
error_log {errors} warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    upstream friends {{
        server 127.0.0.1:{upstream_port};
        keepalive 128;
    }}
    map $http_x_request_id $edge_request_id {{
        \"\" $request_id;
        default $http_x_request_id;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://friends;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header X-Request-Id $edge_request_id;
            proxy_set_header X-Forwarded-For $remote_addr;
            add_header X-Request-Id $edge_request_id always;
{security_headers}        }}
    }}
}}
",
        pid = at("nginx.pid"),
        errors = at("error.log"),
        temp = at("temp"),
    );
    std::fs::create_dir_all(folder.join("temp"))?;
    std::fs::create_dir_all(folder.join("logs"))?;
    let path = folder.join("nginx.conf");
    std::fs::write(&path, config)?;
    Ok(path)
}

/// CPU seconds spent by a process and its children (nginx's workers), from `/proc`.
#[derive(Debug)]
struct CpuTime {
    user: f64,
    system: f64,
}

impl CpuTime {
    fn of_process_and_children(process: u32) -> anyhow::Result<Self> {
        let mut spent = Self {
            user: 0.0,
            system: 0.0,
        };
        for pid in process_ids()? {
            if let Some(stat) = process_stat(&pid.to_string())
                && (pid == process || stat.parent == process)
            {
                spent.user += stat.user;
                spent.system += stat.system;
            }
        }
        Ok(spent)
    }

    fn since(&self, earlier: &Self) -> Self {
        Self {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
        }
    }
}

/// The gateway's successful calls to its upstreams so far, by its `/metrics`.
fn successful_upstream_calls(port: u16) -> anyhow::Result<f64> {
    let metrics = get(port, "/metrics").context("cannot read the gateway's /metrics")?;
    Ok(metrics
        .lines()
        .filter(|line| line.starts_with("upstream_requests_total{") && line.contains("outcome=\"success\""))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// The path of `program` on PATH, or in /usr/sbin (where Debian puts nginx).
fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|folder| folder.join(program))
        .find(|candidate| candidate.is_file())
}
