//! nudge's integration tests: one binary (it compiles once), themed modules, shared `util`.
//!
//! PostgreSQL tests run when `NUDGE_TEST_POSTGRES_URL` is set (e.g.
//! `postgres://postgres@127.0.0.1:5432/test`); each test gets a fresh database. Without it they
//! print `skipped (no NUDGE_TEST_POSTGRES_URL): <name>` and pass.

mod cli;
mod daemon;
mod delivery;
mod dry_run;
mod engine;
mod forgery;
mod holdout_property;
mod holdouts;
mod hostile;
mod http;
mod import;
mod lift;
mod ml;
mod predictions;
mod quiet_hours;
mod reliability;
mod report_html;
mod secrets;
mod segment_client;
mod smtp;
mod util;
