//! The loader never panics: not on arbitrary text, not on arbitrary bytes, not on a valid
//! plan with random edits. It either accepts or explains.

use std::path::Path;

use bootstrap_spec::{load_bytes, load_str};
use proptest::prelude::*;

const GUIDE: &str = include_str!("../../../../plans/guide.yaml");

fn env(name: &str) -> Option<String> {
    match name {
        "PREFECT_API_URL" => Some("http://127.0.0.1:4200/api".into()),
        "PREFECT_API_KEY" => Some("pnu_key".into()),
        _ => None,
    }
}

/// Every rejection points somewhere in the file and says something.
fn check(result: Result<bootstrap_spec::Spec, bootstrap_spec::Diagnostics>) {
    if let Err(d) = result {
        assert!(!d.is_empty());
        for x in d.iter() {
            assert!(!x.message.is_empty());
            assert!(x.line > 0, "{x}");
        }
    }
}

/// Pieces that tend to break YAML and templates in interesting ways.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(":".to_owned()),
        Just("- ".to_owned()),
        Just("\n  ".to_owned()),
        Just("{{".to_owned()),
        Just("}}".to_owned()),
        Just("{% for %}".to_owned()),
        Just("&a ".to_owned()),
        Just("*a".to_owned()),
        Just("[".to_owned()),
        Just("'".to_owned()),
        Just("\"".to_owned()),
        Just("\t".to_owned()),
        Just("---\n".to_owned()),
        Just("{{ env.X }}".to_owned()),
        Just("{{ gcp.project | upper }}".to_owned()),
        Just("!!binary ".to_owned()),
        Just("<<: *a\n".to_owned()),
        "[a-z_]{1,8}".prop_map(|s| s),
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text(s in any::<String>()) {
        check(load_str(&s, "p.yaml", &env));
    }

    #[test]
    fn arbitrary_bytes(b in proptest::collection::vec(any::<u8>(), 0..512)) {
        check(load_bytes(&b, Path::new("p.yaml"), &env));
    }

    #[test]
    fn edited_guide(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0usize..3, fragment()), 1..6)
    ) {
        let mut plan = GUIDE.to_owned();
        for (at, kind, text) in edits {
            let mut i = at.index(plan.len() + 1);
            while !plan.is_char_boundary(i) {
                i -= 1;
            }
            match kind {
                0 => plan.insert_str(i, &text),
                1 => {
                    // Delete up to the end of the line.
                    let end = plan[i..].find('\n').map_or(plan.len(), |e| i + e);
                    plan.replace_range(i..end, "");
                }
                _ => {
                    // Replace the rest of the line.
                    let end = plan[i..].find('\n').map_or(plan.len(), |e| i + e);
                    plan.replace_range(i..end, &text.replace('\n', " "));
                }
            }
        }
        check(load_str(&plan, "p.yaml", &env));
    }
}
