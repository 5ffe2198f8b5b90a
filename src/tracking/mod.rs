//! Tracking: signed tokens for opens, clicks and unsubscribes, and what they turn into (events
//! `email_opened`, `email_clicked`, `push_opened`, and unsubscribes that take effect at once).

pub mod engagement;
pub mod tokens;
