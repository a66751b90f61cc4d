//! The passwords service: argon2id credentials, login throttling and the JWT signing keys.

use clap::Args;
use dozen_kit::config::DatabaseSettings;
use dozen_kit::db::Migrations;
use dozen_kit::{Context, Service};
use utoipa_axum::router::OpenApiRouter;

/// The passwords service's own schema, one set of migrations per backend.
pub static MIGRATIONS: Migrations = Migrations {
    sqlite: sqlx::migrate!("migrations/sqlite"),
    postgres: sqlx::migrate!("migrations/postgres"),
};

/// Every set of migrations its database holds.
pub static SCHEMA: &[&Migrations] = &[&MIGRATIONS];

/// The passwords service's settings.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    #[command(flatten)]
    pub database: DatabaseSettings,
}

/// The passwords service.
#[derive(Debug)]
pub struct Passwords;

impl Service for Passwords {
    const NAME: &'static str = "passwords";
    const DEFAULT_PORT: u16 = 8083;
    type Settings = Settings;

    fn database(settings: &Settings) -> Option<(&DatabaseSettings, &'static [&'static Migrations])> {
        Some((&settings.database, SCHEMA))
    }

    async fn routes(_context: &mut Context<Settings>) -> anyhow::Result<OpenApiRouter> {
        Ok(OpenApiRouter::new())
    }
}
