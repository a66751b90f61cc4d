//! JSON bodies: [`Json`] is the one way every service reads a JSON request body, and writes a
//! JSON response. Each way a body can be wrong is its own RFC 9457 problem:
//!
//! - a `Content-Type` other than `application/json` (or `…+json`), or none: 415;
//! - a body that is not JSON (malformed, cut short): 400, type `/problems/malformed-json`;
//! - JSON of the wrong shape (a missing field, a wrong type, an unknown field, not an object):
//!   422, type `/problems/validation`, the field named in `errors` (`interests[2]` for an item);
//! - a body over `BODY_LIMIT`: 413.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::problem::Problem;

/// A JSON body: extracted from a request (rejections as problems, see the module), or
/// answered.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &S) -> Result<Self, Problem> {
        if !declares_json(request.headers()) {
            return Err(Problem::typed(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
                "the body must be JSON, sent with Content-Type: application/json",
            ));
        }
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| Problem::new(rejection.status(), rejection.body_text()))?;
        Self::from_bytes(&body)
    }
}

impl<T: DeserializeOwned> Json<T> {
    /// Read `body` as a `T`; the problem when it cannot be.
    pub fn from_bytes(body: &[u8]) -> Result<Self, Problem> {
        let mut deserializer = serde_json::Deserializer::from_slice(body);
        let value = serde_path_to_error::deserialize(&mut deserializer)
            .map_err(|error| rejection(error.path().to_string(), error.into_inner()))?;
        // Characters after the value make the body malformed.
        deserializer
            .end()
            .map_err(|error| rejection(String::new(), error))?;
        Ok(Self(value))
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Whether the request says its body is JSON.
fn declares_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    let media = value.split(';').next().unwrap_or_default().trim();
    media.eq_ignore_ascii_case("application/json")
        || media
            .rsplit_once('+')
            .is_some_and(|(_, suffix)| suffix.eq_ignore_ascii_case("json"))
}

/// The problem for a body that did not read as the type asked for.
/// `path` is where in the body it went wrong (`.` for the whole body).
fn rejection(path: String, inner: serde_json::Error) -> Problem {
    let message = without_position(&inner);
    if !inner.is_data() {
        return Problem::typed(
            StatusCode::BAD_REQUEST,
            "malformed-json",
            "Malformed JSON",
            format!("the body is not valid JSON: {inner}"),
        );
    }
    let (field, message) = match message.strip_prefix("missing field `") {
        // serde names a missing field in its message, at the path of the object that lacks it.
        Some(rest) => {
            let name = rest.trim_end_matches('`');
            let field = if path == "." {
                name.to_owned()
            } else {
                format!("{path}.{name}")
            };
            (field, "is required".to_owned())
        }
        None => (path, message),
    };
    // No field to name when the body as a whole is wrong: not an object (serde reads a struct
    // from an array too, so its first item is what it complains about).
    if field == "." || field.starts_with('[') {
        return Problem::typed(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "Invalid request",
            format!("the body has the wrong shape ({field}: {message}); expected a JSON object"),
        );
    }
    Problem::validation(BTreeMap::from([(field, message)]))
}

/// serde_json's message without its ` at line 1 column 9`: the field's name says where.
fn without_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rsplit_once(" at line ") {
        Some((message, _)) if error.line() > 0 => message.to_owned(),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // Read by the deserializer only.
    struct Body {
        email: String,
        interests: Vec<String>,
    }

    fn problem_of(body: &str) -> Problem {
        Json::<Body>::from_bytes(body.as_bytes()).expect_err("a bad body")
    }

    fn field_error(problem: &Problem, field: &str) -> String {
        assert_eq!(problem.status, 422, "{problem:?}");
        assert_eq!(problem.kind, "/problems/validation");
        let errors = problem.errors.as_ref().expect("the fields");
        errors
            .get(field)
            .cloned()
            .unwrap_or_else(|| panic!("{field} in {errors:?}"))
    }

    #[test]
    fn a_good_body_is_read() {
        let Json(body) =
            Json::<Body>::from_bytes(br#"{"email": "a@example.com", "interests": []}"#).expect("a good body");
        assert_eq!(body.email, "a@example.com");
    }

    #[test]
    fn malformed_json_is_a_400() {
        let trailing = r#"{"email": "a@example.com", "interests": []} {}"#;
        for body in [r#"{"email": "#, "", trailing, "nonsense"] {
            let problem = problem_of(body);
            assert_eq!(problem.status, 400, "{body}: {problem:?}");
            assert_eq!(problem.kind, "/problems/malformed-json");
            assert!(
                problem.detail.starts_with("the body is not valid JSON"),
                "{problem:?}"
            );
        }
    }

    #[test]
    fn a_missing_field_is_named_as_required() {
        let problem = problem_of(r#"{"interests": []}"#);
        assert_eq!(field_error(&problem, "email"), "is required");
    }

    #[test]
    fn a_wrong_type_names_the_field_and_the_item() {
        let problem = problem_of(r#"{"email": 5, "interests": []}"#);
        assert!(
            field_error(&problem, "email").contains("expected a string"),
            "{problem:?}"
        );
        let problem = problem_of(r#"{"email": "a@example.com", "interests": ["chess", 7]}"#);
        assert!(
            field_error(&problem, "interests[1]").contains("invalid type"),
            "{problem:?}"
        );
    }

    #[test]
    fn an_unknown_field_is_named() {
        let problem =
            problem_of(&json!({"email": "a@example.com", "interests": [], "admin": true}).to_string());
        assert_eq!(problem.status, 422, "{problem:?}");
        let errors = problem.errors.expect("the fields");
        assert!(
            errors.values().any(|message| message.contains("admin")),
            "{errors:?}"
        );
    }

    #[test]
    fn a_body_that_is_not_an_object_is_a_422_without_fields() {
        for body in ["[1, 2, 3]", "[]", "7", "\"text\"", "null"] {
            let problem = problem_of(body);
            assert_eq!(problem.status, 422, "{body}: {problem:?}");
            assert!(problem.errors.is_none(), "{body}: {problem:?}");
            assert!(problem.detail.contains("expected a JSON object"), "{problem:?}");
        }
    }

    #[test]
    fn only_a_json_media_type_is_accepted() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, value.parse().expect("a header value"));
            declares_json(&headers)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/merge-patch+json"));
        assert!(!with("text/plain"));
        assert!(!with("application/jsonx"));
        assert!(!declares_json(&HeaderMap::new()));
    }
}
