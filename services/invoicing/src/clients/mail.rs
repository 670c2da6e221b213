//! Scheduled billing reports by email, over SMTP with `lettre`.

use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// Sends mail through the configured SMTP server; without one, every send
/// fails with a message that says so.
#[derive(Clone)]
pub struct Mailer {
    transport: Option<AsyncSmtpTransport<Tokio1Executor>>,
    from: Mailbox,
}

/// A file attached to a report.
pub struct Csv {
    pub name: String,
    pub text: String,
}

impl Mailer {
    /// `smtp_url` as lettre reads it: `smtp://host:25` (plain, or STARTTLS if
    /// offered), `smtp://user:password@host:587?tls=required`, `smtps://host:465`;
    /// empty for none.
    pub fn new(smtp_url: &str, from: &str) -> Result<Self, String> {
        let from: Mailbox = from.parse().map_err(|error| format!("invoicing: report_from {from:?}: {error}"))?;
        let transport = if smtp_url.is_empty() {
            None
        } else {
            Some(
                AsyncSmtpTransport::<Tokio1Executor>::from_url(smtp_url)
                    .map_err(|error| format!("invoicing: smtp_url: {error}"))?
                    .timeout(Some(std::time::Duration::from_secs(30)))
                    .build(),
            )
        };
        Ok(Self { transport, from })
    }

    pub async fn send(&self, to: &[String], subject: &str, body: &str, files: Vec<Csv>) -> Result<(), String> {
        let Some(transport) = &self.transport else {
            return Err("no SMTP server is configured (invoicing.smtp_url)".into());
        };
        let mut builder = Message::builder().from(self.from.clone()).subject(subject);
        for address in to {
            let mailbox: Mailbox = address.parse().map_err(|error| format!("recipient {address:?}: {error}"))?;
            builder = builder.to(mailbox);
        }
        let mut parts = MultiPart::mixed().singlepart(SinglePart::plain(body.to_owned()));
        let csv = ContentType::parse("text/csv; charset=utf-8").map_err(|error| error.to_string())?;
        for file in files {
            parts = parts.singlepart(Attachment::new(file.name).body(file.text, csv.clone()));
        }
        let message = builder.multipart(parts).map_err(|error| format!("building the message: {error}"))?;
        transport.send(message).await.map_err(|error| format!("sending: {error}"))?;
        Ok(())
    }
}

/// Whether an address is one a report can be sent to.
pub fn is_address(text: &str) -> bool {
    text.parse::<lettre::Address>().is_ok()
}
