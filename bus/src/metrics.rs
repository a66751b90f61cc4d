//! The bus's metrics, through the `metrics` facade (the kit installs the Prometheus recorder
//! and serves `/metrics`). Every name is written here once.

use std::sync::Once;
use std::time::Duration;

use dozen_kit::metrics::LatencyHistogram;
use dozen_kit::trace_context::Handling;

/// Describe every metric once per process, so `/metrics` carries help texts.
pub fn describe() {
    static DESCRIBED: Once = Once::new();
    DESCRIBED.call_once(|| {
        metrics::describe_gauge!("bus_outbox_backlog", "Events in the outbox not yet published");
        metrics::describe_gauge!(
            "bus_outbox_oldest_age_seconds",
            metrics::Unit::Seconds,
            "Age of the oldest event in the outbox not yet published (0 when empty)"
        );
        metrics::describe_counter!("bus_published_total", "Events published to the broker, by topic");
        metrics::describe_counter!(
            "bus_publish_failures_total",
            "Failed attempts to publish an outbox batch"
        );
        metrics::describe_gauge!(
            "bus_consumer_lag",
            "Events in a subscriber's queue not yet acknowledged, by subscriber"
        );
        metrics::describe_counter!(
            "bus_handled_total",
            "Deliveries by subscriber, topic and outcome (handled, duplicate, retried, dead_lettered)"
        );
        metrics::describe_counter!(
            "bus_redeliveries_total",
            "Deliveries of an event that had been delivered before, by subscriber"
        );
        metrics::describe_counter!(
            "bus_dead_letters_total",
            "Events moved to a dead-letter queue, by subscriber"
        );
        metrics::describe_gauge!(
            "bus_dead_letters",
            "Events waiting in a dead-letter queue, by subscriber"
        );
        metrics::describe_histogram!(
            "bus_handle_duration_seconds",
            metrics::Unit::Seconds,
            "Time to handle one event, inbox and commit included, by subscriber"
        );
    });
}

pub(crate) fn outbox_backlog(count: u64, oldest_age_ms: Option<i64>) {
    metrics::gauge!("bus_outbox_backlog").set(count as f64);
    let age = oldest_age_ms.unwrap_or(0) as f64 / 1000.0;
    metrics::gauge!("bus_outbox_oldest_age_seconds").set(age);
}

pub(crate) fn published(topic: &str) {
    metrics::counter!("bus_published_total", "topic" => topic.to_owned()).increment(1);
}

pub(crate) fn publish_failed() {
    metrics::counter!("bus_publish_failures_total").increment(1);
}

pub(crate) fn consumer_lag(subscriber: &str, lag: u64) {
    metrics::gauge!("bus_consumer_lag", "subscriber" => subscriber.to_owned()).set(lag as f64);
}

/// Count a delivery and time its handling, in the trace it was handled in (none for one that
/// was not handled, which takes no time).
pub(crate) fn handled(
    subscriber: &str,
    topic: &str,
    outcome: &'static str,
    took: Duration,
    handling: Option<&Handling>,
) {
    let labels = [
        ("subscriber", subscriber.to_owned()),
        ("topic", topic.to_owned()),
        ("outcome", outcome.to_owned()),
    ];
    metrics::counter!("bus_handled_total", &labels).increment(1);
    LatencyHistogram::new(
        "bus_handle_duration_seconds",
        &[("subscriber", subscriber.to_owned())],
    )
    .record(took, handling.map(Handling::context));
}

pub(crate) fn redelivered(subscriber: &str) {
    metrics::counter!("bus_redeliveries_total", "subscriber" => subscriber.to_owned()).increment(1);
}

pub(crate) fn dead_lettered(subscriber: &str) {
    metrics::counter!("bus_dead_letters_total", "subscriber" => subscriber.to_owned()).increment(1);
}

pub(crate) fn dead_letters_waiting(subscriber: &str, count: u64) {
    metrics::gauge!("bus_dead_letters", "subscriber" => subscriber.to_owned()).set(count as f64);
}
