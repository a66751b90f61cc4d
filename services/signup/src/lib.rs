//! The signup service: records signups under their idempotency key, creates the profile and the credential (chained calls), and publishes `user.signed_up` through its outbox.

use clap::Args;
use dozen_kit::config::{DatabaseSettings, parse_http_url};
use dozen_kit::db::Migrations;
use dozen_kit::{Context, Service};
use utoipa_axum::router::OpenApiRouter;

/// The signup service's own schema, one set of migrations per backend.
pub static MIGRATIONS: Migrations = Migrations {
    sqlite: sqlx::migrate!("migrations/sqlite"),
    postgres: sqlx::migrate!("migrations/postgres"),
};

/// Every set of migrations its database holds.
pub static SCHEMA: &[&Migrations] = &[&MIGRATIONS];

/// The signup service's settings.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    #[command(flatten)]
    pub database: DatabaseSettings,
    /// Base URL of the users service.
    #[arg(long, env = "USERS_URL", default_value = "http://127.0.0.1:8082", value_parser = parse_http_url)]
    pub users_url: String,
    /// Base URL of the passwords service.
    #[arg(long, env = "PASSWORDS_URL", default_value = "http://127.0.0.1:8083", value_parser = parse_http_url)]
    pub passwords_url: String,
}

/// The signup service.
#[derive(Debug)]
pub struct Signup;

impl Service for Signup {
    const NAME: &'static str = "signup";
    const DEFAULT_PORT: u16 = 8081;
    type Settings = Settings;

    fn database(settings: &Settings) -> Option<(&DatabaseSettings, &'static [&'static Migrations])> {
        Some((&settings.database, SCHEMA))
    }

    async fn routes(_context: &mut Context<Settings>) -> anyhow::Result<OpenApiRouter> {
        Ok(OpenApiRouter::new())
    }
}
