//! Access tokens: what passwords signs for a user at login. The keys themselves
//! (`JWT_SIGNING_KEYS`: PEM parsing, key ids, the published JWKS) are the kit's
//! [`SigningKeys`], shared with the services' own identity keys.

use std::time::Duration;

use dozen_kit::keys::SigningKeys;
use serde::Serialize;
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

/// Sign an access token for `user_id` with the first of `keys`.
pub fn issue(
    keys: &SigningKeys,
    user_id: Uuid,
    policy: &TokenPolicy,
) -> Result<AccessToken, jsonwebtoken::errors::Error> {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = Claims {
        sub: user_id,
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

#[cfg(test)]
mod tests {
    use dozen_kit::keys::generate_signing_key_pem;
    use jsonwebtoken::Algorithm;

    use super::*;

    #[test]
    fn an_access_token_names_its_user_and_the_signing_key() {
        let keys = SigningKeys::parse(&generate_signing_key_pem()).expect("parses");
        let policy = TokenPolicy {
            issuer: "dozen".to_owned(),
            audience: "dozen".to_owned(),
            ttl: Duration::from_secs(900),
        };
        let user = Uuid::new_v4();
        let token = issue(&keys, user, &policy).expect("signs");
        assert_eq!(token.expires_in, 900);
        let header = jsonwebtoken::decode_header(&token.token).expect("a JWT");
        assert_eq!(header.kid.as_deref(), Some(keys.signing_kid()));
        assert_eq!(header.alg, Algorithm::EdDSA);
    }
}
