//! The signup service's HTTP API: `POST /signups`, routed by the gateway as `/api/signups`.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use dozen_kit::Json;
use dozen_kit::{ApiError, Problem};
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::domain::{IdempotencyKey, SignupRequest};
use crate::flow::Flow;

/// The answer to every accepted signup, new account or not.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Accepted {
    /// Always `pending_verification`: check your mail.
    pub status: &'static str,
}

/// The service's routes.
pub fn router(flow: Flow) -> OpenApiRouter {
    routes().with_state(flow)
}

/// The service's API as OpenAPI, which the gateway's document of the public API is built from.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes().into_openapi()
}

fn routes() -> OpenApiRouter<Flow> {
    OpenApiRouter::new().routes(routes!(create_signup))
}

/// Sign up. The answer is the same for a new and an already-registered email; the owner of a
/// registered one is mailed a notice. Retrying with the same `Idempotency-Key` never creates a
/// second account, and resumes a signup that stopped part-way.
#[utoipa::path(
    post,
    path = "/signups",
    request_body = SignupRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: 1 to 255 visible ASCII characters")),
    responses(
        (status = 202, description = "Accepted: a verification mail is on its way", body = Accepted),
        (status = 400, description = "Malformed body or Idempotency-Key", body = Problem),
        (status = 422, description = "A field is invalid, or the key was used for another request", body = Problem),
        (status = 503, description = "A service it needs is down: retry with the same key", body = Problem),
    )
)]
async fn create_signup(
    State(flow): State<Flow>,
    headers: HeaderMap,
    Json(request): Json<SignupRequest>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let key = match headers.get("idempotency-key") {
        Some(value) => IdempotencyKey::parse(value.to_str().unwrap_or_default())?,
        None => IdempotencyKey::random(),
    };
    flow.submit(&key, request.validate()?).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            status: "pending_verification",
        }),
    ))
}
