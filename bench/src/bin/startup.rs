//! Start-up benchmark: for every service binary, the time from exec to the first `/readyz`
//! that answers 200, and its resident memory once idle — next to a bare axum server measured
//! in the same run. It prints figures; it asserts nothing.
//!
//! Run: `cargo build --release --workspace --bins && cargo run --release -p dozen-bench --bin startup`
//! (optionally `-- <runs>`, default 20).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
    let runs: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(20);
    let folder = std::env::current_exe()?
        .parent()
        .context("binary folder")?
        .to_path_buf();
    let data = tempfile::tempdir()?;
    // What the services need besides their database: the embedded bus in the same folder, and
    // a signing key for passwords.
    let bus_url = format!("sqlite://{}", data.path().join("bus.db").display());
    let signing_key = dozen_passwords::generate_signing_key_pem();

    println!(
        "start-up to /readyz = 200, and idle RSS; {runs} runs each, release build, {}",
        cpu_note()
    );
    println!(
        "{:<22} {:>9} {:>9} {:>9} {:>12} {:>14}",
        "binary", "p50 ms", "p90 ms", "max ms", "idle RSS MiB", "anonymous MiB"
    );
    measure(&folder.join("hello"), &[], runs)?;
    for (service, has_database) in SERVICES {
        let binary = folder.join(format!("dozen-{service}"));
        let mut env = vec![
            ("LOG_LEVEL".to_owned(), "warn".to_owned()),
            ("BUS_URL".to_owned(), bus_url.clone()),
            ("JWT_SIGNING_KEYS".to_owned(), signing_key.clone()),
        ];
        env.extend(
            dozen_tests::identity::identities()
                .env(service)
                .map(|(name, value)| (name.to_owned(), value.to_owned())),
        );
        if has_database {
            let url = format!("sqlite://{}", data.path().join(format!("{service}.db")).display());
            env.push(("DATABASE_URL".to_owned(), url));
            let migrated = Command::new(&binary)
                .arg("migrate")
                .envs(env.iter().cloned())
                .output()?;
            if !migrated.status.success() {
                bail!(
                    "{service} migrate failed: {}",
                    String::from_utf8_lossy(&migrated.stdout)
                );
            }
        }
        measure(&binary, &env, runs)?;
    }
    Ok(())
}

fn cpu_note() -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    format!("{cores} cores")
}

fn measure(binary: &Path, env: &[(String, String)], runs: usize) -> anyhow::Result<()> {
    if !binary.exists() {
        bail!(
            "{} is missing: run `cargo build --release --workspace --bins` first",
            binary.display()
        );
    }
    let mut startups = Vec::with_capacity(runs);
    let mut rss = Vec::with_capacity(runs);
    let mut anon = Vec::with_capacity(runs);
    for _ in 0..runs {
        let port_reservation = ReservedPort::new();
        let port = port_reservation.port;
        let started = Instant::now();
        let mut child = spawn(binary, env, port)?;
        let ready = wait_ready(port, &mut child, Duration::from_secs(10));
        let elapsed = started.elapsed();
        if let Err(error) = ready {
            let _ = child.kill();
            return Err(error.context(format!("{} did not become ready", binary.display())));
        }
        startups.push(elapsed.as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(500));
        let (total, anonymous) = resident_mib(child.id())?;
        rss.push(total);
        anon.push(anonymous);
        stop(&mut child)?;
    }
    startups.sort_by(f64::total_cmp);
    rss.sort_by(f64::total_cmp);
    anon.sort_by(f64::total_cmp);
    let name = binary
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    println!(
        "{:<22} {:>9.2} {:>9.2} {:>9.2} {:>12.2} {:>14.2}",
        name,
        percentile(&startups, 0.5),
        percentile(&startups, 0.9),
        startups.last().copied().unwrap_or_default(),
        percentile(&rss, 0.5),
        percentile(&anon, 0.5),
    );
    Ok(())
}

fn spawn(binary: &Path, env: &[(String, String)], port: u16) -> anyhow::Result<Child> {
    Ok(Command::new(PathBuf::from(binary))
        .envs(env.iter().cloned())
        .env("PORT", port.to_string())
        .env("HOST", "127.0.0.1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?)
}

/// Poll with raw HTTP/1.1 over a fresh connection, as fast as the loopback allows, so the
/// client adds next to nothing to the figure.
fn wait_ready(port: u16, child: &mut Child, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            bail!("exited early with {status}");
        }
        if is_ready(port) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    bail!("not ready within {timeout:?}")
}

/// Resident memory: all of it, and the anonymous part (heap and stacks, what the process
/// itself allocated, as opposed to pages of its executable file, which the kernel can drop).
fn resident_mib(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        let kib: f64 = status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .with_context(|| name.to_owned())?
            .parse()?;
        Ok(kib / 1024.0)
    };
    Ok((field("VmRSS:")?, field("RssAnon:")?))
}

fn stop(child: &mut Child) -> anyhow::Result<()> {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
    child.wait()?;
    Ok(())
}
