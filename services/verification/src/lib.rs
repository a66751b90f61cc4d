//! The verification service: single-use, expiring verification tokens, and the mail that
//! carries them.
//!
//! On `user.signed_up` it records the account, issues a token (only its SHA-256 is stored)
//! and queues a mail with the link `{PUBLIC_URL}/verify?token=…`; on `user.signup_conflict` it
//! queues a notice to the address's owner instead. Following the link
//! (`POST /verifications/{token}`) verifies the address once and publishes
//! `user.email_verified`. It also owns password reset links (`{PUBLIC_URL}/reset?token=…`,
//! mailed only to verified addresses), asking passwords to set the new password, and mails a
//! notice on `user.password_changed`. On `user.email_change_requested` it mails a link to the
//! new address (`{PUBLIC_URL}/confirm-email?token=…`) and a notice to the old; following it
//! (`POST /email-changes/{token}`) asks users to apply the change.
//!
//! Exactly one mail per signup: the bus's inbox drops a redelivered event, the account insert
//! drops a second event for the same user, and the mail is a row written in the handler's
//! transaction (an outbox for mail) that the [`sender`] delivers under the row's id.
//!
//! Layout: [`domain`] (tokens and mail texts), [`store`] (the tables), [`links`] (a token and
//! its mail, written together), [`mailer`] (folder or SMTP), [`sender`] (the background
//! delivery), [`routes`] (the API), [`events`] (what it does on each event it consumes),
//! [`report`] (the `report` admin process), and here the settings.

pub mod domain;
pub mod events;
pub mod links;
pub mod mailer;
pub mod report;
pub mod routes;
pub mod sender;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use dozen_bus::admin::BusTask;
use dozen_bus::{Bus, BusSettings};
use dozen_kit::auth::{JwtVerifier, TokenSettings};
use dozen_kit::config::{DatabaseSettings, parse_duration, parse_http_url, parse_peer_urls};
use dozen_kit::db::Migrations;
use dozen_kit::{Context, Service};
use lettre::message::Mailbox;
use tokio::sync::Notify;
use utoipa_axum::router::OpenApiRouter;

use crate::links::Links;
use crate::mailer::{MailUrl, Mailer};
use crate::sender::MailSender;
use crate::store::Throttle;

/// The verification service's own schema, one set of migrations per backend.
pub static MIGRATIONS: Migrations = dozen_kit::migrations!();

/// Every set of migrations its database holds: its own, the bus's and the daily figures.
pub static SCHEMA: &[&Migrations] = &[
    &MIGRATIONS,
    &dozen_bus::MIGRATIONS,
    &dozen_kit::figures::MIGRATIONS,
];

/// The verification service's settings.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    #[command(flatten)]
    pub database: DatabaseSettings,
    #[command(flatten)]
    pub bus: BusSettings,
    #[command(flatten)]
    pub mail: MailSettings,
    #[command(flatten)]
    pub tokens: TokenSettings,
    /// Base URL of the passwords service (whose keys sign access tokens, and which sets the
    /// new password of a reset), or several comma-separated (its instances).
    #[arg(long, env = "PASSWORDS_URL", default_value = "http://127.0.0.1:8083", value_parser = parse_peer_urls)]
    pub passwords_url: String,
    /// Base URL of the users service (which applies an email change whose link was
    /// followed), or several comma-separated (its instances).
    #[arg(long, env = "USERS_URL", default_value = "http://127.0.0.1:8082", value_parser = parse_peer_urls)]
    pub users_url: String,
    #[command(flatten)]
    pub report: ReportSettings,
}

/// The `report` admin process (serving reads none of these).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "The report admin process")]
pub struct ReportSettings {
    /// Where `report` mails the day's figures, through MAIL_URL; unset, it only prints them.
    #[arg(long, env = "REPORT_TO", value_parser = mailer::parse_from)]
    pub report_to: Option<Mailbox>,
    /// Base URL of the signup service, asked for its figures by `report`, or several
    /// comma-separated (its instances).
    #[arg(long, env = "SIGNUP_URL", default_value = "http://127.0.0.1:8081", value_parser = parse_peer_urls)]
    pub signup_url: String,
    /// Base URL of the friends service, asked for its figures by `report`, or several
    /// comma-separated (its instances).
    #[arg(long, env = "FRIENDS_URL", default_value = "http://127.0.0.1:8085", value_parser = parse_peer_urls)]
    pub friends_url: String,
}

/// The verification service's admin tasks.
#[derive(Debug, Clone, Subcommand)]
pub enum Task {
    #[command(flatten)]
    Bus(BusTask),
    /// Print one day's figures of every service (signups, verifications, logins, lockouts,
    /// friendships, dead letters) as one JSON document, and mail them to REPORT_TO when set.
    Report(report::ReportArgs),
}

/// Mail and links.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Mail and links")]
pub struct MailSettings {
    /// Where mail goes, required to serve: `smtp://[user:pass@]host[:port]` (add
    /// `?tls=required` for STARTTLS), `smtps://user:pass@host[:port]` (TLS), or, for
    /// development, `file://<folder>`: the dev mailbox, one JSON file per message, listed at
    /// GET /mailbox to anyone who can reach it.
    #[arg(long, env = "MAIL_URL", hide_env_values = true, value_parser = MailUrl::parse)]
    pub mail_url: Option<MailUrl>,

    /// Allow the dev mailbox (`MAIL_URL=file://…`) on Postgres or a real broker (NATS,
    /// SNS/SQS), which otherwise refuse it as the sign of a deployment: for test platforms.
    #[arg(long, env = "DEV_MAILBOX_ALLOW_PRODUCTION_BACKENDS", default_value_t = false, action = clap::ArgAction::Set)]
    pub dev_mailbox_allow_production_backends: bool,

    /// The sender of every mail.
    #[arg(long, env = "MAIL_FROM", default_value = "dozen <no-reply@dozen.local>", value_parser = mailer::parse_from)]
    pub mail_from: Mailbox,

    /// Longest one delivery may take. A mail held by an instance that died is sent again after
    /// twice this (over SMTP that may deliver a second copy, with the same Message-ID).
    #[arg(long, env = "MAIL_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    pub mail_timeout: Duration,

    /// The base of the links in mails (the gateway's public address); links are
    /// `<PUBLIC_URL>/verify?token=…`.
    #[arg(long, env = "PUBLIC_URL", default_value = "http://127.0.0.1:8080", value_parser = parse_http_url)]
    pub public_url: String,

    /// How long a verification link works, and an email change link.
    #[arg(long, env = "TOKEN_TTL", default_value = "24h", value_parser = parse_positive_duration)]
    pub token_ttl: Duration,

    /// How long a password reset link works.
    #[arg(long, env = "RESET_TOKEN_TTL", default_value = "1h", value_parser = parse_positive_duration)]
    pub reset_token_ttl: Duration,

    /// Least time between two mails to one address (resent links, conflict notices, and
    /// password reset links, each kind counted alone).
    #[arg(long, env = "RESEND_INTERVAL", default_value = "1m", value_parser = parse_duration)]
    pub resend_interval: Duration,

    /// Most verification mails to one account in a day, the first one included (and most
    /// conflict notices, and most reset links, to one address).
    #[arg(long, env = "RESEND_DAILY_LIMIT", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub resend_daily_limit: u32,
}

impl Settings {
    /// Where mail goes. No `MAIL_URL` at all is refused rather than defaulting to the dev
    /// mailbox, and so is the dev mailbox on production backends unless allowed: it shows
    /// every verification link to whoever reaches the platform.
    pub fn mail_url(&self) -> Result<&MailUrl, String> {
        let Some(url) = &self.mail.mail_url else {
            return Err("MAIL_URL is not set: give smtp://… or smtps://… to send mail, or file://<folder> for the dev mailbox (development only)".to_owned());
        };
        if matches!(url, MailUrl::Folder(_)) && !self.mail.dev_mailbox_allow_production_backends {
            let mut production = Vec::new();
            if let Some(database) = &self.database.database_url
                && database.backend() == "postgres"
            {
                production.push("DATABASE_URL is Postgres".to_owned());
            }
            if self.bus.bus_url.backend() != "embedded" {
                production.push(format!("BUS_URL is {}", self.bus.bus_url.backend()));
            }
            if !production.is_empty() {
                return Err(format!(
                    "the dev mailbox (MAIL_URL=file://…) lets anyone read every verification link, and {}: send mail over SMTP (MAIL_URL=smtp://…), or set DEV_MAILBOX_ALLOW_PRODUCTION_BACKENDS=true on a test platform",
                    production.join(" and ")
                ));
            }
        }
        Ok(url)
    }
}

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        duration if duration.is_zero() => Err("must be longer than zero".to_owned()),
        duration => Ok(duration),
    }
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

    fn check_serving(settings: &Settings) -> Result<(), String> {
        settings.mail_url().map(|_| ())
    }

    async fn start(context: &mut Context<Settings>) -> anyhow::Result<OpenApiRouter> {
        let db = context.database()?.clone();
        let mail_url = context.settings.mail_url().map_err(anyhow::Error::msg)?;
        let settings = context.settings.mail.clone();
        let mailer = Mailer::new(mail_url, settings.mail_timeout)?;
        tracing::info!(mail = mail_url.kind(), "mail transport ready");
        let mail_queued = Arc::new(Notify::new());
        let links = Links {
            public_url: settings.public_url.clone(),
            ttl: settings.token_ttl,
            reset_ttl: settings.reset_token_ttl,
            throttle: Throttle {
                interval_ms: i64::try_from(settings.resend_interval.as_millis()).unwrap_or(i64::MAX),
                daily_limit: i64::from(settings.resend_daily_limit),
            },
            mail_queued: mail_queued.clone(),
            mailbox: mailer.folder().map(std::path::Path::to_owned),
        };

        let mut bus = Bus::connect(&context.settings.bus, Self::NAME, db.clone()).await?;
        let outbox = bus.outbox().clone();
        bus.handle(Self::NAME, events::handlers(links.clone()));
        bus.serve(&context.lifecycle, &mut context.readiness)
            .await
            .context("cannot subscribe to the bus (BUS_URL)")?;

        let sender = MailSender::new(
            db.clone(),
            mailer.clone(),
            settings.mail_from.clone(),
            mail_queued,
            settings.mail_timeout,
        )
        .archived(context.settings.bus.archive.archiving());
        context.lifecycle.spawn(sender.run(context.lifecycle.stopping()));
        let verifier = JwtVerifier::new(
            &context.http,
            &context.settings.passwords_url,
            &context.settings.tokens,
        );
        Ok(routes::router(routes::AppState {
            db,
            outbox,
            links,
            mailer,
            verifier,
            passwords: context
                .http
                .upstream("passwords", &context.settings.passwords_url),
            users: context.http.upstream("users", &context.settings.users_url),
            lifecycle: context.lifecycle.clone(),
        }))
    }

    type Task = Task;

    async fn run_task(task: Task, context: Context<Settings>) -> anyhow::Result<()> {
        match task {
            Task::Bus(task) => {
                task.run(
                    context.database()?,
                    Self::NAME,
                    &context.settings.bus,
                    store::ARCHIVE_TABLES,
                )
                .await
            }
            Task::Report(args) => args.run(&context).await,
        }
    }
}
