//! Rule files: `rules/*.yaml` → a compiled, validated [`RuleSet`].
//!
//! Two stages: [`raw`] mirrors the YAML exactly (serde, unknown keys refused), [`compile`] turns
//! it into the typed [`model`] (durations, percentages, CEL, templates, cron), collecting every
//! problem as a [`Diagnostic`] with file:line:column. `validate`, start-up and hot reload
//! ([`watch`]) share this path: [`load_dir`]. The engine and delivery read the result through a
//! [`RulesHandle`], which a reload swaps atomically.

mod compile;
pub mod conditions;
pub mod duration;
pub mod model;
pub mod raw;
pub mod schema;
mod source_map;
pub mod templates;
pub mod watch;

use std::{
    collections::{BTreeMap, btree_map::Entry},
    path::Path,
    sync::Arc,
};

use arc_swap::ArcSwap;
pub use compile::{parse_clock, parse_percent, parse_schedule};
pub use model::*;

use self::compile::{Sink, SourceFile};

/// One problem in a rule file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based; 0 when the problem concerns the file (or folder) as a whole.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    pub message: String,
    /// The offending text, when there is one.
    pub snippet: Option<String>,
    pub hint: Option<String>,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)?;
        } else {
            write!(f, "{}:{}:{}: {}", self.file, self.line, self.column, self.message)?;
        }
        if let Some(s) = &self.snippet {
            write!(f, "\n    | {s}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\n    = hint: {h}")?;
        }
        Ok(())
    }
}

/// Everything a load found: the rules (or every error) and, apart, the warnings (things that
/// work but are probably not what the marketer wants, e.g. `holdout: 0%`).
#[derive(Debug)]
pub struct Report {
    pub result: Result<RuleSet, Vec<Diagnostic>>,
    pub warnings: Vec<Diagnostic>,
}

/// Loads and compiles every `*.yaml`/`*.yml` in `dir`. All problems are returned together,
/// sorted by file, line and column.
pub fn load_dir(dir: &Path) -> Result<RuleSet, Vec<Diagnostic>> {
    load_dir_with_warnings(dir).result
}

/// [`load_dir`], also returning the warnings (sorted like the errors).
pub fn load_dir_with_warnings(dir: &Path) -> Report {
    load(dir, &Folder::Disk)
}

/// [`load_dir_with_warnings`] over a folder held in memory: `files` maps paths relative to the
/// folder (`cart.yaml`, `templates/cart.html`) to their text. Nothing is read from disk; `dir` only
/// names the folder in diagnostics. The same compiler runs, so fuzzing and tests exercise exactly
/// what `validate` and start-up do.
pub fn load_files(dir: &Path, files: &BTreeMap<String, String>) -> Report {
    load(dir, &Folder::Memory(files))
}

/// Where rule files and templates are read from.
pub(crate) enum Folder<'a> {
    Disk,
    Memory(&'a BTreeMap<String, String>),
}

impl Folder<'_> {
    /// The text of the template at `relative` (to the rules folder `dir`), with the same path
    /// checks on both kinds of folder.
    pub(crate) fn read_template(
        &self,
        dir: &Path,
        relative: &str,
    ) -> Result<(std::path::PathBuf, String), templates::TemplatePathError> {
        match self {
            Folder::Disk => templates::read_template(dir, relative),
            Folder::Memory(files) => {
                let rel = templates::check_template_path(relative)?;
                let key = rel
                    .components()
                    .filter_map(|c| match c {
                        std::path::Component::Normal(part) => part.to_str(),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
                    .join("/");
                files
                    .get(&key)
                    .map(|text| (dir.join(rel), text.clone()))
                    .ok_or_else(|| templates::TemplatePathError::NotFound(relative.to_string()))
            }
        }
    }
}

fn load(dir: &Path, folder: &Folder<'_>) -> Report {
    let mut sink = Sink::default();
    let set = load_into(dir, folder, &mut sink);
    let by_position =
        |a: &Diagnostic, b: &Diagnostic| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column));
    sink.errors.sort_by(by_position);
    sink.warnings.sort_by(by_position);
    let result = match set {
        Some(set) if sink.errors.is_empty() => Ok(set),
        _ => Err(sink.errors),
    };
    Report {
        result,
        warnings: sink.warnings,
    }
}

const GLOBAL_FILES: [&str; 2] = ["_global.yaml", "_global.yml"];

fn load_into(dir: &Path, folder: &Folder<'_>, sink: &mut Sink) -> Option<RuleSet> {
    let whole = |message: String, hint: &str| Diagnostic {
        file: dir.display().to_string(),
        line: 0,
        column: 0,
        message,
        snippet: None,
        hint: Some(hint.to_string()),
    };
    let mut names: Vec<String> = match folder {
        Folder::Disk => {
            let entries = match std::fs::read_dir(dir) {
                Ok(entries) => entries,
                Err(e) => {
                    let message = if e.kind() == std::io::ErrorKind::NotFound {
                        "rules folder not found".to_string()
                    } else {
                        format!("cannot read the rules folder: {e}")
                    };
                    sink.errors.push(whole(
                        message,
                        "create it, or point `--rules` / NUDGE_RULES at your rules folder",
                    ));
                    return None;
                }
            };
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()))
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        }
        // Only the folder's own files are rule files; `templates/…` and the like are not.
        Folder::Memory(files) => files.keys().filter(|n| !n.contains('/')).cloned().collect(),
    };
    names.retain(|n| !n.starts_with('.') && (n.ends_with(".yaml") || n.ends_with(".yml")));
    names.sort();

    let mut global = Global::default();
    let mut global_file: Option<String> = None;
    let mut env = templates::environment();
    let mut campaigns: BTreeMap<String, Arc<Campaign>> = BTreeMap::new();
    // Campaign id → file that defined it first (files are read in name order).
    let mut defined_in: BTreeMap<String, String> = BTreeMap::new();

    for name in names {
        let path = dir.join(&name);
        let display = path.display().to_string();
        let read = match folder {
            Folder::Disk => std::fs::read_to_string(&path),
            Folder::Memory(files) => Ok(files.get(&name).cloned().unwrap_or_default()),
        };
        let text = match read {
            Ok(text) => text,
            Err(e) => {
                sink.errors.push(Diagnostic {
                    file: display,
                    line: 0,
                    column: 0,
                    message: format!("cannot read the file: {e}"),
                    snippet: None,
                    hint: Some("rule files are UTF-8 text".to_string()),
                });
                continue;
            }
        };
        let src = SourceFile::new(display, text);

        if GLOBAL_FILES.contains(&name.as_str()) {
            if let Some(first) = &global_file {
                sink.errors.push(Diagnostic {
                    file: src.name.clone(),
                    line: 0,
                    column: 0,
                    message: format!("a second global settings file (first: {first})"),
                    snippet: None,
                    hint: Some("keep one `_global.yaml`".to_string()),
                });
                continue;
            }
            global_file = Some(src.name.clone());
            if src.is_blank() {
                continue;
            }
            match src.parse::<raw::RawGlobal>() {
                Ok(raw) => global = compile::compile_global(&src, raw, sink),
                Err(d) => sink.errors.push(d),
            }
            continue;
        }

        if src.is_blank() {
            sink.errors.push(Diagnostic {
                file: src.name.clone(),
                line: 0,
                column: 0,
                message: "empty campaign file".to_string(),
                snippet: None,
                hint: Some(
                    "a campaign needs at least `campaign`, `when` and `then`; delete the file to remove it"
                        .into(),
                ),
            });
            continue;
        }
        let raw = match src.parse::<raw::RawCampaign>() {
            Ok(raw) => raw,
            Err(d) => {
                sink.errors.push(d);
                continue;
            }
        };
        match defined_in.entry(raw.campaign.clone()) {
            Entry::Occupied(first) => {
                let pos = src.map.value("campaign");
                sink.errors.push(Diagnostic {
                    file: src.name.clone(),
                    line: pos.line,
                    column: pos.column,
                    message: format!(
                        "duplicate campaign id `{}`: also defined in {}",
                        raw.campaign,
                        first.get()
                    ),
                    snippet: Some(raw.campaign.clone()),
                    hint: Some(
                        "campaign ids are unique across files; never reuse an id for another campaign".into(),
                    ),
                });
                continue;
            }
            Entry::Vacant(slot) => {
                slot.insert(name.clone());
            }
        }
        if let Some(campaign) = compile::compile_campaign(&src, raw, dir, folder, &mut env, sink) {
            campaigns.insert(campaign.id.clone(), Arc::new(campaign));
        }
    }

    Some(RuleSet {
        dir: dir.to_path_buf(),
        global,
        campaigns,
        templates: Arc::new(env),
    })
}

/// The rules in service, swapped as a whole on reload. Readers take an [`Arc`] snapshot and keep
/// a consistent set for as long as they hold it.
#[derive(Debug)]
pub struct RulesHandle(ArcSwap<RuleSet>);

impl RulesHandle {
    pub fn new(set: RuleSet) -> Self {
        RulesHandle(ArcSwap::from_pointee(set))
    }

    pub fn current(&self) -> Arc<RuleSet> {
        self.0.load_full()
    }

    pub fn replace(&self, set: RuleSet) {
        self.0.store(Arc::new(set));
    }
}

/// Compiles `dir` and swaps it in when it compiles; otherwise keeps the current rules and logs
/// every diagnostic. Returns the number of campaigns now in service, or the diagnostics.
pub fn reload(dir: &Path, handle: &RulesHandle) -> Result<usize, Vec<Diagnostic>> {
    let report = load_dir_with_warnings(dir);
    for w in &report.warnings {
        tracing::debug!(file = %w.file, line = w.line, column = w.column, "rule warning: {}", w.message);
    }
    match report.result {
        Ok(set) => {
            let campaigns = set.campaigns.len();
            handle.replace(set);
            tracing::info!(campaigns, dir = %dir.display(), "RulesReloaded");
            metrics::counter!("nudge_rules_reloaded_total").increment(1);
            Ok(campaigns)
        }
        Err(diagnostics) => {
            for d in &diagnostics {
                tracing::warn!(at = %format!("{}:{}:{}", d.file, d.line, d.column), hint = d.hint.as_deref().unwrap_or(""), "{}", d.message);
            }
            tracing::warn!(
                errors = diagnostics.len(),
                dir = %dir.display(),
                "RulesRejected: keeping the rules in service"
            );
            metrics::counter!("nudge_rules_rejected_total").increment(1);
            Err(diagnostics)
        }
    }
}

#[cfg(test)]
mod tests;
