//! Unit tests of the templating rules (the fixture comparison with prefect-gcp lives in
//! `config_tests.rs`).

use serde_json::json;

use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

fn apply(t: Value, v: Value) -> Option<Value> {
    apply_values(&t, &v, &no_env)
}

#[test]
fn finds_placeholders_like_prefects_regex() {
    let f = find_placeholders("a {{ x }} b {{y.z[0]}} {{ bad name }} {{{ w }}} {{ $HOME }}");
    let names: Vec<&str> = f.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["x", "y.z[0]", "w", "$HOME"]);
    assert_eq!(f[3].kind, PlaceholderKind::EnvVar);
    assert_eq!(
        find_placeholders("{{ prefect.blocks.a.b }}")[0].kind,
        PlaceholderKind::Block
    );
    assert_eq!(
        find_placeholders("{{prefect.variables.v}}")[0].kind,
        PlaceholderKind::Variable
    );
    assert!(find_placeholders("{{ }} {{").is_empty());
    assert!(
        find_placeholders("{{ é }}").len() == 1,
        "\\w is Unicode in Python"
    );
}

#[test]
fn whole_string_keeps_type_and_missing_drops_key() {
    let v = json!({"n": 5, "b": false, "o": {"k": [1, 2]}, "nul": null});
    assert_eq!(apply(json!("{{ n }}"), v.clone()), Some(json!(5)));
    assert_eq!(apply(json!("{{n}}"), v.clone()), Some(json!(5)));
    assert_eq!(
        apply(json!("{{ o }}"), v.clone()),
        Some(json!({"k": [1, 2]}))
    );
    assert_eq!(apply(json!("{{ o.k[1] }}"), v.clone()), Some(json!(2)));
    assert_eq!(apply(json!("{{ o.k[-1] }}"), v.clone()), Some(json!(2)));
    assert_eq!(
        apply(json!("{{ nul }}"), v.clone()),
        Some(Value::Null),
        "a null value keeps the key"
    );
    assert_eq!(apply(json!("{{ missing }}"), v.clone()), None);
    assert_eq!(
        apply(
            json!({"a": "{{ missing }}", "b": ["{{ missing }}", "{{ b }}", 3], "c": "{{ n }}"}),
            v
        ),
        Some(json!({"b": [false, 3], "c": 5}))
    );
}

#[test]
fn embedded_placeholders_become_python_text() {
    let v = json!({"n": 5, "b": true, "s": "x", "nul": null, "o": {"k": "it's"}, "l": [1, "a"]});
    assert_eq!(
        apply(
            json!("{{ s }}-{{ n }}-{{ b }}-{{ nul }}-{{ missing }}!"),
            v.clone()
        ),
        Some(json!("x-5-True-None-!"))
    );
    assert_eq!(
        apply(json!("{{ o }} {{ l }}"), v.clone()),
        Some(json!(r#"{'k': "it's"} [1, 'a']"#))
    );
    // The same placeholder twice is not a "whole" placeholder.
    assert_eq!(apply(json!("{{ n }}{{ n }}"), v.clone()), Some(json!("55")));
    // Block and variable placeholders are left for the resolver; env vars read the environment.
    let env = |k: &str| (k == "HOME").then(|| "/root".to_string());
    assert_eq!(
        apply_values(
            &json!("{{ prefect.variables.x }} {{ $HOME }} {{ $NOPE }}"),
            &v,
            &env
        ),
        Some(json!("{{ prefect.variables.x }} /root "))
    );
    // A value that looks like a placeholder is not expanded again.
    assert_eq!(
        apply(json!("a {{ s }}"), json!({"s": "{{ n }}", "n": 1})),
        Some(json!("a {{ n }}"))
    );
    // Numbers, booleans and null in the template pass through.
    assert_eq!(
        apply(json!([1, true, null]), v),
        Some(json!([1, true, null]))
    );
}

#[test]
fn job_variables_merge_env_key_by_key() {
    let dep = json!({"image": "a", "env": {"A": "1", "B": "2"}, "cpu": "1"})
        .as_object()
        .cloned()
        .unwrap_or_default();
    let run = json!({"image": "b", "env": {"B": "3", "C": "4"}})
        .as_object()
        .cloned()
        .unwrap_or_default();
    let merged = merge_job_variables(&dep, Some(&run));
    assert_eq!(
        Value::Object(merged),
        json!({"image": "b", "env": {"A": "1", "B": "3", "C": "4"}, "cpu": "1"})
    );
    // Without a deployment env, the run's env replaces.
    let dep = json!({"image": "a"})
        .as_object()
        .cloned()
        .unwrap_or_default();
    let merged = merge_job_variables(&dep, Some(&run));
    assert_eq!(merged.get("env"), Some(&json!({"B": "3", "C": "4"})));
    assert_eq!(merge_job_variables(&dep, None), dep);
}

fn template() -> Value {
    json!({
        "job_configuration": {
            "env": "{{ env }}",
            "image": "{{ image }}",
            "name": "{{ name }}",
            "timeout": "{{ timeout }}",
            "text": "img={{ image }} t={{ timeout }}"
        },
        "variables": {"properties": {
            "env": {"type": "object"},
            "image": {"default": "img:1"},
            "name": {"default": null},
            "timeout": {"default": 600}
        }}
    })
}

fn obj(v: Value) -> Object {
    v.as_object().cloned().unwrap_or_default()
}

#[test]
fn render_follows_from_template_and_values() {
    let out = render_job_configuration(
        &template(),
        &obj(json!({"timeout": 30, "env.A": "x", "env": {"B": "y"}})),
        &no_env,
    )
    .expect("renders");
    assert_eq!(
        Value::Object(out),
        json!({"env": {"A": "x", "B": "y"}, "image": "img:1", "timeout": 30, "text": "img=img:1 t=30"})
    );
}

#[test]
fn env_defaults_merge_under_job_variables() {
    let mut t = template();
    t["variables"]["properties"]["env"]["default"] = json!({"D": "d", "B": "default"});
    t["job_configuration"]["env"] = json!({"FIXED": "f"});
    let out =
        render_job_configuration(&t, &obj(json!({"env": {"B": "dep"}})), &no_env).expect("renders");
    assert_eq!(
        out.get("env"),
        Some(&json!({"FIXED": "f", "D": "d", "B": "dep"}))
    );
}

#[test]
fn render_errors_are_clear() {
    let e = render_job_configuration(&json!({}), &Object::new(), &no_env).expect_err("empty");
    assert!(e.contains("job_configuration"), "{e}");
    let e = render_job_configuration(
        &template(),
        &obj(json!({"image.x": 1, "image": "s"})),
        &no_env,
    );
    // Dotted keys are set first; the plain key then overwrites.
    assert!(e.is_ok());
    let e = render_job_configuration(&template(), &obj(json!({"a": 1, "a.b": 2})), &no_env);
    assert!(
        e.is_ok(),
        "a dotted key under a plain one is applied before it"
    );
    let e = render_job_configuration(&template(), &obj(json!({"a.b": 1, "a.b.c": 2})), &no_env)
        .expect_err("conflict");
    assert!(e.contains("a.b.c"), "{e}");
}
