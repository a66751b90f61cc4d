//! `BUS_PROVISION=false` on the SNS/SQS emulator: a service that may only look its topics and
//! queue up (a stack owns them, and its task role may create nothing) works end to end when
//! they exist, and stops at start with one line naming the first missing one when they do not.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;

use dozen_bus::contracts::{
    UserDeleted, UserEmailVerified, UserPasswordChanged, UserSignedUp, UserSignupConflict,
};
use dozen_bus::{Broker, Bus, BusSettings, BusUrl, Event};
use dozen_kit::lifecycle::Lifecycle;
use dozen_tests::database::Backend;
use dozen_tests::eventually;
use support::{DEADLINE, Kind, ServiceDb, TestBus, recording};

/// `bus`'s settings with provisioning off.
fn looking_up_only(bus: &TestBus) -> BusSettings {
    BusSettings {
        bus_provision: false,
        ..bus.settings.clone()
    }
}

async fn connect(settings: &BusSettings) -> Arc<dyn Broker> {
    dozen_bus::backend::connect(settings)
        .await
        .expect("connect to the emulator")
}

fn topics(types: &[&str]) -> Vec<String> {
    types.iter().map(|t| (*t).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_look_up_only_service_publishes_and_consumes_on_what_provisioning_made() {
    let bus = TestBus::new(Kind::SnsSqs).await;
    // The subscribers' first runs, provisioning: every topic, queue and subscription the
    // platform's stack would own (verification's queue on signup's two topics, users' on
    // verification's).
    let provisioning = bus.connect().await;
    provisioning
        .open(
            "verification",
            &topics(&[UserSignedUp::TYPE, UserSignupConflict::TYPE]),
        )
        .await
        .expect("provision verification's queue and topics");
    provisioning
        .open("users", &topics(&[UserEmailVerified::TYPE]))
        .await
        .expect("provision users' queue and topic");

    // Then signup publishes and verification consumes, both looking up only.
    let settings = looking_up_only(&bus);
    let lifecycle = Lifecycle::new();
    let signup_db = ServiceDb::create(Backend::Sqlite).await;
    let mut signup = Bus::with_broker(
        connect(&settings).await,
        &settings,
        "signup",
        signup_db.db.clone(),
    );
    signup
        .start(&lifecycle)
        .await
        .expect("signup finds the topics it publishes");
    let verification_db = ServiceDb::create(Backend::Sqlite).await;
    let mut verification = Bus::with_broker(
        connect(&settings).await,
        &settings,
        "verification",
        verification_db.db.clone(),
    );
    verification.subscribe(
        "verification",
        &[UserSignedUp::TYPE, UserSignupConflict::TYPE],
        recording("verification", "only"),
    );
    verification
        .start(&lifecycle)
        .await
        .expect("verification finds its queue and the topic it publishes");
    let ready = verification.readiness_check();
    ready().await.expect("the look-up-only readiness check answers");

    const EVENTS: i64 = 20;
    support::publish_signups(&signup_db.db, signup.outbox(), EVENTS as usize).await;
    let broker = connect(&settings).await;
    eventually(DEADLINE, "verification has handled every signup", || async {
        verification_db.effects("verification").await.1 == EVENTS
            && broker
                .pending("verification", &topics(&[UserSignedUp::TYPE]))
                .await
                .is_ok_and(|pending| pending == 0)
    })
    .await;
    lifecycle.stop();
    lifecycle.tasks_finished().await;
    assert_eq!(verification_db.effects("verification").await, (EVENTS, EVENTS));
}

/// The line a service logs when it stops on `error`: one line, naming the missing resource
/// and the setting.
fn assert_one_line_naming(error: &dozen_bus::BusError, missing: &str) {
    let line = error.to_string();
    assert!(!line.contains('\n'), "more than one line: {line}");
    assert!(line.contains(missing), "{missing} is not named: {line}");
    assert!(line.contains("BUS_PROVISION"), "the setting is not named: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nothing_provisioned_a_look_up_only_service_stops_naming_what_is_missing() {
    let bus = TestBus::new(Kind::SnsSqs).await;
    let settings = looking_up_only(&bus);
    let namespace = &settings.bus_namespace;
    let lifecycle = Lifecycle::new();

    // A publisher stops on its first missing topic.
    let signup_db = ServiceDb::create(Backend::Sqlite).await;
    let mut signup = Bus::with_broker(
        connect(&settings).await,
        &settings,
        "signup",
        signup_db.db.clone(),
    );
    let error = signup.start(&lifecycle).await.expect_err("no topic exists");
    assert_one_line_naming(&error, &format!("SNS topic {namespace}-user-signed-up"));

    // A consumer whose topics exist stops on its missing queue. (Provisioning passwords'
    // topics subscribes verification's queue to them, as the stack does.)
    bus.connect()
        .await
        .open(
            "verification",
            &topics(&[UserPasswordChanged::TYPE, UserDeleted::TYPE]),
        )
        .await
        .expect("provision the topics passwords publishes");
    let passwords_db = ServiceDb::create(Backend::Sqlite).await;
    let mut passwords = Bus::with_broker(
        connect(&settings).await,
        &settings,
        "passwords",
        passwords_db.db.clone(),
    );
    passwords.subscribe(
        "passwords",
        &[UserEmailVerified::TYPE],
        recording("passwords", "only"),
    );
    let error = passwords.start(&lifecycle).await.expect_err("no queue exists");
    assert_one_line_naming(&error, &format!("SQS queue {namespace}-passwords"));

    // Nothing was made meanwhile: the queue is still missing to a provisioning broker too.
    let provisioning = bus.connect().await;
    assert!(
        provisioning
            .pending("passwords", &topics(&[UserEmailVerified::TYPE]))
            .await
            .is_err(),
        "looking up created passwords' queue"
    );
    lifecycle.stop();
    lifecycle.tasks_finished().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_look_up_only_consumer_whose_queue_misses_a_subscription_stops_naming_it() {
    let bus = TestBus::new(Kind::SnsSqs).await;
    let settings = looking_up_only(&bus);
    let namespace = &settings.bus_namespace;
    // Passwords' queue exists, subscribed to another topic than the one it consumes, and that
    // topic exists too (users' queue is subscribed to it), as does the topic it publishes.
    let provisioning = bus.connect().await;
    provisioning
        .open("passwords", &topics(&[UserPasswordChanged::TYPE]))
        .await
        .expect("provision passwords' queue on another topic");
    provisioning
        .open("users", &topics(&[UserEmailVerified::TYPE, UserDeleted::TYPE]))
        .await
        .expect("provision the topics passwords consumes and publishes");

    let lifecycle = Lifecycle::new();
    let passwords_db = ServiceDb::create(Backend::Sqlite).await;
    let mut passwords = Bus::with_broker(
        connect(&settings).await,
        &settings,
        "passwords",
        passwords_db.db.clone(),
    );
    passwords.subscribe(
        "passwords",
        &[UserEmailVerified::TYPE],
        recording("passwords", "only"),
    );
    let error = passwords
        .start(&lifecycle)
        .await
        .expect_err("the queue is not subscribed to user.email_verified");
    assert_one_line_naming(
        &error,
        &format!(
            "subscription of SQS queue {namespace}-passwords to SNS topic {namespace}-user-email-verified"
        ),
    );
    lifecycle.stop();
    lifecycle.tasks_finished().await;
}

#[tokio::test]
async fn look_up_only_on_a_broker_without_it_is_refused_naming_the_setting() {
    let folder = tempfile::tempdir().expect("a temporary folder");
    let url = format!("sqlite://{}", folder.path().join("bus.db").display());
    let settings = BusSettings {
        bus_provision: false,
        ..BusSettings::new(BusUrl::parse(&url).expect("a bus URL"))
    };
    let error = dozen_bus::backend::connect(&settings)
        .await
        .expect_err("BUS_PROVISION=false on the embedded bus");
    let line = error.to_string();
    assert!(line.contains("BUS_PROVISION"), "{line}");
    assert!(!line.contains('\n'), "{line}");
}
