//! The signup flow (the chained pattern): record the attempt under its key, create the profile
//! in users (which replaces an unverified account holding the address: the pre-hijacking
//! defence), drop the replaced accounts' credentials and create the new one in passwords, then
//! mark the signup complete and publish `user.signed_up`, naming the account it replaced, in
//! one transaction. Every step may be repeated safely, so a retry with the
//! same key resumes where the last try stopped; `repair` finishes or undoes what nobody
//! retries.

use chrono::{DateTime, Utc};
use dozen_bus::Outbox;
use dozen_bus::contracts::{UserSignedUp, UserSignupConflict};
use dozen_kit::db::{Db, Tx};
use dozen_kit::email::Email;
use dozen_kit::{ApiError, Problem};

use crate::domain::{IdempotencyKey, Signup, SignupState};
use crate::peers::{Outcome, PeerError, Peers};
use crate::store::{self, SignupRecord};

/// What the flow works with.
#[derive(Debug, Clone)]
pub struct Flow {
    /// The service's database.
    pub db: Db,
    /// Where signup publishes.
    pub outbox: Outbox,
    /// Users and passwords.
    pub peers: Peers,
}

impl From<PeerError> for ApiError {
    fn from(error: PeerError) -> Self {
        Self::Unavailable(error.into())
    }
}

impl Flow {
    /// Take a signup as far as it can go. `Ok` means the caller gets the same answer whether
    /// the account is new or the email was taken (no account enumeration).
    pub async fn submit(&self, key: &IdempotencyKey, signup: Signup) -> Result<(), ApiError> {
        let mut tx = Tx::begin(&self.db).await?;
        let mut record = store::record(&mut tx, key, &signup, Utc::now()).await?;
        tx.commit().await?;
        if record.request_hash != signup.fingerprint() {
            return Err(Problem::typed(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency-Key reused",
                "this Idempotency-Key was used for a different signup",
            )
            .into());
        }
        let mut state = record.state()?;
        if state.is_final() {
            return Ok(());
        }
        if state == SignupState::Undone {
            state = SignupState::Started;
        }
        let email = signup.email.clone();
        if state == SignupState::Started {
            match self
                .peers
                .check_password(&email, &record.display_name, &signup.request.password)
                .await?
            {
                Outcome::Done(()) => {}
                Outcome::Taken | Outcome::Replaced => {
                    return Err(ApiError::Internal(anyhow::anyhow!(
                        "passwords answered a password check with a conflict"
                    )));
                }
                Outcome::Refused(problem) => return self.refuse(&record, problem, false).await,
            }
            let profile = self
                .peers
                .create_profile(record.user_id, &email, &record.display_name, &record.interests.0)
                .await?;
            match profile {
                Outcome::Done(created) => {
                    // From here on the signup carries the interests as the profile has them
                    // (`user.signed_up` announces them so), and the accounts it replaced.
                    let mut tx = Tx::begin(&self.db).await?;
                    store::profile_created(
                        &mut tx,
                        &record.idempotency_key,
                        &created.interests,
                        &created.replaced,
                        Utc::now(),
                    )
                    .await?;
                    tx.commit().await?;
                    record.interests = sqlx::types::Json(created.interests);
                    record.replaced = sqlx::types::Json(created.replaced);
                }
                Outcome::Taken => {
                    // A new address costs a hash (its credential's), so a taken one does too:
                    // otherwise the time of the 202 would tell which emails have accounts.
                    self.peers
                        .hash_password(&email, &record.display_name, &signup.request.password)
                        .await?;
                    return self.conflict(&record, &email).await;
                }
                Outcome::Replaced => return self.complete(&record, &email).await,
                Outcome::Refused(problem) => return self.refuse(&record, problem, false).await,
            }
            state = SignupState::ProfileCreated;
        }
        if state == SignupState::ProfileCreated {
            // The replaced account's credential goes first: it may hold the address in
            // passwords, and must never log in. An older one of the chain may still hold it
            // (its replacing signup still on its way): then the whole chain goes, and the
            // credential is set again.
            let replaced = &record.replaced.0;
            if let Some(previous) = replaced.first() {
                self.peers.drop_replaced_credential(*previous).await?;
            }
            let set_credential = || {
                self.peers.set_credential(
                    record.user_id,
                    &email,
                    &record.display_name,
                    &signup.request.password,
                )
            };
            let mut outcome = set_credential().await?;
            if matches!(outcome, Outcome::Taken) && replaced.len() > 1 {
                self.drop_replaced_credentials(&record).await?;
                outcome = set_credential().await?;
            }
            match outcome {
                Outcome::Done(()) => self.advance(&record, SignupState::CredentialCreated).await?,
                Outcome::Refused(problem) => return self.refuse(&record, problem, true).await,
                // The address has a credential without a profile of its own: an earlier signup
                // is half-undone. Step back; the owner is told as for any taken address.
                Outcome::Taken => {
                    self.peers.delete_profile(record.user_id).await?;
                    return self.conflict(&record, &email).await;
                }
                // A newer signup replaced this one meanwhile: it is announced all the same
                // (below), so that the accounts it replaced are known replaced too.
                Outcome::Replaced => {}
            }
        }
        self.complete(&record, &email).await
    }

    /// Drop the credentials of the accounts the signup's profile replaced (each call is
    /// idempotent).
    async fn drop_replaced_credentials(&self, record: &SignupRecord) -> Result<(), PeerError> {
        for replaced in &record.replaced.0 {
            self.peers.drop_replaced_credential(*replaced).await?;
        }
        Ok(())
    }

    async fn advance(&self, record: &SignupRecord, state: SignupState) -> Result<(), ApiError> {
        let mut tx = Tx::begin(&self.db).await?;
        store::advance(&mut tx, &record.idempotency_key, state, Utc::now()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Mark the signup complete and publish `user.signed_up`, together, once.
    async fn complete(&self, record: &SignupRecord, email: &Email) -> Result<(), ApiError> {
        let mut tx = Tx::begin(&self.db).await?;
        if store::advance(
            &mut tx,
            &record.idempotency_key,
            SignupState::Completed,
            Utc::now(),
        )
        .await?
        {
            dozen_kit::figures::count(&mut tx, "signups", Utc::now()).await?;
            let event = UserSignedUp {
                user_id: record.user_id,
                email: email.as_str().to_owned(),
                display_name: record.display_name.clone(),
                interests: record.interests.0.clone(),
                replaces: record.replaced.0.first().copied(),
            };
            self.outbox
                .publish(&mut tx, &event)
                .await
                .map_err(anyhow::Error::from)?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The email belongs to someone else: tell its owner, answer as for a new account.
    async fn conflict(&self, record: &SignupRecord, email: &Email) -> Result<(), ApiError> {
        let owner = self.peers.owner_of(email).await?;
        let mut tx = Tx::begin(&self.db).await?;
        let ended = store::advance(
            &mut tx,
            &record.idempotency_key,
            SignupState::Conflict,
            Utc::now(),
        )
        .await?;
        if let (true, Some(owner)) = (ended, owner) {
            let event = UserSignupConflict {
                user_id: owner,
                email: email.as_str().to_owned(),
                attempted_at: Utc::now(),
            };
            self.outbox
                .publish(&mut tx, &event)
                .await
                .map_err(anyhow::Error::from)?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A peer refused the input: undo what was created, forget the attempt, pass the problem
    /// on (it names the bad fields).
    async fn refuse(
        &self,
        record: &SignupRecord,
        problem: Problem,
        profile_created: bool,
    ) -> Result<(), ApiError> {
        if profile_created {
            self.peers.delete_profile(record.user_id).await?;
        }
        let mut tx = Tx::begin(&self.db).await?;
        store::forget(&mut tx, &record.idempotency_key).await?;
        tx.commit().await?;
        Err(problem.into())
    }

    /// The `repair` admin process: every signup unfinished since `before` is completed when
    /// both profile and credential exist, and undone otherwise, so no profile or credential
    /// is left without its other half. Returns how many were completed and undone.
    pub async fn repair(&self, before: DateTime<Utc>) -> anyhow::Result<(usize, usize)> {
        let (mut completed, mut undone) = (0, 0);
        for record in store::unfinished(&self.db, before).await? {
            if record.state()? == SignupState::CredentialCreated {
                self.complete(&record, &record.email()?)
                    .await
                    .map_err(into_anyhow)?;
                completed += 1;
            } else {
                // The password is gone with the request, so the signup cannot be finished:
                // remove both halves (each delete is a no-op when absent). The accounts it
                // replaced stay replaced: none comes back, nor keeps a credential.
                self.drop_replaced_credentials(&record).await?;
                self.peers.delete_credential(record.user_id).await?;
                self.peers.delete_profile(record.user_id).await?;
                let mut tx = Tx::begin(&self.db).await?;
                store::advance(&mut tx, &record.idempotency_key, SignupState::Undone, Utc::now()).await?;
                tx.commit().await?;
                undone += 1;
            }
        }
        Ok((completed, undone))
    }
}

fn into_anyhow(error: ApiError) -> anyhow::Error {
    match error {
        ApiError::Problem(problem) => anyhow::anyhow!("{}: {}", problem.title, problem.detail),
        ApiError::Unavailable(error) | ApiError::Internal(error) => error,
    }
}
