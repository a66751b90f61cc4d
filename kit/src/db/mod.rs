//! Each service's own database, attached by URL (factor IV): SQLite embedded by default,
//! Postgres in production. A service writes through a [`Tx`], and runs each statement on either
//! backend with [`with_conn!`](crate::with_conn); nothing here knows any service's tables.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

mod tx;
mod write_queue;
pub use tx::{Tx, TxConn};
pub use write_queue::{WriteTurn, write_turn};

/// A validated `DATABASE_URL`.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// `sqlite://<path>`: an embedded database file, created on first use.
    Sqlite(String),
    /// `postgres://…` or `postgresql://…`.
    Postgres(String),
}

impl DatabaseUrl {
    /// Accept `sqlite:` and `postgres:` URLs; anything else is an error naming the schemes.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(text).map_err(|e| e.to_string())?;
            Ok(Self::Sqlite(text.to_owned()))
        } else if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            PgConnectOptions::from_str(text).map_err(|e| format!("not a valid Postgres URL: {e}"))?;
            Ok(Self::Postgres(text.to_owned()))
        } else {
            Err("expected a sqlite:// or postgres:// URL".to_owned())
        }
    }

    /// The embedded default for a service: `sqlite://data/<service>.db`.
    pub fn default_for(service: &str) -> Self {
        Self::Sqlite(format!("sqlite://data/{service}.db"))
    }

    /// The file of a SQLite database.
    pub fn sqlite_file(&self) -> Option<std::path::PathBuf> {
        match self {
            Self::Sqlite(text) => SqliteConnectOptions::from_str(text)
                .ok()
                .map(|options| options.get_filename().to_owned()),
            Self::Postgres(_) => None,
        }
    }

    /// The backend's name, for logs (the URL itself may hold a password).
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }
}

impl std::fmt::Debug for DatabaseUrl {
    // The URL may carry a password: show only the backend.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({})", self.backend())
    }
}

/// One set of migrations, written once per backend (their SQL dialects differ). A service's
/// database may hold several sets (its own tables, the bus's outbox and inbox), each tracked
/// in its own table, named by the migrators' `table_name`.
#[derive(Debug)]
pub struct Migrations {
    /// Applied on SQLite.
    pub sqlite: Migrator,
    /// Applied on Postgres.
    pub postgres: Migrator,
}

/// Why a service refuses to start against its database.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The schema has never been created.
    #[error("the database has no schema yet: run the `migrate` admin process first")]
    Missing,
    /// Some migrations this release knows have not been applied.
    #[error(
        "the database schema is behind this release ({pending} migration(s) pending): run the `migrate` admin process first"
    )]
    Behind {
        /// How many are missing.
        pending: usize,
    },
    /// A migration was applied with a different text than this release carries.
    #[error("migration {version} in the database differs from this release's copy")]
    Modified {
        /// Which one.
        version: i64,
    },
    /// The database could not be read.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A connection pool to the service's own database.
#[derive(Debug, Clone)]
pub enum Db {
    /// Embedded SQLite.
    Sqlite(SqlitePool),
    /// Postgres.
    Postgres(PgPool),
}

impl Db {
    /// Open a pool. A SQLite file (and its folder) is created when missing, in WAL mode with
    /// `synchronous=FULL`, so a committed transaction survives a power cut.
    pub async fn connect(url: &DatabaseUrl, max_connections: u32) -> Result<Self, sqlx::Error> {
        Self::open(url, max_connections, true).await
    }

    /// Open a pool on a database that must exist already: a missing SQLite file is an error
    /// rather than created, so that a process that cannot run without a schema (serving, an
    /// admin task) leaves no empty database behind when it stops.
    pub async fn connect_existing(url: &DatabaseUrl, max_connections: u32) -> Result<Self, sqlx::Error> {
        Self::open(url, max_connections, false).await
    }

    async fn open(url: &DatabaseUrl, max_connections: u32, create: bool) -> Result<Self, sqlx::Error> {
        match url {
            DatabaseUrl::Sqlite(text) => {
                let options = SqliteConnectOptions::from_str(text)?
                    .create_if_missing(create)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .foreign_keys(true)
                    .busy_timeout(Duration::from_secs(5));
                if let Some(folder) = options.get_filename().parent()
                    && create
                    && !folder.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(folder)?;
                }
                let pool = SqlitePoolOptions::new()
                    .max_connections(max_connections)
                    .min_connections(0)
                    // A local file does not drop connections: the liveness ping sqlx sends
                    // before handing one out would only add a round trip to every transaction.
                    .test_before_acquire(false)
                    // A COMMIT that fails (SQLITE_FULL: a full disk) leaves sqlx counting the
                    // connection as inside a transaction SQLite already rolled back, so every
                    // later BEGIN on it fails: such a connection is closed, not reused.
                    .before_acquire(|connection, _| {
                        Box::pin(std::future::ready(Ok(!sqlx::Connection::is_in_transaction(
                            connection,
                        ))))
                    })
                    .acquire_timeout(Duration::from_secs(5))
                    .connect_with(options)
                    .await?;
                Ok(Self::Sqlite(pool))
            }
            DatabaseUrl::Postgres(text) => {
                let pool = PgPoolOptions::new()
                    .max_connections(max_connections)
                    .min_connections(0)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect_with(PgConnectOptions::from_str(text)?)
                    .await?;
                Ok(Self::Postgres(pool))
            }
        }
    }

    fn migrator<'m>(&self, migrations: &'m Migrations) -> &'m Migrator {
        match self {
            Self::Sqlite(_) => &migrations.sqlite,
            Self::Postgres(_) => &migrations.postgres,
        }
    }

    /// Apply every pending migration of each set (the `migrate` admin process).
    pub async fn migrate(&self, sets: &[&Migrations]) -> Result<(), sqlx::migrate::MigrateError> {
        for migrations in sets {
            let migrator = self.migrator(migrations);
            match self {
                Self::Sqlite(pool) => migrator.run(pool).await?,
                Self::Postgres(pool) => migrator.run(pool).await?,
            }
        }
        Ok(())
    }

    /// Check at start-up that every migration this release carries has been applied, unchanged.
    /// A database ahead of the release is accepted: during a rolling deploy the old release
    /// keeps running on the new, backwards-compatible schema.
    ///
    /// Every query runs on one connection: the pool hands a released connection back only
    /// after a liveness round trip, so back-to-back queries on the pool would each open
    /// another connection (a thread and a page cache apiece) at start-up.
    pub async fn check_schema(&self, sets: &[&Migrations]) -> Result<(), SchemaError> {
        match self {
            Self::Sqlite(pool) => {
                let mut conn = pool.acquire().await?;
                for migrations in sets {
                    let table = migrations.sqlite.table_name.as_ref();
                    let exists: Option<(String,)> =
                        sqlx::query_as("SELECT name FROM sqlite_master WHERE type = 'table' AND name = $1")
                            .bind(table)
                            .fetch_optional(&mut *conn)
                            .await?;
                    if exists.is_none() {
                        return Err(SchemaError::Missing);
                    }
                    let applied = sqlx::query_as(applied_query(table)).fetch_all(&mut *conn).await?;
                    compare(&migrations.sqlite, &applied)?;
                }
            }
            Self::Postgres(pool) => {
                let mut conn = pool.acquire().await?;
                for migrations in sets {
                    let table = migrations.postgres.table_name.as_ref();
                    let exists: (bool,) = sqlx::query_as("SELECT to_regclass($1) IS NOT NULL")
                        .bind(table)
                        .fetch_one(&mut *conn)
                        .await?;
                    if !exists.0 {
                        return Err(SchemaError::Missing);
                    }
                    let applied = sqlx::query_as(applied_query(table)).fetch_all(&mut *conn).await?;
                    compare(&migrations.postgres, &applied)?;
                }
            }
        }
        Ok(())
    }

    /// A cheap round trip, for `/readyz`.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        match self {
            Self::Sqlite(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop),
            Self::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop),
        }
    }

    /// Close every connection (on shutdown).
    pub async fn close(&self) {
        match self {
            Self::Sqlite(pool) => pool.close().await,
            Self::Postgres(pool) => pool.close().await,
        }
    }
}

/// The applied migrations of one set, from its tracking table.
fn applied_query(table: &str) -> sqlx::AssertSqlSafe<String> {
    // The table name is a constant of the release, never input.
    sqlx::AssertSqlSafe(format!("SELECT version, checksum FROM {table} WHERE success"))
}

/// Compare the migrations applied (version, checksum) with those `migrator` carries.
fn compare(migrator: &Migrator, applied: &[(i64, Vec<u8>)]) -> Result<(), SchemaError> {
    let mut pending = 0;
    for migration in migrator.iter().filter(|m| m.migration_type.is_up_migration()) {
        match applied.iter().find(|(version, _)| *version == migration.version) {
            None => pending += 1,
            Some((_, checksum)) if checksum.as_slice() != &*migration.checksum => {
                return Err(SchemaError::Modified {
                    version: migration.version,
                });
            }
            Some(_) => {}
        }
    }
    if pending > 0 {
        Err(SchemaError::Behind { pending })
    } else {
        Ok(())
    }
}

/// Run the same query on whichever pool a [`Db`] holds, outside any transaction (reads):
/// `with_pool!(db, pool => sqlx::query_as("…").bind(id).fetch_optional(pool).await)`.
#[macro_export]
macro_rules! with_pool {
    ($db:expr, $name:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite($name) => $body,
            $crate::db::Db::Postgres($name) => $body,
        }
    };
}

/// The calling crate's migrations, from its `migrations/sqlite` and `migrations/postgres`
/// folders (embedded at compile time):
/// `pub static MIGRATIONS: Migrations = dozen_kit::migrations!();`
#[macro_export]
macro_rules! migrations {
    () => {
        $crate::db::Migrations {
            sqlite: ::sqlx::migrate!("migrations/sqlite"),
            postgres: ::sqlx::migrate!("migrations/postgres"),
        }
    };
}
