//! A client of the gateway's public API (ARCHITECTURE.md, "The public API"), as the
//! end-to-end tests use it: sign up, read the dev mailbox, verify, log in, and call as a user.

use base64::Engine as _;
use serde_json::{Value, json};

use crate::platform::Platform;
use crate::{PATIENCE, eventually};

/// The password every test user signs up with.
pub const PASSWORD: &str = "correct horse battery staple";

/// A gateway, called as the web UI calls it.
#[derive(Debug)]
pub struct PublicApi {
    /// The gateway's base URL.
    gateway: String,
    /// The HTTP client (one connection pool for the whole test).
    pub client: reqwest::Client,
}

impl PublicApi {
    /// A client of the gateway at `gateway` (its base URL).
    pub fn new(gateway: impl Into<String>) -> Self {
        Self {
            gateway: gateway.into(),
            client: reqwest::Client::new(),
        }
    }

    /// A client of `platform`'s gateway.
    pub fn of(platform: &Platform) -> Self {
        Self::new(platform.url("gateway", ""))
    }

    /// The gateway's address of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway)
    }

    /// `POST /api/signups` with [`PASSWORD`] under the Idempotency-Key `key`.
    pub async fn sign_up(&self, key: &str, email: &str, name: &str, interests: &[&str]) -> reqwest::Response {
        self.client
            .post(self.url("/api/signups"))
            .header("Idempotency-Key", key)
            .json(&json!({ "email": email, "password": PASSWORD, "display_name": name, "interests": interests }))
            .send()
            .await
            .expect("POST /api/signups")
    }

    /// Every mail in the dev mailbox, newest first, read a page at a time.
    pub async fn mailbox(&self) -> Vec<Value> {
        const PAGE: usize = 200;
        let mut mails: Vec<Value> = Vec::new();
        loop {
            let mut path = format!("/api/dev/mailbox?limit={PAGE}");
            if let Some(last) = mails.last() {
                path.push_str(&format!("&after={}", last["id"].as_str().expect("an id")));
            }
            let answer = self
                .client
                .get(self.url(&path))
                .send()
                .await
                .expect("GET /api/dev/mailbox");
            assert_eq!(answer.status(), 200, "GET {path}");
            let page: Vec<Value> = answer.json().await.expect("mails");
            let last_page = page.len() < PAGE;
            mails.extend(page);
            if last_page {
                return mails;
            }
        }
    }

    /// The mails sent to `email`.
    pub async fn mails_to(&self, email: &str) -> Vec<Value> {
        self.mailbox()
            .await
            .into_iter()
            .filter(|mail| mail["to"].as_str().is_some_and(|to| to.contains(email)))
            .collect()
    }

    /// `POST /api/sessions` with [`PASSWORD`].
    pub async fn login(&self, email: &str) -> reqwest::Response {
        self.client
            .post(self.url("/api/sessions"))
            .json(&json!({ "email": email, "password": PASSWORD }))
            .send()
            .await
            .expect("POST /api/sessions")
    }

    /// `method path` with `token` as the bearer.
    pub async fn as_user(&self, token: &str, method: reqwest::Method, path: &str) -> reqwest::Response {
        self.client
            .request(method, self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("the gateway answers")
    }

    /// Verify `email` from its mail (checking that the link works once only) and log in; the
    /// access token.
    pub async fn verify_and_log_in(&self, email: &str) -> String {
        let token = eventually(PATIENCE, &format!("a verification mail to {email}"), || async {
            self.mails_to(email).await.iter().find_map(token_in)
        })
        .await;
        let verify = || async {
            self.client
                .post(self.url(&format!("/api/verifications/{token}")))
                .send()
                .await
                .expect("POST /api/verifications/{token}")
        };
        let verified = verify().await;
        assert_eq!(verified.status(), 200);
        assert_eq!(
            verified.json::<Value>().await.expect("JSON"),
            json!({ "status": "verified" })
        );
        let again = verify().await;
        assert!(
            again.status().is_client_error(),
            "a used token is refused: {}",
            again.status()
        );

        eventually(PATIENCE, &format!("{email} can log in"), || async {
            let answer = self.login(email).await;
            if answer.status() == 200 {
                let session: Value = answer.json().await.ok()?;
                assert_eq!(session["token_type"], "Bearer");
                session["access_token"].as_str().map(str::to_owned)
            } else {
                // Not verified yet (403), or polled faster than the gateway's login limit (429).
                assert!(
                    [403, 429].contains(&answer.status().as_u16()),
                    "a login waiting for the verification: {}",
                    answer.status()
                );
                None
            }
        })
        .await
    }
}

impl PublicApi {
    /// Follow every verification link mailed to `email` until one works, then the rest too:
    /// exactly one may work (the account that holds the address; the others' accounts were
    /// replaced), the others answer 404. Waits for the mails as they are sent; call it once the
    /// signups' events are handled (`Platform::signups_settled`). How many links there were.
    pub async fn verify_the_one_working_link(&self, email: &str) -> usize {
        let tried = std::sync::Mutex::new(Vec::<(String, u16)>::new());
        let try_new_links = || async {
            let links: Vec<String> = self.mails_to(email).await.iter().filter_map(token_in).collect();
            for link in links {
                if tried.lock().expect("lock").iter().any(|(seen, _)| *seen == link) {
                    continue;
                }
                let answer = self
                    .client
                    .post(self.url(&format!("/api/verifications/{link}")))
                    .send()
                    .await
                    .expect("POST /api/verifications/{token}");
                let status = answer.status().as_u16();
                assert!([200, 404].contains(&status), "a link answered {status}");
                tried.lock().expect("lock").push((link, status));
            }
        };
        eventually(PATIENCE, &format!("a link to {email} that works"), || async {
            try_new_links().await;
            tried
                .lock()
                .expect("lock")
                .iter()
                .any(|(_, status)| *status == 200)
                .then_some(())
        })
        .await;
        try_new_links().await;
        let tried = tried.into_inner().expect("lock");
        let working = tried.iter().filter(|(_, status)| *status == 200).count();
        assert_eq!(working, 1, "exactly one of {} links works", tried.len());
        tried.len()
    }
}

/// The verification token in a mail's link (`…/verify?token=<token>`), if it has one.
pub fn token_in(mail: &Value) -> Option<String> {
    let body = mail["body"].as_str()?;
    let start = body.find("verify?token=")? + "verify?token=".len();
    let token: String = body[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    (!token.is_empty()).then_some(token)
}

/// The user id (`sub`) an access token names.
pub fn subject_of(access_token: &str) -> String {
    let payload = access_token.split('.').nth(1).expect("a JWT");
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    let claims: Value = serde_json::from_slice(&claims).expect("JSON claims");
    claims["sub"].as_str().expect("sub").to_owned()
}
