//! Experiments: who is in which arm (holdouts, the global control group), frequency caps, and the
//! lift of each campaign against its holdout.
//! Plain functions over plain data; the store and engine call them. [`lift`] reads the store: it
//! turns assignment and goal-event counts into [`lift::LiftReport`]s, which [`report`] renders as
//! a table, JSON, CSV or an HTML page; [`snapshots`] stores one report per campaign per day.

pub mod arms;
pub mod caps;
pub mod lift;
pub mod report;
pub mod snapshots;
pub mod stats;
