//! Email: an [`EmailPayload`] built into a MIME message with lettre and handed to SMTP (from
//! `NUDGE_SMTP_URL`: `smtp://` through [`Relay`], `smtps://` through lettre's pooled
//! `AsyncSmtpTransport`) or, by default, written as `.eml` files under
//! `<outbox_dir>/email/` by lettre's file transport. lettre writes the file in place, so it writes
//! into `<outbox_dir>/.partial/` and the finished file is renamed into `email/`: whoever reads the
//! folder (a pickup script, a test, `grep`) sees whole messages or none.
//!
//! Every message carries `Message-ID: <idempotency_key@domain>` (fixed by the stored key, so a
//! resend after a crash is recognisably the same message), `List-Unsubscribe` and
//! `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058). SMTP errors are classified by
//! reply code and enhanced status ([`super::retry::SmtpReply`]; a 5.1.x hard bounce suppresses the address); the SMTP URL is only ever logged redacted.

use std::path::PathBuf;

use lettre::{
    AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{
        Mailbox, MultiPart, SinglePart,
        header::{Header, HeaderName, HeaderValue},
    },
    transport::smtp::{self, PoolConfig},
};

use super::{
    DeliveryConfig, DeliveryError, SendError,
    rate::RateLimiter,
    relay::{Relay, RelayError},
    retry::{SmtpReply, Verdict},
};
use crate::{
    outbox::{EmailPayload, message_id},
    store::redact_url,
};

/// `List-Unsubscribe: <url>` (RFC 2369).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListUnsubscribe(pub String);

impl Header for ListUnsubscribe {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe")
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let url = s.trim().trim_start_matches('<').trim_end_matches('>');
        Ok(ListUnsubscribe(url.to_string()))
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), format!("<{}>", self.0))
    }
}

/// `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058): mailbox providers may
/// unsubscribe with one POST, without the user opening a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListUnsubscribePost;

impl Header for ListUnsubscribePost {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe-Post")
    }

    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ListUnsubscribePost)
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "List-Unsubscribe=One-Click".to_string())
    }
}

/// Builds the message as it goes on the wire. An address that does not parse is permanent.
pub fn build_message(
    from: &Mailbox,
    to: &str,
    key: &str,
    domain: &str,
    payload: &EmailPayload,
) -> Result<Message, SendError> {
    let to: Mailbox = to
        .trim()
        .parse()
        .map_err(|e| SendError::permanent(format!("recipient `{to}` is not an email address: {e}")))?;
    let builder = Message::builder()
        .from(from.clone())
        .to(to)
        .subject(payload.subject.clone())
        .message_id(Some(message_id(key, domain)))
        .header(ListUnsubscribe(payload.unsubscribe_url.clone()))
        .header(ListUnsubscribePost);
    let built = match &payload.html {
        Some(html) => builder.multipart(MultiPart::alternative_plain_html(
            payload.text.clone(),
            html.clone(),
        )),
        None => builder.singlepart(SinglePart::plain(payload.text.clone())),
    };
    built.map_err(|e| SendError::permanent(format!("cannot build the email: {e}")))
}

/// An SMTP failure, by what to do next. Replies carry their code and text as the reason.
pub fn classify_smtp_error(e: &smtp::Error) -> SendError {
    if let Some(code) = e.status() {
        let reason = format!("SMTP {e}");
        // lettre keeps the reply's lines, joined, as the error's source.
        let text = std::error::Error::source(e)
            .map(ToString::to_string)
            .unwrap_or_default();
        return match SmtpReply::new(u16::from(code), &text).verdict() {
            Verdict::HardBounce => SendError::HardBounce { reason },
            Verdict::GiveUp => SendError::permanent(reason),
            // A "positive" code as an error would be a client bug; retrying is the safe side.
            Verdict::Retry | Verdict::Delivered => SendError::transient(reason),
        };
    }
    if e.is_timeout() {
        return SendError::transient(format!("SMTP timeout: {e}"));
    }
    // Connection refused or lost, TLS handshake, a garbled reply: the server or the network may
    // recover, and an operator may fix a TLS setting, so none of these gives up on the message.
    SendError::transient(format!("SMTP {e}"))
}

enum Transport {
    /// `smtp://`: our sockets with `TCP_NODELAY` under lettre's SMTP client ([`Relay`]).
    Relay(Relay),
    /// `smtps://`: lettre's pooled transport.
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Files {
        /// lettre's transport, writing into the staging folder.
        staging: AsyncFileTransport<Tokio1Executor>,
        staging_dir: PathBuf,
        dir: PathBuf,
    },
}

/// The email channel: a transport, the sender address and the send-rate limit.
pub struct EmailSender {
    transport: Transport,
    from: Mailbox,
    domain: String,
    rate: Option<RateLimiter>,
    /// Where mail goes, safe to log.
    target: String,
}

impl EmailSender {
    /// Builds the transport named by the configuration; a bad URL, sender or folder is refused here,
    /// never at send time. Call [`super::install_crypto_provider`] first.
    pub fn new(config: &DeliveryConfig) -> Result<EmailSender, DeliveryError> {
        let from: Mailbox = config.email_from.parse().map_err(|e| {
            DeliveryError::Config(format!(
                "email_from `{}` is not a mailbox: {e}",
                config.email_from
            ))
        })?;
        let (transport, target) = match &config.smtp_url {
            Some(url) => {
                let shown = redact_url(url);
                let unusable = |e: &dyn std::fmt::Display| {
                    DeliveryError::Config(format!("NUDGE_SMTP_URL `{shown}` is not usable: {e}"))
                };
                let relay =
                    Relay::from_url(url, config.attempt_timeout, config.workers).map_err(|e| unusable(&e))?;
                let transport = match relay {
                    Some(relay) => Transport::Relay(relay),
                    None => {
                        let builder =
                            AsyncSmtpTransport::<Tokio1Executor>::from_url(url).map_err(|e| unusable(&e))?;
                        let pool =
                            PoolConfig::new().max_size(u32::try_from(config.workers).unwrap_or(u32::MAX));
                        Transport::Smtp(
                            builder
                                .timeout(Some(config.attempt_timeout))
                                .pool_config(pool)
                                .build(),
                        )
                    }
                };
                (transport, format!("SMTP {shown}"))
            }
            None => {
                let dir = config.outbox_dir.join("email");
                let staging_dir = config.outbox_dir.join(".partial");
                for path in [&dir, &staging_dir] {
                    std::fs::create_dir_all(path).map_err(|source| DeliveryError::Io {
                        path: path.clone(),
                        source,
                    })?;
                }
                let target = format!("files in {}", dir.display());
                let staging = AsyncFileTransport::new(&staging_dir);
                (
                    Transport::Files {
                        staging,
                        staging_dir,
                        dir,
                    },
                    target,
                )
            }
        };
        Ok(EmailSender {
            transport,
            from,
            domain: config.message_id_domain.clone(),
            rate: config.smtp_rate.map(RateLimiter::new),
            target,
        })
    }

    /// Where mail goes (`SMTP smtp://user:***@host:587` or `files in ./outbox/email`).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Waits for the rate limit to allow one more email.
    pub async fn ready(&self) {
        if let Some(rate) = &self.rate {
            rate.acquire().await;
        }
    }

    /// Sends one email to `to`; the caller bounds it with the attempt timeout.
    pub async fn send(&self, to: &str, key: &str, payload: &EmailPayload) -> Result<(), SendError> {
        let message = build_message(&self.from, to, key, &self.domain, payload)?;
        match &self.transport {
            Transport::Relay(relay) => relay
                .send(message.envelope(), &message.formatted())
                .await
                .map_err(|e| match e {
                    RelayError::Smtp(e) => classify_smtp_error(&e),
                    RelayError::Connect(why) => SendError::transient(format!("SMTP {why}")),
                }),
            Transport::Smtp(t) => t
                .send(message)
                .await
                .map(drop)
                .map_err(|e| classify_smtp_error(&e)),
            Transport::Files {
                staging,
                staging_dir,
                dir,
            } => {
                let failed = |e: &dyn std::fmt::Display| {
                    SendError::transient(format!("cannot write the .eml file: {e}"))
                };
                let id = staging.send(message).await.map_err(|e| failed(&e))?;
                let name = format!("{id}.eml");
                tokio::fs::rename(staging_dir.join(&name), dir.join(&name))
                    .await
                    .map_err(|e| failed(&e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(html: Option<&str>) -> EmailPayload {
        EmailPayload {
            subject: "Still thinking about it?".into(),
            html: html.map(str::to_string),
            text: "Your cart misses you".into(),
            unsubscribe_url: "https://nudge.example/u/tok".into(),
        }
    }

    #[test]
    fn headers_as_mailbox_providers_expect_them() {
        let from: Mailbox = "Shop <hello@shop.example>".parse().unwrap();
        let m = build_message(
            &from,
            "ann@example.com",
            "abc123",
            "nudge.example",
            &payload(Some("<p>Hi</p>")),
        )
        .unwrap();
        let text = String::from_utf8(m.formatted()).unwrap();
        assert!(text.contains("Message-ID: <abc123@nudge.example>\r\n"), "{text}");
        assert!(
            text.contains("List-Unsubscribe: <https://nudge.example/u/tok>\r\n"),
            "{text}"
        );
        assert!(
            text.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"),
            "{text}"
        );
        assert!(text.contains("Subject: Still thinking about it?\r\n"), "{text}");
        assert!(text.contains("multipart/alternative"), "{text}");
        assert!(text.contains("To: ann@example.com\r\n"), "{text}");
    }

    #[test]
    fn text_only_is_a_single_part() {
        let from: Mailbox = "nudge@localhost".parse().unwrap();
        let m = build_message(&from, "ann@example.com", "k", "localhost", &payload(None)).unwrap();
        let text = String::from_utf8(m.formatted()).unwrap();
        assert!(!text.contains("multipart"), "{text}");
        assert!(text.contains("text/plain"), "{text}");
    }

    #[test]
    fn a_bad_address_is_permanent() {
        let from: Mailbox = "nudge@localhost".parse().unwrap();
        let err = build_message(&from, "not an address", "k", "localhost", &payload(None)).unwrap_err();
        assert!(matches!(err, SendError::Permanent { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn a_bad_smtp_url_is_refused_at_start_without_its_password() {
        crate::delivery::install_crypto_provider();
        for (url, says) in [
            ("smtp://mailer:hunter2@mx.example?tls=maybe", "tls=maybe"),
            ("ftp://mailer:hunter2@mx.example", "Unknown scheme"),
        ] {
            let config = DeliveryConfig {
                smtp_url: Some(url.into()),
                ..DeliveryConfig::default()
            };
            let Err(DeliveryError::Config(message)) = EmailSender::new(&config) else {
                panic!("{url} was accepted");
            };
            assert!(
                message.contains(says) && !message.contains("hunter2"),
                "{message}"
            );
        }
        let config = DeliveryConfig {
            smtp_url: Some("smtps://mailer:hunter2@mx.example".into()),
            ..DeliveryConfig::default()
        };
        assert!(matches!(
            EmailSender::new(&config).map(|s| s.transport),
            Ok(Transport::Smtp(_))
        ));
    }
}
