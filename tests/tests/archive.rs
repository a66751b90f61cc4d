//! The `archive` admin process moves rows past retention out of a service's database into
//! object storage (a folder, or S3) as gzip-compressed JSON lines, one object per table per
//! run, and deletes them only once the object reads back intact. A run stopped between upload
//! and delete is finished by the next, which neither loses nor duplicates a row; `--dry-run`
//! counts and changes nothing; bad settings are refused in one line.

#![cfg(feature = "sns-sqs")]

use std::collections::BTreeMap;
use std::io::Read as _;

use dozen_tests::platform::{Platform, PostgresAndNats};
use dozen_tests::process::{Finished, run_to_exit};
use dozen_tests::public_api::PublicApi;
use dozen_tests::sns_sqs::TestBucket;
use serde_json::Value;
use sqlx::{Connection as _, PgConnection, SqliteConnection};

/// The verification tables whose old rows this test makes: its mail, the events it sent
/// (`user.email_verified`) and the events it handled (`user.signed_up`).
const TABLES: [&str; 3] = ["mails", "outbox", "inbox"];

/// Where a test's archive goes.
enum Store {
    Folder(tempfile::TempDir),
    Bucket(TestBucket),
}

impl Store {
    fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::Folder(folder) => vec![("ARCHIVE_URL", format!("file://{}", folder.path().display()))],
            Self::Bucket(bucket) => {
                let mut env = vec![("ARCHIVE_URL", bucket.archive_url("nightly"))];
                env.extend(bucket.env().map(|(name, value)| (name, value.to_owned())));
                env
            }
        }
    }

    /// The rows of every object of `table`, one list per object, by object name.
    async fn objects(&self, table: &str) -> Vec<(String, Vec<Value>)> {
        let folder = format!("verification/{table}/");
        let objects: Vec<(String, Vec<u8>)> = match self {
            Self::Folder(root) => {
                let mut objects = Vec::new();
                if let Ok(entries) = std::fs::read_dir(root.path().join(&folder)) {
                    for entry in entries {
                        let path = entry.expect("an entry").path();
                        let name = path.file_name().expect("a name").to_string_lossy().into_owned();
                        objects.push((name, std::fs::read(&path).expect("an object")));
                    }
                }
                objects
            }
            Self::Bucket(bucket) => bucket
                .objects(&format!("nightly/{folder}"))
                .await
                .into_iter()
                .map(|(key, bytes)| (key.rsplit('/').next().unwrap_or_default().to_owned(), bytes))
                .collect(),
        };
        let mut decoded: Vec<(String, Vec<Value>)> = objects
            .into_iter()
            .map(|(name, bytes)| {
                assert!(name.ends_with(".jsonl.gz"), "{name}");
                let mut text = String::new();
                flate2::read::GzDecoder::new(&bytes[..])
                    .read_to_string(&mut text)
                    .expect("gzip");
                let rows = text
                    .lines()
                    .map(|line| serde_json::from_str(line).expect("a JSON line"))
                    .collect();
                (name, rows)
            })
            .collect();
        decoded.sort_by(|a, b| a.0.cmp(&b.0));
        decoded
    }
}

/// How a test reaches verification's database, to count rows and to make deletes fail.
struct Database {
    url: String,
    postgres: bool,
}

impl Database {
    async fn count(&self, table: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        if self.postgres {
            let mut connection = PgConnection::connect(&self.url).await.expect("Postgres");
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(&mut connection)
                .await
                .expect("count rows")
        } else {
            let mut connection = SqliteConnection::connect(&self.url).await.expect("SQLite");
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(&mut connection)
                .await
                .expect("count rows")
        }
    }

    async fn counts(&self) -> BTreeMap<&'static str, i64> {
        let mut counts = BTreeMap::new();
        for table in TABLES {
            counts.insert(table, self.count(table).await);
        }
        counts
    }

    /// Make every delete from `mails` fail, as a crash between upload and delete would leave it.
    async fn refuse_deletes(&self) {
        if self.postgres {
            self.execute("CREATE FUNCTION refuse_delete() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'deletes refused by the test'; END $$").await;
            self.execute("CREATE TRIGGER refuse_delete BEFORE DELETE ON mails FOR EACH ROW EXECUTE FUNCTION refuse_delete()").await;
        } else {
            self.execute("CREATE TRIGGER refuse_delete BEFORE DELETE ON mails BEGIN SELECT RAISE(ABORT, 'deletes refused by the test'); END").await;
        }
    }

    async fn allow_deletes(&self) {
        if self.postgres {
            self.execute("DROP TRIGGER refuse_delete ON mails").await;
        } else {
            self.execute("DROP TRIGGER refuse_delete").await;
        }
    }

    async fn execute(&self, statement: &'static str) {
        let done = if self.postgres {
            let mut connection = PgConnection::connect(&self.url).await.expect("Postgres");
            sqlx::raw_sql(statement).execute(&mut connection).await.map(drop)
        } else {
            let mut connection = SqliteConnection::connect(&self.url).await.expect("SQLite");
            sqlx::raw_sql(statement).execute(&mut connection).await.map(drop)
        };
        done.unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
}

async fn archive(database: &Database, store: &Store, args: &[&str]) -> Finished {
    let mut env: Vec<(&str, String)> = store.env();
    env.push(("DATABASE_URL", database.url.clone()));
    let env: Vec<(&str, &str)> = env.iter().map(|(name, value)| (*name, value.as_str())).collect();
    let mut command = vec!["archive"];
    command.extend_from_slice(args);
    run_to_exit("dozen-verification", &command, &env).await
}

/// The per-table lines a run printed, by table.
fn reports(run: &Finished) -> BTreeMap<String, Value> {
    run.stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line.get("table").is_some() && line.get("level").is_none())
        .map(|line| (line["table"].as_str().expect("a table").to_owned(), line))
        .collect()
}

/// Sign up and verify one person, so that verification has sent mail, sent an event and
/// handled one; then archive it all through a run that fails after uploading, and its rerun.
async fn archive_after_a_failed_delete(platform: &Platform, database: Database, store: Store) {
    let api = PublicApi::of(platform);
    api.sign_up("archive-1", "ada@example.com", "Ada", &["chess"])
        .await;
    api.verify_and_log_in("ada@example.com").await;
    let before = database.counts().await;
    assert!(
        before.values().all(|&count| count > 0),
        "rows to archive: {before:?}"
    );

    // A dry run counts what would move and changes nothing.
    let dry = archive(&database, &store, &["--dry-run", "--older-than", "0s"]).await;
    assert!(dry.status.success(), "{dry:?}");
    let dry_reports = reports(&dry);
    for table in TABLES {
        assert_eq!(dry_reports[table]["rows"], before[table], "{table}: {dry:?}");
        assert_eq!(dry_reports[table]["dry_run"], true);
    }
    assert_eq!(database.counts().await, before);
    assert!(
        store.objects("mails").await.is_empty(),
        "a dry run writes nothing"
    );

    // The mail is uploaded, but deleting it fails: the run stops, the rows stay.
    database.refuse_deletes().await;
    let failed = archive(&database, &store, &["--older-than", "0s"]).await;
    assert!(!failed.status.success(), "{failed:?}");
    assert!(
        failed.stdout.contains("deletes refused by the test"),
        "{failed:?}"
    );
    assert_eq!(database.counts().await, before);
    let uploaded = store.objects("mails").await;
    assert_eq!(uploaded.len(), 1, "{uploaded:?}");
    assert_eq!(uploaded[0].1.len() as i64, before["mails"]);

    // The rerun deletes what the first run uploaded, uploading nothing twice.
    database.allow_deletes().await;
    let rerun = archive(&database, &store, &["--older-than", "0s"]).await;
    assert!(rerun.status.success(), "{rerun:?}");
    let rerun_reports = reports(&rerun);
    assert_eq!(rerun_reports["mails"]["resumed"], before["mails"], "{rerun:?}");
    assert_eq!(rerun_reports["mails"]["rows"], 0, "{rerun:?}");
    for table in TABLES {
        assert_eq!(database.count(table).await, 0, "{table} is empty");
        let objects = store.objects(table).await;
        assert_eq!(objects.len(), 1, "one object for {table}: {objects:?}");
        assert_eq!(
            objects[0].1.len() as i64,
            before[table],
            "{table}'s rows, once each"
        );
    }
    // Each line is a row, column by column.
    let mail = &store.objects("mails").await[0].1[0];
    assert_eq!(mail["recipient"], "ada@example.com", "{mail}");
    assert!(mail["sent_at"].is_i64(), "{mail}");

    // Nothing left to move: another run writes no object.
    let again = archive(&database, &store, &["--older-than", "0s"]).await;
    assert!(again.status.success(), "{again:?}");
    for table in TABLES {
        assert_eq!(store.objects(table).await.len(), 1, "{table}");
    }
}

#[tokio::test]
async fn a_rerun_finishes_an_interrupted_archive_to_a_folder_on_sqlite() {
    let platform = Platform::start(&[]).await;
    let database = Database {
        url: format!(
            "sqlite://{}",
            platform.data_dir().join("verification.db").display()
        ),
        postgres: false,
    };
    let store = Store::Folder(tempfile::tempdir().expect("an archive folder"));
    archive_after_a_failed_delete(&platform, database, store).await;
    platform.stop().await;
}

#[tokio::test]
async fn a_rerun_finishes_an_interrupted_archive_to_s3_on_postgres() {
    let backing = PostgresAndNats::new("archive");
    let platform = Platform::start(&backing.env()).await;
    let database = Database {
        url: backing.databases.url_of("verification"),
        postgres: true,
    };
    let store = Store::Bucket(TestBucket::new("archive").await);
    archive_after_a_failed_delete(&platform, database, store).await;
    platform.stop().await;
}

#[tokio::test]
async fn bad_archive_settings_are_refused_in_one_line() {
    let folder = tempfile::tempdir().expect("a folder");
    let database = format!("sqlite://{}", folder.path().join("verification.db").display());
    let migrated = run_to_exit("dozen-verification", &["migrate"], &[("DATABASE_URL", &database)]).await;
    assert!(migrated.status.success(), "{migrated:?}");
    for (env, args, naming) in [
        (Some("ftp://example.com/archive"), &["archive"][..], "ARCHIVE_URL"),
        (Some("s3://No_Such_Bucket"), &["archive"][..], "ARCHIVE_URL"),
        (
            Some("file:///tmp/x"),
            &["archive", "--older-than", "a while"][..],
            "--older-than",
        ),
    ] {
        let mut vars = vec![("DATABASE_URL", database.as_str())];
        vars.extend(env.map(|url| ("ARCHIVE_URL", url)));
        let refused = run_to_exit("dozen-verification", args, &vars).await;
        assert_eq!(refused.status.code(), Some(2), "{refused:?}");
        let lines: Vec<&str> = refused.stderr.lines().filter(|line| !line.is_empty()).collect();
        assert!(lines[0].contains(naming), "{refused:?}");
    }
    // Without ARCHIVE_URL only a dry run goes ahead.
    let unset = run_to_exit("dozen-verification", &["archive"], &[("DATABASE_URL", &database)]).await;
    assert!(!unset.status.success(), "{unset:?}");
    assert!(unset.stdout.contains("ARCHIVE_URL is not set"), "{unset:?}");
    let dry = run_to_exit(
        "dozen-verification",
        &["archive", "--dry-run"],
        &[("DATABASE_URL", &database)],
    )
    .await;
    assert!(dry.status.success(), "{dry:?}");
    assert_eq!(reports(&dry).len(), 6, "every table counted: {dry:?}");
}
