//! One signup is one trace: with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a collector the test
//! runs, a signup and the following of its link export one trace covering every hop, each span
//! a child of the span of the hop that caused it: the gateway, signup, users and passwords, the
//! outbox relay publishing `user.signed_up`, verification's and friends' handlers, then the
//! link followed (continuing from the handler that mailed it, linked to the click's own
//! request), the relay publishing `user.email_verified` and its three handlers. On the embedded
//! bus and on NATS JetStream.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::routing::post;
use dozen_tests::platform::{Platform, PostgresAndNats};
use dozen_tests::public_api::{PASSWORD, PublicApi, token_in};
use dozen_tests::{PATIENCE, eventually};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use serde_json::json;

/// One exported span, with what the checks read of it.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
    /// The spans it links to, as (trace id, span id).
    links: Vec<(String, String)>,
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut attributes: Vec<_> = self.attributes.iter().collect();
        attributes.sort();
        write!(
            f,
            "{} {} trace {} span {} parent {} {attributes:?} links {:?}",
            self.service, self.name, self.trace_id, self.span_id, self.parent_span_id, self.links
        )
    }
}

/// An OTLP/HTTP collector on a free port: every span exported to it, decoded.
struct Collector {
    endpoint: String,
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Collector {
    async fn start() -> Self {
        let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
        let received = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            post(move |body: Bytes| {
                let export = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf export");
                received.lock().expect("lock").extend(decoded(export));
                async { "" }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { endpoint, spans }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().expect("lock").clone()
    }
}

fn decoded(export: ExportTraceServiceRequest) -> Vec<Span> {
    let mut spans = Vec::new();
    for resource_spans in export.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for span in resource_spans
            .scope_spans
            .into_iter()
            .flat_map(|scope| scope.spans)
        {
            spans.push(Span {
                service: service.clone(),
                name: span.name,
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_span_id: hex(&span.parent_span_id),
                attributes: attributes(&span.attributes),
                links: span
                    .links
                    .iter()
                    .map(|link| (hex(&link.trace_id), hex(&link.span_id)))
                    .collect(),
            });
        }
    }
    spans
}

fn attributes(pairs: &[KeyValue]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|pair| {
            let value = match pair
                .value
                .as_ref()
                .and_then(|value: &AnyValue| value.value.as_ref())
            {
                Some(any_value::Value::StringValue(text)) => text.clone(),
                Some(any_value::Value::IntValue(number)) => number.to_string(),
                Some(any_value::Value::BoolValue(flag)) => flag.to_string(),
                other => format!("{other:?}"),
            };
            (pair.key.clone(), value)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The one span of `service` named `name` whose attributes include `wanted`; `None` while it
/// has not been exported, a failure if there are several.
fn find<'a>(spans: &'a [Span], service: &str, name: &str, wanted: &[(&str, &str)]) -> Option<&'a Span> {
    let found: Vec<&Span> = spans
        .iter()
        .filter(|span| span.service == service && span.name == name)
        .filter(|span| {
            wanted
                .iter()
                .all(|(key, value)| span.attributes.get(*key).map(String::as_str) == Some(*value))
        })
        .collect();
    assert!(
        found.len() <= 1,
        "one {service} {name} {wanted:?} expected:\n{}",
        listing(&found.iter().map(|span| (*span).clone()).collect::<Vec<_>>())
    );
    found.first().copied()
}

/// The hops of one signup and of following its link, as exported.
struct Hops<'a> {
    spans: &'a [Span],
}

impl<'a> Hops<'a> {
    fn request(&self, service: &str, method: &str, route: &str) -> Option<&'a Span> {
        find(
            self.spans,
            service,
            "request",
            &[("method", method), ("route", route)],
        )
    }

    fn publish(&self, service: &str, event_type: &str) -> Option<&'a Span> {
        find(self.spans, service, "bus.publish", &[("event_type", event_type)])
    }

    fn handle(&self, subscriber: &str, event_type: &str) -> Option<&'a Span> {
        find(
            self.spans,
            subscriber,
            "bus.handle",
            &[("subscriber", subscriber), ("event_type", event_type)],
        )
    }
}

/// `child` is `parent`'s child, in its trace.
fn assert_caused_by(child: &Span, parent: &Span, all: &[Span]) {
    assert!(
        child.trace_id == parent.trace_id && child.parent_span_id == parent.span_id,
        "{child}\nis not a child of\n{parent}\nevery span:\n{}",
        listing(all)
    );
}

async fn one_signup_is_one_trace(extra_env: &[(&str, &str)]) {
    let collector = Collector::start().await;
    let mut env = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint.as_str()),
        // Spans leave every 100 ms rather than every 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    env.extend_from_slice(extra_env);
    let platform = Platform::start(&env).await;
    let api = PublicApi::of(&platform);

    // The browser's own trace contexts: one for the signup, another for the click on the link.
    let (signup_trace, browser_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let (click_trace, click_span) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let email = format!("trace-{}@example.com", uuid::Uuid::new_v4().simple());
    let signup = api
        .client
        .post(api.url("/api/signups"))
        .header("traceparent", format!("00-{signup_trace}-{browser_span}-01"))
        .json(
            &json!({ "email": email, "password": PASSWORD, "display_name": "Tracy", "interests": ["maps"] }),
        )
        .send()
        .await
        .expect("POST /api/signups");
    assert_eq!(signup.status(), 202);
    let token = eventually(PATIENCE, "the verification mail", || async {
        api.mails_to(&email).await.iter().find_map(token_in)
    })
    .await;
    let followed = api
        .client
        .post(api.url(&format!("/api/verifications/{token}")))
        .header("traceparent", format!("00-{click_trace}-{click_span}-01"))
        .send()
        .await
        .expect("POST /api/verifications/{token}");
    assert_eq!(followed.status(), 200);

    // Everything is exported once the last hop, the handlers of user.email_verified, is.
    let spans = eventually(PATIENCE, "every hop's span is exported", || async {
        let spans = collector.spans();
        let hops = Hops { spans: &spans };
        let done = ["users", "passwords", "friends"]
            .iter()
            .all(|subscriber| hops.handle(subscriber, "user.email_verified").is_some())
            && find(&spans, "verification", "verification.link_followed", &[]).is_some();
        done.then_some(spans)
    })
    .await;
    let hops = Hops { spans: &spans };

    // The signup: the browser's trace goes on through the gateway, signup and its calls.
    let gateway = must(
        hops.request("gateway", "POST", "/api/signups"),
        "the signup at the gateway",
        &spans,
    );
    assert_eq!(
        (gateway.trace_id.as_str(), gateway.parent_span_id.as_str()),
        (signup_trace, browser_span),
        "{gateway}"
    );
    let signup = must(
        hops.request("signup", "POST", "/signups"),
        "signup's request",
        &spans,
    );
    assert_caused_by(signup, gateway, &spans);
    for (service, method, route) in [
        ("passwords", "POST", "/password-checks"),
        ("users", "POST", "/profiles"),
        ("passwords", "PUT", "/credentials/{user_id}"),
    ] {
        let call = must(
            hops.request(service, method, route),
            &format!("{method} {route} at {service}"),
            &spans,
        );
        assert_caused_by(call, signup, &spans);
    }

    // The outbox relay publishes what signup's request wrote; each subscriber handles it.
    let signed_up = must(
        hops.publish("signup", "user.signed_up"),
        "the relay of user.signed_up",
        &spans,
    );
    assert_caused_by(signed_up, signup, &spans);
    assert!(signed_up.attributes.contains_key("backend"), "{signed_up}");
    for subscriber in ["verification", "friends"] {
        let handled = must(
            hops.handle(subscriber, "user.signed_up"),
            &format!("{subscriber}'s handling of user.signed_up"),
            &spans,
        );
        assert_caused_by(handled, signed_up, &spans);
    }
    let link_mailed = must(
        hops.handle("verification", "user.signed_up"),
        "the link mailed",
        &spans,
    );

    // The click is a trace of its own, through the gateway to verification...
    let click = must(
        hops.request("gateway", "POST", "/api/verifications/{token}"),
        "the click at the gateway",
        &spans,
    );
    assert_eq!(
        (click.trace_id.as_str(), click.parent_span_id.as_str()),
        (click_trace, click_span),
        "{click}"
    );
    let verify = must(
        hops.request("verification", "POST", "/verifications/{token}"),
        "verification's request",
        &spans,
    );
    assert_caused_by(verify, click, &spans);
    // ...and the signup's trace goes on from the handler that mailed the link, linked to it.
    let followed = must(
        find(&spans, "verification", "verification.link_followed", &[]),
        "the link followed",
        &spans,
    );
    assert_caused_by(followed, link_mailed, &spans);
    assert!(
        followed
            .links
            .contains(&(verify.trace_id.clone(), verify.span_id.clone())),
        "the link followed links to the click's request: {followed}\n{verify}"
    );
    let verified = must(
        hops.publish("verification", "user.email_verified"),
        "the relay of user.email_verified",
        &spans,
    );
    assert_caused_by(verified, followed, &spans);
    for subscriber in ["users", "passwords", "friends"] {
        let handled = must(
            hops.handle(subscriber, "user.email_verified"),
            &format!("{subscriber}'s handling of user.email_verified"),
            &spans,
        );
        assert_caused_by(handled, verified, &spans);
        assert_eq!(handled.trace_id, signup_trace, "one signup, one trace: {handled}");
    }

    platform.stop().await;
}

/// `span`, which must have been exported.
fn must<'a>(span: Option<&'a Span>, what: &str, all: &[Span]) -> &'a Span {
    span.unwrap_or_else(|| panic!("no span of {what}; every span:\n{}", listing(all)))
}

fn listing(spans: &[Span]) -> String {
    spans
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn one_signup_is_one_trace_on_the_embedded_bus() {
    one_signup_is_one_trace(&[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_signup_is_one_trace_on_postgres_and_nats() {
    let backing = PostgresAndNats::new("signup_trace");
    one_signup_is_one_trace(&backing.env()).await;
}
