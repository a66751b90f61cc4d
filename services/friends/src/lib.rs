//! The friends service: the event-sourced friendship log and its read models (suggestions, friend lists).

use clap::Args;
use dozen_kit::config::DatabaseSettings;
use dozen_kit::db::Migrations;
use dozen_kit::{Context, Service};
use utoipa_axum::router::OpenApiRouter;

/// The friends service's own schema, one set of migrations per backend.
pub static MIGRATIONS: Migrations = Migrations {
    sqlite: sqlx::migrate!("migrations/sqlite"),
    postgres: sqlx::migrate!("migrations/postgres"),
};

/// Every set of migrations its database holds.
pub static SCHEMA: &[&Migrations] = &[&MIGRATIONS];

/// The friends service's settings.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    #[command(flatten)]
    pub database: DatabaseSettings,
}

/// The friends service.
#[derive(Debug)]
pub struct Friends;

impl Service for Friends {
    const NAME: &'static str = "friends";
    const DEFAULT_PORT: u16 = 8085;
    type Settings = Settings;

    fn database(settings: &Settings) -> Option<(&DatabaseSettings, &'static [&'static Migrations])> {
        Some((&settings.database, SCHEMA))
    }

    async fn routes(_context: &mut Context<Settings>) -> anyhow::Result<OpenApiRouter> {
        Ok(OpenApiRouter::new())
    }
}
