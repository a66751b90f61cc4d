//! The calls signup makes, through the kit's client: create (replacing an unverified one) and
//! delete a profile in users, check a password, set and delete a credential in passwords. Each answer is sorted into what the flow needs
//! to know; anything unexpected is a fault, never the caller's problem.

use axum::http::Method;
use axum::http::StatusCode;
use dozen_kit::Problem;
use dozen_kit::email::Email;
use dozen_kit::http::client::{Answer, CallError, Upstream};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

/// How a call to a peer went.
#[derive(Debug)]
pub enum Outcome<T = ()> {
    /// Done (created now, or by an earlier try), with what the peer answered that the flow
    /// needs.
    Done(T),
    /// The email (or id) is taken by another account.
    Taken,
    /// A newer signup for the address replaced this account (its id is refused for good).
    Replaced,
    /// The peer refused the input; the problem says why, field by field.
    Refused(Problem),
}

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// It could not be reached or answered with a server error.
    #[error("{peer} is unavailable: {reason}")]
    Unavailable {
        /// Which peer.
        peer: &'static str,
        /// What happened.
        reason: String,
    },
}

/// The users and passwords services.
#[derive(Debug, Clone)]
pub struct Peers {
    /// The users service.
    pub users: Upstream,
    /// The passwords service.
    pub passwords: Upstream,
}

#[derive(Debug, Deserialize)]
struct ProfileId {
    id: Uuid,
}

/// The part of a created profile the flow needs.
#[derive(Debug, Deserialize)]
pub struct CreatedProfile {
    /// As users keeps them (normalised): what `user.signed_up` announces.
    pub interests: Vec<String>,
    /// The unverified accounts it replaced for its address, newest first.
    pub replaced: Vec<Uuid>,
}

impl Peers {
    /// Create the profile (idempotent for the same id and email), replacing an unverified one
    /// that holds the address; done, it gives the profile's interests as users keeps them and
    /// the accounts it replaced.
    pub async fn create_profile(
        &self,
        user_id: Uuid,
        email: &Email,
        display_name: &str,
        interests: &[String],
    ) -> Result<Outcome<CreatedProfile>, PeerError> {
        let body =
            json!({ "id": user_id, "email": email, "display_name": display_name, "interests": interests });
        let answer = self
            .users
            .call(Method::POST, "/profiles")
            .json(&body)
            .send()
            .await;
        Ok(match sort(&self.users, answer).await? {
            Outcome::Done(answer) => Outcome::Done(
                answer
                    .json::<CreatedProfile>()
                    .await
                    .map_err(|e| unavailable(&self.users, e))?,
            ),
            Outcome::Taken => Outcome::Taken,
            Outcome::Replaced => Outcome::Replaced,
            Outcome::Refused(problem) => Outcome::Refused(problem),
        })
    }

    /// The id of the account that owns `email`, if any.
    pub async fn owner_of(&self, email: &Email) -> Result<Option<Uuid>, PeerError> {
        let answer = self
            .users
            .call(Method::GET, "/profiles")
            .query(&[("email", email.as_str())])
            .send()
            .await
            .map_err(|e| unavailable(&self.users, e))?;
        match answer.status() {
            StatusCode::OK => Ok(Some(
                answer
                    .json::<ProfileId>()
                    .await
                    .map_err(|e| unavailable(&self.users, e))?
                    .id,
            )),
            StatusCode::NOT_FOUND => Ok(None),
            status => Err(unavailable(&self.users, format!("answered {status}"))),
        }
    }

    /// Delete the profile (idempotent).
    pub async fn delete_profile(&self, user_id: Uuid) -> Result<(), PeerError> {
        let answer = self
            .users
            .call(Method::DELETE, &format!("/profiles/{user_id}"))
            .send()
            .await;
        expect_success(&self.users, answer)
    }

    /// Whether passwords accepts `password` for `email` and `display_name`, asked before
    /// anything is created so that a bad password is refused alike for a new and for a
    /// registered address.
    pub async fn check_password(
        &self,
        email: &Email,
        display_name: &str,
        password: &str,
    ) -> Result<Outcome, PeerError> {
        self.send_password(Method::POST, "/password-checks", email, display_name, password)
            .await
    }

    /// Have passwords compute, and throw away, the hash a credential with `password` would
    /// get: where the email is taken, so that the signup costs what creating one does.
    pub async fn hash_password(
        &self,
        email: &Email,
        display_name: &str,
        password: &str,
    ) -> Result<Outcome, PeerError> {
        self.send_password(Method::POST, "/password-hashes", email, display_name, password)
            .await
    }

    /// Set the credential (idempotent for the same user and email).
    pub async fn set_credential(
        &self,
        user_id: Uuid,
        email: &Email,
        display_name: &str,
        password: &str,
    ) -> Result<Outcome, PeerError> {
        let path = format!("/credentials/{user_id}");
        self.send_password(Method::PUT, &path, email, display_name, password)
            .await
    }

    async fn send_password(
        &self,
        method: Method,
        path: &str,
        email: &Email,
        display_name: &str,
        password: &str,
    ) -> Result<Outcome, PeerError> {
        let body = json!({ "email": email, "display_name": display_name, "password": password });
        let answer = self.passwords.call(method, path).json(&body).send().await;
        sort(&self.passwords, answer).await.map(Outcome::without_answer)
    }

    /// Delete the credential (idempotent).
    pub async fn delete_credential(&self, user_id: Uuid) -> Result<(), PeerError> {
        let answer = self
            .passwords
            .call(Method::DELETE, &format!("/credentials/{user_id}"))
            .send()
            .await;
        expect_success(&self.passwords, answer)
    }

    /// Delete the credential of an account a newer signup replaced, and have passwords refuse
    /// its id one from then on (idempotent).
    pub async fn drop_replaced_credential(&self, user_id: Uuid) -> Result<(), PeerError> {
        let answer = self
            .passwords
            .call(Method::DELETE, &format!("/credentials/{user_id}"))
            .query(&[("replaced", "true")])
            .send()
            .await;
        expect_success(&self.passwords, answer)
    }
}

impl Outcome<Answer> {
    /// The outcome, when the flow needs nothing from the answer.
    fn without_answer(self) -> Outcome {
        match self {
            Self::Done(_) => Outcome::Done(()),
            Self::Taken => Outcome::Taken,
            Self::Replaced => Outcome::Replaced,
            Self::Refused(problem) => Outcome::Refused(problem),
        }
    }
}

/// How a call went, the answer kept when it is a success.
async fn sort(peer: &Upstream, answer: Result<Answer, CallError>) -> Result<Outcome<Answer>, PeerError> {
    let answer = answer.map_err(|e| unavailable(peer, e))?;
    let status = answer.status();
    if status.is_success() {
        return Ok(Outcome::Done(answer));
    }
    if status == StatusCode::CONFLICT {
        return Ok(Outcome::Taken);
    }
    if status == StatusCode::GONE {
        return Ok(Outcome::Replaced);
    }
    if status == StatusCode::UNPROCESSABLE_ENTITY || status == StatusCode::BAD_REQUEST {
        let problem = answer.json::<Problem>().await.map_err(|e| unavailable(peer, e))?;
        return Ok(Outcome::Refused(problem));
    }
    Err(unavailable(peer, format!("answered {status}")))
}

fn expect_success(peer: &Upstream, answer: Result<Answer, CallError>) -> Result<(), PeerError> {
    let answer = answer.map_err(|e| unavailable(peer, e))?;
    if answer.status().is_success() {
        Ok(())
    } else {
        Err(unavailable(peer, format!("answered {}", answer.status())))
    }
}

fn unavailable(peer: &Upstream, reason: impl ToString) -> PeerError {
    PeerError::Unavailable {
        peer: peer.name(),
        reason: reason.to_string(),
    }
}
