//! `dozen keys`: the service identity keys of a deployment, in one folder: `<service>.pem`,
//! each service's Ed25519 private keys (its `SERVICE_SIGNING_KEYS`, the first signing), and
//! `service-keys.json`, the trust bundle of every service's public keys (everyone's
//! `SERVICE_KEYS`). A missing key is made, an existing one kept, and the bundle rewritten
//! from the keys there, so running it again changes nothing. `dozen up` uses it on
//! `<DATA_DIR>/service-keys`.
//!
//! Rotation: `--rotate <service>` puts a new key in front of the service's keys; the old one
//! stays in the bundle, so calls signed with either are accepted while the new bundle reaches
//! every service. Once it has, delete the old PEM block and run `dozen keys` again.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use dozen_kit::keys::{SigningKeys, generate_signing_key_pem};

use crate::services::ServiceName;

/// The trust bundle's file name in the keys folder.
pub const BUNDLE: &str = "service-keys.json";

/// Settings of `dozen keys`.
#[derive(Debug, Clone, Args)]
pub struct KeysSettings {
    /// The folder of the keys (made if missing).
    #[arg(default_value = "service-keys")]
    pub folder: PathBuf,

    /// Put a new signing key in front of this service's keys (may be repeated).
    #[arg(long, value_enum)]
    pub rotate: Vec<ServiceName>,
}

/// The `main` of `dozen keys`.
pub fn main(settings: KeysSettings) -> ExitCode {
    match ensure(&settings.folder, &settings.rotate) {
        Ok(()) => {
            println!(
                "service keys in {}: <service>.pem is each service's SERVICE_SIGNING_KEYS, {BUNDLE} everyone's SERVICE_KEYS",
                settings.folder.display()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("dozen keys: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The private key file of `service` in `folder`.
pub fn key_file(folder: &Path, service: ServiceName) -> PathBuf {
    folder.join(format!("{}.pem", service.as_str()))
}

/// Make every service's key in `folder` unless it is there, add a new first key to those in
/// `rotate`, and write the trust bundle of them all.
pub fn ensure(folder: &Path, rotate: &[ServiceName]) -> anyhow::Result<()> {
    std::fs::create_dir_all(folder).with_context(|| format!("cannot create {}", folder.display()))?;
    std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", folder.display()))?;
    let mut bundle = BTreeMap::new();
    for service in ServiceName::ALL {
        let path = key_file(folder, service);
        let existing = match std::fs::read_to_string(&path) {
            Ok(text) => Some(text),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
        };
        let pem = match existing {
            None => generate_signing_key_pem(),
            Some(old) if rotate.contains(&service) => format!("{}{old}", generate_signing_key_pem()),
            Some(old) => old,
        };
        let keys =
            SigningKeys::parse(&pem).map_err(|reason| anyhow::anyhow!("{}: {reason}", path.display()))?;
        write_private(&path, &pem)?;
        bundle.insert(service.as_str(), keys.jwks());
    }
    let path = folder.join(BUNDLE);
    let json = serde_json::to_string_pretty(&bundle)?;
    // Written whole, then renamed: a service starting meanwhile reads the old or the new one.
    let partial = folder.join(format!("{BUNDLE}.partial"));
    std::fs::write(&partial, json + "\n").with_context(|| format!("cannot write {}", partial.display()))?;
    std::fs::rename(&partial, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Write a private key readable by its owner alone.
fn write_private(path: &Path, pem: &str) -> anyhow::Result<()> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == pem) {
        return Ok(());
    }
    let partial = path.with_extension("pem.partial");
    let _ = std::fs::remove_file(&partial);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .and_then(|mut file| file.write_all(pem.as_bytes()))
        .and_then(|()| std::fs::rename(&partial, path))
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_made_once_kept_and_rotated_with_the_old_one_still_trusted() {
        let folder = tempfile::tempdir().expect("a folder");
        ensure(folder.path(), &[]).expect("made");
        let signup = key_file(folder.path(), ServiceName::Signup);
        let first = std::fs::read_to_string(&signup).expect("a key");
        let bundle = std::fs::read_to_string(folder.path().join(BUNDLE)).expect("a bundle");
        ensure(folder.path(), &[]).expect("again");
        assert_eq!(std::fs::read_to_string(&signup).expect("a key"), first);
        assert_eq!(
            std::fs::read_to_string(folder.path().join(BUNDLE)).expect("a bundle"),
            bundle
        );
        let mode = std::fs::metadata(&signup).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        ensure(folder.path(), &[ServiceName::Signup]).expect("rotated");
        let rotated = SigningKeys::parse(&std::fs::read_to_string(&signup).expect("keys")).expect("keys");
        let old = SigningKeys::parse(&first).expect("a key");
        assert_ne!(rotated.signing_kid(), old.signing_kid());
        let trust = dozen_kit::identity::TrustBundle::parse(
            &std::fs::read_to_string(folder.path().join(BUNDLE)).expect("a bundle"),
        )
        .expect("a bundle");
        assert_eq!(trust.owner(old.signing_kid()), Some("signup"));
        assert_eq!(trust.owner(rotated.signing_kid()), Some("signup"));
    }
}
