//! Source files and spans.
//!
//! A [`SourceMap`] owns the text of every file a compilation reads (the root file and
//! its imports); a [`Span`] is a byte range in one of them. Line and column numbers
//! are computed here, 1-based, with columns counted in characters (the LSP layer
//! converts to UTF-16 itself).

use std::ops::Range;
use std::sync::Arc;

/// Index of a file in a [`SourceMap`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct FileId(pub u32);

/// A byte range in one file.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Span {
    pub file: FileId,
    pub start: u32,
    pub end: u32,
}

impl std::fmt::Debug for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}..{}", self.start, self.end)
    }
}

impl Span {
    pub fn new(file: FileId, start: usize, end: usize) -> Self {
        debug_assert!(start <= end);
        Span { file, start: start as u32, end: end as u32 }
    }

    pub fn range(self) -> Range<usize> {
        self.start as usize..self.end as usize
    }

    /// The smallest span covering both (same file).
    pub fn to(self, other: Span) -> Span {
        Span { file: self.file, start: self.start.min(other.start), end: self.end.max(other.end) }
    }

    /// An empty span at this span's end.
    pub fn end_point(self) -> Span {
        Span { file: self.file, start: self.end, end: self.end }
    }
}

/// One source file.
#[derive(Debug)]
pub struct SourceFile {
    /// The path as given (relative paths stay relative, for stable output).
    pub name: String,
    pub text: Arc<str>,
    line_starts: Vec<u32>,
}

/// All files of one compilation.
#[derive(Debug, Default)]
pub struct SourceMap {
    files: Vec<SourceFile>,
}

impl SourceMap {
    pub fn new() -> Self {
        SourceMap::default()
    }

    pub fn add(&mut self, name: impl Into<String>, text: impl Into<Arc<str>>) -> FileId {
        let text: Arc<str> = text.into();
        let mut line_starts = vec![0u32];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i as u32 + 1));
        self.files.push(SourceFile { name: name.into(), text, line_starts });
        FileId(self.files.len() as u32 - 1)
    }

    pub fn get(&self, id: FileId) -> &SourceFile {
        &self.files[id.0 as usize]
    }

    pub fn find(&self, name: &str) -> Option<FileId> {
        self.files.iter().position(|f| f.name == name).map(|i| FileId(i as u32))
    }

    pub fn files(&self) -> impl Iterator<Item = (FileId, &SourceFile)> {
        self.files.iter().enumerate().map(|(i, f)| (FileId(i as u32), f))
    }

    /// 1-based line and column (in characters) of the span's start.
    pub fn line_col(&self, span: Span) -> (usize, usize) {
        self.get(span.file).line_col(span.start as usize)
    }

    pub fn text(&self, span: Span) -> &str {
        let f = self.get(span.file);
        f.text.get(span.range()).unwrap_or("")
    }
}

impl SourceFile {
    /// 1-based line and column (in characters) of byte offset `pos`.
    pub fn line_col(&self, pos: usize) -> (usize, usize) {
        let pos = pos.min(self.text.len());
        let line = match self.line_starts.binary_search(&(pos as u32)) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = self.line_starts[line] as usize;
        let col = self.text.get(start..pos).map_or(pos - start, |s| s.chars().count());
        (line + 1, col + 1)
    }

    /// Byte offset of 0-based `line` and 0-based UTF-16 `col`, clamped to the text.
    pub fn offset_utf16(&self, line: usize, col: usize) -> usize {
        let Some(&start) = self.line_starts.get(line) else {
            return self.text.len();
        };
        let start = start as usize;
        let mut units = 0;
        for (i, c) in self.text[start..].char_indices() {
            if units >= col || c == '\n' {
                return start + i;
            }
            units += c.len_utf16();
        }
        self.text.len()
    }

    /// 0-based line and UTF-16 column of byte offset `pos`.
    pub fn line_col_utf16(&self, pos: usize) -> (usize, usize) {
        let pos = pos.min(self.text.len());
        let line = match self.line_starts.binary_search(&(pos as u32)) {
            Ok(i) => i,
            Err(i) => i - 1,
        };
        let start = self.line_starts[line] as usize;
        let col = self.text.get(start..pos).map_or(0, |s| s.chars().map(char::len_utf16).sum());
        (line, col)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column() {
        let mut m = SourceMap::new();
        let f = m.add("a.flow", "ab\ncdé\nx");
        assert_eq!(m.line_col(Span::new(f, 0, 0)), (1, 1));
        assert_eq!(m.line_col(Span::new(f, 3, 3)), (2, 1));
        assert_eq!(m.line_col(Span::new(f, 7, 7)), (2, 4)); // after "cdé" (é is 2 bytes)
        assert_eq!(m.line_col(Span::new(f, 8, 8)), (3, 1));
        assert_eq!(m.get(f).line_col_utf16(7), (1, 3));
        assert_eq!(m.get(f).offset_utf16(1, 3), 7);
    }
}
