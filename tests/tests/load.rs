//! `dozen load` against a real `dozen up`: its JSON report adds up, a healthy platform
//! answers every request of the mix, and the plot is a real SVG with a line per series.

use std::collections::BTreeSet;

use dozen_tests::platform::Platform;
use dozen_tests::process::run_to_exit;
use serde_json::Value;

/// The mix's endpoints, all of them.
const MIX: [&str; 7] = [
    "signup",
    "login",
    "me",
    "profile",
    "suggestions",
    "friend_request",
    "friend_accept",
];

#[tokio::test(flavor = "multi_thread")]
async fn a_short_load_run_reports_every_endpoint_of_the_mix_without_errors_and_plots_it() {
    let platform = Platform::start(&[]).await;
    let output = tempfile::tempdir().expect("a folder for the report");
    let json = output.path().join("report.json");
    let svg = output.path().join("latency.svg");
    let url = platform.url("gateway", "");
    let (json_arg, svg_arg) = (json.to_string_lossy(), svg.to_string_lossy());
    // A gentle rate: the test checks counting and completeness, not speed, on a busy machine.
    let run = run_to_exit(
        "dozen",
        &[
            "load",
            "--url",
            &url,
            "--rate",
            "8",
            "--requests",
            "48",
            "--users",
            "4",
            "--mix",
            "signup=1,login=1,me=3,profile=2,suggestions=2,friend_request=2,friend_accept=1",
            "--json",
            &json_arg,
            "--plot",
            &svg_arg,
        ],
        &[],
    )
    .await;
    assert!(
        run.status.success(),
        "dozen load succeeds: {}\n{}\n{}",
        run.status,
        run.stderr,
        platform.up.lines().join("\n")
    );
    assert!(run.stdout.contains("p99 ms"), "a table on stdout: {}", run.stdout);

    let report: Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the JSON report")).expect("JSON");
    let endpoints = report["endpoints"].as_array().expect("endpoints");
    let number = |value: &Value, field: &str| {
        value[field]
            .as_u64()
            .unwrap_or_else(|| panic!("{field} in {value}"))
    };
    let mut total = 0;
    for endpoint in endpoints {
        let (requests, successes, errors) = (
            number(endpoint, "requests"),
            number(endpoint, "successes"),
            number(endpoint, "errors"),
        );
        assert_eq!(
            requests,
            successes + errors,
            "requests = successes + errors: {endpoint}"
        );
        assert_eq!(errors, 0, "no errors on a healthy platform: {endpoint}");
        assert!(
            endpoint["latency_ms"]["p99"].as_f64().is_some(),
            "latency: {endpoint}"
        );
        total += requests;
    }
    assert_eq!(number(&report, "requests"), total, "the total is the sum");
    assert_eq!(number(&report, "errors"), 0);

    let scheduled: u64 = endpoints
        .iter()
        .filter(|endpoint| endpoint["in_mix"] == true)
        .map(|endpoint| number(endpoint, "requests"))
        .sum();
    assert_eq!(
        scheduled + number(&report, "skipped"),
        48,
        "every scheduled request was sent, or skipped for want of a friend request"
    );
    let called: BTreeSet<&str> = endpoints
        .iter()
        .filter(|endpoint| number(endpoint, "requests") > 0)
        .filter_map(|endpoint| endpoint["endpoint"].as_str())
        .collect();
    for endpoint in MIX {
        assert!(called.contains(endpoint), "{endpoint} was called: {called:?}");
    }
    assert!(
        called.contains("verify"),
        "new signups were verified through the dev mailbox: {called:?}"
    );

    let svg = std::fs::read_to_string(&svg).expect("the plot");
    let document = roxmltree::Document::parse(&svg).expect("the plot is well-formed XML");
    assert_eq!(document.root_element().tag_name().name(), "svg");
    let texts: Vec<String> = document
        .descendants()
        .filter(|node| node.has_tag_name("text"))
        .filter_map(|node| node.text().map(|text| text.trim().to_owned()))
        .collect();
    let lines = document
        .descendants()
        .filter(|node| node.has_tag_name("polyline") && node.attribute("stroke-width") == Some("2"))
        .count();
    let series = called.len() * 2;
    for name in &called {
        for percentile in ["p50", "p99"] {
            let label = format!("{name} {percentile}");
            assert!(texts.contains(&label), "the legend names {label}: {texts:?}");
        }
    }
    // Each series is drawn once in its panel and once as its legend's sample line.
    assert_eq!(lines, series * 2, "a line per series, and one per legend entry");

    platform.stop().await;
}

/// Profile writes at a steady rate, each publishing an event, for long enough that the
/// embedded default used to fall behind (outbox, inbox and bus rows piling up, writers sleeping
/// in SQLite's busy handler): every write is answered within the timeout, and the last window
/// answers as many as the first.
#[tokio::test(flavor = "multi_thread")]
async fn steady_profile_writes_are_answered_as_well_at_the_end_as_at_the_start() {
    const WINDOW: u64 = 10;
    let platform = Platform::start(&[]).await;
    let output = tempfile::tempdir().expect("a folder for the report");
    let json = output.path().join("report.json");
    let url = platform.url("gateway", "");
    let json_arg = json.to_string_lossy();
    // A rate a debug build keeps up with on a busy machine: the test is about holding it.
    let run = run_to_exit(
        "dozen",
        &[
            "load",
            "--url",
            &url,
            "--mix",
            "profile=1",
            "--users",
            "8",
            "--rate",
            "50",
            "--duration",
            "40s",
            "--timeout",
            "2s",
            "--json",
            &json_arg,
        ],
        &[],
    )
    .await;
    assert!(run.status.success(), "{}\n{}", run.status, run.stderr);
    let report: Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the JSON report")).expect("JSON");
    assert_eq!(
        report["errors"], 0,
        "every write answered in time: {}",
        run.stdout
    );
    let profile = report["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .find(|endpoint| endpoint["endpoint"] == "profile")
        .expect("the profile endpoint");
    let seconds = report["seconds"].as_f64().expect("seconds") as u64;
    let answered_between = |from: u64, to: u64| -> u64 {
        profile["per_second"]
            .as_array()
            .expect("per-second figures")
            .iter()
            .filter(|second| (from..to).contains(&second["second"].as_u64().expect("second")))
            .map(|second| second["responses"].as_u64().expect("responses"))
            .sum()
    };
    let (first, last) = (
        answered_between(0, WINDOW),
        answered_between(seconds - WINDOW - 1, seconds - 1),
    );
    assert!(
        last * 10 >= first * 9,
        "the last {WINDOW} s answered {last} writes, the first {first}: {}",
        run.stdout
    );
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_mix_is_refused_with_one_line_and_exit_status_2() {
    let run = run_to_exit("dozen", &["load", "--mix", "me=40,logn=5"], &[]).await;
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    let stderr = run.stderr.trim_end();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("--mix"), "names the setting: {stderr}");
    assert!(stderr.contains("unknown endpoint `logn`"), "says why: {stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_that_is_not_there_is_one_clear_error() {
    // Port 9 (discard) on loopback: nothing listens there.
    let run = run_to_exit(
        "dozen",
        &["load", "--url", "http://127.0.0.1:9", "--requests", "5"],
        &[],
    )
    .await;
    assert_eq!(run.status.code(), Some(1), "{run:?}");
    assert!(
        run.stderr
            .contains("cannot reach the gateway at http://127.0.0.1:9"),
        "{}",
        run.stderr
    );
}
