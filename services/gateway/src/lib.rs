//! The gateway service, the only public entry: it routes the public API, aggregates `/api/me`, serves the web UI. Stateless.

use clap::Args;
use dozen_kit::config::DatabaseSettings;
use dozen_kit::config::parse_http_url;
use dozen_kit::db::Migrations;
use dozen_kit::{Context, Service};
use utoipa_axum::router::OpenApiRouter;

/// The gateway service's settings.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Base URL of the signup service.
    #[arg(long, env = "SIGNUP_URL", default_value = "http://127.0.0.1:8081", value_parser = parse_http_url)]
    pub signup_url: String,
    /// Base URL of the users service.
    #[arg(long, env = "USERS_URL", default_value = "http://127.0.0.1:8082", value_parser = parse_http_url)]
    pub users_url: String,
    /// Base URL of the passwords service.
    #[arg(long, env = "PASSWORDS_URL", default_value = "http://127.0.0.1:8083", value_parser = parse_http_url)]
    pub passwords_url: String,
    /// Base URL of the verification service.
    #[arg(long, env = "VERIFICATION_URL", default_value = "http://127.0.0.1:8084", value_parser = parse_http_url)]
    pub verification_url: String,
    /// Base URL of the friends service.
    #[arg(long, env = "FRIENDS_URL", default_value = "http://127.0.0.1:8085", value_parser = parse_http_url)]
    pub friends_url: String,
}

/// The gateway service.
#[derive(Debug)]
pub struct Gateway;

impl Service for Gateway {
    const NAME: &'static str = "gateway";
    const DEFAULT_PORT: u16 = 8080;
    type Settings = Settings;

    fn database(_: &Settings) -> Option<(&DatabaseSettings, &'static [&'static Migrations])> {
        None
    }

    async fn routes(_context: &mut Context<Settings>) -> anyhow::Result<OpenApiRouter> {
        Ok(OpenApiRouter::new())
    }
}
