//! Transactions live in the kit (`dozen_kit::db::Tx`), next to `Db`: services and the bus
//! write through the same type.

pub use dozen_kit::db::{Tx, TxConn};
