//! The connections kept open to one upstream, a stack of them per thread.
//!
//! A call takes the connection its thread used last, if that one is ready for another request,
//! and opens a new one otherwise (over TLS for `https://`); the connection goes back on the
//! stack as soon as the answer's head is in. A connection that has not been used for
//! [`KEPT_FOR`] is closed when the next call on its thread comes by, as is one the peer closed.
//!
//! Per thread, because a connection is driven by the runtime of the thread that opened it (a
//! service serving on several threads, [`crate::http::server::serve`], never hands a call to
//! another thread); per upstream, so finding a connection is a look at the top of a stack,
//! with no key to hash and no lock to take.

use std::cell::RefCell;
use std::error::Error;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use thread_local::ThreadLocal;
use tokio::time::Instant;
use tower::ServiceExt;

/// How long an unused connection is kept.
pub const KEPT_FOR: Duration = Duration::from_secs(30);

/// Why a request got no answer on a connection.
pub type ConnectionError = Box<dyn Error + Send + Sync>;

/// A connection to the upstream could not be made, so no byte of the request was sent: trying
/// it elsewhere cannot do anything twice.
#[derive(Debug, thiserror::Error)]
#[error("no connection could be made: {0}")]
pub struct NotSent(#[source] ConnectionError);

/// The kept connections to one upstream.
#[derive(Debug, Default)]
pub struct Connections {
    by_thread: ThreadLocal<RefCell<Vec<Kept>>>,
}

#[derive(Debug)]
struct Kept {
    sender: SendRequest<Full<Bytes>>,
    last_used: Instant,
}

impl Connections {
    /// Send `request` (its URI in origin form) to the upstream at `uri`, on a kept connection
    /// or a new one made by `connector`, and wait for the answer's head.
    pub async fn send(
        &self,
        connector: &HttpsConnector<HttpConnector>,
        uri: &Uri,
        mut request: Request<Full<Bytes>>,
    ) -> Result<Response<Incoming>, ConnectionError> {
        while let Some(mut sender) = self.take() {
            match sender.try_send_request(request).await {
                Ok(answer) => {
                    self.keep(sender);
                    return Ok(answer);
                }
                Err(mut failed) => match failed.take_message() {
                    // The connection closed while it was kept, before any of the request was
                    // written: the request goes on another one.
                    Some(unsent) => request = unsent,
                    None => return Err(failed.into_error().into()),
                },
            }
        }
        let stream = connector.clone().oneshot(uri.clone()).await.map_err(NotSent)?;
        let (mut sender, connection) = http1::handshake(stream)
            .await
            .map_err(|error| NotSent(error.into()))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %error, "a connection to an upstream ended");
            }
        });
        let answer = sender.send_request(request).await?;
        self.keep(sender);
        Ok(answer)
    }

    /// This thread's most recently used connection that is ready for a request, if any.
    fn take(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut kept = self.by_thread.get_or_default().borrow_mut();
        let now = Instant::now();
        // The least recently used connection is at the bottom: close it once it has been
        // unused for long, so the stack shrinks back after a burst.
        if kept
            .first()
            .is_some_and(|oldest| now.duration_since(oldest.last_used) >= KEPT_FOR)
        {
            kept.remove(0);
        }
        let mut busy = Vec::new();
        let mut ready = None;
        while let Some(connection) = kept.pop() {
            if connection.sender.is_ready() {
                ready = Some(connection.sender);
                break;
            }
            // Still reading an answer's body: kept for later. Closed: let go.
            if !connection.sender.is_closed() {
                busy.push(connection);
            }
        }
        kept.extend(busy.into_iter().rev());
        ready
    }

    fn keep(&self, sender: SendRequest<Full<Bytes>>) {
        self.by_thread.get_or_default().borrow_mut().push(Kept {
            sender,
            last_used: Instant::now(),
        });
    }
}
