//! Templating of plan values with tera: `{{ env.NAME }}`, `{{ env.NAME | default(value="x") }}`
//! and references to values of earlier sections, such as `{{ gcp.project }}`.
//!
//! Each string is rendered on its own so that an error points at the value it came from.
//! Only `{{ ... }}` expressions are allowed: statements (`{% for %}` ...) add nothing a plan
//! needs and would let a small file spin for a long time.

use serde_json::{Map, Value};
use tera::{Context, Tera};

/// Why a template could not be rendered. Never holds a rendered value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateError {
    /// Environment variables referenced without a default and not set.
    UnsetEnv(Vec<String>),
    /// `{% ... %}` statements are not supported.
    Statement,
    /// Anything tera reports: syntax, an unknown plan value, a bad filter.
    Tera(String),
}

/// True when `s` contains template syntax and needs rendering.
pub fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

/// The environment variables `template` refers to as `env.NAME`, each with whether that
/// reference has a `| default(...)`.
pub fn env_refs(template: &str) -> Vec<(String, bool)> {
    let bytes = template.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(off) = template[i..].find("env.") {
        let start = i + off;
        i = start + 4;
        let preceded_by_ident = start > 0 && {
            let p = bytes[start - 1];
            p.is_ascii_alphanumeric() || p == b'_' || p == b'.'
        };
        if preceded_by_ident {
            continue;
        }
        let name_len = template[i..]
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .count();
        if name_len == 0 {
            continue;
        }
        let name = &template[i..i + name_len];
        let rest = template[i + name_len..].trim_start();
        let has_default = rest
            .strip_prefix('|')
            .is_some_and(|r| r.trim_start().starts_with("default"));
        out.push((name.to_owned(), has_default));
        i += name_len;
    }
    out
}

/// Renders `template` with the environment (looked up through `env`) and the plan values
/// rendered so far (`plan`, a JSON object such as `{"gcp": {"project": ...}}`).
pub fn render(
    template: &str,
    env: &dyn Fn(&str) -> Option<String>,
    plan: &Map<String, Value>,
) -> Result<String, TemplateError> {
    if template.contains("{%") {
        return Err(TemplateError::Statement);
    }
    let mut env_values = Map::new();
    let mut unset = Vec::new();
    for (name, has_default) in env_refs(template) {
        match env(&name) {
            Some(v) => {
                env_values.insert(name, Value::String(v));
            }
            None if !has_default && !unset.contains(&name) => unset.push(name),
            None => {}
        }
    }
    if !unset.is_empty() {
        return Err(TemplateError::UnsetEnv(unset));
    }
    let mut ctx = Context::new();
    for (k, v) in plan {
        ctx.insert(k.as_str(), v);
    }
    ctx.insert("env", &env_values);
    let mut tera = Tera::default();
    // tera's own `get_env` reads the process environment behind the caller's back, and
    // `range` can build huge lists; neither has a use in a plan.
    tera.register_function("get_env", disabled("get_env", "use `env.NAME`"));
    tera.register_function("range", disabled("range", "plans need no loops"));
    tera.render_str(template, &ctx)
        .map_err(|e| TemplateError::Tera(describe(&e)))
}

fn disabled(
    name: &'static str,
    why: &'static str,
) -> impl Fn(&std::collections::HashMap<String, Value>) -> tera::Result<Value> + Send + Sync {
    move |_| {
        Err(tera::Error::msg(format!(
            "`{name}` is not available in plan files ({why})"
        )))
    }
}

/// tera's error chain in one line, without its internal template name.
fn describe(err: &tera::Error) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    let text = parts
        .into_iter()
        .filter(|p| !p.starts_with("Failed to render '__tera_one_off'"))
        .collect::<Vec<_>>()
        .join(": ");
    let text = text
        .replace(" while rendering '__tera_one_off'", "")
        .replace("'__tera_one_off'", "the value");
    // tera's parse errors span several lines with an ASCII-art pointer; keep one line:
    // "template syntax error at column N: expected ...".
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if let (Some(at), Some(eq)) = (one_line.find("--> "), one_line.rfind(" = ")) {
        let pos = one_line[at + 4..]
            .split_whitespace()
            .next()
            .unwrap_or_default();
        let column = pos.split(':').nth(1).unwrap_or(pos);
        return format!(
            "template syntax error at column {column}: {}",
            &one_line[eq + 3..]
        );
    }
    one_line.replace("Variable `", "variable `")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(name: &str) -> Option<String> {
        match name {
            "URL" => Some("http://127.0.0.1:4200/api".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn plan() -> Map<String, Value> {
        json!({"gcp": {"project": "prefect-project", "region": "us-central1"}})
            .as_object()
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn env_and_defaults() {
        assert_eq!(
            render("{{ env.URL }}", &env, &plan()).unwrap(),
            "http://127.0.0.1:4200/api"
        );
        assert_eq!(
            render("{{ env.NOPE | default(value=\"x\") }}", &env, &plan()).unwrap(),
            "x"
        );
        assert_eq!(render("a{{ env.EMPTY }}b", &env, &plan()).unwrap(), "ab");
    }

    #[test]
    fn unset_env_is_named() {
        assert_eq!(
            render(
                "{{ env.NOPE }}-{{ env.ALSO }}-{{ env.NOPE }}",
                &env,
                &plan()
            ),
            Err(TemplateError::UnsetEnv(vec!["NOPE".into(), "ALSO".into()]))
        );
    }

    #[test]
    fn plan_references() {
        assert_eq!(
            render(
                "{{ gcp.region }}-docker.pkg.dev/{{ gcp.project }}/r/i",
                &env,
                &plan()
            )
            .unwrap(),
            "us-central1-docker.pkg.dev/prefect-project/r/i"
        );
        let Err(TemplateError::Tera(msg)) = render("{{ gcp.projcet }}", &env, &plan()) else {
            panic!()
        };
        assert!(msg.contains("gcp.projcet"), "{msg}");
    }

    #[test]
    fn statements_and_process_env_are_refused() {
        assert_eq!(
            render("{% for i in [1] %}x{% endfor %}", &env, &plan()),
            Err(TemplateError::Statement)
        );
        assert!(render("{{ get_env(name=\"HOME\") }}", &env, &plan()).is_err());
    }

    #[test]
    fn syntax_errors_are_one_line() {
        let Err(TemplateError::Tera(msg)) = render("{{ env.URL ", &env, &plan()) else {
            panic!()
        };
        assert!(!msg.contains('\n'), "{msg}");
    }

    #[test]
    fn refs_found() {
        assert_eq!(
            env_refs("{{ env.A }} {{ myenv.B }} {{ env.C|default(value='') }}"),
            vec![("A".to_string(), false), ("C".to_string(), true)]
        );
    }
}
