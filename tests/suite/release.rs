//! What an operator sees of the binary itself.

/// `reservoir --version` names the release and the commit it was built from.
#[test]
fn version_names_the_release_and_the_commit() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_reservoir")).arg("--version").output().unwrap();
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).unwrap();
    let expected_start = format!("reservoir {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(printed.starts_with(&expected_start), "printed {printed:?}");
    let commit = printed.trim().trim_start_matches(&expected_start).trim_end_matches(')');
    let from_git = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned());
    match from_git {
        // Built in this checkout: the commit is this checkout's.
        Some(head) => assert_eq!(commit, head, "printed {printed:?}"),
        None => assert!(!commit.is_empty(), "printed {printed:?}"),
    }
}

/// The `key: value` lines an operator command printed, by key.
async fn operator(
    environment: &crate::process::Environment,
    arguments: &[&str],
) -> std::collections::HashMap<String, String> {
    let output = environment.command(arguments).output().await.unwrap();
    assert!(output.status.success(), "{arguments:?}: {}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    ["key id ", "api key ", "role "]
        .into_iter()
        .filter_map(|label| {
            stdout
                .lines()
                .find_map(|line| line.strip_prefix(label))
                .map(|value| (label.trim().to_owned(), value.to_owned()))
        })
        .collect()
}

/// `reservoir key rotate` gives a key a successor for the same tenant and
/// role; the old key keeps working through the overlap, and `reservoir key
/// revoke` ends it within the key cache's time.
#[tokio::test]
async fn an_operator_rotates_a_key_then_revokes_the_old_one() {
    use reservoir_proto::wallet::{GetCallerRequest, KeyRole};
    use reservoir_testing::{Backend, TestDatabase};

    let Some(database) = TestDatabase::create(Backend::Sqlite).await else {
        return;
    };
    let mut environment = crate::process::Environment::new(&database, None);
    environment.set("RESERVOIR__AUTH__KEY_CACHE_TTL_MS", "100");
    let admin_key = environment.create_tenant().await;
    let mut wallet = crate::process::ServiceProcess::wallet(&environment);
    wallet.start(&environment).await;
    let tenant = crate::process::Environment::tenant_of(wallet.address(), &admin_key).await;
    // The key commands call the wallet's AdminService, here with the
    // tenant's ADMIN key.
    environment.set("RESERVOIR_ENDPOINT", &format!("http://{}", wallet.address()));
    environment.set("RESERVOIR_API_KEY", &admin_key);

    let issued = operator(&environment, &["key", "issue", &tenant.0.to_string(), "--role", "read-only"]).await;
    let rotated = operator(&environment, &["key", "rotate", &issued["key id"], "--overlap-hours", "1"]).await;
    assert_ne!(rotated["key id"], issued["key id"]);
    assert_ne!(rotated["api key"], issued["api key"]);
    for key in [&issued["api key"], &rotated["api key"]] {
        let mut client = reservoir_testing::wallet::client(wallet.address(), key).await;
        let caller = client.get_caller(GetCallerRequest {}).await.unwrap().into_inner();
        assert_eq!(caller.tenant_id, tenant.0.to_string());
        assert_eq!(caller.role, i32::from(KeyRole::ReadOnly), "the successor keeps the role");
    }

    operator(&environment, &["key", "revoke", &issued["key id"]]).await;
    // The list names both keys by id and first characters, never in full.
    let listed = environment.command(&["key", "list", &tenant.0.to_string()]).output().await.unwrap();
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let listed = String::from_utf8(listed.stdout).unwrap();
    for (id, key) in [(&issued["key id"], &issued["api key"]), (&rotated["key id"], &rotated["api key"])] {
        let line = listed.lines().find(|line| line.starts_with(id.as_str())).unwrap_or_else(|| panic!("{listed}"));
        assert!(line.contains("READ_ONLY") && line.contains(&key[..12]), "{line}");
        assert!(!listed.contains(key.as_str()), "a key is never shown in full: {listed}");
    }
    let revoked_line = listed.lines().find(|line| line.starts_with(issued["key id"].as_str())).unwrap();
    assert_eq!(revoked_line.split_whitespace().count(), 5, "the revoked key shows when: {revoked_line}");
    let mut refused = false;
    for _ in 0..60 {
        let mut client = reservoir_testing::wallet::client(wallet.address(), &issued["api key"]).await;
        if let Err(status) = client.get_caller(GetCallerRequest {}).await {
            assert_eq!(status.code(), tonic::Code::Unauthenticated);
            refused = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(refused, "the revoked key is refused");
    let mut client = reservoir_testing::wallet::client(wallet.address(), &rotated["api key"]).await;
    assert!(client.get_caller(GetCallerRequest {}).await.is_ok(), "its successor still works");
    wallet.terminate().await;
    database.drop_database().await;
}

/// A service listening beyond loopback without a certificate says at start
/// that keys travel in clear unless a mesh encrypts the traffic.
#[tokio::test]
async fn plaintext_beyond_loopback_is_warned_about_at_start() {
    use reservoir_testing::{Backend, TestDatabase};
    use tokio::io::{AsyncBufReadExt, BufReader};

    let Some(database) = TestDatabase::create(Backend::Sqlite).await else {
        return;
    };
    let mut environment = crate::process::Environment::new(&database, None);
    let port = environment.wallet_address.port();
    environment.set("RESERVOIR__WALLET__LISTEN", &format!("0.0.0.0:{port}"));
    environment.set("RESERVOIR__TELEMETRY__LOG_FORMAT", "text");
    let mut child = environment
        .command(&["serve", "wallet"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let warned = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("WARN") && line.contains("serving plaintext gRPC beyond this machine") {
                return true;
            }
        }
        false
    })
    .await;
    child.kill().await.unwrap();
    assert_eq!(warned, Ok(true), "the warning is logged at start");
    database.drop_database().await;
}
