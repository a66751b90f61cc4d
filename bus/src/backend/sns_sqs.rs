//! Amazon SNS and SQS (or an emulator of both, such as moto), behind the `sns-sqs` feature.
//!
//! Layout: one standard SNS topic per event type, `<namespace>-<type>` with `.` and `_` as `-`
//! (`user.signed_up` → `dozen-user-signed-up`). Each subscriber has one standard SQS queue,
//! `<namespace>-<subscriber>`, subscribed to each of its topics with raw message delivery (the
//! body is the envelope), and a dead-letter queue `<namespace>-<subscriber>-dead-letters` that
//! SQS's redrive fills after a few receives more than `BUS_MAX_ATTEMPTS`: the consumer loop
//! moves an event to our dead-letter queue (in the subscriber's database) at
//! `BUS_MAX_ATTEMPTS`, so the redrive only catches a consumer that keeps dying on it. What the
//! redrive moves, the running service takes into its own dead letters
//! ([`Broker::open_redriven`]), where `dead-letters` lists it and `replay` delivers it.
//!
//! Provisioning (`BUS_PROVISION=true`, the default): topics, queues and subscriptions that are
//! missing are created on first use; a queue that exists is used as it is, only subscribed to
//! its topics, which SNS treats as a no-op when already done. A queue a running consumer finds
//! missing (the broker restarted empty, the stack made again) is made again, with its topics
//! and subscriptions; a failed publish makes its topic again. What the broker held is lost
//! then, and so is what is published before the queue is subscribed again. Look-up only
//! (`BUS_PROVISION=false`, for a stack that owns all of it: `deploy/ecs`): nothing is created
//! or subscribed. At start the service looks up the topics it publishes (their ARNs built from
//! the account STS names, checked with `GetTopicAttributes`) and its queue (`GetQueueUrl`),
//! and stops with one line naming the first that is missing; its task role then needs only
//! `sns:Publish` and `sns:GetTopicAttributes` on its own topics and the consumer's rights on
//! its own queue and the dead-letter queue behind it. Subscriptions cannot be checked without more rights: the stack makes them.
//!
//! Delivery: long polling; SQS's receive count is the attempt; an acknowledgement deletes the
//! message, a retry sets its visibility timeout to the delay (whole seconds), a hand-back sets
//! it to zero (SQS counts that receive all the same). The visibility timeout of a receive is
//! `BUS_ACK_WAIT`. A long poll cut short by shutdown may already have taken messages: they
//! come back after `BUS_ACK_WAIT`.
//!
//! Ordering: none. Standard queues deliver in any order and at least once, so per-subject
//! order is not kept here (as on NATS); handlers that care compare versions or the envelope's
//! `time`. Duplicates are absorbed by the inbox.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_sns::types::PublishBatchRequestEntry;
use aws_sdk_sqs::config::{Credentials, Region};
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{
    BatchResultErrorEntry, ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageSystemAttributeName, QueueAttributeName,
};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use super::{BoxFuture, Broker, Delivery, Queue, Receipt, Settlement, check_name};
use crate::envelope::Envelope;
use crate::error::BusError;
use crate::settings::{BusSettings, SnsSqsAddress};

/// The longest long poll SQS allows, in seconds.
const LONG_POLL_SECONDS: i32 = 20;
/// The most entries one SNS or SQS batch call takes.
const BATCH_LIMIT: usize = 10;
/// Receives beyond `BUS_MAX_ATTEMPTS` before SQS's redrive gives up on a message.
const REDRIVE_MARGIN: u32 = 3;
/// SQS keeps a message at most 14 days.
const MAX_RETENTION_SECONDS: u64 = 14 * 24 * 3600;
/// The longest visibility timeout SQS allows (12 hours).
const MAX_VISIBILITY_SECONDS: u64 = 12 * 3600;

/// The SNS/SQS broker. Its clones share what it learnt (ARNs, URLs).
#[derive(Debug, Clone)]
pub struct SnsSqsBus {
    sns: aws_sdk_sns::Client,
    sqs: aws_sdk_sqs::Client,
    sts: aws_sdk_sts::Client,
    /// `BUS_PROVISION`: create what is missing, or only look it up.
    provision: bool,
    region: String,
    /// `arn:<partition>:sns:<region>:<account>`, learnt from STS once (look-up mode).
    topic_arn_prefix: Arc<OnceCell<String>>,
    namespace: String,
    visibility_seconds: i32,
    max_receives: u32,
    retention_seconds: u64,
    /// Topic ARNs by event type, so that publishing does not ask each time.
    topics: Arc<Mutex<HashMap<String, String>>>,
    /// Queue URLs by subscriber.
    queues: Arc<Mutex<HashMap<String, String>>>,
}

/// An SDK error with its causes, which the SDK's own `Display` leaves out.
fn aws_error(what: &str, error: impl std::error::Error) -> BusError {
    BusError::Broker(format!("{what}: {}", DisplayErrorContext(error)))
}

/// An error naming the first entry SQS refused in a batch call, if any.
fn refused(what: &str, failed: &[BatchResultErrorEntry]) -> Result<(), BusError> {
    match failed.first() {
        Some(entry) => Err(BusError::Broker(format!(
            "{what}: {} ({})",
            entry.message.as_deref().unwrap_or("refused"),
            entry.code
        ))),
        None => Ok(()),
    }
}

/// What a look-up-only service says when something the stack should have made is missing.
fn missing(what: &str) -> BusError {
    BusError::Broker(format!(
        "{what} does not exist, and BUS_PROVISION=false lets this service make nothing: create it \
         (deploy/ecs/dozen.yaml does, under BUS_NAMESPACE) or set BUS_PROVISION=true"
    ))
}

fn seconds(duration: Duration, max: u64) -> i32 {
    let whole = duration.as_millis().div_ceil(1000);
    i32::try_from(u64::try_from(whole).unwrap_or(u64::MAX).min(max)).unwrap_or(i32::MAX)
}

impl SnsSqsBus {
    /// Connect to SNS and SQS as an `sns+sqs://` URL says.
    pub async fn connect(url: &str, settings: &BusSettings) -> Result<Self, BusError> {
        let address = SnsSqsAddress::parse(url).map_err(BusError::Broker)?;
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            // Longer than a long poll.
            .operation_attempt_timeout(Duration::from_secs(LONG_POLL_SECONDS as u64 + 10))
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(address.region.clone()))
            .timeout_config(timeouts);
        if let Some(endpoint) = address.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some((key, secret)) = address.credentials {
            loader = loader.credentials_provider(Credentials::new(key, secret, None, None, "BUS_URL"));
        }
        let config = loader.load().await;
        Ok(Self {
            sns: aws_sdk_sns::Client::new(&config),
            sqs: aws_sdk_sqs::Client::new(&config),
            sts: aws_sdk_sts::Client::new(&config),
            provision: settings.bus_provision,
            region: address.region,
            topic_arn_prefix: Arc::new(OnceCell::new()),
            namespace: settings.bus_namespace.clone(),
            visibility_seconds: seconds(settings.bus_ack_wait, MAX_VISIBILITY_SECONDS).max(1),
            max_receives: settings.bus_max_attempts + REDRIVE_MARGIN,
            retention_seconds: settings.bus_retention.as_secs().clamp(60, MAX_RETENTION_SECONDS),
            topics: Arc::new(Mutex::new(HashMap::new())),
            queues: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// The SNS topic that carries events of `event_type`.
    pub fn topic_name(&self, event_type: &str) -> String {
        format!("{}-{}", self.namespace, event_type.replace(['.', '_'], "-"))
    }

    /// `subscriber`'s SQS queue.
    pub fn queue_name(&self, subscriber: &str) -> String {
        format!("{}-{subscriber}", self.namespace)
    }

    fn cached(map: &Mutex<HashMap<String, String>>, key: &str) -> Option<String> {
        map.lock().ok().and_then(|map| map.get(key).cloned())
    }

    fn cache(map: &Mutex<HashMap<String, String>>, key: &str, value: &str) {
        if let Ok(mut map) = map.lock() {
            map.insert(key.to_owned(), value.to_owned());
        }
    }

    /// The ARN of `event_type`'s topic: created when missing (creating is idempotent), or in
    /// look-up mode found.
    async fn topic(&self, event_type: &str) -> Result<String, BusError> {
        if let Some(arn) = Self::cached(&self.topics, event_type) {
            return Ok(arn);
        }
        let name = self.topic_name(event_type);
        if !self.provision {
            let arn = self.find_topic(&name).await?;
            Self::cache(&self.topics, event_type, &arn);
            return Ok(arn);
        }
        let created = self
            .sns
            .create_topic()
            .name(&name)
            .send()
            .await
            .map_err(|e| aws_error(&format!("topic {name}"), e))?;
        let arn = created
            .topic_arn
            .ok_or_else(|| BusError::Broker(format!("topic {name}: no ARN in the answer")))?;
        Self::cache(&self.topics, event_type, &arn);
        Ok(arn)
    }

    /// `arn:<partition>:sns:<region>:<account>`. SNS finds a topic by ARN only, and the
    /// account is the caller's: STS's `GetCallerIdentity` names it and needs no permission.
    async fn topic_arn_prefix(&self) -> Result<&str, BusError> {
        self.topic_arn_prefix
            .get_or_try_init(|| async {
                let caller = self
                    .sts
                    .get_caller_identity()
                    .send()
                    .await
                    .map_err(|e| aws_error("who am I (STS GetCallerIdentity)", e))?;
                // arn:<partition>:sts::<account>:…
                let partition = caller.arn().and_then(|arn| arn.split(':').nth(1));
                match (partition, caller.account()) {
                    (Some(partition), Some(account)) => {
                        Ok(format!("arn:{partition}:sns:{}:{account}", self.region))
                    }
                    _ => Err(BusError::Broker(
                        "STS GetCallerIdentity answered without an ARN or account".to_owned(),
                    )),
                }
            })
            .await
            .map(String::as_str)
    }

    /// The ARN of the existing topic `name` (look-up mode), or an error naming it.
    async fn find_topic(&self, name: &str) -> Result<String, BusError> {
        let arn = format!("{}:{name}", self.topic_arn_prefix().await?);
        match self.sns.get_topic_attributes().topic_arn(&arn).send().await {
            Ok(_) => Ok(arn),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_not_found_exception()) =>
            {
                Err(missing(&format!("SNS topic {name}")))
            }
            Err(error) => Err(aws_error(&format!("topic {name}"), error)),
        }
    }

    /// The URL of the queue called `name`, if it exists.
    async fn find_queue(&self, name: &str) -> Result<Option<String>, BusError> {
        match self.sqs.get_queue_url().queue_name(name).send().await {
            Ok(found) => Ok(found.queue_url),
            Err(error)
                if error
                    .as_service_error()
                    .is_some_and(|e| e.is_queue_does_not_exist()) =>
            {
                Ok(None)
            }
            Err(error) => Err(aws_error(&format!("queue {name}"), error)),
        }
    }

    async fn queue_arn(&self, url: &str) -> Result<String, BusError> {
        let attributes = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| aws_error("queue attributes", e))?;
        attributes
            .attributes
            .and_then(|mut attributes| attributes.remove(&QueueAttributeName::QueueArn))
            .ok_or_else(|| BusError::Broker(format!("queue {url}: no ARN in the answer")))
    }

    /// Whether `queue_arn` is subscribed to `topic_arn` (SNS pages the list).
    async fn is_subscribed(&self, topic_arn: &str, queue_arn: &str) -> Result<bool, BusError> {
        let mut pages = self
            .sns
            .list_subscriptions_by_topic()
            .topic_arn(topic_arn)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws_error(&format!("subscriptions of {topic_arn}"), e))?;
            if page
                .subscriptions()
                .iter()
                .any(|s| s.protocol() == Some("sqs") && s.endpoint() == Some(queue_arn))
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn create_queue(
        &self,
        name: &str,
        attributes: HashMap<QueueAttributeName, String>,
    ) -> Result<String, BusError> {
        let created = self
            .sqs
            .create_queue()
            .queue_name(name)
            .set_attributes(Some(attributes))
            .send()
            .await
            .map_err(|e| aws_error(&format!("create queue {name}"), e))?;
        created
            .queue_url
            .ok_or_else(|| BusError::Broker(format!("queue {name}: no URL in the answer")))
    }

    /// Create `subscriber`'s queue and its dead-letter queue, the queue open to this
    /// namespace's topics; its URL.
    async fn create_queues(&self, subscriber: &str) -> Result<String, BusError> {
        let name = self.queue_name(subscriber);
        let dead_letters = self
            .create_queue(
                &format!("{name}-dead-letters"),
                HashMap::from([(
                    QueueAttributeName::MessageRetentionPeriod,
                    MAX_RETENTION_SECONDS.to_string(),
                )]),
            )
            .await?;
        let dead_letters_arn = self.queue_arn(&dead_letters).await?;
        // arn:<partition>:sqs:<region>:<account>:<name>, and the queue shares all but the name.
        let prefix = dead_letters_arn
            .rsplit_once(':')
            .map(|(prefix, _)| prefix)
            .ok_or_else(|| BusError::Broker(format!("unexpected queue ARN {dead_letters_arn}")))?;
        let queue_arn = format!("{prefix}:{name}");
        let topics_arn = format!("{}:{}-*", prefix.replacen(":sqs:", ":sns:", 1), self.namespace);
        let policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Principal": { "Service": "sns.amazonaws.com" },
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": { "ArnLike": { "aws:SourceArn": topics_arn } },
            }],
        });
        let redrive = serde_json::json!({
            "deadLetterTargetArn": dead_letters_arn,
            "maxReceiveCount": self.max_receives,
        });
        self.create_queue(
            &name,
            HashMap::from([
                (
                    QueueAttributeName::VisibilityTimeout,
                    self.visibility_seconds.to_string(),
                ),
                (
                    QueueAttributeName::MessageRetentionPeriod,
                    self.retention_seconds.to_string(),
                ),
                (QueueAttributeName::RedrivePolicy, redrive.to_string()),
                (QueueAttributeName::Policy, policy.to_string()),
            ]),
        )
        .await
    }

    /// `subscriber`'s queue URL, the queue found or created and subscribed to `topics`.
    async fn queue(&self, subscriber: &str, topics: &[String]) -> Result<String, BusError> {
        let name = self.queue_name(subscriber);
        // SQS names: at most 80 characters (with the dead-letter suffix).
        if name.len() + "-dead-letters".len() > 80 {
            return Err(BusError::Broker(format!(
                "queue name {name:?} is too long for SQS: shorten BUS_NAMESPACE or the subscriber name"
            )));
        }
        if !self.provision {
            // The stack made the queue and subscribed it: find it, check the subscriptions (a
            // queue subscribed to too little would wait for ever), and change nothing.
            let url = self
                .find_queue(&name)
                .await?
                .ok_or_else(|| missing(&format!("SQS queue {name}")))?;
            let queue_arn = self.queue_arn(&url).await?;
            for topic in topics {
                let topic_arn = self.topic(topic).await?;
                if !self.is_subscribed(&topic_arn, &queue_arn).await? {
                    return Err(missing(&format!(
                        "the subscription of SQS queue {name} to SNS topic {}",
                        self.topic_name(topic)
                    )));
                }
            }
            Self::cache(&self.queues, subscriber, &url);
            return Ok(url);
        }
        let url = match self.find_queue(&name).await? {
            Some(url) => url,
            None => self.create_queues(subscriber).await?,
        };
        let queue_arn = self.queue_arn(&url).await?;
        for topic in topics {
            let topic_arn = self.topic(topic).await?;
            self.sns
                .subscribe()
                .topic_arn(&topic_arn)
                .protocol("sqs")
                .endpoint(&queue_arn)
                .attributes("RawMessageDelivery", "true")
                .return_subscription_arn(true)
                .send()
                .await
                .map_err(|e| aws_error(&format!("subscribe {name} to {topic_arn}"), e))?;
        }
        Self::cache(&self.queues, subscriber, &url);
        Ok(url)
    }

    async fn publish_all(&self, events: &[Envelope]) -> Result<(), BusError> {
        // Runs of one topic go in batches; standard topics keep no order anyway.
        for run in events.chunk_by(|a, b| a.topic() == b.topic()) {
            let Some(first) = run.first() else { continue };
            let topic_arn = self.topic(first.topic()).await?;
            for chunk in run.chunks(BATCH_LIMIT) {
                let entries = chunk
                    .iter()
                    .enumerate()
                    .map(|(index, event)| {
                        PublishBatchRequestEntry::builder()
                            .id(index.to_string())
                            .message(serde_json::to_string(event)?)
                            .build()
                            .map_err(|e| aws_error("publish entry", e))
                    })
                    .collect::<Result<Vec<_>, BusError>>()?;
                let published = self
                    .sns
                    .publish_batch()
                    .topic_arn(&topic_arn)
                    .set_publish_batch_request_entries(Some(entries))
                    .send()
                    .await
                    .map_err(|e| {
                        // Perhaps the topic was removed: look it up again next time.
                        if let Ok(mut topics) = self.topics.lock() {
                            topics.clear();
                        }
                        aws_error(&format!("publish to {topic_arn}"), e)
                    })?;
                if let Some(failed) = published.failed.as_deref().and_then(|failed| failed.first()) {
                    return Err(BusError::Broker(format!(
                        "publish to {topic_arn}: {} ({})",
                        failed.message.as_deref().unwrap_or("refused"),
                        failed.code
                    )));
                }
            }
        }
        Ok(())
    }

    /// Readiness in look-up mode, with only the rights the service has (`ListQueues` cannot
    /// be limited to one's own queues): its queue, else one of its topics, else STS.
    async fn ping_what_was_looked_up(&self) -> Result<(), BusError> {
        let first = |map: &Mutex<HashMap<String, String>>| {
            map.lock().ok().and_then(|map| map.values().next().cloned())
        };
        if let Some(url) = first(&self.queues) {
            self.sqs
                .get_queue_attributes()
                .queue_url(url)
                .attribute_names(QueueAttributeName::QueueArn)
                .send()
                .await
                .map(drop)
                .map_err(|e| aws_error("SQS", e))
        } else if let Some(arn) = first(&self.topics) {
            self.sns
                .get_topic_attributes()
                .topic_arn(arn)
                .send()
                .await
                .map(drop)
                .map_err(|e| aws_error("SNS", e))
        } else {
            self.sts
                .get_caller_identity()
                .send()
                .await
                .map(drop)
                .map_err(|e| aws_error("STS", e))
        }
    }

    async fn depth(&self, subscriber: &str) -> Result<u64, BusError> {
        let url = match Self::cached(&self.queues, subscriber) {
            Some(url) => url,
            None => self
                .find_queue(&self.queue_name(subscriber))
                .await?
                .ok_or_else(|| BusError::Broker(format!("no queue for subscriber {subscriber}")))?,
        };
        let counts = [
            QueueAttributeName::ApproximateNumberOfMessages,
            QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            QueueAttributeName::ApproximateNumberOfMessagesDelayed,
        ];
        let answer = self
            .sqs
            .get_queue_attributes()
            .queue_url(&url)
            .set_attribute_names(Some(counts.to_vec()))
            .send()
            .await
            .map_err(|e| aws_error("queue depth", e))?;
        let attributes = answer.attributes.unwrap_or_default();
        Ok(counts
            .iter()
            .filter_map(|count| attributes.get(count)?.parse::<u64>().ok())
            .sum())
    }
}

impl Broker for SnsSqsBus {
    fn publish<'a>(&'a self, events: &'a [Envelope]) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(self.publish_all(events))
    }

    fn open<'a>(
        &'a self,
        subscriber: &'a str,
        topics: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Box<dyn Queue>>, BusError>> {
        Box::pin(async move {
            check_name("subscriber", subscriber)?;
            let url = self.queue(subscriber, topics).await?;
            let queue: Box<dyn Queue> = Box::new(SqsQueue {
                sqs: self.sqs.clone(),
                url,
                visibility_seconds: self.visibility_seconds,
                wait_seconds: LONG_POLL_SECONDS,
                owner: self.provision.then(|| Owner {
                    bus: self.clone(),
                    subscriber: subscriber.to_owned(),
                    topics: topics.to_vec(),
                    vanished: false,
                }),
            });
            Ok(vec![queue])
        })
    }

    fn open_redriven<'a>(
        &'a self,
        subscriber: &'a str,
    ) -> BoxFuture<'a, Result<Option<Box<dyn Queue>>, BusError>> {
        Box::pin(async move {
            let name = format!("{}-dead-letters", self.queue_name(subscriber));
            Ok(self.find_queue(&name).await?.map(|url| {
                Box::new(SqsQueue {
                    sqs: self.sqs.clone(),
                    url,
                    visibility_seconds: self.visibility_seconds,
                    wait_seconds: 0,
                    // Its subscriber's queue makes it again with its own.
                    owner: None,
                }) as Box<dyn Queue>
            }))
        })
    }

    fn pending<'a>(
        &'a self,
        subscriber: &'a str,
        _topics: &'a [String],
    ) -> BoxFuture<'a, Result<u64, BusError>> {
        // One queue carries all of a subscriber's topics.
        Box::pin(self.depth(subscriber))
    }

    fn prepare_publishing<'a>(&'a self, event_types: &'a [String]) -> BoxFuture<'a, Result<(), BusError>> {
        Box::pin(async move {
            // Provisioning makes a topic on first use; looking up must fail now, not at the
            // first publish.
            if !self.provision {
                for event_type in event_types {
                    self.topic(event_type).await?;
                }
            }
            Ok(())
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            if !self.provision {
                return self.ping_what_was_looked_up().await;
            }
            self.sqs
                .list_queues()
                .queue_name_prefix(&self.namespace)
                .max_results(1)
                .send()
                .await
                .map(drop)
                .map_err(|e| aws_error("SQS", e))
        })
    }

    fn backend(&self) -> &'static str {
        "sns-sqs"
    }
}

/// One consumer of a subscriber's SQS queue.
#[derive(Debug)]
struct SqsQueue {
    sqs: aws_sdk_sqs::Client,
    url: String,
    visibility_seconds: i32,
    /// How long a receive waits for a message: long polling, or none when draining.
    wait_seconds: i32,
    /// Who made the queue, to make it again if it vanishes (provisioning only).
    owner: Option<Owner>,
}

/// The subscriber a provisioned queue belongs to.
#[derive(Debug)]
struct Owner {
    bus: SnsSqsBus,
    subscriber: String,
    topics: Vec<String>,
    /// The queue was found missing and is not made again yet.
    vanished: bool,
}

impl SqsQueue {
    /// Make the queue again, with its dead-letter queue, its topics and its subscriptions,
    /// if it vanished (an emulator restarted empty, a stack torn down and made again): what
    /// was in it is gone, but what is published from now on is kept for the subscriber.
    async fn make_again_if_vanished(&mut self) -> Result<(), BusError> {
        let Some(owner) = self.owner.as_mut().filter(|owner| owner.vanished) else {
            return Ok(());
        };
        // The topics may have vanished with it: create them again rather than trust the ARNs
        // learnt before.
        if let Ok(mut topics) = owner.bus.topics.lock() {
            topics.clear();
        }
        self.url = owner.bus.queue(&owner.subscriber, &owner.topics).await?;
        owner.vanished = false;
        tracing::warn!(subscriber = %owner.subscriber, queue = %self.url, "the queue had vanished; made it again");
        Ok(())
    }

    async fn receive_some(
        &mut self,
        max: usize,
        stop: &CancellationToken,
    ) -> Result<Vec<Delivery>, BusError> {
        self.make_again_if_vanished().await?;
        let polling = self
            .sqs
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(i32::try_from(max.clamp(1, BATCH_LIMIT)).unwrap_or(1))
            .wait_time_seconds(self.wait_seconds)
            .visibility_timeout(self.visibility_seconds)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send();
        let received = tokio::select! {
            received = polling => received,
            () = stop.cancelled() => return Ok(Vec::new()),
        };
        let received = match received {
            Ok(received) => received,
            Err(error) => {
                if let Some(owner) = self.owner.as_mut() {
                    owner.vanished = error
                        .as_service_error()
                        .is_some_and(|e| e.is_queue_does_not_exist());
                }
                return Err(aws_error("receive", error));
            }
        };
        Ok(received
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|message| {
                let attempt = message
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|count| count.parse().ok())
                    .unwrap_or(1);
                Some(Delivery {
                    payload: message.body.unwrap_or_default(),
                    attempt,
                    receipt: Receipt::Sqs(message.receipt_handle?),
                })
            })
            .collect())
    }

    async fn delete(&self, handles: &[String]) -> Result<(), BusError> {
        for chunk in handles.chunks(BATCH_LIMIT) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(index, handle)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(index.to_string())
                        .receipt_handle(handle)
                        .build()
                        .map_err(|e| aws_error("delete entry", e))
                })
                .collect::<Result<Vec<_>, BusError>>()?;
            let deleted = self
                .sqs
                .delete_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| aws_error("acknowledge", e))?;
            refused("acknowledge", &deleted.failed)?;
        }
        Ok(())
    }

    async fn postpone(&self, handles: &[(String, i32)]) -> Result<(), BusError> {
        for chunk in handles.chunks(BATCH_LIMIT) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(index, (handle, delay))| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(index.to_string())
                        .receipt_handle(handle)
                        .visibility_timeout(*delay)
                        .build()
                        .map_err(|e| aws_error("retry entry", e))
                })
                .collect::<Result<Vec<_>, BusError>>()?;
            let changed = self
                .sqs
                .change_message_visibility_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| aws_error("retry later", e))?;
            refused("retry later", &changed.failed)?;
        }
        Ok(())
    }
}

impl Queue for SqsQueue {
    fn receive<'a>(
        &'a mut self,
        max: usize,
        stop: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Vec<Delivery>, BusError>> {
        Box::pin(self.receive_some(max, stop))
    }

    fn settle(&mut self, settled: Vec<(Delivery, Settlement)>) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            let mut acknowledged = Vec::new();
            let mut postponed = Vec::new();
            for (delivery, settlement) in settled {
                let Receipt::Sqs(handle) = delivery.receipt else {
                    continue;
                };
                match settlement {
                    Settlement::Ack => acknowledged.push(handle),
                    Settlement::Retry(delay) => {
                        postponed.push((handle, seconds(delay, MAX_VISIBILITY_SECONDS)));
                    }
                    Settlement::Release => postponed.push((handle, 0)),
                }
            }
            // Both are attempted; a failure of either means redeliveries, which the inbox
            // absorbs.
            let deleted = self.delete(&acknowledged).await;
            self.postpone(&postponed).await?;
            deleted
        })
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        // Every message received was handed out, and is settled by the consumer loop.
        Box::pin(async {})
    }

    fn label(&self) -> &str {
        "*"
    }
}
