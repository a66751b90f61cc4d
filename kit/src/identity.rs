//! Service identities: which service is calling, proved on every call between services, so
//! that reaching a service's port is not enough to use its internal routes.
//!
//! Each service has its own Ed25519 keys (`SERVICE_SIGNING_KEYS`, PEM; the first signs, as
//! with [`crate::keys`]) and knows the public keys of every service it trusts (`SERVICE_KEYS`,
//! the trust bundle: a JSON object naming each service and its keys as a JWK set,
//! `{"signup": {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "…", "kid": "…"}]}, …}`, each
//! `kid` the key's RFC 7638 thumbprint). `dozen keys` writes both.
//!
//! The kit's HTTP client sends with every call `Service-Authorization: Bearer <JWT>`, a token
//! signed by the caller (EdDSA) with the caller's name as `iss`, the callee's as `aud`, and an
//! `exp` [`TOKEN_TTL`] ahead. It is minted once per callee and reused until
//! [`RENEW_BEFORE`] before it expires, so a call costs a header, not a signature. The header is
//! its own: `Authorization` carries the user's access token, which the gateway forwards.
//!
//! A route that only services may call names its callers next to itself:
//!
//! ```ignore
//! let internal = OpenApiRouter::new()
//!     .routes(routes!(create_profile))
//!     .route_layer(identity.callers(&["signup"]));
//! ```
//!
//! A call without a valid token (missing, malformed, signed by an unknown key, expired, for
//! another audience, or with an issuer other than the key's owner) gets a 401 problem; a
//! valid caller not on the list a 403 problem. Each refusal logs one warning (the caller
//! claimed, the route, the reason; never the token) and counts in
//! `service_calls_refused_total` by reason.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::extract::{MatchedPath, Request};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::Args;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::Problem;
use crate::keys::{SecretPem, SigningKeys, parse_secret_pem, thumbprint};

/// The header a service's identity token travels in.
pub const HEADER: HeaderName = HeaderName::from_static("service-authorization");

/// How long a minted token is valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);

/// A token is renewed when it has less than this left, so none expires on the way.
pub const RENEW_BEFORE: Duration = Duration::from_secs(20);

/// The longest lifetime (`exp - iat`) a token may claim: a longer one is refused, so a leaked
/// token cannot have been made to last.
const MAX_LIFETIME_SECS: u64 = 300;

/// Clock skew allowed between services when checking `exp` and `iat`.
const LEEWAY_SECS: u64 = 5;

/// The settings of a service's identity.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Service identity")]
pub struct IdentitySettings {
    /// Required to serve. This service's own Ed25519 private keys, PEM (PKCS#8, as from
    /// `openssl genpkey -algorithm ed25519`, or `dozen keys`), concatenated. The first signs
    /// the identity tokens of its calls; to rotate, put a new key first, add its public key to
    /// SERVICE_KEYS everywhere, and drop the old one once every callee has the new bundle.
    #[arg(long, env = "SERVICE_SIGNING_KEYS", hide_env_values = true, value_parser = parse_secret_pem)]
    pub service_signing_keys: Option<SecretPem>,

    /// Required to serve. The trust bundle: a JSON object naming each service whose calls
    /// are accepted and its public keys as a JWK set, `{"signup": {"keys": [...]}, ...}`
    /// (`dozen keys` writes it). Every service gets the same bundle.
    #[arg(long, env = "SERVICE_KEYS", hide_env_values = true)]
    pub service_keys: Option<String>,
}

/// This service's identity: its name, the keys it signs its calls with, and the services it
/// trusts. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Identity {
    signer: Arc<Signer>,
    trust: Arc<TrustBundle>,
}

impl Identity {
    /// The identity of service `name` from its settings; an error names the setting at fault.
    pub fn from_settings(name: &'static str, settings: &IdentitySettings) -> anyhow::Result<Self> {
        let pem = settings.service_signing_keys.as_ref().context(
            "missing required setting SERVICE_SIGNING_KEYS (this service's Ed25519 private keys in PEM)",
        )?;
        let keys = SigningKeys::parse(pem.expose())
            .map_err(|reason| anyhow::anyhow!("invalid SERVICE_SIGNING_KEYS: {reason}"))?;
        let bundle = settings.service_keys.as_deref().context(
            "missing required setting SERVICE_KEYS (the trust bundle of every service's public keys)",
        )?;
        let trust =
            TrustBundle::parse(bundle).map_err(|reason| anyhow::anyhow!("invalid SERVICE_KEYS: {reason}"))?;
        match trust.owner(keys.signing_kid()) {
            Some(owner) if owner == name => {}
            Some(owner) => anyhow::bail!(
                "invalid SERVICE_SIGNING_KEYS: its first key belongs to {owner} in SERVICE_KEYS, not to {name}"
            ),
            // Allowed: a service may sign before every callee trusts its key (a rotation in
            // progress); its callees will refuse it until they do.
            None => tracing::warn!(
                kid = keys.signing_kid(),
                "SERVICE_SIGNING_KEYS: the signing key is not in SERVICE_KEYS"
            ),
        }
        tracing::info!(
            signing_kid = keys.signing_kid(),
            trusted = trust.services().collect::<Vec<_>>().join(","),
            "service identity loaded"
        );
        Ok(Self {
            signer: Arc::new(Signer { name, keys }),
            trust: Arc::new(trust),
        })
    }

    /// What signs this service's calls.
    pub fn signer(&self) -> Arc<Signer> {
        self.signer.clone()
    }

    /// A layer for routes that only the services named in `allowed` may call.
    pub fn callers(&self, allowed: &'static [&'static str]) -> RequireCallers {
        for caller in allowed {
            if !self.trust.services().any(|name| name == *caller) {
                tracing::warn!(
                    caller,
                    "SERVICE_KEYS has no key of a service a route accepts calls from"
                );
            }
        }
        RequireCallers {
            callee: self.signer.name,
            trust: self.trust.clone(),
            allowed,
        }
    }

    /// The caller named by the identity token in `headers`, if it is valid and meant for this
    /// service.
    pub fn verify(&self, headers: &HeaderMap) -> Result<String, Refusal> {
        verify(&self.trust, self.signer.name, headers)
    }
}

/// Signs a service's identity tokens.
pub struct Signer {
    name: &'static str,
    keys: SigningKeys,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("name", &self.name)
            .field("kid", &self.keys.signing_kid())
            .finish()
    }
}

impl Signer {
    /// The signer of service `name`.
    pub fn new(name: &'static str, keys: SigningKeys) -> Self {
        Self { name, keys }
    }

    /// A fresh token for calls to `audience`, valid for [`TOKEN_TTL`].
    pub fn mint(&self, audience: &str) -> Result<String, jsonwebtoken::errors::Error> {
        let now = jsonwebtoken::get_current_timestamp();
        mint(&self.keys, self.name, audience, now, now + TOKEN_TTL.as_secs())
    }
}

/// The claims of an identity token.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    iat: u64,
    exp: u64,
}

/// Sign an identity token of `issuer` for `audience`, issued and expiring at these Unix
/// times. The one way tokens are made; tests use it to make expired or misdirected ones.
pub fn mint(
    keys: &SigningKeys,
    issuer: &str,
    audience: &str,
    issued_at: u64,
    expires_at: u64,
) -> Result<String, jsonwebtoken::errors::Error> {
    keys.sign(&Claims {
        iss: issuer.to_owned(),
        aud: audience.to_owned(),
        iat: issued_at,
        exp: expires_at,
    })
}

/// The token a caller sends to one callee, reused until it is close to expiring.
#[derive(Debug, Default)]
pub(crate) struct TokenCache {
    current: Mutex<Option<(HeaderValue, Instant)>>,
}

impl TokenCache {
    /// The `Service-Authorization` value for calls to `audience`: the cached one, or a new one
    /// once the cached one has less than [`RENEW_BEFORE`] left.
    pub(crate) fn header(&self, signer: &Signer, audience: &str) -> Option<HeaderValue> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((value, renew_at)) = current.as_ref()
            && Instant::now() < *renew_at
        {
            return Some(value.clone());
        }
        let token = match signer.mint(audience) {
            Ok(token) => token,
            Err(error) => {
                // The callee will answer 401, which the caller reports.
                tracing::error!(error = %error, audience, "cannot sign a service identity token");
                return None;
            }
        };
        let value = HeaderValue::try_from(format!("Bearer {token}")).ok()?;
        *current = Some((value.clone(), Instant::now() + (TOKEN_TTL - RENEW_BEFORE)));
        Some(value)
    }
}

/// The public keys of the services a callee trusts, by key id.
#[derive(Debug)]
pub struct TrustBundle {
    keys: HashMap<String, TrustedKey>,
}

struct TrustedKey {
    service: String,
    key: DecodingKey,
}

impl std::fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustedKey")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl TrustBundle {
    /// Read a bundle: `{"<service>": {"keys": [<Ed25519 JWK>…]}, …}`. Every key must be an
    /// Ed25519 public key whose `kid`, if given, is its thumbprint; no key may belong to two
    /// services.
    pub fn parse(json: &str) -> Result<Self, String> {
        let services: BTreeMap<String, JwkSet> =
            serde_json::from_str(json).map_err(|e| format!("not a JSON object of JWK sets: {e}"))?;
        let mut keys: HashMap<String, TrustedKey> = HashMap::new();
        for (service, set) in services {
            if service.is_empty()
                || !service
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                return Err(format!("{service:?} is not a service name (a-z, 0-9 and -)"));
            }
            for jwk in &set.keys {
                let AlgorithmParameters::OctetKeyPair(pair) = &jwk.algorithm else {
                    return Err(format!("a key of {service} is not an Ed25519 (OKP) key"));
                };
                if pair.curve != EllipticCurve::Ed25519 {
                    return Err(format!("a key of {service} is not on the Ed25519 curve"));
                }
                let kid = thumbprint(jwk)?;
                if jwk.common.key_id.as_ref().is_some_and(|given| *given != kid) {
                    return Err(format!(
                        "a key of {service} has a kid that is not its RFC 7638 thumbprint ({kid})"
                    ));
                }
                let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("a key of {service}: {e}"))?;
                if let Some(other) = keys.get(&kid)
                    && other.service != service
                {
                    return Err(format!(
                        "key {kid} is listed for both {} and {service}",
                        other.service
                    ));
                }
                keys.insert(
                    kid,
                    TrustedKey {
                        service: service.clone(),
                        key,
                    },
                );
            }
        }
        if keys.is_empty() {
            return Err("it lists no keys".to_owned());
        }
        Ok(Self { keys })
    }

    /// The service that owns key `kid`.
    pub fn owner(&self, kid: &str) -> Option<&str> {
        self.keys.get(kid).map(|key| key.service.as_str())
    }

    /// The names of the services with keys in the bundle.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        let mut names: Vec<&str> = self.keys.values().map(|key| key.service.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names.into_iter()
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No `Service-Authorization` header.
    Missing,
    /// Not `Bearer <JWT>`, no `kid`, or not EdDSA.
    Malformed,
    /// Signed by a key not in the trust bundle.
    UnknownKey,
    /// Past its `exp`.
    Expired,
    /// Meant for another service.
    WrongAudience,
    /// A bad signature, an issuer other than the key's owner, or claims out of bounds.
    Invalid,
    /// A valid identity, but not one the route accepts.
    NotAllowed(String),
}

impl Refusal {
    /// The reason, as logged and counted.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed => "malformed",
            Self::UnknownKey => "unknown_key",
            Self::Expired => "expired",
            Self::WrongAudience => "wrong_audience",
            Self::Invalid => "invalid",
            Self::NotAllowed(_) => "caller_not_allowed",
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        if let Self::NotAllowed(caller) = &self {
            return Problem::typed(
                StatusCode::FORBIDDEN,
                "caller-not-allowed",
                "Forbidden",
                format!("the {caller} service may not call this route"),
            )
            .into_response();
        }
        let detail = match self {
            Self::Missing => "this route needs a service identity (Service-Authorization: Bearer …)",
            Self::Malformed => "the service identity token is malformed",
            Self::UnknownKey => "the service identity token is signed by an unknown key",
            Self::Expired => "the service identity token has expired",
            Self::WrongAudience => "the service identity token is meant for another service",
            Self::Invalid | Self::NotAllowed(_) => "the service identity token is invalid",
        };
        let mut response = Problem::typed(
            StatusCode::UNAUTHORIZED,
            "service-unauthorized",
            "Unauthorized",
            detail,
        )
        .into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer realm="dozen-services""#),
        );
        response
    }
}

/// Check the identity token in `headers` for callee `audience`.
fn verify(trust: &TrustBundle, audience: &str, headers: &HeaderMap) -> Result<String, Refusal> {
    let value = headers.get(&HEADER).ok_or(Refusal::Missing)?;
    let token = value
        .to_str()
        .ok()
        .and_then(|value| value.trim().split_once(' '))
        .filter(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
        .map(|(_, token)| token.trim())
        .ok_or(Refusal::Malformed)?;
    // `alg: none` and unknown algorithms fail here; the key decides the algorithm, never the
    // token.
    let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::Malformed)?;
    if header.alg != Algorithm::EdDSA {
        return Err(Refusal::Malformed);
    }
    let kid = header.kid.ok_or(Refusal::Malformed)?;
    let trusted = trust.keys.get(&kid).ok_or(Refusal::UnknownKey)?;
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.leeway = LEEWAY_SECS;
    validation.set_audience(&[audience]);
    // A key speaks for its owner only: signup's key cannot claim to be the gateway.
    validation.set_issuer(&[&trusted.service]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud"]);
    let claims = jsonwebtoken::decode::<Claims>(token, &trusted.key, &validation)
        .map_err(|error| match error.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => Refusal::Expired,
            jsonwebtoken::errors::ErrorKind::InvalidAudience => Refusal::WrongAudience,
            _ => Refusal::Invalid,
        })?
        .claims;
    let now = jsonwebtoken::get_current_timestamp();
    if claims.iat > now + LEEWAY_SECS || claims.exp.saturating_sub(claims.iat) > MAX_LIFETIME_SECS {
        return Err(Refusal::Invalid);
    }
    Ok(claims.iss)
}

/// The `iss` a token claims, unverified, for the log of a refusal: a short service-like name
/// or nothing, so a forged token cannot write what it likes into the log.
fn claimed_issuer(headers: &HeaderMap) -> Option<String> {
    let token = headers.get(&HEADER)?.to_str().ok()?;
    let payload = token.trim().split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    #[derive(Deserialize)]
    struct Issuer {
        iss: String,
    }
    let iss = serde_json::from_slice::<Issuer>(&bytes).ok()?.iss;
    let plain = iss.len() <= 40
        && iss
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    plain.then_some(iss)
}

/// The caller of a request that passed [`RequireCallers`], in its extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller(pub String);

/// A layer admitting only calls from the services it names ([`Identity::callers`]).
#[derive(Debug, Clone)]
pub struct RequireCallers {
    callee: &'static str,
    trust: Arc<TrustBundle>,
    allowed: &'static [&'static str],
}

impl RequireCallers {
    /// The caller of a request with these headers, or why it is refused.
    fn admit(&self, headers: &HeaderMap) -> Result<String, Refusal> {
        let caller = verify(&self.trust, self.callee, headers)?;
        if self.allowed.contains(&caller.as_str()) {
            Ok(caller)
        } else {
            Err(Refusal::NotAllowed(caller))
        }
    }
}

impl<S> tower::Layer<S> for RequireCallers {
    type Service = RequireCallersService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireCallersService {
            inner,
            rule: self.clone(),
        }
    }
}

/// The service of [`RequireCallers`].
#[derive(Debug, Clone)]
pub struct RequireCallersService<S> {
    inner: S,
    rule: RequireCallers,
}

impl<S> tower::Service<Request> for RequireCallersService<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        match self.rule.admit(request.headers()) {
            Ok(caller) => {
                request.extensions_mut().insert(Caller(caller));
                Box::pin(self.inner.call(request))
            }
            Err(refusal) => {
                let claimed = match &refusal {
                    Refusal::NotAllowed(caller) => Some(caller.clone()),
                    _ => claimed_issuer(request.headers()),
                };
                let route = request.extensions().get::<MatchedPath>().map_or_else(
                    || request.uri().path().to_owned(),
                    |path| path.as_str().to_owned(),
                );
                tracing::warn!(
                    caller = claimed.as_deref().unwrap_or("(none)"),
                    method = %request.method(),
                    route,
                    reason = refusal.reason(),
                    "refused a call between services"
                );
                refused_counter(refusal.reason()).increment(1);
                Box::pin(std::future::ready(Ok(refusal.into_response())))
            }
        }
    }
}

/// `service_calls_refused_total` for `reason`.
fn refused_counter(reason: &'static str) -> metrics::Counter {
    static DESCRIBED: OnceLock<()> = OnceLock::new();
    DESCRIBED.get_or_init(|| {
        crate::metrics::recorder();
        metrics::describe_counter!(
            "service_calls_refused_total",
            "Calls to internal routes refused for their service identity, by reason"
        );
    });
    metrics::counter!("service_calls_refused_total", "reason" => reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::generate_signing_key_pem;

    struct Fixture {
        signup: SigningKeys,
        friends: SigningKeys,
        trust: TrustBundle,
    }

    fn bundle_of(services: &[(&str, &SigningKeys)]) -> String {
        let map: BTreeMap<&str, JwkSet> = services.iter().map(|(name, keys)| (*name, keys.jwks())).collect();
        serde_json::to_string(&map).expect("JSON")
    }

    fn fixture() -> Fixture {
        let signup = SigningKeys::parse(&generate_signing_key_pem()).expect("a key");
        let friends = SigningKeys::parse(&generate_signing_key_pem()).expect("a key");
        let trust =
            TrustBundle::parse(&bundle_of(&[("signup", &signup), ("friends", &friends)])).expect("a bundle");
        Fixture {
            signup,
            friends,
            trust,
        }
    }

    fn headers(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            HEADER,
            HeaderValue::try_from(format!("Bearer {token}")).expect("a value"),
        );
        headers
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    #[test]
    fn a_token_is_accepted_by_its_audience_only_and_names_its_issuer() {
        let f = fixture();
        let token = mint(&f.signup, "signup", "users", now(), now() + 60).expect("signs");
        assert_eq!(
            verify(&f.trust, "users", &headers(&token)),
            Ok("signup".to_owned())
        );
        assert_eq!(
            verify(&f.trust, "passwords", &headers(&token)),
            Err(Refusal::WrongAudience)
        );
    }

    #[test]
    fn a_key_cannot_speak_for_another_service() {
        let f = fixture();
        let token = mint(&f.friends, "signup", "users", now(), now() + 60).expect("signs");
        assert_eq!(verify(&f.trust, "users", &headers(&token)), Err(Refusal::Invalid));
    }

    #[test]
    fn expired_long_lived_unknown_and_malformed_tokens_are_refused() {
        let f = fixture();
        let expired = mint(&f.signup, "signup", "users", now() - 120, now() - 60).expect("signs");
        assert_eq!(
            verify(&f.trust, "users", &headers(&expired)),
            Err(Refusal::Expired)
        );
        let long = mint(&f.signup, "signup", "users", now(), now() + 3600).expect("signs");
        assert_eq!(verify(&f.trust, "users", &headers(&long)), Err(Refusal::Invalid));
        let stranger = SigningKeys::parse(&generate_signing_key_pem()).expect("a key");
        let unknown = mint(&stranger, "signup", "users", now(), now() + 60).expect("signs");
        assert_eq!(
            verify(&f.trust, "users", &headers(&unknown)),
            Err(Refusal::UnknownKey)
        );
        assert_eq!(
            verify(&f.trust, "users", &HeaderMap::new()),
            Err(Refusal::Missing)
        );
        for bad in ["x", "a.b.c", "eyJhbGciOiJub25lIn0.e30."] {
            assert_eq!(
                verify(&f.trust, "users", &headers(bad)),
                Err(Refusal::Malformed),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_bundle_refuses_keys_it_cannot_trust() {
        let f = fixture();
        let jwks = serde_json::to_value(f.signup.jwks()).expect("JSON");
        let twice = serde_json::json!({ "signup": jwks, "gateway": jwks }).to_string();
        assert!(
            TrustBundle::parse(&twice)
                .expect_err("one key, two owners")
                .contains("both")
        );
        let mut wrong_kid = jwks.clone();
        wrong_kid["keys"][0]["kid"] = "not-the-thumbprint".into();
        let wrong = serde_json::json!({ "signup": wrong_kid }).to_string();
        assert!(TrustBundle::parse(&wrong).is_err());
        for bad in ["", "[]", "{}", r#"{"Signup!": {"keys": []}}"#] {
            assert!(TrustBundle::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(f.trust.services().collect::<Vec<_>>(), ["friends", "signup"]);
    }

    #[test]
    fn a_cached_token_is_reused_until_it_is_close_to_expiring() {
        let f = fixture();
        let signer = Signer::new("signup", f.signup.clone());
        let cache = TokenCache::default();
        let first = cache.header(&signer, "users").expect("a token");
        assert_eq!(cache.header(&signer, "users"), Some(first.clone()));
        let token = first.to_str().expect("text").trim_start_matches("Bearer ");
        assert_eq!(
            verify(&f.trust, "users", &headers(token)),
            Ok("signup".to_owned())
        );
    }
}
