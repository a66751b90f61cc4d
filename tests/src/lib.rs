//! Shared by dozen's black-box tests: throwaway databases on either backend, and service
//! processes started from the built binaries.
//!
//! Every test makes its own database (a temporary SQLite file, or a Postgres database with a
//! unique name, dropped when the test ends), so tests run in parallel and leave nothing behind.

pub mod database;
pub mod fault_proxy;
pub mod identity;
pub mod images;
pub mod nats;
pub mod platform;
pub mod private_servers;
pub mod process;
pub mod public_api;
#[cfg(feature = "sns-sqs")]
pub mod sns_sqs;
pub mod steady_load;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The repository's root folder.
pub fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_path_buf()
}

/// Poll `check` every 50 ms until it is done (`true`, or `Some(value)`), and return what it
/// gave; fail saying `what` once `deadline` has passed. The one way tests wait for a
/// condition: never a bare sleep, never a loop without a deadline.
pub async fn eventually<D, F, Fut>(deadline: Duration, what: &str, mut check: F) -> D::Value
where
    D: Done,
    F: FnMut() -> Fut,
    Fut: Future<Output = D>,
{
    let give_up = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check().await.done() {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "gave up after {deadline:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a check of [`eventually`] returns: `bool`, or `Option` of a value to hand back.
pub trait Done {
    /// What `eventually` returns once the check is done.
    type Value;
    /// `Some` once the check is done.
    fn done(self) -> Option<Self::Value>;
}

impl Done for bool {
    type Value = ();
    fn done(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Done for Option<T> {
    type Value = T;
    fn done(self) -> Option<T> {
        self
    }
}

/// The deadline of a wait that ends as soon as its condition holds: generous, for a loaded
/// machine.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Generate one test per database backend from an `async fn(Backend)`: the same suite runs on
/// SQLite and on Postgres.
#[macro_export]
macro_rules! on_both_backends {
    ($test:ident) => {
        mod $test {
            #[tokio::test(flavor = "multi_thread")]
            async fn on_sqlite() {
                super::$test($crate::database::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn on_postgres() {
                super::$test($crate::database::Backend::Postgres).await
            }
        }
    };
}

/// Generate one test per platform from an `async fn(&[(&str, &str)])` taking `dozen up`'s
/// extra settings: the embedded defaults (`on_embedded_defaults`) and Postgres + NATS
/// JetStream (`on_postgres_and_nats`), as production runs.
#[macro_export]
macro_rules! on_both_platforms {
    ($test:ident) => {
        mod $test {
            #[tokio::test(flavor = "multi_thread")]
            async fn on_embedded_defaults() {
                super::$test(&[]).await;
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn on_postgres_and_nats() {
                let backing = $crate::platform::PostgresAndNats::new("platform");
                super::$test(&backing.env()).await;
            }
        }
    };
}
