//! What the benchmark binaries share: reserved ports, a raw `/readyz` probe (no client library, so
//! the probe adds nothing to what is measured), percentiles and processes' CPU time.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

pub mod proxy;

/// A port held for a program that is told its port (nginx, podman, a service under valgrind):
/// it listens there while no one else can take it.
pub use dozen_tests::process::ReservedPort;

/// Whether `GET /readyz` on 127.0.0.1:`port`, over a fresh connection, answers 200.
pub fn is_ready(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    if stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

/// The value at `quantile` (0 to 1) of `sorted`; 0 when it is empty.
pub fn percentile(sorted: &[f64], quantile: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() - 1) as f64 * quantile).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// What `/proc/<pid>/stat` tells of a process.
#[derive(Debug, Clone, Copy)]
pub struct ProcessStat {
    /// Its parent's process id.
    pub parent: u32,
    /// CPU seconds spent so far in user mode, by all its threads.
    pub user: f64,
    /// CPU seconds spent so far in the kernel on its behalf.
    pub system: f64,
}

/// The stat of process `pid` (a number, or `self`); `None` once it is gone.
pub fn process_stat(pid: &str) -> Option<ProcessStat> {
    // Clock ticks per second, as /proc counts them.
    const TICKS: f64 = 100.0;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |index: usize| fields.get(index)?.parse::<f64>().ok();
    Some(ProcessStat {
        parent: fields.get(1)?.parse().ok()?,
        user: ticks(11)? / TICKS,
        system: ticks(12)? / TICKS,
    })
}

/// The ids of every process running now.
pub fn process_ids() -> anyhow::Result<Vec<u32>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        if let Some(id) = entry?.file_name().to_str().and_then(|name| name.parse().ok()) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// Hashes per second with every core hashing at once, `hashes_per_core` each, through the
/// passwords service's own hasher at its cost: what the machine can hash, shared cache and
/// memory bandwidth included.
pub async fn hashes_per_second_on_all_cores(hashes_per_core: usize) -> anyhow::Result<f64> {
    use dozen_passwords::domain::hashing::{Cost, Hasher};
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let hasher = Hasher::new(Cost::OWASP_MINIMUM, cores)?;
    // Every core's buffer made before the clock starts, as in a service that has run a while.
    let warm_ups: Vec<_> = (0..cores)
        .map(|core| {
            let hasher = hasher.clone();
            tokio::spawn(async move { hasher.hash(&format!("warm-up password {core}")).await })
        })
        .collect();
    for warm_up in warm_ups {
        warm_up.await??;
    }
    let started = std::time::Instant::now();
    let workers: Vec<_> = (0..cores)
        .map(|core| {
            let hasher = hasher.clone();
            tokio::spawn(async move {
                for i in 0..hashes_per_core {
                    hasher.hash(&format!("benchmark password {core} {i}")).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker.await??;
    }
    Ok((cores * hashes_per_core) as f64 / started.elapsed().as_secs_f64())
}

/// `dozen up` (the binary next to this one, so a release benchmark runs release services) on
/// a temporary data folder, every port chosen free; stopped with SIGINT when dropped.
#[derive(Debug)]
pub struct Platform {
    /// The `dozen up` process.
    pub up: Child,
    /// The gateway's URL.
    pub gateway: String,
    /// The data folder (databases, the dev mailbox).
    pub data: tempfile::TempDir,
}

impl Platform {
    /// Start it with `env` on top of quiet logs, and wait until every service is ready.
    pub fn start(env: &[(&str, &str)]) -> anyhow::Result<Self> {
        let folder = std::env::current_exe()?
            .parent()
            .context("binary folder")?
            .to_path_buf();
        let data = tempfile::tempdir()?;
        let mut command = Command::new(folder.join("dozen"));
        command
            .arg("up")
            .env("DATA_DIR", data.path())
            .env("LOG_LEVEL", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for service in dozen_tests::platform::SERVICES {
            command.env(format!("{}_PORT", service.to_uppercase()), "0");
        }
        let mut up = command.spawn().context("starting dozen up")?;
        let stdout = up.stdout.take().context("dozen up's output")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut gateway = None;
        loop {
            let Some(line) = lines.next() else {
                bail!("dozen up stopped before its services were ready");
            };
            let line = line?;
            if let Some((_, url)) = line.split_once("gateway listens on ") {
                gateway = Some(url.trim().to_owned());
            }
            if line.contains("all 6 services are ready") {
                break;
            }
        }
        let gateway = gateway.context("dozen up did not say where the gateway listens")?;
        // Keep reading, so that a full pipe never blocks dozen up.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Self { up, gateway, data })
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.up.id()).unwrap_or(0));
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let _ = self.up.wait();
    }
}

/// The total instructions in a callgrind output file (its `totals:` line).
pub fn callgrind_total(counts: &std::path::Path) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(counts)
        .with_context(|| format!("callgrind wrote no counts to {}", counts.display()))?;
    text.lines()
        .find_map(|line| line.strip_prefix("totals:"))
        .and_then(|total| total.trim().parse().ok())
        .context("no totals line in callgrind's output")
}
