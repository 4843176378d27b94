//! Diagnostics: what is wrong with a policy, and where (`file:line:column: error: message`).

use std::fmt;
use std::ops::Range;

/// One problem found in a policy file, located by 1-based line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file name (or other origin) the source came from.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
    /// What is wrong, in one line.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: error: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// A policy that was rejected whole, with every problem the parser found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The problems, in source order; never empty.
    pub diagnostics: Vec<Diagnostic>,
}

impl PolicyError {
    /// An error with a single diagnostic at the start of `file` (I/O errors, missing files).
    pub fn whole_file(file: &str, message: impl Into<String>) -> PolicyError {
        PolicyError {
            diagnostics: vec![Diagnostic {
                file: file.to_string(),
                line: 1,
                column: 1,
                message: message.into(),
            }],
        }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyError {}

/// Collects diagnostics against one source text, turning byte offsets into line:column.
pub(crate) struct Reporter<'a> {
    source: &'a str,
    origin: &'a str,
    line_starts: Vec<usize>,
    diagnostics: Vec<(usize, Diagnostic)>,
}

impl<'a> Reporter<'a> {
    pub(crate) fn new(source: &'a str, origin: &'a str) -> Reporter<'a> {
        let mut line_starts = vec![0];
        line_starts.extend(source.match_indices('\n').map(|(i, _)| i + 1));
        Reporter {
            source,
            origin,
            line_starts,
            diagnostics: Vec::new(),
        }
    }

    /// Records `message` at the start of `span` (the file start when the span is unknown).
    pub(crate) fn error(&mut self, span: Option<Range<usize>>, message: impl Into<String>) {
        let offset = span.map(|s| s.start).unwrap_or(0).min(self.source.len());
        let line_index = match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        let line_start = self.line_starts.get(line_index).copied().unwrap_or(0);
        // Offsets from the TOML parser may fall inside a multi-byte character; count whole
        // characters up to the nearest boundary so the column never panics or lies.
        let mut end = offset;
        while end > line_start && !self.source.is_char_boundary(end) {
            end -= 1;
        }
        let column = self
            .source
            .get(line_start..end)
            .map(|s| s.chars().count())
            .unwrap_or(0)
            + 1;
        self.diagnostics.push((
            offset,
            Diagnostic {
                file: self.origin.to_string(),
                line: line_index + 1,
                column,
                message: message.into(),
            },
        ));
    }

    /// The line (1-based) of a byte offset, for messages that point back at earlier text.
    pub(crate) fn line_of(&self, span: Option<Range<usize>>) -> usize {
        let offset = span.map(|s| s.start).unwrap_or(0);
        match self.line_starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i.max(1),
        }
    }

    /// An empty reporter against the same source, for part of the work done on another thread.
    pub(crate) fn fork(&self) -> Reporter<'a> {
        Reporter {
            source: self.source,
            origin: self.origin,
            line_starts: self.line_starts.clone(),
            diagnostics: Vec::new(),
        }
    }

    /// Takes over what a [`Reporter::fork`] found, after what this one found.
    pub(crate) fn absorb(&mut self, other: Reporter<'a>) {
        self.diagnostics.extend(other.diagnostics);
    }

    pub(crate) fn finish(mut self) -> Result<(), PolicyError> {
        if self.diagnostics.is_empty() {
            return Ok(());
        }
        // Stable sort keeps messages at one position in the order they were found.
        self.diagnostics.sort_by_key(|(offset, _)| *offset);
        Err(PolicyError {
            diagnostics: self.diagnostics.into_iter().map(|(_, d)| d).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let mut r = Reporter::new("ab\né = 1\n", "p.toml");
        r.error(Some(5..6), "x");
        let err = r.finish().unwrap_err();
        assert_eq!(err.to_string(), "p.toml:2:2: error: x");
    }
}
