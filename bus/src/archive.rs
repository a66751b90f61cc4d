//! The `archive` admin process of a service with a bus: its bus tables' old rows (sent outbox
//! rows, inbox entries, replayed dead letters) and the service's own tables past retention go
//! to `ARCHIVE_URL` ([`dozen_kit::archive`] does the moving). A service lists it among its tasks
//! through [`BusTask`](crate::admin::BusTask), or as `Archive(ArchiveArgs)`.

use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use dozen_kit::archive::{self, ArchiveTable};
use dozen_kit::config::parse_duration;
use dozen_kit::db::Db;

use crate::settings::BusSettings;

/// The bus's tables, each past retention when its event is done with: sent, received, or
/// replayed before the cut-off.
pub const TABLES: &[ArchiveTable] = &[
    ArchiveTable {
        table: "outbox",
        past: "sent_at < $1",
    },
    ArchiveTable {
        table: "inbox",
        past: "received_at < $1",
    },
    ArchiveTable {
        table: "dead_letters",
        past: "replayed_at < $1",
    },
];

/// The arguments of `dozen-<service> archive`.
#[derive(Debug, Clone, Args)]
pub struct ArchiveArgs {
    /// Archive rows past retention this long ago (e.g. `30days`); BUS_RETENTION when omitted.
    #[arg(long, value_parser = parse_duration)]
    pub older_than: Option<Duration>,

    /// Print how many rows of each table would move, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

impl ArchiveArgs {
    /// Archive `tables` of service `service` (its own, before the bus's) from `db`, printing one
    /// JSON line per table on stdout.
    pub async fn run(
        self,
        db: &Db,
        service: &str,
        settings: &BusSettings,
        tables: &[ArchiveTable],
    ) -> anyhow::Result<()> {
        let older_than = self.older_than.unwrap_or(settings.bus_retention);
        let all: Vec<ArchiveTable> = tables.iter().chain(TABLES).copied().collect();
        let reports = if self.dry_run {
            archive::dry_run(db, &all, older_than).await
        } else {
            let url = settings.archive.archive_url.as_ref().context(
                "ARCHIVE_URL is not set: give file://<folder> or s3://<bucket>[/<prefix>] (or --dry-run)",
            )?;
            archive::run(db, url, service, &all, older_than).await
        }
        .context("archive failed")?;
        for report in reports {
            println!("{}", serde_json::to_string(&report)?);
        }
        Ok(())
    }
}
