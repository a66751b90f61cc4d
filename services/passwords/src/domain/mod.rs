//! The passwords service's domain: what a valid password and email are, how passwords are
//! hashed, how tokens are signed, and when logins are throttled. Nothing here touches HTTP or
//! the database.

pub mod email;
pub mod hashing;
pub mod keys;
pub mod password;
pub mod throttle;
