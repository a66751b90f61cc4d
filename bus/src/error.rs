//! The bus's one error type, at the boundary with services.

/// What can go wrong on the bus.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The service's database, or the embedded bus file, failed.
    #[error("bus database: {0}")]
    Database(#[from] sqlx::Error),
    /// The broker could not be reached or refused an operation.
    #[error("broker: {0}")]
    Broker(String),
    /// An event could not be encoded or decoded.
    #[error("event encoding: {0}")]
    Encoding(#[from] serde_json::Error),
}

impl BusError {
    /// A broker error from anything displayable (the NATS client has many error types).
    pub(crate) fn broker(error: impl std::fmt::Display) -> Self {
        Self::Broker(error.to_string())
    }
}
