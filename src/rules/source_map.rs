//! Where every value of a rule file was written, so errors point at `file:line:column`.
//!
//! serde reports positions only for its own errors. For the semantic checks (bad CEL, unknown
//! template, duplicate id, …) the compiler asks this index: it is built from yaml-rust2's marked
//! event stream and maps a path such as `then.email.template` or `if[1]` to the position of the
//! value (and of its key). [`SourceMap::inside`] goes one step further and maps a position
//! *inside* a scalar (a CEL parse error, a template syntax error) to the document, undoing quotes,
//! escapes and block indentation.

use std::collections::HashMap;

use yaml_rust2::{
    parser::{Event, MarkedEventReceiver, Parser},
    scanner::{Marker, TScalarStyle},
};

/// A position in a file, both 1-based; `column` counts characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    pub const START: Pos = Pos { line: 1, column: 1 };
}

#[derive(Debug, Clone)]
struct Node {
    key: Option<Pos>,
    value: Pos,
    /// Character index of the value's first character (the quote or block indicator included).
    index: usize,
    /// `None` for mappings and sequences.
    style: Option<TScalarStyle>,
}

/// Path → position index of one YAML document.
#[derive(Debug, Default)]
pub struct SourceMap {
    nodes: HashMap<String, Node>,
    chars: Vec<char>,
    /// Character index at which each line starts.
    line_starts: Vec<usize>,
}

impl SourceMap {
    /// Indexes `source`. A document yaml-rust2 cannot parse yields an empty index (every lookup
    /// answers 1:1); serde has already reported why in that case.
    pub fn new(source: &str) -> SourceMap {
        let chars: Vec<char> = source.chars().collect();
        let mut line_starts = vec![0];
        line_starts.extend(
            chars
                .iter()
                .enumerate()
                .filter(|(_, c)| **c == '\n')
                .map(|(i, _)| i + 1),
        );
        let mut recorder = Recorder::default();
        let nodes = match Parser::new_from_str(source).load(&mut recorder, false) {
            Ok(()) => recorder.nodes,
            Err(_) => HashMap::new(),
        };
        SourceMap {
            nodes,
            chars,
            line_starts,
        }
    }

    /// Position of the value at `path`, or of its nearest recorded ancestor (a missing key is
    /// reported where its mapping is). A mapping or sequence is reported at its key: yaml-rust2
    /// marks a block mapping where its first entry ends, which would confuse a reader.
    pub fn value(&self, path: &str) -> Pos {
        match self.node(path) {
            Some(n) if n.style.is_none() => n.key.unwrap_or(n.value),
            Some(n) => n.value,
            None => Pos::START,
        }
    }

    /// Position of the key of the value at `path` (falls back to the value, then the ancestors).
    pub fn key(&self, path: &str) -> Pos {
        self.node(path)
            .map(|n| n.key.unwrap_or(n.value))
            .unwrap_or(Pos::START)
    }

    /// The text on the line at `pos`, from that column on, trimmed: the offending text of a serde
    /// error, which knows only a position.
    pub fn text_at(&self, pos: Pos) -> Option<String> {
        let start = *self.line_starts.get(pos.line.checked_sub(1)?)?;
        let line: String = self.chars[start..].iter().take_while(|c| **c != '\n').collect();
        let rest: String = line.chars().skip(pos.column.saturating_sub(1)).collect();
        let rest = rest.trim();
        (!rest.is_empty()).then(|| rest.to_string())
    }

    /// Position in the document of the character at `offset` (in characters) inside the scalar
    /// value at `path`. Exact for single-line scalars (plain, quoted with escapes) and block
    /// scalars (`|`, `>`); in folded multi-line flow scalars blank lines count as one character.
    pub fn inside(&self, path: &str, offset: usize) -> Pos {
        let Some(node) = self.nodes.get(path) else {
            return self.value(path);
        };
        let Some(style) = node.style else {
            return node.value;
        };
        let chars = &self.chars;
        let at = |i: usize| chars.get(i).copied();
        let mut i = node.index;
        let mut indent = None;
        match style {
            TScalarStyle::Plain => {}
            TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted => i += 1,
            // yaml-rust2 marks a block scalar (`|`, `>`) at its first content character; every
            // content line has that indentation.
            TScalarStyle::Literal | TScalarStyle::Folded => indent = Some(node.value.column - 1),
        }
        let mut remaining = offset;
        while remaining > 0 {
            let Some(c) = at(i) else { break };
            if c == '\n' {
                i += 1;
                match indent {
                    Some(n) => i += (i..i + n).take_while(|&j| at(j) == Some(' ')).count(),
                    None => i += (i..).take_while(|&j| matches!(at(j), Some(' ' | '\t'))).count(),
                }
            } else if style == TScalarStyle::SingleQuoted && c == '\'' && at(i + 1) == Some('\'') {
                i += 2;
            } else if style == TScalarStyle::DoubleQuoted && c == '\\' {
                i += match at(i + 1) {
                    Some('x') => 4,
                    Some('u') => 6,
                    Some('U') => 10,
                    _ => 2,
                };
            } else {
                i += 1;
            }
            remaining -= 1;
        }
        self.pos_of_index(i)
    }

    fn pos_of_index(&self, index: usize) -> Pos {
        let line = self.line_starts.partition_point(|&start| start <= index);
        let start = self.line_starts[line.saturating_sub(1)];
        Pos {
            line: line.max(1),
            column: index - start + 1,
        }
    }

    fn node(&self, path: &str) -> Option<&Node> {
        let mut path = path;
        while !path.is_empty() {
            if let Some(node) = self.nodes.get(path) {
                return Some(node);
            }
            path = parent(path)?;
        }
        None
    }
}

/// `then.email.subject` → `then.email`; `if[2]` → `if`; `then` → ``; `` → none.
fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(&path[..cut])
}

enum Frame {
    Map {
        path: String,
        key: Option<(String, Marker)>,
    },
    Seq {
        path: String,
        next: usize,
    },
}

#[derive(Default)]
struct Recorder {
    nodes: HashMap<String, Node>,
    stack: Vec<Frame>,
    /// Depth inside a complex (non-scalar) mapping key, whose contents are not indexed.
    complex_key_depth: usize,
}

impl Recorder {
    /// The path and key position of the value that starts now, advancing the parent.
    fn next_value(&mut self) -> (String, Option<Marker>) {
        match self.stack.last_mut() {
            None => (String::new(), None),
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                (p, None)
            }
            Some(Frame::Map { path, key }) => match key.take() {
                Some((k, mark)) if path.is_empty() => (k, Some(mark)),
                Some((k, mark)) => (format!("{path}.{k}"), Some(mark)),
                None => (format!("{path}.?"), None),
            },
        }
    }

    fn expects_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None, .. }))
    }

    fn record(&mut self, path: &str, key: Option<Marker>, mark: Marker, style: Option<TScalarStyle>) {
        self.nodes.insert(
            path.to_string(),
            Node {
                key: key.map(pos),
                value: pos(mark),
                index: mark.index(),
                style,
            },
        );
    }
}

fn pos(mark: Marker) -> Pos {
    // yaml-rust2 counts lines from 1 and columns from 0.
    Pos {
        line: mark.line(),
        column: mark.col() + 1,
    }
}

impl MarkedEventReceiver for Recorder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.complex_key_depth > 0 {
            match ev {
                Event::MappingStart(..) | Event::SequenceStart(..) => self.complex_key_depth += 1,
                Event::MappingEnd | Event::SequenceEnd => {
                    self.complex_key_depth -= 1;
                    if self.complex_key_depth == 0
                        && let Some(Frame::Map { key, .. }) = self.stack.last_mut()
                    {
                        *key = Some(("?".to_string(), mark));
                    }
                }
                _ => {}
            }
            return;
        }
        match ev {
            Event::Scalar(text, style, ..) => {
                if self.expects_key() {
                    if let Some(Frame::Map { key, .. }) = self.stack.last_mut() {
                        *key = Some((text, mark));
                    }
                    return;
                }
                let (path, key) = self.next_value();
                self.record(&path, key, mark, Some(style));
            }
            Event::Alias(_) => {
                if self.expects_key() {
                    if let Some(Frame::Map { key, .. }) = self.stack.last_mut() {
                        *key = Some(("*".to_string(), mark));
                    }
                    return;
                }
                let (path, key) = self.next_value();
                self.record(&path, key, mark, None);
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                if self.expects_key() {
                    self.complex_key_depth = 1;
                    return;
                }
                let (path, key) = self.next_value();
                self.record(&path, key, mark, None);
                self.stack.push(match ev {
                    Event::MappingStart(..) => Frame::Map { path, key: None },
                    _ => Frame::Seq { path, next: 0 },
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "campaign: a\nwhen:\n  event: x\nif:\n  - user.a == 1\n  - 'it''s == 1'\nthen:\n  email: { subject: \"Hi {{ x }}\" }\nblock: |\n  line one\n  line two\n";

    #[test]
    fn indexes_values_and_keys() {
        let map = SourceMap::new(DOC);
        assert_eq!(map.value("campaign"), Pos { line: 1, column: 11 });
        assert_eq!(map.key("campaign"), Pos { line: 1, column: 1 });
        assert_eq!(map.value("when.event"), Pos { line: 3, column: 10 });
        assert_eq!(map.value("if[0]"), Pos { line: 5, column: 5 });
        assert_eq!(map.value("then.email.subject"), Pos { line: 8, column: 21 });
        // Missing paths fall back to the nearest ancestor; block containers answer with their key.
        assert_eq!(map.value("then.email.body"), Pos { line: 8, column: 3 });
        assert_eq!(map.value("then.push"), Pos { line: 7, column: 1 });
        assert_eq!(map.value("nope"), Pos::START);
    }

    #[test]
    fn maps_offsets_inside_scalars() {
        let map = SourceMap::new(DOC);
        // plain: `==` is at offset 7 of `user.a == 1`
        assert_eq!(map.inside("if[0]", 7), Pos { line: 5, column: 12 });
        // single quoted with a doubled quote: value `it's == 1`, offset 3 is `s`
        assert_eq!(map.inside("if[1]", 3), Pos { line: 6, column: 10 });
        // double quoted: offset 3 is `{`
        assert_eq!(map.inside("then.email.subject", 3), Pos { line: 8, column: 25 });
        // block: offset 9 is the `l` of `line two`
        assert_eq!(map.inside("block", 9), Pos { line: 11, column: 3 });
    }

    #[test]
    fn broken_yaml_gives_an_empty_index() {
        let map = SourceMap::new("a: [1, 2\n");
        assert_eq!(map.value("a"), Pos::START);
    }

    #[test]
    fn text_at_returns_the_rest_of_the_line() {
        let map = SourceMap::new(DOC);
        assert_eq!(map.text_at(Pos { line: 3, column: 10 }).as_deref(), Some("x"));
    }
}
