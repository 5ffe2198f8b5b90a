//! SMTP over `smtp://` URLs: lettre's connections on sockets with `TCP_NODELAY`, kept in a small
//! pool.
//!
//! lettre 0.11.23 never sets `TCP_NODELAY`, and it writes a message's body and the closing
//! `\r\n.\r\n` as two writes: Nagle's algorithm holds the five-byte terminator until the server
//! acknowledges the body, and servers delay that ACK (40 ms on Linux), so every message on a
//! session cost ~45 ms (434 messages/s over 20 sessions to a local Postfix, BENCHMARKS.md).
//! lettre has fixed it upstream (pull request #1159) but not released it. Until then, for
//! `smtp://` URLs (plain, `?tls=required`, `?tls=opportunistic`), this module opens the TCP
//! connection itself and hands it to lettre's [`AsyncSmtpConnection`], which still speaks SMTP,
//! STARTTLS and AUTH; `smtps://` (TLS from the first byte) stays on lettre's own pooled transport.
//!
//! The pool mirrors lettre's: an idle connection is checked with `NOOP` before reuse; one that
//! failed (`has_broken`) is dropped, a healthy one goes back if fewer than `max_idle` wait.

use std::time::Duration;

use lettre::{
    address::Envelope,
    transport::smtp::{
        self,
        authentication::{Credentials, Mechanism},
        client::{AsyncSmtpConnection, TlsParameters},
        extension::ClientId,
    },
};
use tokio::{net::TcpStream, sync::Mutex};

/// How a `smtp://` URL asks for TLS.
enum StartTls {
    No,
    /// `?tls=opportunistic`: STARTTLS when the server offers it.
    IfOffered(TlsParameters),
    /// `?tls=required`: STARTTLS or fail.
    Required(TlsParameters),
}

/// Why a send failed: the SMTP exchange (classified by its reply), or the TCP connection.
#[derive(Debug)]
pub enum RelayError {
    Smtp(smtp::Error),
    Connect(String),
}

impl From<smtp::Error> for RelayError {
    fn from(e: smtp::Error) -> Self {
        RelayError::Smtp(e)
    }
}

/// A pooled SMTP client for one `smtp://` server.
pub struct Relay {
    host: String,
    port: u16,
    tls: StartTls,
    credentials: Option<Credentials>,
    hello: ClientId,
    connect_timeout: Duration,
    idle: Mutex<Vec<AsyncSmtpConnection>>,
    max_idle: usize,
}

impl Relay {
    /// A relay for `url` when it is a `smtp://` URL, read as lettre's `from_url` reads it (port 25
    /// plain, 587 with `tls`; the path as the EHLO name; percent-encoded user and password).
    /// `Ok(None)` for other schemes; an error names what is wrong without the password.
    pub fn from_url(url: &str, connect_timeout: Duration, max_idle: usize) -> Result<Option<Relay>, String> {
        let parsed = url::Url::parse(url).map_err(|e| e.to_string())?;
        if parsed.scheme() != "smtp" {
            return Ok(None);
        }
        let host = parsed.host_str().ok_or("no host")?.to_string();
        let tls_of = || TlsParameters::new(host.clone()).map_err(|e| e.to_string());
        let tls = match parsed.query_pairs().find(|(k, _)| k == "tls").map(|(_, v)| v) {
            None => StartTls::No,
            Some(v) if v == "required" => StartTls::Required(tls_of()?),
            Some(v) if v == "opportunistic" => StartTls::IfOffered(tls_of()?),
            Some(v) => return Err(format!("tls={v} is neither `required` nor `opportunistic`")),
        };
        let port = parsed
            .port()
            .unwrap_or(if matches!(tls, StartTls::No) { 25 } else { 587 });
        let decode = |s: &str| -> String {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let credentials = parsed
            .password()
            .map(|password| Credentials::new(decode(parsed.username()), decode(password)));
        let hello = match parsed.path().trim_matches('/') {
            "" => ClientId::default(),
            name => ClientId::Domain(name.to_string()),
        };
        Ok(Some(Relay {
            host,
            port,
            tls,
            credentials,
            hello,
            connect_timeout,
            idle: Mutex::new(Vec::new()),
            max_idle: max_idle.max(1),
        }))
    }

    /// Sends one message, on an idle connection when one answers `NOOP`, else on a new one.
    pub async fn send(&self, envelope: &Envelope, email: &[u8]) -> Result<(), RelayError> {
        let mut conn = loop {
            let Some(mut conn) = self.idle.lock().await.pop() else {
                break self.connect().await?;
            };
            if conn.test_connected().await {
                break conn;
            }
            conn.abort().await;
        };
        let sent = conn.send(envelope, email).await;
        if conn.has_broken() {
            conn.abort().await;
        } else {
            let mut idle = self.idle.lock().await;
            if idle.len() < self.max_idle {
                idle.push(conn);
            }
        }
        sent.map(drop).map_err(RelayError::Smtp)
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, RelayError> {
        let target = (self.host.as_str(), self.port);
        let stream = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(target)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(self.connect_error(e.to_string())),
            Err(_) => return Err(self.connect_error("timed out")),
        };
        stream
            .set_nodelay(true)
            .map_err(|e| self.connect_error(e.to_string()))?;
        let mut conn = AsyncSmtpConnection::connect_with_transport(Box::new(stream), &self.hello).await?;
        match &self.tls {
            StartTls::Required(tls) => conn.starttls(tls.clone(), &self.hello).await?,
            StartTls::IfOffered(tls) if conn.can_starttls() => {
                conn.starttls(tls.clone(), &self.hello).await?
            }
            _ => {}
        }
        if let Some(credentials) = &self.credentials {
            conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials)
                .await?;
        }
        Ok(conn)
    }

    fn connect_error(&self, why: impl std::fmt::Display) -> RelayError {
        RelayError::Connect(format!("cannot connect to {}:{}: {why}", self.host, self.port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(url: &str) -> Relay {
        Relay::from_url(url, Duration::from_secs(1), 4)
            .unwrap()
            .expect("a smtp:// URL")
    }

    #[test]
    fn reads_urls_as_lettre_does() {
        crate::delivery::install_crypto_provider();
        let r = relay("smtp://127.0.0.1:2525");
        assert_eq!((r.host.as_str(), r.port), ("127.0.0.1", 2525));
        assert!(matches!(r.tls, StartTls::No) && r.credentials.is_none());
        assert_eq!(relay("smtp://mx.example").port, 25);
        let r = relay("smtp://mailer:p%40ss@mx.example/shop.example?tls=required");
        assert_eq!(r.port, 587);
        assert!(matches!(r.tls, StartTls::Required(_)));
        assert_eq!(
            r.credentials,
            Some(Credentials::new("mailer".into(), "p@ss".into()))
        );
        assert_eq!(r.hello, ClientId::Domain("shop.example".into()));
        assert!(matches!(
            relay("smtp://mx.example?tls=opportunistic").tls,
            StartTls::IfOffered(_)
        ));
        assert!(
            Relay::from_url("smtps://mx.example", Duration::from_secs(1), 4)
                .unwrap()
                .is_none()
        );
        let bad = Relay::from_url("smtp://mx.example?tls=maybe", Duration::from_secs(1), 4).err();
        assert_eq!(
            bad.as_deref(),
            Some("tls=maybe is neither `required` nor `opportunistic`")
        );
    }
}
