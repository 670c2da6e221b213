//! Flows that span the store and the wallet: drawing stored usage line by
//! line (`charge`) and the asynchronous drawdown that does it behind ingest
//! (`drawdown`).

pub mod charge;
pub mod drawdown;
