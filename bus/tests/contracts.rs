//! The event contracts as reviewers and consumers see them: the committed AsyncAPI document
//! matches the code, every schema change is compatible, and no payload carries a secret.

use std::path::PathBuf;

use dozen_bus::contracts::{self, check_compatible};
use serde_json::json;

fn document_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("asyncapi.json")
}

fn committed() -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(document_path()).ok()?;
    serde_json::from_str(&text).ok()
}

fn rendered() -> String {
    let mut text = serde_json::to_string_pretty(&contracts::asyncapi()).expect("the document renders");
    text.push('\n');
    text
}

/// The payload schema of `event_type` in an AsyncAPI document.
fn payload_schema<'a>(document: &'a serde_json::Value, event_type: &str) -> Option<&'a serde_json::Value> {
    document.pointer(&format!(
        "/channels/{}/subscribe/message/payload/allOf/1/properties/data",
        event_type.replace('/', "~1")
    ))
}

fn version(document: &serde_json::Value, event_type: &str) -> Option<u64> {
    document
        .pointer(&format!(
            "/channels/{event_type}/subscribe/message/x-schema-version"
        ))
        .and_then(|v| v.as_u64())
}

#[test]
fn the_committed_asyncapi_document_matches_the_code() {
    // Regenerate with UPDATE_ASYNCAPI=1 after a reviewed, compatible change.
    let fresh = rendered();
    if std::env::var_os("UPDATE_ASYNCAPI").is_some() {
        std::fs::write(document_path(), &fresh).expect("write bus/asyncapi.json");
        return;
    }
    let on_disk = std::fs::read_to_string(document_path()).unwrap_or_default();
    assert!(
        on_disk == fresh,
        "bus/asyncapi.json differs from bus/src/contracts.rs: check the change is compatible, then \
         regenerate it with `UPDATE_ASYNCAPI=1 cargo test -p dozen-bus --test contracts` and commit it"
    );
}

#[test]
fn every_event_type_stays_readable_by_its_existing_consumers() {
    let Some(document) = committed() else {
        panic!("bus/asyncapi.json is missing or unreadable");
    };
    let mut problems = Vec::new();
    let current = contracts::asyncapi();
    let Some(channels) = document.get("channels").and_then(|c| c.as_object()) else {
        panic!("bus/asyncapi.json has no channels");
    };
    for event_type in channels.keys() {
        let (Some(old), Some(old_version)) = (
            payload_schema(&document, event_type),
            version(&document, event_type),
        ) else {
            continue;
        };
        let (Some(new), Some(new_version)) = (
            payload_schema(&current, event_type),
            version(&current, event_type),
        ) else {
            problems.push(format!("{event_type}: the event type was removed"));
            continue;
        };
        if new_version < old_version {
            problems.push(format!("{event_type}: the schema version went down"));
        } else if new_version == old_version && old != new {
            problems.push(format!("{event_type}: the schema changed without a new version"));
        } else if let Err(violations) = check_compatible(old, new) {
            problems.extend(
                violations
                    .into_iter()
                    .map(|v| format!("{event_type} v{new_version}: {v}")),
            );
        }
    }
    assert!(
        problems.is_empty(),
        "incompatible event contracts:\n{}",
        problems.join("\n")
    );
}

#[test]
fn a_new_version_may_add_an_optional_field_and_nothing_else() {
    let v1 = json!({
        "type": "object",
        "required": ["user_id", "email"],
        "properties": { "user_id": { "type": "string" }, "email": { "type": "string" } }
    });
    let with_optional = json!({
        "type": "object",
        "required": ["user_id", "email"],
        "properties": {
            "user_id": { "type": "string" }, "email": { "type": "string" },
            "locale": { "type": ["string", "null"] }
        }
    });
    assert!(check_compatible(&v1, &with_optional).is_ok());

    let with_required = json!({
        "type": "object",
        "required": ["user_id", "email", "locale"],
        "properties": {
            "user_id": { "type": "string" }, "email": { "type": "string" }, "locale": { "type": "string" }
        }
    });
    assert!(check_compatible(&v1, &with_required).is_err());

    let without_email = json!({
        "type": "object",
        "required": ["user_id"],
        "properties": { "user_id": { "type": "string" } }
    });
    let problems = check_compatible(&v1, &without_email).expect_err("removing a field breaks consumers");
    assert!(
        problems.iter().any(|p| p.contains("`email` was removed")),
        "{problems:?}"
    );

    let retyped = json!({
        "type": "object",
        "required": ["user_id", "email"],
        "properties": { "user_id": { "type": "integer" }, "email": { "type": "string" } }
    });
    assert!(check_compatible(&v1, &retyped).is_err());
}

/// Every property name anywhere in a schema.
fn property_names(schema: &serde_json::Value, names: &mut Vec<String>) {
    match schema {
        serde_json::Value::Object(object) => {
            if let Some(properties) = object.get("properties").and_then(|p| p.as_object()) {
                names.extend(properties.keys().cloned());
            }
            object.values().for_each(|value| property_names(value, names));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|value| property_names(value, names)),
        _ => {}
    }
}

#[test]
fn no_event_payload_carries_a_password_or_secret() {
    for contract in contracts::all() {
        let mut names = Vec::new();
        property_names(&contract.schema, &mut names);
        for name in names {
            let name = name.to_lowercase();
            for word in ["password", "secret", "token", "hash", "credential"] {
                assert!(
                    !name.contains(word),
                    "{} has a field `{name}`: secrets never go on the bus",
                    contract.event_type
                );
            }
        }
    }
}

#[test]
fn every_event_type_is_listed_once_with_a_version() {
    let all = contracts::all();
    let mut types: Vec<_> = all.iter().map(|c| c.event_type).collect();
    types.sort_unstable();
    types.dedup();
    assert_eq!(types.len(), all.len(), "an event type is listed twice");
    assert!(all.iter().all(|c| c.version >= 1));
    for expected in [
        "user.signed_up",
        "user.signup_conflict",
        "user.email_verified",
        "user.profile_updated",
        "friend.connected",
    ] {
        assert!(types.contains(&expected), "{expected} is missing");
    }
}
