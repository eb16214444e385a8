//! Placeholder templating of a work pool's base job template, as Prefect's worker does it
//! (`prefect.utilities.templating.apply_values` and
//! `BaseJobConfiguration.from_template_and_values`, Prefect 3.9).
//!
//! The rules, measured against Prefect's own code (see the fixtures in the tests):
//! - a string that is exactly one `{{ name }}` takes the value with its JSON type;
//! - placeholders embedded in text become text (`str()` of the value, Python spelling);
//! - a whole-string placeholder without a value removes its key (or list item); an embedded
//!   one becomes the empty string;
//! - `{{ prefect.blocks... }}` and `{{ prefect.variables... }}` are left for [`super::refs`];
//! - `{{ $NAME }}` embedded in text reads the worker's environment.

use serde_json::{Map, Value};

/// A JSON object.
pub type Object = Map<String, Value>;

/// What a placeholder refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaceholderKind {
    /// A job variable (`{{ image }}`, `{{ env.FOO }}`).
    Standard,
    /// `{{ prefect.blocks.<type>.<name>[.path] }}`.
    Block,
    /// `{{ prefect.variables.<name> }}`.
    Variable,
    /// `{{ $NAME }}`: the worker's environment.
    EnvVar,
}

/// One `{{ ... }}` found in a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder {
    /// Byte range of the whole `{{ ... }}` in the string.
    pub start: usize,
    /// End (exclusive).
    pub end: usize,
    /// The name inside the braces, trimmed.
    pub name: String,
    /// Its kind, from the name's prefix.
    pub kind: PlaceholderKind,
}

/// Prefix of block placeholders.
pub const BLOCK_PREFIX: &str = "prefect.blocks.";
/// Prefix of variable placeholders.
pub const VARIABLE_PREFIX: &str = "prefect.variables.";

fn kind_of(name: &str) -> PlaceholderKind {
    if name.starts_with(BLOCK_PREFIX) {
        PlaceholderKind::Block
    } else if name.starts_with(VARIABLE_PREFIX) {
        PlaceholderKind::Variable
    } else if name.starts_with('$') {
        PlaceholderKind::EnvVar
    } else {
        PlaceholderKind::Standard
    }
}

/// Characters Prefect's placeholder pattern allows in a name: `[\w.\-\[\]$]`.
fn name_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '.' | '-' | '[' | ']' | '$')
}

/// Every placeholder of `s`, left to right, as Prefect's regex
/// `{{\s*([\w\.\-\[\]$]+)\s*}}` finds them.
pub fn find_placeholders(s: &str) -> Vec<Placeholder> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(off) = s[i..].find("{{") {
        let start = i + off;
        match match_at(s, start) {
            Some((end, name)) => {
                out.push(Placeholder {
                    start,
                    end,
                    kind: kind_of(&name),
                    name,
                });
                i = end;
            }
            // A regex retries one character later ("{{{ a }}" matches at the second brace).
            None => i = start + 1,
        }
    }
    out
}

/// Matches `{{\s*name\s*}}` at `start`; returns the end and the name.
fn match_at(s: &str, start: usize) -> Option<(usize, String)> {
    let rest = s.get(start + 2..)?;
    let trimmed = rest.trim_start();
    let name_len: usize = trimmed
        .chars()
        .take_while(|c| name_char(*c))
        .map(char::len_utf8)
        .sum();
    if name_len == 0 {
        return None;
    }
    let name = &trimmed[..name_len];
    let after = trimmed[name_len..].trim_start();
    if !after.starts_with("}}") {
        return None;
    }
    let end = s.len() - after.len() + 2;
    Some((end, name.to_string()))
}

/// True when `s` is exactly one placeholder of `kind` (it then takes the value's type).
pub fn whole(s: &str, found: &[Placeholder], kind: PlaceholderKind) -> bool {
    distinct(found) == 1 && found[0].start == 0 && found[0].end == s.len() && found[0].kind == kind
}

/// Number of distinct placeholder texts (Prefect works on a set).
fn distinct(found: &[Placeholder]) -> usize {
    let mut names: Vec<&str> = found.iter().map(|p| p.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    names.len()
}

/// Replaces placeholders of `s` for which `replace` returns text; others stay as written.
pub fn substitute(
    s: &str,
    found: &[Placeholder],
    mut replace: impl FnMut(&Placeholder) -> Option<String>,
) -> String {
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for p in found {
        out.push_str(&s[last..p.start]);
        match replace(p) {
            Some(text) => out.push_str(&text),
            None => out.push_str(&s[p.start..p.end]),
        }
        last = p.end;
    }
    out.push_str(&s[last..]);
    out
}

/// Splits a key path the way Prefect does: `a.b[0].c` -> `a`, `b`, `0`, `c`.
fn key_path(path: &str) -> Vec<String> {
    path.replace('[', ".")
        .replace(']', "")
        .split('.')
        .map(str::to_string)
        .collect()
}

/// The value at a dotted path (`env.FOO`, `items[0].name`); `None` when absent.
/// Negative list indices count from the end, as in Python.
pub fn get_path<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = root;
    for key in key_path(path) {
        cur = match cur {
            Value::Object(map) => map.get(&key)?,
            Value::Array(items) => {
                let idx: i64 = key.parse().ok()?;
                let idx = if idx < 0 {
                    i64::try_from(items.len()).ok()? + idx
                } else {
                    idx
                };
                items.get(usize::try_from(idx).ok()?)?
            }
            _ => return None,
        };
    }
    Some(cur)
}

/// Sets `path` in `root`, creating objects on the way (Prefect's `set_in_dict`).
fn set_path(root: &mut Object, path: &str, value: Value) -> Result<(), String> {
    let keys = key_path(path);
    let Some((last, parents)) = keys.split_last() else {
        return Ok(());
    };
    let mut cur = root;
    for k in parents {
        let slot = cur
            .entry(k.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        cur = match slot {
            Value::Object(m) => m,
            _ => return Err(format!("job variable `{path}`: `{k}` is not an object")),
        };
    }
    cur.insert(last.clone(), value);
    Ok(())
}

/// Recursive merge: objects merge key by key, anything else is replaced.
pub fn deep_merge(base: &mut Object, over: &Object) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(Value::Object(b)), Value::Object(o)) => deep_merge(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Python's `str()` of a JSON value, used when a value is embedded in text.
pub fn py_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => py_repr(other),
    }
}

/// Python's `repr()` of a JSON value (`True`, `None`, `{'a': 1}`).
fn py_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            // Python quotes with ' unless the text has ' and no ".
            let q = if s.contains('\'') && !s.contains('"') {
                '"'
            } else {
                '\''
            };
            let mut out = String::from(q);
            for c in s.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\t' => out.push_str("\\t"),
                    '\r' => out.push_str("\\r"),
                    c if c == q => {
                        out.push('\\');
                        out.push(c);
                    }
                    c => out.push(c),
                }
            }
            out.push(q);
            out
        }
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(py_repr).collect();
            format!("[{}]", inner.join(", "))
        }
        Value::Object(map) => {
            let inner: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", py_repr(&Value::String(k.clone())), py_repr(v)))
                .collect();
            format!("{{{}}}", inner.join(", "))
        }
    }
}

/// Python truthiness (`if variables.get("env")`).
fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
    }
}

/// Replaces placeholders in `template` with `values`. `None` means "not set": the caller
/// drops the key or list item. `env` reads the worker's environment for `{{ $NAME }}`.
pub fn apply_values(
    template: &Value,
    values: &Value,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<Value> {
    match template {
        Value::String(s) => {
            let found = find_placeholders(s);
            if found.is_empty() {
                return Some(template.clone());
            }
            if whole(s, &found, PlaceholderKind::Standard) {
                return get_path(values, &found[0].name).cloned();
            }
            Some(Value::String(substitute(s, &found, |p| match p.kind {
                PlaceholderKind::Standard => {
                    Some(get_path(values, &p.name).map(py_str).unwrap_or_default())
                }
                PlaceholderKind::EnvVar => {
                    Some(env(p.name.trim_start_matches('$')).unwrap_or_default())
                }
                PlaceholderKind::Block | PlaceholderKind::Variable => None,
            })))
        }
        Value::Object(map) => Some(Value::Object(
            map.iter()
                .filter_map(|(k, v)| apply_values(v, values, env).map(|v| (k.clone(), v)))
                .collect(),
        )),
        Value::Array(items) => Some(Value::Array(
            items
                .iter()
                .filter_map(|v| apply_values(v, values, env))
                .collect(),
        )),
        other => Some(other.clone()),
    }
}

/// A deployment's job variables overlaid with a flow run's: `env` merged key by key, every
/// other key replaced (Prefect's `resolve_for_flow_run`).
pub fn merge_job_variables(deployment: &Object, flow_run: Option<&Object>) -> Object {
    let mut out = deployment.clone();
    let Some(run) = flow_run else {
        return out;
    };
    let mut run = run.clone();
    if let Some(Value::Object(env)) = out.get_mut("env")
        && let Some(run_env) = run.remove("env")
    {
        if let Value::Object(run_env) = run_env {
            env.extend(run_env);
        } else {
            // A non-object env in the run replaces; Python would fail on update().
            out.insert("env".into(), run_env);
        }
    }
    out.extend(run);
    out
}

/// The job configuration with job variables applied, before block and variable references are
/// resolved: steps 1-6 of `from_template_and_values`.
pub fn render_job_configuration(
    base_job_template: &Value,
    job_variables: &Object,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Object, String> {
    let Some(Value::Object(base)) = base_job_template.get("job_configuration") else {
        return Err(
            "the work pool's base job template has no `job_configuration` object \
                    (an empty template: start the pool's own worker once, or apply the plan)"
                .into(),
        );
    };
    let mut base = base.clone();
    // 1. variable defaults; None defaults are dropped so that the key disappears.
    let mut variables = Object::new();
    if let Some(Value::Object(props)) = base_job_template.pointer("/variables/properties") {
        for (name, attrs) in props {
            if let Some(d) = attrs.get("default").filter(|d| !d.is_null()) {
                variables.insert(name.clone(), d.clone());
            }
        }
    }
    // 2. env defaults merged into the configuration's env.
    if truthy(variables.get("env")) {
        let default_env = variables.get("env").cloned().unwrap_or(Value::Null);
        match (base.get_mut("env"), &default_env) {
            (Some(Value::Object(b)), Value::Object(d)) => b.extend(d.clone()),
            _ => {
                base.insert("env".into(), default_env);
            }
        }
    }
    // 3. dotted keys first, then plain keys on top (deep-merged when both are objects).
    let mut transformed = Object::new();
    for (k, v) in job_variables.iter().filter(|(k, _)| k.contains('.')) {
        set_path(&mut transformed, k, v.clone())?;
    }
    for (k, v) in job_variables.iter().filter(|(k, _)| !k.contains('.')) {
        match (transformed.get_mut(k), v) {
            (Some(Value::Object(t)), Value::Object(o)) => deep_merge(t, o),
            _ => {
                transformed.insert(k.clone(), v.clone());
            }
        }
    }
    // 4. overlay.
    variables.extend(transformed);
    // 5. env merged key by key over the configuration's.
    if truthy(variables.get("env"))
        && let (Some(Value::Object(b)), Some(Value::Object(v))) =
            (base.get_mut("env"), variables.get("env"))
    {
        b.extend(v.clone());
    }
    // 6. placeholders.
    match apply_values(&Value::Object(base), &Value::Object(variables), env) {
        Some(Value::Object(o)) => Ok(o),
        _ => Err("the job configuration did not render to an object".into()),
    }
}

#[cfg(test)]
#[path = "template_tests.rs"]
mod tests;
