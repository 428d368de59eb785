//! Configuration problems, each with the place in the file it is about.
//!
//! Validation never stops at the first problem: it collects a [`ConfigError`] for every
//! one, so that a pull request sees all of them in one CI run. Rendering turns byte spans
//! into `file:line:column` plus the offending source line and a caret, like rustc.

use std::fmt::{self, Write as _};
use std::ops::Range;

/// How bad a finding is: errors fail `check` and reject a reload, warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Severity {
    /// The file cannot be served.
    Error,
    /// The file is served, but probably not as meant.
    Warning,
}

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Error or warning.
    pub severity: Severity,
    /// Stable identifier of the rule (`SY005`), listed in the README; tools key on it.
    pub code: &'static str,
    /// Byte range in the source the problem is about; `None` for the file as a whole.
    pub span: Option<Range<usize>>,
    /// What is wrong, in one sentence.
    pub message: String,
    /// How to fix it, when there is an obvious fix ("did you mean `users`?").
    pub help: Option<String>,
}

impl ConfigError {
    /// An error at `span`.
    pub fn new(code: &'static str, span: Option<Range<usize>>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            code,
            span,
            message: message.into(),
            help: None,
        }
    }

    /// A warning at `span`.
    pub fn warning(
        code: &'static str,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::new(code, span, message)
        }
    }

    /// Attach a fix suggestion.
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Attach a fix suggestion when there is one.
    pub fn maybe_help(mut self, help: Option<String>) -> Self {
        self.help = help;
        self
    }

    /// 1-based line and column of the start of the span in `src`.
    pub fn line_col(&self, src: &str) -> Option<(usize, usize)> {
        let start = self.span.as_ref()?.start.min(src.len());
        let before = &src[..floor_char_boundary(src, start)];
        let line = before.matches('\n').count() + 1;
        let col = before.rfind('\n').map_or(before.chars().count(), |nl| {
            before[nl + 1..].chars().count()
        }) + 1;
        Some((line, col))
    }

    /// Render for a terminal: `file:line:col: error: message`, the source line, a caret
    /// under the offending value, and the help line.
    pub fn render(&self, file: &str, src: &str) -> String {
        let kind = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let mut out = String::new();
        match self.line_col(src) {
            Some((line, col)) => {
                let _ = writeln!(
                    out,
                    "{file}:{line}:{col}: {kind}[{}]: {}",
                    self.code, self.message
                );
                if let Some(text) = src.lines().nth(line - 1) {
                    let width = self
                        .span
                        .as_ref()
                        .map(|s| s.len())
                        .unwrap_or(1)
                        .clamp(1, text.chars().count().saturating_sub(col - 1).max(1));
                    let _ = writeln!(out, "{line:>5} | {text}");
                    let _ = writeln!(out, "      | {}{}", " ".repeat(col - 1), "^".repeat(width));
                }
            }
            None => {
                let _ = writeln!(out, "{file}: {kind}[{}]: {}", self.code, self.message);
            }
        }
        if let Some(help) = &self.help {
            let _ = writeln!(out, "      = help: {help}");
        }
        out
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(help) = &self.help {
            write!(f, " ({help})")?;
        }
        Ok(())
    }
}

/// All problems of one file; `Display` renders them without source context.
#[derive(Debug, Clone, Default)]
pub struct ConfigErrors {
    /// Every finding, errors and warnings, in the order they were found.
    pub items: Vec<ConfigError>,
}

impl ConfigErrors {
    /// True when at least one finding is an error.
    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|e| e.severity == Severity::Error)
    }

    /// Render every finding against its source, as `check` prints them.
    pub fn render(&self, file: &str, src: &str) -> String {
        self.items.iter().map(|e| e.render(file, src)).collect()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.items.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// "did you mean `x`?" for the closest candidate, when one is close enough.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        let src = "a = 1\nbb = 2\n";
        let e = ConfigError::new("SY000", Some(6..8), "x");
        assert_eq!(e.line_col(src), Some((2, 1)));
        let e = ConfigError::new("SY000", Some(11..12), "x");
        assert_eq!(e.line_col(src), Some((2, 6)));
    }

    #[test]
    fn suggestion_only_when_close() {
        assert_eq!(
            did_you_mean("usres", ["users", "orders"]).as_deref(),
            Some("did you mean `users`?")
        );
        assert_eq!(did_you_mean("zzz", ["users", "orders"]), None);
    }
}
