//! HMAC-signed tokens for opens, clicks and unsubscribes.
//!
//! A token is `base64url(payload) "." base64url(HMAC-SHA256(key, kind || payload))`. The kind is
//! part of what is signed, so an open token cannot be replayed as an unsubscribe; the payload
//! names the message (and link) or the user, so a token cannot act for anybody else. Checked with
//! the MAC crate's constant-time comparison.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// What a token lets its bearer do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Open,
    Click,
    Unsubscribe,
}

impl TokenKind {
    fn tag(self) -> &'static [u8] {
        match self {
            TokenKind::Open => b"open\0",
            TokenKind::Click => b"click\0",
            TokenKind::Unsubscribe => b"unsub\0",
        }
    }
}

/// Signs and checks tokens with the deployment's secret (`NUDGE_SECRET`).
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(<redacted>)")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed")]
    Malformed,
    #[error("token signature does not match")]
    BadSignature,
}

impl Signer {
    pub fn new(secret: &[u8]) -> Self {
        Signer { key: secret.to_vec() }
    }

    fn mac(&self, kind: TokenKind, payload: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(kind.tag());
        mac.update(payload);
        mac
    }

    pub fn sign(&self, kind: TokenKind, payload: &str) -> String {
        let tag = self.mac(kind, payload.as_bytes()).finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// The payload of a valid token of this kind.
    pub fn verify(&self, kind: TokenKind, token: &str) -> Result<String, TokenError> {
        let (payload, tag) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| TokenError::Malformed)?;
        self.mac(kind, &payload)
            .verify_slice(&tag)
            .map_err(|_| TokenError::BadSignature)?;
        String::from_utf8(payload).map_err(|_| TokenError::Malformed)
    }
}

/// Payload of an unsubscribe token: the user and, when the message had one, its topic.
pub fn unsubscribe_payload(user_id: &str, topic: Option<&str>) -> String {
    serde_json::json!({ "u": user_id, "t": topic }).to_string()
}

/// Payload of a click token: the message's idempotency key and the link's index.
pub fn click_payload(message_key: &str, link: usize) -> String {
    serde_json::json!({ "m": message_key, "l": link }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_tampering() {
        let s = Signer::new(b"k");
        let t = s.sign(TokenKind::Open, "msg-1");
        assert_eq!(s.verify(TokenKind::Open, &t).unwrap(), "msg-1");
        assert_eq!(
            s.verify(TokenKind::Unsubscribe, &t),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            Signer::new(b"other").verify(TokenKind::Open, &t),
            Err(TokenError::BadSignature)
        );
        let forged = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode("msg-2"),
            t.split_once('.').unwrap().1
        );
        assert_eq!(s.verify(TokenKind::Open, &forged), Err(TokenError::BadSignature));
        assert_eq!(
            s.verify(TokenKind::Open, &t[..t.len() - 3]),
            Err(TokenError::BadSignature)
        );
        assert_eq!(s.verify(TokenKind::Open, "nodot"), Err(TokenError::Malformed));
    }
}
