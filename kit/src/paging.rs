//! Paged lists: every route that lists takes `?limit=` (1 to [`MAX_LIMIT`], default
//! [`DEFAULT_LIMIT`]) and `?after=<id>` (the id of the last item of the previous page), and
//! answers one page, still a plain JSON array. A limit out of range or unreadable, or an `after`
//! that is not a UUID, is a 400 problem: nothing is clamped silently.

use axum::extract::{FromRequestParts, Query};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::Deserialize;
use uuid::Uuid;

use crate::Problem;

/// The page size when `?limit=` is not given.
pub const DEFAULT_LIMIT: u32 = 50;
/// The largest `?limit=` accepted.
pub const MAX_LIMIT: u32 = 200;

/// Which page of a list is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// How many items at most.
    pub limit: u32,
    /// The id of the item the page starts after; none for the first page.
    pub after: Option<Uuid>,
}

impl Default for Page {
    fn default() -> Self {
        Self {
            limit: DEFAULT_LIMIT,
            after: None,
        }
    }
}

impl Page {
    /// Read `limit` and `after` as given in the query string.
    pub fn parse(limit: Option<&str>, after: Option<&str>) -> Result<Self, Problem> {
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(text) => text
                .parse::<u32>()
                .ok()
                .filter(|limit| (1..=MAX_LIMIT).contains(limit))
                .ok_or_else(|| bad_page(format!("limit must be a whole number from 1 to {MAX_LIMIT}")))?,
        };
        let after = after
            .map(|text| {
                Uuid::parse_str(text)
                    .map_err(|_| bad_page("after must be the id of an item of the list".to_owned()))
            })
            .transpose()?;
        Ok(Self { limit, after })
    }

    /// The limit, as SQL binds it.
    pub fn sql_limit(&self) -> i64 {
        i64::from(self.limit)
    }
}

/// The 400 problem for a cursor that names no item of the list.
pub fn unknown_cursor() -> Problem {
    bad_page("after names no item of the list (it may have been removed): start again without it".to_owned())
}

fn bad_page(detail: String) -> Problem {
    Problem::typed(StatusCode::BAD_REQUEST, "bad-page", "Bad page", detail)
}

#[derive(Deserialize)]
struct PageQuery {
    limit: Option<String>,
    after: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Page {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
        let Query(query) =
            Query::<PageQuery>::try_from_uri(&parts.uri).map_err(|error| bad_page(error.body_text()))?;
        Self::parse(query.limit.as_deref(), query.after.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_from_one_to_the_maximum_are_accepted_and_others_refused() {
        assert_eq!(Page::parse(None, None).expect("default").limit, DEFAULT_LIMIT);
        assert_eq!(Page::parse(Some("1"), None).expect("one").limit, 1);
        assert_eq!(Page::parse(Some("200"), None).expect("max").limit, MAX_LIMIT);
        for bad in ["0", "201", "-1", "ten", "", "1.5", "99999999999"] {
            assert!(Page::parse(Some(bad), None).is_err(), "{bad:?} is refused");
        }
    }

    #[test]
    fn a_cursor_must_be_an_id() {
        let id = Uuid::now_v7();
        assert_eq!(
            Page::parse(None, Some(&id.to_string())).expect("an id").after,
            Some(id)
        );
        assert!(Page::parse(None, Some("last")).is_err());
    }
}
