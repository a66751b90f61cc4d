//! The bus on a NATS server that requires TLS (a certificate of a private CA, made here) and a
//! user and password: the whole platform connects with `BUS_URL=tls://…` read from
//! `BUS_URL_FILE` and the CA from `NATS_CA_FILE`, and a signup's events are published and
//! consumed over it; a wrong password, a CA that did not sign the server's certificate or a
//! missing file stops a service with one line that names the settings and never shows the
//! password.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dozen_tests::platform::Platform;
use dozen_tests::process::{ReservedPort, closed_port, run_to_exit};
use dozen_tests::public_api::PublicApi;
use dozen_tests::{PATIENCE, eventually};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

const USER: &str = "dozen";
const PASSWORD: &str = "nats-s3cret-word";

/// A certificate authority of the test's own.
struct Authority {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Authority {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().expect("a CA key");
        let certificate = params.self_signed(&key).expect("the CA certificate");
        Self {
            pem: certificate.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for 127.0.0.1 signed by this authority: (certificate, key) in PEM.
    fn server_certificate(&self) -> (String, String) {
        let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("server parameters");
        let key = KeyPair::generate().expect("a server key");
        let certificate = params
            .signed_by(&key, &self.issuer)
            .expect("the server certificate");
        (certificate.pem(), key.serialize_pem())
    }
}

/// A nats-server of the test's own with JetStream, TLS required and one user.
struct TlsNats {
    child: Child,
    port: ReservedPort,
    folder: tempfile::TempDir,
}

impl TlsNats {
    async fn start(authority: &Authority) -> Self {
        let folder = tempfile::tempdir().expect("a folder");
        let (certificate, key) = authority.server_certificate();
        let at = |name: &str| folder.path().join(name);
        std::fs::write(at("server.pem"), certificate).expect("write the certificate");
        std::fs::write(at("server-key.pem"), key).expect("write the key");
        std::fs::write(at("ca.pem"), &authority.pem).expect("write the CA");
        let port = ReservedPort::new();
        let config = format!(
            "listen: \"127.0.0.1:{port}\"\n\
             jetstream {{ store_dir: {store:?} }}\n\
             tls {{ cert_file: {cert:?}, key_file: {key:?} }}\n\
             authorization {{ user: {USER:?}, password: {PASSWORD:?} }}\n",
            port = port.port,
            store = at("jetstream").display().to_string(),
            cert = at("server.pem").display().to_string(),
            key = at("server-key.pem").display().to_string(),
        );
        std::fs::write(at("nats.conf"), config).expect("write the configuration");
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(at("nats.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts (install it: scripts/backing-services)");
        let nats = Self { child, port, folder };
        let url = format!("tls://127.0.0.1:{}", nats.port.port);
        let ca = nats.ca_file();
        eventually(PATIENCE, "the TLS NATS server answers", || {
            let (url, ca) = (url.clone(), ca.clone());
            async move {
                async_nats::ConnectOptions::new()
                    .add_root_certificates(ca)
                    .user_and_password(USER.to_owned(), PASSWORD.to_owned())
                    .connect(url)
                    .await
                    .is_ok()
            }
        })
        .await;
        nats
    }

    /// `tls://dozen:<password>@127.0.0.1:<port>`.
    fn url(&self, password: &str) -> String {
        format!("tls://{USER}:{password}@127.0.0.1:{}", self.port.port)
    }

    /// The CA that signed the server's certificate, as a PEM file.
    fn ca_file(&self) -> PathBuf {
        self.folder.path().join("ca.pem")
    }

    /// A file holding `text`, for a `…_FILE` setting.
    fn file(&self, name: &str, text: &str) -> String {
        let path = self.folder.path().join(name);
        std::fs::write(&path, text).expect("write the file");
        path.display().to_string()
    }
}

impl Drop for TlsNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn v12_3_1_the_platform_publishes_and_consumes_over_tls_with_a_password_read_from_a_file() {
    let authority = Authority::new("dozen test CA");
    let nats = TlsNats::start(&authority).await;
    let bus_url_file = nats.file("bus-url", &nats.url(PASSWORD));
    let ca = nats.ca_file().display().to_string();
    let platform = Platform::start(&[
        ("BUS_URL_FILE", &bus_url_file),
        ("NATS_CA_FILE", &ca),
        // The dev mailbox on a real broker, allowed: this is a test platform.
        ("DEV_MAILBOX_ALLOW_PRODUCTION_BACKENDS", "true"),
    ])
    .await;
    let api = PublicApi::of(&platform);
    let signed_up = api.sign_up("tls-1", "tess@example.com", "Tess", &["tls"]).await;
    assert_eq!(signed_up.status(), 202, "{:?}", signed_up.text().await);
    // The mail follows user.signed_up through NATS; login opens on user.email_verified.
    let token = api.verify_and_log_in("tess@example.com").await;
    assert!(!token.is_empty());
    let said = platform.up.lines().join("\n");
    assert!(!said.contains(PASSWORD), "the password is shown:\n{said}");
    platform.stop().await;
}

/// Serve verification (it subscribes at start) with `env` on top of a working configuration;
/// it must stop with one line of its own naming `names` (at LOG_LEVEL=error), and nothing it
/// writes may show the password.
async fn assert_stops_with_one_line(nats: &TlsNats, env: &[(&str, &str)], names: &[&str]) {
    let folder = tempfile::tempdir().expect("a folder");
    let database = format!("sqlite://{}", folder.path().join("verification.db").display());
    let smtp = format!("smtp://127.0.0.1:{}", closed_port());
    let mut all = vec![
        ("DATABASE_URL", database.as_str()),
        ("MAIL_URL", smtp.as_str()),
        ("LOG_LEVEL", "error"),
        ("PORT", "0"),
    ];
    all.extend(dozen_tests::identity::identities().env("verification"));
    let migrated = run_to_exit("dozen-verification", &["migrate"], &all).await;
    assert!(migrated.status.success(), "{migrated:?}");
    all.extend_from_slice(env);
    let finished = tokio::time::timeout(
        Duration::from_secs(60),
        run_to_exit("dozen-verification", &[], &all),
    )
    .await
    .expect("it stops rather than hang");
    assert!(!finished.status.success(), "{env:?}: {finished:?}");
    let output = format!("{}{}", finished.stdout, finished.stderr);
    // The NATS client logs its own view of a failed connection too (target async_nats).
    let lines: Vec<&str> = output
        .lines()
        .filter(|line| !line.contains("\"target\":\"async_nats"))
        .collect();
    assert_eq!(lines.len(), 1, "{env:?}: one line:\n{output}");
    for name in names {
        assert!(lines[0].contains(name), "{env:?}: names {name}: {}", lines[0]);
    }
    assert!(!output.contains(PASSWORD), "the password is shown: {output}");
    assert!(!output.contains("wrong-pass"), "the password is shown: {output}");
    let _ = nats;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_an_untrusted_ca_or_a_missing_file_stops_a_service_with_one_line() {
    let authority = Authority::new("dozen test CA");
    let nats = TlsNats::start(&authority).await;
    let ca = nats.ca_file().display().to_string();
    let wrong_password = nats.file("wrong-url", &nats.url("wrong-pass"));
    assert_stops_with_one_line(
        &nats,
        &[("BUS_URL_FILE", &wrong_password), ("NATS_CA_FILE", &ca)],
        &["BUS_URL", "authorization"],
    )
    .await;

    let stranger = Authority::new("another CA");
    let untrusted = nats.file("untrusted-ca.pem", &stranger.pem);
    let right = nats.url(PASSWORD);
    assert_stops_with_one_line(
        &nats,
        &[("BUS_URL", &right), ("NATS_CA_FILE", &untrusted)],
        &["NATS_CA_FILE", "certificate"],
    )
    .await;

    // Without the CA the system's roots are used, which do not know the test's CA either.
    assert_stops_with_one_line(&nats, &[("BUS_URL", &right)], &["NATS_CA_FILE"]).await;

    let missing = Path::new(&ca).with_file_name("nowhere.pem");
    let missing = missing.display().to_string();
    assert_stops_with_one_line(
        &nats,
        &[("BUS_URL", &right), ("NATS_CA_FILE", &missing)],
        &["NATS_CA_FILE", "nowhere.pem"],
    )
    .await;
    assert_stops_with_one_line(
        &nats,
        &[
            ("BUS_URL", &right),
            ("NATS_CA_FILE", &ca),
            ("NATS_CREDS_FILE", &missing),
        ],
        &["NATS_CREDS_FILE", "nowhere.pem"],
    )
    .await;
}
