//! The friends service: an event-sourced friendship log with its projections (CQRS), fed with
//! the users it may suggest by `user.signed_up`, `user.profile_updated` and
//! `user.email_verified`, and publishing `friend.connected`.
//!
//! Layout: [`domain`] (streams, events, the fold and the decisions), [`store`] (the log, the
//! projections, the members read model), [`commands`] (appending with optimistic
//! concurrency), [`suggestions`] (ranking), [`routes`] (the API), [`events`] (the members read model kept
//! from other services' events). `rebuild` is an admin task
//! that replays the log into fresh projections.

pub mod commands;
pub mod domain;
pub mod events;
pub mod routes;
pub mod store;
pub mod suggestions;

use clap::{Args, Subcommand};
use dozen_bus::admin::BusTask;
use dozen_bus::{Bus, BusSettings};
use dozen_kit::auth::{JwtVerifier, TokenSettings};
use dozen_kit::config::{DatabaseSettings, parse_peer_urls};
use dozen_kit::db::{Migrations, Tx};
use dozen_kit::{Context, Service};
use utoipa_axum::router::OpenApiRouter;

/// The friends service's own schema, one set of migrations per backend.
pub static MIGRATIONS: Migrations = dozen_kit::migrations!();

/// Every set of migrations its database holds: its own, the bus's and the daily figures.
pub static SCHEMA: &[&Migrations] = &[
    &MIGRATIONS,
    &dozen_bus::MIGRATIONS,
    &dozen_kit::figures::MIGRATIONS,
];

/// The friends service's settings.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    #[command(flatten)]
    pub database: DatabaseSettings,
    #[command(flatten)]
    pub bus: BusSettings,
    #[command(flatten)]
    pub tokens: TokenSettings,
    /// Base URL of the passwords service (whose keys sign access tokens), or several
    /// comma-separated (its instances).
    #[arg(long, env = "PASSWORDS_URL", default_value = "http://127.0.0.1:8083", value_parser = parse_peer_urls)]
    pub passwords_url: String,
}

/// The friends service.
#[derive(Debug)]
pub struct Friends;

/// The friends service's admin tasks.
#[derive(Debug, Clone, Subcommand)]
pub enum Task {
    /// Drop the friendship projections and replay the friendship log into them.
    Rebuild,
    #[command(flatten)]
    Bus(BusTask),
}

impl Service for Friends {
    const NAME: &'static str = "friends";
    const DEFAULT_PORT: u16 = 8085;
    type Settings = Settings;

    fn database(settings: &Settings) -> Option<(&DatabaseSettings, &'static [&'static Migrations])> {
        Some((&settings.database, SCHEMA))
    }

    async fn start(context: &mut Context<Settings>) -> anyhow::Result<OpenApiRouter> {
        let db = context.database()?.clone();
        let mut bus = Bus::connect(&context.settings.bus, Self::NAME, db.clone()).await?;
        bus.handle(Self::NAME, events::handlers());
        let outbox = bus.outbox().clone();
        bus.serve(&context.lifecycle, &mut context.readiness).await?;
        let verifier = JwtVerifier::new(
            &context.http,
            &context.settings.passwords_url,
            &context.settings.tokens,
        );
        let figures = dozen_kit::figures::router(db.clone(), context.identity()?);
        Ok(routes::router(routes::AppState { db, outbox, verifier }).merge(figures))
    }

    type Task = Task;

    async fn run_task(task: Task, context: Context<Settings>) -> anyhow::Result<()> {
        match task {
            Task::Bus(task) => {
                task.run(context.database()?, Self::NAME, &context.settings.bus, &[])
                    .await
            }
            Task::Rebuild => {
                let mut tx = Tx::begin(context.database()?).await?;
                let replayed = store::rebuild(&mut tx).await?;
                tx.commit().await?;
                tracing::info!(replayed, "projections rebuilt from the friendship log");
                Ok(())
            }
        }
    }
}
