//! What the load generator sends, through the public API only: the setup of a pool of
//! verified users, each endpoint of the mix, and the completion of new signups through the
//! dev mailbox.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures_util::{StreamExt as _, TryStreamExt as _};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::mix::Endpoint;
use super::report::{Outcome, Recorder};

/// How long an idle connection to the gateway is kept for the next request.
const IDLE_CONNECTIONS_KEPT: Duration = Duration::from_millis(500);
/// How long a new signup's verification mail may take before it counts as lost.
const MAIL_DEADLINE: Duration = Duration::from_secs(30);
/// How often the mailbox is read while signups wait for their mail: one reader for all of
/// them, so the mailbox is not read once per signup.
const MAILBOX_POLL: Duration = Duration::from_millis(250);
/// How long the setup waits for mails and verifications to take effect.
const SETUP_DEADLINE: Duration = Duration::from_secs(60);
/// Interests the load users pick from, so that suggestions have something to rank.
const INTERESTS: [&str; 6] = ["chess", "go", "climbing", "sailing", "cooking", "jazz"];

/// A verified user of the pool.
#[derive(Debug)]
struct User {
    id: String,
    email: String,
    password: String,
    access_token: RwLock<String>,
}

impl User {
    fn token(&self) -> String {
        self.access_token
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A signup waiting for its verification mail.
#[derive(Debug)]
struct WaitingSignup {
    email: String,
    since: Instant,
}

/// Everything a run shares: the client, the pool of users, the recorder.
#[derive(Debug)]
pub struct Workload {
    client: reqwest::Client,
    /// The gateway's base URL, without a trailing slash.
    base: String,
    /// Every request's outcome.
    pub recorder: Recorder,
    users: Vec<User>,
    /// Whether `GET /api/dev/mailbox` answers, so new signups can be verified.
    mailbox: bool,
    /// Friend requests made and not yet accepted: (requester, requested) indexes of `users`.
    open_requests: Mutex<VecDeque<(usize, usize)>>,
    /// Signups of the run waiting for their mail.
    waiting_signups: Mutex<Vec<WaitingSignup>>,
    /// A prefix unique to this run, for the addresses it signs up.
    run_id: String,
    signups: AtomicU64,
}

/// How the setup makes its users.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// How many verified users to make (0 when the mix needs none).
    pub users: usize,
    /// How many of them to make at once.
    pub concurrency: usize,
}

impl Workload {
    /// Connect to the gateway at `base`, find out whether the dev mailbox is on, and make the
    /// pool of verified users through the public API.
    pub async fn prepare(
        base: &str,
        timeout: Duration,
        max_in_flight: usize,
        setup: Setup,
    ) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(max_in_flight)
            // Idle for less than an instance drains (`DRAIN_DELAY`): a connection kept longer
            // may be the one a stopping instance closes just as a request goes out on it,
            // while one used during the drain is told `Connection: close` and let go.
            .pool_idle_timeout(IDLE_CONNECTIONS_KEPT)
            .build()
            .context("cannot make an HTTP client")?;
        let mut workload = Self {
            client,
            base: base.trim_end_matches('/').to_owned(),
            recorder: Recorder::default(),
            users: Vec::new(),
            mailbox: false,
            open_requests: Mutex::new(VecDeque::new()),
            waiting_signups: Mutex::new(Vec::new()),
            run_id: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
            signups: AtomicU64::new(0),
        };
        workload.mailbox = workload.mailbox_is_on().await?;
        if setup.users > 0 {
            if !workload.mailbox {
                bail!(
                    "the dev mailbox is off at {} (GET /api/dev/mailbox answers 404), so no user can be verified: \
                     give a mix of signups only (--mix signup=1) or run the platform with the dev mailbox (dozen up does)",
                    workload.base
                );
            }
            workload.users = workload.make_users(setup).await?;
            workload.seed_friend_requests().await?;
        }
        Ok(workload)
    }

    /// Whether the dev mailbox is on.
    pub fn has_mailbox(&self) -> bool {
        self.mailbox
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn mailbox_is_on(&self) -> anyhow::Result<bool> {
        let response = self
            .client
            .get(self.url("/api/dev/mailbox"))
            .send()
            .await
            .with_context(|| format!("cannot reach the gateway at {}", self.base))?;
        match response.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            status => bail!(
                "GET {}/api/dev/mailbox answered {status}: is this a dozen gateway?",
                self.base
            ),
        }
    }

    /// Every mail of the dev mailbox.
    async fn mails(&self) -> Result<Vec<Value>, Outcome> {
        let response = self
            .client
            .get(self.url("/api/dev/mailbox"))
            .send()
            .await
            .map_err(|error| failure(&error))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(Outcome::Status(status));
        }
        response.json().await.map_err(|error| failure(&error))
    }

    /// Sign up, verify and log in `setup.users` users, `setup.concurrency` at a time.
    async fn make_users(&self, setup: Setup) -> anyhow::Result<Vec<User>> {
        let emails: Vec<(String, String, usize)> = (0..setup.users).map(|_| self.new_address()).collect();
        futures_util::stream::iter(&emails)
            .map(|(email, password, n)| async move {
                let response = self.sign_up(email, password, *n).await?;
                match response.status().as_u16() {
                    202 => Ok(()),
                    429 => bail!(rate_limited("POST /api/signups", "RATE_LIMIT_SIGNUPS", &response)),
                    status => bail!(
                        "setup: POST /api/signups answered {status}: {}",
                        body_of(response).await
                    ),
                }
            })
            .buffer_unordered(setup.concurrency)
            .try_collect::<Vec<()>>()
            .await?;

        let deadline = Instant::now() + SETUP_DEADLINE;
        let tokens: Vec<String> = loop {
            let mails = self
                .mails()
                .await
                .map_err(|outcome| anyhow::anyhow!("setup: GET /api/dev/mailbox failed: {outcome:?}"))?;
            let found: Vec<Option<String>> = emails
                .iter()
                .map(|(email, _, _)| verification_token(&mails, email))
                .collect();
            if found.iter().all(Option::is_some) {
                break found.into_iter().flatten().collect();
            }
            if Instant::now() > deadline {
                let missing = found.iter().filter(|token| token.is_none()).count();
                bail!(
                    "setup: {missing} of {} verification mails did not arrive within {SETUP_DEADLINE:?}",
                    emails.len()
                );
            }
            tokio::time::sleep(MAILBOX_POLL).await;
        };

        futures_util::stream::iter(emails.into_iter().zip(tokens))
            .map(|((email, password, _), token)| async move {
                let response = self
                    .client
                    .post(self.url(&format!("/api/verifications/{token}")))
                    .send()
                    .await
                    .context("setup: POST /api/verifications/{token}")?;
                match response.status().as_u16() {
                    200 => {}
                    429 => bail!(rate_limited(
                        "POST /api/verifications/{token}",
                        "RATE_LIMIT_VERIFICATIONS",
                        &response
                    )),
                    status => bail!(
                        "setup: POST /api/verifications/{{token}} answered {status}: {}",
                        body_of(response).await
                    ),
                }
                let access_token = self.log_in_when_verified(&email, &password, deadline).await?;
                let me: Value = self
                    .client
                    .get(self.url("/api/me"))
                    .bearer_auth(&access_token)
                    .send()
                    .await
                    .context("setup: GET /api/me")?
                    .json()
                    .await
                    .context("setup: GET /api/me")?;
                let id = me["profile"]["id"]
                    .as_str()
                    .context("setup: GET /api/me has no profile.id")?
                    .to_owned();
                Ok(User {
                    id,
                    email,
                    password,
                    access_token: RwLock::new(access_token),
                })
            })
            .buffer_unordered(setup.concurrency)
            .try_collect()
            .await
    }

    /// Log in, retrying while the verification has not reached passwords yet (403).
    async fn log_in_when_verified(
        &self,
        email: &str,
        password: &str,
        deadline: Instant,
    ) -> anyhow::Result<String> {
        loop {
            let response = self
                .log_in(email, password)
                .await
                .context("setup: POST /api/sessions")?;
            match response.status().as_u16() {
                200 => {
                    return access_token_of(response)
                        .await
                        .map_err(|outcome| anyhow::anyhow!("setup: POST /api/sessions failed: {outcome:?}"));
                }
                403 if Instant::now() < deadline => tokio::time::sleep(MAILBOX_POLL).await,
                429 => bail!(rate_limited(
                    "POST /api/sessions",
                    "RATE_LIMIT_SESSIONS",
                    &response
                )),
                status => bail!(
                    "setup: POST /api/sessions answered {status}: {}",
                    body_of(response).await
                ),
            }
        }
    }

    /// Start one open friend request per user of the pool (user i asks user i + 1), so that
    /// acceptances have requests to accept from the first second.
    async fn seed_friend_requests(&self) -> anyhow::Result<()> {
        for requester in 0..self.users.len().saturating_sub(1) {
            match self.request_friend(requester, requester + 1).await {
                Outcome::Status(200) => {}
                outcome => bail!("setup: POST /api/friends/{{id}} failed: {outcome:?}"),
            }
        }
        Ok(())
    }

    /// A new address and password, unique to this run.
    fn new_address(&self) -> (String, String, usize) {
        let n = self.signups.fetch_add(1, Ordering::Relaxed) as usize;
        (
            format!("load-{}-{n}@example.com", self.run_id),
            format!("load {} {n}", uuid::Uuid::new_v4()),
            n,
        )
    }

    async fn sign_up(&self, email: &str, password: &str, n: usize) -> reqwest::Result<reqwest::Response> {
        self.client
            .post(self.url("/api/signups"))
            .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
            .json(&json!({
                "email": email,
                "password": password,
                "display_name": format!("Load user {n}"),
                "interests": [INTERESTS[n % INTERESTS.len()], INTERESTS[(n / 2 + 1) % INTERESTS.len()]],
            }))
            .send()
            .await
    }

    async fn log_in(&self, email: &str, password: &str) -> reqwest::Result<reqwest::Response> {
        self.client
            .post(self.url("/api/sessions"))
            .json(&json!({ "email": email, "password": password }))
            .send()
            .await
    }

    async fn request_friend(&self, requester: usize, requested: usize) -> Outcome {
        let path = format!("/api/friends/{}", self.users[requested].id);
        let response = self
            .client
            .post(self.url(&path))
            .bearer_auth(self.users[requester].token())
            .send()
            .await;
        match response {
            Ok(response) if response.status() == 200 => {
                let body: Value = response.json().await.unwrap_or_default();
                if body["status"] == "requested" {
                    self.open_requests
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push_back((requester, requested));
                }
                Outcome::Status(200)
            }
            Ok(response) => Outcome::Status(response.status().as_u16()),
            Err(error) => failure(&error),
        }
    }

    fn random_user(&self) -> usize {
        fastrand::usize(..self.users.len())
    }

    /// Sign up a new address of this run (what the mix's signups send); the address, and how
    /// it went.
    pub async fn sign_up_new_address(&self) -> (String, Outcome) {
        let (email, password, n) = self.new_address();
        let outcome = match self.sign_up(&email, &password, n).await {
            Ok(response) if response.status() == 202 => {
                if self.mailbox {
                    self.waiting_signups
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(WaitingSignup {
                            email: email.clone(),
                            since: Instant::now(),
                        });
                }
                Outcome::Status(202)
            }
            Ok(response) => Outcome::Status(response.status().as_u16()),
            Err(error) => failure(&error),
        };
        (email, outcome)
    }

    /// Send one request to `endpoint`; `None` when there was nothing to send (a friend
    /// acceptance with no request open).
    pub async fn call(&self, endpoint: Endpoint) -> Option<Outcome> {
        let outcome = match endpoint {
            Endpoint::Signup => self.sign_up_new_address().await.1,
            Endpoint::Login => {
                let user = &self.users[self.random_user()];
                match self.log_in(&user.email, &user.password).await {
                    Ok(response) if response.status() == 200 => match access_token_of(response).await {
                        Ok(token) => {
                            *user.access_token.write().unwrap_or_else(PoisonError::into_inner) = token;
                            Outcome::Status(200)
                        }
                        Err(outcome) => outcome,
                    },
                    Ok(response) => Outcome::Status(response.status().as_u16()),
                    Err(error) => failure(&error),
                }
            }
            Endpoint::Me => {
                let user = &self.users[self.random_user()];
                let response = self
                    .client
                    .get(self.url("/api/me"))
                    .bearer_auth(user.token())
                    .send()
                    .await;
                match response {
                    Ok(response) if response.status() == 200 => match response.json::<Value>().await {
                        Ok(me)
                            if me["missing"]
                                .as_array()
                                .is_some_and(|missing| !missing.is_empty()) =>
                        {
                            Outcome::Degraded
                        }
                        Ok(_) => Outcome::Status(200),
                        Err(error) => failure(&error),
                    },
                    other => status_of(other).await,
                }
            }
            Endpoint::Profile => {
                let index = self.random_user();
                let name = format!("Load user {index} {}", fastrand::u16(..1000));
                let response = self
                    .client
                    .patch(self.url("/api/me"))
                    .bearer_auth(self.users[index].token())
                    .json(&json!({ "display_name": name }))
                    .send()
                    .await;
                status_of(response).await
            }
            Endpoint::Suggestions => {
                let user = &self.users[self.random_user()];
                let response = self
                    .client
                    .get(self.url("/api/suggestions"))
                    .bearer_auth(user.token())
                    .send()
                    .await;
                status_of(response).await
            }
            Endpoint::FriendRequest => {
                let requester = self.random_user();
                let requested = (requester + 1 + fastrand::usize(..self.users.len() - 1)) % self.users.len();
                self.request_friend(requester, requested).await
            }
            Endpoint::FriendAccept => {
                let open = self
                    .open_requests
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .pop_front();
                let Some((requester, requested)) = open else {
                    self.recorder.skip();
                    return None;
                };
                let path = format!("/api/friends/{}/accept", self.users[requester].id);
                let response = self
                    .client
                    .post(self.url(&path))
                    .bearer_auth(self.users[requested].token())
                    .send()
                    .await;
                status_of(response).await
            }
            Endpoint::Mailbox | Endpoint::Verify => {
                unreachable!("the mix never schedules mailbox or verify")
            }
        };
        Some(outcome)
    }

    /// Complete the run's signups: read the mailbox while signups wait for their mail and
    /// verify each as its mail arrives (recorded as `mailbox` and `verify`); a mail that has
    /// not come within [`MAIL_DEADLINE`] is a `verify` error. Returns once `stop` is
    /// cancelled and no signup is waiting.
    pub async fn complete_signups(self: Arc<Self>, stop: CancellationToken) {
        let verifications = TaskTracker::new();
        loop {
            let waiting = !self
                .waiting_signups
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty();
            if !waiting {
                if stop.is_cancelled() {
                    break;
                }
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(MAILBOX_POLL) => {}
                }
                continue;
            }
            let sent = Instant::now();
            let mails = self.mails().await;
            let outcome = match &mails {
                Ok(_) => Outcome::Status(200),
                Err(outcome) => outcome.clone(),
            };
            self.recorder
                .record(Endpoint::Mailbox, sent, outcome, Some(sent.elapsed()));
            let mails = mails.unwrap_or_default();
            let mut ready = Vec::new();
            let mut lost = 0;
            self.waiting_signups
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|signup| {
                    if let Some(token) = verification_token(&mails, &signup.email) {
                        ready.push(token);
                        false
                    } else if signup.since.elapsed() > MAIL_DEADLINE {
                        lost += 1;
                        false
                    } else {
                        true
                    }
                });
            for _ in 0..lost {
                self.recorder
                    .record(Endpoint::Verify, Instant::now(), Outcome::NoMail, None);
            }
            for token in ready {
                let workload = self.clone();
                verifications.spawn(async move {
                    let sent = Instant::now();
                    let response = workload
                        .client
                        .post(workload.url(&format!("/api/verifications/{token}")))
                        .send()
                        .await;
                    let outcome = status_of(response).await;
                    workload
                        .recorder
                        .record(Endpoint::Verify, sent, outcome, Some(sent.elapsed()));
                });
            }
            tokio::time::sleep(MAILBOX_POLL).await;
        }
        verifications.close();
        verifications.wait().await;
    }
}

/// How a request that got no response failed.
fn failure(error: &reqwest::Error) -> Outcome {
    if error.is_timeout() {
        Outcome::Timeout
    } else if error.is_decode() || error.is_body() {
        Outcome::BadBody
    } else {
        Outcome::Connection
    }
}

/// The outcome of a response whose body does not matter.
async fn status_of(response: reqwest::Result<reqwest::Response>) -> Outcome {
    match response {
        Ok(response) => {
            let status = response.status().as_u16();
            // Read the body so the connection goes back to the pool.
            match response.bytes().await {
                Ok(_) => Outcome::Status(status),
                Err(error) => failure(&error),
            }
        }
        Err(error) => failure(&error),
    }
}

/// The access token of a successful login.
async fn access_token_of(response: reqwest::Response) -> Result<String, Outcome> {
    let session: Value = response.json().await.map_err(|error| failure(&error))?;
    session["access_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or(Outcome::BadBody)
}

/// The token of the verification mail to `email`, if the mailbox holds it (a mail's body links
/// `…/verify?token=<token>`).
fn verification_token(mails: &[Value], email: &str) -> Option<String> {
    mails
        .iter()
        .filter(|mail| mail["to"].as_str().is_some_and(|to| to.contains(email)))
        .find_map(|mail| {
            let body = mail["body"].as_str()?;
            let start = body.find("verify?token=")? + "verify?token=".len();
            let token: String = body[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            (!token.is_empty()).then_some(token)
        })
}

/// The line that explains a 429 in the setup.
fn rate_limited(route: &str, variable: &str, response: &reqwest::Response) -> String {
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("?");
    format!(
        "setup: {route} answered 429 Too Many Requests (Retry-After: {retry_after} s): the gateway's \
         {variable} limits each client address; raise it for a load test (e.g. {variable}=100000/min, or off)"
    )
}

/// The start of a response's body, for an error message.
async fn body_of(response: reqwest::Response) -> String {
    let text = response.text().await.unwrap_or_default();
    text.chars().take(300).collect()
}
