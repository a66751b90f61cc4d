//! NATS JetStream (server 2.9 or later).
//!
//! Layout: one stream per topic, `<namespace>_<topic with dots as underscores>`, holding the
//! subject `<namespace>.<topic>`, with interest retention (an event is kept until every
//! subscriber's consumer has acknowledged it, as an SNS topic feeding SQS queues would) and a
//! two-minute deduplication window keyed by `Nats-Msg-Id`, which is the event id. Each
//! subscriber has one durable pull consumer per topic it listens to, named after it, with
//! explicit acks, an ack wait of `BUS_ACK_WAIT` and a bounded `max_deliver` a little above
//! `BUS_MAX_ATTEMPTS`: the consumer loop moves an event to our dead-letter queue at
//! `BUS_MAX_ATTEMPTS`, and the server bound only catches a consumer that keeps dying on it.
//! (A stream per topic, rather than one stream filtered by subject, because a 2.9 consumer
//! takes one filter subject and a subscriber may listen to several topics.)
//!
//! Ordering: JetStream delivers a consumer's events in stream order, but a retried event (or
//! one whose consumer died) is redelivered after later ones, and competing instances handle
//! events concurrently, so per-subject order is not guaranteed here. Handlers that care
//! must compare versions or timestamps in the payload (the envelope's `time`).

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{Config as StreamConfig, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, AckKind};
use futures_util::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

use super::{BoxFuture, Broker, Delivery, Queue, Receipt, Settlement, check_name};
use crate::envelope::Envelope;
use crate::error::BusError;
use crate::settings::BusSettings;

/// How long JetStream remembers a `Nats-Msg-Id` to drop a duplicate publish.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Events a consumer asks for ahead of handling them. Small, because those not handled when
/// the consumer stops are handed back, and any still in flight wait out the ack wait.
const PREFETCH: usize = 32;

/// The NATS JetStream broker.
#[derive(Debug)]
pub struct NatsBus {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    namespace: String,
    ack_wait: Duration,
    max_deliver: i64,
    max_age: Duration,
    /// Streams known to exist, so publishing does not ask each time.
    streams: Mutex<HashSet<String>>,
}

/// How to log in to NATS, from the URL.
enum Login {
    /// `nats://user:password@host`.
    UserAndPassword(String, String),
    /// `nats://token@host`.
    Token(String),
}

/// The server's URL without its login, and the login: the NATS client reads no credentials
/// from a URL itself.
fn split_login(text: &str) -> Result<(url::Url, Option<Login>), BusError> {
    // The parser's own message may quote the URL: only say that it is not one.
    let mut url = url::Url::parse(text)
        .map_err(|_| BusError::Broker("BUS_URL is not a valid nats:// or tls:// URL".to_owned()))?;
    let decode = |part: &str| {
        percent_encoding::percent_decode_str(part)
            .decode_utf8()
            .map(|part| part.into_owned())
            .map_err(|_| {
                BusError::Broker("BUS_URL: the login is not valid UTF-8 once percent-decoded".to_owned())
            })
    };
    let login = match (url.username(), url.password()) {
        ("", None) => None,
        (user, Some(password)) => Some(Login::UserAndPassword(decode(user)?, decode(password)?)),
        (token, None) => Some(Login::Token(decode(token)?)),
    };
    if login.is_some() {
        let cleared = url.set_username("").is_ok() && url.set_password(None).is_ok();
        if !cleared {
            return Err(BusError::Broker("BUS_URL: a login needs a host".to_owned()));
        }
    }
    Ok((url, login))
}

/// The stream of `topic`: `<namespace>_<topic with dots as underscores>`.
fn stream_name(namespace: &str, topic: &str) -> String {
    format!("{namespace}_{}", topic.replace('.', "_"))
}

/// The subject `topic`'s events are published on.
fn subject(namespace: &str, topic: &str) -> String {
    format!("{namespace}.{topic}")
}

/// Where the server sends the replies meant for `user`'s connections.
fn inbox_prefix(namespace: &str, user: &str) -> String {
    format!("_INBOX.{namespace}.{user}")
}

/// The `authorization` block of a NATS server configuration that gives each service a login of
/// its own (user = the service, password from the server's environment variable
/// `<SERVICE>_NATS_PASSWORD`) allowed only what the event contracts give it: publishing the
/// events it publishes, making and reading its own consumers of the events it receives, and
/// reading its own replies. A service whose login leaks can neither forge another's events nor
/// read another's queue. `dozen nats-authorization` prints it; deploy/nats holds it for the
/// `dozen` namespace.
pub fn server_authorization(namespace: &str) -> String {
    let contracts = crate::contracts::all();
    let mut services: Vec<&str> = contracts
        .iter()
        .flat_map(|c| std::iter::once(c.publisher).chain(c.subscribers.iter().copied()))
        .collect();
    services.sort_unstable();
    services.dedup();
    let quoted = |subject: String| format!("\"{subject}\"");
    let mut text = format!(
        "# Generated by `dozen nats-authorization --namespace {namespace}` from the event\n\
         # contracts: each service logs in as itself and may publish only its own events and read\n\
         # only its own consumers and replies. Passwords come from the server's environment.\n\
         authorization {{\n  users = [\n"
    );
    for service in services {
        let mut publish = Vec::new();
        let mut streams = Vec::new();
        for contract in contracts.iter().filter(|c| c.publisher == service) {
            publish.push(quoted(subject(namespace, contract.event_type)));
            streams.push(stream_name(namespace, contract.event_type));
        }
        let mut consumers = Vec::new();
        for contract in contracts.iter().filter(|c| c.subscribers.contains(&service)) {
            let stream = stream_name(namespace, contract.event_type);
            consumers.push(stream.clone());
            streams.push(stream);
        }
        streams.sort_unstable();
        streams.dedup();
        for stream in &streams {
            publish.push(quoted(format!("$JS.API.STREAM.INFO.{stream}")));
            publish.push(quoted(format!("$JS.API.STREAM.CREATE.{stream}")));
        }
        for stream in &consumers {
            let consumer = format!("{stream}.{service}");
            publish.push(quoted(format!("$JS.API.CONSUMER.INFO.{consumer}")));
            publish.push(quoted(format!("$JS.API.CONSUMER.CREATE.{consumer}")));
            publish.push(quoted(format!("$JS.API.CONSUMER.CREATE.{consumer}.>")));
            publish.push(quoted(format!("$JS.API.CONSUMER.DURABLE.CREATE.{consumer}")));
            publish.push(quoted(format!("$JS.API.CONSUMER.MSG.NEXT.{consumer}")));
            publish.push(quoted(format!("$JS.ACK.{consumer}.>")));
        }
        let variable = format!("{}_NATS_PASSWORD", service.to_uppercase());
        text.push_str(&format!(
            "    {{\n      user: \"{service}\"\n      password: ${variable}\n      permissions: {{\n        \
             publish: {{ allow: [\n          {}\n        ] }}\n        \
             subscribe: {{ allow: [{}] }}\n      }}\n    }}\n",
            publish.join(",\n          "),
            quoted(format!("{}.>", inbox_prefix(namespace, service))),
        ));
    }
    text.push_str("  ]\n}\n");
    text
}

impl NatsBus {
    /// Connect to the server named by a `nats://` or `tls://` URL, with the credentials file
    /// and certificate authorities of `settings`. An error names the settings to check and
    /// never repeats the URL, which may hold a password.
    pub async fn connect(url: &str, settings: &BusSettings) -> Result<Self, BusError> {
        let mut options = async_nats::ConnectOptions::new()
            .name("dozen-bus")
            .connection_timeout(Duration::from_secs(5));
        if let Some(ca) = &settings.nats_ca_file {
            // Read here, so that a missing or unreadable file is named as such.
            std::fs::metadata(ca)
                .map_err(|e| BusError::Broker(format!("NATS_CA_FILE {}: {e}", ca.display())))?;
            options = options.add_root_certificates(ca.clone());
        }
        if let Some(creds) = &settings.nats_creds_file {
            options = options
                .credentials_file(creds)
                .await
                .map_err(|e| BusError::Broker(format!("NATS_CREDS_FILE {}: {e}", creds.display())))?;
        }
        let (url, login) = split_login(url)?;
        options = match login {
            Some(Login::UserAndPassword(user, password)) => options
                // Replies come to an inbox named after the login, which the server lets no
                // other login read (see [`server_authorization`]).
                .custom_inbox_prefix(inbox_prefix(&settings.bus_namespace, &user))
                .user_and_password(user, password),
            Some(Login::Token(token)) => options.token(token),
            None => options,
        };
        let client = options.connect(url.as_str()).await.map_err(|e| {
            BusError::Broker(format!(
                "cannot connect to NATS (check BUS_URL, NATS_CREDS_FILE and NATS_CA_FILE): {e}"
            ))
        })?;
        Ok(Self {
            jetstream: jetstream::new(client.clone()),
            client,
            namespace: settings.bus_namespace.clone(),
            ack_wait: settings.bus_ack_wait,
            max_deliver: i64::from(settings.bus_max_attempts) + 3,
            max_age: settings.bus_retention,
            streams: Mutex::new(HashSet::new()),
        })
    }

    /// The stream that carries `topic`.
    pub fn stream_name(&self, topic: &str) -> String {
        stream_name(&self.namespace, topic)
    }

    fn subject(&self, topic: &str) -> String {
        subject(&self.namespace, topic)
    }

    async fn stream(&self, topic: &str) -> Result<jetstream::stream::Stream, BusError> {
        let name = self.stream_name(topic);
        let stream = self
            .jetstream
            .get_or_create_stream(StreamConfig {
                name: name.clone(),
                subjects: vec![self.subject(topic)],
                retention: RetentionPolicy::Interest,
                storage: StorageType::File,
                duplicate_window: DUPLICATE_WINDOW,
                max_age: self.max_age,
                ..Default::default()
            })
            .await
            .map_err(|e| BusError::Broker(format!("stream {name}: {e}")))?;
        self.remember(name);
        Ok(stream)
    }

    fn remember(&self, stream: String) {
        if let Ok(mut streams) = self.streams.lock() {
            streams.insert(stream);
        }
    }

    fn known(&self, stream: &str) -> bool {
        self.streams.lock().is_ok_and(|streams| streams.contains(stream))
    }

    fn forget_all(&self) {
        if let Ok(mut streams) = self.streams.lock() {
            streams.clear();
        }
    }

    async fn publish_all(&self, events: &[Envelope]) -> Result<(), BusError> {
        for event in events {
            if !self.known(&self.stream_name(event.topic())) {
                self.stream(event.topic()).await?;
            }
        }
        // Send them all, then wait for every acknowledgement: one connection keeps their order
        // and the round trips overlap.
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            let payload = serde_json::to_vec(event)?;
            let publish = PublishMessage::build()
                .payload(payload.into())
                .message_id(event.id.to_string());
            let ack = self
                .jetstream
                .send_publish(self.subject(event.topic()), publish)
                .await
                .map_err(BusError::broker)?;
            acks.push(ack);
        }
        for ack in acks {
            if let Err(error) = ack.await {
                // Perhaps a stream was removed: look again next time.
                self.forget_all();
                return Err(BusError::broker(error));
            }
        }
        Ok(())
    }

    async fn consumer(&self, subscriber: &str, topic: &str) -> Result<PullConsumer, BusError> {
        let stream = self.stream(topic).await?;
        stream
            .get_or_create_consumer(
                subscriber,
                pull::Config {
                    durable_name: Some(subscriber.to_owned()),
                    description: Some(format!("dozen subscriber {subscriber} of {topic}")),
                    deliver_policy: DeliverPolicy::All,
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: self.ack_wait,
                    max_deliver: self.max_deliver,
                    max_ack_pending: 1024,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| BusError::Broker(format!("consumer {subscriber} on {topic}: {e}")))
    }
}

impl Broker for NatsBus {
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
            let mut queues: Vec<Box<dyn Queue>> = Vec::new();
            for topic in topics {
                let consumer = self.consumer(subscriber, topic).await?;
                queues.push(Box::new(NatsQueue {
                    consumer,
                    messages: None,
                    topic: topic.clone(),
                }));
            }
            Ok(queues)
        })
    }

    fn pending<'a>(
        &'a self,
        subscriber: &'a str,
        topics: &'a [String],
    ) -> BoxFuture<'a, Result<u64, BusError>> {
        Box::pin(async move {
            let mut pending = 0;
            for topic in topics {
                let stream = self.stream(topic).await?;
                let info = stream.consumer_info(subscriber).await.map_err(BusError::broker)?;
                pending += info.num_pending + u64::try_from(info.num_ack_pending).unwrap_or_default();
            }
            Ok(pending)
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            match self.client.connection_state() {
                async_nats::connection::State::Connected => Ok(()),
                state => Err(BusError::Broker(format!("not connected to NATS ({state:?})"))),
            }
        })
    }

    fn backend(&self) -> &'static str {
        "nats"
    }
}

/// One consumer's pull subscription to a subscriber's queue on one topic.
struct NatsQueue {
    consumer: PullConsumer,
    /// The open pull subscription, made on first use and remade after an error.
    messages: Option<pull::Stream>,
    topic: String,
}

impl std::fmt::Debug for NatsQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsQueue").field("topic", &self.topic).finish()
    }
}

fn delivery(message: jetstream::Message) -> Delivery {
    let attempt = message
        .info()
        .map(|info| u32::try_from(info.delivered).unwrap_or(1))
        .unwrap_or(1);
    Delivery {
        payload: String::from_utf8_lossy(&message.payload).into_owned(),
        attempt,
        receipt: Receipt::Nats(Box::new(message)),
    }
}

impl NatsQueue {
    async fn receive_some(
        &mut self,
        max: usize,
        stop: &CancellationToken,
    ) -> Result<Vec<Delivery>, BusError> {
        let messages = match &mut self.messages {
            Some(messages) => messages,
            None => self.messages.insert(
                self.consumer
                    .stream()
                    .max_messages_per_batch(PREFETCH)
                    .heartbeat(Duration::from_secs(5))
                    .expires(Duration::from_secs(30))
                    .messages()
                    .await
                    .map_err(BusError::broker)?,
            ),
        };
        let first = tokio::select! {
            next = messages.next() => next,
            () = stop.cancelled() => return Ok(Vec::new()),
        };
        let first = match first {
            Some(Ok(message)) => message,
            Some(Err(error)) => {
                // Missed heartbeats, a server restart: pull afresh next time.
                self.messages = None;
                return Err(BusError::broker(error));
            }
            None => {
                self.messages = None;
                return Ok(Vec::new());
            }
        };
        let mut deliveries = vec![delivery(first)];
        while deliveries.len() < max {
            match messages.next().now_or_never() {
                Some(Some(Ok(message))) => deliveries.push(delivery(message)),
                _ => break,
            }
        }
        Ok(deliveries)
    }
}

impl Queue for NatsQueue {
    fn receive<'a>(
        &'a mut self,
        max: usize,
        stop: &'a CancellationToken,
    ) -> BoxFuture<'a, Result<Vec<Delivery>, BusError>> {
        Box::pin(self.receive_some(max, stop))
    }

    fn settle(&mut self, settled: Vec<(Delivery, Settlement)>) -> BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            for (delivery, settlement) in settled {
                let Receipt::Nats(message) = delivery.receipt else {
                    continue;
                };
                let kind = match settlement {
                    Settlement::Ack => AckKind::Ack,
                    Settlement::Retry(delay) => AckKind::Nak(Some(delay)),
                    // JetStream counts the delivery anyway.
                    Settlement::Release => AckKind::Nak(None),
                };
                // Not confirmed by the server: a lost ack means a redelivery, which the inbox
                // absorbs.
                message.ack_with(kind).await.map_err(BusError::broker)?;
            }
            Ok(())
        })
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let Some(mut messages) = self.messages.take() else {
                return;
            };
            // Hand back what was prefetched but never handed out.
            while let Some(Some(Ok(message))) = messages.next().now_or_never() {
                if let Err(error) = message.ack_with(AckKind::Nak(None)).await {
                    tracing::debug!(%error, "handing back a prefetched event failed; it returns after the ack wait");
                }
            }
        })
    }

    fn label(&self) -> &str {
        &self.topic
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_is_taken_out_of_the_url() {
        let (url, login) =
            split_login("tls://dozen:p%40ss@nats.example:4222").unwrap_or_else(|_| panic!("a URL"));
        assert_eq!(url.as_str(), "tls://nats.example:4222");
        assert!(
            matches!(login, Some(Login::UserAndPassword(user, password)) if user == "dozen" && password == "p@ss")
        );
        let (url, login) = split_login("nats://s3cret-token@nats:4222").unwrap_or_else(|_| panic!("a URL"));
        assert_eq!(url.as_str(), "nats://nats:4222");
        assert!(matches!(login, Some(Login::Token(token)) if token == "s3cret-token"));
        let (url, login) = split_login("nats://127.0.0.1:4222").unwrap_or_else(|_| panic!("a URL"));
        assert_eq!(url.as_str(), "nats://127.0.0.1:4222");
        assert!(login.is_none());
    }
}
