//! Shared by dozen's black-box tests: throwaway databases on either backend, and service
//! processes started from the built binaries.
//!
//! Every test makes its own database (a temporary SQLite file, or a Postgres database with a
//! unique name, dropped when the test ends), so tests run in parallel and leave nothing behind.

pub mod database;
pub mod fault_proxy;
pub mod nats;
pub mod platform;
pub mod process;
pub mod public_api;
#[cfg(feature = "sns-sqs")]
pub mod sns_sqs;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The repository's root folder.
pub fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_path_buf()
}

/// Poll `check` every 100 ms until it returns `Some`, or fail after a minute saying `what`.
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

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
