//! Ed25519 signing keys, done one way for every token dozen signs: the access tokens of
//! passwords (`JWT_SIGNING_KEYS`) and the identity tokens every service sends its peers
//! (`SERVICE_SIGNING_KEYS`, see [`crate::identity`]).
//!
//! Keys are given as PEM (PKCS#8, as `openssl genpkey -algorithm ed25519` writes them); several
//! may be given for rotation: the first signs, every one is public so tokens signed by a
//! retiring key still verify until they expire. A key's id is its RFC 7638 thumbprint, so it is
//! the same on every instance and after every restart without being configured.

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, OctetKeyPairParameters,
    OctetKeyPairType, PublicKeyUse, ThumbprintHash,
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde::Serialize;

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

/// A clap value parser for a PEM setting. The keys are checked at start-up rather than here:
/// clap's report of a bad value shows the value (a multi-line PEM), which must not reach a log.
pub fn parse_secret_pem(text: &str) -> Result<SecretPem, String> {
    Ok(SecretPem(text.to_owned()))
}

/// One signing key: the private half to sign, the public half to publish.
#[derive(Clone)]
struct SigningKey {
    kid: String,
    encoding: EncodingKey,
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

    /// Every public key, each with its `kid`, `alg` and `use`.
    pub fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: self.keys.iter().map(|key| key.jwk.clone()).collect(),
        }
    }

    /// The public half of the key named `kid`, to check a token this service signed itself.
    pub fn decoding_key(&self, kid: &str) -> Option<DecodingKey> {
        let key = self.keys.iter().find(|key| key.kid == kid)?;
        DecodingKey::from_jwk(&key.jwk).ok()
    }

    /// Sign `claims` as a compact JWT (EdDSA) with the first key, naming it in `kid`.
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, jsonwebtoken::errors::Error> {
        let key = &self.keys[0];
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, claims, &key.encoding)
    }
}

impl SigningKey {
    fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        let pair = Ed25519KeyPair::from_pkcs8(der)
            .map_err(|_| "not an Ed25519 private key in PKCS#8 form".to_owned())?;
        let jwk = public_jwk(pair.public_key().as_ref())?;
        Ok(Self {
            kid: jwk.common.key_id.clone().unwrap_or_default(),
            encoding: EncodingKey::from_ed_der(der),
            jwk,
        })
    }
}

/// The JWK of an Ed25519 public key (its 32 bytes), with its thumbprint as `kid`, `alg`
/// EdDSA and `use` sig.
pub fn public_jwk(public_key: &[u8]) -> Result<Jwk, String> {
    let mut jwk = Jwk {
        common: CommonParameters {
            public_key_use: Some(PublicKeyUse::Signature),
            key_algorithm: Some(KeyAlgorithm::EdDSA),
            ..CommonParameters::default()
        },
        algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
            key_type: OctetKeyPairType::OctetKeyPair,
            curve: EllipticCurve::Ed25519,
            x: URL_SAFE_NO_PAD.encode(public_key),
        }),
    };
    jwk.common.key_id = Some(thumbprint(&jwk)?);
    Ok(jwk)
}

/// The RFC 7638 thumbprint (SHA-256, base64url) of a public key: its `kid`.
pub fn thumbprint(jwk: &Jwk) -> Result<String, String> {
    jwk.thumbprint(ThumbprintHash::SHA256)
        .map_err(|e| format!("cannot compute the key id: {e}"))
}

/// A new Ed25519 signing key as a PEM `PRIVATE KEY` block (PKCS#8 v1, as `openssl genpkey
/// -algorithm ed25519` writes it). `dozen up` and `dozen keys` make keys with it.
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

    #[test]
    fn a_generated_key_parses_and_its_id_is_stable() {
        let pem = generate_signing_key_pem();
        let once = SigningKeys::parse(&pem).expect("parses");
        let again = SigningKeys::parse(&pem).expect("parses");
        assert_eq!(once.signing_kid(), again.signing_kid());
        assert_eq!(once.signing_kid().len(), 43, "a base64url SHA-256 thumbprint");
    }

    #[test]
    fn several_keys_are_all_public_and_the_first_signs() {
        let (first, second) = (generate_signing_key_pem(), generate_signing_key_pem());
        let keys = SigningKeys::parse(&format!("{first}\n{second}")).expect("parses");
        let jwks = keys.jwks();
        assert_eq!(jwks.keys.len(), 2);
        let kid = SigningKeys::parse(&first)
            .expect("parses")
            .signing_kid()
            .to_owned();
        assert_eq!(keys.signing_kid(), kid);
        let token = keys.sign(&serde_json::json!({"sub": "x"})).expect("signs");
        let header = jsonwebtoken::decode_header(&token).expect("a JWT");
        assert_eq!(header.kid.as_deref(), Some(kid.as_str()));
        assert_eq!(header.alg, Algorithm::EdDSA);
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
