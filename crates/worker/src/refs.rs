//! Block and variable references in a rendered job configuration: `{"$ref": {"block_document_id"}}`,
//! `{{ prefect.blocks.<type>.<name>[.path] }}` and `{{ prefect.variables.<name> }}`, resolved as
//! Prefect's `resolve_block_document_references` and `resolve_variables` do.
//!
//! Resolution is split in three: collect what is referenced (pure), fetch it through a
//! [`Lookup`] (the only I/O, so tests need no server), substitute (pure). Blocks are resolved
//! before variables, as in Prefect, so a block's data may itself name a variable.

use std::collections::BTreeMap;
use std::future::Future;

use serde_json::Value;

use super::template::{
    BLOCK_PREFIX, PlaceholderKind, VARIABLE_PREFIX, find_placeholders, get_path, py_str,
    substitute, whole,
};

/// Where referenced blocks and variables come from. Block data may hold secrets: callers keep
/// it out of logs.
pub trait Lookup: Sync {
    /// A block document's data by id (`None` when it does not exist).
    fn block_by_id(&self, id: &str) -> impl Future<Output = Result<Option<Value>, String>> + Send;
    /// A block document's data by type slug and name.
    fn block_by_name(
        &self,
        slug: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<Value>, String>> + Send;
    /// A Prefect variable's value.
    fn variable(&self, name: &str) -> impl Future<Output = Result<Option<Value>, String>> + Send;
}

/// Blocks fetched for one configuration.
#[derive(Default)]
struct Blocks {
    by_id: BTreeMap<String, Value>,
    by_name: BTreeMap<(String, String), Value>,
}

/// `$ref` ids and `(slug, name)` pairs named anywhere in `v`.
fn collect_blocks(
    v: &Value,
    ids: &mut Vec<String>,
    names: &mut Vec<(String, String)>,
) -> Result<(), String> {
    match v {
        Value::Object(map) => {
            if let Some(id) = ref_id(map) {
                ids.push(id);
                return Ok(());
            }
            for item in map.values() {
                collect_blocks(item, ids, names)?;
            }
        }
        Value::Array(items) => {
            for item in items {
                collect_blocks(item, ids, names)?;
            }
        }
        Value::String(s) => {
            for p in find_placeholders(s)
                .iter()
                .filter(|p| p.kind == PlaceholderKind::Block)
            {
                let (slug, name, _) = split_block(&p.name)?;
                names.push((slug, name));
            }
        }
        _ => {}
    }
    Ok(())
}

/// The block id of a `{"$ref": {"block_document_id": ...}}` object.
fn ref_id(map: &serde_json::Map<String, Value>) -> Option<String> {
    match map.get("$ref")?.get("block_document_id")? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// `prefect.blocks.<slug>.<name>[.<path>]` -> its parts.
fn split_block(placeholder: &str) -> Result<(String, String, Option<String>), String> {
    let rest = placeholder.trim_start_matches(BLOCK_PREFIX);
    let mut parts = rest.splitn(3, '.');
    match (parts.next(), parts.next()) {
        (Some(slug), Some(name)) if !slug.is_empty() && !name.is_empty() => Ok((
            slug.to_string(),
            name.to_string(),
            parts.next().map(str::to_string),
        )),
        _ => Err(format!(
            "invalid block placeholder `{placeholder}`: expected prefect.blocks.<block-type-slug>.<block-document-name>"
        )),
    }
}

/// The value a block placeholder stands for: the block's data, a value under it, and blocks
/// holding only `{"value": ...}` unwrapped.
fn block_value(data: &Value, path: Option<&str>, placeholder: &str) -> Result<Value, String> {
    let mut data = data;
    if let Value::Object(m) = data {
        let path_into_value = path
            .is_some_and(|p| p == "value" || p.starts_with("value.") || p.starts_with("value["));
        if m.len() == 1
            && !path_into_value
            && let Some(inner) = m.get("value")
        {
            data = inner;
        }
    }
    match path {
        None => Ok(data.clone()),
        Some(p) => get_path(data, p)
            .cloned()
            .ok_or_else(|| format!("`{{{{ {placeholder} }}}}`: the block has no value at `{p}`")),
    }
}

fn replace_blocks(v: &Value, blocks: &Blocks) -> Result<Value, String> {
    Ok(match v {
        Value::Object(map) => {
            if let Some(id) = ref_id(map) {
                return blocks
                    .by_id
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| format!("block document {id} was not fetched"));
            }
            let mut out = serde_json::Map::new();
            for (k, item) in map {
                out.insert(k.clone(), replace_blocks(item, blocks)?);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| replace_blocks(i, blocks))
                .collect::<Result<_, _>>()?,
        ),
        Value::String(s) => {
            let found = find_placeholders(s);
            if !found.iter().any(|p| p.kind == PlaceholderKind::Block) {
                return Ok(v.clone());
            }
            let lookup = |name: &str| -> Result<Value, String> {
                let (slug, doc, path) = split_block(name)?;
                let data = blocks
                    .by_name
                    .get(&(slug.clone(), doc.clone()))
                    .ok_or_else(|| format!("block `{slug}/{doc}` was not fetched"))?;
                block_value(data, path.as_deref(), name)
            };
            if whole(s, &found, PlaceholderKind::Block) {
                return lookup(&found[0].name);
            }
            let mut err = None;
            let text = substitute(s, &found, |p| {
                if p.kind != PlaceholderKind::Block {
                    return None;
                }
                match lookup(&p.name) {
                    Ok(Value::Object(_) | Value::Array(_)) => {
                        err = Some(format!(
                            "`{{{{ {} }}}}` is an object or list and cannot be embedded in text; name a scalar under it",
                            p.name
                        ));
                        None
                    }
                    Ok(value) => Some(py_str(&value)),
                    Err(e) => {
                        err = Some(e);
                        None
                    }
                }
            });
            if let Some(e) = err {
                return Err(e);
            }
            Value::String(text)
        }
        other => other.clone(),
    })
}

fn collect_variables(v: &Value, names: &mut Vec<String>) {
    match v {
        Value::Object(map) => map.values().for_each(|i| collect_variables(i, names)),
        Value::Array(items) => items.iter().for_each(|i| collect_variables(i, names)),
        Value::String(s) => names.extend(
            find_placeholders(s)
                .into_iter()
                .filter(|p| p.kind == PlaceholderKind::Variable)
                .map(|p| p.name.trim_start_matches(VARIABLE_PREFIX).to_string()),
        ),
        _ => {}
    }
}

/// Missing variables read as the empty string, as in Prefect.
fn replace_variables(v: &Value, vars: &BTreeMap<String, Option<Value>>) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, i)| (k.clone(), replace_variables(i, vars)))
                .collect(),
        ),
        Value::Array(items) => {
            Value::Array(items.iter().map(|i| replace_variables(i, vars)).collect())
        }
        Value::String(s) => {
            let found = find_placeholders(s);
            let value_of = |name: &str| {
                vars.get(name.trim_start_matches(VARIABLE_PREFIX))
                    .cloned()
                    .flatten()
            };
            if whole(s, &found, PlaceholderKind::Variable) {
                return value_of(&found[0].name).unwrap_or_else(|| Value::String(String::new()));
            }
            Value::String(substitute(s, &found, |p| {
                (p.kind == PlaceholderKind::Variable)
                    .then(|| value_of(&p.name).map(|v| py_str(&v)).unwrap_or_default())
            }))
        }
        other => other.clone(),
    }
}

/// Resolves every block and variable reference of `config` through `lookup`.
pub async fn resolve(config: Value, lookup: &impl Lookup) -> Result<Value, String> {
    let (mut ids, mut names) = (Vec::new(), Vec::new());
    collect_blocks(&config, &mut ids, &mut names)?;
    let mut blocks = Blocks::default();
    for id in ids {
        if blocks.by_id.contains_key(&id) {
            continue;
        }
        let data = lookup.block_by_id(&id).await?.ok_or_else(|| {
            format!(
                "block document {id} referenced by the work pool or deployment no longer exists"
            )
        })?;
        blocks.by_id.insert(id, data);
    }
    for (slug, name) in names {
        if blocks.by_name.contains_key(&(slug.clone(), name.clone())) {
            continue;
        }
        let data = lookup.block_by_name(&slug, &name).await?.ok_or_else(|| {
            format!(
                "block `{name}` of type `{slug}` referenced in the job configuration does not exist"
            )
        })?;
        blocks.by_name.insert((slug, name), data);
    }
    let config = replace_blocks(&config, &blocks)?;
    let mut var_names = Vec::new();
    collect_variables(&config, &mut var_names);
    let mut vars = BTreeMap::new();
    for name in var_names {
        if let std::collections::btree_map::Entry::Vacant(slot) = vars.entry(name) {
            let value = lookup.variable(slot.key()).await?;
            slot.insert(value);
        }
    }
    Ok(replace_variables(&config, &vars))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Fixed {
        by_id: Value,
        by_name: Value,
        vars: Value,
    }

    impl Lookup for Fixed {
        async fn block_by_id(&self, id: &str) -> Result<Option<Value>, String> {
            Ok(self.by_id.get(id).cloned())
        }
        async fn block_by_name(&self, slug: &str, name: &str) -> Result<Option<Value>, String> {
            Ok(self.by_name.get(format!("{slug}/{name}")).cloned())
        }
        async fn variable(&self, name: &str) -> Result<Option<Value>, String> {
            Ok(self.vars.get(name).cloned())
        }
    }

    fn fixed() -> Fixed {
        Fixed {
            by_id: json!({"b1": {"project": "p", "service_account_info": {"k": 1}}}),
            by_name: json!({"secret/tok": {"value": "t0k"}, "json/cfg": {"value": {"a": [1, {"b": "x"}]}}, "s3/b": {"bucket": "bk", "n": 2}}),
            vars: json!({"v": "val", "n": 5, "{{ prefect.variables.v }}": "loop"}),
        }
    }

    async fn run(v: Value) -> Result<Value, String> {
        resolve(v, &fixed()).await
    }

    #[tokio::test]
    async fn refs_and_placeholders_resolve() {
        let out = run(json!({
            "credentials": {"$ref": {"block_document_id": "b1"}},
            "whole": "{{ prefect.blocks.secret.tok }}",
            "path": "{{ prefect.blocks.json.cfg.a[1].b }}",
            "into_value": "{{ prefect.blocks.json.cfg.value.a[0] }}",
            "plain": "{{ prefect.blocks.s3.b }}",
            "embedded": "s3://{{ prefect.blocks.s3.b.bucket }}/{{ prefect.blocks.s3.b.n }}",
            "var": "{{ prefect.variables.n }}",
            "var_text": "x-{{ prefect.variables.v }}-{{ prefect.variables.nope }}",
            "var_missing": "{{ prefect.variables.nope }}",
            "list": ["{{ prefect.variables.v }}", 1]
        }))
        .await
        .expect("resolves");
        assert_eq!(
            out,
            json!({
                "credentials": {"project": "p", "service_account_info": {"k": 1}},
                "whole": "t0k",
                "path": "x",
                "into_value": 1,
                "plain": {"bucket": "bk", "n": 2},
                "embedded": "s3://bk/2",
                "var": 5,
                "var_text": "x-val-",
                "var_missing": "",
                "list": ["val", 1]
            })
        );
    }

    #[tokio::test]
    async fn errors_name_the_reference() {
        let e = run(json!({"c": {"$ref": {"block_document_id": "gone"}}}))
            .await
            .expect_err("missing");
        assert!(e.contains("gone"), "{e}");
        let e = run(json!({"c": "{{ prefect.blocks.secret.nope }}"}))
            .await
            .expect_err("missing");
        assert!(e.contains("`nope`") && e.contains("`secret`"), "{e}");
        let e = run(json!({"c": "a {{ prefect.blocks.s3.b }}"}))
            .await
            .expect_err("object inline");
        assert!(e.contains("cannot be embedded"), "{e}");
        let e = run(json!({"c": "{{ prefect.blocks.s3.b.zzz }}"}))
            .await
            .expect_err("bad path");
        assert!(e.contains("zzz"), "{e}");
        let e = run(json!({"c": "{{ prefect.blocks.onlyslug }}"}))
            .await
            .expect_err("format");
        assert!(e.contains("expected prefect.blocks"), "{e}");
    }

    #[tokio::test]
    async fn variable_values_are_not_templated_again() {
        // A value that looks like a placeholder is inserted as text, not expanded.
        let mut f = fixed();
        f.vars = json!({"v": "{{ prefect.variables.w }}", "w": "no"});
        let out = resolve(json!({"a": "{{ prefect.variables.v }}"}), &f)
            .await
            .expect("ok");
        assert_eq!(out, json!({"a": "{{ prefect.variables.w }}"}));
    }
}
