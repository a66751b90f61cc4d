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

/// The URL of `service`'s database on the Postgres server `server` names (a `DATABASE_URL` of
/// `dozen up`): `<its database>_<service>`, as `dozen up` names them.
pub fn service_database_url(server: &str, service: &str) -> String {
    let options = PgConnectOptions::from_str(server).expect("a Postgres URL");
    let name = format!("{}_{service}", options.get_database().unwrap_or("dozen"));
    options.database(&name).to_url_lossy().to_string()
}

fn admin_options() -> PgConnectOptions {
    PgConnectOptions::from_str(&postgres_admin_url()).expect("TEST_POSTGRES_URL is a Postgres URL")
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Some(name) = self.postgres_name.take() {
            drop_databases(Doomed::Named(name));
        }
    }
}

/// A name prefix on the test Postgres server for a whole platform, whose services each make
/// their own database `<prefix>_<service>` (`dozen up` with a Postgres `DATABASE_URL`). Every
/// such database is dropped when this goes out of scope, whether the test passed or not.
#[derive(Debug)]
pub struct DatabasePrefix {
    /// The prefix.
    pub prefix: String,
    /// The server URL naming the prefix as its database, for `DATABASE_URL`.
    pub url: String,
}

impl DatabasePrefix {
    /// A new, unique prefix starting with `purpose`.
    pub fn new(purpose: &str) -> Self {
        let prefix = format!("{purpose}_{}", uuid::Uuid::new_v4().simple());
        let url = admin_options().database(&prefix).to_url_lossy().to_string();
        Self { prefix, url }
    }

    /// The URL of `service`'s database under the prefix.
    pub fn url_of(&self, service: &str) -> String {
        service_database_url(&self.url, service)
    }

    /// The names of the databases made under the prefix so far, sorted.
    pub async fn databases(&self) -> Vec<String> {
        let mut connection = admin_options().connect().await.expect("Postgres");
        let names = databases_under(&mut connection, &self.prefix)
            .await
            .expect("list databases");
        connection.close().await.ok();
        names
    }
}

impl Drop for DatabasePrefix {
    fn drop(&mut self) {
        drop_databases(Doomed::Prefixed(self.prefix.clone()));
    }
}

async fn databases_under(
    connection: &mut sqlx::PgConnection,
    prefix: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let names: Vec<(String,)> =
        sqlx::query_as("SELECT datname FROM pg_database WHERE starts_with(datname, $1) ORDER BY datname")
            .bind(format!("{prefix}_"))
            .fetch_all(connection)
            .await?;
    Ok(names.into_iter().map(|(name,)| name).collect())
}

/// Which databases to drop.
enum Doomed {
    /// This one.
    Named(String),
    /// Every `<prefix>_…`.
    Prefixed(String),
}

/// Drop databases. Drop runs outside any async context we could borrow, so this uses a
/// short-lived runtime on a thread of its own.
fn drop_databases(doomed: Doomed) {
    let dropped = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        runtime.block_on(async {
            let mut connection = admin_options().connect().await.ok()?;
            let names = match doomed {
                Doomed::Named(name) => vec![name],
                Doomed::Prefixed(prefix) => databases_under(&mut connection, &prefix).await.ok()?,
            };
            for name in names {
                // Names are made by the tests themselves: letters, digits and underscores.
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut connection)
                .await
                .ok()?;
            }
            connection.close().await.ok()
        })
    })
    .join();
    if !matches!(dropped, Ok(Some(()))) {
        eprintln!("warning: could not drop a test database");
    }
}
