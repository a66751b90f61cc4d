//! The whole platform under `dozen up`, on free ports and a throwaway data folder: every port
//! is 0, and `dozen up` prints the one each service got.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::process::Running;

/// Every service, in the order `dozen up` reports them.
pub const SERVICES: [&str; 6] = [
    "gateway",
    "signup",
    "users",
    "passwords",
    "verification",
    "friends",
];

/// A running `dozen up`.
#[derive(Debug)]
pub struct Platform {
    /// The `dozen up` process.
    pub up: Running,
    /// Each service's port.
    pub ports: Vec<(&'static str, u16)>,
    data: tempfile::TempDir,
}

impl Platform {
    /// Start `dozen up` with `extra_env`, and wait until it says every service is ready.
    ///
    /// The gateway's rate limits are raised (`extra_env` may set them again): every test client
    /// calls from 127.0.0.1, faster than any person would. `security_edge.rs` tests the limits.
    pub async fn start(extra_env: &[(&str, &str)]) -> Self {
        Self::start_in(tempfile::tempdir().expect("data folder"), extra_env).await
    }

    /// [`Platform::start`] with its data in `data` (a folder on a small disk, say).
    pub async fn start_in(data: tempfile::TempDir, extra_env: &[(&str, &str)]) -> Self {
        let port_vars: Vec<String> = SERVICES
            .iter()
            .map(|name| format!("{}_PORT", name.to_uppercase()))
            .collect();
        let data_dir = data.path().to_string_lossy().into_owned();
        let mut env: Vec<(&str, &str)> = port_vars.iter().map(|name| (name.as_str(), "0")).collect();
        env.push(("DATA_DIR", &data_dir));
        for variable in [
            "RATE_LIMIT_SIGNUPS",
            "RATE_LIMIT_SESSIONS",
            "RATE_LIMIT_VERIFICATIONS",
            "RATE_LIMIT_READS",
        ] {
            env.push((variable, "10000/min"));
        }
        env.extend_from_slice(extra_env);
        let mut up = Running::start("dozen", &["up"], &env);
        up.wait_for_line(Duration::from_secs(90), |line| {
            line.contains("all 6 services are ready")
        })
        .await;
        let lines = up.lines();
        let ports = SERVICES
            .iter()
            .map(|name| {
                let marker = format!("{name} listens on http://127.0.0.1:");
                let port = lines
                    .iter()
                    .find_map(|line| {
                        let at = line.find(&marker)? + marker.len();
                        line[at..].parse().ok()
                    })
                    .unwrap_or_else(|| panic!("dozen up says where {name} listens:\n{}", lines.join("\n")));
                (*name, port)
            })
            .collect();
        Self { up, ports, data }
    }

    /// Its data folder (`DATA_DIR`).
    pub fn data_dir(&self) -> &std::path::Path {
        self.data.path()
    }

    /// The folder of the services' identity keys `dozen up` made.
    pub fn keys_dir(&self) -> std::path::PathBuf {
        self.data.path().join("service-keys")
    }

    /// A fresh `Service-Authorization` value of `caller` for `callee`, signed with the key
    /// `dozen up` made for `caller`.
    pub fn service_authorization(&self, caller: &str, callee: &str) -> String {
        crate::identity::header_from_folder(&self.keys_dir(), caller, callee)
    }

    /// The port of `service`.
    pub fn port(&self, service: &str) -> u16 {
        self.ports
            .iter()
            .find(|(name, _)| *name == service)
            .map(|(_, port)| *port)
            .expect("a service name")
    }

    /// `http://127.0.0.1:<port of service><path>`.
    pub fn url(&self, service: &str, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port(service))
    }

    /// The pid of the newest process of `service`, from dozen's "started" lines.
    pub fn pid_of(&self, service: &str) -> i32 {
        let marker = format!("started {service} (pid ");
        let line = self
            .up
            .lines()
            .into_iter()
            .rev()
            .find(|line| line.contains(&marker))
            .expect("a started line");
        let start = line.find(&marker).expect("marker") + marker.len();
        line[start..].trim_end_matches(')').parse().expect("a pid")
    }

    /// How often `service` was started.
    pub fn started_count(&self, service: &str) -> usize {
        let marker = format!("started {service} (pid ");
        self.up
            .lines()
            .iter()
            .filter(|line| line.contains(&marker))
            .count()
    }

    /// The sum of the samples of `metric` on `service`'s `/metrics` whose labels include every
    /// one of `labels` (`name="value"`); 0 when there is none.
    pub async fn metric(&self, service: &str, metric: &str, labels: &[&str]) -> f64 {
        let text = reqwest::get(self.url(service, "/metrics"))
            .await
            .expect("/metrics answers")
            .text()
            .await
            .expect("/metrics text");
        text.lines()
            .filter(|line| {
                line.strip_prefix(metric)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter(|line| labels.iter().all(|label| line.contains(label)))
            .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    }

    /// Whether the `signups` signups answered so far (each ends in a `user.signed_up`, or in
    /// a `user.signup_conflict`) have all been published, and verification has handled every
    /// `user.signed_up`: whatever follows sees their effects (links issued and revoked).
    pub async fn signups_settled(&self, signups: usize) -> bool {
        let published = |topic: &'static str| async move {
            self.metric("signup", "bus_published_total", &[&format!("topic=\"{topic}\"")])
                .await
        };
        let signed_up = published("user.signed_up").await;
        let conflicts = published("user.signup_conflict").await;
        let handled = self
            .metric(
                "verification",
                "bus_handled_total",
                &[
                    "topic=\"user.signed_up\"",
                    "subscriber=\"verification\"",
                    "outcome=\"handled\"",
                ],
            )
            .await;
        // Counts, far below 2^52: exact as floats.
        #[allow(clippy::cast_precision_loss)]
        let signups = signups as f64;
        signed_up + conflicts >= signups && handled >= signed_up
    }

    /// Whether `/readyz` of the service on `port` answers 200.
    pub async fn is_ready(&self, port: u16) -> bool {
        reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|response| response.status() == 200)
    }

    /// Ctrl-C, and check that every service stopped and freed its port; the pids of every
    /// process it started are returned.
    pub async fn stop(mut self) -> Vec<i32> {
        // Every process dozen started, replicas and restarted ones included.
        let pids: Vec<i32> = self
            .up
            .lines()
            .iter()
            .filter(|line| line.contains("| started "))
            .filter_map(|line| line.rsplit_once("(pid ")?.1.trim_end_matches(')').parse().ok())
            .collect();
        self.up.signal(Signal::SIGINT);
        let status = self.up.wait(Duration::from_secs(60)).await;
        assert!(
            status.success(),
            "dozen up exits 0 after Ctrl-C: {status}\n{}",
            self.up.lines().join("\n")
        );
        for (name, port) in &self.ports {
            let connected = tokio::net::TcpStream::connect(("127.0.0.1", *port)).await;
            assert!(connected.is_err(), "{name} still listens on {port}");
        }
        pids
    }
}

/// A platform's backing services on the test Postgres and NATS: databases and streams of its
/// own, both removed when this is dropped, whether the test passed or not.
#[derive(Debug)]
pub struct PostgresAndNats {
    /// The platform's databases.
    pub databases: crate::database::DatabasePrefix,
    streams: crate::nats::StreamNamespace,
    nats_url: String,
}

impl PostgresAndNats {
    /// New databases and streams, named after `purpose`.
    pub fn new(purpose: &str) -> Self {
        Self {
            databases: crate::database::DatabasePrefix::new(purpose),
            streams: crate::nats::StreamNamespace::new(purpose),
            nats_url: crate::nats::nats_url(),
        }
    }

    /// The settings that put `dozen up` on them, keeping the dev mailbox (tests read it).
    pub fn env(&self) -> [(&str, &str); 4] {
        [
            ("DATABASE_URL", &self.databases.url),
            ("BUS_URL", &self.nats_url),
            ("BUS_NAMESPACE", &self.streams.namespace),
            ("DEV_MAILBOX_ALLOW_PRODUCTION_BACKENDS", "true"),
        ]
    }
}
