//! Flows that span the store and the wallet: which accounts exist and their
//! scales (`accounts`), ingesting usage (`ingest`), drawing stored usage
//! line by line (`charge`), the asynchronous drawdown that does it behind
//! ingest (`drawdown`), authorizing and settling usage (`authorizations`,
//! `settle`), LATEST meters charged once their month ends (`latest`), and
//! what every replica's worker finishes (`worker`).

pub mod accounts;
pub mod authorizations;
pub mod charge;
pub mod drawdown;
pub mod ingest;
pub mod latest;
pub mod settle;
pub mod worker;

use reservoir_common::auth::TenantId;

use crate::error::MeteringError;
use crate::store::{MeterRow, Store};

/// The meter a request names by `field`.
pub async fn meter(store: &Store, tenant: TenantId, field: &str, code: &str) -> Result<MeterRow, MeteringError> {
    if code.is_empty() {
        return Err(MeteringError::field(field, "is required"));
    }
    store.meter(tenant, code).await?.ok_or(MeteringError::NotFound("meter"))
}
