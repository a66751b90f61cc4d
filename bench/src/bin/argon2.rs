//! The time one argon2id hash at the services' cost (OWASP's minimum) takes on one core, with
//! the passwords service's own hasher: what a build profile does to the service's hot path.
//! Then the same number of hashes on every core at once, as the passwords service computes
//! them under load: the time per hash there also tells what the cores' shared cache costs.
//!
//! Run: `cargo run --release -p dozen-bench --bin argon2` (optionally `-- <hashes>`, default 50).

use std::time::Instant;

use dozen_bench::{hashes_per_second_on_all_cores, percentile};
use dozen_passwords::domain::hashing::{Cost, Hasher};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let hashes: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(50);
    let hasher = Hasher::new(Cost::OWASP_MINIMUM, 1)?;
    hasher.hash("warm-up password").await?;
    let mut times = Vec::with_capacity(hashes);
    for i in 0..hashes {
        let started = Instant::now();
        hasher.hash(&format!("benchmark password {i}")).await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "argon2id m=19456 KiB t=2 p=1, {hashes} hashes: p50 {:.2} ms, p90 {:.2} ms, min {:.2} ms",
        percentile(&times, 0.5),
        percentile(&times, 0.9),
        times.first().copied().unwrap_or_default(),
    );

    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let per_second = hashes_per_second_on_all_cores(hashes).await?;
    println!(
        "{cores} at once, {hashes} hashes each: {per_second:.1} hashes/s, {:.2} ms per hash on each core",
        cores as f64 * 1000.0 / per_second,
    );
    Ok(())
}
