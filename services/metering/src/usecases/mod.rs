//! Flows that span the store and the wallet: drawing stored usage line by
//! line (`charge`), the asynchronous drawdown that does it behind ingest
//! (`drawdown`), settling authorizations (`settle`), and what every
//! replica's worker finishes (`worker`).

pub mod charge;
pub mod drawdown;
pub mod settle;
pub mod worker;
