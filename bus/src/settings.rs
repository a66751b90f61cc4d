//! The bus's settings, read from the environment like the kit's (`dozen_kit::config`): a
//! service flattens [`BusSettings`] into its own settings and `--help` lists them.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use dozen_kit::archive::ArchiveSettings;
use dozen_kit::config::parse_duration;

/// A validated `BUS_URL`: which broker carries the events.
#[derive(Clone, PartialEq, Eq)]
pub enum BusUrl {
    /// `sqlite://<path>`: the embedded bus, a SQLite file shared by the processes on one host.
    Embedded(String),
    /// `nats://host:port` (credentials allowed in the URL): NATS JetStream.
    Nats(String),
    /// `sns+sqs://<region>` (options in [`SnsSqsAddress`]): Amazon SNS and SQS, or an emulator.
    SnsSqs(String),
}

impl BusUrl {
    /// Accept `sqlite:` and `nats:` URLs; anything else is an error naming the schemes.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("sqlite:") {
            if path.trim_start_matches('/').is_empty() {
                return Err("expected a file path after sqlite://".to_owned());
            }
            Ok(Self::Embedded(text.to_owned()))
        } else if text.starts_with("nats://") || text.starts_with("tls://") {
            Ok(Self::Nats(text.to_owned()))
        } else if text.starts_with("sns+sqs:") {
            if !cfg!(feature = "sns-sqs") {
                return Err(
                    "this build has no SNS/SQS backend (build with the dozen-bus/sns-sqs feature)".to_owned(),
                );
            }
            SnsSqsAddress::parse(text)?;
            Ok(Self::SnsSqs(text.to_owned()))
        } else {
            Err("expected a sqlite:// (embedded), nats:// or sns+sqs:// URL".to_owned())
        }
    }

    /// The URL as given.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Embedded(url) | Self::Nats(url) | Self::SnsSqs(url) => url,
        }
    }

    /// The backend's name, for logs and metrics (the URL itself may hold a password).
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Embedded(_) => "embedded",
            Self::Nats(_) => "nats",
            Self::SnsSqs(_) => "sns-sqs",
        }
    }
}

/// Where the SNS/SQS backend connects: `sns+sqs://[KEY:SECRET@]REGION[?endpoint=URL]`.
///
/// Without `KEY:SECRET` (percent-encoded), credentials come from the usual AWS chain:
/// environment, profile, ECS task role, instance metadata. `endpoint` points both services at
/// an emulator (e.g. `http://127.0.0.1:4566`, moto); without it, AWS's own endpoints.
#[derive(Clone, PartialEq, Eq)]
pub struct SnsSqsAddress {
    /// The AWS region, e.g. `eu-west-1`.
    pub region: String,
    /// An endpoint that replaces AWS's for both SNS and SQS.
    pub endpoint: Option<String>,
    /// A static access key id and secret.
    pub credentials: Option<(String, String)>,
}

impl SnsSqsAddress {
    /// Parse an `sns+sqs://` URL; an error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let url = url::Url::parse(text).map_err(|e| format!("not a valid sns+sqs:// URL ({e})"))?;
        if url.scheme() != "sns+sqs" {
            return Err("expected an sns+sqs:// URL".to_owned());
        }
        let region = url.host_str().unwrap_or_default().to_owned();
        let region_is_valid = !region.is_empty()
            && region
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !region_is_valid {
            return Err("expected a region after sns+sqs://, e.g. sns+sqs://eu-west-1".to_owned());
        }
        if url.port().is_some() || !matches!(url.path(), "" | "/") {
            return Err(
                "expected only a region after sns+sqs:// (an emulator goes in ?endpoint=)".to_owned(),
            );
        }
        let mut endpoint = None;
        for (name, value) in url.query_pairs() {
            match name.as_ref() {
                "endpoint" => {
                    let valid = url::Url::parse(&value)
                        .is_ok_and(|e| matches!(e.scheme(), "http" | "https") && e.has_host());
                    if !valid {
                        return Err(format!("endpoint {value:?} is not an http(s) URL"));
                    }
                    endpoint = Some(value.into_owned());
                }
                other => return Err(format!("unknown option {other:?} (expected endpoint)")),
            }
        }
        let credentials = match (url.username(), url.password()) {
            ("", None) => None,
            (key, Some(secret)) if !key.is_empty() && !secret.is_empty() => {
                Some((decode(key)?, decode(secret)?))
            }
            _ => return Err("expected both KEY:SECRET before the region, or neither".to_owned()),
        };
        Ok(Self {
            region,
            endpoint,
            credentials,
        })
    }
}

fn decode(text: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| "the credentials are not valid UTF-8 once percent-decoded".to_owned())
}

impl std::fmt::Debug for SnsSqsAddress {
    // Never show the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnsSqsAddress")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("credentials", &self.credentials.as_ref().map(|_| "…"))
            .finish()
    }
}

impl std::fmt::Debug for BusUrl {
    // The URL may carry credentials: show only the backend.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BusUrl({})", self.backend())
    }
}

/// Settings of the event bus, the same in every service that publishes or consumes.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Event bus")]
pub struct BusSettings {
    /// The broker: `sqlite://<path>` (the embedded bus, shared by every process on this host),
    /// `nats://[user:password@]host:port` (NATS JetStream; TLS when the server requires it),
    /// `tls://…` (NATS, always over TLS) or `sns+sqs://<region>` (Amazon SNS and SQS; add
    /// `?endpoint=<url>` for an emulator, and `KEY:SECRET@` before the region for static
    /// credentials). Give it in BUS_URL_FILE when it holds a password.
    #[arg(long, env = "BUS_URL", default_value = "sqlite://data/bus.db", hide_env_values = true, value_parser = BusUrl::parse)]
    pub bus_url: BusUrl,

    /// Prefix of every name the bus creates on the broker (NATS streams and subjects, SNS
    /// topics, SQS queues), so that several platforms can share one broker.
    #[arg(long, env = "BUS_NAMESPACE", default_value = "dozen", value_parser = parse_namespace)]
    pub bus_namespace: String,

    /// SNS/SQS: make the topics, queues and subscriptions that are missing (`true`), or only
    /// look them up by name and stop at start when one is missing (`false`: for a stack that
    /// owns them, so the service needs no right to create or subscribe anything).
    #[arg(long, env = "BUS_PROVISION", default_value_t = true, action = clap::ArgAction::Set)]
    pub bus_provision: bool,

    /// Deliveries of one event to one subscriber before it moves to the dead-letter queue.
    #[arg(long, env = "BUS_MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub bus_max_attempts: u32,

    /// Delay before the first retry of a failed delivery (or publish); it doubles with each
    /// attempt, up to BUS_RETRY_BACKOFF_MAX.
    #[arg(long, env = "BUS_RETRY_BACKOFF", default_value = "500ms", value_parser = parse_duration)]
    pub bus_retry_backoff: Duration,

    /// Longest delay between two retries.
    #[arg(long, env = "BUS_RETRY_BACKOFF_MAX", default_value = "5m", value_parser = parse_duration)]
    pub bus_retry_backoff_max: Duration,

    /// How long a consumer or relay may hold an event before it is handed to another instance
    /// (the lease on the embedded bus, the ack wait on NATS, the visibility timeout on SQS).
    /// Longer than any handler takes.
    #[arg(long, env = "BUS_ACK_WAIT", default_value = "30s", value_parser = parse_duration)]
    pub bus_ack_wait: Duration,

    /// Backstop poll of the outbox and of replayed dead letters; wake-ups are otherwise
    /// immediate.
    #[arg(long, env = "BUS_POLL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub bus_poll_interval: Duration,

    /// How long event ids stay in the inbox (and sent events in the outbox, and replayed dead
    /// letters) for deduplication; longer than any redelivery can take. Also the default age
    /// past which the `archive` admin process moves rows out; with ARCHIVE_URL set, only it
    /// removes them.
    #[arg(long, env = "BUS_RETENTION", default_value = "7days", value_parser = parse_duration)]
    pub bus_retention: Duration,

    /// NATS: a credentials file (`.creds`: the user's JWT and NKey seed) to log in with.
    #[arg(long, env = "NATS_CREDS_FILE")]
    pub nats_creds_file: Option<PathBuf>,

    /// NATS: a PEM file of the certificate authorities that sign the server's certificate
    /// (a private CA); without it, the system's.
    #[arg(long, env = "NATS_CA_FILE")]
    pub nats_ca_file: Option<PathBuf>,

    /// Where old rows are archived; when set, the sweeps above leave them to the archive.
    #[command(flatten)]
    pub archive: ArchiveSettings,
}

/// A `BUS_NAMESPACE`: 1 to 64 letters, digits, `_` or `-`.
pub fn parse_namespace(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if valid {
        Ok(text.to_owned())
    } else {
        Err("expected 1 to 64 letters, digits, '_' or '-'".to_owned())
    }
}

impl BusSettings {
    /// The settings as if no variable were set, with `url` as `BUS_URL`.
    pub fn new(url: BusUrl) -> Self {
        Self {
            bus_url: url,
            bus_namespace: "dozen".to_owned(),
            bus_provision: true,
            bus_max_attempts: 5,
            bus_retry_backoff: Duration::from_millis(500),
            bus_retry_backoff_max: Duration::from_secs(300),
            bus_ack_wait: Duration::from_secs(30),
            bus_poll_interval: Duration::from_secs(1),
            bus_retention: Duration::from_secs(7 * 24 * 3600),
            nats_creds_file: None,
            nats_ca_file: None,
            archive: ArchiveSettings { archive_url: None },
        }
    }

    /// The delay before retry number `attempt` (1 for the first retry).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
        self.bus_retry_backoff
            .saturating_mul(factor)
            .min(self.bus_retry_backoff_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_its_ceiling() {
        let mut settings = BusSettings::new(BusUrl::Embedded("sqlite://bus.db".into()));
        settings.bus_retry_backoff = Duration::from_millis(100);
        settings.bus_retry_backoff_max = Duration::from_millis(350);
        let delays: Vec<u128> = (1..=4).map(|a| settings.backoff(a).as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
    }

    #[test]
    fn only_sqlite_nats_and_sns_sqs_urls_are_accepted() {
        assert!(matches!(
            BusUrl::parse("sqlite://data/bus.db"),
            Ok(BusUrl::Embedded(_))
        ));
        assert!(matches!(
            BusUrl::parse("nats://127.0.0.1:4222"),
            Ok(BusUrl::Nats(_))
        ));
        assert!(BusUrl::parse("amqp://localhost").is_err());
        assert!(BusUrl::parse("sqlite://").is_err());
        assert_eq!(
            BusUrl::parse("sns+sqs://eu-west-1").is_ok(),
            cfg!(feature = "sns-sqs")
        );
    }

    #[test]
    fn an_sns_sqs_url_names_a_region_and_optionally_an_endpoint_and_credentials() {
        let plain = SnsSqsAddress::parse("sns+sqs://eu-west-1").expect("valid");
        assert_eq!(
            (plain.region.as_str(), plain.endpoint, plain.credentials),
            ("eu-west-1", None, None)
        );
        let emulated =
            SnsSqsAddress::parse("sns+sqs://AKID:se%2Fcret@us-east-1?endpoint=http://127.0.0.1:4566")
                .expect("valid");
        assert_eq!(emulated.endpoint.as_deref(), Some("http://127.0.0.1:4566"));
        assert_eq!(
            emulated.credentials,
            Some(("AKID".to_owned(), "se/cret".to_owned()))
        );
        assert!(!format!("{emulated:?}").contains("se/cret"));
        for bad in [
            "sns+sqs://",
            "sns+sqs://EU_WEST",
            "sns+sqs://eu-west-1:443",
            "sns+sqs://eu-west-1/queue",
            "sns+sqs://eu-west-1?endpoint=ftp://x",
            "sns+sqs://eu-west-1?region=x",
            "sns+sqs://AKID@eu-west-1",
        ] {
            assert!(SnsSqsAddress::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
