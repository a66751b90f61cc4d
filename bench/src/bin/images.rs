//! Container benchmark: for every service image, its size, and the time from `podman run` to
//! the first `/readyz` that answers 200 (container creation, runtime start and the service's
//! own start-up), on the embedded defaults in a fresh data folder. It prints figures; it
//! asserts nothing.
//!
//! Run: `deploy/build-images && cargo run --release -p dozen-bench --bin images`
//! (optionally `-- <runs> <image prefix> <tag>`, default `5 localhost/dozen- 0.1.0`).
//! `DOZEN_OCI_RUNTIME` names podman's OCI runtime (default `runc`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use dozen_bench::{ReservedPort, is_ready, percentile};

const SERVICES: [(&str, bool); 6] = [
    ("gateway", false),
    ("signup", true),
    ("users", true),
    ("passwords", true),
    ("verification", true),
    ("friends", true),
];

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(5);
    let prefix = args.next().unwrap_or_else(|| "localhost/dozen-".to_owned());
    let tag = args.next().unwrap_or_else(|| "0.1.0".to_owned());
    let runtime = std::env::var("DOZEN_OCI_RUNTIME").unwrap_or_else(|_| "runc".to_owned());
    let signing_key = dozen_passwords::generate_signing_key_pem();

    println!(
        "image size, and podman run → /readyz = 200 on the embedded defaults; {runs} runs each, runtime {runtime}, {} cores",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!(
        "{:<36} {:>9} {:>9} {:>9} {:>9}",
        "image", "size MB", "p50 ms", "p90 ms", "max ms"
    );
    for (service, has_database) in SERVICES {
        let image = format!("{prefix}{service}:{tag}");
        let Ok(size) = podman(&["image", "inspect", "--format", "{{.Size}}", &image]) else {
            println!("{image:<36} missing: build it with deploy/build-images");
            continue;
        };
        let size_mb = size.trim().parse::<f64>()? / 1_000_000.0;
        // A data folder the image's user may write: the embedded databases and bus live there.
        let data = tempfile::tempdir()?;
        std::fs::set_permissions(data.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
        let volume = format!("{}:/data", data.path().display());
        let key = format!("JWT_SIGNING_KEYS={signing_key}");
        let [(signing_name, signing), (trust_name, trust)] = dozen_tests::identity::identities().env(service);
        let identity_key = format!("{signing_name}={signing}");
        let identity_trust = format!("{trust_name}={trust}");
        let base = |name: &str, port: u16| -> Vec<String> {
            let port_env = format!("PORT={port}");
            [
                "run",
                "--name",
                name,
                "--runtime",
                runtime.as_str(),
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1024:1024",
                "--network",
                "host",
                "--read-only",
                "--volume",
                volume.as_str(),
                "--env",
                key.as_str(),
                "--env",
                identity_key.as_str(),
                "--env",
                identity_trust.as_str(),
                "--env",
                port_env.as_str(),
                "--env",
                "LOG_LEVEL=warn",
            ]
            .map(str::to_owned)
            .to_vec()
        };
        let id = uuid::Uuid::new_v4().simple().to_string();
        if has_database {
            let name = format!("dozen-bench-{service}-migrate-{id}");
            let mut command = base(&name, 0);
            command.insert(1, "--rm".to_owned());
            command.extend([image.clone(), "migrate".to_owned()]);
            let command: Vec<&str> = command.iter().map(String::as_str).collect();
            podman(&command).with_context(|| format!("{service} migrate"))?;
        }
        let mut startups = Vec::with_capacity(runs);
        for run in 0..runs {
            let port_reservation = ReservedPort::new();
            let port = port_reservation.port;
            let name = format!("dozen-bench-{service}-{id}-{run}");
            let mut command = base(&name, port);
            command.insert(1, "--detach".to_owned());
            command.push(image.clone());
            let command: Vec<&str> = command.iter().map(String::as_str).collect();
            let started = Instant::now();
            let outcome = podman(&command).and_then(|_| wait_ready(port, Duration::from_secs(30)));
            let elapsed = started.elapsed();
            let _ = podman(&["rm", "--force", "--time", "10", &name]);
            outcome.with_context(|| format!("{image} did not become ready"))?;
            startups.push(elapsed.as_secs_f64() * 1000.0);
        }
        startups.sort_by(f64::total_cmp);
        println!(
            "{:<36} {:>9.1} {:>9.0} {:>9.0} {:>9.0}",
            image,
            size_mb,
            percentile(&startups, 0.5),
            percentile(&startups, 0.9),
            startups.last().copied().unwrap_or_default(),
        );
    }
    Ok(())
}

/// Run podman; its standard output, or an error with what it said.
fn podman(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("podman")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run podman")?;
    if !output.status.success() {
        bail!(
            "podman {} failed: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Poll `/readyz` until it answers 200.
fn wait_ready(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if is_ready(port) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    bail!("not ready within {timeout:?}")
}
