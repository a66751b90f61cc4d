//! HTTP: the server every service runs (middleware, ops endpoints, graceful shutdown) and the
//! client every service-to-service call goes through, with its retries and circuit breakers,
//! and [`json::Json`], the one way a JSON body is read.

pub mod breaker;
pub mod client;
pub mod json;
pub mod middleware;
pub mod pool;
pub mod request_id;
pub mod server;
