//! Just enough Markdown for a terminal: headings in bold, `**bold**`, and pipe tables drawn
//! with aligned columns (the weather report of the guide is a Markdown table).

use serde_json::Value;

/// Renders Markdown text for a terminal. Text that is not a heading or a table passes through.
pub fn render(md: &str) -> String {
    let mut out = String::new();
    let lines: Vec<&str> = md.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.trim_start().starts_with('|') {
            let start = i;
            while i < lines.len() && lines[i].trim_start().starts_with('|') {
                i += 1;
            }
            let rows: Vec<Vec<String>> = lines[start..i]
                .iter()
                .map(|l| split_row(l))
                .filter(|cells| !is_separator(cells))
                .collect();
            out.push_str(&draw_table(&rows));
            continue;
        }
        let trimmed = line.trim_start();
        let hashes = trimmed.chars().take_while(|c| *c == '#').count();
        if (1..=6).contains(&hashes) && trimmed[hashes..].starts_with(' ') {
            out.push_str(
                &console::style(trimmed[hashes..].trim())
                    .bold()
                    .underlined()
                    .to_string(),
            );
        } else {
            out.push_str(&inline(line));
        }
        out.push('\n');
        i += 1;
    }
    out
}

/// Renders a table artifact's data: a list of objects, an object of columns, or a list of
/// lists (Prefect stores it as a JSON string).
pub fn render_table_data(data: &Value) -> String {
    let parsed;
    let data = match data {
        Value::String(s) => match serde_json::from_str::<Value>(s) {
            Ok(v) => {
                parsed = v;
                &parsed
            }
            Err(_) => return format!("{s}\n"),
        },
        other => other,
    };
    let cell = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let rows: Vec<Vec<String>> = match data {
        Value::Array(items) if items.iter().all(Value::is_object) && !items.is_empty() => {
            let mut header: Vec<String> = Vec::new();
            for item in items.iter().filter_map(Value::as_object) {
                for k in item.keys() {
                    if !header.contains(k) {
                        header.push(k.clone());
                    }
                }
            }
            let mut rows = vec![header.clone()];
            for item in items {
                rows.push(
                    header
                        .iter()
                        .map(|k| item.get(k).map(cell).unwrap_or_default())
                        .collect(),
                );
            }
            rows
        }
        Value::Array(items) => items
            .iter()
            .map(|r| match r {
                Value::Array(cells) => cells.iter().map(cell).collect(),
                other => vec![cell(other)],
            })
            .collect(),
        Value::Object(cols) => {
            let header: Vec<String> = cols.keys().cloned().collect();
            let height = cols
                .values()
                .filter_map(Value::as_array)
                .map(Vec::len)
                .max()
                .unwrap_or(0);
            let mut rows = vec![header];
            for r in 0..height {
                rows.push(
                    cols.values()
                        .map(|c| {
                            c.as_array()
                                .and_then(|c| c.get(r))
                                .map(cell)
                                .unwrap_or_default()
                        })
                        .collect(),
                );
            }
            rows
        }
        other => return format!("{}\n", cell(other)),
    };
    draw_table(&rows)
}

fn split_row(line: &str) -> Vec<String> {
    let t = line.trim();
    let t = t.strip_prefix('|').unwrap_or(t);
    let t = t.strip_suffix('|').unwrap_or(t);
    t.split('|').map(|c| c.trim().to_string()).collect()
}

fn is_separator(cells: &[String]) -> bool {
    !cells.is_empty()
        && cells.iter().all(|c| {
            let c = c.trim_matches(':');
            !c.is_empty() && c.chars().all(|ch| ch == '-')
        })
}

/// Draws rows (the first is the header) with columns padded to their widest cell.
fn draw_table(rows: &[Vec<String>]) -> String {
    let Some(header) = rows.first() else {
        return String::new();
    };
    let ncols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; ncols];
    for row in rows {
        for (i, c) in row.iter().enumerate() {
            widths[i] = widths[i].max(console::measure_text_width(&strip_bold(c)));
        }
    }
    let line = |row: &[String], bold: bool| {
        let cells: Vec<String> = (0..ncols)
            .map(|i| {
                let text = strip_bold(row.get(i).map(String::as_str).unwrap_or(""));
                let pad = widths[i].saturating_sub(console::measure_text_width(&text));
                let shown = if bold {
                    console::style(text).bold().to_string()
                } else {
                    text
                };
                format!("{shown}{}", " ".repeat(pad))
            })
            .collect();
        format!("  {}\n", cells.join("  │  ").trim_end())
    };
    let mut out = line(header, true);
    let rule: Vec<String> = widths.iter().map(|w| "─".repeat(*w)).collect();
    out.push_str(&format!("  {}\n", rule.join("──┼──")));
    for row in &rows[1..] {
        out.push_str(&line(row, false));
    }
    out
}

fn strip_bold(s: &str) -> String {
    s.replace("**", "")
}

/// `**x**` in bold; other inline syntax is left as written.
fn inline(line: &str) -> String {
    let parts: Vec<&str> = line.split("**").collect();
    if parts.len() < 3 || parts.len().is_multiple_of(2) {
        return line.to_string();
    }
    parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if i % 2 == 1 {
                console::style(*p).bold().to_string()
            } else {
                (*p).to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(s: &str) -> String {
        console::strip_ansi_codes(s).to_string()
    }

    #[test]
    fn tables_are_aligned() {
        let md =
            "# Weather\n\n| City | Temp |\n|:---|---:|\n| Berlin | 21 |\n| Rio de Janeiro | 30 |\n";
        let out = plain(&render(md));
        let expected = [
            "Weather",
            "",
            "  City            │  Temp",
            "  ────────────────┼──────",
            "  Berlin          │  21",
            "  Rio de Janeiro  │  30",
        ];
        assert_eq!(out.lines().collect::<Vec<_>>(), expected);
    }

    #[test]
    fn table_artifacts_from_records_and_columns() {
        let records = Value::String(r#"[{"a":1,"b":"x"},{"a":2}]"#.into());
        let out = plain(&render_table_data(&records));
        assert!(out.contains("a  │  b"), "{out}");
        assert!(out.contains("2  │"), "{out}");
        let cols = serde_json::json!({"a": [1, 2], "b": ["x", "y"]});
        let out = plain(&render_table_data(&cols));
        assert!(
            out.lines().nth(3).is_some_and(|l| l.contains("2  │  y")),
            "{out}"
        );
    }

    #[test]
    fn plain_text_passes_through() {
        assert_eq!(
            plain(&render("just text\nand **bold**")),
            "just text\nand bold\n"
        );
    }
}
