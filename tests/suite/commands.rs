//! The wallet's operator commands, run as the real binary against a wallet
//! it serves: what a person types and reads.

use reservoir_testing::{Backend, TestDatabase};

use crate::process::{Environment, ServiceProcess};

#[tokio::test]
async fn an_account_is_opened_found_funded_and_refused_with_the_cli() {
    let Some(database) = TestDatabase::create(Backend::Sqlite).await else {
        return;
    };
    let environment = Environment::new(&database, None);
    let api_key = environment.create_tenant().await;
    let mut wallet = ServiceProcess::wallet(&environment);
    wallet.start(&environment).await;
    let endpoint = format!("http://{}", wallet.address());
    let run = |arguments: &[&str]| {
        let mut command = environment.command(arguments);
        command.env("RESERVOIR_API_KEY", &api_key).env("RESERVOIR_ENDPOINT", &endpoint);
        command
    };
    let json_of = |output: std::process::Output| -> serde_json::Value {
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let created = json_of(run(&["account", "create", "--external-id", "acme", "--json"]).output().await.unwrap());
    assert_eq!((created["overdraft_policy"].as_str(), created["status"].as_str()), (Some("NONE"), Some("ACTIVE")));
    let id = created["id"].as_str().unwrap().to_owned();
    json_of(run(&["account", "create", "--external-id", "globex", "--json"]).output().await.unwrap());

    let found = json_of(run(&["account", "list", "--external-id", "acme", "--json"]).output().await.unwrap());
    let found: Vec<&str> = found.as_array().unwrap().iter().filter_map(|account| account["id"].as_str()).collect();
    assert_eq!(found, vec![id.as_str()]);
    let all = json_of(run(&["account", "list", "--json"]).output().await.unwrap());
    assert_eq!(all.as_array().unwrap().len(), 2);
    let table = run(&["account", "list"]).output().await.unwrap();
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(table.contains("acme") && table.contains("globex") && table.contains("NONE"), "{table}");
    assert!(!table.contains("OVERDRAFT_POLICY_"), "readable names: {table}");

    let granted = run(&["grant", &id, "20.00", "--kind", "paid"]).output().await.unwrap();
    assert!(granted.status.success(), "{}", String::from_utf8_lossy(&granted.stderr));
    let debited = run(&["debit", &id, "7.50", "--meter", "api_calls"]).output().await.unwrap();
    assert!(debited.status.success(), "{}", String::from_utf8_lossy(&debited.stderr));
    let balance = json_of(run(&["balance", &id, "--json"]).output().await.unwrap());
    assert_eq!(balance["available"], "12.50", "{balance}");

    // Refused: the code and reason, and nothing changed.
    let refused = run(&["debit", &id, "100"]).output().await.unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(said.contains("FAILED_PRECONDITION INSUFFICIENT_FUNDS"), "{said}");
    assert_eq!(json_of(run(&["balance", &id, "--json"]).output().await.unwrap())["available"], "12.50");
    // The ledger as shown, each entry with its hash, and its chain checked.
    let shown = json_of(run(&["ledger", &id, "--json"]).output().await.unwrap());
    let shown = shown.as_array().unwrap();
    assert_eq!(shown.len(), 2);
    let head = shown[1]["hash"].as_str().unwrap().to_owned();
    let verified = json_of(run(&["ledger", "verify", &id, "--json"]).output().await.unwrap());
    assert_eq!((verified["intact"].as_bool(), verified["entries_checked"].as_u64()), (Some(true), Some(2)));
    assert_eq!(verified["head_hash"], head.as_str());
    let told = run(&["ledger", "verify", &id]).output().await.unwrap();
    let said = String::from_utf8_lossy(&told.stdout).into_owned();
    assert!(told.status.success() && said.contains("intact: 2 entries") && said.contains(&head), "{said}");
    let kept = run(&["ledger", "verify", &id, "--known-hash", &head, "--known-sequence", "2"]).output().await.unwrap();
    assert!(kept.status.success(), "{}", String::from_utf8_lossy(&kept.stdout));
    let other = "0".repeat(32);
    let wrong =
        run(&["ledger", "verify", &id, "--known-hash", &other, "--known-sequence", "1"]).output().await.unwrap();
    assert!(!wrong.status.success(), "a kept hash that no longer matches fails the command");
    let said = String::from_utf8_lossy(&wrong.stdout).into_owned();
    assert!(said.contains("broken at sequence 1: KNOWN_HASH_MISMATCH"), "{said}");
    // A shared budget: globex draws on acme's credits, 3 a day.
    let globex = all.as_array().unwrap().iter().find(|account| account["external_id"] == "globex").unwrap();
    let globex = globex["id"].as_str().unwrap().to_owned();
    let arguments = ["account", "budget", "set", &globex, "--parent", &id, "--limit", "3", "--period", "day", "--json"];
    let set = json_of(run(&arguments).output().await.unwrap());
    assert_eq!((set[0]["limit"].as_str(), set[0]["period"].as_str()), (Some("3.00"), Some("BUDGET_PERIOD_DAY")));
    let drawn = run(&["debit", &globex, "2"]).output().await.unwrap();
    assert!(drawn.status.success(), "{}", String::from_utf8_lossy(&drawn.stderr));
    let over = run(&["debit", &globex, "2"]).output().await.unwrap();
    assert!(String::from_utf8_lossy(&over.stderr).contains("BUDGET_EXCEEDED"));
    let children = run(&["account", "budget", "show", &id]).output().await.unwrap();
    let children = String::from_utf8_lossy(&children.stdout).into_owned();
    assert!(children.contains(&globex) && children.contains("DAY") && children.contains("1.00"), "{children}");
    assert_eq!(json_of(run(&["balance", &id, "--json"]).output().await.unwrap())["available"], "10.50");
    assert!(run(&["account", "budget", "clear", &globex]).output().await.unwrap().status.success());
    // Fraud rules: a transfer over the new-recipient cap is held, then released by hand.
    let rules = ["fraud", "transfer-rules", "--action", "review", "--new-recipient-max", "1", "--cooling", "3600"];
    let rules = json_of(run(&rules).output().await.unwrap());
    assert_eq!(rules["new_recipient_max_amount"], "1", "{rules}");
    let held = run(&["transfer", &id, &globex, "2", "--json"]).output().await.unwrap();
    let held = json_of(held);
    let review = held["held"].as_str().unwrap().to_owned();
    let listed = run(&["fraud", "transfers", "--status", "held"]).output().await.unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains(&review) && listed.contains("NEW_RECIPIENT"), "{listed}");
    let release = ["fraud", "review-transfer", &review, "--decision", "release", "--reason", "known customer"];
    let decided = json_of(run(&release).output().await.unwrap());
    assert_eq!(decided["status"], "REVIEW_STATUS_RELEASED");
    assert_eq!(json_of(run(&["balance", &globex, "--json"]).output().await.unwrap())["available"], "2.00");
    assert!(run(&["fraud", "transfer-rules", "--off"]).output().await.unwrap().status.success());
    let shown = json_of(run(&["account", "budget", "show", &id, "--json"]).output().await.unwrap());
    assert_eq!(shown.as_array().map(Vec::len), Some(0));
    // A wrong key: told what to check.
    let wrong = run(&["balance", &id, "--api-key", "rsv_wrong"]).output().await.unwrap();
    assert!(!wrong.status.success());
    let said = String::from_utf8_lossy(&wrong.stderr).into_owned();
    assert!(said.contains("UNAUTHENTICATED") && said.contains("hint:") && said.contains("API key"), "{said}");
    // Nothing listening: the address, and what to check.
    let nowhere = run(&["balance", &id, "--endpoint", "http://127.0.0.1:9"]).output().await.unwrap();
    assert!(!nowhere.status.success());
    let said = String::from_utf8_lossy(&nowhere.stderr).into_owned();
    assert!(said.contains("http://127.0.0.1:9") && said.contains("reservoir up"), "{said}");

    wallet.terminate().await;
    database.drop_database().await;
}
