//! NATS JetStream housekeeping for tests that run the platform on NATS.

use futures_util::StreamExt;

/// The NATS server tests use (`TEST_NATS_URL` overrides the local default).
pub fn nats_url() -> String {
    std::env::var("TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A unique `BUS_NAMESPACE` for one test: every stream the bus makes under it
/// (`<namespace>_<topic>`) is deleted when this goes out of scope, whether the test passed or
/// not.
#[derive(Debug)]
pub struct StreamNamespace {
    /// The namespace, for `BUS_NAMESPACE`.
    pub namespace: String,
}

impl StreamNamespace {
    /// A new namespace starting with `purpose`.
    pub fn new(purpose: &str) -> Self {
        Self {
            namespace: format!("{purpose}-{}", uuid::Uuid::new_v4().simple()),
        }
    }
}

impl Drop for StreamNamespace {
    fn drop(&mut self) {
        let prefix = format!("{}_", self.namespace);
        // Drop runs outside any async context we could borrow: a runtime on its own thread.
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let client = async_nats::connect(nats_url()).await.ok()?;
                let jetstream = async_nats::jetstream::new(client);
                let names: Vec<String> = jetstream
                    .stream_names()
                    .filter_map(|name| async move { name.ok() })
                    .collect()
                    .await;
                for name in names.into_iter().filter(|name| name.starts_with(&prefix)) {
                    jetstream.delete_stream(&name).await.ok()?;
                }
                Some(())
            })
        })
        .join();
        if !matches!(deleted, Ok(Some(()))) {
            eprintln!("warning: could not delete a test's NATS streams");
        }
    }
}
