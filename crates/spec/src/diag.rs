//! Diagnostics: every problem found in a plan, each pointing at a file, line and column.

use std::fmt;
use std::path::{Path, PathBuf};

/// A position in a source file, 1-based. `line == 0` means "the whole file" (for problems such
/// as "cannot read the file" that have no better place to point at).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub line: u32,
    pub column: u32,
}

impl Pos {
    /// The start of the file.
    pub const START: Pos = Pos { line: 1, column: 1 };
    /// No known position.
    pub const NONE: Pos = Pos { line: 0, column: 0 };
}

/// One problem in a plan file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based; 0 when the problem concerns the whole file.
    pub line: u32,
    /// 1-based; 0 when unknown.
    pub column: u32,
    pub message: String,
    /// What would be valid, or the likely intended spelling.
    pub hint: Option<String>,
}

impl Diagnostic {
    /// A diagnostic at `pos` in `file`.
    pub fn new(file: &Path, pos: Pos, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            line: pos.line,
            column: pos.column,
            message: message.into(),
            hint: None,
        }
    }

    /// Adds a hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Adds a hint when there is one.
    pub fn with_hint_opt(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
            if self.column > 0 {
                write!(f, ":{}", self.column)?;
            }
        }
        write!(f, ": error: {}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Every problem found in a plan, in file order. Never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Adds one.
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }

    /// True when nothing was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many problems.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The problems.
    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }

    /// Sorts by file, then position, and drops exact duplicates (the same problem reached
    /// twice, e.g. through a YAML alias).
    pub(crate) fn finish(mut self) -> Self {
        self.0
            .sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
        self.0.dedup();
        self
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl IntoIterator for Diagnostics {
    type Item = Diagnostic;
    type IntoIter = std::vec::IntoIter<Diagnostic>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// The closest of `candidates` to `word`, when it is close enough to be a likely typo.
pub fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(word, c), *c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_with_hint() {
        let d = Diagnostic::new(
            Path::new("plans/x.yaml"),
            Pos {
                line: 12,
                column: 7,
            },
            "unknown key `regoin` in `gcp`",
        )
        .with_hint("did you mean `region`?");
        assert_eq!(
            d.to_string(),
            "plans/x.yaml:12:7: error: unknown key `regoin` in `gcp`\n  hint: did you mean `region`?"
        );
    }

    #[test]
    fn display_without_position() {
        let d = Diagnostic::new(Path::new("p.yaml"), Pos::NONE, "cannot read");
        assert_eq!(d.to_string(), "p.yaml: error: cannot read");
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            did_you_mean("regoin", &["project", "region", "apis"]),
            Some("region")
        );
        assert_eq!(did_you_mean("zzz", &["project", "region", "apis"]), None);
    }
}
