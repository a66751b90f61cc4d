//! Access tokens: what passwords signs for a user at login, and how it reads its own tokens
//! back for the routes that act on sessions. The keys themselves (`JWT_SIGNING_KEYS`: PEM
//! parsing, key ids, the published JWKS) are the kit's [`SigningKeys`], shared with the
//! services' own identity keys.

use std::time::Duration;

use dozen_kit::auth::AuthError;
use dozen_kit::keys::SigningKeys;
use jsonwebtoken::{Algorithm, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What every token says besides its subject.
#[derive(Debug, Clone)]
pub struct TokenPolicy {
    /// `iss`.
    pub issuer: String,
    /// `aud`.
    pub audience: String,
    /// How long a token is valid (`exp - iat`).
    pub ttl: Duration,
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: Uuid,
    sid: Uuid,
    iss: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

/// A signed access token.
#[derive(Debug, Clone)]
pub struct AccessToken {
    /// The compact JWT.
    pub token: String,
    /// Seconds until it expires.
    pub expires_in: u64,
}

/// Sign an access token for `user_id` in the session `session_id` (its `sid` claim) with the
/// first of `keys`.
pub fn issue(
    keys: &SigningKeys,
    user_id: Uuid,
    session_id: Uuid,
    policy: &TokenPolicy,
) -> Result<AccessToken, jsonwebtoken::errors::Error> {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = Claims {
        sub: user_id,
        sid: session_id,
        iss: &policy.issuer,
        aud: &policy.audience,
        iat: now,
        exp: now + policy.ttl.as_secs(),
    };
    Ok(AccessToken {
        token: keys.sign(&claims)?,
        expires_in: policy.ttl.as_secs(),
    })
}

/// Clock skew allowed on `exp`, as the kit's verifier allows.
const LEEWAY_SECS: u64 = 30;

/// Who calls, by an access token of this service: the user and their session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionCaller {
    /// The user (`sub`).
    pub user_id: Uuid,
    /// The session the token was issued in (`sid`).
    pub session_id: Uuid,
}

#[derive(Deserialize)]
struct SessionClaims {
    sub: Uuid,
    sid: Uuid,
}

/// Check one of this service's own access tokens as every other service does (signature by
/// one of `keys`, `exp`, `iss`, `aud`), without fetching the key set: the session it was
/// issued in. A token without a `sid` is invalid.
pub fn verify(keys: &SigningKeys, token: &str, policy: &TokenPolicy) -> Result<SessionCaller, AuthError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
    let kid = header.kid.ok_or(AuthError::Malformed)?;
    let key = keys.decoding_key(&kid).ok_or(AuthError::UnknownKey)?;
    if header.alg != Algorithm::EdDSA {
        return Err(AuthError::Invalid);
    }
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.leeway = LEEWAY_SECS;
    validation.set_issuer(&[&policy.issuer]);
    validation.set_audience(&[&policy.audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    let claims = jsonwebtoken::decode::<SessionClaims>(token, &key, &validation)
        .map_err(|error| match error.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid,
        })?
        .claims;
    Ok(SessionCaller {
        user_id: claims.sub,
        session_id: claims.sid,
    })
}

#[cfg(test)]
mod tests {
    use dozen_kit::keys::generate_signing_key_pem;

    use super::*;

    fn policy() -> TokenPolicy {
        TokenPolicy {
            issuer: "dozen".to_owned(),
            audience: "dozen".to_owned(),
            ttl: Duration::from_secs(900),
        }
    }

    #[test]
    fn an_access_token_names_its_user_and_the_signing_key() {
        let keys = SigningKeys::parse(&generate_signing_key_pem()).expect("parses");
        let token = issue(&keys, Uuid::new_v4(), Uuid::new_v4(), &policy()).expect("signs");
        assert_eq!(token.expires_in, 900);
        let header = jsonwebtoken::decode_header(&token.token).expect("a JWT");
        assert_eq!(header.kid.as_deref(), Some(keys.signing_kid()));
        assert_eq!(header.alg, Algorithm::EdDSA);
    }

    #[test]
    fn a_token_is_checked_against_the_keys_and_names_its_session() {
        let keys = SigningKeys::parse(&generate_signing_key_pem()).expect("parses");
        let (user_id, session_id) = (Uuid::new_v4(), Uuid::new_v4());
        let token = issue(&keys, user_id, session_id, &policy()).expect("signs");
        assert_eq!(
            verify(&keys, &token.token, &policy()),
            Ok(SessionCaller { user_id, session_id })
        );
        let other = SigningKeys::parse(&generate_signing_key_pem()).expect("parses");
        assert_eq!(
            verify(&other, &token.token, &policy()),
            Err(AuthError::UnknownKey)
        );
        let elsewhere = TokenPolicy {
            audience: "elsewhere".to_owned(),
            ..policy()
        };
        assert_eq!(verify(&keys, &token.token, &elsewhere), Err(AuthError::Invalid));
        assert_eq!(verify(&keys, "not.a.jwt", &policy()), Err(AuthError::Malformed));
    }
}
