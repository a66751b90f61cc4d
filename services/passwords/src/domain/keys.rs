//! The JWT signing keys and the tokens they sign. Keys are Ed25519 (EdDSA), given as PEM
//! (PKCS#8) in `JWT_SIGNING_KEYS`; several may be given for rotation: the first signs, every
//! one is published in the JWKS so tokens signed by a retiring key still verify until they
//! expire. A key's id is its RFC 7638 thumbprint, so it is the same on every instance and
//! after every restart without being configured.

use std::time::Duration;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use dozen_kit::auth::AuthError;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, OctetKeyPairParameters,
    OctetKeyPairType, PublicKeyUse, ThumbprintHash,
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";

/// Private key material as configured; its `Debug` never shows it.
#[derive(Clone)]
pub struct SecretPem(pub String);

impl SecretPem {
    /// The PEM text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretPem(hidden)")
    }
}

/// One signing key: the private half to sign, the public half to publish.
#[derive(Clone)]
struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    jwk: Jwk,
}

/// The configured keys, first one signing. Its `Debug` shows key ids only.
#[derive(Clone)]
pub struct SigningKeys {
    keys: Vec<SigningKey>,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|key| key.kid.as_str()).collect();
        f.debug_struct("SigningKeys").field("kids", &kids).finish()
    }
}

impl SigningKeys {
    /// Read one or more PEM `PRIVATE KEY` blocks (Ed25519, PKCS#8 v1 or v2). The message of an
    /// error never contains key material.
    pub fn parse(pem: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        let mut rest = pem;
        while let Some(start) = rest.find(PEM_BEGIN) {
            let body_start = start + PEM_BEGIN.len();
            let Some(length) = rest[body_start..].find(PEM_END) else {
                return Err(format!("key {} has no END line", keys.len() + 1));
            };
            let body: String = rest[body_start..body_start + length]
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            let der = STANDARD
                .decode(body)
                .map_err(|_| format!("key {} is not valid base64", keys.len() + 1))?;
            keys.push(SigningKey::from_pkcs8(&der).map_err(|e| format!("key {}: {e}", keys.len() + 1))?);
            rest = &rest[body_start + length + PEM_END.len()..];
        }
        if keys.is_empty() {
            return Err("expected one or more PEM blocks '-----BEGIN PRIVATE KEY-----' (Ed25519)".to_owned());
        }
        Ok(Self { keys })
    }

    /// The id of the key that signs.
    pub fn signing_kid(&self) -> &str {
        &self.keys[0].kid
    }

    /// Every public key, as published at `/.well-known/jwks.json`.
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: self.keys.iter().map(|key| key.jwk.clone()).collect(),
        }
    }

    /// Sign an access token for `user_id` in the session `session_id` (its `sid` claim).
    pub fn issue(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        policy: &TokenPolicy,
    ) -> Result<AccessToken, jsonwebtoken::errors::Error> {
        let key = &self.keys[0];
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: user_id,
            sid: session_id,
            iss: &policy.issuer,
            aud: &policy.audience,
            iat: now,
            exp: now + policy.ttl.as_secs(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        Ok(AccessToken {
            token: jsonwebtoken::encode(&header, &claims, &key.encoding)?,
            expires_in: policy.ttl.as_secs(),
        })
    }

    /// Check one of this service's own access tokens as every other service does (signature
    /// by a published key, `exp`, `iss`, `aud`), without fetching the key set: the session it
    /// was issued in, for the routes that act on sessions. A token without a `sid` is invalid.
    pub fn verify(&self, token: &str, policy: &TokenPolicy) -> Result<SessionCaller, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let kid = header.kid.ok_or(AuthError::Malformed)?;
        let key = self
            .keys
            .iter()
            .find(|key| key.kid == kid)
            .ok_or(AuthError::UnknownKey)?;
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::Invalid);
        }
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = LEEWAY_SECS;
        validation.set_issuer(&[&policy.issuer]);
        validation.set_audience(&[&policy.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<SessionClaims>(token, &key.decoding, &validation)
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

impl SigningKey {
    fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        let pair = Ed25519KeyPair::from_pkcs8(der)
            .map_err(|_| "not an Ed25519 private key in PKCS#8 form".to_owned())?;
        let mut jwk = Jwk {
            common: CommonParameters {
                public_key_use: Some(PublicKeyUse::Signature),
                key_algorithm: Some(KeyAlgorithm::EdDSA),
                ..CommonParameters::default()
            },
            algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                key_type: OctetKeyPairType::OctetKeyPair,
                curve: EllipticCurve::Ed25519,
                x: URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
            }),
        };
        let kid = jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|e| format!("cannot compute the key id: {e}"))?;
        jwk.common.key_id = Some(kid.clone());
        let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| format!("cannot read the public key: {e}"))?;
        Ok(Self {
            kid,
            encoding: EncodingKey::from_ed_der(der),
            decoding,
            jwk,
        })
    }
}

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

/// A new Ed25519 signing key as a PEM `PRIVATE KEY` block (PKCS#8 v1, as `openssl genpkey
/// -algorithm ed25519` writes it), for `JWT_SIGNING_KEYS`. `dozen up` makes the development
/// key with it.
pub fn generate_signing_key_pem() -> String {
    // Key generation fails only if the system's random source does: nothing can go on then.
    let pair = Ed25519KeyPair::generate().expect("the system random source works");
    let der = pair.to_pkcs8v1().expect("a fresh key encodes");
    let body = STANDARD.encode(der.as_ref());
    let mut pem = format!("{PEM_BEGIN}\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(PEM_END);
    pem.push('\n');
    pem
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> TokenPolicy {
        TokenPolicy {
            issuer: "dozen".to_owned(),
            audience: "dozen".to_owned(),
            ttl: Duration::from_secs(900),
        }
    }

    #[test]
    fn a_generated_key_parses_and_its_id_is_stable() {
        let pem = generate_signing_key_pem();
        let once = SigningKeys::parse(&pem).expect("parses");
        let again = SigningKeys::parse(&pem).expect("parses");
        assert_eq!(once.signing_kid(), again.signing_kid());
        assert_eq!(once.signing_kid().len(), 43, "a base64url SHA-256 thumbprint");
    }

    #[test]
    fn several_keys_are_all_published_and_the_first_signs() {
        let (first, second) = (generate_signing_key_pem(), generate_signing_key_pem());
        let keys = SigningKeys::parse(&format!("{first}\n{second}")).expect("parses");
        let jwks = keys.jwks();
        assert_eq!(jwks.keys.len(), 2);
        let kid = SigningKeys::parse(&first)
            .expect("parses")
            .signing_kid()
            .to_owned();
        assert_eq!(keys.signing_kid(), kid);
        let token = keys
            .issue(Uuid::new_v4(), Uuid::new_v4(), &policy())
            .expect("signs");
        let header = jsonwebtoken::decode_header(&token.token).expect("a JWT");
        assert_eq!(header.kid.as_deref(), Some(kid.as_str()));
        assert_eq!(header.alg, Algorithm::EdDSA);
    }

    #[test]
    fn a_token_is_checked_against_the_keys_and_names_its_session() {
        let keys = SigningKeys::parse(&generate_signing_key_pem()).expect("parses");
        let (user_id, session_id) = (Uuid::new_v4(), Uuid::new_v4());
        let token = keys.issue(user_id, session_id, &policy()).expect("signs");
        assert_eq!(
            keys.verify(&token.token, &policy()),
            Ok(SessionCaller { user_id, session_id })
        );
        let other = SigningKeys::parse(&generate_signing_key_pem()).expect("parses");
        assert_eq!(other.verify(&token.token, &policy()), Err(AuthError::UnknownKey));
        let elsewhere = TokenPolicy {
            audience: "elsewhere".to_owned(),
            ..policy()
        };
        assert_eq!(keys.verify(&token.token, &elsewhere), Err(AuthError::Invalid));
        assert_eq!(keys.verify("not.a.jwt", &policy()), Err(AuthError::Malformed));
    }

    #[test]
    fn bad_keys_are_refused_without_echoing_them() {
        for bad in [
            "",
            "not a key",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----",
            "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----",
            "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA",
        ] {
            let error = SigningKeys::parse(bad).expect_err(bad);
            assert!(!error.contains("AAAA") && !error.contains("MC4C"), "{error}");
        }
    }
}
