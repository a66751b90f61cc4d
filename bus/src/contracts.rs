//! The event contracts: every event type the platform publishes, its payload, schema version
//! and topic, written down here and nowhere else.
//!
//! Rules (checked by tests, and by reviewers through the generated `bus/asyncapi.json`):
//! - a payload never carries a password or any other secret;
//! - a published version is never changed in place: a change bumps `VERSION`, and a new
//!   version may only add optional fields, so that every consumer still reads it;
//! - the topic of an event is its type.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A payload that travels on the bus.
pub trait Event: Serialize + DeserializeOwned + JsonSchema + Send + Sync {
    /// Its type, also its topic, e.g. `user.signed_up`.
    const TYPE: &'static str;
    /// Its schema version.
    const VERSION: u32;
    /// What it says, for the AsyncAPI document.
    const SUMMARY: &'static str;
    /// Who publishes it.
    const PUBLISHER: &'static str;
    /// Who subscribes to it.
    const SUBSCRIBERS: &'static [&'static str];
    /// Its ordering key: events with the same subject are delivered in order where the
    /// backend allows it.
    fn subject(&self) -> String;
}

/// A new account was created (after its profile and credential exist); verification mails a
/// link, friends starts tracking the user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UserSignedUp {
    /// The new user's id.
    pub user_id: Uuid,
    /// Their normalised email address.
    pub email: String,
    /// Their display name.
    pub display_name: String,
    /// Their interests as their profile keeps them (normalised), for friend suggestions.
    pub interests: Vec<String>,
    /// The account this one replaced: an earlier signup for the address that was never
    /// verified (someone may have used another person's address first). Its links stop
    /// working, its credential and membership go. Absent in version 1 and for a free address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<Uuid>,
}

impl Event for UserSignedUp {
    const TYPE: &'static str = "user.signed_up";
    const VERSION: u32 = 2;
    const SUMMARY: &'static str = "A new account was created and awaits email verification.";
    const PUBLISHER: &'static str = "signup";
    const SUBSCRIBERS: &'static [&'static str] = &["verification", "friends"];
    fn subject(&self) -> String {
        self.user_id.to_string()
    }
}

/// Someone tried to sign up with an email that is already registered; the owner gets a notice
/// instead of a verification link (the API answers the same either way).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UserSignupConflict {
    /// The existing account's id.
    pub user_id: Uuid,
    /// The email address that was tried.
    pub email: String,
    /// When the attempt was made.
    pub attempted_at: DateTime<Utc>,
}

impl Event for UserSignupConflict {
    const TYPE: &'static str = "user.signup_conflict";
    const VERSION: u32 = 1;
    const SUMMARY: &'static str = "A signup was attempted with an already registered email.";
    const PUBLISHER: &'static str = "signup";
    const SUBSCRIBERS: &'static [&'static str] = &["verification"];
    fn subject(&self) -> String {
        self.user_id.to_string()
    }
}

/// A user followed their verification link: users marks the profile verified, passwords
/// allows login, friends lists the user in suggestions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UserEmailVerified {
    /// The user's id.
    pub user_id: Uuid,
    /// The address that was verified.
    pub email: String,
    /// When the link was followed.
    pub verified_at: DateTime<Utc>,
}

impl Event for UserEmailVerified {
    const TYPE: &'static str = "user.email_verified";
    const VERSION: u32 = 1;
    const SUMMARY: &'static str = "A user proved they own their email address.";
    const PUBLISHER: &'static str = "verification";
    const SUBSCRIBERS: &'static [&'static str] = &["users", "passwords", "friends"];
    fn subject(&self) -> String {
        self.user_id.to_string()
    }
}

/// A profile changed; friends refreshes its read models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UserProfileUpdated {
    /// The user's id.
    pub user_id: Uuid,
    /// The display name after the change.
    pub display_name: String,
    /// The interests after the change.
    pub interests: Vec<String>,
    /// Whether the email is verified.
    pub verified: bool,
}

impl Event for UserProfileUpdated {
    const TYPE: &'static str = "user.profile_updated";
    const VERSION: u32 = 1;
    const SUMMARY: &'static str = "A user's profile changed; the payload is the profile after the change.";
    const PUBLISHER: &'static str = "users";
    const SUBSCRIBERS: &'static [&'static str] = &["friends"];
    fn subject(&self) -> String {
        self.user_id.to_string()
    }
}

/// Two users became friends (a request was accepted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FriendConnected {
    /// The user who sent the request.
    pub requester_id: Uuid,
    /// The user who accepted it.
    pub accepter_id: Uuid,
    /// When it was accepted.
    pub since: DateTime<Utc>,
}

impl Event for FriendConnected {
    const TYPE: &'static str = "friend.connected";
    const VERSION: u32 = 1;
    const SUMMARY: &'static str = "A friend request was accepted.";
    const PUBLISHER: &'static str = "friends";
    const SUBSCRIBERS: &'static [&'static str] = &[];
    fn subject(&self) -> String {
        // Both ends of a pair share one ordering key, whoever asked first.
        let (low, high) = if self.requester_id <= self.accepter_id {
            (self.requester_id, self.accepter_id)
        } else {
            (self.accepter_id, self.requester_id)
        };
        format!("{low}:{high}")
    }
}

/// A user's password was replaced, by a reset through a mailed link or by a change while
/// logged in; every refresh session of the account (but the changing one) has ended.
/// Verification mails the owner a notice and revokes their open reset links.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UserPasswordChanged {
    /// The user's id.
    pub user_id: Uuid,
    /// When the new password took effect.
    pub occurred_at: DateTime<Utc>,
    /// How: `reset` (a mailed link) or `change` (the current password was given).
    pub method: String,
}

impl Event for UserPasswordChanged {
    const TYPE: &'static str = "user.password_changed";
    const VERSION: u32 = 1;
    const SUMMARY: &'static str = "A user's password was reset or changed; their other sessions ended.";
    const PUBLISHER: &'static str = "passwords";
    const SUBSCRIBERS: &'static [&'static str] = &["verification"];
    fn subject(&self) -> String {
        self.user_id.to_string()
    }
}

/// A user asked to change their email address, giving their password. Users records the
/// change as pending (a newer request supersedes it); verification mails a link to the new
/// address (or, when another account has it, a notice to that account's owner instead) and a
/// notice to the old one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UserEmailChangeRequested {
    /// The user's id.
    pub user_id: Uuid,
    /// This request's id: only a link for the latest request of a user changes anything.
    pub change_id: Uuid,
    /// The address in use now, which gets a notice that does not name the new one.
    pub old_email: String,
    /// The normalised address asked for.
    pub new_email: String,
    /// Whether another account has the new address: then no link goes out, and its owner
    /// gets a notice instead (the requester is answered the same either way).
    pub new_email_taken: bool,
    /// When the change was asked for.
    pub requested_at: DateTime<Utc>,
}

impl Event for UserEmailChangeRequested {
    const TYPE: &'static str = "user.email_change_requested";
    const VERSION: u32 = 1;
    const SUMMARY: &'static str =
        "A user asked to change their email address; the new one must be proven by a mailed link.";
    const PUBLISHER: &'static str = "users";
    const SUBSCRIBERS: &'static [&'static str] = &["verification"];
    fn subject(&self) -> String {
        self.user_id.to_string()
    }
}

/// A user's email address changed (the link mailed to the new one was followed): passwords
/// logs them in with the new one, verification mails and resets to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UserEmailChanged {
    /// The user's id.
    pub user_id: Uuid,
    /// The address before the change.
    pub old_email: String,
    /// The normalised address from now on (proven: its link was followed).
    pub new_email: String,
    /// When the change took effect.
    pub changed_at: DateTime<Utc>,
}

impl Event for UserEmailChanged {
    const TYPE: &'static str = "user.email_changed";
    const VERSION: u32 = 1;
    const SUMMARY: &'static str = "A user's email address changed, after the new one was proven.";
    const PUBLISHER: &'static str = "users";
    const SUBSCRIBERS: &'static [&'static str] = &["passwords", "verification"];
    fn subject(&self) -> String {
        self.user_id.to_string()
    }
}

/// A user deleted their account: their credential and every refresh session are gone, so
/// nobody can log in as them again. Every other service erases what it holds about them.
/// It names the user alone, so the event itself holds no personal data once they are erased.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UserDeleted {
    /// The deleted user's id.
    pub user_id: Uuid,
    /// When the account was deleted.
    pub occurred_at: DateTime<Utc>,
}

impl Event for UserDeleted {
    const TYPE: &'static str = "user.deleted";
    const VERSION: u32 = 1;
    const SUMMARY: &'static str = "A user deleted their account; every service erases their data.";
    const PUBLISHER: &'static str = "passwords";
    const SUBSCRIBERS: &'static [&'static str] = &["signup", "users", "verification", "friends"];
    fn subject(&self) -> String {
        self.user_id.to_string()
    }
}

/// One event type as the AsyncAPI document and the compatibility check see it.
#[derive(Debug, Clone)]
pub struct Contract {
    /// Its type and topic.
    pub event_type: &'static str,
    /// Its schema version.
    pub version: u32,
    /// What it says.
    pub summary: &'static str,
    /// Who publishes it.
    pub publisher: &'static str,
    /// Who subscribes.
    pub subscribers: &'static [&'static str],
    /// The JSON schema (draft-07) of its payload.
    pub schema: serde_json::Value,
}

fn contract<E: Event>() -> Contract {
    let generator = schemars::generate::SchemaSettings::draft07().into_generator();
    let schema = generator.into_root_schema_for::<E>();
    Contract {
        event_type: E::TYPE,
        version: E::VERSION,
        summary: E::SUMMARY,
        publisher: E::PUBLISHER,
        subscribers: E::SUBSCRIBERS,
        schema: schema.to_value(),
    }
}

/// Every event type of the platform: the one list.
pub fn all() -> Vec<Contract> {
    vec![
        contract::<UserSignedUp>(),
        contract::<UserSignupConflict>(),
        contract::<UserEmailVerified>(),
        contract::<UserProfileUpdated>(),
        contract::<FriendConnected>(),
        contract::<UserPasswordChanged>(),
        contract::<UserEmailChangeRequested>(),
        contract::<UserEmailChanged>(),
        contract::<UserDeleted>(),
    ]
}

/// The AsyncAPI 2.6 document of the bus, generated from [`all`]: one channel per topic, the
/// envelope as message headers and the payload schema per event type.
pub fn asyncapi() -> serde_json::Value {
    use serde_json::json;
    let mut channels = serde_json::Map::new();
    for contract in all() {
        let mut schema = contract.schema.clone();
        if let Some(object) = schema.as_object_mut() {
            object.remove("$schema");
        }
        let subscribers = contract.subscribers.join(", ");
        channels.insert(
            contract.event_type.to_owned(),
            json!({
                "description": format!(
                    "Published by {}; each subscriber ({}) has its own durable queue.",
                    contract.publisher,
                    if subscribers.is_empty() { "none yet" } else { &subscribers }
                ),
                "x-publisher": contract.publisher,
                "x-subscribers": contract.subscribers,
                "subscribe": {
                    "operationId": format!("on_{}", contract.event_type.replace('.', "_")),
                    "message": {
                        "name": contract.event_type,
                        "title": contract.event_type,
                        "summary": contract.summary,
                        "contentType": "application/json",
                        "x-schema-version": contract.version,
                        "payload": {
                            "allOf": [
                                { "$ref": "#/components/schemas/Envelope" },
                                {
                                    "type": "object",
                                    "properties": {
                                        "type": { "const": contract.event_type },
                                        "schema_version": { "const": contract.version },
                                        "data": schema,
                                    }
                                }
                            ]
                        }
                    }
                }
            }),
        );
    }
    json!({
        "asyncapi": "2.6.0",
        "info": {
            "title": "dozen events",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every event on dozen's bus. Generated from bus/src/contracts.rs by its tests: do not edit by hand. A published schema version never changes; a new version may only add optional fields.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "components": {
            "schemas": {
                "Envelope": {
                    "type": "object",
                    "required": ["id", "type", "source", "time", "schema_version", "subject", "data"],
                    "properties": {
                        "id": { "type": "string", "format": "uuid", "description": "UUID v7; the deduplication key." },
                        "type": { "type": "string", "description": "The event type, also its topic." },
                        "source": { "type": "string", "description": "The publishing service." },
                        "time": { "type": "string", "format": "date-time" },
                        "schema_version": { "type": "integer", "minimum": 1 },
                        "subject": { "type": "string", "description": "The ordering key, e.g. a user id." },
                        "data": { "type": "object" },
                        "trace": {
                            "type": "object",
                            "additionalProperties": { "type": "string" },
                            "description": "W3C trace context: traceparent and tracestate."
                        }
                    }
                }
            }
        }
    })
}

/// `schema` without its descriptions: rewording one changes nothing a consumer reads, so it is
/// neither a breaking change nor one that needs a new version. (A property named
/// `description` is an object, and stays.)
pub fn without_descriptions(schema: &serde_json::Value) -> serde_json::Value {
    match schema {
        serde_json::Value::Object(fields) => fields
            .iter()
            .filter(|(key, value)| !(key.as_str() == "description" && value.is_string()))
            .map(|(key, value)| (key.clone(), without_descriptions(value)))
            .collect(),
        serde_json::Value::Array(items) => items.iter().map(without_descriptions).collect(),
        other => other.clone(),
    }
}

/// Check that `new` may replace `old` as the schema of one event type: every property of
/// `old` is still there with the same schema, every field `old` required is still required,
/// and anything added is optional. The answer lists every violation.
pub fn check_compatible(old: &serde_json::Value, new: &serde_json::Value) -> Result<(), Vec<String>> {
    let mut problems = Vec::new();
    let properties = |schema: &serde_json::Value| {
        schema
            .get("properties")
            .and_then(|p| p.as_object())
            .cloned()
            .unwrap_or_default()
    };
    let required = |schema: &serde_json::Value| -> Vec<String> {
        schema
            .get("required")
            .and_then(|r| r.as_array())
            .map(|r| r.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let (old_properties, new_properties) = (properties(old), properties(new));
    let (old_required, new_required) = (required(old), required(new));
    for (name, old_schema) in &old_properties {
        match new_properties.get(name) {
            None => problems.push(format!("field `{name}` was removed")),
            Some(new_schema) if without_descriptions(new_schema) != without_descriptions(old_schema) => {
                problems.push(format!("field `{name}` changed its schema"))
            }
            Some(_) => {}
        }
    }
    for name in &old_required {
        if !new_required.contains(name) {
            problems.push(format!("field `{name}` is no longer required"));
        }
    }
    for name in &new_required {
        if !old_required.contains(name) {
            problems.push(format!(
                "new field `{name}` is required; a new field must be optional"
            ));
        }
    }
    if old.get("definitions") != new.get("definitions") && old.get("definitions").is_some() {
        problems.push("a shared definition changed".to_owned());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}
