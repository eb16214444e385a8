//! Typed reading of the YAML tree, collecting every problem instead of stopping at the first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value as Json};

use crate::checks::{self, Field};
use crate::diag::{Diagnostic, Diagnostics, Pos, did_you_mean};
use crate::node::{Key, Node, Value};
use crate::template::{self, TemplateError};

/// The keys of one mapping, first occurrence of each, after unknown and duplicate keys were
/// reported.
pub struct Fields<'n> {
    /// Where the mapping is (for "missing key" errors).
    pub pos: Pos,
    /// Dotted path of the mapping, e.g. `gcp` or `deployments[0]`.
    pub path: String,
    map: BTreeMap<&'n str, (&'n Key, &'n Node)>,
}

impl<'n> Fields<'n> {
    /// The value of `key`, when present and not null.
    pub fn get(&self, key: &str) -> Option<&'n Node> {
        self.map
            .get(key)
            .map(|(_, n)| *n)
            .filter(|n| n.value != Value::Null)
    }

    /// The path of a child key, for messages.
    pub fn child(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }
}

/// Whether a string is a secret: its value must never appear in a message.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Secret {
    No,
    Yes,
}

/// The reading context: where diagnostics go, the environment and plan values for templates.
pub struct Reader<'e> {
    pub file: PathBuf,
    pub diags: Diagnostics,
    pub env: &'e dyn Fn(&str) -> Option<String>,
    /// Values of earlier sections that templates may refer to, e.g. `gcp.project`.
    pub vars: Map<String, Json>,
    /// The process reading the plan (the worker's image may be built from its binary).
    pub running: crate::worker_image::Running,
}

impl<'e> Reader<'e> {
    pub fn new(file: &Path, env: &'e dyn Fn(&str) -> Option<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            diags: Diagnostics::default(),
            env,
            vars: Map::new(),
            running: crate::worker_image::Running::current(),
        }
    }

    /// Records a problem at `pos`.
    pub fn error(&mut self, pos: Pos, message: impl Into<String>, hint: Option<String>) {
        self.diags
            .push(Diagnostic::new(&self.file, pos, message).with_hint_opt(hint));
    }

    /// Makes a value available to later templates as `{{ section.key }}`.
    pub fn set_var(&mut self, section: &str, key: &str, value: &str) {
        let entry = self
            .vars
            .entry(section.to_owned())
            .or_insert_with(|| Json::Object(Map::new()));
        if let Json::Object(m) = entry {
            m.insert(key.to_owned(), Json::String(value.to_owned()));
        }
    }

    /// Reads a mapping, reporting unknown keys (with a likely intended one) and duplicates.
    /// A missing or null section reads as empty.
    pub fn fields<'n>(
        &mut self,
        node: Option<&'n Node>,
        parent_pos: Pos,
        path: &str,
        known: &[&str],
    ) -> Option<Fields<'n>> {
        let mut fields = Fields {
            pos: parent_pos,
            path: path.to_owned(),
            map: BTreeMap::new(),
        };
        let Some(node) = node else {
            return Some(fields);
        };
        fields.pos = node.pos;
        let entries = match &node.value {
            Value::Null => return Some(fields),
            Value::Map(entries) => entries,
            other => {
                let shown = if path.is_empty() {
                    "the plan".to_owned()
                } else {
                    format!("`{path}`")
                };
                self.error(
                    node.pos,
                    format!(
                        "{shown} must be a mapping of keys to values, found {}",
                        other.kind()
                    ),
                    Some(format!("valid keys: {}", known.join(", "))),
                );
                return None;
            }
        };
        for (key, value) in entries {
            let in_path = if path.is_empty() {
                "the plan".to_owned()
            } else {
                format!("`{path}`")
            };
            if !known.contains(&key.name.as_str()) {
                let hint = match did_you_mean(&key.name, known) {
                    Some(k) => format!("did you mean `{k}`?"),
                    None => format!("valid keys: {}", known.join(", ")),
                };
                self.error(
                    key.pos,
                    format!("unknown key `{}` in {in_path}", key.name),
                    Some(hint),
                );
                continue;
            }
            if let Some((first, _)) = fields.map.get(key.name.as_str()) {
                let line = first.pos.line;
                self.error(
                    key.pos,
                    format!("duplicate key `{}` in {in_path}", key.name),
                    Some(format!("it is first set on line {line}; keep one")),
                );
                continue;
            }
            fields.map.insert(key.name.as_str(), (key, value));
        }
        Some(fields)
    }

    /// Reports a missing required key and returns `None`.
    pub fn missing<T>(&mut self, fields: &Fields<'_>, key: &str, example: &str) -> Option<T> {
        let within = if fields.path.is_empty() {
            "the plan".to_owned()
        } else {
            format!("`{}`", fields.path)
        };
        self.error(
            fields.pos,
            format!("missing required key `{key}` in {within}"),
            Some(format!("add `{key}: {example}`")),
        );
        None
    }

    /// A required string (rendered when it is a template).
    pub fn req_string(
        &mut self,
        f: &Fields<'_>,
        key: &str,
        example: &str,
    ) -> Option<(String, Pos)> {
        match f.get(key) {
            Some(n) => self
                .string(n, &f.child(key), Secret::No)
                .map(|s| (s, n.pos)),
            None => self.missing(f, key, example),
        }
    }

    /// An optional string.
    pub fn opt_string(&mut self, f: &Fields<'_>, key: &str) -> Option<(String, Pos)> {
        let n = f.get(key)?;
        self.string(n, &f.child(key), Secret::No)
            .map(|s| (s, n.pos))
    }

    /// A string value, rendered when it is a template. Secrets never appear in messages.
    pub fn string(&mut self, node: &Node, path: &str, secret: Secret) -> Option<String> {
        match &node.value {
            Value::Str(s) if template::is_template(s) => self.render(s, node.pos, path, secret),
            Value::Str(s) => Some(s.clone()),
            other => {
                self.error(
                    node.pos,
                    format!("`{path}` must be a string, found {}", other.kind()),
                    Some(
                        if matches!(other, Value::Int(_) | Value::Float(_) | Value::Bool(_)) {
                            "put the value in quotes".to_owned()
                        } else {
                            "write a single text value".to_owned()
                        },
                    ),
                );
                None
            }
        }
    }

    /// Renders a template string, reporting why it failed.
    pub fn render(&mut self, s: &str, pos: Pos, path: &str, secret: Secret) -> Option<String> {
        match template::render(s, self.env, &self.vars) {
            Ok(v) => Some(v),
            Err(TemplateError::UnsetEnv(names)) => {
                let list = names
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let plural = if names.len() > 1 { "s" } else { "" };
                let first = names.first().map_or("NAME", String::as_str);
                self.error(
                    pos,
                    format!("`{path}` uses the environment variable{plural} {list}, which is not set"),
                    Some(format!(
                        "set it, or give a default: `{{{{ env.{first} | default(value=\"...\") }}}}`"
                    )),
                );
                None
            }
            Err(TemplateError::Statement) => {
                self.error(
                    pos,
                    format!("`{path}` uses a `{{% ... %}}` statement; plan values allow only `{{{{ ... }}}}` expressions"),
                    Some("use an expression such as `{{ env.NAME | default(value=\"x\") }}`".into()),
                );
                None
            }
            Err(TemplateError::Tera(msg)) => {
                // A secret's template text is safe to show, but tera's message could quote
                // the rendered value in some filter errors; say less for secrets.
                let detail = if secret == Secret::Yes {
                    "invalid template".to_owned()
                } else {
                    msg
                };
                let available = self.available_vars();
                self.error(
                    pos,
                    format!("`{path}`: {detail}"),
                    Some(format!(
                        "templates may use `env.NAME` and values of earlier sections: {available}"
                    )),
                );
                None
            }
        }
    }

    fn available_vars(&self) -> String {
        let mut names = Vec::new();
        for (section, v) in &self.vars {
            if let Json::Object(m) = v {
                names.extend(m.keys().map(|k| format!("{section}.{k}")));
            }
        }
        if names.is_empty() {
            "none yet (the `gcp` section may only use `env`)".into()
        } else {
            names.join(", ")
        }
    }

    /// A string checked as `field`; reports the value, what would be valid and a likely fix.
    pub fn checked(&mut self, value: &str, pos: Pos, path: &str, field: Field) -> bool {
        match checks::check_field(field, value) {
            Ok(()) => true,
            Err(why) => {
                let hint = match checks::hint(field, value) {
                    Some(fix) => format!("{why}; {fix}"),
                    None => why,
                };
                self.error(pos, format!("invalid `{path}` {}", show(value)), Some(hint));
                false
            }
        }
    }

    /// An optional boolean (a template rendering to `true`/`false` is accepted).
    pub fn opt_bool(&mut self, f: &Fields<'_>, key: &str) -> Option<Option<bool>> {
        let Some(n) = f.get(key) else {
            return Some(None);
        };
        let path = f.child(key);
        match &n.value {
            Value::Bool(b) => Some(Some(*b)),
            Value::Str(s) if template::is_template(s) => {
                let v = self.render(s, n.pos, &path, Secret::No)?;
                match v.trim() {
                    "true" => Some(Some(true)),
                    "false" => Some(Some(false)),
                    other => {
                        self.error(
                            n.pos,
                            format!("`{path}` rendered to `{other}`, which is not true or false"),
                            Some("`true` or `false`".into()),
                        );
                        None
                    }
                }
            }
            other => {
                self.error(
                    n.pos,
                    format!("`{path}` must be true or false, found {}", other.kind()),
                    Some("`true` or `false`, without quotes".into()),
                );
                None
            }
        }
    }

    /// An optional non-negative integer up to `max`.
    pub fn opt_u32(&mut self, f: &Fields<'_>, key: &str, max: u32) -> Option<Option<u32>> {
        let Some(n) = f.get(key) else {
            return Some(None);
        };
        let path = f.child(key);
        let (value, shown) = match &n.value {
            Value::Int(i) => (Some(*i), i.to_string()),
            Value::Str(s) if template::is_template(s) => {
                let v = self.render(s, n.pos, &path, Secret::No)?;
                (v.trim().parse::<i64>().ok(), v)
            }
            other => {
                self.error(
                    n.pos,
                    format!("`{path}` must be a whole number, found {}", other.kind()),
                    Some("a number without quotes, e.g. `1`".into()),
                );
                return None;
            }
        };
        match value
            .and_then(|v| u32::try_from(v).ok())
            .filter(|v| *v <= max)
        {
            Some(v) => Some(Some(v)),
            None => {
                self.error(
                    n.pos,
                    format!("invalid `{path}` {}", show(&shown)),
                    Some(format!("a whole number from 0 to {max}")),
                );
                None
            }
        }
    }

    /// An optional mapping passed through as JSON (no templating: Prefect has its own).
    pub fn opt_json_map(&mut self, f: &Fields<'_>, key: &str) -> Option<Map<String, Json>> {
        let Some(n) = f.get(key) else {
            return Some(Map::new());
        };
        match (&n.value, n.to_json()) {
            (Value::Map(entries), Json::Object(m)) => {
                self.report_duplicates(entries, &f.child(key));
                Some(m)
            }
            (other, _) => {
                self.error(
                    n.pos,
                    format!(
                        "`{}` must be a mapping, found {}",
                        f.child(key),
                        other.kind()
                    ),
                    Some("write a mapping, e.g. `{key: value}`, or `{}` for none".into()),
                );
                None
            }
        }
    }

    /// An optional list of mappings passed through as JSON.
    pub fn opt_json_maps(&mut self, f: &Fields<'_>, key: &str, example: &str) -> Option<Vec<Json>> {
        let Some(n) = f.get(key) else {
            return Some(Vec::new());
        };
        let path = f.child(key);
        let Value::Seq(items) = &n.value else {
            self.error(
                n.pos,
                format!("`{path}` must be a list, found {}", n.value.kind()),
                Some(format!("for example `[{example}]`")),
            );
            return None;
        };
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            if let Value::Map(entries) = &item.value {
                self.report_duplicates(entries, &format!("{path}[{i}]"));
            } else {
                self.error(
                    item.pos,
                    format!(
                        "`{path}[{i}]` must be a mapping, found {}",
                        item.value.kind()
                    ),
                    Some(format!("for example `{example}`")),
                );
                ok = false;
            }
        }
        ok.then(|| items.iter().map(Node::to_json).collect())
    }

    /// An optional list of strings (each rendered).
    pub fn opt_strings(&mut self, f: &Fields<'_>, key: &str) -> Option<Option<Vec<(String, Pos)>>> {
        let Some(n) = f.get(key) else {
            return Some(None);
        };
        self.list(
            n,
            &f.child(key),
            "write a list, e.g. `[a, b]`",
            |r, item, path| r.string(item, path, Secret::No),
        )
        .map(Some)
    }

    /// The items of the list `n` at `path`, each read by `read` at `{path}[i]`, with their
    /// positions. Every item is read, so that each error is reported; `None` when one failed or
    /// `n` is not a list (`hint` says how to write one).
    pub fn list<T>(
        &mut self,
        n: &Node,
        path: &str,
        hint: &str,
        mut read: impl FnMut(&mut Self, &Node, &str) -> Option<T>,
    ) -> Option<Vec<(T, Pos)>> {
        let Value::Seq(items) = &n.value else {
            self.error(
                n.pos,
                format!("`{path}` must be a list, found {}", n.value.kind()),
                Some(hint.into()),
            );
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match read(self, item, &format!("{path}[{i}]")) {
                Some(v) => out.push((v, item.pos)),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// Duplicate keys anywhere inside free-form content.
    fn report_duplicates(&mut self, entries: &[(Key, Node)], path: &str) {
        let mut seen: BTreeMap<&str, u32> = BTreeMap::new();
        for (k, v) in entries {
            if let Some(line) = seen.get(k.name.as_str()) {
                self.error(
                    k.pos,
                    format!("duplicate key `{}` in `{path}`", k.name),
                    Some(format!("it is first set on line {line}; keep one")),
                );
            } else {
                seen.insert(&k.name, k.pos.line);
            }
            match &v.value {
                Value::Map(inner) => self.report_duplicates(inner, &format!("{path}.{}", k.name)),
                Value::Seq(items) => {
                    for (i, item) in items.iter().enumerate() {
                        if let Value::Map(inner) = &item.value {
                            self.report_duplicates(inner, &format!("{path}.{}[{i}]", k.name));
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// A value quoted for a message, shortened when long.
pub fn show(value: &str) -> String {
    const MAX: usize = 60;
    let clean: String = value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.chars().count() > MAX {
        let head: String = clean.chars().take(MAX).collect();
        format!("`{head}...` ({} characters)", clean.chars().count())
    } else {
        format!("`{clean}`")
    }
}
