//! A real Prometheus (Debian's `prometheus`, installed by scripts/backing-services) scrapes
//! `dozen up` with the alert rules of deploy/observability/prometheus/rules.yml: every service
//! is scraped (with passwords' hashing metrics), every rule evaluates, a healthy platform fires
//! no alert, a service that stops answering fires `DozenTargetDown`, and every query of the
//! Grafana dashboards is valid PromQL. With exemplar storage on, as deploy/ runs it, a
//! request's trace id reaches Prometheus as the exemplar of its latency bucket, and every
//! service's OpenMetrics exposition passes the OpenMetrics parser of the Python
//! `prometheus_client` (PyPI, installed by scripts/backing-services).

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
    // Sent in a sampled trace of its own, which the gateway and passwords both take part in.
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let login = reqwest::Client::new()
        .post(platform.url("gateway", "/api/sessions"))
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&serde_json::json!({ "email": "nobody@example.com", "password": "zq7#kd9w-not-theirs" }))
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(login.status(), 401);
    for job in ["gateway", "passwords"] {
        let query = format!(r#"http_request_duration_seconds_bucket{{job="{job}"}}"#);
        let exemplar = eventually(
            PATIENCE,
            &format!("the login's trace an exemplar of {job}"),
            || async {
                let start = (unix_now() - 600.0).to_string();
                let end = (unix_now() + 60.0).to_string();
                let response = prometheus
                    .get(
                        "/api/v1/query_exemplars",
                        &[("query", query.as_str()), ("start", &start), ("end", &end)],
                    )
                    .await;
                response["data"]
                    .as_array()?
                    .iter()
                    .flat_map(|series| series["exemplars"].as_array().cloned().unwrap_or_default())
                    .find(|exemplar| exemplar["labels"]["trace_id"] == trace_id.as_str())
            },
        )
        .await;
        let seconds: f64 = exemplar["value"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .expect("a value");
        assert!(seconds > 0.0 && seconds < 60.0, "{exemplar}");
    }
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

/// What Prometheus 2 asks `/metrics` for.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                                 version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

#[tokio::test(flavor = "multi_thread")]
async fn every_service_answers_valid_openmetrics_to_whoever_asks() {
    let platform = Platform::start(&[]).await;
    let client = reqwest::Client::new();
    // Requests of every kind first, so that the expositions hold exemplars, counters and
    // histograms of several series.
    let signup = client
        .post(platform.url("gateway", "/api/signups"))
        .header("Idempotency-Key", "exemplars")
        .json(&serde_json::json!({
            "email": "exemplar@example.com",
            "password": dozen_tests::public_api::PASSWORD,
            "display_name": "Ex",
            "interests": []
        }))
        .send()
        .await
        .expect("the gateway answers");
    assert!(signup.status().is_success(), "{}", signup.status());
    let login = client
        .post(platform.url("gateway", "/api/sessions"))
        .json(&serde_json::json!({ "email": "nobody@example.com", "password": "zq7#kd9w-not-theirs" }))
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(login.status(), 401);

    // The bus's handlers carry exemplars too: verification's, of the signup it mailed.
    eventually(PATIENCE, "an exemplar on verification's bus handling", || async {
        let text = client
            .get(platform.url("verification", "/metrics"))
            .header("accept", PROMETHEUS_ACCEPT)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .any(|line| {
                line.starts_with("bus_handle_duration_seconds_bucket{") && line.contains(" # {trace_id=\"")
            })
            .then_some(())
    })
    .await;

    for service in SERVICES {
        let url = platform.url(service, "/metrics");
        let openmetrics = client
            .get(&url)
            .header("accept", PROMETHEUS_ACCEPT)
            .send()
            .await
            .expect("metrics");
        assert_eq!(openmetrics.status(), 200);
        assert_eq!(
            openmetrics.headers()["content-type"],
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        assert_eq!(openmetrics.headers()["vary"], "accept");
        let text = openmetrics.text().await.expect("a body");
        let (samples, exemplars) = parse_openmetrics(&text)
            .unwrap_or_else(|error| panic!("{service}'s OpenMetrics is invalid: {error}\n{text}"));
        assert!(samples > 20, "{service}: {samples} samples\n{text}");
        assert!(exemplars > 0, "{service} shows no exemplar:\n{text}");

        // Whoever does not ask gets the Prometheus text, which Prometheus' promtool accepts.
        let classic = client.get(&url).send().await.expect("metrics");
        assert_eq!(
            classic.headers()["content-type"],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        assert_eq!(classic.headers()["vary"], "accept");
        let text = classic.text().await.expect("a body");
        assert!(
            !text.contains("# EOF") && !text.contains(" # {"),
            "{service}:\n{text}"
        );
        check_with_promtool(&text).unwrap_or_else(|error| panic!("{service}: {error}\n{text}"));
    }
    platform.stop().await;
}

/// The samples and the exemplars of an OpenMetrics exposition, as the Python
/// `prometheus_client` parser reads it, or the parser's complaint.
fn parse_openmetrics(text: &str) -> Result<(usize, usize), String> {
    let script = "import sys\n\
                  from prometheus_client.openmetrics.parser import text_string_to_metric_families\n\
                  samples = [s for f in text_string_to_metric_families(sys.stdin.read()) for s in f.samples]\n\
                  print(len(samples), sum(1 for s in samples if s.exemplar))\n";
    let output = run_with_input("python3", &["-c", script], text)?;
    let counts: Vec<usize> = output.split_whitespace().filter_map(|n| n.parse().ok()).collect();
    match counts[..] {
        [samples, exemplars] => Ok((samples, exemplars)),
        _ => Err(format!("the parser printed {output:?}")),
    }
}

/// promtool's verdict on a Prometheus text exposition: lint problems (naming) are fine here,
/// a parse error is not.
fn check_with_promtool(text: &str) -> Result<(), String> {
    match run_with_input("promtool", &["check", "metrics"], text) {
        Ok(_) => Ok(()),
        Err(error) if error.contains("error while linting") => Err(error),
        Err(_) => Ok(()),
    }
}

/// Run `program` with `input` on its stdin: its stdout, or its stderr when it fails.
fn run_with_input(program: &str, args: &[&str], input: &str) -> Result<String, String> {
    use std::io::Write;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} runs (scripts/backing-services installs it): {e}"));
    child
        .stdin
        .take()
        .expect("a stdin")
        .write_all(input.as_bytes())
        .expect("the input written");
    let output = child.wait_with_output().expect("it ends");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
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
            .arg("--enable-feature=exemplar-storage")
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
