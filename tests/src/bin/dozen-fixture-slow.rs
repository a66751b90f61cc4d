//! A service made only for tests: the kit plus `GET /slow?ms=N`, which answers after N
//! milliseconds, and a background task that takes a while to finish once told to stop, so
//! graceful shutdown can be tested with work in flight.

use std::time::Duration;

use axum::extract::Query;
use axum::routing::get;
use clap::Args;
use dozen_kit::config::DatabaseSettings;
use dozen_kit::db::Migrations;
use dozen_kit::service::NoTasks;
use dozen_kit::{Context, Service};
use utoipa_axum::router::OpenApiRouter;

#[derive(Debug, Clone, Args)]
struct NoSettings {}

#[derive(Debug)]
struct Slow;

#[derive(Debug, serde::Deserialize)]
struct Wait {
    ms: u64,
}

impl Service for Slow {
    const NAME: &'static str = "fixture-slow";
    const DEFAULT_PORT: u16 = 0;
    type Settings = NoSettings;

    fn database(_: &NoSettings) -> Option<(&DatabaseSettings, &'static [&'static Migrations])> {
        None
    }

    type Task = NoTasks;

    async fn run_task(task: NoTasks, _: Context<NoSettings>) -> anyhow::Result<()> {
        match task {}
    }

    async fn start(context: &mut Context<NoSettings>) -> anyhow::Result<OpenApiRouter> {
        let stopping = context.lifecycle.stopping();
        context.lifecycle.spawn(async move {
            stopping.cancelled().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            tracing::info!("background work finished");
        });
        Ok(OpenApiRouter::new().route(
            "/slow",
            get(|Query(wait): Query<Wait>| async move {
                // Tests wait for this line before they signal: the request is then in flight.
                let thread = std::thread::current().name().unwrap_or_default().to_owned();
                tracing::info!(thread, "slow request started");
                tokio::time::sleep(Duration::from_millis(wait.ms)).await;
                "done"
            }),
        ))
    }
}

fn main() -> std::process::ExitCode {
    dozen_kit::service::main::<Slow>()
}
