//! `nudge import FILE`: history from an NDJSON or CSV file, validated like the HTTP API.
//!
//! NDJSON holds one Segment call per line (`type` defaults to `track`). CSV has a header naming
//! `type`, `userId`, `anonymousId`, `event`, `name`, `timestamp`, `sentAt`, `messageId` and any
//! `properties.<key>`, `traits.<key>` or `context.<path>` columns; in the latter, cells that read
//! as numbers or booleans become those, empty cells are left out. Invalid lines are counted and
//! the first few reported with their line number and field; valid ones are stored in batches
//! (1,000 by default) through [`Engine::ingest_history`], which triggers no campaign — an import
//! of last year must not send last year's reminders — unless [`ImportOptions::trigger`] asks for
//! [`Engine::ingest`]. Re-importing a file is safe: events with a known `messageId` are no-ops.
//! Progress goes to stderr (hidden when stderr is not a terminal).

use std::{
    fmt,
    fs::File,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Map, Value};

use super::{
    IncomingEvent,
    segment::{self, CallType, Envelope, Expect, MAX_EVENT_BYTES, RejectCode, Rejection},
};
use crate::{engine::Engine, store::StoreError};

/// The file formats `nudge import` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ndjson,
    Csv,
}

impl Format {
    /// By extension: `.csv` is CSV; `.ndjson`, `.jsonl` and `.json` are NDJSON.
    pub fn from_path(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "csv" => Some(Format::Csv),
            "ndjson" | "jsonl" | "json" => Some(Format::Ndjson),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Enter campaigns as live events would (`Engine::ingest`); off by default.
    pub trigger: bool,
    /// Events stored per transaction.
    pub batch_size: usize,
    /// How many rejected lines are kept with their reason (all are counted).
    pub max_reported: usize,
    /// Draw a progress bar on stderr (still hidden when stderr is not a terminal).
    pub progress: bool,
    /// Overrides detection by extension.
    pub format: Option<Format>,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            trigger: false,
            batch_size: 1_000,
            max_reported: 20,
            progress: true,
            format: None,
        }
    }
}

/// One refused line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineRejection {
    /// 1-based line number in the file.
    pub line: usize,
    pub code: &'static str,
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for LineRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "line {}: {field}: {}", self.line, self.message),
            None => write!(f, "line {}: {}", self.line, self.message),
        }
    }
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportSummary {
    /// Calls read (blank lines not counted).
    pub records: usize,
    pub stored: usize,
    /// Events whose `messageId` was already stored.
    pub duplicates: usize,
    /// `alias` and `group` calls, accepted and ignored.
    pub ignored: usize,
    pub rejected: usize,
    /// The first [`ImportOptions::max_reported`] rejections.
    pub rejections: Vec<LineRejection>,
    /// Campaign entries created (only with [`ImportOptions::trigger`]).
    pub entries: usize,
}

impl fmt::Display for ImportSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} records: {} stored, {} duplicates, {} ignored, {} rejected",
            self.records, self.stored, self.duplicates, self.ignored, self.rejected
        )?;
        if self.entries > 0 {
            write!(f, ", {} campaign entries", self.entries)?;
        }
        for r in &self.rejections {
            write!(f, "\n  {r}")?;
        }
        if self.rejected > self.rejections.len() {
            write!(f, "\n  … and {} more", self.rejected - self.rejections.len())?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: unknown format; use a .ndjson, .jsonl or .csv file")]
    UnknownFormat { path: PathBuf },
    #[error("{path}: CSV header: {message}")]
    CsvHeader { path: PathBuf, message: String },
    /// The store failed; `stored` events (whole batches) were committed before it did.
    #[error("store failed after {stored} events were stored: {source}")]
    Store {
        stored: usize,
        #[source]
        source: StoreError,
    },
}

/// Imports `path` into the store. See the module docs.
pub async fn import(engine: &Engine, path: &Path, opts: ImportOptions) -> Result<ImportSummary, ImportError> {
    let io = |source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let format =
        opts.format
            .or_else(|| Format::from_path(path))
            .ok_or_else(|| ImportError::UnknownFormat {
                path: path.to_path_buf(),
            })?;
    let file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let progress = if opts.progress {
        ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    progress.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg} ({eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut run = Run {
        engine,
        opts: &opts,
        summary: ImportSummary::default(),
        batch: Vec::with_capacity(opts.batch_size),
    };
    match format {
        Format::Ndjson => read_ndjson(&mut run, BufReader::new(file), &progress, path).await?,
        Format::Csv => read_csv(&mut run, file, &progress, path).await?,
    }
    run.flush().await?;
    progress.finish_and_clear();
    Ok(run.summary)
}

struct Run<'a> {
    engine: &'a Engine,
    opts: &'a ImportOptions,
    summary: ImportSummary,
    batch: Vec<IncomingEvent>,
}

impl Run<'_> {
    async fn accept(
        &mut self,
        line: usize,
        parsed: Result<Option<IncomingEvent>, Rejection>,
    ) -> Result<(), ImportError> {
        self.summary.records += 1;
        match parsed {
            Ok(Some(event)) => {
                self.batch.push(event);
                if self.batch.len() >= self.opts.batch_size.max(1) {
                    self.flush().await?;
                }
            }
            Ok(None) => self.summary.ignored += 1,
            Err(r) => {
                self.summary.rejected += 1;
                metrics::counter!("nudge_events_rejected_total", "reason" => r.code.as_str()).increment(1);
                if self.summary.rejections.len() < self.opts.max_reported {
                    self.summary.rejections.push(LineRejection {
                        line,
                        code: r.code.as_str(),
                        field: r.field,
                        message: r.message,
                    });
                }
            }
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), ImportError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let outcome = if self.opts.trigger {
            self.engine.ingest(&self.batch).await
        } else {
            self.engine.ingest_history(&self.batch).await
        }
        .map_err(|source| ImportError::Store {
            stored: self.summary.stored,
            source,
        })?;
        self.summary.stored += outcome.stored;
        self.summary.duplicates += outcome.duplicates;
        self.summary.entries += outcome.entries;
        self.batch.clear();
        Ok(())
    }

    fn envelope(&self) -> Envelope<'static> {
        Envelope::at(self.engine.now())
    }
}

async fn read_ndjson(
    run: &mut Run<'_>,
    mut reader: impl BufRead,
    progress: &ProgressBar,
    path: &Path,
) -> Result<(), ImportError> {
    let mut line = String::new();
    let mut number = 0;
    loop {
        line.clear();
        let read = reader.read_line(&mut line).map_err(|source| ImportError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if read == 0 {
            return Ok(());
        }
        number += 1;
        progress.inc(read as u64);
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let parsed = if text.len() > MAX_EVENT_BYTES {
            Err(Rejection::new(
                RejectCode::EventTooLarge,
                None,
                format!(
                    "line is {} bytes; the limit is {MAX_EVENT_BYTES} bytes (32 KB)",
                    text.len()
                ),
            ))
        } else {
            serde_json::from_str::<Value>(text)
                .map_err(|e| Rejection::new(RejectCode::InvalidJson, None, format!("not valid JSON: {e}")))
                .and_then(|v| {
                    segment::parse_call(
                        &v,
                        Expect::FromField {
                            default: Some(CallType::Track),
                        },
                        &run.envelope(),
                        "",
                    )
                })
        };
        run.accept(number, parsed).await?;
    }
}

/// Columns a CSV may have besides `properties.*`, `traits.*` and `context.*`.
const CSV_COLUMNS: [&str; 8] = [
    "type",
    "userId",
    "anonymousId",
    "event",
    "name",
    "timestamp",
    "sentAt",
    "messageId",
];

async fn read_csv(
    run: &mut Run<'_>,
    file: File,
    progress: &ProgressBar,
    path: &Path,
) -> Result<(), ImportError> {
    let header_error = |message: String| ImportError::CsvHeader {
        path: path.to_path_buf(),
        message,
    };
    let mut reader = csv::ReaderBuilder::new().flexible(false).from_reader(file);
    let headers = reader.headers().map_err(|e| header_error(e.to_string()))?.clone();
    for h in &headers {
        let nested = ["properties.", "traits.", "context."]
            .iter()
            .any(|p| h.strip_prefix(p).is_some_and(|rest| !rest.is_empty()));
        if !nested && !CSV_COLUMNS.contains(&h) {
            return Err(header_error(format!(
                "unknown column {h:?}: expected {}, or properties.<key>, traits.<key>, context.<path>",
                CSV_COLUMNS.join(", ")
            )));
        }
    }
    if !headers.iter().any(|h| h == "userId" || h == "anonymousId") {
        return Err(header_error("a userId or anonymousId column is required".into()));
    }
    let mut record = csv::StringRecord::new();
    loop {
        let line = reader.position().line() as usize;
        match reader.read_record(&mut record) {
            Ok(false) => return Ok(()),
            Ok(true) => {
                progress.set_position(reader.position().byte());
                let line = record.position().map_or(line, |p| p.line() as usize);
                let value = csv_call(&headers, &record);
                let parsed = segment::check_event_size(&value, None).and_then(|()| {
                    segment::parse_call(
                        &value,
                        Expect::FromField {
                            default: Some(CallType::Track),
                        },
                        &run.envelope(),
                        "",
                    )
                });
                run.accept(line, parsed).await?;
            }
            Err(e) => match e.kind() {
                csv::ErrorKind::Io(_) => {
                    return Err(ImportError::Io {
                        path: path.to_path_buf(),
                        source: std::io::Error::other(e.to_string()),
                    });
                }
                _ => {
                    let line = e.position().map_or(line, |p| p.line() as usize);
                    let message = match e.kind() {
                        csv::ErrorKind::UnequalLengths {
                            expected_len, len, ..
                        } => format!("{len} fields, the header has {expected_len}"),
                        _ => e.to_string(),
                    };
                    let rejection = Rejection::new(RejectCode::InvalidType, None, message);
                    run.accept(line, Err(rejection)).await?;
                }
            },
        }
    }
}

/// One CSV row as the JSON call it stands for.
fn csv_call(headers: &csv::StringRecord, record: &csv::StringRecord) -> Value {
    let mut call = Map::new();
    for (h, cell) in headers.iter().zip(record.iter()) {
        if cell.is_empty() {
            continue;
        }
        match h.split_once('.') {
            Some((top, rest)) => {
                let mut slot = call
                    .entry(top.to_string())
                    .or_insert_with(|| Value::Object(Map::new()));
                let mut parts = rest.split('.').peekable();
                while let Some(part) = parts.next() {
                    let Some(obj) = slot.as_object_mut() else { break };
                    if parts.peek().is_none() {
                        obj.insert(part.to_string(), cell_value(cell));
                        break;
                    }
                    slot = obj
                        .entry(part.to_string())
                        .or_insert_with(|| Value::Object(Map::new()));
                }
            }
            None => {
                call.insert(h.to_string(), Value::String(cell.to_string()));
            }
        }
    }
    Value::Object(call)
}

/// A cell as JSON: booleans and numbers as such, except numbers written with a leading zero or
/// sign (zip codes, phone numbers), which stay text.
fn cell_value(cell: &str) -> Value {
    match cell {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    let digits = cell.strip_prefix('-').unwrap_or(cell);
    let leading_zero = digits.len() > 1 && digits.starts_with('0') && !digits.starts_with("0.");
    let numeric = !digits.is_empty()
        && digits.starts_with(|c: char| c.is_ascii_digit())
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.');
    if numeric && !leading_zero {
        if let Ok(n) = cell.parse::<i64>() {
            return Value::from(n);
        }
        if let Some(n) = cell.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
            return Value::Number(n);
        }
    }
    Value::String(cell.to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn cells_become_typed_values() {
        assert_eq!(cell_value("true"), json!(true));
        assert_eq!(cell_value("42"), json!(42));
        assert_eq!(cell_value("-3"), json!(-3));
        assert_eq!(cell_value("19.99"), json!(19.99));
        assert_eq!(cell_value("0.5"), json!(0.5));
        assert_eq!(cell_value("0"), json!(0));
        assert_eq!(cell_value("007"), json!("007"));
        assert_eq!(cell_value("1e5"), json!("1e5"));
        assert_eq!(cell_value("pro"), json!("pro"));
        assert_eq!(cell_value("1.2.3"), json!("1.2.3"));
    }

    #[test]
    fn csv_rows_nest_prefixed_columns() {
        let headers = csv::StringRecord::from(vec![
            "userId",
            "event",
            "properties.value",
            "properties.sku",
            "context.device.token",
            "traits.plan",
        ]);
        let row = csv::StringRecord::from(vec!["u1", "bought", "12.5", "A-1", "tok", ""]);
        assert_eq!(
            csv_call(&headers, &row),
            json!({"userId": "u1", "event": "bought", "properties": {"value": 12.5, "sku": "A-1"},
                   "context": {"device": {"token": "tok"}}})
        );
    }

    #[test]
    fn format_by_extension() {
        assert_eq!(Format::from_path(Path::new("a.CSV")), Some(Format::Csv));
        assert_eq!(Format::from_path(Path::new("a.jsonl")), Some(Format::Ndjson));
        assert_eq!(Format::from_path(Path::new("a.txt")), None);
    }
}
