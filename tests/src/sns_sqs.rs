//! An SNS/SQS (and S3) emulator for tests that run the bus or the platform on SNS and SQS, or
//! archive to S3: moto's server
//! (PyPI `moto[server]`), at `TEST_SNS_SQS_ENDPOINT` or `http://127.0.0.1:4566`, or one started
//! for the test when nothing answers there.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};

use crate::process::ReservedPort;

/// The region and credentials tests use (the emulator accepts any).
const REGION: &str = "us-east-1";
const KEY: &str = "test";

fn shared_endpoint() -> String {
    std::env::var("TEST_SNS_SQS_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4566".to_owned())
}

fn answers(endpoint: &str) -> bool {
    let address = endpoint.trim_start_matches("http://").trim_end_matches('/');
    address
        .parse()
        .is_ok_and(|address| std::net::TcpStream::connect_timeout(&address, Duration::from_secs(1)).is_ok())
}

/// A unique `BUS_NAMESPACE` on the emulator for one test. Every topic and queue the bus makes
/// under it is deleted when this goes out of scope, whether the test passed or not (or the
/// emulator the test started is stopped, taking everything with it).
#[derive(Debug)]
pub struct SnsSqsNamespace {
    /// The namespace, for `BUS_NAMESPACE`.
    pub namespace: String,
    /// `BUS_URL` for the emulator.
    pub bus_url: String,
    endpoint: String,
    /// An emulator of this test's own, started because none answered, on its reserved port.
    server: Option<(Child, ReservedPort)>,
}

impl SnsSqsNamespace {
    /// A new namespace starting with `purpose` (keep it short: SQS names hold 80 characters).
    pub async fn new(purpose: &str) -> Self {
        let mut endpoint = shared_endpoint();
        let mut server = None;
        if !answers(&endpoint) {
            // moto cannot say which port it got when given 0: it listens on a reserved one.
            let reserved = ReservedPort::new();
            let port = reserved.port;
            server = Some((
                Command::new("moto_server")
                    .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect(
                        "no SNS/SQS emulator answers and moto_server cannot be started (pip install 'moto[server]', or set TEST_SNS_SQS_ENDPOINT)",
                    ),
                reserved,
            ));
            endpoint = format!("http://127.0.0.1:{port}");
            crate::eventually(
                crate::PATIENCE,
                "the SNS/SQS emulator started for the test answers",
                || async { answers(&endpoint).then_some(()) },
            )
            .await;
        }
        let namespace = format!("{purpose}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        Self {
            bus_url: format!("sns+sqs://{KEY}:{KEY}@{REGION}?endpoint={endpoint}"),
            namespace,
            endpoint,
            server,
        }
    }

    /// Make every topic, queue and subscription the platform uses, as the ECS stack does, so
    /// that services can run on them with `BUS_PROVISION=false`.
    pub async fn provision(&self) {
        let url = dozen_bus::BusUrl::parse(&self.bus_url).expect("an sns+sqs URL");
        let settings = dozen_bus::BusSettings {
            bus_namespace: self.namespace.clone(),
            ..dozen_bus::BusSettings::new(url)
        };
        let broker = dozen_bus::backend::connect(&settings)
            .await
            .expect("connect to the emulator");
        let contracts = dozen_bus::contracts::all();
        // Each subscriber's queue, subscribed to its topics (opening makes those too).
        let mut topics_of: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
        for contract in &contracts {
            for subscriber in contract.subscribers {
                topics_of
                    .entry(subscriber)
                    .or_default()
                    .push(contract.event_type.to_owned());
            }
        }
        for (subscriber, topics) in &topics_of {
            broker
                .open(subscriber, topics)
                .await
                .unwrap_or_else(|e| panic!("provision {subscriber}'s queue: {e}"));
        }
        // The topics no one subscribes to yet.
        let sns = aws_sdk_sns::Client::new(&Self::sdk_config(self.endpoint.clone()).await);
        for contract in contracts.iter().filter(|c| c.subscribers.is_empty()) {
            let name = format!(
                "{}-{}",
                self.namespace,
                contract.event_type.replace(['.', '_'], "-")
            );
            sns.create_topic()
                .name(&name)
                .send()
                .await
                .unwrap_or_else(|e| panic!("create topic {name}: {e}"));
        }
    }

    /// An SQS client of the emulator, to do what AWS itself would (a redrive, say).
    pub async fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&Self::sdk_config(self.endpoint.clone()).await)
    }

    /// An SNS client of the emulator.
    pub async fn sns(&self) -> aws_sdk_sns::Client {
        aws_sdk_sns::Client::new(&Self::sdk_config(self.endpoint.clone()).await)
    }

    /// Delete the namespace's queues and topics (and so their subscriptions and messages), as
    /// an emulator restarted empty would have lost them.
    pub async fn lose_everything(&self) {
        Self::delete_everything(self.endpoint.clone(), format!("{}-", self.namespace))
            .await
            .expect("delete the namespace's queues and topics");
    }

    async fn sdk_config(endpoint: String) -> aws_config::SdkConfig {
        aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .endpoint_url(endpoint)
            .credentials_provider(Credentials::new(KEY, KEY, None, None, "test"))
            .load()
            .await
    }

    async fn delete_everything(endpoint: String, prefix: String) -> Result<(), String> {
        let config = Self::sdk_config(endpoint).await;
        let sqs = aws_sdk_sqs::Client::new(&config);
        let sns = aws_sdk_sns::Client::new(&config);
        let queues = sqs
            .list_queues()
            .queue_name_prefix(&prefix)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        for url in queues.queue_urls() {
            sqs.delete_queue()
                .queue_url(url)
                .send()
                .await
                .map_err(|e| e.to_string())?;
        }
        let mut next = None;
        loop {
            let page = sns
                .list_topics()
                .set_next_token(next)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            for topic in page.topics() {
                let Some(arn) = topic.topic_arn() else { continue };
                if arn
                    .rsplit(':')
                    .next()
                    .is_some_and(|name| name.starts_with(&prefix))
                {
                    sns.delete_topic()
                        .topic_arn(arn)
                        .send()
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
            next = page.next_token;
            if next.is_none() {
                return Ok(());
            }
        }
    }
}

impl Drop for SnsSqsNamespace {
    fn drop(&mut self) {
        if let Some((mut server, _port)) = self.server.take() {
            let _ = server.kill();
            let _ = server.wait();
            return;
        }
        let (endpoint, prefix) = (self.endpoint.clone(), format!("{}-", self.namespace));
        // Drop runs outside any async context we could borrow: a runtime on its own thread.
        let deleted = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(Self::delete_everything(endpoint, prefix))
        })
        .join();
        if !matches!(deleted, Ok(Ok(()))) {
            eprintln!("warning: could not delete a test's SNS topics and SQS queues: {deleted:?}");
        }
    }
}

/// A uniquely named S3 bucket on the emulator for one test, deleted with everything in it when
/// this goes out of scope. It needs the shared emulator (`TEST_SNS_SQS_ENDPOINT`).
#[derive(Debug)]
pub struct TestBucket {
    /// The bucket's name.
    pub name: String,
    endpoint: String,
    client: aws_sdk_s3::Client,
}

impl TestBucket {
    /// A new bucket whose name starts with `purpose` (lowercase letters and '-').
    pub async fn new(purpose: &str) -> Self {
        let endpoint = shared_endpoint();
        assert!(
            answers(&endpoint),
            "no S3 emulator answers at {endpoint} (scripts/backing-services starts moto's server)"
        );
        let config = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new(KEY, KEY, None, None, "test"))
            .endpoint_url(&endpoint)
            .force_path_style(true)
            .build();
        let client = aws_sdk_s3::Client::from_conf(config);
        let name = format!("{purpose}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        client
            .create_bucket()
            .bucket(&name)
            .send()
            .await
            .expect("create the test bucket");
        Self {
            name,
            endpoint,
            client,
        }
    }

    /// `ARCHIVE_URL` for objects under `prefix` in the bucket.
    pub fn archive_url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}?endpoint={}", self.name, self.endpoint)
    }

    /// The settings a process needs to reach the emulator with the SDK's usual settings.
    pub fn env(&self) -> [(&'static str, &'static str); 3] {
        [
            ("AWS_ACCESS_KEY_ID", KEY),
            ("AWS_SECRET_ACCESS_KEY", KEY),
            ("AWS_REGION", REGION),
        ]
    }

    /// Every object whose key starts with `prefix`: key and content, by key.
    pub async fn objects(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let listed = self
            .client
            .list_objects_v2()
            .bucket(&self.name)
            .prefix(prefix)
            .send()
            .await
            .expect("list the test bucket");
        let mut objects = Vec::new();
        for object in listed.contents() {
            let key = object.key().expect("a key").to_owned();
            let body = self
                .client
                .get_object()
                .bucket(&self.name)
                .key(&key)
                .send()
                .await
                .expect("get an object")
                .body
                .collect()
                .await
                .expect("read an object")
                .into_bytes()
                .to_vec();
            objects.push((key, body));
        }
        objects.sort();
        objects
    }

    async fn delete(client: aws_sdk_s3::Client, name: String) -> Result<(), String> {
        let listed = client
            .list_objects_v2()
            .bucket(&name)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        for object in listed.contents() {
            client
                .delete_object()
                .bucket(&name)
                .key(object.key().unwrap_or_default())
                .send()
                .await
                .map_err(|e| e.to_string())?;
        }
        client
            .delete_bucket()
            .bucket(&name)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

impl Drop for TestBucket {
    fn drop(&mut self) {
        let (client, name) = (self.client.clone(), self.name.clone());
        // Drop runs outside any async context we could borrow: a runtime on its own thread.
        let deleted = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(Self::delete(client, name))
        })
        .join();
        if !matches!(deleted, Ok(Ok(()))) {
            eprintln!("warning: could not delete a test's S3 bucket: {deleted:?}");
        }
    }
}
