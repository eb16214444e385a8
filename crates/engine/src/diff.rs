//! Comparing JSON by meaning: flatten the keys a resource owns to `path -> value` and compare
//! those, so that server-filled fields, key order and UI edits elsewhere never show as drift.

use std::collections::BTreeMap;

use serde_json::Value;

use super::plan::FieldChange;

/// Flattens objects to dotted paths; arrays and scalars are leaves (arrays compare whole).
pub fn flatten(value: &Value) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    walk("", value, &mut out);
    out
}

fn walk(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                walk(&path, v, out);
            }
        }
        Value::Null => {}
        Value::Object(_) if prefix.is_empty() => {}
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

/// Field changes from `old` to `new`, over the union of their flattened paths.
pub fn changes(old: &Value, new: &Value) -> Vec<FieldChange> {
    let old = flatten(old);
    let new = flatten(new);
    let mut paths: Vec<&String> = old.keys().chain(new.keys()).collect();
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .filter_map(|p| {
            let (o, n) = (old.get(p), new.get(p));
            if equal_by_meaning(o, n) {
                None
            } else {
                Some(FieldChange::set(p.clone(), o.cloned(), n.cloned()))
            }
        })
        .collect()
}

/// Equal, treating numbers by value (1 == 1.0) and an empty object/array like an absent value.
pub fn equal_by_meaning(a: Option<&Value>, b: Option<&Value>) -> bool {
    fn empty(v: Option<&Value>) -> bool {
        match v {
            None | Some(Value::Null) => true,
            Some(Value::Array(a)) => a.is_empty(),
            Some(Value::Object(o)) => o.is_empty(),
            _ => false,
        }
    }
    match (a, b) {
        _ if empty(a) && empty(b) => true,
        (Some(Value::Number(x)), Some(Value::Number(y))) => x.as_f64() == y.as_f64(),
        (Some(Value::Array(x)), Some(Value::Array(y))) => {
            x.len() == y.len()
                && x.iter()
                    .zip(y)
                    .all(|(p, q)| equal_by_meaning(Some(p), Some(q)))
        }
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter()
                .all(|k| equal_by_meaning(x.get(k), y.get(k)))
        }
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// The value at a dotted path, if any.
pub fn get_path<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, k| v.get(k))
}

/// Sets the value at a dotted path, creating objects along the way.
pub fn set_path(value: &mut Value, path: &str, new: Value) {
    let mut cur = value;
    let mut parts = path.split('.').peekable();
    while let Some(k) = parts.next() {
        if !cur.is_object() {
            *cur = Value::Object(Default::default());
        }
        let Some(map) = cur.as_object_mut() else {
            return;
        };
        if parts.peek().is_none() {
            map.insert(k.to_string(), new);
            return;
        }
        cur = map
            .entry(k.to_string())
            .or_insert_with(|| Value::Object(Default::default()));
    }
}

/// Removes the value at a dotted path.
pub fn remove_path(value: &mut Value, path: &str) {
    let (parent, last) = match path.rsplit_once('.') {
        Some((p, l)) => (p, l),
        None => ("", path),
    };
    let target = if parent.is_empty() {
        Some(value)
    } else {
        parent.split('.').try_fold(value, |v, k| v.get_mut(k))
    };
    if let Some(Value::Object(map)) = target {
        map.remove(last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_changed_leaves_show() {
        let old = json!({"a": {"b": 1, "c": "x"}, "d": [1, 2]});
        let new = json!({"a": {"b": 2.0, "c": "x"}, "d": [1, 2]});
        let ch = changes(&old, &new);
        assert_eq!(ch.len(), 1);
        assert_eq!(ch[0].path, "a.b");
        let same = changes(&json!({"a": 1}), &json!({"a": 1.0}));
        assert!(same.is_empty());
    }

    #[test]
    fn empty_is_absent() {
        assert!(changes(&json!({"a": [], "b": {}}), &json!({})).is_empty());
        assert!(equal_by_meaning(Some(&json!(null)), None));
    }

    #[test]
    fn paths() {
        let mut v = json!({});
        set_path(&mut v, "a.b.c", json!(3));
        assert_eq!(get_path(&v, "a.b.c"), Some(&json!(3)));
        remove_path(&mut v, "a.b.c");
        assert_eq!(v, json!({"a": {"b": {}}}));
    }
}
