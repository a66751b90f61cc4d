//! The passwords service's domain: what a valid password is (emails are the kit's `Email`),
//! how passwords are hashed, how tokens are signed, and when logins are throttled. Nothing here touches HTTP or
//! the database.

pub mod hashing;
pub mod keys;
pub mod password;
pub mod sessions;
pub mod throttle;
