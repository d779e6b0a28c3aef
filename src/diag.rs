//! Problems found in configuration and policy files, reported as `file:line: reason`.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a file a user wrote. Loading collects every problem rather than stopping
/// at the first, so one `claimgate validate` run shows the whole list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line, when the problem can be pinned to one.
    pub line: Option<usize>,
    /// What is wrong and, where it helps, how to fix it.
    pub message: String,
}

impl Problem {
    /// A problem at a byte offset of `source` (as toml spans give them).
    pub fn at(file: &Path, source: &str, offset: usize, message: impl Into<String>) -> Self {
        Problem {
            file: file.to_path_buf(),
            line: Some(line_of(source, offset)),
            message: message.into(),
        }
    }

    /// A problem that belongs to the file as a whole.
    pub fn file(file: &Path, message: impl Into<String>) -> Self {
        Problem {
            file: file.to_path_buf(),
            line: None,
            message: message.into(),
        }
    }

    /// Turns a toml parse/deserialize error into a problem with its line.
    pub fn from_toml(file: &Path, source: &str, err: &toml::de::Error) -> Self {
        let message = err.message().to_string();
        match err.span() {
            Some(span) => Problem::at(file, source, span.start, message),
            None => Problem::file(file, message),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// 1-based line number of a byte offset.
pub fn line_of(source: &str, offset: usize) -> usize {
    let end = offset.min(source.len());
    source.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_one_based() {
        let src = "a\nb\nc";
        assert_eq!(line_of(src, 0), 1);
        assert_eq!(line_of(src, 2), 2);
        assert_eq!(line_of(src, 4), 3);
        assert_eq!(line_of(src, 100), 3);
    }
}
