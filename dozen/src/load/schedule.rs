//! The open-loop driver: requests start at fixed arrival times, whatever the responses do.
//!
//! A closed loop (send, wait, send) slows down with the server and hides its stalls
//! (coordinated omission). Here request `k` is due at `k / rate` seconds; its latency is
//! measured from that due time, so time spent waiting behind a stall counts. At most
//! `max_in_flight` requests run at once: one due while the cap is reached is dropped and
//! counted as an error rather than queued.

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use super::mix::{Endpoint, Mix};
use super::report::Outcome;
use super::workload::Workload;

/// When requests are due: a fixed rate, for a time or a count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Requests per second.
    pub rate: f64,
    /// When to stop.
    pub limit: Limit,
}

/// How long a run lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Every request due before this time after the start.
    Duration(Duration),
    /// This many requests.
    Requests(u64),
}

impl Schedule {
    /// When request `k` (from 0) is due, after the start.
    pub fn due(&self, k: u64) -> Duration {
        Duration::from_secs_f64(k as f64 / self.rate)
    }

    /// How many requests the run sends.
    pub fn count(&self) -> u64 {
        match self.limit {
            Limit::Requests(count) => count,
            // The requests due strictly before the end.
            Limit::Duration(duration) => (duration.as_secs_f64() * self.rate).ceil() as u64,
        }
    }

    /// Every due time, in order.
    pub fn arrivals(&self) -> impl Iterator<Item = Duration> + '_ {
        (0..self.count()).map(|k| self.due(k))
    }
}

/// Run `schedule` against `workload`, sending the endpoints of `mix` in turn; returns when
/// every request has finished.
pub async fn drive(workload: &Arc<Workload>, schedule: Schedule, mix: &Mix, max_in_flight: usize) {
    let permits = Arc::new(Semaphore::new(max_in_flight));
    let tracker = TaskTracker::new();
    let progress = progress_bar(schedule.count());
    progress.set_message("0 in flight, 0 errors");
    let start = workload.recorder.start_run();
    let mut endpoints = mix.sequence();
    for due in schedule.arrivals() {
        let Some(endpoint) = endpoints.next() else { break };
        let due_at = start + due;
        tokio::time::sleep_until(due_at.into()).await;
        progress.inc(1);
        if progress.position().is_multiple_of(16) {
            progress.set_message(format!(
                "{} in flight, {} errors",
                max_in_flight - permits.available_permits(),
                workload.recorder.errors()
            ));
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            workload.recorder.record(endpoint, due_at, Outcome::Dropped, None);
            continue;
        };
        let workload = workload.clone();
        tracker.spawn(async move {
            send(&workload, endpoint, due_at).await;
            drop(permit);
        });
    }
    tracker.close();
    tracker.wait().await;
    progress.finish_and_clear();
}

/// Send one request due at `due_at` and record how it went, latency counted from `due_at`.
async fn send(workload: &Workload, endpoint: Endpoint, due_at: Instant) {
    if let Some(outcome) = workload.call(endpoint).await {
        let latency = due_at.elapsed();
        workload.recorder.record(endpoint, due_at, outcome, Some(latency));
    }
}

/// A progress line on stderr while a run lasts; hidden when stderr is not a terminal.
fn progress_bar(count: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(count), ProgressDrawTarget::stderr());
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    if let Ok(style) = ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} sent, {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_due_at_even_steps_of_one_over_the_rate() {
        let schedule = Schedule {
            rate: 4.0,
            limit: Limit::Requests(6),
        };
        let due: Vec<f64> = schedule.arrivals().map(|d| d.as_secs_f64()).collect();
        assert_eq!(due, [0.0, 0.25, 0.5, 0.75, 1.0, 1.25]);
    }

    #[test]
    fn a_timed_run_sends_rate_times_duration_requests_all_due_before_its_end() {
        let schedule = Schedule {
            rate: 300.0,
            limit: Limit::Duration(Duration::from_secs(2)),
        };
        assert_eq!(schedule.count(), 600);
        let last = schedule.arrivals().last().expect("arrivals");
        assert!(last < Duration::from_secs(2), "{last:?}");
        assert!(last > Duration::from_millis(1990), "{last:?}");
    }

    #[test]
    fn a_fractional_rate_still_spaces_requests_evenly() {
        let schedule = Schedule {
            rate: 0.5,
            limit: Limit::Duration(Duration::from_secs(5)),
        };
        let due: Vec<Duration> = schedule.arrivals().collect();
        assert_eq!(
            due,
            [0, 2, 4].map(Duration::from_secs),
            "due at 0, 2 and 4 s; 6 s is past the end"
        );
    }
}
