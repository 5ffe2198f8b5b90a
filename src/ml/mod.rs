//! Machine learning: the simulated world with known truth, point-in-time features, calibrated
//! tree probabilities, the send-time, channel and propensity models, and the metrics that judge
//! them. See `docs/ml.md` for what exists, the measured figures and what remains.
//!
//! Data flow: [`simulate`] generates a history with a hidden truth (in memory, or stored through
//! ingestion and the bulk loader); [`features`] turns events before a cut-off into rows;
//! [`trees`] fits probabilities on those rows, [`linear`] the additive model blended with a
//! propensity forest; [`models`] trains the three models from a history
//! with a time split, baselines and a model card; [`metrics`] scores them. [`training`] runs the
//! models over the store's history and promotes winners, [`serving`] loads the models in service
//! for the engine (with a per-user feature cache), and [`report`] renders the model cards.

pub mod features;
pub mod linear;
pub mod metrics;
pub mod models;
pub mod report;
pub mod serving;
pub mod simulate;
pub mod training;
pub mod trees;
