//! Throwaway databases for tests.

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

/// Where tests create their Postgres databases: a role allowed to `CREATE DATABASE`.
/// `TEST_POSTGRES_URL` overrides the local default.
pub fn postgres_admin_url() -> String {
    std::env::var("TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The two database backends every service supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file.
    Sqlite,
    /// A Postgres server.
    Postgres,
}

/// A database that exists for one test.
#[derive(Debug)]
pub struct TestDatabase {
    /// Its `DATABASE_URL`.
    pub url: String,
    /// Kept so the SQLite file's folder lives as long as the database.
    _folder: Option<tempfile::TempDir>,
    /// For Postgres: the database's name, dropped on drop.
    postgres_name: Option<String>,
}

impl TestDatabase {
    /// A new, empty database on `backend`.
    pub async fn create(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let folder = tempfile::tempdir().expect("temporary folder");
                let url = format!("sqlite://{}", folder.path().join("test.db").display());
                Self {
                    url,
                    _folder: Some(folder),
                    postgres_name: None,
                }
            }
            Backend::Postgres => {
                let name = format!("dozen_test_{}", uuid::Uuid::new_v4().simple());
                let admin = admin_options();
                let mut connection = admin.connect().await.unwrap_or_else(|e| {
                    panic!(
                        "cannot reach Postgres at {} (start it with scripts/test): {e}",
                        postgres_admin_url()
                    )
                });
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut connection)
                    .await
                    .expect("create test database");
                connection.close().await.ok();
                let url = admin.database(&name).to_url_lossy().to_string();
                Self {
                    url,
                    _folder: None,
                    postgres_name: Some(name),
                }
            }
        }
    }
}

fn admin_options() -> PgConnectOptions {
    PgConnectOptions::from_str(&postgres_admin_url()).expect("TEST_POSTGRES_URL is a Postgres URL")
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some(name) = self.postgres_name.take() else {
            return;
        };
        // Drop runs outside any async context we could borrow: use a short-lived runtime on
        // its own thread.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut connection = admin_options().connect().await.ok()?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut connection)
                .await
                .ok()?;
                connection.close().await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("warning: could not drop a test database");
        }
    }
}
