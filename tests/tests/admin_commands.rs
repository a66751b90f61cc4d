//! Admin processes are ordinary subcommands of each service's command line: `--help` lists
//! every one with its arguments, `<command> --help` prints help without running anything, and
//! a mistyped or failed command stops with a clear message and leaves no files behind.

use std::path::Path;
use std::process::Output;

use dozen_tests::process::{SERVICES, binary};

/// Every service's admin tasks besides `serve` and `migrate`, with their arguments as `--help`
/// shows them.
const TASKS: [(&str, &[&str]); 6] = [
    ("gateway", &[]),
    ("signup", &["repair", "archive"]),
    ("users", &["dead-letters", "replay", "archive"]),
    ("passwords", &["dead-letters", "replay", "archive"]),
    ("verification", &["dead-letters", "replay", "archive", "report"]),
    ("friends", &["rebuild", "dead-letters", "replay", "archive"]),
];

/// Run `dozen-<service>` with `args`, its working folder and `DATABASE_URL` in `folder`.
fn run(service: &str, args: &[&str], folder: &Path) -> Output {
    std::process::Command::new(binary(&format!("dozen-{service}")))
        .args(args)
        .env_clear()
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", folder.join("db").join("service.db").display()),
        )
        // Verification reads where mail goes before it looks at its database; nothing is sent.
        .env("MAIL_URL", "smtp://127.0.0.1:25")
        .current_dir(folder)
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn files_in(folder: &Path) -> Vec<String> {
    std::fs::read_dir(folder)
        .expect("the folder")
        .map(|entry| {
            entry
                .expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// The names in the `Commands:` section of a `--help` page.
fn listed_commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn help_lists_every_admin_task_next_to_serve_and_migrate() {
    for (service, tasks) in TASKS {
        let folder = tempfile::tempdir().expect("a folder");
        let help = run(service, &["--help"], folder.path());
        assert!(help.status.success(), "{service}: {help:?}");
        let mut expected = vec!["serve", "migrate"];
        expected.extend(tasks);
        expected.push("help");
        assert_eq!(
            listed_commands(&text(&help.stdout)),
            expected,
            "dozen-{service} --help"
        );
    }
    assert_eq!(TASKS.len(), SERVICES.len(), "every service is listed here");
}

#[test]
fn a_task_with_an_argument_shows_it_in_its_help() {
    let folder = tempfile::tempdir().expect("a folder");
    let help = run("users", &["replay", "--help"], folder.path());
    assert!(help.status.success(), "{help:?}");
    let stdout = text(&help.stdout);
    assert!(
        stdout.contains("Usage: dozen-users replay [EVENT_ID]"),
        "{stdout}"
    );
}

#[test]
fn a_task_given_help_prints_it_and_changes_nothing() {
    for (service, tasks) in TASKS {
        for task in tasks.iter().chain(&["migrate", "serve"]) {
            let folder = tempfile::tempdir().expect("a folder");
            let help = run(service, &[task, "--help"], folder.path());
            assert!(help.status.success(), "{service} {task} --help: {help:?}");
            let stdout = text(&help.stdout);
            assert!(
                stdout.contains(&format!("Usage: dozen-{service} {task}")),
                "{service} {task} --help prints its help: {stdout}"
            );
            assert!(help.stderr.is_empty(), "{service} {task}: {}", text(&help.stderr));
            assert!(
                files_in(folder.path()).is_empty(),
                "{service} {task} --help created {:?}",
                files_in(folder.path())
            );
        }
    }
}

#[test]
fn a_mistyped_command_exits_2_with_one_line_and_leaves_no_files() {
    for (service, _) in SERVICES {
        let folder = tempfile::tempdir().expect("a folder");
        let run = run(service, &["bogus"], folder.path());
        assert_eq!(run.status.code(), Some(2), "{service}: {run:?}");
        let stderr = text(&run.stderr);
        assert_eq!(stderr.lines().count(), 1, "{service}: {stderr}");
        assert!(
            stderr.contains("'bogus'"),
            "{service} names the command: {stderr}"
        );
        assert!(run.stdout.is_empty(), "{service}: {}", text(&run.stdout));
        assert!(
            files_in(folder.path()).is_empty(),
            "{service}: {:?}",
            files_in(folder.path())
        );
    }
}

#[test]
fn a_bad_task_argument_exits_2_naming_it_and_leaves_no_files() {
    let folder = tempfile::tempdir().expect("a folder");
    let run = run("friends", &["replay", "not-an-id"], folder.path());
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    let stderr = text(&run.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("'not-an-id'"), "{stderr}");
    assert!(
        files_in(folder.path()).is_empty(),
        "{:?}",
        files_in(folder.path())
    );
}

#[test]
fn a_task_on_a_database_never_migrated_fails_and_leaves_no_files() {
    // The gateway has no database: it would serve.
    for (service, tasks) in &TASKS[1..] {
        for task in tasks.iter().chain(&["serve"]) {
            let folder = tempfile::tempdir().expect("a folder");
            let run = run(service, &[task], folder.path());
            assert_eq!(run.status.code(), Some(1), "{service} {task}: {run:?}");
            assert!(
                text(&run.stdout).contains("run the `migrate` admin process first"),
                "{service} {task} says what to do: {}",
                text(&run.stdout)
            );
            assert!(
                files_in(folder.path()).is_empty(),
                "{service} {task} created {:?}",
                files_in(folder.path())
            );
        }
    }
}

#[test]
fn dozen_run_passes_a_task_and_its_help_through() {
    let folder = tempfile::tempdir().expect("a folder");
    let help = std::process::Command::new(binary("dozen"))
        .args(["run", "friends", "rebuild", "--help"])
        .env_clear()
        .current_dir(folder.path())
        .output()
        .expect("dozen runs");
    assert!(help.status.success(), "{help:?}");
    assert!(
        text(&help.stdout).contains("Usage: dozen-friends rebuild"),
        "{}",
        text(&help.stdout)
    );
    assert!(
        files_in(folder.path()).is_empty(),
        "{:?}",
        files_in(folder.path())
    );
}
