//! Bounded per-execution (or per-service) log buffers.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Default size bound of a buffer: the last 1 MiB of output is kept.
pub const DEFAULT_LOG_LIMIT: usize = 1 << 20;

/// Where a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    /// The process's standard output.
    Stdout,
    /// The process's standard error.
    Stderr,
    /// A line the sandbox itself wrote (start, exit, restart, kill).
    System,
}

/// One line of output.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    /// When the line was read.
    pub time: DateTime<Utc>,
    /// Its stream.
    pub stream: Stream,
    /// The text, without the trailing newline (invalid UTF-8 replaced).
    pub text: String,
}

#[derive(Debug)]
struct Inner {
    lines: VecDeque<LogLine>,
    bytes: usize,
    limit: usize,
    dropped: u64,
}

/// A shared, bounded buffer of log lines; the oldest lines go first when it is full.
#[derive(Debug, Clone)]
pub struct LogBuffer {
    inner: Arc<Mutex<Inner>>,
}

impl Default for LogBuffer {
    fn default() -> Self {
        Self::new(DEFAULT_LOG_LIMIT)
    }
}

impl LogBuffer {
    /// A buffer keeping about `limit` bytes of text.
    pub fn new(limit: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                lines: VecDeque::new(),
                bytes: 0,
                limit,
                dropped: 0,
            })),
        }
    }

    /// Appends a line.
    pub fn push(&self, stream: Stream, text: impl Into<String>) {
        let text = text.into();
        let mut inner = self.lock();
        inner.bytes += text.len() + 1;
        inner.lines.push_back(LogLine {
            time: Utc::now(),
            stream,
            text,
        });
        while inner.bytes > inner.limit {
            match inner.lines.pop_front() {
                Some(old) => {
                    inner.bytes -= old.text.len() + 1;
                    inner.dropped += 1;
                }
                None => {
                    inner.bytes = 0;
                    break;
                }
            }
        }
    }

    /// A copy of the lines held now.
    pub fn lines(&self) -> Vec<LogLine> {
        self.lock().lines.iter().cloned().collect()
    }

    /// How many old lines were dropped to respect the bound.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// The lines held now as plain text, one per line.
    pub fn text(&self) -> String {
        let inner = self.lock();
        let mut out = String::with_capacity(inner.bytes);
        for line in &inner.lines {
            out.push_str(&line.text);
            out.push('\n');
        }
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves only whole lines behind: keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_newest_bytes() {
        let logs = LogBuffer::new(20);
        for i in 0..10 {
            logs.push(Stream::Stdout, format!("line {i}"));
        }
        let text = logs.text();
        assert!(text.len() <= 20, "{text:?}");
        assert!(text.ends_with("line 9\n"));
        assert!(!text.contains("line 0"));
        assert_eq!(logs.dropped() as usize + logs.lines().len(), 10);
    }
}
