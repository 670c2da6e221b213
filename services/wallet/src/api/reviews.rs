//! Handlers of transfers held by the tenant's fraud rules: listing them,
//! and an operator's release (the transfer is made then, once, under the
//! key it was asked with) or rejection (nothing moves).

use reservoir_common::auth::{key_of, tenant_of};
use reservoir_common::paging::Page;
use reservoir_proto::wallet as pb;
use tonic::{Request, Response, Status};

use super::movements::transfer_context;
use super::validate::*;
use super::{WalletApi, convert};
use crate::domain::fraud::ReviewStatus;
use crate::domain::*;
use crate::error::WalletError;
use crate::store::IdempotencyCheck;

impl WalletApi {
    pub(super) async fn list_transfer_reviews_impl(
        &self,
        request: Request<pb::ListTransferReviewsRequest>,
    ) -> Result<Response<pb::ListTransferReviewsResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let request = request.into_inner();
        let mut violations = Violations::default();
        let status = match pb::ReviewStatus::try_from(request.status) {
            Ok(pb::ReviewStatus::Unspecified) => None,
            Ok(pb::ReviewStatus::Held) => Some(ReviewStatus::Held),
            Ok(pb::ReviewStatus::Released) => Some(ReviewStatus::Released),
            Ok(pb::ReviewStatus::Rejected) => Some(ReviewStatus::Rejected),
            Err(_) => {
                violations.add("status", "is not a review status");
                None
            }
        };
        let page = Page::<uuid::Uuid>::of(&mut violations, request.page_size, &request.page_token, &request.status);
        violations.finish()?;
        let rows = self.store.transfer_reviews(tenant, status, page.after, page.rows_to_read()).await?;
        let (rows, next_page_token) = page.finish(rows, |review| review.id);
        let mut reviews = Vec::with_capacity(rows.len());
        for review in &rows {
            let unit = self.unit_of(tenant, review.asked.from).await?;
            reviews.push(convert::review(review, &unit));
        }
        Ok(Response::new(pb::ListTransferReviewsResponse { reviews, next_page_token }))
    }

    pub(super) async fn review_transfer_impl(
        &self,
        request: Request<pb::ReviewTransferRequest>,
    ) -> Result<Response<pb::ReviewTransferResponse>, Status> {
        let tenant = tenant_of(&request)?;
        let key = key_of(&request);
        let request = request.into_inner();
        let mut violations = Violations::default();
        let id = violations.id("review_id", &request.review_id, |id| id);
        let release = match pb::ReviewDecision::try_from(request.decision) {
            Ok(pb::ReviewDecision::Release) => Some(true),
            Ok(pb::ReviewDecision::Reject) => Some(false),
            _ => {
                violations.add("decision", "must be RELEASE or REJECT");
                None
            }
        };
        violations.text("reason", &request.reason, DESCRIPTION_LENGTH_MAX);
        violations.finish()?;
        let (Some(id), Some(release)) = (id, release) else {
            return Err(WalletError::internal("validated fields missing").into());
        };
        let held = self.store.transfer_review(tenant, id).await?;
        if held.review.status != ReviewStatus::Held {
            return Err(WalletError::Domain(DomainError::ReviewDecided).into());
        }
        let unit = self.unit_of(tenant, held.review.asked.from).await?;
        let asked = &held.review.asked;
        if !release {
            let mut ctx = OperationContext::new(now(), asked.idempotency_key.clone()).with_key(key);
            ctx.description = request.reason.clone();
            ctx.correlation_id = asked.correlation_id.clone();
            let review = self.store.reject_transfer(tenant, &held.review, &ctx).await?;
            return Ok(Response::new(pb::ReviewTransferResponse {
                review: Some(convert::review(&review, &unit)),
                transfer: None,
            }));
        }
        // Made as it was asked: the asker's key, the request's digest, so a
        // retry of the original call answers the transfer made.
        let check = IdempotencyCheck {
            key: asked.idempotency_key.clone(),
            method: "Transfer",
            request_hash: held.request_hash.clone(),
            digest: crate::store::replay::digest(tenant, &asked.idempotency_key),
        };
        // The entries carry the releasing key: the call that moved the money.
        let ctx = transfer_context(asked, key);
        let release = Some((id, request.reason.as_str()));
        let transfer = self.transfer_asked(tenant, asked, &check, &ctx, release, &unit).await?;
        let review = self.store.transfer_review(tenant, id).await?.review;
        Ok(Response::new(pb::ReviewTransferResponse {
            review: Some(convert::review(&review, &unit)),
            transfer: Some(transfer),
        }))
    }
}
