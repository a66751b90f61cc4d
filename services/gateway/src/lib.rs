//! The gateway, the only public entry: it routes the public API to the services that own each
//! route, aggregates `/api/me`, and reports every service's state at `/ops/status`. It is
//! stateless and holds no database.
//!
//! Layout: [`routes`] (the public routes), [`proxy`] (passing a request on), [`me`] (the
//! aggregate), [`ops`] (the status page's data).

pub mod me;
pub mod ops;
pub mod proxy;
pub mod routes;
pub mod ui;

use std::time::Duration;

use clap::Args;
use dozen_kit::config::{DatabaseSettings, parse_duration, parse_http_url};
use dozen_kit::db::Migrations;
use dozen_kit::http::client::Upstream;
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
    /// How long `/api/me` waits for the services it aggregates before answering without them.
    #[arg(long, env = "ME_DEADLINE", default_value = "800ms", value_parser = parse_duration)]
    pub me_deadline: Duration,
}

/// The services behind the gateway.
#[derive(Debug, Clone)]
pub struct Peers {
    /// Signup.
    pub signup: Upstream,
    /// Users.
    pub users: Upstream,
    /// Passwords.
    pub passwords: Upstream,
    /// Verification.
    pub verification: Upstream,
    /// Friends.
    pub friends: Upstream,
    /// The deadline of `/api/me`.
    pub me_deadline: Duration,
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

    async fn routes(context: &mut Context<Settings>) -> anyhow::Result<OpenApiRouter> {
        let settings = &context.settings;
        let peers = Peers {
            signup: context.http.upstream("signup", &settings.signup_url),
            users: context.http.upstream("users", &settings.users_url),
            passwords: context.http.upstream("passwords", &settings.passwords_url),
            verification: context.http.upstream("verification", &settings.verification_url),
            friends: context.http.upstream("friends", &settings.friends_url),
            me_deadline: settings.me_deadline,
        };
        Ok(OpenApiRouter::from(routes::router(peers)))
    }
}
