//! The gateway's `/openapi.json` describes the whole public API, exactly: every route the
//! gateway serves is in it and nothing else, it matches the table of ARCHITECTURE.md, and
//! schemathesis, generating requests from it against a running platform, finds no server error
//! and no answer the document does not describe.

use std::collections::BTreeSet;
use std::time::Duration;

use dozen_tests::platform::Platform;
use dozen_tests::public_api::PublicApi;
use reqwest::Method;
use serde_json::Value;

/// The methods a route might be served with.
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

async fn document(api: &PublicApi) -> Value {
    let answer = reqwest::get(api.url("/openapi.json"))
        .await
        .expect("GET /openapi.json");
    assert_eq!(answer.status(), 200);
    answer.json().await.expect("a JSON document")
}

/// Every `METHOD /path` of the document.
fn operations(document: &Value) -> BTreeSet<(String, String)> {
    let paths = document["paths"].as_object().expect("paths");
    paths
        .iter()
        .flat_map(|(path, item)| {
            let methods = item.as_object().expect("a path item").keys();
            methods.map(move |method| (method.to_uppercase(), path.clone()))
        })
        .collect()
}

/// Every `METHOD /path` in the table of ARCHITECTURE.md's "The public API" (the web UI aside).
fn routes_in_architecture() -> BTreeSet<(String, String)> {
    let text = std::fs::read_to_string(dozen_tests::repository().join("docs/ARCHITECTURE.md"))
        .expect("ARCHITECTURE.md");
    let section = text
        .split("## The public API")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a section \"The public API\"");
    let mut routes = BTreeSet::new();
    for row in section.lines().filter(|line| line.starts_with("| `")) {
        let first_cell = row.split('|').nth(1).expect("a first cell");
        for route in first_cell.split('`').skip(1).step_by(2) {
            if let Some((method, path)) = route.split_once(' ') {
                routes.insert((method.to_owned(), path.to_owned()));
            }
        }
    }
    routes
}

/// `path` with each `{parameter}` filled in.
fn concrete(path: &str) -> String {
    path.replace("{token}", "an-unknown-token")
        .replace("{user_id}", "0190f2f4-0000-7000-8000-000000000000")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_document_lists_exactly_the_routes_the_gateway_serves() {
    let platform = Platform::start(&[]).await;
    let api = PublicApi::of(&platform);
    let document = document(&api).await;
    let documented = operations(&document);

    assert_eq!(
        documented,
        routes_in_architecture(),
        "the document and ARCHITECTURE.md's table of the public API name the same routes"
    );

    let documented_paths: BTreeSet<&String> = documented.iter().map(|(_, path)| path).collect();
    for path in documented_paths {
        for method in METHODS {
            let served = documented.contains(&(method.to_owned(), path.clone()));
            let answer = api
                .client
                .request(
                    Method::from_bytes(method.as_bytes()).expect("a method"),
                    api.url(&concrete(path)),
                )
                .send()
                .await
                .expect("the gateway answers");
            let status = answer.status().as_u16();
            let body = answer.text().await.unwrap_or_default();
            if served {
                assert!(
                    status != 405 && !body.contains("no such route"),
                    "{method} {path} is documented, so served: {status} {body}"
                );
            } else {
                assert_eq!(
                    status, 405,
                    "{method} {path} is not documented, so not served: {body}"
                );
            }
        }
    }
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_problem_every_token_and_every_page_is_described() {
    let platform = Platform::start(&[]).await;
    let document = document(&PublicApi::of(&platform)).await;
    let schemes = &document["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert!(document["components"]["schemas"]["Problem"].is_object());

    let authenticated = [
        ("GET", "/api/me"),
        ("PATCH", "/api/me"),
        ("PUT", "/api/me/password"),
        ("POST", "/api/me/email"),
        ("DELETE", "/api/me"),
        ("GET", "/api/suggestions"),
        ("GET", "/api/friends"),
        ("GET", "/api/friends/requests"),
        ("POST", "/api/friends/{user_id}"),
        ("DELETE", "/api/friends/{user_id}"),
        ("POST", "/api/friends/{user_id}/accept"),
    ];
    let paged = ["/api/friends", "/api/friends/requests", "/api/dev/mailbox"];
    for (method, path) in operations(&document) {
        let operation = &document["paths"][&path][method.to_lowercase()];
        let route = format!("{method} {path}");
        let responses = operation["responses"].as_object().expect("responses");
        for (status, response) in responses {
            if status.starts_with(['4', '5']) {
                let content = response["content"].as_object().expect("a problem body");
                assert_eq!(
                    content.keys().collect::<Vec<_>>(),
                    ["application/problem+json"],
                    "{route} answers {status} with a problem"
                );
                assert_eq!(
                    content["application/problem+json"]["schema"]["$ref"],
                    "#/components/schemas/Problem"
                );
            }
        }
        let is_authenticated = authenticated.contains(&(method.as_str(), path.as_str()));
        assert_eq!(
            operation["security"] == serde_json::json!([{ "bearer": [] }]),
            is_authenticated,
            "{route}: the bearer scheme on exactly the authenticated routes"
        );
        if is_authenticated {
            assert!(responses.contains_key("401"), "{route} documents its 401");
        }
        if operation["requestBody"].is_object() {
            for status in ["400", "413", "415", "422"] {
                assert!(responses.contains_key(status), "{route} documents its {status}");
            }
        }
        // `GET /api/me` answers without a service that is down, naming it in `missing`.
        if path.starts_with("/api/") && route != "GET /api/me" {
            assert!(
                responses.contains_key("503"),
                "{route}: a service it needs may be down"
            );
        }
        let parameters: Vec<&str> = operation["parameters"]
            .as_array()
            .map(|parameters| parameters.iter().filter_map(|p| p["name"].as_str()).collect())
            .unwrap_or_default();
        if method == "GET" && paged.contains(&path.as_str()) {
            assert_eq!(parameters, ["limit", "after"], "{route} is paged");
            let limit = &operation["parameters"][0]["schema"];
            assert_eq!((&limit["minimum"], &limit["maximum"]), (&1.into(), &200.into()));
            assert!(responses.contains_key("400"), "{route}: a bad page is a 400");
        }
    }
    for (method, path) in [
        ("POST", "/api/signups"),
        ("POST", "/api/sessions"),
        ("POST", "/api/verifications/resend"),
        ("POST", "/api/verifications/{token}"),
        ("POST", "/api/password-resets"),
        ("POST", "/api/password-resets/{token}"),
        ("PUT", "/api/me/password"),
        ("POST", "/api/me/email"),
        ("DELETE", "/api/me"),
        ("GET", "/api/me"),
        ("GET", "/api/friends"),
    ] {
        let responses = &document["paths"][path][method.to_lowercase()]["responses"];
        assert!(responses["429"].is_object(), "{method} {path} is rate limited");
    }
    platform.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_server_error_and_no_undocumented_answer() {
    // The limits per address are off so that generated requests reach the services; the
    // document still describes their 429s.
    let platform = Platform::start(&[
        ("RATE_LIMIT_SIGNUPS", "off"),
        ("RATE_LIMIT_SESSIONS", "off"),
        ("RATE_LIMIT_VERIFICATIONS", "off"),
    ])
    .await;
    let api = PublicApi::of(&platform);
    assert_eq!(
        api.sign_up("schemathesis", "fuzzer@example.com", "Fuzzer", &["testing"])
            .await
            .status(),
        202
    );
    let token = api.verify_and_log_in("fuzzer@example.com").await;

    let gateway = api.url("");
    let authorization = format!("Authorization: Bearer {token}");
    let reports = tempfile::tempdir().expect("a folder for schemathesis");
    let run = tokio::process::Command::new("schemathesis")
        .current_dir(reports.path())
        .args([
            "run",
            &format!("{gateway}/openapi.json"),
            "--url",
            &gateway,
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance",
            "--header",
            &authorization,
            "--max-examples",
            "50",
            // One worker: CPython 3.11 can fail compiling in two threads at once ("AST
            // constructor recursion depth mismatch"), which hypothesis does as it runs.
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--no-color",
        ])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("schemathesis finishes within four minutes")
        .expect("schemathesis runs (scripts/backing-services installs it)");
    let report = String::from_utf8_lossy(&output.stdout);
    let summary = report.find("=== SUMMARY ===").map_or(report.as_ref(), |at| {
        &report[report[..at].rfind('\n').unwrap_or(0)..]
    });
    println!("schemathesis:{summary}");
    assert!(
        output.status.success(),
        "schemathesis found defects:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    platform.stop().await;
}
