//! Service identities for tests: tokens minted from the keys `dozen up` wrote (an operator's
//! view), and a fixed set of keys for tests that start one service on its own.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::LazyLock;

use dozen_kit::identity;
use dozen_kit::keys::{SigningKeys, generate_signing_key_pem};

use crate::platform::SERVICES;

/// The header a service's identity travels in.
pub const HEADER: &str = "service-authorization";

/// `Bearer <token>` signed by the first key of `pem` as `issuer`, for `audience`, issued and
/// expiring at these Unix times.
pub fn header_signed_by(pem: &str, issuer: &str, audience: &str, issued_at: u64, expires_at: u64) -> String {
    let keys = SigningKeys::parse(pem).expect("a private key");
    let token = identity::mint(&keys, issuer, audience, issued_at, expires_at).expect("signs");
    format!("Bearer {token}")
}

/// Now, in seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// A fresh `Bearer <token>` of `caller` for `callee`, signed with the key `dozen keys` (or
/// `dozen up`) wrote for `caller` in `folder`.
pub fn header_from_folder(folder: &Path, caller: &str, callee: &str) -> String {
    let pem = std::fs::read_to_string(folder.join(format!("{caller}.pem"))).expect("the caller's key file");
    header_signed_by(&pem, caller, callee, now(), now() + 60)
}

/// One key per service and the trust bundle of them all, made once per test process.
#[derive(Debug)]
pub struct Identities {
    keys: BTreeMap<&'static str, String>,
    bundle: String,
}

/// The test process's identities.
pub fn identities() -> &'static Identities {
    static IDENTITIES: LazyLock<Identities> = LazyLock::new(|| {
        // Every service has an identity.
        let keys: BTreeMap<&'static str, String> = SERVICES
            .iter()
            .map(|service| (*service, generate_signing_key_pem()))
            .collect();
        let public: BTreeMap<&str, _> = keys
            .iter()
            .map(|(service, pem)| (*service, SigningKeys::parse(pem).expect("a key").jwks()))
            .collect();
        let bundle = serde_json::to_string(&public).expect("JSON");
        Identities { keys, bundle }
    });
    &IDENTITIES
}

impl Identities {
    /// `SERVICE_SIGNING_KEYS` and `SERVICE_KEYS` for `service`.
    pub fn env(&self, service: &str) -> [(&'static str, &str); 2] {
        [
            ("SERVICE_SIGNING_KEYS", self.pem(service)),
            ("SERVICE_KEYS", &self.bundle),
        ]
    }

    /// The private key of `service`; for a program that is none of the six (a test fixture),
    /// one key that no bundle trusts.
    pub fn pem(&self, service: &str) -> &str {
        static OUTSIDER: LazyLock<String> = LazyLock::new(generate_signing_key_pem);
        self.keys.get(service).map_or(OUTSIDER.as_str(), String::as_str)
    }

    /// The trust bundle.
    pub fn bundle(&self) -> &str {
        &self.bundle
    }

    /// A fresh `Bearer <token>` of `caller` for `callee`.
    pub fn header(&self, caller: &str, callee: &str) -> String {
        header_signed_by(self.pem(caller), caller, callee, now(), now() + 60)
    }
}
