//! Calling the wallet as a client would, and checking its books through the API.

use std::net::SocketAddr;
use std::str::FromStr;

use reservoir_common::status::{reason_of, violated_fields};
use reservoir_proto::wallet as pb;
use reservoir_proto::wallet::wallet_service_client::WalletServiceClient;
use rust_decimal::Decimal;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::BearerKey;

pub type Client = WalletServiceClient<InterceptedService<Channel, BearerKey>>;

pub async fn channel(address: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{address}"))
        .expect("a valid address")
        .connect()
        .await
        .expect("the server is up")
}

pub async fn client(address: SocketAddr, key: &str) -> Client {
    WalletServiceClient::with_interceptor(channel(address).await, BearerKey::new(key))
}

/// A fresh idempotency key.
pub fn key() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub fn d(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap_or_else(|error| panic!("{text:?} is not a decimal: {error}"))
}

pub async fn balance(client: &Client, account: &pb::Account) -> pb::Balance {
    client
        .clone()
        .get_balance(pb::GetBalanceRequest { account_id: account.id.clone() })
        .await
        .expect("GetBalance")
        .into_inner()
        .balance
        .expect("a balance")
}

pub async fn available(client: &Client, account: &pb::Account) -> Decimal {
    d(&balance(client, account).await.available)
}

/// Every entry of a wallet, page by page.
pub async fn ledger(client: &Client, account: &pb::Account) -> Vec<pb::LedgerEntry> {
    let mut entries = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .clone()
            .list_ledger_entries(pb::ListLedgerEntriesRequest {
                account_id: account.id.clone(),
                page_size: 1_000,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .expect("ListLedgerEntries")
            .into_inner();
        entries.extend(page.entries);
        if page.next_page_token.is_empty() {
            return entries;
        }
        page_token = page.next_page_token;
    }
}

pub fn moves_money(entry: &pb::LedgerEntry) -> bool {
    !matches!(
        pb::EntryKind::try_from(entry.kind),
        Ok(pb::EntryKind::Hold | pb::EntryKind::Release | pb::EntryKind::ParentDraw)
    )
}

/// The invariants, checked through the API as a client would: balance =
/// sum of money-moving entries; each grant's remaining = the sum of its
/// entries; sequences without gaps; the last balance_after is that sum; the
/// balance not below the floor.
pub async fn assert_books_balance(client: &Client, account: &pb::Account) {
    let entries = ledger(client, account).await;
    let balance = balance(client, account).await;
    let money: Decimal = entries.iter().filter(|entry| moves_money(entry)).map(|entry| d(&entry.amount)).sum();
    assert_eq!(
        d(&balance.available) + d(&balance.held) + d(&balance.pending),
        money,
        "available + held (+ pending) = sum of money-moving entries"
    );
    if let Some(last) = entries.iter().rev().find(|entry| moves_money(entry)) {
        assert_eq!(d(&last.balance_after), money);
    }
    let sequences: Vec<u64> = entries.iter().map(|entry| entry.sequence).collect();
    assert_eq!(sequences, (1..=entries.len() as u64).collect::<Vec<_>>(), "sequences from 1 without gaps");
    let grants = client
        .clone()
        .list_grants(pb::ListGrantsRequest { account_id: account.id.clone(), include_inactive: true })
        .await
        .expect("ListGrants")
        .into_inner()
        .grants;
    for grant in grants {
        let sum: Decimal = entries
            .iter()
            .filter(|entry| entry.grant_id == grant.id && moves_money(entry))
            .map(|entry| d(&entry.amount))
            .sum();
        assert_eq!(d(&grant.remaining_amount), sum, "grant {} remaining = sum of its entries", grant.id);
    }
    if pb::OverdraftPolicy::try_from(account.overdraft_policy) != Ok(pb::OverdraftPolicy::Unlimited) {
        let floor = -d(&balance.credit_limit);
        assert!(d(&balance.total) >= floor, "balance {} below the floor {floor}", balance.total);
    }
}

/// Asserts a status's code and ErrorInfo reason.
pub fn assert_refused(result: Result<impl std::fmt::Debug, Status>, code: Code, reason: &str) {
    let status = result.expect_err("the call should have been refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason_of(&status).as_deref(), Some(reason), "{status:?}");
}

/// Asserts INVALID_ARGUMENT naming `field` in its BadRequest.
pub fn assert_invalid(result: Result<impl std::fmt::Debug, Status>, field: &str) {
    let status = result.expect_err("the call should have been refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(violated_fields(&status).iter().any(|violated| violated == field), "{field} not in {status:?}");
}

/// A prepaid account in USD with `amount` of paid credits ("0" for none).
pub async fn open_funded_account(client: &Client, amount: &str) -> reservoir_proto::wallet::Account {
    use reservoir_proto::wallet as pb;
    let account = client
        .clone()
        .create_account(pb::CreateAccountRequest {
            external_id: key(),
            unit: Some(pb::Unit { code: "USD".into(), ..Default::default() }),
            overdraft_policy: pb::OverdraftPolicy::None.into(),
            idempotency_key: key(),
            ..Default::default()
        })
        .await
        .expect("CreateAccount")
        .into_inner()
        .account
        .expect("an account");
    if amount != "0" {
        client
            .clone()
            .grant_credits(pb::GrantCreditsRequest {
                account_id: account.id.clone(),
                amount: amount.into(),
                kind: pb::GrantKind::Paid.into(),
                idempotency_key: key(),
                ..Default::default()
            })
            .await
            .expect("GrantCredits");
    }
    account
}
