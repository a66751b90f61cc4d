//! The `archive` admin process: rows past retention leave a service's database for object
//! storage, as one gzip-compressed JSON-lines object per table per run, and are deleted only
//! once the object has been read back and found identical to what was written.
//!
//! What "past retention" means is each table's own predicate on one cut-off (milliseconds since
//! the epoch), given by the crate that owns the table ([`ArchiveTable`]). Every predicate
//! compares a time that is only ever set to "now" (sent, received, used, expired) with the
//! cut-off, which lies in the past: once a row is past a cut-off it stays so, and no new row can
//! join it. That makes a run safe to repeat after a crash between upload and delete: an object
//! is named by its table and cut-off (`<service>/<table>/<cut-off>.jsonl.gz`), and a run first
//! looks at the table's newest object; if rows past its cut-off remain, they are exactly the
//! ones it holds (or fewer, when some went since), so they are deleted and nothing is uploaded
//! twice. Two runs must not overlap (the schedules forbid it).
//!
//! The retention sweeps that delete old rows while serving (the bus's, verification's mail and
//! tokens, passwords' sessions) leave them alone when `ARCHIVE_URL` is set: the archive then
//! is what removes them.

use std::io::{BufRead as _, Read as _, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use chrono::{DateTime, NaiveDateTime, Utc};
use clap::Args;
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use futures_util::TryStreamExt as _;
use sha2::{Digest as _, Sha256};
use sqlx::{Column as _, Row as _, TypeInfo as _};

use crate::db::{Db, Tx};
use crate::with_conn;

/// Where archived rows go (`ARCHIVE_URL`).
// No help heading of its own: it is listed with the settings it is flattened into, and the
// settings after those keep theirs.
#[derive(Debug, Clone, Args)]
pub struct ArchiveSettings {
    /// Where the `archive` admin process writes rows past retention: `file://<folder>`, or
    /// `s3://<bucket>[/<prefix>]` (credentials and region from the usual AWS settings; add
    /// `?endpoint=<URL>` for an S3-compatible store). When set, the retention sweeps leave old
    /// rows for the archive instead of deleting them.
    #[arg(long, env = "ARCHIVE_URL", value_parser = ArchiveUrl::parse)]
    pub archive_url: Option<ArchiveUrl>,
}

impl ArchiveSettings {
    /// Whether old rows are archived, and so must not be swept away unarchived.
    pub fn archiving(&self) -> bool {
        self.archive_url.is_some()
    }
}

/// A validated `ARCHIVE_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveUrl {
    /// `file://<folder>`: objects are files under the folder.
    Folder(PathBuf),
    /// `s3://<bucket>[/<prefix>][?endpoint=<URL>]`.
    S3 {
        bucket: String,
        /// Empty, or ends with `/`.
        prefix: String,
        endpoint: Option<String>,
    },
}

impl ArchiveUrl {
    /// Accept `file://<folder>` and `s3://<bucket>[/<prefix>]`; an error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(folder) = text.strip_prefix("file://") {
            if folder.is_empty() {
                return Err("expected a folder after file://".to_owned());
            }
            return Ok(Self::Folder(PathBuf::from(folder)));
        }
        if !text.starts_with("s3://") {
            return Err("expected a file://<folder> or s3://<bucket>[/<prefix>] URL".to_owned());
        }
        let url = url::Url::parse(text).map_err(|e| format!("not a valid s3:// URL ({e})"))?;
        let bucket = url.host_str().unwrap_or_default().to_owned();
        // S3's rules for bucket names.
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
            && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !valid_bucket {
            return Err(
                "expected a bucket name of 3 to 63 lowercase letters, digits, '-' or '.' after s3://"
                    .to_owned(),
            );
        }
        if !url.username().is_empty() || url.password().is_some() || url.port().is_some() {
            return Err(
                "expected no credentials or port in an s3:// URL (credentials come from the AWS settings)"
                    .to_owned(),
            );
        }
        let mut endpoint = None;
        for (key, value) in url.query_pairs() {
            match &*key {
                "endpoint" if value.starts_with("http://") || value.starts_with("https://") => {
                    endpoint = Some(value.into_owned());
                }
                "endpoint" => return Err("expected an http:// or https:// endpoint".to_owned()),
                other => return Err(format!("unknown option '{other}' (only endpoint=<URL>)")),
            }
        }
        let mut prefix = url.path().trim_matches('/').to_owned();
        if !prefix.is_empty() {
            prefix.push('/');
        }
        if cfg!(not(feature = "s3")) {
            return Err("this build has no S3 support (build with the sns-sqs feature)".to_owned());
        }
        Ok(Self::S3 {
            bucket,
            prefix,
            endpoint,
        })
    }
}

/// A table whose old rows are archived.
#[derive(Debug, Clone, Copy)]
pub struct ArchiveTable {
    /// The table's name.
    pub table: &'static str,
    /// SQL that holds for a row past retention, with `$1` the cut-off in milliseconds since
    /// the epoch; it must compare only times that are set to "now" when they are set.
    pub past: &'static str,
}

/// What a run did to one table (or would do, on a dry run): one JSON line on stdout.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TableReport {
    pub table: &'static str,
    /// Rows written to the new object and deleted (on a dry run: that would be).
    pub rows: u64,
    /// The new object, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// Rows of an interrupted earlier run deleted now that its object was found intact.
    pub resumed: u64,
    pub dry_run: bool,
}

/// Archive `tables` of service `service` in `db`: every row past retention `older_than` ago
/// goes to `url`, then is deleted.
pub async fn run(
    db: &Db,
    url: &ArchiveUrl,
    service: &str,
    tables: &[ArchiveTable],
    older_than: Duration,
) -> anyhow::Result<Vec<TableReport>> {
    let cutoff = cutoff(older_than)?;
    let store = ObjectStore::connect(url).await?;
    let mut reports = Vec::new();
    for table in tables {
        let folder = format!("{service}/{}/", table.table);
        let resumed = resume(db, &store, &folder, table).await?;
        let (rows, object) = archive_table(db, &store, &folder, table, cutoff).await?;
        reports.push(TableReport {
            table: table.table,
            rows,
            object,
            resumed,
            dry_run: false,
        });
    }
    Ok(reports)
}

/// What [`run`] would move: the rows of each table past retention `older_than` ago.
pub async fn dry_run(
    db: &Db,
    tables: &[ArchiveTable],
    older_than: Duration,
) -> anyhow::Result<Vec<TableReport>> {
    let cutoff = cutoff(older_than)?;
    let mut reports = Vec::new();
    for table in tables {
        reports.push(TableReport {
            table: table.table,
            rows: count(db, table, cutoff).await?,
            object: None,
            resumed: 0,
            dry_run: true,
        });
    }
    Ok(reports)
}

/// Now less `older_than`, in whole milliseconds (as the tables keep times), so that the cut-off
/// an object is named by is the one its rows were chosen by.
fn cutoff(older_than: Duration) -> anyhow::Result<DateTime<Utc>> {
    let older_than = chrono::Duration::from_std(older_than).context("--older-than is too long")?;
    let cutoff = Utc::now()
        .checked_sub_signed(older_than)
        .context("--older-than is too long")?;
    DateTime::from_timestamp_millis(cutoff.timestamp_millis()).context("--older-than is too long")
}

const NAME_SUFFIX: &str = ".jsonl.gz";
const NAME_TIME: &str = "%Y%m%dT%H%M%S%.3fZ";

fn object_name(folder: &str, cutoff: DateTime<Utc>) -> String {
    format!("{folder}{}{NAME_SUFFIX}", cutoff.format(NAME_TIME))
}

fn cutoff_of(folder: &str, name: &str) -> Option<DateTime<Utc>> {
    let time = name.strip_prefix(folder)?.strip_suffix(NAME_SUFFIX)?;
    NaiveDateTime::parse_from_str(time, NAME_TIME)
        .ok()
        .map(|time| time.and_utc())
}

/// Finish the table's newest run if it stopped between upload and delete: the rows past its
/// cut-off that remain are all in its object, so they are deleted. Returns how many.
async fn resume(db: &Db, store: &ObjectStore, folder: &str, table: &ArchiveTable) -> anyhow::Result<u64> {
    let newest = store
        .list(folder)
        .await?
        .into_iter()
        .filter_map(|name| cutoff_of(folder, &name).map(|cutoff| (cutoff, name)))
        .max();
    let Some((cutoff, name)) = newest else {
        return Ok(0);
    };
    let remaining = count(db, table, cutoff).await?;
    if remaining == 0 {
        return Ok(0);
    }
    let object = store
        .get(&name)
        .await?
        .with_context(|| format!("{name} was listed but cannot be read"))?;
    let archived = lines_in(&object).with_context(|| format!("{name} is not a readable archive"))?;
    ensure!(
        remaining <= archived,
        "{} has {remaining} rows past the cut-off of {name}, which holds only {archived}: refusing to delete them",
        table.table
    );
    delete(db, table, cutoff, archived).await?;
    tracing::info!(
        table = table.table,
        object = name,
        rows = remaining,
        "finished an interrupted archive run"
    );
    Ok(remaining)
}

/// Write the table's rows past `cutoff` to one object, read it back, then delete them.
async fn archive_table(
    db: &Db,
    store: &ObjectStore,
    folder: &str,
    table: &ArchiveTable,
    cutoff: DateTime<Utc>,
) -> anyhow::Result<(u64, Option<String>)> {
    let (rows, object) = encode(db, table, cutoff).await?;
    if rows == 0 {
        return Ok((0, None));
    }
    let name = object_name(folder, cutoff);
    store.put(&name, &object).await?;
    let read_back = store
        .get(&name)
        .await?
        .with_context(|| format!("{name} is missing after upload"))?;
    ensure!(
        read_back.len() == object.len() && Sha256::digest(&read_back) == Sha256::digest(&object),
        "{name} reads back different from what was written: nothing deleted"
    );
    delete(db, table, cutoff, rows).await?;
    tracing::info!(
        table = table.table,
        object = name,
        rows,
        bytes = object.len(),
        "archived"
    );
    Ok((rows, Some(name)))
}

async fn count(db: &Db, table: &ArchiveTable, cutoff: DateTime<Utc>) -> anyhow::Result<u64> {
    let sql = format!("SELECT COUNT(*) FROM {} WHERE {}", table.table, table.past);
    let count: i64 = crate::with_pool!(db, pool => sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(cutoff.timestamp_millis())
        .fetch_one(pool)
        .await)?;
    Ok(u64::try_from(count).unwrap_or_default())
}

/// Delete the rows past `cutoff`, in one transaction that is rolled back if more than
/// `archived` would go (rows the object does not hold).
async fn delete(db: &Db, table: &ArchiveTable, cutoff: DateTime<Utc>, archived: u64) -> anyhow::Result<()> {
    let sql = format!("DELETE FROM {} WHERE {}", table.table, table.past);
    let mut tx = Tx::begin(db).await?;
    let deleted = with_conn!(tx.conn(), conn => sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(cutoff.timestamp_millis())
        .execute(conn)
        .await
        .map(|done| done.rows_affected()))
    .with_context(|| format!("cannot delete the archived rows of {}", table.table))?;
    if deleted > archived {
        tx.rollback().await?;
        bail!(
            "{}: {deleted} rows past the cut-off, but {archived} archived: nothing deleted",
            table.table
        );
    }
    tx.commit().await?;
    Ok(())
}

/// The rows past `cutoff`, as gzip-compressed JSON lines (one object per row, column → value;
/// bytes as lowercase hex), and how many.
async fn encode(db: &Db, table: &ArchiveTable, cutoff: DateTime<Utc>) -> anyhow::Result<(u64, Vec<u8>)> {
    let sql = format!("SELECT * FROM {} WHERE {} ORDER BY 1", table.table, table.past);
    let mut gzip = GzEncoder::new(Vec::new(), Compression::default());
    let mut rows = 0u64;
    match db {
        Db::Sqlite(pool) => {
            let mut stream = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(cutoff.timestamp_millis())
                .fetch(pool);
            while let Some(row) = stream.try_next().await? {
                write_line(&mut gzip, sqlite_row(&row)?)?;
                rows += 1;
            }
        }
        Db::Postgres(pool) => {
            let mut stream = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(cutoff.timestamp_millis())
                .fetch(pool);
            while let Some(row) = stream.try_next().await? {
                write_line(&mut gzip, postgres_row(&row)?)?;
                rows += 1;
            }
        }
    }
    Ok((rows, gzip.finish()?))
}

type JsonRow = serde_json::Map<String, serde_json::Value>;

fn write_line(out: &mut impl std::io::Write, row: JsonRow) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, &row)?;
    out.write_all(b"\n")?;
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn sqlite_row(row: &sqlx::sqlite::SqliteRow) -> anyhow::Result<JsonRow> {
    use serde_json::Value;
    let mut out = JsonRow::new();
    for (i, column) in row.columns().iter().enumerate() {
        // SQLite types values, not columns: take the first reading that fits.
        let value = if let Ok(value) = row.try_get::<Option<i64>, _>(i) {
            value.map_or(Value::Null, Value::from)
        } else if let Ok(value) = row.try_get::<Option<f64>, _>(i) {
            value.map_or(Value::Null, Value::from)
        } else if let Ok(value) = row.try_get::<Option<String>, _>(i) {
            value.map_or(Value::Null, Value::from)
        } else {
            let value: Option<Vec<u8>> = row
                .try_get(i)
                .with_context(|| format!("cannot read column {}", column.name()))?;
            value.map_or(Value::Null, |bytes| Value::from(hex(&bytes)))
        };
        out.insert(column.name().to_owned(), value);
    }
    Ok(out)
}

fn postgres_row(row: &sqlx::postgres::PgRow) -> anyhow::Result<JsonRow> {
    use serde_json::Value;
    fn get<'r, T: sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>>(
        row: &'r sqlx::postgres::PgRow,
        i: usize,
    ) -> anyhow::Result<Option<T>> {
        Ok(row.try_get::<Option<T>, _>(i)?)
    }
    let mut out = JsonRow::new();
    for (i, column) in row.columns().iter().enumerate() {
        let value = match column.type_info().name() {
            "INT8" => get::<i64>(row, i)?.map(Value::from),
            "INT4" => get::<i32>(row, i)?.map(Value::from),
            "INT2" => get::<i16>(row, i)?.map(Value::from),
            "FLOAT8" => get::<f64>(row, i)?.map(Value::from),
            "BOOL" => get::<bool>(row, i)?.map(Value::from),
            "TEXT" | "VARCHAR" => get::<String>(row, i)?.map(Value::from),
            "UUID" => get::<uuid::Uuid>(row, i)?.map(|id| Value::from(id.to_string())),
            "BYTEA" => get::<Vec<u8>>(row, i)?.map(|bytes| Value::from(hex(&bytes))),
            "JSON" | "JSONB" => get::<serde_json::Value>(row, i)?,
            "TIMESTAMPTZ" => get::<DateTime<Utc>>(row, i)?.map(|time| Value::from(time.to_rfc3339())),
            other => bail!("cannot archive column {} of type {other}", column.name()),
        };
        out.insert(column.name().to_owned(), value.unwrap_or(Value::Null));
    }
    Ok(out)
}

/// How many rows an archived object holds; an error if it is not gzip-compressed JSON lines.
fn lines_in(object: &[u8]) -> anyhow::Result<u64> {
    let mut text = Vec::new();
    GzDecoder::new(object).read_to_end(&mut text)?;
    let mut lines = 0;
    for line in text.lines() {
        let _: JsonRow = serde_json::from_str(&line?)?;
        lines += 1;
    }
    Ok(lines)
}

/// Where objects are kept: a folder, or an S3 bucket under a prefix.
#[derive(Debug)]
enum ObjectStore {
    Folder(PathBuf),
    #[cfg(feature = "s3")]
    S3 {
        client: aws_sdk_s3::Client,
        bucket: String,
        prefix: String,
    },
}

impl ObjectStore {
    async fn connect(url: &ArchiveUrl) -> anyhow::Result<Self> {
        match url {
            ArchiveUrl::Folder(folder) => Ok(Self::Folder(folder.clone())),
            #[cfg(feature = "s3")]
            ArchiveUrl::S3 {
                bucket,
                prefix,
                endpoint,
            } => {
                let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
                if let Some(endpoint) = endpoint {
                    loader = loader.endpoint_url(endpoint);
                }
                let config = loader.load().await;
                // An S3-compatible store at an endpoint of its own seldom serves bucket names
                // as host names.
                let config = aws_sdk_s3::config::Builder::from(&config)
                    .force_path_style(endpoint.is_some())
                    .build();
                Ok(Self::S3 {
                    client: aws_sdk_s3::Client::from_conf(config),
                    bucket: bucket.clone(),
                    prefix: prefix.clone(),
                })
            }
            #[cfg(not(feature = "s3"))]
            ArchiveUrl::S3 { .. } => bail!("this build has no S3 support (build with the sns-sqs feature)"),
        }
    }

    /// Store `bytes` as `name`, whole or not at all.
    async fn put(&self, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        match self {
            Self::Folder(root) => {
                let path = root.join(name);
                let parent = path.parent().context("an object's folder")?.to_owned();
                let bytes = bytes.to_vec();
                tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                    std::fs::create_dir_all(&parent)
                        .with_context(|| format!("cannot create {}", parent.display()))?;
                    let mut file = tempfile::NamedTempFile::new_in(&parent)?;
                    file.write_all(&bytes)?;
                    file.as_file().sync_all()?;
                    file.persist(&path)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    std::fs::File::open(&parent)?.sync_all()?;
                    Ok(())
                })
                .await?
            }
            #[cfg(feature = "s3")]
            Self::S3 {
                client,
                bucket,
                prefix,
            } => {
                client
                    .put_object()
                    .bucket(bucket)
                    .key(format!("{prefix}{name}"))
                    .content_type("application/gzip")
                    .body(bytes.to_vec().into())
                    .send()
                    .await
                    .map_err(aws_sdk_s3::Error::from)
                    .with_context(|| format!("cannot upload {name} to s3://{bucket}/{prefix}"))?;
                Ok(())
            }
        }
    }

    /// The object `name`, or `None` when there is none.
    async fn get(&self, name: &str) -> anyhow::Result<Option<Vec<u8>>> {
        match self {
            Self::Folder(root) => match tokio::fs::read(root.join(name)).await {
                Ok(bytes) => Ok(Some(bytes)),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(error) => Err(error).with_context(|| format!("cannot read {name}")),
            },
            #[cfg(feature = "s3")]
            Self::S3 {
                client,
                bucket,
                prefix,
            } => {
                let answer = client
                    .get_object()
                    .bucket(bucket)
                    .key(format!("{prefix}{name}"))
                    .send()
                    .await;
                match answer {
                    Ok(object) => Ok(Some(object.body.collect().await?.into_bytes().to_vec())),
                    Err(error) if error.as_service_error().is_some_and(|e| e.is_no_such_key()) => Ok(None),
                    Err(error) => Err(aws_sdk_s3::Error::from(error))
                        .with_context(|| format!("cannot read {name} from s3://{bucket}/{prefix}")),
                }
            }
        }
    }

    /// The names of the objects directly under `folder` (which ends with `/`).
    async fn list(&self, folder: &str) -> anyhow::Result<Vec<String>> {
        match self {
            Self::Folder(root) => {
                let mut names = Vec::new();
                let mut entries = match tokio::fs::read_dir(root.join(folder)).await {
                    Ok(entries) => entries,
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(names),
                    Err(error) => return Err(error).with_context(|| format!("cannot list {folder}")),
                };
                while let Some(entry) = entries.next_entry().await? {
                    if let Some(name) = entry.file_name().to_str() {
                        names.push(format!("{folder}{name}"));
                    }
                }
                Ok(names)
            }
            #[cfg(feature = "s3")]
            Self::S3 {
                client,
                bucket,
                prefix,
            } => {
                let mut names = Vec::new();
                let mut pages = client
                    .list_objects_v2()
                    .bucket(bucket)
                    .prefix(format!("{prefix}{folder}"))
                    .into_paginator()
                    .send();
                while let Some(page) = pages.next().await {
                    let page = page
                        .map_err(aws_sdk_s3::Error::from)
                        .with_context(|| format!("cannot list s3://{bucket}/{prefix}{folder}"))?;
                    for object in page.contents() {
                        if let Some(name) = object.key().and_then(|key| key.strip_prefix(prefix.as_str())) {
                            names.push(name.to_owned());
                        }
                    }
                }
                Ok(names)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_urls_are_checked() {
        assert_eq!(
            ArchiveUrl::parse("file://archive"),
            Ok(ArchiveUrl::Folder(PathBuf::from("archive")))
        );
        for bad in [
            "file://",
            "archive",
            "http://bucket",
            "s3://",
            "s3://UPPER",
            "s3://ab",
            "s3://key:secret@bucket/prefix",
            "s3://bucket?region=x",
            "s3://bucket?endpoint=ftp://x",
        ] {
            assert!(ArchiveUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_object_name_gives_back_its_cut_off() {
        let cutoff = DateTime::from_timestamp_millis(1_780_000_000_123).expect("a time");
        let name = object_name("users/outbox/", cutoff);
        assert_eq!(name, "users/outbox/20260528T202640.123Z.jsonl.gz");
        assert_eq!(cutoff_of("users/outbox/", &name), Some(cutoff));
        assert_eq!(cutoff_of("users/inbox/", &name), None);
    }
}
