//! The shipped compose file, for real: the six images built offline, `podman-compose` brings
//! `deploy/compose/compose.yaml` up (with `tests/compose/compose.host-backends.yaml` pointing
//! it at this machine's Postgres and NATS, as no registry here serves their images), a signup
//! goes through the published gateway, the signup container is restarted under a steady load
//! with no signup lost, and `down -v` leaves no container, network, volume or pod behind.
//!
//! The project, its databases and its bus namespace are unique to the run. The dozen
//! containers reach the host's Postgres and NATS, which listen on loopback only, through
//! forwarders the test binds to the compose network's gateway address.
//!
//! podman 4.3 (Debian 12) has no `podman wait --condition=healthy`, runs health checks only
//! from systemd timers, and cannot start a container whose running dependency has
//! dependencies of its own (podman-compose issue #921, fixed in podman 5.6). So the test does
//! the waiting podman-compose does on a newer podman: it brings the project up a stage at a
//! time with `up --no-deps <services>`, in the order of the file's `depends_on`, and gates each
//! stage as the file says — migrations exited 0, services healthy by the file's own health
//! check, which the test runs.
//! `DOZEN_OCI_RUNTIME` names podman's OCI runtime, as in containers.rs.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dozen_tests::database::{Backend, TestDatabase, postgres_admin_url};
use dozen_tests::images::{Images, podman, podman_ok, printed, world_writable_folder};
use dozen_tests::nats::{StreamNamespace, nats_url};
use dozen_tests::process::SERVICES;
use dozen_tests::public_api::{PublicApi, subject_of};
use dozen_tests::steady_load::{self, Answer, Endpoint, Repair, SteadyLoad, Stores};
use dozen_tests::{PATIENCE, repository};
use serde_json::{Value, json};

/// The load during the restart: requests a second, and for how long.
const RATE: u32 = 20;
const LOAD_FOR: Duration = Duration::from_secs(30);
/// When, into the load, the signup container is restarted.
const RESTART_AT: u32 = 8;

/// A TCP forwarder from an address on the compose network to a server on this machine's
/// loopback; stops, with every connection it carries, when dropped. Hand-written: a few lines
/// of tokio, where a proxy crate would bring far more than a byte pipe.
struct Forwarder {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    /// Listen on a free port of `address` (which need not exist yet: podman brings the bridge
    /// up with its first container) and pass every connection on to `target`.
    fn start(address: Ipv4Addr, target: SocketAddr) -> Self {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a socket");
        socket.set_freebind_v4(true).expect("IP_FREEBIND");
        socket
            .bind(&SocketAddrV4::new(address, 0).into())
            .expect("a free port on the gateway address");
        socket.listen(128).expect("listening");
        socket.set_nonblocking(true).expect("non-blocking");
        let listener = tokio::net::TcpListener::from_std(socket.into()).expect("a listener");
        let port = listener.local_addr().expect("bound").port();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { port, task }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The host and port of a URL.
fn socket_of(url: &str) -> SocketAddr {
    let url = reqwest::Url::parse(url).expect("a URL");
    let host = url.host_str().expect("a host").to_owned();
    let port = url.port().expect("a port");
    std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .expect("an address")
        .next()
        .expect("an address")
}

/// `url` with its host and port replaced.
fn moved(url: &str, host: Ipv4Addr, port: u16) -> String {
    let mut url = reqwest::Url::parse(url).expect("a URL");
    url.set_ip_host(host.into()).expect("a host");
    url.set_port(Some(port)).expect("a port");
    url.to_string()
}

/// One compose project: its name, files and environment. On drop, whatever of it remains is
/// removed, whether the test passed or not.
struct Project {
    name: String,
    env: Vec<(String, String)>,
}

impl Project {
    /// `podman-compose` on the shipped file and the override, with the project's environment.
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let runtime = std::env::var("DOZEN_OCI_RUNTIME").unwrap_or_else(|_| "runc".to_owned());
        let mut command = tokio::process::Command::new("podman-compose");
        command
            // As in containers.rs: podman's OCI runtime, and limits within this machine's hard
            // limits (podman's default open-file limit is refused here).
            .arg(format!("--podman-args=--runtime={runtime}"))
            .arg("--podman-run-args=--ulimit=nofile=1024:1024 --ulimit=nproc=1024:1024")
            .arg("--project-name")
            .arg(&self.name)
            .arg("--file")
            .arg(repository().join("deploy/compose/compose.yaml"))
            .arg("--file")
            .arg(repository().join("tests/compose/compose.host-backends.yaml"))
            .args(args)
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .kill_on_drop(true);
        command
    }

    /// Run `podman-compose args` and require success.
    async fn compose(&self, args: &[&str]) {
        let output = self.command(args).output().await.unwrap_or_else(|e| {
            panic!("cannot run podman-compose (scripts/backing-services installs it): {e}")
        });
        assert!(
            output.status.success(),
            "podman-compose {} failed ({}):\n{}",
            args.join(" "),
            output.status,
            printed(&output)
        );
    }

    /// The label every container, network, volume and pod of the project carries.
    fn label(&self) -> String {
        format!("label=io.podman.compose.project={}", self.name)
    }

    /// The pod podman-compose puts the project's containers in: it names it so, without a
    /// label.
    fn pod(&self) -> String {
        format!("pod_{}", self.name)
    }

    /// The container of `service`.
    async fn container(&self, service: &str) -> String {
        let names = podman_ok(&[
            "ps",
            "--all",
            "--filter",
            &self.label(),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
            "--format",
            "{{.Names}}",
        ])
        .await;
        let names: Vec<&str> = names.lines().collect();
        assert_eq!(names.len(), 1, "one container of {service}: {names:?}");
        names[0].to_owned()
    }

    /// Every container, network, volume and pod of the project that exists.
    async fn remains(&self) -> Vec<String> {
        let label = self.label();
        let mut remains = Vec::new();
        for (kind, list) in [
            (
                "container",
                vec!["ps", "--all", "--filter", &label, "--format", "{{.Names}}"],
            ),
            (
                "network",
                vec!["network", "ls", "--filter", &label, "--format", "{{.Name}}"],
            ),
            (
                "volume",
                vec!["volume", "ls", "--filter", &label, "--format", "{{.Name}}"],
            ),
        ] {
            for name in podman_ok(&list).await.lines() {
                remains.push(format!("{kind} {name}"));
            }
        }
        if podman(&["pod", "exists", &self.pod()]).await.status.success() {
            remains.push(format!("pod {}", self.pod()));
        }
        remains
    }

    /// Wait until the compose file's health check of `service` passes.
    async fn wait_healthy(&self, service: &str) {
        let container = self.container(service).await;
        let deadline = Instant::now() + PATIENCE;
        while !podman(&["healthcheck", "run", &container]).await.status.success() {
            if Instant::now() > deadline {
                panic!(
                    "{service} is not healthy within {PATIENCE:?}:\n{}",
                    self.logs(service).await
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A container's logs, for failure messages.
    async fn logs(&self, service: &str) -> String {
        printed(&podman(&["logs", "--tail", "40", &self.container(service).await]).await)
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        // Synchronous: this may run while a failed test unwinds, outside any runtime.
        let label = self.label();
        let remove = |args: &[&str]| {
            let listed = std::process::Command::new("podman").args(args).output();
            let names: Vec<String> = listed
                .map(|output| {
                    String::from_utf8_lossy(&output.stdout)
                        .lines()
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            names
        };
        let _ = std::process::Command::new("podman")
            .args(["pod", "rm", "--force", &self.pod()])
            .output();
        for (list, remove_args) in [
            (
                vec!["ps", "--all", "--filter", &label, "--format", "{{.Names}}"],
                vec!["rm", "--force", "--time", "0"],
            ),
            (
                vec!["network", "ls", "--filter", &label, "--format", "{{.Name}}"],
                vec!["network", "rm", "--force"],
            ),
            (
                vec!["volume", "ls", "--filter", &label, "--format", "{{.Name}}"],
                vec!["volume", "rm", "--force"],
            ),
        ] {
            let names = remove(&list);
            if !names.is_empty() {
                let _ = std::process::Command::new("podman")
                    .args(&remove_args)
                    .args(&names)
                    .output();
            }
        }
    }
}

/// `up --detach` of `services` alone, without their dependencies (see the module's docs).
fn up<'a>(services: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["up", "--detach", "--no-build", "--no-deps"];
    args.extend_from_slice(services);
    args
}

/// Write the compose file's secrets: the JWT signing key, the trust bundle, each service's
/// identity key; readable by the images' non-root user.
fn write_secrets(folder: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let identities = dozen_tests::identity::identities();
    let mut files = vec![
        (
            "jwt-signing-key.pem".to_owned(),
            dozen_passwords::generate_signing_key_pem(),
        ),
        ("service-keys.json".to_owned(), identities.bundle().to_owned()),
    ];
    for (service, _) in SERVICES {
        files.push((format!("{service}.pem"), identities.pem(service).to_owned()));
    }
    for (name, contents) in files {
        let path = folder.join(name);
        std::fs::write(&path, contents).expect("a secret written");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("readable");
    }
    std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o755)).expect("readable");
}

#[tokio::test(flavor = "multi_thread")]
async fn compose_runs_the_platform_restarts_a_service_under_load_and_leaves_nothing() {
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let mut images = Images::build("localhost/dozen-test-", &id).await;
    let stand_in = images.build_stand_in().await;

    // The compose network made beforehand, its subnet picked by podman and labelled as
    // podman-compose labels its own (so `down` removes it): the forwarders need its gateway.
    let name = format!("dozen-test-{id}");
    let network = format!("{name}_default");
    let mut project = Project {
        name: name.clone(),
        env: Vec::new(),
    };
    podman_ok(&[
        "network",
        "create",
        "--label",
        &format!("io.podman.compose.project={name}"),
        "--label",
        &format!("com.docker.compose.project={name}"),
        &network,
    ])
    .await;
    let gateway: Ipv4Addr = podman_ok(&[
        "network",
        "inspect",
        "--format",
        "{{range .Subnets}}{{.Gateway}}{{end}}",
        &network,
    ])
    .await
    .parse()
    .expect("the network's IPv4 gateway");
    let postgres = Forwarder::start(gateway, socket_of(&postgres_admin_url()));
    let nats = Forwarder::start(gateway, socket_of(&nats_url()));

    let namespace = StreamNamespace::new("compose");
    let mut databases = Vec::new();
    for (service, has_database) in SERVICES {
        if has_database {
            databases.push((service, TestDatabase::create(Backend::Postgres).await));
        }
    }
    let secrets = tempfile::tempdir().expect("a temporary folder");
    write_secrets(secrets.path());
    let mailbox = world_writable_folder();

    project.env = vec![
        ("DOZEN_IMAGE_PREFIX".into(), images.prefix.clone()),
        ("DOZEN_TAG".into(), images.tag.clone()),
        ("DOZEN_TEST_STAND_IN".into(), stand_in),
        ("DOZEN_TEST_SECRETS".into(), secrets.path().display().to_string()),
        ("DOZEN_TEST_MAILBOX".into(), mailbox.path().display().to_string()),
        (
            "DOZEN_TEST_BUS_URL".into(),
            moved(&nats_url(), gateway, nats.port),
        ),
        ("DOZEN_TEST_BUS_NAMESPACE".into(), namespace.namespace.clone()),
    ];
    for (service, database) in &databases {
        project.env.push((
            format!("DOZEN_TEST_{}_DATABASE_URL", service.to_uppercase()),
            moved(&database.url, gateway, postgres.port),
        ));
    }

    // Up in the stages of the file's depends_on, each gated as compose.yaml says: the
    // stand-ins, then the migrations (each must exit 0), then the services, each stage healthy
    // by the file's own health check (the image's probe) before the next starts.
    let started = Instant::now();
    project.compose(&up(&["postgres", "nats", "mailpit"])).await;
    let migrations: Vec<String> = databases
        .iter()
        .map(|(service, _)| format!("{service}-migrate"))
        .collect();
    project
        .compose(&up(&migrations.iter().map(String::as_str).collect::<Vec<_>>()))
        .await;
    for migration in &migrations {
        let container = project.container(migration).await;
        let code = tokio::time::timeout(PATIENCE, podman(&["wait", &container]))
            .await
            .unwrap_or_else(|_| panic!("{migration} does not finish within {PATIENCE:?}"));
        assert_eq!(
            String::from_utf8_lossy(&code.stdout).trim(),
            "0",
            "{migration} exits 0:\n{}",
            project.logs(migration).await
        );
    }
    for stage in [
        &["passwords"][..],
        &["users", "friends", "verification"],
        &["signup"],
        &["gateway"],
    ] {
        project.compose(&up(stage)).await;
        for service in stage {
            project.wait_healthy(service).await;
        }
    }
    println!("compose | up and healthy in {:.1?}", started.elapsed());

    // The gateway on the loopback port podman picked.
    let gateway_container = project.container("gateway").await;
    let published = podman_ok(&["port", &gateway_container, "8080/tcp"]).await;
    let published = published.lines().next().expect("a published port").to_owned();
    assert!(
        published.starts_with("127.0.0.1:"),
        "published on loopback only: {published}"
    );
    let url = format!("http://{published}");
    let api = Arc::new(PublicApi::new(url.clone()));

    // How often each service was started again by its restart policy meanwhile.
    let mut restarts = Vec::new();
    for (service, _) in SERVICES {
        let count = podman_ok(&[
            "inspect",
            "--format",
            "{{.RestartCount}}",
            &project.container(service).await,
        ])
        .await;
        restarts.push(format!("{service} {count}"));
    }
    println!("compose | restarts while starting: {}", restarts.join(", "));

    // The signup journey through the published gateway.
    let email = format!("compose-{id}@example.com");
    let accepted = api
        .sign_up(&format!("compose-{id}"), &email, "Cora", &["compose"])
        .await;
    assert_eq!(accepted.status(), 202);
    assert_eq!(
        accepted.json::<Value>().await.expect("JSON"),
        json!({ "status": "pending_verification" })
    );
    assert!(!subject_of(&api.verify_and_log_in(&email).await).is_empty());

    // signup restarted under a steady load: SIGTERM, drain, start again on the same network.
    let members = steady_load::members(&api).await;
    let signup = project.container("signup").await;
    let load = SteadyLoad::start(members, RATE, LOAD_FOR);
    load.reached(RESTART_AT).await;
    let restarting = Instant::now();
    podman_ok(&["restart", &signup]).await;
    project.wait_healthy("signup").await;
    println!(
        "compose | signup restarted and healthy again in {:.1?}",
        restarting.elapsed()
    );
    let outcomes = load.finish().await;
    let stores = Stores {
        databases: databases
            .iter()
            .map(|(service, database)| (*service, database.url.clone()))
            .collect::<BTreeMap<_, _>>(),
        repair: Repair::Container(signup.clone()),
    };
    let tally = stores.tally(&api, &outcomes, PATIENCE).await;
    tally.print("compose, signup container restarted");
    assert_eq!(tally.lost, 0, "no accepted signup is lost: {tally:?}");
    assert_eq!(tally.duplicated, 0, "no signup is mailed twice: {tally:?}");
    assert_eq!(tally.orphaned, 0, "no profile without a credential: {tally:?}");
    assert_eq!(tally.dead_letters, 0, "no dead letter: {tally:?}");
    // Only signups need signup: anything else is answered, at worst a profile page without
    // some part past its deadline on a busy machine (`degraded`), never an error.
    for outcome in outcomes.iter().filter(|outcome| !outcome.succeeded()) {
        assert!(
            outcome.kind == Endpoint::Signup || outcome.answer == Answer::Degraded,
            "only signups may fail while signup restarts: {outcome:?}"
        );
    }

    // Down, volumes too: nothing of the project remains.
    let stopping = Instant::now();
    project.compose(&["down", "--volumes"]).await;
    println!("compose | down in {:.1?}", stopping.elapsed());
    let remains = project.remains().await;
    assert!(
        remains.is_empty(),
        "compose down leaves nothing behind: {remains:?}"
    );
}
