//! The signup service: takes a signup through the chain (profile in users, credential in
//! passwords), records how far each got under its Idempotency-Key, and publishes
//! `user.signed_up` — or `user.signup_conflict` for a taken email — through its outbox. It
//! forgets a deleted account's signups on `user.deleted`.
//!
//! Layout: [`domain`] (request, key, states), [`store`] (signup records), [`peers`] (calls to
//! users and passwords), [`flow`] (the chain, and `repair`), [`routes`] (the API), [`events`]
//! (what it does on `user.deleted`).

pub mod domain;
pub mod events;
pub mod flow;
pub mod peers;
pub mod routes;
pub mod store;

use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use dozen_bus::archive::ArchiveArgs;
use dozen_bus::{Bus, BusSettings, Relay};
use dozen_kit::config::{DatabaseSettings, parse_duration, parse_peer_urls};
use dozen_kit::db::Migrations;
use dozen_kit::{Context, Service};
use utoipa_axum::router::OpenApiRouter;

use crate::flow::Flow;
use crate::peers::Peers;

/// The signup service's own schema, one set of migrations per backend.
pub static MIGRATIONS: Migrations = dozen_kit::migrations!();

/// Every set of migrations its database holds: its own, the bus's and the daily figures.
pub static SCHEMA: &[&Migrations] = &[
    &MIGRATIONS,
    &dozen_bus::MIGRATIONS,
    &dozen_kit::figures::MIGRATIONS,
];

/// The signup service's settings.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    #[command(flatten)]
    pub database: DatabaseSettings,
    #[command(flatten)]
    pub bus: BusSettings,
    /// Base URL of the users service, or several comma-separated (its instances).
    #[arg(long, env = "USERS_URL", default_value = "http://127.0.0.1:8082", value_parser = parse_peer_urls)]
    pub users_url: String,
    /// Base URL of the passwords service, or several comma-separated (its instances).
    #[arg(long, env = "PASSWORDS_URL", default_value = "http://127.0.0.1:8083", value_parser = parse_peer_urls)]
    pub passwords_url: String,
    /// How long a signup may sit unfinished before `repair` completes or undoes it.
    #[arg(long, env = "REPAIR_AFTER", default_value = "15m", value_parser = parse_duration)]
    pub repair_after: Duration,
}

/// The signup service.
#[derive(Debug)]
pub struct Signup;

impl Signup {
    /// The `repair` admin process.
    async fn repair(context: Context<Settings>) -> anyhow::Result<()> {
        let bus = Bus::connect(&context.settings.bus, Self::NAME, context.database()?.clone()).await?;
        let flow = Self::flow(&context, &bus).await?;
        let before = chrono::Utc::now() - chrono::Duration::from_std(context.settings.repair_after)?;
        let (completed, undone) = flow.repair(before).await.context("repair failed")?;
        // Publish what repair wrote to the outbox before exiting (a serving instance's relay
        // would too, but none may be running).
        let mut relay = Relay::new(
            flow.db.clone(),
            bus.broker().clone(),
            bus.outbox(),
            &context.settings.bus,
        );
        while relay.relay_once().await? > 0 {}
        tracing::info!(completed, undone, "repair finished");
        Ok(())
    }

    async fn flow(context: &Context<Settings>, bus: &Bus) -> anyhow::Result<Flow> {
        Ok(Flow {
            db: context.database()?.clone(),
            outbox: bus.outbox().clone(),
            peers: Peers {
                users: context.http.upstream("users", &context.settings.users_url),
                passwords: context
                    .http
                    .upstream("passwords", &context.settings.passwords_url),
            },
        })
    }
}

/// The signup service's admin tasks.
#[derive(Debug, Clone, Subcommand)]
pub enum Task {
    /// Complete (both halves exist) or undo (delete the profile and the credential) every
    /// signup left unfinished for longer than REPAIR_AFTER.
    Repair,
    /// Move rows past retention (events sent long ago) to ARCHIVE_URL, then delete them.
    Archive(ArchiveArgs),
}

impl Service for Signup {
    const NAME: &'static str = "signup";
    const DEFAULT_PORT: u16 = 8081;
    type Settings = Settings;

    fn database(settings: &Settings) -> Option<(&DatabaseSettings, &'static [&'static Migrations])> {
        Some((&settings.database, SCHEMA))
    }

    async fn start(context: &mut Context<Settings>) -> anyhow::Result<OpenApiRouter> {
        let mut bus = Bus::connect(&context.settings.bus, Self::NAME, context.database()?.clone()).await?;
        bus.handle(Self::NAME, events::handlers());
        let flow = Self::flow(context, &bus).await?;
        bus.serve(&context.lifecycle, &mut context.readiness).await?;
        let figures = dozen_kit::figures::router(context.database()?.clone(), context.identity()?);
        Ok(routes::router(flow).merge(figures))
    }

    type Task = Task;

    async fn run_task(task: Task, context: Context<Settings>) -> anyhow::Result<()> {
        match task {
            Task::Repair => Self::repair(context).await,
            Task::Archive(args) => {
                args.run(context.database()?, Self::NAME, &context.settings.bus, &[])
                    .await
            }
        }
    }
}
