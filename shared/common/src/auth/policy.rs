//! What each key may call: the calls only services make, the configuration
//! changes only an admin key makes, and the audit log of both.

use tonic::Status;

use super::{Caller, Identity, KeyRole, TenantId};

/// Calls only the suite's own services and operators make, with a service
/// key: a tenant's key is refused on them whatever its role (money arrives
/// through the payment flow, not by a tenant saying so; tenants and service
/// keys are an operator's to make).
const SERVICE_ONLY: &[&str] = &[
    "/reservoir.invoicing.v1.InvoicingService/MarkInvoicePaid",
    "/reservoir.payments.v1.PaymentsService/ConfirmPayment",
    "/reservoir.wallet.v1.AdminService/CreateTenant",
    "/reservoir.wallet.v1.AdminService/ListTenants",
    "/reservoir.wallet.v1.AdminService/IssueServiceKey",
];

/// Changes to a tenant's configuration: what it charges, where its events
/// go, what its vouchers are worth, its wallet settings, its keys (listing
/// them too: the keys of a tenant are an admin's to see).
const ADMIN_ONLY: &[&str] = &[
    "/reservoir.wallet.v1.AdminService/IssueApiKey",
    "/reservoir.wallet.v1.AdminService/ListApiKeys",
    "/reservoir.wallet.v1.AdminService/RevokeApiKey",
    "/reservoir.wallet.v1.AdminService/RotateApiKey",
    "/reservoir.wallet.v1.WalletService/UpdateTenantSettings",
    "/reservoir.wallet.v1.WalletService/ReviewTransfer",
    "/reservoir.wallet.v1.WalletService/SetBudget",
    "/reservoir.wallet.v1.WalletService/ClearBudget",
    "/reservoir.metering.v1.MeteringService/CreateMeter",
    "/reservoir.metering.v1.MeteringService/SetPrice",
    "/reservoir.invoicing.v1.InvoicingService/UpdateBillingSettings",
    "/reservoir.invoicing.v1.InvoicingService/UpdateReportSchedule",
    "/reservoir.invoicing.v1.InvoicingService/UpdateBillingAlerts",
    "/reservoir.orchestrator.v1.WebhookService/CreateWebhookEndpoint",
    "/reservoir.orchestrator.v1.WebhookService/UpdateWebhookEndpoint",
    "/reservoir.orchestrator.v1.WebhookService/RotateWebhookSecret",
    "/reservoir.payments.v1.PaymentsService/CreateVoucherBatch",
    "/reservoir.payments.v1.PaymentsService/UpdateFraudRules",
    "/reservoir.payments.v1.PaymentsService/ReviewPayment",
];

/// The configuration changes and service-only calls, as the audit log names
/// them: only these static paths, so no caller can choose what is logged.
pub(super) fn audited_method(path: &str) -> Option<&'static str> {
    ADMIN_ONLY.iter().chain(SERVICE_ONLY).find(|method| **method == path).copied()
}

/// One line of the audit log (target `reservoir::audit`) for a configuration
/// change or service-only call that got past the key check: which key made
/// it, for which tenant, and how it ended. Changes of money are recorded on
/// the ledger entries they write instead, each with its key id.
pub(super) fn audit<B, E>(
    identity: Identity,
    tenant: Option<TenantId>,
    method: &str,
    result: &Result<http::Response<B>, E>,
) {
    let code = crate::metrics::code_of(result);
    let (kind, role) = match identity.caller {
        Caller::Tenant(_, role) => ("tenant", role.as_str()),
        Caller::Service => ("service", ""),
    };
    tracing::info!(
        target: "reservoir::audit",
        key_id = identity.key.map(|key| key.to_string()).unwrap_or_default(),
        caller = kind,
        role,
        tenant = tenant.map(|tenant| tenant.to_string()).unwrap_or_default(),
        method,
        code = ?code,
        "audited call"
    );
}

/// Whether the method at `path` only reads: by the verb its name starts with.
fn only_reads(path: &str) -> bool {
    let method = path.rsplit('/').next().unwrap_or_default();
    ["Get", "List", "Watch", "Export", "Quote", "Verify"].iter().any(|verb| method.starts_with(verb))
}

/// Why `caller` may not call the method at `path`, if it may not:
/// PERMISSION_DENIED with reason SERVICE_KEY_REQUIRED or KEY_ROLE.
pub fn refusal(caller: Caller, path: &str) -> Option<Status> {
    let Caller::Tenant(_, role) = caller else {
        return None;
    };
    if SERVICE_ONLY.contains(&path) {
        return Some(crate::status::with_reason(
            tonic::Code::PermissionDenied,
            "SERVICE_KEY_REQUIRED",
            "this call is made by Reservoir's own services, with a service key",
        ));
    }
    let needed = if ADMIN_ONLY.contains(&path) {
        KeyRole::Admin
    } else if only_reads(path) {
        return None;
    } else {
        KeyRole::Write
    };
    let allowed = match needed {
        KeyRole::Admin => role == KeyRole::Admin,
        _ => role != KeyRole::ReadOnly,
    };
    (!allowed).then(|| {
        crate::status::with_reason(
            tonic::Code::PermissionDenied,
            "KEY_ROLE",
            format!("this key's role is {}; this call needs {}", role.as_str(), needed.as_str()),
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    use uuid::Uuid;

    #[test]
    fn each_role_reaches_what_it_may() {
        let tenant = TenantId(Uuid::nil());
        let reads = "/reservoir.wallet.v1.WalletService/GetBalance";
        let change = "/reservoir.wallet.v1.WalletService/Debit";
        let configuration = "/reservoir.metering.v1.MeteringService/SetPrice";
        let service_only = "/reservoir.payments.v1.PaymentsService/ConfirmPayment";
        let reason = |caller, path| refusal(caller, path).map(|status| crate::status::reason_of(&status));
        for role in [KeyRole::Admin, KeyRole::Write, KeyRole::ReadOnly] {
            let caller = Caller::Tenant(tenant, role);
            assert_eq!(reason(caller, reads), None, "{role:?} reads");
            assert_eq!(reason(caller, "/reservoir.wallet.v1.WalletService/VerifyLedger"), None, "{role:?} verifies");
            assert_eq!(reason(caller, service_only), Some(Some("SERVICE_KEY_REQUIRED".into())), "{role:?}");
        }
        assert_eq!(reason(Caller::Tenant(tenant, KeyRole::Admin), change), None);
        assert_eq!(reason(Caller::Tenant(tenant, KeyRole::Admin), configuration), None);
        assert_eq!(reason(Caller::Tenant(tenant, KeyRole::Write), change), None);
        assert_eq!(reason(Caller::Tenant(tenant, KeyRole::Write), configuration), Some(Some("KEY_ROLE".into())));
        assert_eq!(reason(Caller::Tenant(tenant, KeyRole::ReadOnly), change), Some(Some("KEY_ROLE".into())));
        assert_eq!(reason(Caller::Tenant(tenant, KeyRole::ReadOnly), configuration), Some(Some("KEY_ROLE".into())));
        for path in [reads, change, configuration, service_only] {
            assert!(refusal(Caller::Service, path).is_none(), "services reach {path}");
        }
        // Listing keys reads, yet only an admin may.
        let keys = "/reservoir.wallet.v1.AdminService/ListApiKeys";
        assert_eq!(reason(Caller::Tenant(tenant, KeyRole::Admin), keys), None);
        for role in [KeyRole::Write, KeyRole::ReadOnly] {
            assert_eq!(reason(Caller::Tenant(tenant, role), keys), Some(Some("KEY_ROLE".into())), "{role:?}");
        }
        for role in [KeyRole::Admin, KeyRole::Write, KeyRole::ReadOnly] {
            assert_eq!(KeyRole::parse(role.as_str()), Some(role));
        }
    }

    /// Every path the policy names is a method some service serves.
    #[test]
    fn the_policy_names_real_methods() {
        let served: std::collections::HashSet<String> =
            crate::metrics::method_paths(&[reservoir_proto::FILE_DESCRIPTOR_SET])
                .into_iter()
                .map(|(_, path)| path)
                .collect();
        for path in SERVICE_ONLY.iter().chain(ADMIN_ONLY) {
            assert!(served.contains(*path), "{path} is not a method");
        }
    }
}
