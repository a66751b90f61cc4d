//! A real Prometheus (Debian's `prometheus`, installed by scripts/backing-services) scrapes
//! `dozen up` with the alert rules of deploy/observability/prometheus/rules.yml: every service
//! is scraped (with passwords' hashing metrics), every rule evaluates, a healthy platform fires
//! no alert, a service that stops answering fires `DozenTargetDown`, and every query of the
//! Grafana dashboards is valid PromQL.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dozen_tests::platform::{Platform, SERVICES};
use dozen_tests::{PATIENCE, eventually};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_every_service_and_alerts_when_one_stops_answering() {
    let platform = Platform::start(&[]).await;
    let targets: Vec<(&str, u16)> = SERVICES
        .iter()
        .map(|service| (*service, platform.port(service)))
        .collect();
    let prometheus = Prometheus::start(&targets).await;

    eventually(PATIENCE, "every service scraped and up", || async {
        let up = prometheus.query("up").await?;
        let mut jobs: Vec<String> = up
            .iter()
            .filter(|sample| sample["value"][1] == "1")
            .filter_map(|sample| sample["metric"]["job"].as_str().map(str::to_owned))
            .collect();
        jobs.sort();
        let mut expected: Vec<String> = SERVICES.iter().map(|s| (*s).to_owned()).collect();
        expected.sort();
        (jobs == expected).then_some(())
    })
    .await;

    // A login for an unknown email still computes a hash: passwords' own metrics reach Prometheus.
    let login = reqwest::Client::new()
        .post(platform.url("gateway", "/api/sessions"))
        .json(&serde_json::json!({ "email": "nobody@example.com", "password": "zq7#kd9w-not-theirs" }))
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(login.status(), 401);
    for expr in [
        r#"passwords_argon2_duration_seconds_count{job="passwords", operation="verify"} > 0"#,
        r#"passwords_argon2_wait_seconds_count{job="passwords"} > 0"#,
        r#"passwords_argon2_waiting{job="passwords"} == 0"#,
        r#"passwords_logins_total{job="passwords", outcome="wrong_credentials"} > 0"#,
        // The process figures the dashboards and DozenRestarting read.
        r#"process_start_time_seconds{job="gateway"} > 0"#,
        r#"process_resident_memory_bytes{job="gateway"} > 0"#,
        r#"process_cpu_seconds_total{job="gateway"} >= 0"#,
    ] {
        eventually(PATIENCE, expr, || async {
            prometheus.query(expr).await.filter(|samples| !samples.is_empty())
        })
        .await;
    }

    // Two evaluations after every target was up: a rule that fires on a healthy platform is
    // pending by then, and firing with the test's one-second `for`.
    let all_up = unix_now();
    let rules = eventually(
        PATIENCE,
        "every rule evaluated twice since all targets were up",
        || async {
            let rules = prometheus.rules().await?;
            rules
                .iter()
                .all(|rule| {
                    rule["lastEvaluation"]
                        .as_str()
                        .and_then(parse_rfc3339)
                        .is_some_and(|at| at > all_up + 2.0)
                })
                .then_some(rules)
        },
    )
    .await;
    let alert_names: Vec<&str> = rules
        .iter()
        .filter(|rule| rule["type"] == "alerting")
        .filter_map(|rule| rule["name"].as_str())
        .collect();
    assert!(alert_names.contains(&"DozenTargetDown"), "{alert_names:?}");
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "a rule failed to evaluate: {rule}");
    }
    let alerts = prometheus.alerts().await.expect("the alerts");
    assert!(
        alerts.is_empty(),
        "a healthy platform fires no alert: {alerts:#?}"
    );

    // A stopped process keeps its port open but answers nothing: the scrape times out, as for
    // a hung service. `dozen up` restarts a service that exits, not one that hangs.
    let passwords = Pid::from_raw(platform.pid_of("passwords"));
    kill(passwords, Signal::SIGSTOP).expect("passwords stopped");
    let fired = eventually(PATIENCE, "DozenTargetDown firing for passwords", || async {
        prometheus.alerts().await?.into_iter().find(|alert| {
            alert["labels"]["alertname"] == "DozenTargetDown"
                && alert["labels"]["job"] == "passwords"
                && alert["state"] == "firing"
        })
    })
    .await;
    kill(passwords, Signal::SIGCONT).expect("passwords resumed");
    assert_eq!(fired["labels"]["severity"], "critical", "{fired}");
    let others: Vec<Value> = prometheus
        .alerts()
        .await
        .expect("the alerts")
        .into_iter()
        .filter(|alert| {
            alert["labels"]["alertname"] == "DozenTargetDown" && alert["labels"]["job"] != "passwords"
        })
        .collect();
    assert!(others.is_empty(), "only passwords is down: {others:#?}");

    eventually(
        PATIENCE,
        "DozenTargetDown resolved once passwords answers again",
        || async {
            let alerts = prometheus.alerts().await?;
            (!alerts
                .iter()
                .any(|alert| alert["labels"]["alertname"] == "DozenTargetDown"))
            .then_some(())
        },
    )
    .await;
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_dashboard_query_is_valid_promql() {
    // PromQL is checked without data: no target to scrape.
    let prometheus = Prometheus::start(&[]).await;
    let queries = dashboard_queries();
    assert!(queries.len() > 20, "the dashboards hold queries: {queries:?}");
    for (dashboard, expr) in &queries {
        // Grafana's variables, as Grafana fills them in.
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("${job}", ".+")
            .replace("$job", ".+");
        let response = prometheus.get("/api/v1/query", &[("query", expr.as_str())]).await;
        assert_eq!(response["status"], "success", "{dashboard}: {expr}: {response}");
    }
}

/// A Prometheus process with a throwaway data folder, killed when dropped.
struct Prometheus {
    _process: tokio::process::Child,
    url: String,
    _folder: tempfile::TempDir,
}

impl Prometheus {
    /// Start Prometheus scraping each `(job, port)` on 127.0.0.1 and evaluating the rules
    /// every second, and wait until it is ready.
    async fn start(targets: &[(&str, u16)]) -> Self {
        let folder = tempfile::tempdir().expect("a folder for Prometheus");
        let rules = std::fs::read_to_string(observability().join("prometheus/rules.yml")).expect("rules.yml");
        std::fs::write(folder.path().join("rules.yml"), with_short_for(&rules)).expect("the rules written");
        let mut config = String::from(
            "global: { scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s }\n\
             rule_files: [rules.yml]\nscrape_configs:\n",
        );
        if targets.is_empty() {
            config.push_str("  []\n");
        }
        for (job, port) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs: [{{ targets: ['127.0.0.1:{port}'] }}]\n"
            ));
        }
        let config_file = folder.path().join("prometheus.yml");
        std::fs::write(&config_file, config).expect("prometheus.yml written");
        let log = std::fs::File::create(folder.path().join("prometheus.log")).expect("a log file");
        // Port 0: Prometheus listens on a port the kernel picks, found through /proc below.
        let process = tokio::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                folder.path().join("data").display()
            ))
            .arg("--web.listen-address=127.0.0.1:0")
            .current_dir(folder.path())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("prometheus runs (scripts/backing-services installs it)");
        let pid = process.id().expect("a pid");
        let port = eventually(PATIENCE, "Prometheus listening", || async { listening_port(pid) }).await;
        let prometheus = Self {
            _process: process,
            url: format!("http://127.0.0.1:{port}"),
            _folder: folder,
        };
        eventually(PATIENCE, "Prometheus ready", || async {
            let response = reqwest::get(format!("{}/-/ready", prometheus.url)).await.ok()?;
            (response.status() == 200).then_some(())
        })
        .await;
        prometheus
    }

    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let response = reqwest::Client::new()
            .get(format!("{}{path}", self.url))
            .query(query)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .expect("Prometheus answers");
        response.json().await.expect("a JSON body")
    }

    /// The samples of an instant query, or `None` while it fails.
    async fn query(&self, expr: &str) -> Option<Vec<Value>> {
        let response = self.get("/api/v1/query", &[("query", expr)]).await;
        response["data"]["result"].as_array().cloned()
    }

    /// Every rule of every group, with its health and last evaluation.
    async fn rules(&self) -> Option<Vec<Value>> {
        let response = self.get("/api/v1/rules", &[]).await;
        let groups = response["data"]["groups"].as_array()?;
        Some(
            groups
                .iter()
                .filter_map(|group| group["rules"].as_array())
                .flatten()
                .cloned()
                .collect(),
        )
    }

    /// The alerts pending or firing.
    async fn alerts(&self) -> Option<Vec<Value>> {
        let response = self.get("/api/v1/alerts", &[]).await;
        response["data"]["alerts"].as_array().cloned()
    }
}

fn observability() -> PathBuf {
    dozen_tests::repository().join("deploy/observability")
}

/// The rules with every `for:` at one second, so that an alert fires within the test.
fn with_short_for(rules: &str) -> String {
    rules
        .lines()
        .map(|line| match line.trim_start().strip_prefix("for: ") {
            Some(_) => format!("{}for: 1s", &line[..line.len() - line.trim_start().len()]),
            None => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The TCP port process `pid` listens on: its socket descriptors' inodes, looked up among the
/// listening sockets of its network namespace.
fn listening_port(pid: u32) -> Option<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(target.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // local_address is HEX_IP:HEX_PORT; state 0A is LISTEN; field 9 is the inode.
        let listening =
            fields.get(3) == Some(&"0A") && inodes.iter().any(|inode| fields.get(9) == Some(&inode.as_str()));
        if !listening {
            return None;
        }
        u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()
    })
}

/// Every `expr` of every panel target in the dashboards, with the dashboard's file name.
fn dashboard_queries() -> Vec<(String, String)> {
    fn collect(value: &Value, file: &str, into: &mut Vec<(String, String)>) {
        match value {
            Value::Object(object) => {
                if let Some(Value::String(expr)) = object.get("expr") {
                    into.push((file.to_owned(), expr.clone()));
                }
                object.values().for_each(|value| collect(value, file, into));
            }
            Value::Array(values) => values.iter().for_each(|value| collect(value, file, into)),
            _ => {}
        }
    }
    let folder = observability().join("grafana/dashboards");
    let mut queries = Vec::new();
    for entry in std::fs::read_dir(&folder).expect("the dashboards folder") {
        let path = entry.expect("an entry").path();
        let file = file_name(&path);
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("a dashboard"))
            .unwrap_or_else(|e| panic!("{file} is not JSON: {e}"));
        collect(&dashboard, &file, &mut queries);
    }
    queries
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

/// Seconds since 1970 of an RFC 3339 time, as Prometheus writes them.
fn parse_rfc3339(time: &str) -> Option<f64> {
    let parsed = chrono::DateTime::parse_from_rfc3339(time).ok()?;
    Some(parsed.timestamp_micros() as f64 / 1e6)
}
