//! The users service: profiles (id, normalised unique email, display name, interests,
//! verified). It marks a profile verified on `user.email_verified`, publishes
//! `user.profile_updated` whenever a profile changes, owns email changes (requested with the
//! password, applied once the link mailed to the new address is followed), and erases a profile
//! on `user.deleted`.
//!
//! Layout: [`domain`] (what a profile accepts), [`store`] (its table), [`routes`] (the API),
//! [`events`] (what it does on each event it consumes), and here the service's settings.

pub mod domain;
pub mod events;
pub mod routes;
pub mod store;

use clap::Args;
use dozen_bus::admin::BusTask;
use dozen_bus::{Bus, BusSettings};
use dozen_kit::auth::{JwtVerifier, TokenSettings};
use dozen_kit::config::{DatabaseSettings, parse_peer_urls};
use dozen_kit::db::Migrations;
use dozen_kit::{Context, Service};
use utoipa_axum::router::OpenApiRouter;

/// The users service's own schema, one set of migrations per backend.
pub static MIGRATIONS: Migrations = dozen_kit::migrations!();

/// Every set of migrations its database holds: its own, the bus's and the daily figures.
pub static SCHEMA: &[&Migrations] = &[
    &MIGRATIONS,
    &dozen_bus::MIGRATIONS,
    &dozen_kit::figures::MIGRATIONS,
];

/// The users service's settings.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    #[command(flatten)]
    pub database: DatabaseSettings,
    #[command(flatten)]
    pub bus: BusSettings,
    #[command(flatten)]
    pub tokens: TokenSettings,
    /// Base URL of the passwords service (whose keys sign access tokens, and which confirms
    /// the password of an email change), or several comma-separated (its instances).
    #[arg(long, env = "PASSWORDS_URL", default_value = "http://127.0.0.1:8083", value_parser = parse_peer_urls)]
    pub passwords_url: String,
}

/// The users service.
#[derive(Debug)]
pub struct Users;

impl Service for Users {
    const NAME: &'static str = "users";
    const DEFAULT_PORT: u16 = 8082;
    type Settings = Settings;

    fn database(settings: &Settings) -> Option<(&DatabaseSettings, &'static [&'static Migrations])> {
        Some((&settings.database, SCHEMA))
    }

    async fn start(context: &mut Context<Settings>) -> anyhow::Result<OpenApiRouter> {
        let db = context.database()?.clone();
        let mut bus = Bus::connect(&context.settings.bus, Self::NAME, db.clone()).await?;
        let outbox = bus.outbox().clone();

        bus.handle(Self::NAME, events::handlers(outbox.clone()));
        bus.serve(&context.lifecycle, &mut context.readiness).await?;
        let verifier = JwtVerifier::new(
            &context.http,
            &context.settings.passwords_url,
            &context.settings.tokens,
        );
        let passwords = context
            .http
            .upstream("passwords", &context.settings.passwords_url);
        let figures = dozen_kit::figures::router(db.clone(), context.identity()?);
        Ok(routes::router(
            routes::AppState {
                db,
                outbox,
                verifier,
                passwords,
            },
            context.identity()?,
        )
        .merge(figures))
    }

    type Task = BusTask;

    async fn run_task(task: BusTask, context: Context<Settings>) -> anyhow::Result<()> {
        task.run(context.database()?, Self::NAME, &context.settings.bus, &[])
            .await
    }
}
