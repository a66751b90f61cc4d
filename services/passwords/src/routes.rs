//! The passwords service's HTTP API, and how each outcome maps to a status:
//!
//! - `PUT /credentials/{user_id}`, `DELETE /credentials/{user_id}`: internal, signup's alone
//!   (its service identity is required, see `dozen_kit::identity`). A credential becomes
//!   verified only by the `user.email_verified` event; `?replaced=true` deletes that of an
//!   account a newer signup replaced, whose id is refused a credential from then on (410).
//! - `POST /password-checks`, `POST /password-hashes`: internal, signup's alone, to check a
//!   password before it creates anything, and to spend a credential's hash where the email is
//!   taken.
//! - `PUT /credentials/{user_id}/password`: internal, verification's alone: a followed reset
//!   link sets a new password; `PUT /me/password`: the caller changes theirs;
//!   `POST /credentials/{user_id}/password-confirmations`: internal, users' alone, the password
//!   an email change must be given (see [`password`]).
//! - `DELETE /me`: the caller deletes their account (see [`account`]).
//! - `POST /sessions`: login, answering an access token and starting a refresh session;
//!   the other session routes are in [`sessions`].
//! - `GET /.well-known/jwks.json`: the public keys every service checks tokens with.
//!
//! Bodies are read with the kit's [`Json`]; an email and a password that are both invalid are
//! both named in the `errors` map of one 422 answer.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dozen_kit::db::Db;
use dozen_kit::email::Email;
use dozen_kit::identity::Identity;
use dozen_kit::{ApiError, Json, Problem};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::domain::hashing::{Hasher, HashingError};
use crate::domain::keys::TokenPolicy;
use crate::domain::password::{MAX_CHARS, Password, PasswordError};
use crate::domain::sessions::SessionPolicy;
use crate::domain::throttle::{self, Subject, ThrottlePolicy};
use crate::store;
use dozen_kit::keys::SigningKeys;

mod account;
mod password;
mod sessions;

/// Everything the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The service's database.
    pub db: Db,
    /// Where `user.password_changed` and `user.deleted` are published.
    pub outbox: dozen_bus::Outbox,
    /// Hashes and verifies passwords, a bounded number at once.
    pub hasher: Hasher,
    /// Signs access tokens; published as the JWKS.
    pub keys: Arc<SigningKeys>,
    /// Issuer, audience and lifetime of access tokens.
    pub tokens: Arc<TokenPolicy>,
    /// How long refresh sessions last.
    pub sessions: SessionPolicy,
    /// When failed logins lock an account or address.
    pub throttle: ThrottlePolicy,
    /// Whether the client address comes from `X-Forwarded-For`.
    pub trust_forwarded_for: bool,
}

/// The service's routes. Credentials and password checks are signup's alone, a reset's new
/// password verification's alone, confirming a password for an email change users' alone; login, the caller's own sessions and password, and the JWKS
/// are public (the JWKS is fetched by every service that checks access tokens).
pub fn router(state: AppState, identity: &Identity) -> OpenApiRouter {
    let Routes {
        signups,
        resets,
        confirmations,
        public,
    } = routes();
    signups
        .route_layer(identity.callers(&["signup"]))
        .merge(resets.route_layer(identity.callers(&["verification"])))
        .merge(confirmations.route_layer(identity.callers(&["users"])))
        .merge(public)
        .with_state(state)
}

/// The service's API as OpenAPI, which the gateway's document of the public API is built from.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let Routes {
        signups,
        resets,
        confirmations,
        public,
    } = routes();
    signups
        .merge(resets)
        .merge(confirmations)
        .merge(public)
        .into_openapi()
}

/// The routes, grouped by who may call them.
struct Routes {
    /// Signup's alone.
    signups: OpenApiRouter<AppState>,
    /// Verification's alone.
    resets: OpenApiRouter<AppState>,
    /// Users' alone.
    confirmations: OpenApiRouter<AppState>,
    /// Anyone's (each authenticates its caller itself, or is public by nature).
    public: OpenApiRouter<AppState>,
}

fn routes() -> Routes {
    let signups = OpenApiRouter::new()
        .routes(routes!(put_credential, delete_credential))
        .routes(routes!(check_password))
        .routes(routes!(hash_and_discard));
    let resets = OpenApiRouter::new().routes(routes!(password::reset));
    let confirmations = OpenApiRouter::new().routes(routes!(password::confirm));
    let public = OpenApiRouter::new()
        .routes(routes!(create_session, sessions::list, sessions::end_all))
        .routes(routes!(sessions::refresh))
        .routes(routes!(sessions::end_current))
        .routes(routes!(password::change))
        .routes(routes!(account::delete))
        .routes(routes!(jwks));
    Routes {
        signups,
        resets,
        confirmations,
        public,
    }
}

/// A hashing failure is ours, never the caller's: 500.
fn hashing_failed(error: HashingError) -> ApiError {
    ApiError::Internal(error.into())
}

/// The body of a credential or login request. No `Debug`: it holds a password.
#[derive(Deserialize, ToSchema)]
struct EmailAndPassword {
    /// The email address; stored trimmed and lowercased.
    email: String,
    /// The password: 8 to 256 characters, hard to guess (judged by zxcvbn, knowing the email
    /// and display name). Not checked at login.
    password: String,
    /// The account's display name, if any: a password must not lean on it. Not read at login.
    display_name: Option<String>,
}

/// A stored credential, as answered.
#[derive(Debug, Serialize, ToSchema)]
struct CredentialView {
    user_id: Uuid,
    email: String,
    verified: bool,
}

/// Set the credential of a user: 201 when created, 200 when the same user already has it for
/// the same email (a retry), 409 when the email or the user is taken otherwise.
#[utoipa::path(
    put,
    path = "/credentials/{user_id}",
    params(("user_id" = Uuid, Path, description = "The user's id, chosen by signup")),
    request_body = EmailAndPassword,
    responses(
        (status = 201, description = "Created", body = CredentialView),
        (status = 200, description = "Already there (a retry)", body = CredentialView),
        (status = 409, description = "The email belongs to another user, or the user has another email", body = Problem),
        (status = 410, description = "A newer signup replaced the user's account", body = Problem),
        (status = 422, description = "Invalid fields", body = Problem),
    )
)]
async fn put_credential(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
    Json(body): Json<EmailAndPassword>,
) -> Result<Response, ApiError> {
    let mut errors = BTreeMap::new();
    let user_id = parse_user_id(&user_id, &mut errors);
    let (email, password) = email_and_password(body, errors)?;
    let Some(user_id) = user_id else {
        let errors = BTreeMap::from([("user_id".to_owned(), "must be a UUID".to_owned())]);
        return Err(Problem::validation(errors).into());
    };

    // Decide before hashing: a retry, a replaced account or a conflict costs no hash.
    if store::was_replaced(&state.db, user_id).await? {
        return Err(replaced().into());
    }
    if let Some(answer) = existing_answer(&state.db, user_id, &email).await? {
        return Ok(answer);
    }
    let phc_hash = state
        .hasher
        .hash(password.expose())
        .await
        .map_err(hashing_failed)?;
    match store::insert(&state.db, user_id, email.as_str(), &phc_hash).await? {
        store::Inserted::Stored => {
            let view = CredentialView {
                user_id,
                email: email.as_str().to_owned(),
                verified: false,
            };
            return Ok((StatusCode::CREATED, Json(view)).into_response());
        }
        store::Inserted::Replaced => return Err(replaced().into()),
        store::Inserted::Taken => {}
    }
    // Another request inserted in between: answer as if it had come first.
    existing_answer(&state.db, user_id, &email)
        .await?
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("the credential insert conflicted with nothing")))
}

/// Check a password against the rules without storing anything: signup asks before it creates
/// anything, so a bad password is refused alike for a new and for a registered address.
#[utoipa::path(
    post,
    path = "/password-checks",
    request_body = EmailAndPassword,
    responses(
        (status = 204, description = "The password may be used"),
        (status = 422, description = "Invalid fields", body = Problem),
    )
)]
async fn check_password(Json(body): Json<EmailAndPassword>) -> Result<StatusCode, ApiError> {
    email_and_password(body, BTreeMap::new())?;
    Ok(StatusCode::NO_CONTENT)
}

/// Compute the hash a credential with this password would get, and throw it away. Signup
/// calls it where the email is taken, in place of creating the credential, so that a signup
/// costs the same for a registered address as for a new one: its time does not tell which
/// emails have accounts.
#[utoipa::path(
    post,
    path = "/password-hashes",
    request_body = EmailAndPassword,
    responses(
        (status = 204, description = "Hashed, and nothing stored"),
        (status = 422, description = "Invalid fields", body = Problem),
    )
)]
async fn hash_and_discard(
    State(state): State<AppState>,
    Json(body): Json<EmailAndPassword>,
) -> Result<StatusCode, ApiError> {
    let (_, password) = email_and_password(body, BTreeMap::new())?;
    state
        .hasher
        .hash(password.expose())
        .await
        .map_err(hashing_failed)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The valid email and password of a body; a problem naming every bad field (those in
/// `errors` already included) otherwise.
fn email_and_password(
    body: EmailAndPassword,
    mut errors: BTreeMap<String, String>,
) -> Result<(Email, Password), Problem> {
    let email = parse_email(&body.email, &mut errors);
    let password = {
        let email = email.as_ref().map_or("", Email::as_str);
        let user_inputs: Vec<&str> = [Some(email), body.display_name.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        Password::parse(body.password, &user_inputs)
            .map_err(|error| errors.insert("password".to_owned(), error.to_string()))
            .ok()
    };
    match (email, password) {
        (Some(email), Some(password)) if errors.is_empty() => Ok((email, password)),
        _ => Err(Problem::validation(errors)),
    }
}

/// The answer when a credential for `user_id` or `email` already exists.
async fn existing_answer(db: &Db, user_id: Uuid, email: &Email) -> Result<Option<Response>, ApiError> {
    if let Some(existing) = store::find_by_user(db, user_id).await? {
        if existing.email != email.as_str() {
            return Err(conflict("this user already has a credential for another email").into());
        }
        let view = CredentialView {
            user_id,
            email: existing.email,
            verified: existing.verified,
        };
        return Ok(Some((StatusCode::OK, Json(view)).into_response()));
    }
    if store::find_by_email(db, email.as_str()).await?.is_some() {
        return Err(conflict("the email belongs to another user").into());
    }
    Ok(None)
}

fn conflict(detail: &str) -> Problem {
    Problem::typed(StatusCode::CONFLICT, "credential-conflict", "Conflict", detail)
}

fn replaced() -> Problem {
    Problem::typed(
        StatusCode::GONE,
        "credential-replaced",
        "Account replaced",
        "a newer signup for the address replaced this account: it gets no credential",
    )
}

/// Which delete.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
struct DeleteQuery {
    /// A newer signup for the address replaced the account: the user id never gets a
    /// credential again (its own signup may still be on its way).
    #[serde(default)]
    replaced: bool,
}

/// Remove the credential of a user (signup's compensation); 204 whether or not it existed.
/// With `replaced`, a newer signup for the address replaced the account: the id is refused a
/// credential from then on.
#[utoipa::path(
    delete,
    path = "/credentials/{user_id}",
    params(("user_id" = Uuid, Path, description = "The user's id"), DeleteQuery),
    responses((status = 204, description = "Gone (or never there)"), (status = 422, body = Problem))
)]
async fn delete_credential(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
    Query(query): Query<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    let mut errors = BTreeMap::new();
    let Some(user_id) = parse_user_id(&user_id, &mut errors) else {
        return Err(Problem::validation(errors).into());
    };
    if query.replaced {
        store::replace(&state.db, user_id).await?;
    } else {
        store::delete(&state.db, user_id).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Log in: an access token and a new refresh session for a correct email and password of a
/// verified account.
#[utoipa::path(
    post,
    path = "/sessions",
    request_body = EmailAndPassword,
    responses(
        (status = 200, description = "Logged in; the refresh token is also set as a cookie", body = sessions::SessionView),
        (status = 401, description = "Wrong email or password (the same answer for both)", body = Problem),
        (status = 403, description = "The email is not verified yet", body = Problem),
        (status = 422, description = "Invalid fields", body = Problem),
        (status = 429, description = "Too many failed logins; see Retry-After", body = Problem),
    )
)]
async fn create_session(
    State(state): State<AppState>,
    ClientAddress(address): ClientAddress,
    headers: HeaderMap,
    Json(body): Json<EmailAndPassword>,
) -> Result<Response, ApiError> {
    let mut errors = BTreeMap::new();
    let email = parse_email(&body.email, &mut errors);
    if body.password.is_empty() {
        errors.insert("password".to_owned(), "must not be empty".to_owned());
    } else if body.password.chars().count() > MAX_CHARS {
        // No stored password is longer, so a longer one is wrong without costing a hash of it.
        errors.insert("password".to_owned(), PasswordError::TooLong.to_string());
    }
    let (Some(email), true) = (email, errors.is_empty()) else {
        return Err(Problem::validation(errors).into());
    };
    let password = body.password;

    // Without a known address (never when served), every such client shares one.
    let client = address.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let subjects = Subject::of_login(email.as_str(), client);
    let now = throttle::now_millis();
    if let Err(locked_until) = store::reserve(&state.db, &subjects, now, &state.throttle).await? {
        metrics::counter!("passwords_logins_total", "outcome" => "throttled").increment(1);
        return Ok(too_many_failures(throttle::retry_after_secs(locked_until, now)));
    }

    let credential = store::find_by_email(&state.db, email.as_str()).await?;
    let matches = match &credential {
        Some(credential) => state
            .hasher
            .verify(&password, &credential.phc_hash)
            .await
            .map_err(hashing_failed)?,
        None => {
            // As long as a wrong password, so that timing does not tell which emails exist.
            state
                .hasher
                .verify_nothing(&password)
                .await
                .map_err(hashing_failed)?;
            false
        }
    };
    let Some(credential) = credential.filter(|_| matches) else {
        // The reservation counted it as a failure already.
        metrics::counter!("passwords_logins_total", "outcome" => "wrong_credentials").increment(1);
        return Err(Problem::typed(
            StatusCode::UNAUTHORIZED,
            "invalid-credentials",
            "Invalid credentials",
            "the email or the password is wrong",
        )
        .into());
    };
    store::release(&state.db, &subjects, &state.throttle).await?;

    if state.hasher.needs_upgrade(&credential.phc_hash) {
        upgrade_hash(&state, &credential, &password).await;
    }
    if !credential.verified {
        metrics::counter!("passwords_logins_total", "outcome" => "unverified").increment(1);
        return Err(Problem::typed(
            StatusCode::FORBIDDEN,
            "email-not-verified",
            "Email not verified",
            "follow the link in the verification mail first",
        )
        .into());
    }
    let response = sessions::start(&state, credential.user_id, address, &headers).await?;
    metrics::counter!("passwords_logins_total", "outcome" => "ok").increment(1);
    Ok(response)
}

/// Re-hash a password whose stored hash is below today's cost. A failure is logged, never
/// the login's: the old hash still works.
async fn upgrade_hash(state: &AppState, credential: &store::Credential, password: &str) {
    let upgraded = match state.hasher.hash(password).await {
        Ok(new) => store::replace_hash(&state.db, credential.user_id, &credential.phc_hash, &new)
            .await
            .map_err(anyhow::Error::from),
        Err(error) => Err(error.into()),
    };
    match upgraded {
        Ok(true) => tracing::info!(user_id = %credential.user_id, "password hash upgraded"),
        Ok(false) => {}
        Err(error) => tracing::warn!(error = format!("{error:#}"), "cannot upgrade a password hash"),
    }
}

fn too_many_failures(retry_after_secs: u64) -> Response {
    let mut response = Problem::typed(
        StatusCode::TOO_MANY_REQUESTS,
        "too-many-failed-logins",
        "Too many failed logins",
        format!("too many failed logins: try again in {retry_after_secs} s"),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    response
}

/// The public keys access tokens are checked with (RFC 7517).
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    responses((status = 200, description = "The JWK set: every active key, with kid, alg and use", body = Object))
)]
async fn jwks(State(state): State<AppState>) -> Response {
    let mut response = Json(state.keys.jwks()).into_response();
    // Short, so that a verifier sees a rotation soon even behind a cache.
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    response
}

/// The client's address: the connection's, or the first of `X-Forwarded-For` when the
/// service is told to trust it (behind the gateway).
#[derive(Debug)]
struct ClientAddress(Option<IpAddr>);

impl FromRequestParts<AppState> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let forwarded = state
            .trust_forwarded_for
            .then(|| {
                let value = parts.headers.get("x-forwarded-for")?.to_str().ok()?;
                value.split(',').next()?.trim().parse::<IpAddr>().ok()
            })
            .flatten();
        let connected = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(address)| address.ip());
        Ok(Self(forwarded.or(connected)))
    }
}

/// A valid email address; its problem goes into `errors`.
fn parse_email(text: &str, errors: &mut BTreeMap<String, String>) -> Option<Email> {
    Email::parse(text)
        .map_err(|message| errors.insert("email".to_owned(), message.to_owned()))
        .ok()
}

fn parse_user_id(text: &str, errors: &mut BTreeMap<String, String>) -> Option<Uuid> {
    Uuid::parse_str(text)
        .map_err(|_| errors.insert("user_id".to_owned(), "must be a UUID".to_owned()))
        .ok()
}
