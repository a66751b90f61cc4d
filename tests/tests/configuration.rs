//! Settings come from the environment only; a bad or missing one stops the process with one
//! line naming the variable.

use dozen_tests::database::{Backend, TestDatabase};
use dozen_tests::identity::identities;
use dozen_tests::process::{SERVICES, Service, run_to_exit};

fn assert_one_clear_line(stderr: &str, variable: &str) {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{stderr}");
    assert!(
        lines[0].contains(variable),
        "the line does not name {variable}: {}",
        lines[0]
    );
    assert!(!stderr.contains("panicked"), "a panic: {stderr}");
}

#[tokio::test]
async fn a_bad_port_stops_every_service_with_one_line_naming_port() {
    for (service, _) in SERVICES {
        let run = run_to_exit(&format!("dozen-{service}"), &[], &[("PORT", "eighty")]).await;
        assert_eq!(run.status.code(), Some(2), "{service}: {run:?}");
        assert_one_clear_line(&run.stderr, "PORT");
        assert!(
            run.stderr.contains("eighty"),
            "the line names the bad value: {}",
            run.stderr
        );
    }
}

#[tokio::test]
async fn a_bad_database_url_is_named_without_showing_its_value() {
    let run = run_to_exit(
        "dozen-users",
        &[],
        &[("DATABASE_URL", "mysql://root:hunter2@db/users")],
    )
    .await;
    assert_eq!(run.status.code(), Some(2));
    assert_one_clear_line(&run.stderr, "DATABASE_URL");
    assert!(!run.stderr.contains("hunter2"), "a secret leaked: {}", run.stderr);
}

#[tokio::test]
async fn a_bad_peer_url_is_named() {
    let run = run_to_exit("dozen-signup", &[], &[("USERS_URL", "users:8082")]).await;
    assert_eq!(run.status.code(), Some(2));
    assert_one_clear_line(&run.stderr, "USERS_URL");
}

#[tokio::test]
async fn bad_durations_levels_and_formats_are_named() {
    for (variable, value) in [
        ("SHUTDOWN_TIMEOUT", "soon"),
        ("HEADER_READ_TIMEOUT", "0s"),
        ("LOG_LEVEL", "[nonsense"),
        ("LOG_FORMAT", "xml"),
        ("BODY_LIMIT", "-1"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector"),
        ("DATABASE_MAX_CONNECTIONS", "0"),
        ("UPSTREAM_MAX_ATTEMPTS", "0"),
        ("UPSTREAM_RETRY_BACKOFF", "fast"),
        ("UPSTREAM_RETRY_BUDGET_PERCENT", "150"),
        ("UPSTREAM_RETRY_BUDGET_MIN_PER_SECOND", "-1"),
        ("BREAKER_FAILURE_THRESHOLD", "0"),
        ("BREAKER_OPEN_FOR", "a while"),
        ("BUS_PROVISION", "perhaps"),
    ] {
        let run = run_to_exit("dozen-friends", &[], &[(variable, value)]).await;
        assert_eq!(run.status.code(), Some(2), "{variable}={value}: {run:?}");
        assert_one_clear_line(&run.stderr, variable);
    }
}

#[tokio::test]
async fn an_unreadable_secret_file_is_named() {
    let run = run_to_exit(
        "dozen-users",
        &[],
        &[("DATABASE_URL_FILE", "/nonexistent/secret")],
    )
    .await;
    assert_eq!(run.status.code(), Some(2));
    assert_one_clear_line(&run.stderr, "DATABASE_URL_FILE");
}

#[tokio::test]
async fn a_setting_can_come_from_a_file() {
    let database = TestDatabase::create(Backend::Sqlite).await;
    let folder = tempfile::tempdir().expect("temporary folder");
    let secret = folder.path().join("database-url");
    std::fs::write(&secret, format!("{}\n", database.url)).expect("write the secret file");
    let secret = secret.to_string_lossy().into_owned();

    let migrated = run_to_exit("dozen-users", &["migrate"], &[("DATABASE_URL_FILE", &secret)]).await;
    assert!(migrated.status.success(), "{migrated:?}");
    let service = Service::start("dozen-users", &[("DATABASE_URL_FILE", &secret)]).await;
    let ready = reqwest::get(service.url("/readyz"))
        .await
        .expect("readyz answers");
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn help_lists_every_variable_with_its_default() {
    let run = run_to_exit("dozen-signup", &["--help"], &[]).await;
    assert!(run.status.success());
    for variable in [
        "PORT",
        "HOST",
        "REQUEST_TIMEOUT",
        "HEADER_READ_TIMEOUT",
        "BODY_LIMIT",
        "DRAIN_DELAY",
        "SHUTDOWN_TIMEOUT",
        "LOG_FORMAT",
        "LOG_LEVEL",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "DATABASE_URL",
        "USERS_URL",
        "PASSWORDS_URL",
        "UPSTREAM_TIMEOUT",
        "UPSTREAM_MAX_ATTEMPTS",
        "UPSTREAM_RETRY_BACKOFF",
        "UPSTREAM_RETRY_BUDGET_PERCENT",
        "UPSTREAM_RETRY_BUDGET_MIN_PER_SECOND",
        "BREAKER_FAILURE_THRESHOLD",
        "BREAKER_OPEN_FOR",
    ] {
        assert!(
            run.stdout.contains(&format!("[env: {variable}")),
            "--help does not list {variable}"
        );
    }
    assert!(
        run.stdout.contains("[default: 8081]"),
        "the signup service's own port is its default"
    );
}

#[tokio::test]
async fn a_service_refuses_to_start_on_a_database_without_its_schema() {
    let database = TestDatabase::create(Backend::Sqlite).await;
    let run = run_to_exit("dozen-passwords", &[], &[("DATABASE_URL", &database.url)]).await;
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    let errors: Vec<&str> = run
        .stdout
        .lines()
        .filter(|line| line.contains("\"ERROR\""))
        .collect();
    assert_eq!(errors.len(), 1, "{}", run.stdout);
    assert!(
        errors[0].contains("migrate"),
        "the line says what to do: {}",
        errors[0]
    );
}

#[tokio::test]
async fn a_listen_fds_without_one_socket_handed_over_is_named() {
    // Nothing is handed over here: descriptor 3 is not open in the service.
    for value in ["1", "2"] {
        let [signing, trust] = identities().env("gateway");
        let env = [("LISTEN_FDS", value), ("PORT", "0"), signing, trust];
        let run = run_to_exit("dozen-gateway", &[], &env).await;
        assert!(!run.status.success(), "LISTEN_FDS={value}: {run:?}");
        let said = format!("{}{}", run.stdout, run.stderr);
        assert!(said.contains(&format!("LISTEN_FDS={value}")), "{said}");
        assert!(!said.contains("panicked"), "a panic: {said}");
    }
}

#[tokio::test]
async fn v13_3_1_help_never_shows_a_secret_given_as_a_value_or_in_a_file() {
    let secrets = [
        ("DATABASE_URL", "postgres://dozen:s3cret-database@db:5432/dozen"),
        (
            "JWT_SIGNING_KEYS",
            "-----BEGIN PRIVATE KEY-----s3cret-key-----END PRIVATE KEY-----",
        ),
        ("MAIL_URL", "smtp://mailer:s3cret-mail@smtp.example.com:587"),
        ("BUS_URL", "sns+sqs://AKIDEXAMPLE:s3cret-aws@eu-west-1"),
        (
            "SERVICE_SIGNING_KEYS",
            "-----BEGIN PRIVATE KEY-----s3cret-service-key-----END PRIVATE KEY-----",
        ),
        (
            "SERVICE_KEYS",
            r#"{"signup": {"keys": [{"x": "s3cret-bundle"}]}}"#,
        ),
    ];
    let folder = tempfile::tempdir().expect("temporary folder");
    let files: Vec<(String, String)> = secrets
        .iter()
        .map(|(variable, value)| {
            let path = folder.path().join(variable.to_lowercase());
            std::fs::write(&path, value).expect("write the secret file");
            (format!("{variable}_FILE"), path.to_string_lossy().into_owned())
        })
        .collect();
    let from_files: Vec<(&str, &str)> = files.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut programs: Vec<(String, Vec<&str>)> = SERVICES
        .iter()
        .map(|(service, _)| (format!("dozen-{service}"), vec!["--help"]))
        .collect();
    programs.push(("dozen".to_owned(), vec!["up", "--help"]));
    for (program, args) in &programs {
        for env in [&secrets[..], &from_files[..]] {
            let run = run_to_exit(program, args, env).await;
            assert!(run.status.success(), "{program} {args:?}: {run:?}");
            let output = format!("{}{}", run.stdout, run.stderr);
            assert!(
                !output.contains("s3cret"),
                "{program} {args:?} shows a secret:\n{output}"
            );
        }
    }
}

/// ASVS 5.0 V13.3.1 (secrets are managed and kept out of sight): each service's identity key
/// is required to serve, and a missing or bad one stops it with one line naming the setting,
/// never showing the key.
#[tokio::test]
async fn v13_3_1_a_missing_or_bad_service_identity_stops_the_service_naming_the_setting() {
    let database = TestDatabase::create(Backend::Sqlite).await;
    let migrated = run_to_exit("dozen-users", &["migrate"], &[("DATABASE_URL", &database.url)]).await;
    assert!(
        migrated.status.success(),
        "migrating needs no identity: {migrated:?}"
    );
    let fixture = identities();
    let not_ed25519 = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIDVcY0yew5otD1Pm03l3A1/VuTwr\n-----END PRIVATE KEY-----\n";
    let cases: [(&str, Vec<(&str, &str)>); 6] = [
        ("SERVICE_SIGNING_KEYS", vec![("SERVICE_KEYS", fixture.bundle())]),
        (
            "SERVICE_KEYS",
            vec![("SERVICE_SIGNING_KEYS", fixture.pem("users"))],
        ),
        (
            "SERVICE_SIGNING_KEYS",
            vec![
                ("SERVICE_SIGNING_KEYS", "s3cret-not-a-key"),
                ("SERVICE_KEYS", fixture.bundle()),
            ],
        ),
        (
            "SERVICE_SIGNING_KEYS",
            vec![
                ("SERVICE_SIGNING_KEYS", not_ed25519),
                ("SERVICE_KEYS", fixture.bundle()),
            ],
        ),
        (
            "SERVICE_KEYS",
            vec![
                ("SERVICE_SIGNING_KEYS", fixture.pem("users")),
                ("SERVICE_KEYS", "{not json"),
            ],
        ),
        // A key that the bundle says is another service's: users cannot pose as signup.
        (
            "SERVICE_SIGNING_KEYS",
            vec![
                ("SERVICE_SIGNING_KEYS", fixture.pem("signup")),
                ("SERVICE_KEYS", fixture.bundle()),
            ],
        ),
    ];
    for (variable, identity) in cases {
        let mut env = vec![("DATABASE_URL", database.url.as_str())];
        env.extend(identity);
        let run = run_to_exit("dozen-users", &[], &env).await;
        assert_eq!(run.status.code(), Some(1), "{variable}: {run:?}");
        let errors: Vec<&str> = run
            .stdout
            .lines()
            .filter(|line| line.contains("\"ERROR\""))
            .collect();
        assert_eq!(errors.len(), 1, "{}", run.stdout);
        assert!(errors[0].contains(variable), "{variable}: {}", errors[0]);
        let output = format!("{}{}", run.stdout, run.stderr);
        assert!(
            !output.contains("s3cret") && !output.contains("MC4C"),
            "a key leaked: {output}"
        );
    }
}

/// With `BUS_PROVISION=false` (as on ECS, where the stack owns the bus) a service on an SNS/SQS
/// namespace where nothing was made stops at start with one line naming what is missing and
/// the setting, having made nothing.
#[cfg(feature = "sns-sqs")]
#[tokio::test(flavor = "multi_thread")]
async fn a_look_up_only_service_on_an_unprovisioned_bus_stops_with_one_line_naming_what_is_missing() {
    let database = TestDatabase::create(Backend::Sqlite).await;
    let migrated = run_to_exit("dozen-users", &["migrate"], &[("DATABASE_URL", &database.url)]).await;
    assert!(migrated.status.success(), "{migrated:?}");
    let bus = dozen_tests::sns_sqs::SnsSqsNamespace::new("bare").await;
    let [signing, trust] = identities().env("users");
    let env = [
        ("DATABASE_URL", database.url.as_str()),
        ("BUS_URL", bus.bus_url.as_str()),
        ("BUS_NAMESPACE", bus.namespace.as_str()),
        ("BUS_PROVISION", "false"),
        ("LOG_LEVEL", "error"),
        ("PORT", "0"),
        signing,
        trust,
    ];
    let run = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        run_to_exit("dozen-users", &[], &env),
    )
    .await
    .expect("it stops rather than hang");
    assert!(!run.status.success(), "{run:?}");
    let output = format!("{}{}", run.stdout, run.stderr);
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{output}");
    let missing = format!("SNS topic {}-user-profile-updated", bus.namespace);
    assert!(
        lines[0].contains(&missing),
        "{missing} is not named: {}",
        lines[0]
    );
    assert!(
        lines[0].contains("BUS_PROVISION"),
        "the setting is not named: {}",
        lines[0]
    );
}

#[tokio::test]
async fn bad_edge_settings_stop_the_gateway_with_one_line_naming_the_variable() {
    for (variable, value) in [
        ("RATE_LIMIT_SIGNUPS", "ten/h"),
        ("RATE_LIMIT_SESSIONS", "0/min"),
        ("RATE_LIMIT_VERIFICATIONS", "5/fortnight"),
        ("RATE_LIMIT_READS", "many/min"),
        ("TRUSTED_PROXIES", "10.0.0.0/8, the-load-balancer"),
        ("CORS_ALLOWED_ORIGINS", "*"),
        ("FIGURES_INTERVAL", "500ms"),
        ("FIGURES_INTERVAL", "2m"),
        ("FIGURES_INTERVAL", "often"),
    ] {
        let run = run_to_exit("dozen-gateway", &[], &[(variable, value)]).await;
        assert_eq!(run.status.code(), Some(2), "{variable}={value}: {run:?}");
        assert_one_clear_line(&run.stderr, variable);
    }
}
