//! The signup journey clicked through the web UI in headless Chromium, with every service a
//! real process under `dozen up` on the embedded defaults. Ann (a desktop window) and Bob (a
//! phone-sized one) sign up with a shared interest, Ann first with a password the API refuses;
//! each finds the verification mail in the dev mailbox and verifies (Ann by the mailbox's
//! button, Bob by the link in the mail's text); Ann tries her used link again and is refused;
//! each logs in (Ann first with a wrong password), sees the profile verified and renames
//! themselves; Ann finds Bob in her suggestions and asks him, Bob accepts, and each lists the
//! other as a friend; the status page shows all six services ready; a refused access token and
//! a reload are cured by the refresh cookie (still logged in), the settings page lists this
//! browser, a logout and a logout everywhere lead back to the login page and stay there across
//! a reload; with the platform stopped, the page says the server cannot be reached. Also: with
//! mail over SMTP the UI links to no dev mailbox and its page says there is none, the gateway
//! serves the UI's files with their types and ETags, and a forgotten password is reset by its
//! mailed link (a weak one refused first), then changed on the settings page, where the email
//! address is changed too, confirmed by the link in the mailbox and logged in with, and the
//! account is then deleted (a wrong password and a missing confirmation refused first).
//!
//! Every step checks that no JavaScript value leaked into the page's text and saves a
//! screenshot under `<target>/test-artifacts/browser/<test>/`; at the end, any script error or
//! Content-Security-Policy violation in a browser's console fails the test.
//!
//! Needs `chromedriver` and Chromium (scripts/backing-services installs both; `CHROMEDRIVER`
//! and `CHROMIUM` name other binaries).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dozen_tests::eventually;
use dozen_tests::platform::{Platform, SERVICES};
use dozen_tests::process::{Service, closed_port};
use fantoccini::elements::Element;
use fantoccini::error::CmdError;
use fantoccini::{Client, ClientBuilder, Locator};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

/// How long any one thing may take to appear on a page.
const PATIENCE: Duration = Duration::from_secs(60);

/// What Chromium needs to start here: headless, no sandbox (root in a container), and none of
/// the background traffic that stalls it on a closed network.
const CHROMIUM_FLAGS: [&str; 8] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// `<target>/test-artifacts/browser/<test>/`, emptied (the test binary runs from
/// `<target>/<profile>/deps/`).
fn artifacts_folder(test: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let target = exe.ancestors().nth(3).expect("the target folder");
    let folder = target.join("test-artifacts").join("browser").join(test);
    let _ = std::fs::remove_dir_all(&folder);
    std::fs::create_dir_all(&folder).expect("the artifacts folder");
    folder
}

/// A program from the environment variable `variable`, or the first of `candidates` found.
fn program(variable: &str, candidates: &[&str]) -> PathBuf {
    if let Some(path) = std::env::var_os(variable) {
        return PathBuf::from(path);
    }
    let path_dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect())
        .unwrap_or_default();
    for candidate in candidates {
        let candidate = Path::new(candidate);
        if candidate.is_absolute() && candidate.exists() {
            return candidate.to_path_buf();
        }
        if let Some(found) = path_dirs
            .iter()
            .map(|dir| dir.join(candidate))
            .find(|path| path.exists())
        {
            return found;
        }
    }
    panic!("none of {candidates:?} is installed (set {variable}); scripts/backing-services installs it")
}

/// A running chromedriver, in a process group of its own: dropping it ends chromedriver and
/// every Chromium it started, whatever state the test left them in.
struct ChromeDriver {
    child: tokio::process::Child,
    port: u16,
    chromium: PathBuf,
}

impl ChromeDriver {
    async fn start(log: &Path) -> Self {
        let driver = program("CHROMEDRIVER", &["chromedriver"]);
        // Debian's /usr/bin/chromium is a wrapper script; the browser itself is beside it.
        let chromium = program(
            "CHROMIUM",
            &["/usr/lib/chromium/chromium", "chromium", "chromium-browser"],
        );
        // Port 0: chromedriver picks a free one and says which on stdout.
        let mut child = tokio::process::Command::new(&driver)
            .arg("--port=0")
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|error| panic!("{} starts: {error}", driver.display()));
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let port = tokio::time::timeout(PATIENCE, async {
            while let Ok(Some(line)) = stdout.next_line().await {
                if let Some(port) = line
                    .strip_prefix("ChromeDriver was started successfully on port ")
                    .and_then(|rest| rest.trim_end_matches('.').parse::<u16>().ok())
                {
                    return port;
                }
            }
            panic!(
                "chromedriver ended without saying its port; see {}",
                log.display()
            )
        })
        .await
        .unwrap_or_else(|_| panic!("chromedriver did not say its port; see {}", log.display()));
        // Its later output is not read: drained so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
        let this = Self {
            child,
            port,
            chromium,
        };
        let status = format!("http://127.0.0.1:{port}/status");
        eventually(PATIENCE, "chromedriver is ready", || async {
            let answer = reqwest::get(&status).await;
            if let Ok(answer) = answer
                && let Ok(body) = answer.json::<serde_json::Value>().await
            {
                body["value"]["ready"] == true
            } else {
                false
            }
        })
        .await;
        this
    }

    /// A new browser with its own empty profile and a window of `width` × `height`.
    async fn open(&self, who: &'static str, width: u32, height: u32, base: &str, shots: &Shots) -> Page {
        let profile = tempfile::tempdir().expect("a profile folder");
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|flag| (*flag).to_owned()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        args.push(format!("--window-size={width},{height}"));
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": self.chromium, "args": args },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!("an object")
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .unwrap_or_else(|error| panic!("a Chromium session for {who}: {error}"));
        Page {
            client,
            driver: format!("http://127.0.0.1:{}", self.port),
            who,
            base: base.to_owned(),
            shots: shots.clone(),
            _profile: profile,
        }
    }
}

/// Start chromedriver with its log in `folder`; the screenshots' numbering for that folder.
async fn browsers_for(folder: &Path) -> (ChromeDriver, Shots) {
    println!("screenshots: {}", folder.display());
    let driver = ChromeDriver::start(&folder.join("chromedriver.log")).await;
    let shots = Shots {
        folder: folder.to_path_buf(),
        taken: Default::default(),
    };
    (driver, shots)
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id().and_then(|id| i32::try_from(id).ok()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Where screenshots go, numbered in the order they are taken.
#[derive(Clone)]
struct Shots {
    folder: PathBuf,
    taken: std::sync::Arc<AtomicUsize>,
}

/// One person's browser.
struct Page {
    client: Client,
    /// chromedriver's URL, for what fantoccini does not wrap (the console log).
    driver: String,
    who: &'static str,
    base: String,
    shots: Shots,
    _profile: tempfile::TempDir,
}

fn css(selector: &str) -> Locator<'_> {
    Locator::Css(selector)
}

impl Page {
    /// Check that the page shows no JavaScript value where text belongs, and save a
    /// screenshot named for this step.
    async fn shot(&self, step: &str) {
        let text = self.visible_text().await;
        let leaked = text.split_whitespace().find(|word| {
            ["[object", "undefined", "null", "NaN"]
                .iter()
                .any(|bad| word.starts_with(bad))
        });
        assert!(leaked.is_none(), "{}: {step} shows {leaked:?}:\n{text}", self.who);
        self.save_screenshot(step).await;
    }

    async fn save_screenshot(&self, step: &str) {
        let number = self.shots.taken.fetch_add(1, Ordering::SeqCst) + 1;
        let png = self.client.screenshot().await.expect("a screenshot");
        let file = self
            .shots
            .folder
            .join(format!("{number:02}-{}-{step}.png", self.who));
        std::fs::write(&file, png).expect("the screenshot is saved");
    }

    /// Go to `path` on the gateway.
    async fn open(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .expect("the page opens");
    }

    /// Everything the page shows, for failure messages.
    async fn visible_text(&self) -> String {
        match self.client.find(css("body")).await {
            Ok(body) => body.text().await.unwrap_or_default(),
            Err(error) => format!("(no page: {error})"),
        }
    }

    /// Why a wait failed, with what the page shows (and a screenshot of it).
    async fn failure(&self, what: &str) -> String {
        self.save_screenshot("failed").await;
        format!(
            "{}: timed out waiting for {what}; the page shows:\n{}",
            self.who,
            self.visible_text().await
        )
    }

    /// The element `locator` finds, once it is there.
    async fn find(&self, locator: Locator<'_>) -> Element {
        match self.client.wait().at_most(PATIENCE).for_element(locator).await {
            Ok(element) => element,
            Err(_) => panic!("{}", self.failure(&format!("{locator:?}")).await),
        }
    }

    /// Click what `locator` finds. A list that re-rendered between finding and clicking is
    /// looked up again.
    async fn click(&self, locator: Locator<'_>) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let element = self.find(locator).await;
            match element.click().await {
                Ok(()) => return,
                Err(CmdError::Standard(error)) if Instant::now() < deadline => {
                    eprintln!("{}: clicking {locator:?} again after: {error}", self.who);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("{}: clicking {locator:?}: {error}", self.who),
            }
        }
    }

    /// Type `text` into the empty input `selector`.
    async fn fill(&self, selector: &str, text: &str) {
        let input = self.find(css(selector)).await;
        input.clear().await.expect("the input clears");
        input.send_keys(text).await.expect("typing");
    }

    /// The text `locator` shows now (empty when absent or hidden).
    async fn text_now(&self, locator: Locator<'_>) -> String {
        match self.client.find(locator).await {
            Ok(element) => element.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Wait until `locator` shows a text containing `wanted`, clicking `refresh` (if any)
    /// between looks, as a person waiting for something would; the text.
    async fn wait_for_text(&self, locator: Locator<'_>, wanted: &str, refresh: Option<&str>) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = self.text_now(locator).await;
            if text.contains(wanted) {
                return text;
            }
            if Instant::now() > deadline {
                panic!(
                    "{}",
                    self.failure(&format!("{wanted:?} in {locator:?} (it shows {text:?})"))
                        .await
                );
            }
            if let Some(button) = refresh {
                self.click(css(button)).await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Wait until the page's heading reads `title`.
    async fn wait_for_heading(&self, title: &str) {
        let deadline = Instant::now() + PATIENCE;
        while self.text_now(css("main h1")).await != title {
            if Instant::now() > deadline {
                panic!("{}", self.failure(&format!("the page {title:?}")).await);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Click the main navigation's link `label`.
    async fn navigate(&self, label: &str, heading: &str) {
        self.click(Locator::XPath(&format!("//nav//a[normalize-space(.)='{label}']")))
            .await;
        self.wait_for_heading(heading).await;
    }

    /// Fill in and send the signup form.
    async fn sign_up(&self, email: &str, password: &str, name: &str, interests: &str) {
        self.fill("#signup-email", email).await;
        self.fill("#signup-password", password).await;
        self.fill("#signup-display_name", name).await;
        self.fill("#signup-interests", interests).await;
        self.click(css("#signup-form button[type=submit]")).await;
    }

    /// Open the mailbox and wait for the verification mail to `email`; the XPath of its card
    /// (the list may re-render as mail arrives, so the card is looked up each time).
    async fn verification_mail(&self, email: &str) -> String {
        self.navigate("Mailbox", "Dev mailbox").await;
        let card = format!(
            "//li[contains(@class,'mail')][.//*[contains(@class,'mail-to') and contains(., '{email}')]][.//a[contains(@class,'verify-link')]]"
        );
        self.find(Locator::XPath(&card)).await;
        card
    }

    /// Log in, sending the form again while the API answers "not verified yet" (the address
    /// was verified a moment ago and the news may still be on its way to passwords).
    async fn log_in(&self, email: &str, password: &str) {
        self.fill("#login-email", email).await;
        self.fill("#login-password", password).await;
        let deadline = Instant::now() + PATIENCE;
        loop {
            self.click(css("#login-form button[type=submit]")).await;
            let refused = loop {
                if self.text_now(css("main h1")).await == "Your profile" {
                    return;
                }
                let busy = match self.client.find(css("#login-form")).await {
                    Ok(form) => form.attr("aria-busy").await.ok().flatten(),
                    Err(_) => None,
                };
                let message = self.text_now(css("#login-message")).await;
                if busy.as_deref() == Some("false") && !message.is_empty() {
                    break message;
                }
                if Instant::now() > deadline {
                    panic!("{}", self.failure("the answer to a login").await);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            assert!(
                refused.contains("verification mail"),
                "{}: only 'not verified yet' may refuse a right password: {refused}",
                self.who
            );
            if Instant::now() > deadline {
                panic!("{}", self.failure("a login that works").await);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// On the profile page: wait until it says verified.
    async fn wait_until_verified(&self) {
        self.wait_for_text(css("#profile-verified"), "Verified", Some("#me-refresh"))
            .await;
    }

    /// Rename oneself on the profile page.
    async fn rename(&self, name: &str) {
        self.fill("#profile-display_name", name).await;
        self.click(css("#profile-form button[type=submit]")).await;
        self.wait_for_text(css("#profile-message"), "saved", None).await;
        assert_eq!(self.text_now(css("#profile-display-name")).await, name);
    }

    /// A person's card in the list `list` (an id), by the start of their name.
    fn card_of(list: &str, name: &str) -> String {
        format!(
            "//*[@id='{list}']/li[.//*[contains(@class,'person-name') and starts-with(normalize-space(.), '{name}')]]"
        )
    }

    /// Wait until the list `list` holds a card for `name`, refreshing meanwhile.
    async fn wait_for_card(&self, list: &str, name: &str, refresh: &str) -> Element {
        let card = Self::card_of(list, name);
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(found) = self.client.find(Locator::XPath(&card)).await {
                return found;
            }
            if Instant::now() > deadline {
                panic!("{}", self.failure(&format!("{name} in #{list}")).await);
            }
            self.click(css(refresh)).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// What the page wrote to the console as errors since the last look: script errors and
    /// Content-Security-Policy violations. The browser's own line for each failed request
    /// (an error status, a refused connection) is left out: the tests provoke some on purpose,
    /// and the page shows them.
    async fn console_errors(&self) -> Vec<String> {
        let session = self
            .client
            .session_id()
            .await
            .expect("the session id")
            .expect("a session");
        let answer: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/session/{session}/se/log", self.driver))
            .json(&json!({ "type": "browser" }))
            .send()
            .await
            .expect("the console log")
            .json()
            .await
            .expect("JSON");
        answer["value"]
            .as_array()
            .expect("log entries")
            .iter()
            .filter(|entry| entry["level"] == "SEVERE")
            .filter_map(|entry| entry["message"].as_str())
            .filter(|message| !message.contains("Failed to load resource:"))
            .map(str::to_owned)
            .collect()
    }

    async fn close(self) {
        let errors = self.console_errors().await;
        assert!(errors.is_empty(), "{}: console errors: {errors:#?}", self.who);
        self.client.close().await.expect("the browser closes");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_signup_journey_clicked_through_the_web_ui() {
    let folder = artifacts_folder("journey");
    // Figures every second, so the status page's charts have points by the time it is shown.
    let platform = Platform::start(&[("FIGURES_INTERVAL", "1s")]).await;
    let base = platform.url("gateway", "");
    let (driver, shots) = browsers_for(&folder).await;
    let ann = driver.open("ann", 1280, 900, &base, &shots).await;
    let bob = driver.open("bob", 412, 915, &base, &shots).await;

    // Sign up: a password the API refuses is named beside its field; then it works.
    ann.open("/").await;
    ann.wait_for_heading("Create your account").await;
    ann.sign_up("ann@example.com", "short", "Ann", "chess, go").await;
    let refused = ann
        .wait_for_text(css("#signup-password-error"), "at least 8", None)
        .await;
    assert!(refused.starts_with("Must be"), "{refused}");
    ann.shot("signup-short-password").await;
    ann.fill("#signup-password", "correct horse battery staple").await;
    ann.click(css("#signup-form button[type=submit]")).await;
    ann.wait_for_heading("Check your mail").await;
    ann.wait_for_text(css("#check-mail-text"), "ann@example.com", None)
        .await;
    ann.wait_for_text(css("#dev-mailbox-note"), "dev mailbox", None)
        .await;
    assert_eq!(
        ann.find(css("#resend-email"))
            .await
            .prop("value")
            .await
            .expect("value"),
        Some("ann@example.com".to_owned()),
        "a new link can be asked for the address just used"
    );
    ann.shot("check-your-mail").await;

    bob.open("/").await;
    bob.wait_for_heading("Create your account").await;
    bob.sign_up(
        "bob@example.com",
        "another long passphrase",
        "Bob",
        "Chess, sailing",
    )
    .await;
    bob.wait_for_heading("Check your mail").await;
    bob.shot("check-your-mail").await;

    // Ann verifies from the mailbox's button.
    let mail = ann.verification_mail("ann@example.com").await;
    ann.shot("mailbox").await;
    ann.click(Locator::XPath(&format!(
        "{mail}//a[contains(@class,'verify-link')]"
    )))
    .await;
    ann.wait_for_heading("Verify your email address").await;
    ann.shot("verify").await;
    ann.click(css("#verify-button")).await;
    ann.wait_for_text(css("#verify-message"), "Your email address is verified", None)
        .await;
    ann.shot("verified").await;

    // The same link again is refused, and a new one is offered.
    let mail = ann.verification_mail("ann@example.com").await;
    ann.click(Locator::XPath(&format!(
        "{mail}//a[contains(@class,'verify-link')]"
    )))
    .await;
    ann.wait_for_heading("Verify your email address").await;
    ann.click(css("#verify-button")).await;
    ann.wait_for_text(css("#verify-message"), "already used", None)
        .await;
    assert!(
        ann.find(css("#resend-form"))
            .await
            .is_displayed()
            .await
            .expect("displayed")
    );
    ann.shot("used-link-refused").await;

    // Bob follows the link written in his mail, as a mail program would open it.
    let mail = bob.verification_mail("bob@example.com").await;
    let body = bob
        .find(Locator::XPath(&format!(
            "{mail}//pre[contains(@class,'mail-body')]"
        )))
        .await
        .prop("textContent")
        .await
        .expect("textContent")
        .expect("a text");
    let link = body
        .split_whitespace()
        .find(|word| word.starts_with("http") && word.contains("/verify?token="))
        .unwrap_or_else(|| panic!("a verification link in {body}"));
    assert!(link.starts_with(&base), "the link points at this gateway: {link}");
    bob.client.goto(link).await.expect("the link opens");
    bob.wait_for_heading("Verify your email address").await;
    bob.click(css("#verify-button")).await;
    bob.wait_for_text(css("#verify-message"), "Your email address is verified", None)
        .await;
    bob.shot("verified").await;

    // Log in: a wrong password is refused with the API's words; the right one works.
    ann.navigate("Log in", "Log in").await;
    ann.fill("#login-email", "ann@example.com").await;
    ann.fill("#login-password", "wrong horse battery staple").await;
    ann.click(css("#login-form button[type=submit]")).await;
    ann.wait_for_text(css("#login-message"), "The email or the password is wrong", None)
        .await;
    ann.shot("wrong-password").await;
    ann.log_in("ann@example.com", "correct horse battery staple")
        .await;
    ann.wait_until_verified().await;
    assert_eq!(ann.text_now(css("#profile-email")).await, "ann@example.com");
    assert_eq!(ann.text_now(css("#profile-interests")).await, "chess, go");
    assert!(
        !ann.find(css("#me-missing"))
            .await
            .is_displayed()
            .await
            .expect("displayed"),
        "every service answered"
    );
    ann.shot("me-verified").await;
    ann.rename("Ann Lee").await;
    ann.shot("me-renamed").await;

    bob.click(css("#verify-next a")).await;
    bob.wait_for_heading("Log in").await;
    bob.log_in("bob@example.com", "another long passphrase").await;
    bob.wait_until_verified().await;
    bob.rename("Bob Stone").await;
    bob.shot("me-renamed").await;

    // Ann finds Bob through their shared interest and asks him.
    ann.navigate("Suggestions", "People you may know").await;
    let card = ann
        .wait_for_card("suggestions-list", "Bob", "#suggestions-refresh")
        .await;
    let about = card
        .find(css(".meta"))
        .await
        .expect("meta")
        .text()
        .await
        .expect("text");
    assert!(about.contains("Shared interests: chess"), "{about}");
    ann.shot("suggestions").await;
    card.find(css("button.add-friend"))
        .await
        .expect("add friend")
        .click()
        .await
        .expect("click add friend");
    ann.wait_for_text(css("#suggestions-list .outcome"), "Friend request sent", None)
        .await;
    ann.shot("request-sent").await;

    // Bob accepts; each lists the other.
    bob.navigate("Friends", "Friends").await;
    let request = bob
        .wait_for_card("requests-list", "Ann", "#friends-refresh")
        .await;
    bob.shot("request-received").await;
    request
        .find(css("button.accept"))
        .await
        .expect("accept")
        .click()
        .await
        .expect("click accept");
    bob.wait_for_text(css("#friends-message"), "now friends", None)
        .await;
    bob.wait_for_card("friends-list", "Ann", "#friends-refresh").await;
    assert!(
        bob.text_now(css("#requests-list")).await.is_empty(),
        "no request left"
    );
    bob.shot("friends").await;

    ann.navigate("Friends", "Friends").await;
    ann.wait_for_card("friends-list", "Bob", "#friends-refresh").await;
    ann.shot("friends").await;

    // The status page: every service ready.
    ann.navigate("Status", "Platform status").await;
    ann.wait_for_text(
        css("#ops-summary"),
        "All 6 services are ready",
        Some("#ops-refresh"),
    )
    .await;
    for service in SERVICES {
        let state = ann
            .text_now(css(&format!("tr[data-service='{service}'] td:nth-of-type(1)")))
            .await;
        assert_eq!(state, "ready", "{service}");
    }
    // Below, each service's figures as small charts: users has served Ann's pages, so its
    // request rate is drawn; services with a bus chart its backlog, the gateway has none.
    ann.find(css(
        "section[data-service='users'] figure[data-figure='requests_per_second'] svg polyline",
    ))
    .await;
    let rate = ann
        .text_now(css(
            "section[data-service='users'] figure[data-figure='requests_per_second'] .chart-latest",
        ))
        .await;
    assert!(rate.ends_with("/s"), "users' latest rate: {rate:?}");
    for service in SERVICES {
        let charts = ann
            .client
            .find_all(css(&format!("section[data-service='{service}'] figure svg")))
            .await
            .expect("charts");
        assert!(charts.len() >= 3, "{service}: rate, errors and p99 at least");
    }
    assert!(
        ann.client
            .find_all(css(
                "section[data-service='gateway'] figure[data-figure='bus_backlog']"
            ))
            .await
            .expect("charts")
            .is_empty(),
        "the gateway has no bus"
    );
    ann.find(css(
        "section[data-service='friends'] figure[data-figure='dead_letters'] svg",
    ))
    .await;
    ann.shot("status").await;
    ann.client
        .execute("document.getElementById('ops-charts').scrollIntoView()", vec![])
        .await
        .expect("script");
    ann.shot("status-charts").await;

    // An access token the API no longer accepts is renewed from the refresh cookie, and so is a
    // tab that has none (a reload of a new tab): the reader stays logged in.
    ann.client
        .execute(
            "sessionStorage.setItem('dozen.access_token', 'not-a-token')",
            vec![],
        )
        .await
        .expect("script");
    ann.navigate("Me", "Your profile").await;
    ann.client
        .execute("sessionStorage.clear()", vec![])
        .await
        .expect("script");
    ann.client.refresh().await.expect("reload");
    ann.wait_for_heading("Your profile").await;
    ann.shot("session-resumed").await;
    // The settings page lists this browser, and logging out everywhere ends every session.
    ann.navigate("Settings", "Settings").await;
    ann.wait_for_text(css("#sessions-list"), "(this browser)", None)
        .await;
    ann.shot("sessions").await;
    ann.click(css("#logout-everywhere")).await;
    ann.wait_for_heading("Log in").await;
    ann.wait_for_text(css("#flash"), "You are logged out everywhere", None)
        .await;
    ann.client.refresh().await.expect("reload");
    ann.wait_for_heading("Log in").await;
    // Logging out ends the session: the cookie is of no use any more, a reload stays logged out.
    bob.click(css("#logout")).await;
    bob.wait_for_heading("Log in").await;
    bob.wait_for_text(css("#flash"), "You are logged out", None).await;
    bob.client.refresh().await.expect("reload");
    bob.wait_for_heading("Log in").await;
    bob.shot("logged-out").await;

    bob.close().await;

    // With the platform gone, the page says the server cannot be reached.
    platform.stop().await;
    ann.navigate("Status", "Platform status").await;
    ann.wait_for_text(css("#ops-message"), "Cannot reach the server", None)
        .await;
    ann.shot("server-unreachable").await;
    ann.close().await;
    println!("screenshots: {}", folder.display());
}

/// When mail goes over SMTP there is no dev mailbox: the gateway answers 404 there, the UI
/// links to it nowhere, and its page (opened by its address) says so.
#[tokio::test(flavor = "multi_thread")]
async fn without_a_dev_mailbox_the_ui_hides_it_and_its_page_says_so() {
    let folder = artifacts_folder("smtp");
    // Nothing listens there: no mail is sent in this test, only the mailbox is asked for.
    let smtp = format!("smtp://127.0.0.1:{}", closed_port());
    let platform = Platform::start(&[("MAIL_URL", &smtp)]).await;
    let (driver, shots) = browsers_for(&folder).await;
    let page = driver
        .open("visitor", 1280, 900, &platform.url("gateway", ""), &shots)
        .await;
    page.open("/#/check-mail/ann%40example.com").await;
    page.wait_for_heading("Check your mail").await;
    page.find(css("#nav[data-dev-mailbox='false']")).await;
    let nav = page.text_now(css("nav")).await;
    assert!(nav.contains("Status") && !nav.contains("Mailbox"), "{nav}");
    let note = page.text_now(css("#dev-mailbox-note")).await;
    assert!(note.is_empty(), "no word of a dev mailbox: {note}");
    page.shot("check-mail-without-mailbox").await;

    page.open("/#/mailbox").await;
    page.wait_for_heading("Dev mailbox").await;
    page.wait_for_text(
        css("#mailbox-message"),
        "This platform has no dev mailbox: mail goes to real inboxes",
        None,
    )
    .await;
    page.shot("no-mailbox").await;
    page.close().await;
    platform.stop().await;
}

/// The page and its files leave with their types and a validator; a known file is a 304.
#[tokio::test(flavor = "multi_thread")]
async fn the_ui_files_are_served_with_their_types_and_etags() {
    let gateway = Service::start("dozen-gateway", &[]).await;
    let client = reqwest::Client::new();
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/verify?token=abc", "text/html; charset=utf-8"),
        ("/reset?token=abc", "text/html; charset=utf-8"),
        ("/ui/app.js", "text/javascript; charset=utf-8"),
        ("/ui/style.css", "text/css; charset=utf-8"),
        ("/ui/icon.svg", "image/svg+xml"),
    ] {
        let answer = client.get(gateway.url(path)).send().await.expect("GET");
        assert_eq!(answer.status(), 200, "{path}");
        assert_eq!(answer.headers()["content-type"], content_type, "{path}");
        assert_eq!(answer.headers()["cache-control"], "no-cache", "{path}");
        let etag = answer.headers()["etag"].clone();
        let again = client
            .get(gateway.url(path))
            .header("if-none-match", etag)
            .send()
            .await
            .expect("GET again");
        assert_eq!(again.status(), 304, "{path} unchanged");
    }
    let page = client.get(gateway.url("/")).send().await.expect("GET /");
    let html = page.text().await.expect("the page");
    assert!(html.contains("<script type=\"module\" src=\"/ui/app.js\">"));
    assert!(!html.contains("style=\""), "no inline styles");
    let missing = client
        .get(gateway.url("/ui/nothing.js"))
        .send()
        .await
        .expect("GET");
    assert_eq!(missing.status(), 404);
}

/// Forgot your password? → the mailed link (opened as `/reset?token=…`, as from a mail) → a
/// weak password refused, a strong one set → the login page says so → logged in with it →
/// the password changed again on the settings page (a wrong current one refused first), then
/// the email address changed there, confirmed from the mailbox and logged in with.
#[tokio::test(flavor = "multi_thread")]
async fn a_forgotten_password_is_reset_and_changed_through_the_web_ui() {
    let folder = artifacts_folder("password-reset");
    let platform = Platform::start(&[]).await;
    let api = dozen_tests::public_api::PublicApi::of(&platform);
    assert_eq!(
        api.sign_up("cleo-1", "cleo@example.com", "Cleo", &["chess"])
            .await
            .status(),
        202
    );
    api.verify_and_log_in("cleo@example.com").await;
    let (driver, shots) = browsers_for(&folder).await;
    let cleo = driver
        .open("cleo", 1280, 900, &platform.url("gateway", ""), &shots)
        .await;

    cleo.open("/#/login").await;
    cleo.wait_for_heading("Log in").await;
    cleo.click(css("#forgot-link")).await;
    cleo.wait_for_heading("Forgot your password?").await;
    cleo.fill("#forgot-email", "cleo@example.com").await;
    cleo.click(css("#forgot-form button[type=submit]")).await;
    cleo.wait_for_text(
        css("#forgot-message"),
        "If an account exists for cleo@example.com",
        None,
    )
    .await;
    cleo.shot("forgot").await;

    // The mailbox offers the link; the mail's own link, opened as from a mail client, works too.
    cleo.navigate("Mailbox", "Dev mailbox").await;
    cleo.find(Locator::XPath(
        "//li[contains(@class,'mail')][.//*[contains(@class,'mail-to') and contains(., 'cleo@example.com')]]//a[contains(@class,'reset-link')]",
    ))
    .await;
    cleo.shot("mailbox-reset").await;
    let link = eventually(PATIENCE, "the reset mail", || async {
        api.mails_to("cleo@example.com").await.iter().find_map(|mail| {
            let body = mail["body"].as_str()?;
            let start = body.find("http")?;
            let link: String = body[start..].chars().take_while(|c| !c.is_whitespace()).collect();
            link.contains("/reset?token=").then_some(link)
        })
    })
    .await;
    let path = &link[link.find("/reset").expect("a reset path")..];
    cleo.open(path).await;
    cleo.wait_for_heading("Choose a new password").await;
    cleo.fill("#reset-password", "password1").await;
    cleo.click(css("#reset-form button[type=submit]")).await;
    cleo.find(css("#reset-password-error:not([hidden])")).await;
    cleo.shot("reset-weak-password").await;
    cleo.fill("#reset-password", "violet tractor hums at midnight")
        .await;
    cleo.click(css("#reset-form button[type=submit]")).await;
    cleo.wait_for_heading("Log in").await;
    cleo.wait_for_text(css("#flash"), "Your password is changed", None)
        .await;
    cleo.shot("reset-done").await;
    cleo.log_in("cleo@example.com", "violet tractor hums at midnight")
        .await;

    // The change, on the settings page.
    cleo.navigate("Settings", "Settings").await;
    cleo.fill("#password-current_password", "not my password").await;
    cleo.fill("#password-new_password", "seven quiet otters juggle plums")
        .await;
    cleo.click(css("#password-form button[type=submit]")).await;
    cleo.wait_for_text(css("#password-current_password-error"), "wrong", None)
        .await;
    cleo.shot("change-wrong-password").await;
    cleo.fill("#password-current_password", "violet tractor hums at midnight")
        .await;
    cleo.fill("#password-new_password", "seven quiet otters juggle plums")
        .await;
    cleo.click(css("#password-form button[type=submit]")).await;
    cleo.wait_for_text(css("#password-message"), "Your password is changed", None)
        .await;
    cleo.wait_for_text(css("#sessions-list"), "(this browser)", None)
        .await;
    cleo.shot("changed").await;
    assert_eq!(
        api.client
            .post(api.url("/api/sessions"))
            .json(&json!({ "email": "cleo@example.com", "password": "seven quiet otters juggle plums" }))
            .send()
            .await
            .expect("POST /api/sessions")
            .status(),
        200
    );

    // A new email address, on the same page: a wrong password is refused first, and the
    // address changes only once the link mailed to it is opened.
    cleo.fill("#email-email", "cleo.new@example.com").await;
    cleo.fill("#email-password", "not my password").await;
    cleo.click(css("#email-form button[type=submit]")).await;
    cleo.wait_for_text(css("#email-password-error"), "wrong", None)
        .await;
    cleo.shot("email-wrong-password").await;
    cleo.wait_for_heading("Settings").await;
    cleo.fill("#email-email", "cleo.new@example.com").await;
    cleo.fill("#email-password", "seven quiet otters juggle plums")
        .await;
    cleo.click(css("#email-form button[type=submit]")).await;
    cleo.wait_for_text(
        css("#email-message"),
        "Check the inbox of cleo.new@example.com",
        None,
    )
    .await;
    cleo.shot("email-requested").await;
    cleo.navigate("Mailbox", "Dev mailbox").await;
    let card = "//li[contains(@class,'mail')][.//*[contains(@class,'mail-to') and contains(., 'cleo.new@example.com')]]//a[contains(@class,'confirm-email-link')]";
    cleo.find(Locator::XPath(card)).await;
    cleo.click(Locator::XPath(card)).await;
    cleo.wait_for_heading("Confirm your new email address").await;
    cleo.click(css("#confirm-email-button")).await;
    cleo.wait_for_text(
        css("#confirm-email-message"),
        "Your email address is changed",
        None,
    )
    .await;
    cleo.shot("email-changed").await;
    cleo.click(css("#logout")).await;
    cleo.wait_for_heading("Log in").await;
    cleo.log_in("cleo.new@example.com", "seven quiet otters juggle plums")
        .await;
    cleo.wait_for_text(css("main"), "cleo.new@example.com", Some("#me-refresh"))
        .await;
    cleo.shot("logged-in-with-new-email").await;
    cleo.navigate("Settings", "Settings").await;
    // The account deleted on the settings page: a wrong password refused (still logged in), the
    // confirmation required, then logged out with a message, and the login gone for good.
    const CLEO_PASSWORD: &str = "seven quiet otters juggle plums";
    cleo.fill("#delete-account-password", "not my password").await;
    cleo.click(css("#delete-account-confirm")).await;
    cleo.click(css("#delete-account-form button[type=submit]")).await;
    cleo.wait_for_text(css("#delete-account-password-error"), "wrong", None)
        .await;
    cleo.wait_for_heading("Settings").await;
    cleo.shot("delete-wrong-password").await;
    cleo.click(css("#delete-account-confirm")).await;
    cleo.fill("#delete-account-password", CLEO_PASSWORD).await;
    cleo.click(css("#delete-account-form button[type=submit]")).await;
    cleo.wait_for_text(css("#delete-account-message"), "Tick the box", None)
        .await;
    cleo.click(css("#delete-account-confirm")).await;
    cleo.click(css("#delete-account-form button[type=submit]")).await;
    cleo.wait_for_heading("Log in").await;
    cleo.wait_for_text(css("#flash"), "Your account is deleted", None)
        .await;
    cleo.shot("deleted").await;
    assert_eq!(
        api.client
            .post(api.url("/api/sessions"))
            .json(&json!({ "email": "cleo.new@example.com", "password": CLEO_PASSWORD }))
            .send()
            .await
            .expect("POST /api/sessions")
            .status(),
        401
    );
    cleo.close().await;
    platform.stop().await;
}
