//! `GET /v1/reports/lift`: the lift report over HTTP, in the same shapes as `nudge report lift`;
//! `GET /v1/reports/lift/history`: the daily snapshots, as `nudge report lift --history`.

use axum::{
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;

use super::{AppState, error::ApiError};
use crate::{
    experiments::{
        lift::{LiftError, lift_reports},
        report::{Format, render},
        snapshots::render_history,
    },
    rules::duration::parse_duration,
};

#[derive(Debug, Deserialize)]
pub struct LiftParams {
    /// One campaign; all campaigns with a goal when absent.
    campaign: Option<String>,
    /// How far back, e.g. `30d`; since the first assignment when absent.
    since: Option<String>,
    /// `json` (default), `csv`, `html` or `table`.
    format: Option<String>,
    /// Confidence level, default 0.95.
    confidence: Option<f64>,
}

pub async fn lift(State(state): State<AppState>, Query(p): Query<LiftParams>) -> Result<Response, ApiError> {
    let bad = |field: &'static str, message: String| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_parameter", message).with_field(field)
    };
    let format: Format = match p.format.as_deref() {
        None => Format::Json,
        Some(f) => f.parse().map_err(|_| {
            bad(
                "format",
                format!("unknown format `{f}`: json, csv, html or table"),
            )
        })?,
    };
    let engine = &state.engine;
    let now = engine.now();
    let since = match p.since.as_deref() {
        Some(s) => Some(now - parse_duration(s).map_err(|e| bad("since", e))?),
        None => None,
    };
    let rules = engine.rules.current();
    let reports = lift_reports(
        &engine.store,
        &rules,
        p.campaign.as_deref(),
        since,
        now,
        p.confidence.unwrap_or(0.95),
    )
    .await
    .map_err(|e| match e {
        LiftError::Store(e) => ApiError::unavailable(&e),
        LiftError::UnknownCampaign(_) => ApiError::not_found(e.to_string()).with_field("campaign"),
        LiftError::NoGoal(_) => bad("campaign", e.to_string()),
        LiftError::Confidence(_) => bad("confidence", e.to_string()),
    })?;
    let content_type = match format {
        Format::Json => "application/json",
        Format::Csv => "text/csv; charset=utf-8",
        Format::Html => "text/html; charset=utf-8",
        Format::Table => "text/plain; charset=utf-8",
    };
    Ok(([(header::CONTENT_TYPE, content_type)], render(&reports, format)).into_response())
}

#[derive(Debug, Deserialize)]
pub struct HistoryParams {
    /// One campaign; all campaigns when absent.
    campaign: Option<String>,
    /// `json` (default), `csv` or `table`.
    format: Option<String>,
}

pub async fn lift_history(
    State(state): State<AppState>,
    Query(p): Query<HistoryParams>,
) -> Result<Response, ApiError> {
    let bad = |message: String| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_parameter", message).with_field("format")
    };
    let format: Format = match p.format.as_deref() {
        None => Format::Json,
        Some(f) => f
            .parse()
            .map_err(|_| bad(format!("unknown format `{f}`: json, csv or table")))?,
    };
    let rows = state
        .engine
        .store
        .lift_snapshots(p.campaign.as_deref())
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    let text = render_history(&rows, format).map_err(bad)?;
    let content_type = match format {
        Format::Csv => "text/csv; charset=utf-8",
        Format::Table => "text/plain; charset=utf-8",
        _ => "application/json",
    };
    Ok(([(header::CONTENT_TYPE, content_type)], text).into_response())
}
