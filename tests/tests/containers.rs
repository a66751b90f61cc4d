//! The platform from its container images: `deploy/build-images` packages the binaries this
//! workspace built into one image per service with buildah (offline), podman runs each service
//! from its image — as the non-root user, on a read-only root file system with only `/data`
//! writable, all capabilities dropped — against the host's Postgres (a database per service,
//! migrated by one-off `migrate` containers) and NATS JetStream (a namespace of its own). A
//! signup goes through the gateway container, its mail is read back, the link verifies the
//! account and login succeeds. Then every container gets SIGTERM and must exit 0 within its
//! grace period.
//!
//! Everything is named uniquely for the run and removed at the end, passed or failed.
//! `DOZEN_OCI_RUNTIME` names podman's OCI runtime (default `runc`; see RUST-NOTES.md).

use std::time::{Duration, Instant};

use dozen_tests::database::{Backend, TestDatabase};
use dozen_tests::images::{Images, podman, podman_ok, printed, world_writable_folder};
use dozen_tests::nats::StreamNamespace;
use dozen_tests::process::{ReservedPort, SERVICES};
use dozen_tests::public_api::{PublicApi, subject_of};
use serde_json::{Value, json};

/// How long each service may take to stop after SIGTERM: the drain delay plus the shutdown
/// timeout below, plus slack. The Kubernetes and ECS manifests give the same budget shape.
const GRACE: Duration = Duration::from_secs(15);
const DRAIN_DELAY: &str = "1s";
const SHUTDOWN_TIMEOUT: &str = "10s";

/// Bounded waits for the asynchronous parts (readiness, mail, verification reaching passwords).
const DEADLINE: Duration = Duration::from_secs(60);

/// The run's images and containers; removed on drop, whether the test passed or not.
#[derive(Debug)]
struct Run {
    /// Unique per run: in every image tag and container name.
    id: String,
    /// The OCI runtime podman runs containers with.
    runtime: String,
    /// The six images, built for the run.
    images: Images,
    /// Containers started so far.
    containers: Vec<String>,
    /// The host folder every container writes its `/data` to (its mailbox): a bind mount,
    /// since a tmpfs under runc here is not writable by the image's non-root user.
    data: tempfile::TempDir,
}

impl Run {
    /// A new run, with every service's image built from the binaries next to this test.
    async fn new() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        Self {
            images: Images::build("localhost/dozen-test-", &id).await,
            id,
            runtime: std::env::var("DOZEN_OCI_RUNTIME").unwrap_or_else(|_| "runc".to_owned()),
            containers: Vec::new(),
            data: world_writable_folder(),
        }
    }

    fn image(&self, service: &str) -> String {
        self.images.of(service)
    }

    fn container(&self, name: &str) -> String {
        format!("dozen-test-{}-{name}", self.id)
    }

    /// `podman run` arguments every container gets: host networking (Postgres and NATS are on
    /// the host's loopback), and the restrictions the Kubernetes manifests impose.
    fn run_args(&self, name: &str) -> Vec<String> {
        let data = format!("{}:/data", self.data.path().display());
        [
            "run",
            "--name",
            name,
            "--runtime",
            self.runtime.as_str(),
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "--network",
            "host",
            "--read-only",
            "--volume",
            data.as_str(),
            "--cap-drop",
            "all",
            "--security-opt",
            "no-new-privileges",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// Run a one-off container to completion (an admin process); its exit code and logs.
    async fn one_off(
        &mut self,
        name: &str,
        image: &str,
        env: &[(String, String)],
        args: &[&str],
    ) -> (i64, String) {
        let name = self.container(name);
        self.containers.push(name.clone());
        let mut command = self.run_args(&name);
        for (key, value) in env {
            command.extend(["--env".to_owned(), format!("{key}={value}")]);
        }
        command.push(image.to_owned());
        command.extend(args.iter().map(|arg| (*arg).to_owned()));
        let command: Vec<&str> = command.iter().map(String::as_str).collect();
        let output = tokio::time::timeout(DEADLINE, podman(&command))
            .await
            .unwrap_or_else(|_| panic!("{name} did not finish within {DEADLINE:?}"));
        (i64::from(output.status.code().unwrap_or(-1)), printed(&output))
    }

    /// Start a service's container in the background.
    async fn start(&mut self, service: &str, env: &[(String, String)]) {
        let name = self.container(service);
        self.containers.push(name.clone());
        let mut command = self.run_args(&name);
        command.insert(1, "--detach".to_owned());
        for (key, value) in env {
            command.extend(["--env".to_owned(), format!("{key}={value}")]);
        }
        command.push(self.image(service));
        let command: Vec<&str> = command.iter().map(String::as_str).collect();
        podman_ok(&command).await;
    }

    /// A container's logs, for failure messages.
    async fn logs(&self, name: &str) -> String {
        printed(&podman(&["logs", name]).await)
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // Synchronous: this may run while a failed test unwinds, outside any runtime.
        if !self.containers.is_empty() {
            let _ = std::process::Command::new("podman")
                .args(["rm", "--force", "--time", "0"])
                .args(&self.containers)
                .output();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_images_run_the_platform_a_signup_completes_and_every_container_stops_cleanly() {
    let mut run = Run::new().await;

    // Each image is the service, as the non-root user, labelled with its release.
    for (service, _) in SERVICES {
        let config = podman_ok(&[
            "image",
            "inspect",
            "--format",
            "{{.Config.User}} {{index .Config.Labels \"org.opencontainers.image.title\"}}",
            &run.image(service),
        ])
        .await;
        assert_eq!(config, format!("65532:65532 dozen-{service}"));
    }

    // Backing services on the host: a database per service, a bus namespace for this run.
    let namespace = StreamNamespace::new("containers");
    let mut databases = Vec::new();
    for (service, has_database) in SERVICES {
        if has_database {
            databases.push((service, TestDatabase::create(Backend::Postgres).await));
        }
    }
    // Held for the whole test: each service, on the host's network, listens on its reserved
    // port (see ReservedPort) while no one else can take it.
    let reserved: Vec<(&str, ReservedPort)> = SERVICES
        .iter()
        .map(|(service, _)| (*service, ReservedPort::new()))
        .collect();
    let ports: Vec<(&str, u16)> = reserved
        .iter()
        .map(|(service, reserved)| (*service, reserved.port))
        .collect();
    let port_of = |service: &str| {
        ports
            .iter()
            .find(|(name, _)| *name == service)
            .map(|(_, port)| *port)
            .expect("a service")
    };
    let gateway = format!("http://127.0.0.1:{}", port_of("gateway"));
    let signing_key = dozen_passwords::generate_signing_key_pem();

    let mut shared: Vec<(String, String)> = vec![
        ("BUS_URL".into(), dozen_tests::nats::nats_url()),
        ("BUS_NAMESPACE".into(), namespace.namespace.clone()),
        ("DRAIN_DELAY".into(), DRAIN_DELAY.into()),
        ("SHUTDOWN_TIMEOUT".into(), SHUTDOWN_TIMEOUT.into()),
    ];
    for (service, port) in &ports {
        shared.push((
            format!("{}_URL", service.to_uppercase()),
            format!("http://127.0.0.1:{port}"),
        ));
    }
    let env_of = |service: &str| {
        let mut env = shared.clone();
        env.push(("PORT".into(), port_of(service).to_string()));
        if let Some((_, database)) = databases.iter().find(|(name, _)| *name == service) {
            env.push(("DATABASE_URL".into(), database.url.clone()));
        }
        for (name, value) in dozen_tests::identity::identities().env(service) {
            env.push((name.into(), value.into()));
        }
        match service {
            "passwords" => {
                env.push(("JWT_SIGNING_KEYS".into(), signing_key.clone()));
                env.push(("TRUST_FORWARDED_FOR".into(), "true".into()));
            }
            "verification" => {
                // The dev mailbox on the container's writable /data; the gateway reads it back.
                // On NATS (and Postgres) it must be allowed: only a test platform does that.
                env.push(("MAIL_URL".into(), "file:///data/mailbox".into()));
                env.push(("DEV_MAILBOX_ALLOW_PRODUCTION_BACKENDS".into(), "true".into()));
                env.push(("PUBLIC_URL".into(), gateway.clone()));
            }
            "gateway" => env.push(("DEV_MAILBOX".into(), "true".into())),
            _ => {}
        }
        env
    };

    // The migrate admin process: a one-off container per database, before any service starts.
    for (service, _) in &databases {
        let (code, logs) = run
            .one_off(
                &format!("{service}-migrate"),
                &run.image(service),
                &env_of(service),
                &["migrate"],
            )
            .await;
        assert_eq!(code, 0, "{service} migrate exits 0:\n{logs}");
    }

    for (service, _) in SERVICES {
        run.start(service, &env_of(service)).await;
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("HTTP client");
    for (service, port) in &ports {
        let started = Instant::now();
        let deadline = started + DEADLINE;
        loop {
            let ready = client
                .get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await
                .is_ok_and(|answer| answer.status() == 200);
            if ready {
                break;
            }
            if Instant::now() > deadline {
                let name = run.container(service);
                panic!(
                    "{service} is not ready within {DEADLINE:?}:\n{}",
                    run.logs(&name).await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // A signup through the gateway container, its mail, the link, and a login.
    let api = PublicApi::new(gateway.clone());
    let email = format!("container-{}@example.com", run.id);
    let accepted = api
        .sign_up(&format!("containers-{}", run.id), &email, "Cora", &["containers"])
        .await;
    assert_eq!(accepted.status(), 202);
    assert_eq!(
        accepted.json::<Value>().await.expect("JSON"),
        json!({ "status": "pending_verification" })
    );
    let access_token = api.verify_and_log_in(&email).await;
    assert!(!subject_of(&access_token).is_empty());

    // SIGTERM to every service at once, as a rollout or `compose down` does; each must exit 0
    // before its grace period is over.
    let names: Vec<String> = SERVICES
        .iter()
        .map(|(service, _)| run.container(service))
        .collect();
    let signalled = Instant::now();
    for name in &names {
        podman_ok(&["kill", "--signal", "TERM", name.as_str()]).await;
    }
    for name in &names {
        let waited = tokio::time::timeout(
            GRACE.saturating_sub(signalled.elapsed()),
            podman(&["wait", name.as_str()]),
        )
        .await;
        let Ok(output) = waited else {
            panic!(
                "{name} did not exit within its grace period of {GRACE:?} after SIGTERM:\n{}",
                run.logs(name).await
            );
        };
        let code = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        assert_eq!(
            code,
            "0",
            "{name} exits 0 after SIGTERM:\n{}",
            run.logs(name).await
        );
    }
    eprintln!("all six containers stopped in {:.1?}", signalled.elapsed());
}
