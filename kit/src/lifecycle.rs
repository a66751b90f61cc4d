//! Disposability (factor IX): readiness, the shutdown signal, and the tasks that must finish
//! before the process exits.
//!
//! On SIGTERM or Ctrl-C readiness turns false at once; after `DRAIN_DELAY` the listener closes
//! and every background task is told to stop; in-flight requests and tasks then have
//! `SHUTDOWN_TIMEOUT` to finish.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shared by the server, the readiness probe and every background task of one service.
#[derive(Debug, Clone, Default)]
pub struct Lifecycle {
    /// True from the shutdown signal on: `/readyz` answers 503.
    draining: Arc<AtomicBool>,
    /// Cancelled when the listener must close and background work must stop.
    stop: CancellationToken,
    /// Background tasks that shutdown waits for.
    tasks: TaskTracker,
}

impl Lifecycle {
    /// A lifecycle that is ready and not stopping.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the service is draining (shutdown has begun).
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Turn readiness false; nothing stops yet.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Close the listener and tell background tasks to stop.
    pub fn stop(&self) {
        self.begin_drain();
        self.stop.cancel();
    }

    /// Cancelled when work must stop: select on it in every loop.
    pub fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Run a background task that shutdown waits for. It must return soon after
    /// [`Lifecycle::stopping`] is cancelled.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Wait until every background task has returned.
    pub async fn tasks_finished(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        // Without signal handlers the process can only be killed; wait forever rather than
        // shutting down at once.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutdown requested"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "shutdown requested"),
    }
}
