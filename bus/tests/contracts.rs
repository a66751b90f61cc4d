//! The event contracts as reviewers and consumers see them: the committed AsyncAPI document
//! matches the code, every schema change is compatible with the contracts last committed
//! before the change (read from git), and no payload carries a secret.

use std::path::{Path, PathBuf};
use std::process::Command;

use dozen_bus::contracts::{self, check_compatible};
use serde_json::json;

fn document_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("asyncapi.json")
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

/// Why an event type of `current` would break consumers written against `base`: each one
/// still in `base` keeps its payload at a version at least as high, changed only compatibly.
fn incompatibilities(base: &serde_json::Value, current: &serde_json::Value) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(channels) = base.get("channels").and_then(|c| c.as_object()) else {
        return vec!["the base document has no channels".to_owned()];
    };
    for event_type in channels.keys() {
        let (Some(old), Some(old_version)) = (payload_schema(base, event_type), version(base, event_type))
        else {
            continue;
        };
        let (Some(new), Some(new_version)) =
            (payload_schema(current, event_type), version(current, event_type))
        else {
            problems.push(format!("{event_type}: the event type was removed"));
            continue;
        };
        if new_version < old_version {
            problems.push(format!("{event_type}: the schema version went down"));
        } else if new_version == old_version
            && contracts::without_descriptions(old) != contracts::without_descriptions(new)
        {
            problems.push(format!("{event_type}: the schema changed without a new version"));
        } else if let Err(violations) = check_compatible(old, new) {
            problems.extend(
                violations
                    .into_iter()
                    .map(|v| format!("{event_type} v{new_version}: {v}")),
            );
        }
    }
    problems
}

/// The path of the contract document inside the repository.
const DOCUMENT_IN_GIT: &str = "bus/asyncapi.json";

/// The contract documents the code must stay compatible with, read from git in `repository`,
/// each with the revision it came from. The working copy's `bus/asyncapi.json` cannot be one:
/// a change regenerates it along with the code, so a breaking change would pass.
///
/// The rule: compare with the newest commit that is not part of the change being tested.
/// - `chosen` (`ASYNCAPI_BASE=<revision>`) names it outright (`none` skips the comparison,
///   knowingly).
/// - On a branch with commits of its own, it is the merge-base with `main` (or `origin/main`):
///   everything after it is the branch's change, committed or not.
/// - When `HEAD` is on `main` (CI tests a fresh clone of main, whose newest commit is the
///   change; or a branch with no commits yet), it is `HEAD`'s first parent: `main` before the
///   change, even when that was a merge.
/// - Also the newest release tag (`v*`) behind `HEAD`, if there is one: a run of compatible
///   steps must stay compatible with what was released.
///
/// A base that has no `bus/asyncapi.json` yet (or no parent: the first commit) adds nothing. Not a
/// git checkout, or a shallow clone without the base, is an error saying so, never a pass.
fn base_documents(
    repository: &Path,
    chosen: Option<&str>,
) -> Result<Vec<(String, serde_json::Value)>, String> {
    let git = |args: &[&str]| -> Result<Option<String>, String> {
        let output = Command::new("git")
            .arg("-C")
            .arg(repository)
            .args(args)
            .output()
            .map_err(|e| {
                format!("cannot run git ({e}): the event contracts are compared with the ones in git")
            })?;
        Ok(output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned()))
    };
    if git(&["rev-parse", "--is-inside-work-tree"])?.as_deref() != Some("true") {
        return Err(format!(
            "{} is not a git checkout: the event contracts are compared with the last committed ones, \
             read from git (set ASYNCAPI_BASE=none to skip that knowingly)",
            repository.display()
        ));
    }
    let head = git(&["rev-parse", "--verify", "HEAD^{commit}"])?.ok_or("the checkout has no commit yet")?;
    let mut bases = Vec::new();
    match chosen.filter(|base| !base.is_empty()) {
        Some("none") => return Ok(Vec::new()),
        Some(base) => bases.push(base.to_owned()),
        None => {
            let merge_base = ["main", "origin/main"]
                .into_iter()
                .find_map(|main| git(&["merge-base", "HEAD", main]).ok().flatten());
            match merge_base {
                Some(merge_base) if merge_base != head => bases.push(merge_base),
                // HEAD is on main: the first commit has no parent, and nothing to stay compatible with.
                _ => {
                    if git(&["rev-parse", "--verify", "HEAD^1^{commit}"])?.is_some() {
                        bases.push("HEAD^1".to_owned());
                    } else if git(&["rev-parse", "--is-shallow-repository"])?.as_deref() == Some("true") {
                        return Err(
                            "a shallow clone: fetch the commit before HEAD (git fetch --deepen=1), \
                                    the event contracts are compared with it"
                                .to_owned(),
                        );
                    }
                }
            }
            if let Some(tag) = git(&["describe", "--tags", "--abbrev=0", "--match", "v*", "HEAD"])? {
                bases.push(tag);
            }
        }
    }
    let mut documents = Vec::new();
    for base in bases {
        let commit = git(&["rev-parse", "--verify", &format!("{base}^{{commit}}")])?
            .ok_or_else(|| format!("ASYNCAPI_BASE {base} is not a commit in this repository"))?;
        // Missing at the base: there were no contracts to break.
        let Some(text) = git(&["show", &format!("{commit}:{DOCUMENT_IN_GIT}")])? else {
            continue;
        };
        let document = serde_json::from_str(&text)
            .map_err(|e| format!("{DOCUMENT_IN_GIT} at {base} is not JSON: {e}"))?;
        documents.push((base, document));
    }
    Ok(documents)
}

#[test]
fn every_event_type_stays_readable_by_consumers_of_the_last_committed_contracts() {
    let repository = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let chosen = std::env::var("ASYNCAPI_BASE").ok();
    let bases = base_documents(&repository, chosen.as_deref()).unwrap_or_else(|problem| panic!("{problem}"));
    let current = contracts::asyncapi();
    let problems: Vec<String> = bases
        .iter()
        .flat_map(|(base, document)| {
            incompatibilities(document, &current)
                .into_iter()
                .map(move |problem| format!("against {base}: {problem}"))
        })
        .collect();
    assert!(
        problems.is_empty(),
        "incompatible event contracts:\n{}",
        problems.join("\n")
    );
}

/// A throwaway git repository holding `bus/asyncapi.json`.
struct Repository(tempfile::TempDir);

impl Repository {
    fn new() -> Self {
        let repository = Self(tempfile::tempdir().expect("a folder"));
        repository.git(&["init", "--quiet", "--initial-branch=main"]);
        std::fs::create_dir(repository.0.path().join("bus")).expect("bus/");
        repository
    }

    fn git(&self, args: &[&str]) {
        let status = Command::new("git")
            .arg("-C")
            .arg(self.0.path())
            .args(["-c", "user.name=test", "-c", "user.email=test@example.invalid"])
            .args(["-c", "commit.gpgsign=false", "-c", "core.hooksPath=/dev/null"])
            .args(args)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("git runs");
        assert!(status.success(), "git {args:?}");
    }

    /// Write `document` as `bus/asyncapi.json`; commit it unless `commit` is false.
    fn write(&self, document: &serde_json::Value, commit: bool) {
        let text = serde_json::to_string_pretty(document).expect("JSON");
        std::fs::write(self.0.path().join(DOCUMENT_IN_GIT), text).expect("write the document");
        if commit {
            self.git(&["add", DOCUMENT_IN_GIT]);
            self.git(&["commit", "--quiet", "--allow-empty", "--message", "contracts"]);
        }
    }

    /// What the comparison finds wrong with `current`.
    fn problems_with(&self, current: &serde_json::Value) -> Vec<String> {
        base_documents(self.0.path(), None)
            .expect("a base")
            .iter()
            .flat_map(|(_, base)| incompatibilities(base, current))
            .collect()
    }
}

/// The code's document with `user.signed_up`'s `email` removed in a new version, as a
/// regenerated `bus/asyncapi.json` would hold after a breaking change.
fn without_email() -> serde_json::Value {
    let mut document = contracts::asyncapi();
    let version = document
        .pointer_mut("/channels/user.signed_up/subscribe/message/x-schema-version")
        .expect("user.signed_up's version");
    *version = (version.as_u64().expect("a number") + 1).into();
    let payload = document
        .pointer_mut("/channels/user.signed_up/subscribe/message/payload/allOf/1/properties/data")
        .expect("user.signed_up's payload");
    payload["properties"]
        .as_object_mut()
        .expect("properties")
        .remove("email");
    payload["required"]
        .as_array_mut()
        .expect("required")
        .retain(|name| name != "email");
    document
}

#[test]
fn a_breaking_change_is_caught_even_when_the_document_was_regenerated_with_it() {
    let released = contracts::asyncapi();
    let broken = without_email();

    // On main (CI's fresh clone): the change is HEAD's commit, compared with its parent.
    let repository = Repository::new();
    repository.write(&released, true);
    repository.write(&broken, true);
    let problems = repository.problems_with(&broken);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("user.signed_up") && p.contains("email")),
        "{problems:?}"
    );

    // On a branch: compared with where it left main, however many commits it has.
    let repository = Repository::new();
    repository.write(&released, true);
    repository.git(&["checkout", "--quiet", "-b", "change"]);
    repository.write(&broken, true);
    repository.write(&broken, false);
    assert!(!repository.problems_with(&broken).is_empty());

    // Uncommitted: compared with the commit before, the newest one on main.
    let repository = Repository::new();
    repository.write(&released, true);
    repository.write(&released, true);
    repository.write(&broken, false);
    assert!(!repository.problems_with(&broken).is_empty());

    // The same steps with a compatible change pass.
    let repository = Repository::new();
    repository.write(&released, true);
    repository.write(&released, true);
    assert_eq!(repository.problems_with(&released), Vec::<String>::new());
}

#[test]
fn outside_a_git_checkout_the_comparison_fails_and_says_why() {
    let folder = tempfile::tempdir().expect("a folder");
    let problem = base_documents(folder.path(), None).expect_err("no git history to compare with");
    assert!(problem.contains("not a git checkout"), "{problem}");
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
        "user.password_changed",
        "user.email_change_requested",
        "user.email_changed",
        "user.deleted",
    ] {
        assert!(types.contains(&expected), "{expected} is missing");
    }
}

#[test]
fn a_version_1_signup_without_replaces_still_parses() {
    let id = uuid::Uuid::now_v7();
    let v1 = json!({ "user_id": id, "email": "ann@example.com", "display_name": "Ann", "interests": ["go"] });
    let event: dozen_bus::contracts::UserSignedUp = serde_json::from_value(v1).expect("a v1 payload parses");
    assert_eq!(event.replaces, None);
    let replaced = uuid::Uuid::now_v7();
    let v2 = serde_json::to_value(dozen_bus::contracts::UserSignedUp {
        replaces: Some(replaced),
        ..event.clone()
    })
    .expect("JSON");
    assert_eq!(v2["replaces"], json!(replaced));
    let without = serde_json::to_value(&event).expect("JSON");
    assert!(
        without.get("replaces").is_none(),
        "absent, not null, when nothing was replaced"
    );
}
