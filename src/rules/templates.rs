//! Message templates: every campaign's subject, body, title in ONE minijinja environment.
//!
//! Takes template text (inline in a rule or a file under the rules folder) and registers it as
//! `"<campaign>/<part>"` (see [`TemplatePart`]); hands on the environment inside the
//! [`RuleSet`](super::RuleSet), which delivery renders from. Templates are parsed at load, so a
//! syntax error is a `validate` error, never a send-time failure.
//!
//! Security: templates are written by marketers but rendered with user data, so the environment
//! has no loader (a template cannot read files; `include` finds only other registered templates),
//! no access to process environment variables, bounded work (fuel), bounded recursion, and
//! [`render`] bounds the output size and the time spent writing it. User and event data enter only
//! as values in the context, never as template source. HTML bodies are auto-escaped: user data
//! cannot inject markup.

use std::{
    path::{Component, Path, PathBuf},
    time::{Duration, Instant},
};

use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};

/// What the engine puts in every template's context.
pub const CONTEXT_VARIABLES: [&str; 4] = ["user", "event", "campaign", "unsubscribe_url"];

/// Instructions a render may execute: generous for a message, fatal for a runaway loop.
const FUEL: u64 = 100_000;
/// Nesting depth of loops, blocks and macro calls.
const RECURSION_LIMIT: usize = 32;
/// Most bytes one template may render: far more than any email, far less than a memory problem.
pub const MAX_OUTPUT_BYTES: usize = 256 * 1024;
/// Longest one render may keep writing. Fuel already bounds the work; this is the backstop for a
/// machine so loaded that bounded work is still slow, so one render cannot stall a decision batch.
pub const RENDER_TIME_LIMIT: Duration = Duration::from_secs(2);

/// HTML bodies are wrapped in an explicit autoescape block. Template names carry no extension
/// (`cart/email_body`), so the name-based default cannot tell HTML from text; the wrapper sits on
/// the first line only, so error line numbers are unchanged.
const HTML_OPEN: &str = "{% autoescape 'html' %}";
const HTML_CLOSE: &str = "{% endautoescape %}";

/// The part of a message a template renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplatePart {
    EmailSubject,
    EmailBody,
    PushTitle,
    PushBody,
}

impl TemplatePart {
    pub fn as_str(self) -> &'static str {
        match self {
            TemplatePart::EmailSubject => "email_subject",
            TemplatePart::EmailBody => "email_body",
            TemplatePart::PushTitle => "push_title",
            TemplatePart::PushBody => "push_body",
        }
    }

    /// The registered template name, e.g. `cart_abandonment/email_body`.
    pub fn name(self, campaign: &str) -> String {
        format!("{campaign}/{}", self.as_str())
    }
}

/// The configured, empty environment: the one [`load_dir`](super::load_dir) fills, and the one to
/// build when rendering templates of your own with the same rules.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(RECURSION_LIMIT);
    // A missing optional trait renders as empty instead of failing the send; typos in top-level
    // names are caught at load (see `register`).
    env.set_undefined_behavior(UndefinedBehavior::Chainable);
    // Escaping is chosen per template at registration (see HTML_OPEN), not by name.
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env
}

/// Renders the registered template `name` with `ctx` under every limit: fuel and recursion (set on
/// the environment), [`MAX_OUTPUT_BYTES`] and [`RENDER_TIME_LIMIT`]. Every way a template can
/// misbehave ends here as an error that names what was exceeded; none panics.
pub fn render(env: &Environment<'_>, name: &str, ctx: minijinja::Value) -> Result<String, minijinja::Error> {
    let template = env.get_template(name)?;
    let mut out = BoundedOutput {
        buf: Vec::new(),
        deadline: Instant::now() + RENDER_TIME_LIMIT,
        exceeded: None,
    };
    if let Err(e) = template.render_captured_to(ctx, &mut out) {
        return Err(match out.exceeded {
            Some(limit) => minijinja::Error::new(ErrorKind::InvalidOperation, limit),
            None => e,
        });
    }
    // Writes are whole `str` chunks and a refused chunk is not kept, so the buffer is UTF-8.
    String::from_utf8(out.buf)
        .map_err(|_| minijinja::Error::new(ErrorKind::InvalidOperation, "rendered output is not UTF-8"))
}

/// The render's output buffer: refuses the write that would pass the size limit or the deadline.
struct BoundedOutput {
    buf: Vec<u8>,
    deadline: Instant,
    /// What was exceeded, once a write was refused (minijinja reports only "write failed").
    exceeded: Option<&'static str>,
}

impl std::io::Write for BoundedOutput {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len().saturating_add(data.len()) > MAX_OUTPUT_BYTES {
            self.exceeded = Some("rendered output is larger than the 256 KiB limit");
        } else if Instant::now() > self.deadline {
            self.exceeded = Some("rendering took longer than the 2 s limit");
        } else {
            self.buf.extend_from_slice(data);
            return Ok(data.len());
        }
        Err(std::io::Error::other(self.exceeded.unwrap_or("limit")))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A template that did not compile, at a 1-based line and column of its own text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TemplateError {
    pub line: usize,
    pub column: usize,
    /// Character offset of (line, column) in the template text.
    pub offset: usize,
    pub message: String,
    pub hint: Option<String>,
}

/// Parses `source` and registers it as `name`. `allowed` are the top-level variables the
/// template may use (scheduled campaigns have no `event`).
pub fn register(
    env: &mut Environment<'static>,
    name: &str,
    source: &str,
    html: bool,
    allowed: &[&str],
) -> Result<(), TemplateError> {
    let text = if html {
        format!("{HTML_OPEN}{source}{HTML_CLOSE}")
    } else {
        source.to_string()
    };
    let prefix = if html { HTML_OPEN.len() } else { 0 };
    if let Err(err) = env.add_template_owned(name.to_string(), text) {
        let byte = err.range().map(|r| r.start.saturating_sub(prefix));
        let (line, column, offset) = match byte {
            Some(b) => position_of_byte(source, b),
            None => line_start(source, err.line().unwrap_or(1)),
        };
        let detail = err
            .detail()
            .map(str::to_string)
            .unwrap_or_else(|| err.kind().to_string());
        return Err(TemplateError {
            line,
            column,
            offset,
            message: format!("template syntax error: {detail}"),
            hint: Some(
                "templates are minijinja (Jinja2): `{{ user.traits.first_name }}`, `{% if … %}…{% endif %}`"
                    .into(),
            ),
        });
    }
    let unknown: Vec<String> = {
        let globals: Vec<String> = env.globals().map(|(n, _)| n.to_string()).collect();
        let template = env.get_template(name).map_err(|e| TemplateError {
            line: 1,
            column: 1,
            offset: 0,
            message: format!("template could not be registered: {e}"),
            hint: None,
        })?;
        let mut names: Vec<String> = template
            .undeclared_variables(false)
            .into_iter()
            .filter(|v| !allowed.contains(&v.as_str()) && !globals.contains(v))
            .collect();
        names.sort();
        names
    };
    if let Some(first) = unknown.first() {
        env.remove_template(name);
        let hint = if first == "event" && !allowed.contains(&"event") {
            "a scheduled campaign has no trigger event; use `user.…`".to_string()
        } else {
            format!(
                "templates can use {}",
                allowed
                    .iter()
                    .map(|v| format!("`{v}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        return Err(TemplateError {
            line: 1,
            column: 1,
            offset: 0,
            message: format!("template uses unknown variable `{}`", unknown.join("`, `")),
            hint: Some(hint),
        });
    }
    Ok(())
}

/// True for a body that should be HTML-escaped: a `.html`/`.htm` file or inline text starting
/// with `<`.
pub fn is_html(template_path: Option<&str>, inline: Option<&str>) -> bool {
    match (template_path, inline) {
        (Some(path), _) => {
            let ext = Path::new(path).extension().and_then(|e| e.to_str()).unwrap_or("");
            ext.eq_ignore_ascii_case("html") || ext.eq_ignore_ascii_case("htm")
        }
        (None, Some(body)) => body.trim_start().starts_with('<'),
        (None, None) => false,
    }
}

/// Why a `template:` path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplatePathError {
    #[error("template path `{0}` must be relative to the rules folder")]
    Absolute(String),
    #[error("template path `{0}` leaves the rules folder")]
    Escapes(String),
    #[error("template file `{0}` not found")]
    NotFound(String),
    #[error("template file `{0}` could not be read: {1}")]
    Unreadable(String, String),
}

/// `relative` as a path, refused when absolute or when it has `..` (or a root, or a prefix).
pub fn check_template_path(relative: &str) -> Result<&Path, TemplatePathError> {
    let rel = Path::new(relative);
    if rel.is_absolute() || relative.starts_with(['/', '\\']) {
        return Err(TemplatePathError::Absolute(relative.to_string()));
    }
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(TemplatePathError::Escapes(relative.to_string()));
    }
    Ok(rel)
}

/// Reads the template at `relative` (to the rules folder `dir`), refusing absolute paths, `..`
/// and symlinks that lead out of the folder.
pub fn read_template(dir: &Path, relative: &str) -> Result<(PathBuf, String), TemplatePathError> {
    let rel = check_template_path(relative)?;
    let path = dir.join(rel);
    let real = path
        .canonicalize()
        .map_err(|_| TemplatePathError::NotFound(relative.to_string()))?;
    let root = dir
        .canonicalize()
        .map_err(|_| TemplatePathError::NotFound(relative.to_string()))?;
    if !real.starts_with(&root) {
        return Err(TemplatePathError::Escapes(relative.to_string()));
    }
    let text = std::fs::read_to_string(&real)
        .map_err(|e| TemplatePathError::Unreadable(relative.to_string(), e.to_string()))?;
    Ok((path, text))
}

/// (line, column, char offset), 1-based, of the byte offset `byte` in `source`.
fn position_of_byte(source: &str, byte: usize) -> (usize, usize, usize) {
    let byte = byte.min(source.len());
    let before = source.get(..byte).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    (line, column, before.chars().count())
}

fn line_start(source: &str, line: usize) -> (usize, usize, usize) {
    let offset: usize = source
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(|l| l.chars().count())
        .sum();
    (line.max(1), 1, offset)
}

#[cfg(test)]
mod tests {
    use minijinja::context;

    use super::*;

    #[test]
    fn html_bodies_are_escaped_and_text_is_not() {
        let mut env = environment();
        register(
            &mut env,
            "c/email_body",
            "<p>{{ user }}</p>",
            true,
            &CONTEXT_VARIABLES,
        )
        .expect("ok");
        register(&mut env, "c/push_body", "{{ user }}", false, &CONTEXT_VARIABLES).expect("ok");
        let ctx = context! { user => "<b>&" };
        assert_eq!(
            env.get_template("c/email_body")
                .and_then(|t| t.render(&ctx))
                .ok()
                .as_deref(),
            Some("<p>&lt;b&gt;&amp;</p>")
        );
        assert_eq!(
            env.get_template("c/push_body")
                .and_then(|t| t.render(&ctx))
                .ok()
                .as_deref(),
            Some("<b>&")
        );
    }

    #[test]
    fn syntax_errors_point_into_the_template() {
        let mut env = environment();
        let err = register(
            &mut env,
            "c/email_body",
            "<p>\n  {{ user.name </p>",
            true,
            &CONTEXT_VARIABLES,
        )
        .expect_err("broken");
        assert_eq!(err.line, 2, "{err:?}");
        assert!(err.message.starts_with("template syntax error"), "{err:?}");
        let err = register(
            &mut env,
            "c/email_subject",
            "Hi {% if %}",
            false,
            &CONTEXT_VARIABLES,
        )
        .expect_err("broken");
        assert_eq!((err.line, err.column), (1, 10), "{err:?}");
    }

    #[test]
    fn unknown_variables_are_refused() {
        let mut env = environment();
        let err = register(
            &mut env,
            "c/push_body",
            "{{ evnt.x }} {{ range(3) }}",
            false,
            &CONTEXT_VARIABLES,
        )
        .expect_err("unknown");
        assert!(err.message.contains("`evnt`"), "{err:?}");
        let ok = register(
            &mut env,
            "c/push_title",
            "{% for i in user.items %}{{ loop.index }}{% endfor %}",
            false,
            &["user"],
        );
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn runaway_templates_run_out_of_fuel() {
        let mut env = environment();
        register(
            &mut env,
            "c/push_body",
            "{% for i in range(100000) %}{{ i }}{% endfor %}",
            false,
            &[],
        )
        .expect("ok");
        assert!(
            env.get_template("c/push_body")
                .and_then(|t| t.render(context! {}))
                .is_err()
        );
    }

    #[test]
    fn template_paths_stay_inside_the_rules_folder() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("templates")).expect("mkdir");
        std::fs::write(dir.path().join("templates/a.html"), "<p>hi</p>").expect("write");
        assert!(read_template(dir.path(), "templates/a.html").is_ok());
        assert!(read_template(dir.path(), "./templates/a.html").is_ok());
        assert!(matches!(
            read_template(dir.path(), "../a.html"),
            Err(TemplatePathError::Escapes(_))
        ));
        assert!(matches!(
            read_template(dir.path(), "templates/../../x"),
            Err(TemplatePathError::Escapes(_))
        ));
        assert!(matches!(
            read_template(dir.path(), "/etc/passwd"),
            Err(TemplatePathError::Absolute(_))
        ));
        assert!(matches!(
            read_template(dir.path(), "templates/b.html"),
            Err(TemplatePathError::NotFound(_))
        ));
    }
}
