//! Daily figures: how many of each countable thing (a signup accepted, a login, a dead
//! letter…) happened on each UTC day, for verification's `report` admin process.
//!
//! A figure is added to in the same transaction as the effect it counts ([`count`]), into the
//! service's own `daily_figures` table, which retention and `archive` never touch: a past
//! day's figures stay what they were when old rows are deleted. Each service serves its own at
//! the internal `GET /daily-figures?day=YYYY-MM-DD` ([`router`]), verification's alone.

use std::borrow::Cow;
use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use sqlx::migrate::Migrator;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::db::{Db, Migrations, Tx};
use crate::identity::Identity;
use crate::{ApiError, Json, Problem};

/// The `daily_figures` table, tracked in `_figures_migrations`, apart from the service's own.
pub static MIGRATIONS: Migrations = Migrations {
    sqlite: Migrator {
        table_name: Cow::Borrowed("_figures_migrations"),
        ..sqlx::migrate!("migrations/figures/sqlite")
    },
    postgres: Migrator {
        table_name: Cow::Borrowed("_figures_migrations"),
        ..sqlx::migrate!("migrations/figures/postgres")
    },
};

/// Add one to figure `name` of the UTC day of `at`, in `tx`: the transaction of what it counts.
pub async fn count(tx: &mut Tx, name: &str, at: DateTime<Utc>) -> Result<(), sqlx::Error> {
    const UPSERT: &str = "INSERT INTO daily_figures (day, name, count) VALUES ($1, $2, 1) \
                          ON CONFLICT (day, name) DO UPDATE SET count = daily_figures.count + 1";
    let day = at.date_naive().to_string();
    crate::with_conn!(tx.conn(), conn => sqlx::query(UPSERT).bind(&day).bind(name).execute(conn).await.map(drop))?;
    Ok(())
}

/// Every figure of `day` that is not zero, by name.
pub async fn of_day(db: &Db, day: NaiveDate) -> Result<BTreeMap<String, i64>, sqlx::Error> {
    const SELECT: &str = "SELECT name, count FROM daily_figures WHERE day = $1";
    let day = day.to_string();
    let rows: Vec<(String, i64)> =
        crate::with_pool!(db, pool => sqlx::query_as(SELECT).bind(&day).fetch_all(pool).await)?;
    Ok(rows.into_iter().collect())
}

/// A day as `YYYY-MM-DD`, the only form accepted.
pub fn parse_day(text: &str) -> Result<NaiveDate, String> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .filter(|day| day.to_string() == text)
        .ok_or_else(|| format!("`{text}` is not a day: expected YYYY-MM-DD"))
}

/// One service's figures of one day.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DailyFigures {
    /// The UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// Each figure that is not zero, by name.
    pub figures: BTreeMap<String, i64>,
}

/// The query of `GET /daily-figures`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DayQuery {
    /// The UTC day, `YYYY-MM-DD`.
    day: Option<String>,
}

/// The figures of one UTC day. Internal: verification's alone (its `report` admin process).
#[utoipa::path(
    get,
    path = "/daily-figures",
    params(DayQuery),
    responses(
        (status = 200, description = "The day's figures", body = DailyFigures),
        (status = 400, description = "No day, or not YYYY-MM-DD", body = Problem),
        (status = 401, description = "No valid service identity", body = Problem),
        (status = 403, description = "A caller other than verification", body = Problem),
    )
)]
async fn daily_figures(
    State(db): State<Db>,
    Query(query): Query<DayQuery>,
) -> Result<Json<DailyFigures>, ApiError> {
    let text = query
        .day
        .ok_or_else(|| Problem::new(StatusCode::BAD_REQUEST, "give the day: ?day=YYYY-MM-DD"))?;
    let day = parse_day(&text).map_err(|detail| Problem::new(StatusCode::BAD_REQUEST, detail))?;
    let figures = of_day(&db, day).await?;
    Ok(Json(DailyFigures {
        day: day.to_string(),
        figures,
    }))
}

/// `GET /daily-figures` on `db`, for verification alone.
pub fn router<S>(db: Db, identity: &Identity) -> OpenApiRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    OpenApiRouter::new()
        .routes(routes!(daily_figures))
        .route_layer(identity.callers(&["verification"]))
        .with_state(db)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_is_exactly_yyyy_mm_dd() {
        assert_eq!(parse_day("2026-03-01").expect("a day").to_string(), "2026-03-01");
        for bad in [
            "2026-3-1",
            "2026-02-30",
            "yesterday",
            "",
            "2026-03-01T00:00:00Z",
            " 2026-03-01",
        ] {
            assert!(parse_day(bad).is_err(), "{bad:?} accepted");
        }
    }
}
