//! nudge: marketing automation as code.
//!
//! Data flows through the modules in this order: [`rules`] (campaign files) and [`events`]
//! (Segment-compatible ingestion) feed the [`store`]; the [`engine`] decides who gets what and
//! writes the outbox; [`delivery`] sends it; [`tracking`] turns opens, clicks and unsubscribes back
//! into events. [`http`] and [`cli`] are the edges.

pub mod app;
pub mod bench;
pub mod cli;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod engine;
pub mod events;
pub mod experiments;
pub mod fault;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod ml;
pub mod outbox;
pub mod rules;
pub mod store;
pub mod telemetry;
pub mod tracking;
