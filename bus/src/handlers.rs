//! Typed event handlers: a subscriber is a set of named functions, one per event type, each
//! given its event already decoded.
//!
//! ```ignore
//! pub fn handlers(outbox: Outbox) -> EventHandlers<Outbox> {
//!     EventHandlers::new(outbox).on(on_email_verified).on(on_signed_up)
//! }
//! async fn on_email_verified(tx: &mut Tx, event: UserEmailVerified, outbox: &Outbox) -> anyhow::Result<()> { … }
//! async fn on_signed_up(tx: &mut Tx, event: UserSignedUp) -> anyhow::Result<()> { … }
//!
//! bus.handle("users", events::handlers(outbox.clone()));
//! ```
//! A function takes the transaction and the event, and optionally a reference to the state the
//! handlers share. The subscriber's topics are the event types registered.

use std::future::Future;
use std::sync::Arc;

use crate::backend::BoxFuture;
use crate::contracts::Event;
use crate::envelope::Envelope;
use crate::subscriber::{Handler, handler};
use crate::tx::Tx;

/// An event type's handler, with the envelope not yet decoded.
type Route<S> =
    Arc<dyn for<'a> Fn(&'a mut Tx, &'a Envelope, &'a S) -> BoxFuture<'a, anyhow::Result<()>> + Send + Sync>;

/// A subscriber's handlers, by event type, and the state they share.
pub struct EventHandlers<S> {
    state: Arc<S>,
    routes: Vec<(&'static str, Route<S>)>,
}

impl<S> std::fmt::Debug for EventHandlers<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let types: Vec<&str> = self.routes.iter().map(|(event_type, _)| *event_type).collect();
        f.debug_struct("EventHandlers").field("types", &types).finish()
    }
}

impl<S: Send + Sync + 'static> EventHandlers<S> {
    /// No handlers yet; `state` is what they are given.
    pub fn new(state: S) -> Self {
        Self {
            state: Arc::new(state),
            routes: Vec::new(),
        }
    }

    /// Handle events of type `E` with `function`: `async fn(&mut Tx, E) -> anyhow::Result<()>`
    /// or `async fn(&mut Tx, E, &S) -> anyhow::Result<()>`.
    ///
    /// # Panics
    /// When `E` has a handler already: one event type, one handler.
    pub fn on<E, Arguments, F>(mut self, function: F) -> Self
    where
        E: Event + 'static,
        F: for<'a> EventHandler<'a, E, S, Arguments>,
    {
        assert!(
            self.routes.iter().all(|(event_type, _)| *event_type != E::TYPE),
            "two handlers for {}",
            E::TYPE
        );
        let route: Route<S> = Arc::new(move |tx, envelope, state| match envelope.decode::<E>() {
            Ok(event) => Box::pin(function.call(tx, event, state)),
            Err(error) => Box::pin(std::future::ready(Err(error.into()))),
        });
        self.routes.push((E::TYPE, route));
        self
    }

    /// The event types handled: the subscriber's topics.
    pub fn topics(&self) -> Vec<&'static str> {
        self.routes.iter().map(|(event_type, _)| *event_type).collect()
    }

    /// One [`Handler`] that decodes each event and calls its type's function.
    pub fn into_handler(self) -> Handler {
        let Self { state, routes } = self;
        let routes = Arc::new(routes);
        handler(move |tx, envelope| {
            let state = state.clone();
            let route = routes
                .iter()
                .find(|(event_type, _)| *event_type == envelope.event_type)
                .map(|(_, route)| route.clone());
            Box::pin(async move {
                let Some(route) = route else {
                    // Subscribed to the registered types only: another is a contract change.
                    anyhow::bail!("no handler for {}", envelope.event_type);
                };
                route(tx, envelope, &state).await
            })
        })
    }
}

/// A function that handles one event type (see [`EventHandlers::on`]); `Arguments` tells the
/// two shapes apart.
pub trait EventHandler<'a, E, S: 'a, Arguments>: Send + Sync + 'static {
    /// The handling.
    type Future: Future<Output = anyhow::Result<()>> + Send + 'a;

    /// Handle `event` in `tx`.
    fn call(&self, tx: &'a mut Tx, event: E, state: &'a S) -> Self::Future;
}

/// The shape `(tx, event)`.
#[derive(Debug)]
pub struct TxAndEvent;

/// The shape `(tx, event, state)`.
#[derive(Debug)]
pub struct TxEventAndState;

impl<'a, E, S: 'a, F, Fut> EventHandler<'a, E, S, TxAndEvent> for F
where
    F: Fn(&'a mut Tx, E) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'a,
{
    type Future = Fut;

    fn call(&self, tx: &'a mut Tx, event: E, _: &'a S) -> Fut {
        self(tx, event)
    }
}

impl<'a, E, S: 'a, F, Fut> EventHandler<'a, E, S, TxEventAndState> for F
where
    F: Fn(&'a mut Tx, E, &'a S) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'a,
{
    type Future = Fut;

    fn call(&self, tx: &'a mut Tx, event: E, state: &'a S) -> Fut {
        self(tx, event, state)
    }
}
