//! RFC 9457 problem details: the body of every 4xx and 5xx answer.

use std::collections::BTreeMap;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// The media type of a problem body.
pub const CONTENT_TYPE: &str = "application/problem+json";

/// A problem details object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem; `about:blank` when the status says it all.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What happened in this occurrence, for a human.
    pub detail: String,
    /// For validation problems: each invalid field and what is wrong with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<BTreeMap<String, String>>,
}

impl Problem {
    /// A problem whose kind is given by the status alone.
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            kind: "about:blank".to_owned(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: None,
        }
    }

    /// A named kind of problem, e.g. `validation`; its type URI is `/problems/<slug>`.
    pub fn typed(status: StatusCode, slug: &str, title: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("/problems/{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: None,
        }
    }

    /// 422 with the invalid fields.
    pub fn validation(errors: BTreeMap<String, String>) -> Self {
        let detail = format!("{} field(s) are invalid", errors.len());
        Self {
            errors: Some(errors),
            ..Self::typed(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "Invalid request",
                detail,
            )
        }
    }

    /// The status as a [`StatusCode`].
    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let mut response = (status, axum::Json(self)).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
        response
    }
}

/// What a handler returns on failure: a problem the caller caused or should know about, or a
/// fault of ours, logged with its cause and answered without it.
#[derive(Debug)]
pub enum ApiError {
    /// Answered as it is.
    Problem(Problem),
    /// A dependency (the database, a peer) is unavailable: 503, worth retrying.
    Unavailable(anyhow::Error),
    /// A bug or an unexpected state: 500.
    Internal(anyhow::Error),
}

impl From<Problem> for ApiError {
    fn from(problem: Problem) -> Self {
        Self::Problem(problem)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_) => Self::Unavailable(error.into()),
            sqlx::Error::Database(ref database) if is_transient(database.as_ref()) => {
                Self::Unavailable(error.into())
            }
            other => Self::Internal(other.into()),
        }
    }
}

/// Whether a database refused for want of resources or because it is going away, not for
/// anything in the request: a full disk, an I/O error, a server shutting down or out of
/// connections. The request may succeed once the operator has acted, so it is a 503.
fn is_transient(error: &dyn sqlx::error::DatabaseError) -> bool {
    let Some(code) = error.code() else {
        return false;
    };
    if error.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        // SQLite's extended result code; its low byte is the primary one.
        const SQLITE_IOERR: i32 = 10;
        const SQLITE_FULL: i32 = 13;
        code.parse::<i32>()
            .is_ok_and(|code| matches!(code & 0xff, SQLITE_IOERR | SQLITE_FULL))
    } else {
        // Postgres SQLSTATE classes: 08 connection exception, 53 insufficient resources (disk
        // full, out of memory, too many connections), 57P operator intervention (shutdown).
        ["08", "53", "57P"].iter().any(|class| code.starts_with(class))
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> Self {
        // A database error anywhere in the chain decides, so callers may use `?` freely.
        match error.downcast::<sqlx::Error>() {
            Ok(database) => database.into(),
            Err(other) => Self::Internal(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::Problem(problem) => problem.into_response(),
            Self::Unavailable(error) => {
                tracing::warn!(error = format!("{error:#}"), "a dependency is unavailable");
                let mut response = Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "a dependency is unavailable; try again shortly",
                )
                .into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                response
            }
            Self::Internal(error) => {
                tracing::error!(error = format!("{error:#}"), "request failed");
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the request could not be completed",
                )
                .into_response()
            }
        }
    }
}
