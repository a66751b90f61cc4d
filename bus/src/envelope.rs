//! The envelope every event travels in, CloudEvents-style: what happened (`type`, `data`),
//! where and when (`source`, `time`), how to read it (`schema_version`), how to deduplicate it
//! (`id`), what it is about (`subject`, the ordering key) and the trace it belongs to.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::contracts::Event;

/// One event on the bus, as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// A UUID v7 (time-ordered), unique per event: the deduplication key everywhere.
    pub id: Uuid,
    /// The event type, e.g. `user.signed_up`; also its topic.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The service that published it.
    pub source: String,
    /// When it was published (when the outbox row was written).
    pub time: DateTime<Utc>,
    /// The version of `data`'s schema (see `contracts`).
    pub schema_version: u32,
    /// What the event is about, e.g. a user id: events of one subject are delivered in order
    /// where the backend allows it.
    pub subject: String,
    /// The payload.
    pub data: serde_json::Value,
    /// W3C trace context (`traceparent`, `tracestate`) of the publishing span.
    #[serde(default)]
    pub trace: HashMap<String, String>,
}

impl Envelope {
    /// Wrap `event`, published by `source`, in the current span's trace.
    pub fn new<E: Event>(source: &str, event: &E) -> Result<Self, serde_json::Error> {
        Ok(Self {
            id: Uuid::now_v7(),
            event_type: E::TYPE.to_owned(),
            source: source.to_owned(),
            time: Utc::now(),
            schema_version: E::VERSION,
            subject: event.subject(),
            data: serde_json::to_value(event)?,
            trace: dozen_kit::trace_context::inject_into_map(),
        })
    }

    /// The payload as event `E`; an error when the type differs or the data does not fit.
    pub fn decode<E: Event>(&self) -> Result<E, DecodeError> {
        if self.event_type != E::TYPE {
            return Err(DecodeError::OtherType {
                expected: E::TYPE,
                found: self.event_type.clone(),
            });
        }
        if self.schema_version > E::VERSION {
            // A newer version only adds optional fields (the compatibility rule), so it still
            // reads as this one; noted for the logs.
            tracing::debug!(
                event_type = E::TYPE,
                version = self.schema_version,
                known = E::VERSION,
                "reading a newer event version"
            );
        }
        E::deserialize(&self.data).map_err(DecodeError::Data)
    }

    /// The topic it is published on: its type.
    pub fn topic(&self) -> &str {
        &self.event_type
    }
}

/// Why an envelope did not decode as the event asked for.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// It is another event type.
    #[error("expected a {expected} event, found {found}")]
    OtherType {
        /// What was asked for.
        expected: &'static str,
        /// What it is.
        found: String,
    },
    /// The data does not fit the payload type.
    #[error("event data does not fit its schema: {0}")]
    Data(serde_json::Error),
}
