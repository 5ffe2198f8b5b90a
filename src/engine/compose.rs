//! Rendering a message at decision time: templates (minijinja, data only as values), tracked links,
//! the open pixel and the unsubscribe link.
//!
//! Rendering goes through [`crate::rules::templates::render`], so fuel, recursion, output size and
//! time are bounded; a template that exceeds any of them fails this one message (the engine
//! records the assignment `failed` with the reason) and nothing else.

use std::collections::BTreeMap;

use minijinja::{Environment, Value, context, value::Serde};
use serde_json::Value as Json;

use crate::{
    outbox::{EmailPayload, Payload, PushPayload},
    rules::{Campaign, EmailContent, PushContent, TemplateRef},
    tracking::tokens::{Signer, TokenKind, click_payload, unsubscribe_payload},
};

/// Everything a template may read, plus what is needed to sign links.
pub struct Composer<'a> {
    pub templates: &'a Environment<'static>,
    pub signer: &'a Signer,
    /// Base of tracking links, without a trailing slash.
    pub public_url: &'a str,
}

#[derive(Debug, thiserror::Error)]
#[error("template {template}: {message}")]
pub struct RenderError {
    pub template: String,
    pub message: String,
}

/// A rendered message and the link targets its click tokens refer to.
pub struct Composed {
    pub payload: Payload,
    pub links: Vec<String>,
}

impl Composer<'_> {
    fn render(&self, t: &TemplateRef, ctx: &Value) -> Result<String, RenderError> {
        // minijinja nests the cause of an `include` or a call failure; the reason names it all.
        let err = |e: minijinja::Error| {
            let mut message = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                message.push_str(": ");
                message.push_str(&c.to_string());
                cause = c.source();
            }
            RenderError {
                template: t.0.clone(),
                message,
            }
        };
        crate::rules::templates::render(self.templates, &t.0, ctx.clone()).map_err(err)
    }

    fn context(&self, campaign: &Campaign, user: &Json, event: &Json, unsubscribe_url: &str) -> Value {
        context! {
            user => Value::from(Serde(user)),
            event => Value::from(Serde(event)),
            campaign => context! { id => campaign.id.clone(), name => campaign.name.clone() },
            unsubscribe_url => unsubscribe_url,
        }
    }

    pub fn unsubscribe_url(&self, user_id: &str, topic: Option<&str>) -> String {
        let token = self
            .signer
            .sign(TokenKind::Unsubscribe, &unsubscribe_payload(user_id, topic));
        format!("{}/u/{token}", self.public_url)
    }

    pub fn email(
        &self,
        campaign: &Campaign,
        content: &EmailContent,
        user_id: &str,
        user: &Json,
        event: &Json,
        key: &str,
    ) -> Result<Composed, RenderError> {
        let unsubscribe_url = self.unsubscribe_url(user_id, campaign.topic.as_deref());
        let ctx = self.context(campaign, user, event, &unsubscribe_url);
        let subject = self.render(&content.subject, &ctx)?.trim().to_string();
        let body = self.render(&content.body, &ctx)?;
        if !content.html {
            let payload = EmailPayload {
                subject,
                html: None,
                text: body,
                unsubscribe_url,
            };
            return Ok(Composed {
                payload: Payload::Email(payload),
                links: Vec::new(),
            });
        }
        let (tracked, links) = track_links(
            &body,
            |i| {
                let token = self.signer.sign(TokenKind::Click, &click_payload(key, i));
                format!("{}/t/c/{token}", self.public_url)
            },
            &unsubscribe_url,
        );
        let pixel = format!(
            r#"<img src="{}/t/o/{}" width="1" height="1" alt="" style="display:none">"#,
            self.public_url,
            self.signer.sign(TokenKind::Open, key)
        );
        let html = match tracked.rfind("</body>") {
            Some(at) => format!("{}{pixel}{}", &tracked[..at], &tracked[at..]),
            None => format!("{tracked}{pixel}"),
        };
        let payload = EmailPayload {
            subject,
            text: html_to_text(&body),
            html: Some(html),
            unsubscribe_url,
        };
        Ok(Composed {
            payload: Payload::Email(payload),
            links,
        })
    }

    pub fn push(
        &self,
        campaign: &Campaign,
        content: &PushContent,
        user_id: &str,
        user: &Json,
        event: &Json,
        key: &str,
    ) -> Result<Composed, RenderError> {
        let unsubscribe_url = self.unsubscribe_url(user_id, campaign.topic.as_deref());
        let ctx = self.context(campaign, user, event, &unsubscribe_url);
        let title = self.render(&content.title, &ctx)?.trim().to_string();
        let body = self.render(&content.body, &ctx)?.trim().to_string();
        let open_url = format!(
            "{}/t/o/{}",
            self.public_url,
            self.signer.sign(TokenKind::Open, key)
        );
        let data = BTreeMap::from([
            ("nudge_message_id".to_string(), key.to_string()),
            ("campaign".to_string(), campaign.id.clone()),
            ("open_url".to_string(), open_url),
        ]);
        Ok(Composed {
            payload: Payload::Push(PushPayload { title, body, data }),
            links: Vec::new(),
        })
    }
}

/// Replaces each `href="http…"` target with a tracked URL, returning the originals by index.
/// The unsubscribe link is left alone: it must work without a redirect.
fn track_links(
    html: &str,
    tracked: impl Fn(usize) -> String,
    unsubscribe_url: &str,
) -> (String, Vec<String>) {
    let mut out = String::with_capacity(html.len() + 256);
    let mut links = Vec::new();
    let mut rest = html;
    while let Some(at) = rest.find("href=") {
        let (before, after) = rest.split_at(at + 5);
        out.push_str(before);
        let Some(quote) = after.chars().next().filter(|c| *c == '"' || *c == '\'') else {
            rest = after;
            continue;
        };
        let Some(end) = after[1..].find(quote) else {
            rest = after;
            continue;
        };
        let url = &after[1..1 + end];
        let decoded = url.replace("&amp;", "&");
        if (decoded.starts_with("http://") || decoded.starts_with("https://")) && decoded != unsubscribe_url {
            out.push(quote);
            out.push_str(&tracked(links.len()));
            out.push(quote);
            links.push(decoded);
        } else {
            out.push_str(&after[..end + 2]);
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    (out, links)
}

/// A readable plain-text alternative: tags dropped, block ends as line breaks, links kept.
fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    let mut tag = String::new();
    for c in html.chars() {
        match c {
            '<' => {
                in_tag = true;
                tag.clear();
            }
            '>' if in_tag => {
                in_tag = false;
                let name = tag
                    .trim_start_matches('/')
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_ascii_lowercase();
                if matches!(
                    name.as_str(),
                    "p" | "br" | "div" | "h1" | "h2" | "h3" | "li" | "tr" | "br/"
                ) {
                    out.push('\n');
                }
                if let Some(href) = tag.split("href=\"").nth(1).and_then(|h| h.split('"').next()) {
                    out.push_str(&format!(" <{href}> "));
                }
            }
            _ if in_tag => tag.push(c),
            _ => out.push(c),
        }
    }
    let text = out
        .replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#x27;", "'");
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let mut joined = lines.join("\n");
    while joined.contains("\n\n\n") {
        joined = joined.replace("\n\n\n", "\n\n");
    }
    joined.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_web_links_but_not_unsubscribe_or_mailto() {
        let html = r#"<a href="https://shop.example/cart?a=1&amp;b=2">Cart</a> <a href='mailto:x@y'>m</a> <a href="https://n/u/tok">unsub</a>"#;
        let (out, links) = track_links(html, |i| format!("T{i}"), "https://n/u/tok");
        assert_eq!(links, vec!["https://shop.example/cart?a=1&b=2"]);
        assert_eq!(
            out,
            r#"<a href="T0">Cart</a> <a href='mailto:x@y'>m</a> <a href="https://n/u/tok">unsub</a>"#
        );
    }

    #[test]
    fn text_alternative_is_readable() {
        let t = html_to_text(
            "<html><body><h1>Hi &amp; welcome</h1><p>Your <a href=\"https://x\">cart</a></p></body></html>",
        );
        assert!(t.contains("Hi & welcome"), "{t}");
        assert!(t.contains("cart"), "{t}");
    }
}
