//! What every Reservoir service shares: settings, telemetry, error mapping,
//! money, ids, authentication, and the serving loop with health and reflection.

pub mod app;
pub mod auth;
pub mod channel;
pub mod cors;
pub mod db;
pub mod deadline;
pub mod error;
pub mod idempotency;
pub mod ids;
pub mod limits;
pub mod metrics;
pub mod money;
pub mod outbox;
pub mod paging;
pub mod serve;
pub mod settings;
pub mod spreadsheet;
pub mod status;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod validate;
