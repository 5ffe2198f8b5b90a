//! Users as campaigns see them: traits, addresses, consent, time zone, opt-outs.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::{Result, Store, with_db};
use crate::clock::to_millis;

#[derive(Debug, Clone, PartialEq)]
pub struct UserRecord {
    pub id: String,
    pub traits: Map<String, Value>,
    pub email: Option<String>,
    pub push_token: Option<String>,
    pub timezone: Option<String>,
    /// Unsubscribed from email through nudge's link.
    pub unsubscribed: bool,
    /// The current address hard-bounced (SMTP 5.1.x): never mailed again until it changes.
    pub email_bounced: bool,
    /// Subscription topics the user opted out of.
    pub topic_optouts: Vec<String>,
}

impl UserRecord {
    /// Email needs an address that has not hard-bounced, `traits.email_consent` not false and no
    /// unsubscribe through nudge.
    pub fn can_receive_email(&self) -> bool {
        self.email.as_deref().is_some_and(|e| !e.is_empty())
            && self.traits.get("email_consent") != Some(&Value::Bool(false))
            && !self.unsubscribed
            && !self.email_bounced
    }

    /// Push needs a device token and `traits.push_consent` not false.
    pub fn can_receive_push(&self) -> bool {
        self.push_token.as_deref().is_some_and(|t| !t.is_empty())
            && self.traits.get("push_consent") != Some(&Value::Bool(false))
    }

    pub fn opted_out_of(&self, topic: &str) -> bool {
        self.topic_optouts.iter().any(|t| t == topic)
            || self
                .traits
                .get("unsubscribed_topics")
                .and_then(Value::as_array)
                .is_some_and(|topics| topics.iter().any(|t| t.as_str() == Some(topic)))
    }

    /// The `user` variable of conditions and templates.
    pub fn to_value(&self) -> Value {
        json!({ "id": self.id, "traits": self.traits })
    }
}

/// Address fields as nudge reads them from traits.
pub(crate) struct Addresses {
    pub email: Option<String>,
    pub push_token: Option<String>,
    pub timezone: Option<String>,
}

pub(crate) fn addresses(traits: &Map<String, Value>, device_token: Option<&str>) -> Addresses {
    let text = |k: &str| traits.get(k).and_then(Value::as_str).map(str::to_string);
    Addresses {
        email: text("email"),
        push_token: text("push_token").or_else(|| device_token.map(str::to_string)),
        timezone: text("timezone"),
    }
}

impl Store {
    pub async fn user(&self, id: &str) -> Result<Option<UserRecord>> {
        Ok(self.users(&[id]).await?.remove(id))
    }

    /// Several users at once, by id (missing ids are left out): two queries for a whole batch of
    /// decisions instead of two per decision.
    pub async fn users(&self, ids: &[&str]) -> Result<HashMap<String, UserRecord>> {
        let mut ids: Vec<&str> = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let mut users = HashMap::with_capacity(ids.len());
        // Well under SQLite's limit of bound parameters per statement.
        for chunk in ids.chunks(1_000) {
            let rows = with_db!(self, |pool| {
                let mut q = sqlx::QueryBuilder::new(
                    "SELECT id, traits, email, push_token, timezone, unsubscribed_at, bounced_email FROM users WHERE id IN (",
                );
                let mut list = q.separated(", ");
                for id in chunk {
                    list.push_bind(*id);
                }
                q.push(")");
                q.build_query_as::<(
                    String,
                    String,
                    Option<String>,
                    Option<String>,
                    Option<String>,
                    Option<i64>,
                    Option<String>,
                )>()
                .fetch_all(pool)
                .await?
            });
            let optouts = with_db!(self, |pool| {
                let mut q =
                    sqlx::QueryBuilder::new("SELECT user_id, topic FROM topic_optouts WHERE user_id IN (");
                let mut list = q.separated(", ");
                for id in chunk {
                    list.push_bind(*id);
                }
                q.push(")");
                q.build_query_as::<(String, String)>().fetch_all(pool).await?
            });
            let mut topics: HashMap<String, Vec<String>> = HashMap::new();
            for (user, topic) in optouts {
                topics.entry(user).or_default().push(topic);
            }
            for (id, traits, email, push_token, timezone, unsubscribed_at, bounced_email) in rows {
                let topic_optouts = topics.remove(&id).unwrap_or_default();
                // Only the address that bounced: a new address can be tried again.
                let email_bounced = bounced_email.is_some() && bounced_email == email;
                users.insert(
                    id.clone(),
                    UserRecord {
                        id,
                        traits: serde_json::from_str(&traits)?,
                        email,
                        push_token,
                        timezone,
                        unsubscribed: unsubscribed_at.is_some(),
                        email_bounced,
                        topic_optouts,
                    },
                );
            }
        }
        Ok(users)
    }

    /// Every user id, in order; cron campaigns fan out over these.
    pub async fn user_count(&self) -> Result<i64> {
        Ok(with_db!(self, |pool| {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM users")
                .fetch_one(pool)
                .await?
        }))
    }

    /// Records an unsubscribe: from the message's topic when it had one (the user keeps receiving
    /// other topics, as with a mailing list), otherwise from all email. Idempotent.
    pub async fn unsubscribe(&self, user_id: &str, topic: Option<&str>, at: DateTime<Utc>) -> Result<()> {
        let at = to_millis(at);
        with_db!(self, |pool| {
            use super::WritePool;
            let mut tx = pool.begin_write(&self.gate).await?;
            if let Some(topic) = topic {
                sqlx::query(
                    "INSERT INTO topic_optouts (user_id, topic, at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                )
                .bind(user_id)
                .bind(topic)
                .bind(at)
                .execute(&mut *tx)
                .await?;
            } else {
                sqlx::query(
                    "UPDATE users SET unsubscribed_at = COALESCE(unsubscribed_at, $2), updated_at = $2 WHERE id = $1",
                )
                .bind(user_id)
                .bind(at)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }
}
