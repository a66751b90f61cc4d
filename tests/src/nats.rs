//! NATS JetStream housekeeping for tests that run the platform on NATS.

use futures_util::StreamExt;

/// The NATS server tests use (`TEST_NATS_URL` overrides the local default).
pub fn nats_url() -> String {
    std::env::var("TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// Delete every stream the bus made under `namespace` (its streams are `<namespace>_<topic>`).
pub async fn delete_streams_with_prefix(namespace: &str) {
    let client = async_nats::connect(nats_url()).await.expect("NATS");
    let jetstream = async_nats::jetstream::new(client);
    let prefix = format!("{namespace}_");
    let names: Vec<String> = jetstream
        .stream_names()
        .filter_map(|name| async move { name.ok() })
        .collect()
        .await;
    for name in names.into_iter().filter(|name| name.starts_with(&prefix)) {
        jetstream
            .delete_stream(&name)
            .await
            .expect("delete a test stream");
    }
}
