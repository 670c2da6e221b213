//! `reservoir ledger verify`: an account's hash chain checked by the wallet.

use clap::Subcommand;
use reservoir_proto::wallet as pb;
use serde_json::json;

use crate::accounts::ClientArgs;
use crate::client;

#[derive(Subcommand)]
pub enum LedgerCommand {
    /// Recompute the account's hash chain and name the first entry that does
    /// not match; exits with an error unless the ledger is intact.
    Verify {
        account_id: String,
        /// A hash kept from earlier (an entry's hash or a head), which the
        /// entry at --known-sequence must still have.
        #[arg(long, requires = "known_sequence")]
        known_hash: Option<String>,
        #[arg(long, requires = "known_hash")]
        known_sequence: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

pub async fn run(command: LedgerCommand) -> anyhow::Result<()> {
    let LedgerCommand::Verify { account_id, known_hash, known_sequence, client } = command;
    let mut wallet = client::wallet(&client.endpoint, &client.api_key).await?;
    let request = pb::VerifyLedgerRequest {
        account_id,
        known_hash: known_hash.unwrap_or_default(),
        known_sequence: known_sequence.unwrap_or_default(),
    };
    let found = wallet.verify_ledger(request).await?.into_inner();
    let broken = found.first_break.as_ref();
    if client.json {
        let first_break = broken.map(|broken| {
            json!({
                "reason": broken.reason, "sequence": broken.sequence, "entry_id": broken.entry_id,
                "expected_hash": broken.expected_hash, "stored_hash": broken.stored_hash,
            })
        });
        let report = json!({
            "intact": found.intact, "entries_checked": found.entries_checked,
            "last_sequence": found.last_sequence, "head_hash": found.head_hash, "first_break": first_break,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if found.intact {
        println!(
            "intact: {} entries, head {} (sequence {})",
            found.entries_checked, found.head_hash, found.last_sequence
        );
    } else if let Some(broken) = broken {
        println!("broken at sequence {}: {}", broken.sequence, broken.reason);
        if !broken.entry_id.is_empty() {
            println!("  entry     {}", broken.entry_id);
        }
        if !broken.expected_hash.is_empty() {
            println!("  expected  {}", broken.expected_hash);
            println!("  stored    {}", if broken.stored_hash.is_empty() { "(none)" } else { &broken.stored_hash });
        }
        println!("  {} entries before it matched", found.entries_checked);
    }
    if found.intact { Ok(()) } else { Err(anyhow::anyhow!("the ledger does not match its hash chain")) }
}
