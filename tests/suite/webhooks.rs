//! `reservoir webhooks listen --secret`: a receiver for an endpoint that
//! exists already, checking each delivery's signature as its tenant's
//! receiver would.

use std::process::Stdio;
use std::time::Duration;

use reservoir_orchestrator::domain::signature;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Posts `body` to `address` with Standard Webhooks headers; the status code.
async fn deliver(address: &str, id: &str, timestamp: i64, signature: &str, body: &str) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         webhook-id: {id}\r\nwebhook-timestamp: {timestamp}\r\nwebhook-signature: {signature}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The next line the listener printed.
async fn next_line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
    tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await.unwrap().unwrap().unwrap()
}

#[tokio::test]
async fn listen_with_a_secret_answers_signed_deliveries_and_refuses_the_rest() {
    let secret = signature::new_secret();
    let mut listener = tokio::process::Command::new(env!("CARGO_BIN_EXE_reservoir"))
        .args(["webhooks", "listen", "--listen", "127.0.0.1:0", "--secret", &secret])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(listener.stdout.take().unwrap()).lines();
    let ready = next_line(&mut lines).await;
    let url = ready.split_whitespace().find(|word| word.starts_with("http://")).unwrap();
    let address = url.trim_start_matches("http://").trim_end_matches('/').to_owned();

    let body = r#"{"type":"wallet.debited","timestamp":"2026-12-06T00:00:00Z","data":{"amount":"2"}}"#;
    let now = chrono::Utc::now().timestamp();
    let signed = signature::signature_header(&[&secret], "msg_1", now, body.as_bytes());
    assert_eq!(deliver(&address, "msg_1", now, &signed, body).await, 204);
    let line = next_line(&mut lines).await;
    assert!(line.contains("wallet.debited") && line.contains("msg_1") && line.ends_with("verified"), "{line}");

    // Signed with another secret, tampered with, or too old: 400, so the sender tries again.
    let other = signature::signature_header(&[&signature::new_secret()], "msg_2", now, body.as_bytes());
    assert_eq!(deliver(&address, "msg_2", now, &other, body).await, 400);
    assert!(next_line(&mut lines).await.contains("REFUSED"));
    let tampered = body.replace("\"2\"", "\"200\"");
    assert_eq!(deliver(&address, "msg_1", now, &signed, &tampered).await, 400);
    assert!(next_line(&mut lines).await.contains("REFUSED"));
    let old = now - 3_600;
    let stale = signature::signature_header(&[&secret], "msg_3", old, body.as_bytes());
    assert_eq!(deliver(&address, "msg_3", old, &stale, body).await, 400);
    assert!(next_line(&mut lines).await.contains("REFUSED"));
    // During a rotation the sender signs with both secrets: either verifies.
    let both = signature::signature_header(&[&signature::new_secret(), &secret], "msg_4", now, body.as_bytes());
    assert_eq!(deliver(&address, "msg_4", now, &both, body).await, 204);
    assert!(next_line(&mut lines).await.ends_with("verified"));

    // SIGTERM stops it cleanly.
    let pid = listener.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(10), listener.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status:?}");
}
