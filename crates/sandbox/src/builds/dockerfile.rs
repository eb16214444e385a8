//! The part of the Dockerfile language the sandbox's builder follows: logical lines (comments,
//! `\` continuations), instructions with their line numbers, `ARG` defaults and `$VAR` /
//! `${VAR}` substitution, JSON exec form, and `RUN pip install ...` recognised as a pip step.
//! Everything else a real `docker build` would run is refused with its line, never skipped.

use std::collections::BTreeMap;

/// One instruction with the line it starts on (1-based) and its text as written.
#[derive(Debug, Clone, PartialEq)]
pub struct Instruction {
    /// Line number where it starts.
    pub line: usize,
    /// Upper-case keyword.
    pub keyword: String,
    /// The arguments, continuations joined.
    pub args: String,
    /// The instruction as written (for messages), continuations joined.
    pub text: String,
}

/// Splits a Dockerfile into instructions. Parser directives (`# syntax=...`) are comments here.
pub fn parse(text: &str) -> Result<Vec<Instruction>, String> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let trimmed = raw.trim();
        if pending.is_none() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if pending.is_some() && trimmed.starts_with('#') {
            // Comment lines inside a continuation are dropped (Docker does the same).
            continue;
        }
        let (continued, body) = match trimmed.strip_suffix('\\') {
            Some(b) => (true, b.trim_end()),
            None => (false, trimmed),
        };
        let entry = pending.get_or_insert_with(|| (line_no, String::new()));
        if !entry.1.is_empty() {
            entry.1.push(' ');
        }
        entry.1.push_str(body);
        if !continued && let Some((line, text)) = pending.take() {
            out.push(instruction(line, text)?);
        }
    }
    if let Some((line, text)) = pending.take() {
        out.push(instruction(line, text)?);
    }
    Ok(out)
}

fn instruction(line: usize, text: String) -> Result<Instruction, String> {
    let (keyword, args) = match text.split_once(char::is_whitespace) {
        Some((k, a)) => (k, a.trim()),
        None => (text.as_str(), ""),
    };
    if keyword.is_empty() || !keyword.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(format!(
            "Dockerfile parse error line {line}: unknown instruction: {keyword}"
        ));
    }
    Ok(Instruction {
        line,
        keyword: keyword.to_ascii_uppercase(),
        args: args.to_owned(),
        text: text.clone(),
    })
}

/// Substitutes `$NAME` and `${NAME}` (and `${NAME:-default}`) from `vars`; unknown names
/// become empty, as in Docker.
pub fn substitute(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' && chars.get(i + 1) == Some(&'$') {
            out.push('$');
            i += 2;
            continue;
        }
        if c != '$' {
            out.push(c);
            i += 1;
            continue;
        }
        if chars.get(i + 1) == Some(&'{')
            && let Some(end) = chars[i + 2..].iter().position(|&c| c == '}')
        {
            let inner: String = chars[i + 2..i + 2 + end].iter().collect();
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n.to_owned(), Some(d.to_owned())),
                None => (inner.clone(), None),
            };
            match vars.get(&name).filter(|v| !v.is_empty()) {
                Some(v) => out.push_str(v),
                None => out.push_str(&default.unwrap_or_default()),
            }
            i += end + 3;
            continue;
        }
        let name: String = chars[i + 1..]
            .iter()
            .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
            .collect();
        if name.is_empty() {
            out.push('$');
            i += 1;
        } else {
            out.push_str(vars.get(&name).map(String::as_str).unwrap_or_default());
            i += 1 + name.chars().count();
        }
    }
    out
}

/// `["a", "b"]` → `Some(vec)`; anything else (shell form) → `None`.
pub fn exec_form(args: &str) -> Option<Vec<String>> {
    let t = args.trim();
    if !t.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(t).ok()
}

/// Shell-form words: whitespace-separated with simple single and double quotes. `None` when
/// the text uses shell syntax beyond words (operators, substitutions, redirections).
pub fn shell_words(text: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => cur.push(c),
            None => match c {
                '\'' | '"' => {
                    quote = Some(c);
                    in_word = true;
                }
                c if c.is_whitespace() => {
                    if in_word {
                        words.push(std::mem::take(&mut cur));
                        in_word = false;
                    }
                }
                '&' | '|' | ';' | '<' | '>' | '`' | '$' | '(' | ')' | '*' | '?' | '\\' => {
                    return None;
                }
                c => {
                    cur.push(c);
                    in_word = true;
                }
            },
        }
    }
    if quote.is_some() {
        return None;
    }
    if in_word {
        words.push(cur);
    }
    Some(words)
}

/// One `pip install` a `RUN` asks for: its arguments after `install`.
#[derive(Debug, Clone, PartialEq)]
pub struct PipInstall {
    /// Requirement files (`-r FILE`), as written.
    pub requirement_files: Vec<String>,
    /// Other arguments: requirement specifiers and the harmless options kept.
    pub args: Vec<String>,
}

/// Options of `pip install` that change nothing the sandbox models (caches, verbosity, the
/// version check, compile and user-site switches); kept off the real pip command line.
const IGNORED_PIP_FLAGS: &[&str] = &[
    "--no-cache-dir",
    "--no-cache",
    "-q",
    "--quiet",
    "-qq",
    "-v",
    "--verbose",
    "--disable-pip-version-check",
    "--no-compile",
    "--compile",
    "--no-warn-script-location",
    "--root-user-action=ignore",
    "--progress-bar=off",
    "--break-system-packages",
    // uv's: install into the interpreter rather than a virtualenv (the image's environment is
    // where the sandbox installs anyway).
    "--system",
];

/// Options passed on to pip as they are.
const KEPT_PIP_FLAGS: &[&str] = &["-U", "--upgrade", "--pre", "--no-deps"];

/// Recognises `RUN [python[3] -m] pip[3] install ...` and `RUN uv pip install ...` in shell or
/// exec form. `Err` explains why a RUN that looks like pip is not one the builder can follow;
/// `Ok(None)` is not pip.
///
/// `uv pip install` is what Prefect's own `dockerfile: auto` writes
/// (`prefect/utilities/dockerutils.py` `generate_default_dockerfile`: `RUN uv pip install -r
/// /opt/prefect/<dir>/requirements.txt`); Prefect's base images carry uv, and that line installs
/// into the image's Python on Google's builder. The sandbox follows it as the same install
/// into the image's environment (pip does the installing).
pub fn pip_install(args: &str) -> Result<Option<PipInstall>, String> {
    let words = match exec_form(args) {
        Some(w) => w,
        None => match shell_words(args) {
            Some(w) => w,
            None => return Ok(None),
        },
    };
    let mut rest: &[String] = &words;
    let program = |w: &str| {
        std::path::Path::new(w)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    if let Some((first, tail)) = rest.split_first()
        && program(first) == "uv"
    {
        match tail {
            [p, more @ ..] if p == "pip" => rest = more,
            // `uv add`, `uv sync`, `uv run`: not a pip install, so not followed.
            _ => return Ok(None),
        }
    } else if let Some((first, tail)) = rest.split_first()
        && matches!(program(first).as_str(), "python" | "python3")
    {
        match tail {
            [m, module, more @ ..] if m == "-m" && module == "pip" => rest = more,
            _ => return Ok(None),
        }
    } else if let Some((first, tail)) = rest.split_first()
        && matches!(program(first).as_str(), "pip" | "pip3")
    {
        rest = tail;
    } else {
        return Ok(None);
    }
    let Some((sub, tail)) = rest.split_first() else {
        return Ok(None);
    };
    if sub != "install" {
        return Err(format!("pip {sub} is not an install"));
    }
    let mut out = PipInstall {
        requirement_files: Vec::new(),
        args: Vec::new(),
    };
    let mut it = tail.iter();
    while let Some(arg) = it.next() {
        if arg == "-r" || arg == "--requirement" {
            let file = it.next().ok_or_else(|| format!("{arg} needs a file"))?;
            out.requirement_files.push(file.clone());
        } else if let Some(file) = arg.strip_prefix("--requirement=") {
            out.requirement_files.push(file.to_owned());
        } else if IGNORED_PIP_FLAGS.contains(&arg.as_str()) {
        } else if KEPT_PIP_FLAGS.contains(&arg.as_str()) {
            out.args.push(arg.clone());
        } else if arg.starts_with('-') {
            return Err(format!(
                "pip install option {arg} is not followed by the sandbox"
            ));
        } else {
            out.args.push(arg.clone());
        }
    }
    if out.requirement_files.is_empty() && !out.args.iter().any(|a| !a.starts_with('-')) {
        return Err("pip install names no requirement".into());
    }
    Ok(Some(out))
}

/// Packages an `apt-get install` may name: the ones whose files the sandbox's processes get
/// from the host instead (a container here runs the host's programs and sees its
/// `/etc/ssl/certs`), with the host file that must exist for that to hold.
pub const HOST_PACKAGES: &[(&str, &str)] =
    &[("ca-certificates", "/etc/ssl/certs/ca-certificates.crt")];

/// The host file that stands for Debian package `name`, or why the sandbox cannot follow
/// installing it.
pub fn host_package(name: &str) -> Result<&'static str, String> {
    HOST_PACKAGES
        .iter()
        .find(|(p, _)| *p == name)
        .map(|(_, file)| *file)
        .ok_or_else(|| {
            format!(
                "apt-get install {name}: the sandbox installs no Debian packages; it follows only {}, whose files its processes take from the host",
                HOST_PACKAGES
                    .iter()
                    .map(|(p, _)| *p)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// Options of `apt-get` that change nothing the sandbox models.
const IGNORED_APT_FLAGS: &[&str] = &[
    "-y",
    "--yes",
    "--assume-yes",
    "-q",
    "-qq",
    "--quiet",
    "--no-install-recommends",
    "--no-install-suggests",
];

/// Recognises the usual Debian package step, a `&&` chain of `apt-get update`, `apt-get
/// install [options] PACKAGES`, `apt-get clean` and `rm -rf /var/lib/apt/lists/*` (what the
/// worker image's generated Dockerfile writes). `Ok(Some(packages))` for such a chain;
/// `Ok(None)` when it has no `apt-get install` (not an apt step); `Err` for a chain that
/// installs but also does something else, which is not followed.
pub fn apt_install(args: &str) -> Result<Option<Vec<String>>, String> {
    if !args.contains("apt-get") || exec_form(args).is_some() {
        return Ok(None);
    }
    let mut packages: Option<Vec<String>> = None;
    let mut others = Vec::new();
    for part in args.split("&&").map(str::trim) {
        if part == "rm -rf /var/lib/apt/lists/*" || part == "rm -rf /var/lib/apt/lists/*/" {
            continue;
        }
        let words = shell_words(part).unwrap_or_default();
        match words
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["apt-get", rest @ ..] => {
                let mut it = rest.iter().filter(|w| !IGNORED_APT_FLAGS.contains(w));
                match it.next() {
                    Some(&"update") | Some(&"clean") => {
                        if let Some(extra) = it.next() {
                            return Err(format!("apt-get option {extra} is not followed"));
                        }
                    }
                    Some(&"install") => {
                        let names: Vec<String> = it.map(|w| w.to_string()).collect();
                        if let Some(opt) = names.iter().find(|n| n.starts_with('-')) {
                            return Err(format!("apt-get install option {opt} is not followed"));
                        }
                        if names.is_empty() {
                            return Err("apt-get install names no package".into());
                        }
                        packages.get_or_insert_with(Vec::new).extend(names);
                    }
                    other => {
                        return Err(format!(
                            "apt-get {} is not followed",
                            other.copied().unwrap_or_default()
                        ));
                    }
                }
            }
            _ => others.push(part.to_owned()),
        }
    }
    match (packages, others.first()) {
        (None, _) => Ok(None),
        (Some(_), Some(other)) => Err(format!("`{other}` next to apt-get is not followed")),
        (Some(p), None) => Ok(Some(p)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_runs() {
        let line = "apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*";
        assert_eq!(apt_install(line), Ok(Some(vec!["ca-certificates".into()])));
        assert_eq!(
            apt_install("apt-get install -qq curl git"),
            Ok(Some(vec!["curl".into(), "git".into()]))
        );
        assert_eq!(apt_install("pip install six"), Ok(None));
        assert_eq!(apt_install("apt-get update"), Ok(None));
        assert!(
            apt_install("apt-get update && apt-get install -y ca-certificates && useradd w")
                .unwrap_err()
                .contains("`useradd w` next to apt-get")
        );
        assert!(apt_install("apt-get remove -y perl").is_err());
        // Only packages the host stands in for; anything else fails the build.
        assert_eq!(
            host_package("ca-certificates"),
            Ok("/etc/ssl/certs/ca-certificates.crt")
        );
        assert!(
            host_package("curl")
                .unwrap_err()
                .contains("apt-get install curl: the sandbox installs no Debian packages")
        );
        assert!(apt_install("apt-get install -t bookworm-backports x").is_err());
    }

    #[test]
    fn instructions_keep_their_first_line() {
        let text = "# syntax=docker/dockerfile:1\nFROM prefecthq/prefect:3-python3.11\n\nRUN pip install \\\n    art==6.5 \\\n    six\ncmd [\"python\", \"flow.py\"]\n";
        let ins = parse(text).expect("parses");
        assert_eq!(ins.len(), 3);
        assert_eq!((ins[1].line, ins[1].keyword.as_str()), (4, "RUN"));
        assert_eq!(ins[1].args, "pip install art==6.5 six");
        assert_eq!(ins[2].keyword, "CMD");
        assert!(parse("FROM x\n1BAD y\n").is_err());
    }

    #[test]
    fn substitution() {
        let vars = BTreeMap::from([("PY".to_owned(), "3.11".to_owned())]);
        assert_eq!(substitute("python${PY}-$PY", &vars), "python3.11-3.11");
        assert_eq!(substitute("${NOPE:-x}/$NOPE", &vars), "x/");
    }

    #[test]
    fn pip_runs() {
        let p = pip_install("pip install --no-cache-dir -r requirements.txt")
            .expect("ok")
            .expect("pip");
        assert_eq!(p.requirement_files, vec!["requirements.txt"]);
        assert!(p.args.is_empty());
        let p = pip_install("python -m pip install -U 'art==6.5'")
            .expect("ok")
            .expect("pip");
        assert_eq!(p.args, vec!["-U", "art==6.5"]);
        let p = pip_install(r#"["pip", "install", "six"]"#)
            .expect("ok")
            .expect("pip");
        assert_eq!(p.args, vec!["six"]);
        assert_eq!(pip_install("apt-get install -y curl").expect("ok"), None);
        assert_eq!(
            pip_install("pip install six && rm -rf /tmp").expect("ok"),
            None
        );
        assert!(pip_install("pip uninstall six").is_err());
        assert!(pip_install("pip install --index-url http://x six").is_err());
        // Prefect's generate_default_dockerfile line, and uv's --system.
        let p = pip_install("uv pip install -r /opt/prefect/proj/requirements.txt")
            .expect("ok")
            .expect("uv pip");
        assert_eq!(
            p.requirement_files,
            vec!["/opt/prefect/proj/requirements.txt"]
        );
        let p = pip_install("uv pip install --system six")
            .expect("ok")
            .expect("uv pip");
        assert_eq!(p.args, vec!["six"]);
        assert_eq!(pip_install("uv sync --frozen").expect("ok"), None);
        assert!(pip_install("uv pip uninstall six").is_err());
    }
}
