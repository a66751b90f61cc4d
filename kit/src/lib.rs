//! The kit: the one way every dozen service does each twelve-factor concern.
//!
//! - [`archive`]: the `archive` admin process, moving rows past retention to object storage.
//! - [`config`]: settings from the environment (factor III), validated at start.
//! - [`telemetry`] and [`trace_context`]: JSON logs on stdout with trace ids (XI), OTLP export,
//!   W3C trace context across HTTP and the bus.
//! - [`http`]: the server stack with `/healthz`, `/readyz`, `/metrics`, `/openapi.json`, the
//!   client for calls between services, and [`Json`], the extractor of every JSON body.
//! - [`keys`] and [`identity`]: Ed25519 signing keys, and the identity every service proves
//!   on its calls to another (checked by the routes only services may call).
//! - [`db`]: the service's own database (IV), SQLite or Postgres, with migrations.
//! - [`figures`]: each day's counts of what happened (signups, logins…), kept in every
//!   service's database and served to verification's `report` admin process.
//! - [`email`] and [`problem`]: the shared value types: a normalised email address, and the
//!   RFC 9457 body of every error.
//! - [`lifecycle`]: readiness, graceful shutdown and background tasks (IX).
//! - [`listener`]: the port a service serves on, bound or handed over (VII).
//! - [`service`]: a service's `main`, from settings to exit, including the `migrate` admin
//!   process (XII).
//!
//! The kit knows no service's domain: no tables but `daily_figures`, no routes beyond the ops
//! endpoints and `/daily-figures`.

pub mod archive;
pub mod auth;
pub mod config;
pub mod db;
pub mod email;
pub mod figures;
pub mod http;
pub mod identity;
pub mod keys;
pub mod lifecycle;
pub mod listener;
pub mod metrics;
pub mod paging;
pub mod problem;
pub mod service;
pub mod telemetry;
pub mod trace_context;

pub use http::json::Json;
pub use problem::{ApiError, Problem};
pub use service::{Context, Service};
