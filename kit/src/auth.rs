//! Access tokens, checked by every service that acts for a user: no service trusts another to
//! have checked for it. The passwords service signs short-lived JWTs and publishes its public
//! keys at `/.well-known/jwks.json`; a [`JwtVerifier`] fetches that key set, caches it, and
//! checks each token's signature, algorithm, `exp`, `iss` and `aud` locally.
//!
//! Wiring it into a service: flatten [`TokenSettings`] into the service's settings (next to its
//! `PASSWORDS_URL`), build one verifier in `Service::start`, keep it in the router's state,
//! and let the state hand it out; a handler then names its caller with [`Authenticated`]:
//!
//! ```ignore
//! #[derive(Clone)]
//! struct AppState { db: Db, verifier: JwtVerifier }
//!
//! impl FromRef<AppState> for JwtVerifier {
//!     fn from_ref(state: &AppState) -> Self { state.verifier.clone() }
//! }
//!
//! let verifier = JwtVerifier::new(&context.http, &settings.passwords_url, &settings.tokens);
//! let router = OpenApiRouter::new().routes(routes!(me)).with_state(AppState { db, verifier });
//!
//! async fn me(caller: Authenticated, State(state): State<AppState>) -> … { caller.user_id … }
//! ```
//!
//! A request without a valid token never reaches the handler: it gets 401 problem+json with
//! `WWW-Authenticate: Bearer` (RFC 6750). If the key set cannot be fetched at all, the answer
//! is 503: the token may well be fine.
//!
//! The key set is fetched on first use, refetched when older than `max_age` (so retired keys
//! stop verifying), and refetched when a token names an unknown key id (a rotation) — but at
//! most once per `min_refresh_interval`, so a flood of made-up key ids cannot hammer passwords.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use clap::Args;
use http::Method;
use jsonwebtoken::jwk::{JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use uuid::Uuid;

use crate::http::client::{HttpClient, Upstream};
use crate::problem::Problem;

/// Where the passwords service publishes its public keys, under its base URL.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// What every access token must say about where it comes from and whom it is for: set
/// identically on passwords (which signs) and on every service that checks.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Access tokens")]
pub struct TokenSettings {
    /// The issuer (`iss`) of access tokens: set in every token, required when checking one.
    #[arg(long, env = "JWT_ISSUER", default_value = "dozen")]
    pub jwt_issuer: String,

    /// The audience (`aud`) of access tokens: set in every token, required when checking one.
    #[arg(long, env = "JWT_AUDIENCE", default_value = "dozen")]
    pub jwt_audience: String,
}

/// How tolerant and how thrifty a [`JwtVerifier`] is.
#[derive(Debug, Clone, Copy)]
pub struct VerifierOptions {
    /// Clock skew allowed when checking `exp` and `nbf`.
    pub leeway: Duration,
    /// Least time between two fetches of the key set caused by unknown key ids.
    pub min_refresh_interval: Duration,
    /// Least time between two attempts after a failed fetch.
    pub retry_after_failure: Duration,
    /// Age after which the cached key set is fetched again (kept if the fetch fails).
    pub max_age: Duration,
}

impl Default for VerifierOptions {
    fn default() -> Self {
        Self {
            leeway: Duration::from_secs(30),
            min_refresh_interval: Duration::from_secs(10),
            retry_after_failure: Duration::from_secs(1),
            max_age: Duration::from_secs(600),
        }
    }
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer …` header.
    #[error("an access token is required")]
    Missing,
    /// Not a JWT, no key id, or an algorithm that is not supported (such as `none`).
    #[error("the access token is malformed")]
    Malformed,
    /// Signed with a key the passwords service does not publish.
    #[error("the access token was signed by an unknown key")]
    UnknownKey,
    /// Past its `exp`.
    #[error("the access token has expired")]
    Expired,
    /// Bad signature, wrong algorithm for its key, wrong issuer or audience, or bad subject.
    #[error("the access token is invalid")]
    Invalid,
    /// The key set could not be fetched, so nothing can be checked.
    #[error("access tokens cannot be checked right now")]
    KeysUnavailable,
}

impl IntoResponse for AuthError {
    fn into_response(self) -> Response {
        let (status, challenge) = match self {
            Self::KeysUnavailable => {
                return Problem::new(StatusCode::SERVICE_UNAVAILABLE, self.to_string()).into_response();
            }
            Self::Missing => (StatusCode::UNAUTHORIZED, r#"Bearer realm="dozen""#.to_owned()),
            _ => (
                StatusCode::UNAUTHORIZED,
                format!(r#"Bearer realm="dozen", error="invalid_token", error_description="{self}""#),
            ),
        };
        let mut response =
            Problem::typed(status, "unauthorized", "Unauthorized", self.to_string()).into_response();
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

/// What a verified token establishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The user the token was issued to (`sub`).
    pub user_id: Uuid,
    /// When it expires, in seconds since the Unix epoch (`exp`).
    pub expires_at: u64,
}

/// The claims read from a token; signature, `exp`, `iss` and `aud` are checked by
/// `jsonwebtoken` against the [`Validation`].
#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
}

/// A public key from the key set, with the one algorithm it may be used with.
#[derive(Clone)]
struct PublicKey {
    key: DecodingKey,
    algorithm: Algorithm,
}

#[derive(Default)]
struct Cache {
    keys: HashMap<String, PublicKey>,
    fetched_at: Option<Instant>,
}

#[derive(Default)]
struct Fetching {
    last_attempt: Option<Instant>,
    last_failed: bool,
}

struct Inner {
    jwks: Upstream,
    issuer: String,
    audience: String,
    options: VerifierOptions,
    cache: RwLock<Cache>,
    /// Held while fetching, so that concurrent requests wait for one fetch instead of each
    /// making their own.
    fetching: tokio::sync::Mutex<Fetching>,
}

/// Checks access tokens against the passwords service's published keys; cheap to clone, and
/// meant to be shared by the whole service (the cache lives inside).
#[derive(Clone)]
pub struct JwtVerifier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("jwks", &self.inner.jwks.base_url())
            .field("issuer", &self.inner.issuer)
            .field("audience", &self.inner.audience)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// A verifier for tokens from the passwords service at `passwords_url` (its
    /// `PASSWORDS_URL`), expecting the issuer and audience of `settings`.
    pub fn new(http: &HttpClient, passwords_url: &str, settings: &TokenSettings) -> Self {
        let jwks_url = format!("{}{JWKS_PATH}", passwords_url.trim_end_matches('/'));
        Self::from_jwks_url(
            http,
            &jwks_url,
            &settings.jwt_issuer,
            &settings.jwt_audience,
            VerifierOptions::default(),
        )
    }

    /// A verifier reading keys from `jwks_url`, expecting `issuer` and `audience`.
    pub fn from_jwks_url(
        http: &HttpClient,
        jwks_url: &str,
        issuer: &str,
        audience: &str,
        options: VerifierOptions,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                jwks: http.upstream("passwords", jwks_url),
                issuer: issuer.to_owned(),
                audience: audience.to_owned(),
                options,
                cache: RwLock::new(Cache::default()),
                fetching: tokio::sync::Mutex::new(Fetching::default()),
            }),
        }
    }

    /// Check `token` (the compact JWT, without `Bearer `).
    pub async fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        // `alg: none` and other unknown algorithms fail here: `Algorithm` has no such variant.
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let kid = header.kid.ok_or(AuthError::Malformed)?;
        let key = self.key(&kid).await?;
        // The key decides the algorithm, never the token (no RS/HS confusion).
        if header.alg != key.algorithm {
            return Err(AuthError::Invalid);
        }
        let mut validation = Validation::new(key.algorithm);
        validation.leeway = self.inner.options.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.inner.issuer]);
        validation.set_audience(&[&self.inner.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
            .map_err(|error| match error.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid,
            })?
            .claims;
        let user_id = Uuid::parse_str(&claims.sub).map_err(|_| AuthError::Invalid)?;
        Ok(Verified {
            user_id,
            expires_at: claims.exp,
        })
    }

    /// The public key named `kid`, fetching the key set when it is unknown or stale.
    async fn key(&self, kid: &str) -> Result<PublicKey, AuthError> {
        if let (Some(key), false) = self.cached(kid) {
            return Ok(key);
        }
        let mut fetching = self.inner.fetching.lock().await;
        // Another request may have fetched while this one waited.
        if let (Some(key), false) = self.cached(kid) {
            return Ok(key);
        }
        let options = &self.inner.options;
        let pause = if fetching.last_failed {
            options.retry_after_failure
        } else {
            options.min_refresh_interval
        };
        let may_fetch = fetching.last_attempt.is_none_or(|at| at.elapsed() >= pause);
        if may_fetch {
            fetching.last_attempt = Some(Instant::now());
            match self.fetch().await {
                Ok(keys) => {
                    fetching.last_failed = false;
                    let mut cache = self.inner.cache.write().unwrap_or_else(|e| e.into_inner());
                    cache.keys = keys;
                    cache.fetched_at = Some(Instant::now());
                }
                Err(reason) => {
                    fetching.last_failed = true;
                    tracing::warn!(reason, "cannot fetch the access token keys");
                }
            }
        }
        drop(fetching);
        let never_fetched = self
            .inner
            .cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .fetched_at
            .is_none();
        match self.cached(kid) {
            (Some(key), _) => Ok(key),
            (None, _) if never_fetched => Err(AuthError::KeysUnavailable),
            (None, _) => Err(AuthError::UnknownKey),
        }
    }

    /// The cached key named `kid`, and whether the cache is due for a refetch.
    fn cached(&self, kid: &str) -> (Option<PublicKey>, bool) {
        let cache = self.inner.cache.read().unwrap_or_else(|e| e.into_inner());
        let stale = cache
            .fetched_at
            .is_none_or(|at| at.elapsed() >= self.inner.options.max_age);
        (cache.keys.get(kid).cloned(), stale)
    }

    async fn fetch(&self) -> Result<HashMap<String, PublicKey>, String> {
        let response = self
            .inner
            .jwks
            .call(Method::GET, "")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("the key set answered {}", response.status()));
        }
        let set: JwkSet = response.json().await.map_err(|e| e.to_string())?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
                continue;
            }
            // A key without a stated algorithm, or a shared secret, is never used.
            let Some(Ok(algorithm)) = jwk.common.key_algorithm.map(Algorithm::try_from) else {
                continue;
            };
            if matches!(algorithm, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                continue;
            }
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                keys.insert(kid, PublicKey { key, algorithm });
            }
        }
        Ok(keys)
    }
}

/// The caller of a request, established from its bearer token. As a handler argument it
/// rejects every request without a valid token (see [`AuthError`] for the answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Authenticated {
    /// The user the token was issued to.
    pub user_id: Uuid,
}

impl<S> FromRequestParts<S> for Authenticated
where
    S: Send + Sync,
    JwtVerifier: FromRef<S>,
{
    type Rejection = AuthError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let token = bearer_token(parts)?;
        let verified = JwtVerifier::from_ref(state).verify(token).await?;
        Ok(Self {
            user_id: verified.user_id,
        })
    }
}

/// The token of an `Authorization: Bearer <token>` header (without checking it).
pub fn bearer_token(parts: &Parts) -> Result<&str, AuthError> {
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?
        .to_str()
        .map_err(|_| AuthError::Malformed)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(AuthError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use axum::http::Request;

    use super::*;

    fn parts_with(authorization: Option<&str>) -> Parts {
        let mut request = Request::builder().uri("/me");
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        request.body(()).expect("a request").into_parts().0
    }

    #[test]
    fn the_bearer_scheme_is_read_case_insensitively_and_nothing_else_is() {
        assert_eq!(bearer_token(&parts_with(Some("Bearer a.b.c"))), Ok("a.b.c"));
        assert_eq!(bearer_token(&parts_with(Some("bearer  a.b.c "))), Ok("a.b.c"));
        assert_eq!(bearer_token(&parts_with(None)), Err(AuthError::Missing));
        for bad in ["Basic a.b.c", "Bearer", "Bearer ", "a.b.c"] {
            assert_eq!(
                bearer_token(&parts_with(Some(bad))),
                Err(AuthError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_missing_token_gets_a_plain_challenge_and_a_bad_one_says_invalid_token() {
        let missing = AuthError::Missing.into_response();
        assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            missing.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer realm="dozen""#
        );
        for error in [
            AuthError::Malformed,
            AuthError::UnknownKey,
            AuthError::Expired,
            AuthError::Invalid,
        ] {
            let response = error.into_response();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
            let challenge = response.headers()[header::WWW_AUTHENTICATE]
                .to_str()
                .expect("text");
            assert!(challenge.contains(r#"error="invalid_token""#), "{challenge}");
        }
        let unavailable = AuthError::KeysUnavailable.into_response();
        assert_eq!(unavailable.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(unavailable.headers().get(header::WWW_AUTHENTICATE).is_none());
    }
}
