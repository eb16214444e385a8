//! Stage one: YAML text -> a tree of nodes that remember where they came from.
//!
//! We deserialize into our own generic tree rather than straight into typed structs so that
//! one pass can report *every* unknown key, wrong type and duplicate key, instead of the first
//! one serde stops at.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Budget, DuplicateKeyPolicy, Options, Spanned};

use crate::diag::Pos;

/// The largest plan file we read. Real plans are a few kilobytes; the cap keeps a mistaken
/// `-f` pointing at a huge file from using memory and time.
pub const MAX_PLAN_BYTES: usize = 1024 * 1024;

/// How deeply collections may nest. The deepest real content (a work pool's base job
/// template) nests about ten levels.
pub const MAX_DEPTH: usize = 40;

/// A YAML node with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
}

/// A map key with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Key {
    pub name: String,
    pub pos: Pos,
}

/// The value of a node.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in file order; duplicates are kept here so that they can be reported.
    Map(Vec<(Key, Node)>),
}

impl Value {
    /// "a string", "a mapping" ... for "expected X, found Y" messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "nothing (null)",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

impl Node {
    /// The node as JSON. Map keys stay strings; duplicates keep the last value (duplicates are
    /// reported separately).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.name.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

/// Why the text could not be turned into a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub pos: Pos,
    pub message: String,
    pub hint: Option<String>,
}

/// Parses one YAML document into a tree, with limits against hostile input.
pub fn parse(source: &str) -> Result<Node, ParseError> {
    if source.len() > MAX_PLAN_BYTES {
        return Err(ParseError {
            pos: Pos::START,
            message: format!(
                "the file is {} bytes; a plan file may be at most {MAX_PLAN_BYTES} bytes",
                source.len()
            ),
            hint: Some("is this the right file?".into()),
        });
    }
    if source.trim().is_empty()
        || source
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Err(ParseError {
            pos: Pos::START,
            message: "the plan file is empty".into(),
            hint: Some("a plan starts with `version: 1`; `bootstrap init` writes one".into()),
        });
    }
    let mut budget = Budget::default();
    budget.max_depth = MAX_DEPTH;
    budget.max_nodes = 100_000;
    budget.max_events = 200_000;
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_total_scalar_bytes = MAX_PLAN_BYTES;
    budget.max_documents = 1;
    let mut options = Options::default();
    options.budget = Some(budget);
    // Duplicates reach our visitor, which records them; they are then reported together with
    // every other problem instead of stopping the parse.
    options.duplicate_keys = DuplicateKeyPolicy::PassThrough;
    options.with_snippet = false;
    match serde_saphyr::from_str_with_options::<Spanned<Raw>>(source, options) {
        Ok(root) => Ok(into_node(root)),
        Err(err) => Err(convert_error(&err)),
    }
}

fn convert_error(err: &serde_saphyr::Error) -> ParseError {
    use serde_saphyr::MessageFormatter as _;
    let err = err.without_snippet();
    let pos = err
        .location()
        .filter(|l| l.line() > 0)
        .map_or(Pos::START, |l| Pos {
            line: u32::try_from(l.line()).unwrap_or(u32::MAX),
            column: u32::try_from(l.column()).unwrap_or(u32::MAX),
        });
    let raw = serde_saphyr::UserMessageFormatter.format_message(err);
    // The formatter's text is not sanitized when called directly (its docs say so).
    let message: String = raw
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let lower = message.to_lowercase();
    let hint = if lower.contains("budget") || lower.contains("depth") || lower.contains("nest") {
        Some(format!(
            "plan files nest at most {MAX_DEPTH} levels and hold at most 100000 values"
        ))
    } else if lower.contains("document") {
        Some("a plan file holds exactly one YAML document (no `---` separators)".into())
    } else {
        Some("check the YAML syntax: indentation, `key: value` pairs, quotes and brackets".into())
    };
    ParseError {
        pos,
        message: format!("invalid YAML: {message}"),
        hint,
    }
}

fn pos_of<T>(s: &Spanned<T>) -> Pos {
    let l = s.referenced;
    Pos {
        line: u32::try_from(l.line()).unwrap_or(u32::MAX),
        column: u32::try_from(l.column()).unwrap_or(u32::MAX),
    }
}

fn into_node(s: Spanned<Raw>) -> Node {
    let pos = pos_of(&s);
    Node {
        pos,
        value: s.value.0,
    }
}

/// The serde side of [`Node`]: deserialized through `deserialize_any`.
struct Raw(Value);

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawVisitor).map(Raw)
    }
}

struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Raw::deserialize(d).map(|r| r.0)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        // Beyond i64 nothing in a plan makes sense as a number; keep the text.
        Ok(i64::try_from(v).map_or_else(|_| Value::Str(v.to_string()), Value::Int))
    }
    fn visit_i128<E>(self, v: i128) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or_else(|_| Value::Str(v.to_string()), Value::Int))
    }
    fn visit_u128<E>(self, v: u128) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or_else(|_| Value::Str(v.to_string()), Value::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_bytes<E>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Str(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Raw>>()? {
            items.push(into_node(item));
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            let pos = pos_of(&key);
            let value = map.next_value::<Spanned<Raw>>()?;
            entries.push((
                Key {
                    name: key.value,
                    pos,
                },
                into_node(value),
            ));
        }
        Ok(Value::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_kept() {
        let n = parse("a:\n  b: 5\n  c: [x, \"y\"]\n").unwrap();
        let Value::Map(top) = &n.value else {
            panic!("{n:?}")
        };
        let (ka, va) = &top[0];
        assert_eq!(ka.name, "a");
        assert_eq!(ka.pos, Pos { line: 1, column: 1 });
        let Value::Map(inner) = &va.value else {
            panic!()
        };
        assert_eq!(inner[0].1.pos, Pos { line: 2, column: 6 });
        assert_eq!(inner[0].1.value, Value::Int(5));
        let Value::Seq(items) = &inner[1].1.value else {
            panic!()
        };
        assert_eq!(items[1].value, Value::Str("y".into()));
        assert_eq!(
            items[1].pos,
            Pos {
                line: 3,
                column: 10
            }
        );
    }

    #[test]
    fn duplicates_reach_the_tree() {
        let n = parse("a: 1\na: 2\n").unwrap();
        let Value::Map(top) = &n.value else { panic!() };
        assert_eq!(top.len(), 2);
        assert_eq!(top[1].0.pos.line, 2);
    }

    #[test]
    fn syntax_error_has_position() {
        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.pos.line >= 1, "{e:?}");
        assert!(e.message.starts_with("invalid YAML"), "{e:?}");
    }

    #[test]
    fn deep_nesting_is_refused() {
        let deep = format!("{}{}", "[".repeat(500), "]".repeat(500));
        assert!(parse(&deep).is_err());
        let mut block = String::new();
        for i in 0..200 {
            block.push_str(&" ".repeat(i));
            block.push_str("k:\n");
        }
        assert!(parse(&block).is_err());
    }

    #[test]
    fn empty_is_refused() {
        assert_eq!(parse("").unwrap_err().message, "the plan file is empty");
        assert_eq!(
            parse("# only\n\n").unwrap_err().message,
            "the plan file is empty"
        );
    }
}
