//! The `report` admin process: one day's figures from every service (signups accepted, emails
//! verified, logins, lockouts, friendships made, and each service's new dead letters), printed
//! as one JSON document and, when `REPORT_TO` is set, mailed there.
//!
//! Each service counts its figures in its own database (`dozen_kit::figures`); verification
//! reads its own and asks the others at their internal `GET /daily-figures`, which accepts its
//! identity alone. Every figure is gathered before anything is printed or mailed, so a peer
//! that does not answer fails the run with nothing half-sent.

use std::collections::BTreeMap;

use anyhow::Context as _;
use chrono::{Days, NaiveDate, Utc};
use clap::Args;
use dozen_kit::Context;
use dozen_kit::figures::{self, DailyFigures};
use dozen_kit::http::client::Upstream;
use serde::Serialize;
use uuid::Uuid;

use crate::Settings;
use crate::mailer::{Mailer, Outgoing};

/// The arguments of `dozen-verification report`.
#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// The UTC day to report, YYYY-MM-DD; yesterday (UTC) when omitted.
    #[arg(long, value_parser = figures::parse_day)]
    pub day: Option<NaiveDate>,
}

/// The report of one day, as printed and mailed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// Signups accepted (a new account created).
    pub signups: i64,
    /// Email addresses verified.
    pub verifications: i64,
    /// Successful logins.
    pub logins: i64,
    /// Failed logins that locked an account's address pair or a client address.
    pub lockouts: i64,
    /// Friend requests accepted.
    pub friendships: i64,
    /// Events moved to each service's dead letters.
    pub dead_letters: BTreeMap<&'static str, i64>,
}

impl Report {
    /// The mail's plain-text body.
    pub fn text(&self) -> String {
        let mut text = format!("dozen, {} (UTC)\n\n", self.day);
        for (label, figure) in [
            ("signups accepted", self.signups),
            ("emails verified", self.verifications),
            ("logins", self.logins),
            ("lockouts", self.lockouts),
            ("friendships made", self.friendships),
        ] {
            text.push_str(&format!("{label:<20}{figure:>8}\n"));
        }
        text.push_str("\ndead letters\n");
        for (service, figure) in &self.dead_letters {
            text.push_str(&format!("  {service:<18}{figure:>8}\n"));
        }
        text
    }
}

impl ReportArgs {
    /// Gather the day's figures, print them, and mail them to `REPORT_TO` when set.
    pub async fn run(self, context: &Context<Settings>) -> anyhow::Result<()> {
        let settings = &context.settings;
        // Refused before anything is asked, not after.
        let mail = match &settings.report.report_to {
            Some(to) => {
                let url = settings
                    .mail_url()
                    .map_err(|reason| anyhow::anyhow!("REPORT_TO is set but {reason}"))?;
                Some((to, Mailer::new(url, settings.mail.mail_timeout)?))
            }
            None => None,
        };
        context.identity()?;
        let day = self.day.unwrap_or_else(|| Utc::now().date_naive() - Days::new(1));
        let http = &context.http;
        let (signup, users, passwords, friends, own) = tokio::try_join!(
            peer_figures(
                http.upstream("signup", &settings.report.signup_url),
                "SIGNUP_URL",
                day
            ),
            peer_figures(http.upstream("users", &settings.users_url), "USERS_URL", day),
            peer_figures(
                http.upstream("passwords", &settings.passwords_url),
                "PASSWORDS_URL",
                day
            ),
            peer_figures(
                http.upstream("friends", &settings.report.friends_url),
                "FRIENDS_URL",
                day
            ),
            async {
                figures::of_day(context.database()?, day)
                    .await
                    .context("cannot read verification's own figures")
            },
        )?;
        let figure = |of: &BTreeMap<String, i64>, name: &str| of.get(name).copied().unwrap_or(0);
        let report = Report {
            day: day.to_string(),
            signups: figure(&signup, "signups"),
            verifications: figure(&own, "verifications"),
            logins: figure(&passwords, "logins"),
            lockouts: figure(&passwords, "lockouts"),
            friendships: figure(&friends, "friendships"),
            dead_letters: [
                ("friends", &friends),
                ("passwords", &passwords),
                ("signup", &signup),
                ("users", &users),
                ("verification", &own),
            ]
            .into_iter()
            .map(|(service, of)| (service, figure(of, "dead_letters")))
            .collect(),
        };
        println!("{}", serde_json::to_string(&report)?);
        if let Some((to, mailer)) = mail {
            let outgoing = Outgoing {
                id: Uuid::new_v4(),
                to: to.to_string(),
                subject: format!("dozen report for {}", report.day),
                body: report.text(),
            };
            mailer
                .deliver(&settings.mail.mail_from, &outgoing)
                .await
                .with_context(|| format!("cannot mail the report to REPORT_TO ({to})"))?;
            tracing::info!(day = report.day, "report mailed to REPORT_TO");
        }
        Ok(())
    }
}

/// One peer's figures of `day`; an error names the peer and its setting.
async fn peer_figures(
    peer: Upstream,
    setting: &'static str,
    day: NaiveDate,
) -> anyhow::Result<BTreeMap<String, i64>> {
    let name = peer.name();
    let answer = peer
        .call(axum::http::Method::GET, "/daily-figures")
        .query(&[("day", day.to_string())])
        .send()
        .await
        .with_context(|| format!("the {name} service did not answer ({setting})"))?;
    let status = answer.status();
    if !status.is_success() {
        anyhow::bail!("the {name} service refused the figures ({setting}): {status}");
    }
    let figures: DailyFigures = answer
        .json()
        .await
        .with_context(|| format!("the {name} service answered something else than figures ({setting})"))?;
    Ok(figures.figures)
}
