//! The verification service: single-use, expiring verification tokens, and the mail that carries them.

use clap::Args;
use dozen_kit::config::DatabaseSettings;
use dozen_kit::db::Migrations;
use dozen_kit::{Context, Service};
use utoipa_axum::router::OpenApiRouter;

/// The verification service's own schema, one set of migrations per backend.
pub static MIGRATIONS: Migrations = Migrations {
    sqlite: sqlx::migrate!("migrations/sqlite"),
    postgres: sqlx::migrate!("migrations/postgres"),
};

/// Every set of migrations its database holds.
pub static SCHEMA: &[&Migrations] = &[&MIGRATIONS];

/// The verification service's settings.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    #[command(flatten)]
    pub database: DatabaseSettings,
}

/// The verification service.
#[derive(Debug)]
pub struct Verification;

impl Service for Verification {
    const NAME: &'static str = "verification";
    const DEFAULT_PORT: u16 = 8084;
    type Settings = Settings;

    fn database(settings: &Settings) -> Option<(&DatabaseSettings, &'static [&'static Migrations])> {
        Some((&settings.database, SCHEMA))
    }

    async fn routes(_context: &mut Context<Settings>) -> anyhow::Result<OpenApiRouter> {
        Ok(OpenApiRouter::new())
    }
}
