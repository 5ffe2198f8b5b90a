//! Bulk history loads (`nudge simulate` at 50,000 users × 60 days, history imports): the same rows
//! ingestion writes, without triggering anything, in large transactions of multi-row INSERTs.
//!
//! Events that touch users (identify calls, a device token) go through [`Store::ingest`] so traits
//! merge exactly as they do there; plain track events are written `ROWS_PER_STATEMENT` to an
//! INSERT (7 binds a row stays far below SQLite's and PostgreSQL's bind limits) and
//! `ROWS_PER_TRANSACTION` to a commit. Idempotent on the event id, like ingestion.

use chrono::Utc;

use super::{
    IngestOutcome, Result, Store, WritePool,
    ingest::{insert_events, properties_of},
    with_db,
};
use crate::{
    clock::to_millis,
    events::{EventKind, IncomingEvent},
};

const ROWS_PER_STATEMENT: usize = 500;
const ROWS_PER_TRANSACTION: usize = 50_000;
/// Events that touch users, handed to ingestion per transaction.
const USER_BATCH: usize = 5_000;

impl Store {
    /// Stores a history without triggering campaigns; the same rows as
    /// `Engine::ingest_history`, much faster for millions of events.
    pub async fn bulk_ingest_history(&self, events: &[IncomingEvent]) -> Result<IngestOutcome> {
        let (touching, plain): (Vec<&IncomingEvent>, Vec<&IncomingEvent>) = events
            .iter()
            .partition(|e| e.kind != EventKind::Track || !e.traits.is_empty() || e.device_token.is_some());
        let mut outcome = IngestOutcome::default();
        let touching: Vec<IncomingEvent> = touching.into_iter().cloned().collect();
        for chunk in touching.chunks(USER_BATCH) {
            let o = self.ingest(chunk, None).await?;
            outcome.stored += o.stored;
            outcome.duplicates += o.duplicates;
        }
        let received_at = to_millis(Utc::now());
        for transaction in plain.chunks(ROWS_PER_TRANSACTION) {
            let mut stored = 0usize;
            with_db!(self, |pool| {
                let mut tx = pool.begin_write(&self.gate).await?;
                for rows in transaction.chunks(ROWS_PER_STATEMENT) {
                    let properties = properties_of(rows.iter().copied())?;
                    let mut insert = insert_events(rows.iter().copied().zip(&properties), received_at);
                    stored += insert.build().execute(&mut *tx).await?.rows_affected() as usize;
                }
                tx.commit().await?;
            });
            outcome.stored += stored;
            outcome.duplicates += transaction.len() - stored;
        }
        Ok(outcome)
    }
}
