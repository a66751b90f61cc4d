//! Shared by dozen's black-box tests: throwaway databases on either backend, and service
//! processes started from the built binaries.
//!
//! Every test makes its own database (a temporary SQLite file, or a Postgres database with a
//! unique name, dropped when the test ends), so tests run in parallel and leave nothing behind.

pub mod database;
pub mod process;
