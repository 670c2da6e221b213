//! A local SMTP sink: it takes every message sent to it and keeps the
//! envelope and the raw message, so a test can read what was mailed; while
//! `refusing`, it answers every message "try again later", as a mail server
//! that is overloaded does.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Debug, Clone, Default)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
}

#[derive(Clone, Default)]
pub struct SmtpSink {
    pub received: Arc<Mutex<Vec<Mail>>>,
    pub refusing: Arc<AtomicBool>,
}

impl SmtpSink {
    pub async fn start() -> (Self, SocketAddr) {
        let sink = Self::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let received = sink.received.clone();
        let refusing = sink.refusing.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let received = received.clone();
                let refusing = refusing.clone();
                tokio::spawn(async move {
                    let _ = session(socket, received, refusing).await;
                });
            }
        });
        (sink, address)
    }

    pub fn mails(&self) -> Vec<Mail> {
        self.received.lock().unwrap().clone()
    }
}

/// One SMTP conversation: enough of RFC 5321 for a client that sends mail.
async fn session(
    socket: tokio::net::TcpStream,
    received: Arc<Mutex<Vec<Mail>>>,
    refusing: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let (reader, mut writer) = socket.into_split();
    let mut lines = BufReader::new(reader).lines();
    writer.write_all(b"220 sink ESMTP ready\r\n").await?;
    let mut mail = Mail::default();
    while let Some(line) = lines.next_line().await? {
        let upper = line.to_uppercase();
        if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            writer.write_all(b"250-sink\r\n250 8BITMIME\r\n").await?;
        } else if upper.starts_with("MAIL FROM:") && refusing.load(Ordering::SeqCst) {
            writer.write_all(b"451 try again later\r\n").await?;
        } else if upper.starts_with("MAIL FROM:") {
            mail = Mail { from: address_of(&line), ..Mail::default() };
            writer.write_all(b"250 OK\r\n").await?;
        } else if upper.starts_with("RCPT TO:") {
            mail.to.push(address_of(&line));
            writer.write_all(b"250 OK\r\n").await?;
        } else if upper == "DATA" {
            writer.write_all(b"354 go on\r\n").await?;
            let mut data = String::new();
            while let Some(line) = lines.next_line().await? {
                if line == "." {
                    break;
                }
                data.push_str(line.strip_prefix('.').unwrap_or(&line));
                data.push('\n');
            }
            mail.data = data;
            received.lock().unwrap().push(std::mem::take(&mut mail));
            writer.write_all(b"250 queued\r\n").await?;
        } else if upper == "QUIT" {
            writer.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            writer.write_all(b"250 OK\r\n").await?;
        }
    }
    Ok(())
}

fn address_of(line: &str) -> String {
    line.split('<').nth(1).and_then(|rest| rest.split('>').next()).unwrap_or_default().to_owned()
}
