//! The exporter's Prometheus text rewritten as OpenMetrics, with exemplars on histogram
//! buckets. Written by hand because metrics-exporter-prometheus renders only the Prometheus
//! text, and prometheus-client, which has exemplars, would take every metric off the `metrics`
//! facade that the services, the bus and metrics-process record through.
//!
//! The two formats differ in little: OpenMetrics has no blank lines and ends with `# EOF`,
//! escapes `"` in help texts, names a counter's family without its `_total`, spells infinity
//! `+Inf`, and lets a histogram's bucket carry an exemplar after a `#`.

use std::collections::HashSet;
use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::TraceId;

/// A record that fell in a bucket, with the trace it was made in.
#[derive(Debug, Clone, Copy)]
pub(super) struct Exemplar {
    pub trace_id: TraceId,
    /// The value recorded.
    pub value: f64,
    pub at: SystemTime,
}

/// `text`, the exporter's Prometheus exposition, as OpenMetrics. `exemplar_of` is asked, for
/// each bucket of a histogram, with the bucket's line up to its `le` label (its name and
/// other labels, `name_bucket{a="1",`) and the `le` value.
pub(super) fn from_prometheus(text: &str, exemplar_of: impl Fn(&str, &str) -> Option<Exemplar>) -> String {
    // A counter's family is its name without `_total`, unless another family has that name
    // (a gauge `x` beside a counter `x_total`): the counter then goes as a metric of unknown
    // type under its full name, which no family clashes with.
    let families: HashSet<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' ').map(|(name, _)| name))
        .collect();
    let mut out = String::with_capacity(text.len() + text.len() / 4);
    // The exporter writes a family's HELP before its TYPE, which says the family's name.
    let mut help: Option<(&str, &str)> = None;
    let mut in_histogram = false;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, description)) = help.take() {
                write_help(&mut out, name, description);
            }
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (family, kind) = match kind {
                "counter" => match name.strip_suffix("_total") {
                    Some(family) if !families.contains(family) => (family, kind),
                    _ => (name, "unknown"),
                },
                "untyped" => (name, "unknown"),
                _ => (name, kind),
            };
            if let Some((help_name, description)) = help.take() {
                write_help(
                    &mut out,
                    if help_name == name { family } else { help_name },
                    description,
                );
            }
            let _ = writeln!(out, "# TYPE {family} {kind}");
            in_histogram = kind == "histogram";
        } else if !line.is_empty() && !line.starts_with('#') {
            write_sample(&mut out, line, in_histogram, &exemplar_of);
        }
    }
    if let Some((name, description)) = help {
        write_help(&mut out, name, description);
    }
    out.push_str("# EOF\n");
    out
}

/// A HELP line; the exporter leaves `"` as it is, which OpenMetrics escapes (its other escapes,
/// `\\` and `\n`, are the same in both).
fn write_help(out: &mut String, name: &str, description: &str) {
    let _ = write!(out, "# HELP {name} ");
    let mut chars = description.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                out.push(c);
                out.extend(chars.next());
            }
            '"' => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out.push('\n');
}

fn write_sample(
    out: &mut String,
    line: &str,
    in_histogram: bool,
    exemplar_of: &impl Fn(&str, &str) -> Option<Exemplar>,
) {
    // The value is the last field: label values may hold spaces, values never do.
    let Some((series, value)) = line.rsplit_once(' ') else {
        return;
    };
    out.push_str(series);
    out.push(' ');
    out.push_str(match value {
        "inf" => "+Inf",
        "-inf" => "-Inf",
        value => value,
    });
    let bucket = in_histogram
        .then(|| series.split_once('{'))
        .flatten()
        .filter(|(name, _)| name.ends_with("_bucket"));
    // `le` is the last label; inside a label value a quote is escaped, so `le="` starts it.
    if bucket.is_some()
        && let Some(at) = series.rfind("le=\"")
        && let Some(le) = series[at + 4..].strip_suffix("\"}")
        && let Some(exemplar) = exemplar_of(&series[..at], le)
    {
        let at = exemplar.at.duration_since(UNIX_EPOCH).unwrap_or_default();
        let _ = write!(
            out,
            " # {{trace_id=\"{}\"}} {} {}.{:03}",
            exemplar.trace_id,
            exemplar.value,
            at.as_secs(),
            at.subsec_millis()
        );
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const PROMETHEUS_TEXT: &str = r#"# HELP http_requests_total HTTP requests answered, by "method", route and status
# TYPE http_requests_total counter
http_requests_total{method="GET",route="/a b",status="200"} 3

# HELP bus_dead_letters Events waiting
# TYPE bus_dead_letters gauge
bus_dead_letters{subscriber="s"} 0

# TYPE bus_dead_letters_total counter
bus_dead_letters_total{subscriber="s"} 2

# TYPE lag gauge
lag inf

# HELP took_seconds Time taken\\ in seconds\nand more
# TYPE took_seconds histogram
took_seconds_bucket{route="/a b",le="0.1"} 1
took_seconds_bucket{route="/a b",le="1"} 2
took_seconds_bucket{route="/a b",le="+Inf"} 2
took_seconds_sum{route="/a b"} 0.6
took_seconds_count{route="/a b"} 2

"#;

    #[test]
    fn prometheus_text_becomes_openmetrics_with_exemplars() {
        let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("trace id");
        let at = UNIX_EPOCH + Duration::from_millis(1_733_450_000_123);
        let text = from_prometheus(PROMETHEUS_TEXT, |series, le| {
            (series == r#"took_seconds_bucket{route="/a b","# && le == "1").then_some(Exemplar {
                trace_id,
                value: 0.55,
                at,
            })
        });
        let expected = r#"# HELP http_requests HTTP requests answered, by \"method\", route and status
# TYPE http_requests counter
http_requests_total{method="GET",route="/a b",status="200"} 3
# HELP bus_dead_letters Events waiting
# TYPE bus_dead_letters gauge
bus_dead_letters{subscriber="s"} 0
# TYPE bus_dead_letters_total unknown
bus_dead_letters_total{subscriber="s"} 2
# TYPE lag gauge
lag +Inf
# HELP took_seconds Time taken\\ in seconds\nand more
# TYPE took_seconds histogram
took_seconds_bucket{route="/a b",le="0.1"} 1
took_seconds_bucket{route="/a b",le="1"} 2 # {trace_id="4bf92f3577b34da6a3ce929d0e0e4736"} 0.55 1733450000.123
took_seconds_bucket{route="/a b",le="+Inf"} 2
took_seconds_sum{route="/a b"} 0.6
took_seconds_count{route="/a b"} 2
# EOF
"#;
        assert_eq!(text, expected);
    }

    #[test]
    fn nothing_rendered_is_an_empty_exposition() {
        assert_eq!(from_prometheus("", |_, _| None), "# EOF\n");
    }
}
