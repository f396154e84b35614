//! The drbd.conf syntax (8.x and 0.7): a tokenizer and a parser into a tree
//! of statements, with `include "GLOB";` expanded and limits on size,
//! nesting and include depth. Hand-written rather than a parser crate: the
//! grammar is a dozen lines (words, quoted strings, `;`, `{ }`, `#`
//! comments), and the errors must name drbd.conf lines the way drbdadm does.
//!
//! Every statement is `WORD... ;` or `WORD... { STATEMENT... }`. Which
//! words may open a block is known (`resource`, `on`, `disk`, ...), so a
//! value followed by a `{` is reported as the missing `;` it is.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::ImportError;

/// Largest drbd.conf (or included file) read, in bytes.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Deepest nesting of `{ }` blocks.
pub const MAX_DEPTH: usize = 8;
/// Deepest chain of includes (a file including itself stops here).
pub const MAX_INCLUDE_DEPTH: usize = 8;
/// Most files read for one drbd.conf, includes counted.
pub const MAX_FILES: usize = 256;
/// Longest word or quoted string, in bytes.
pub const MAX_WORD_BYTES: usize = 4096;

/// Where something was written: file and line (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loc {
    pub file: Arc<Path>,
    pub line: u32,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// One word of a statement (quoted strings lose their quotes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    pub text: String,
    pub line: u32,
}

/// `WORD... ;` or `WORD... { ... }`.
#[derive(Debug, Clone)]
pub struct Stmt {
    /// The keyword and its values; never empty.
    pub words: Vec<Word>,
    pub block: Option<Vec<Stmt>>,
    pub loc: Loc,
}

impl Stmt {
    /// The keyword (`resource`, `rate`, ...).
    #[must_use]
    pub fn key(&self) -> &str {
        self.words.first().map_or("", |w| w.text.as_str())
    }

    /// The values after the keyword.
    #[must_use]
    pub fn args(&self) -> &[Word] {
        self.words.get(1..).unwrap_or(&[])
    }

    /// The statement as written, for messages (`rate 10M`).
    #[must_use]
    pub fn text(&self) -> String {
        let words: Vec<String> = self
            .words
            .iter()
            .map(|w| {
                if w.text.is_empty() || w.text.contains([' ', '\t', ';', '{', '}', '#']) {
                    format!("{:?}", w.text)
                } else {
                    w.text.clone()
                }
            })
            .collect();
        words.join(" ")
    }
}

/// The keywords that may open a `{ }` block.
const SECTIONS: &[&str] = &[
    "global",
    "common",
    "resource",
    "on",
    "floating",
    "volume",
    "startup",
    "disk",
    "net",
    "syncer",
    "handlers",
    "options",
    "connection",
    "connection-mesh",
    "path",
    "host",
    "proxy",
    "stacked-on-top-of",
    "skip",
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(String),
    Open,
    Close,
    Semi,
}

/// Reads `path` and everything it includes.
///
/// # Errors
/// A read error, a syntax error or a limit, naming the file and line.
pub fn parse_file(path: &Path) -> Result<Vec<Stmt>, ImportError> {
    let mut files = 0;
    parse_included(path, 0, &mut files)
}

fn parse_included(path: &Path, depth: usize, files: &mut usize) -> Result<Vec<Stmt>, ImportError> {
    *files += 1;
    if *files > MAX_FILES {
        return Err(ImportError::Limit(format!(
            "{}: more than {MAX_FILES} files read through includes",
            path.display()
        )));
    }
    let text = read_limited(path)?;
    let file: Arc<Path> = Arc::from(path);
    let toks = tokenize(&text, &file)?;
    let mut pos = 0;
    let stmts = parse_block(&toks, &mut pos, &file, 0, None)?;
    expand_includes(stmts, path, depth, files)
}

fn read_limited(path: &Path) -> Result<String, ImportError> {
    let read_err = |e: std::io::Error| ImportError::Read {
        path: path.to_owned(),
        message: e.to_string(),
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(ImportError::Limit(format!(
            "{}: {} bytes; a drbd.conf of more than {MAX_FILE_BYTES} bytes is not read",
            path.display(),
            meta.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(read_err)?;
    String::from_utf8(bytes).map_err(|_| ImportError::Read {
        path: path.to_owned(),
        message: "not UTF-8 text".to_owned(),
    })
}

/// Replaces each `include "GLOB";` by the statements of the files it names
/// (sorted, relative to the including file's directory), in every block.
fn expand_includes(
    stmts: Vec<Stmt>,
    path: &Path,
    depth: usize,
    files: &mut usize,
) -> Result<Vec<Stmt>, ImportError> {
    let mut out = Vec::with_capacity(stmts.len());
    for mut s in stmts {
        if s.key() == "include" && s.block.is_none() {
            let [pattern] = s.args() else {
                return Err(syntax(&s.loc, "`include` takes one file name or pattern"));
            };
            if depth + 1 > MAX_INCLUDE_DEPTH {
                return Err(ImportError::Limit(format!(
                    "{}: includes nested more than {MAX_INCLUDE_DEPTH} deep (does a file include itself?)",
                    s.loc
                )));
            }
            for f in include_matches(path, &pattern.text, &s.loc)? {
                out.extend(parse_included(&f, depth + 1, files)?);
            }
            continue;
        }
        if let Some(block) = s.block.take() {
            s.block = Some(expand_includes(block, path, depth, files)?);
        }
        out.push(s);
    }
    Ok(out)
}

fn include_matches(path: &Path, pattern: &str, loc: &Loc) -> Result<Vec<PathBuf>, ImportError> {
    let full = if Path::new(pattern).is_absolute() {
        PathBuf::from(pattern)
    } else {
        path.parent().unwrap_or(Path::new("")).join(pattern)
    };
    let full = full.to_string_lossy().into_owned();
    let paths = glob::glob(&full)
        .map_err(|e| syntax(loc, &format!("bad include pattern {pattern:?}: {e}")))?;
    let mut found: Vec<PathBuf> = paths.filter_map(Result::ok).collect();
    found.sort();
    Ok(found)
}

fn syntax(loc: &Loc, message: &str) -> ImportError {
    ImportError::Syntax {
        loc: loc.to_string(),
        message: message.to_owned(),
    }
}

/// The tokens of `text` with their lines.
fn tokenize(text: &str, file: &Arc<Path>) -> Result<Vec<(Tok, u32)>, ImportError> {
    let mut toks = Vec::new();
    let mut line: u32 = 1;
    let mut chars = text.chars().peekable();
    let at = |line: u32| Loc {
        file: Arc::clone(file),
        line,
    };
    while let Some(c) = chars.next() {
        match c {
            '\n' => line += 1,
            c if c.is_whitespace() => {}
            '#' => {
                while chars.peek().is_some_and(|&c| c != '\n') {
                    chars.next();
                }
            }
            '{' => toks.push((Tok::Open, line)),
            '}' => toks.push((Tok::Close, line)),
            ';' => toks.push((Tok::Semi, line)),
            '"' => {
                let start = line;
                let s = quoted(&mut chars, &mut line).ok_or_else(|| {
                    syntax(
                        &at(start),
                        "a quoted string is not closed (a `\"` is missing)",
                    )
                })?;
                if s.len() > MAX_WORD_BYTES {
                    return Err(syntax(&at(start), "a quoted string is too long"));
                }
                toks.push((Tok::Word(s), start));
            }
            c => {
                let mut w = String::from(c);
                while let Some(&n) = chars.peek() {
                    if n.is_whitespace() || matches!(n, '{' | '}' | ';' | '"' | '#') {
                        break;
                    }
                    w.push(n);
                    chars.next();
                    if w.len() > MAX_WORD_BYTES {
                        return Err(syntax(&at(line), "a word is too long"));
                    }
                }
                toks.push((Tok::Word(w), line));
            }
        }
    }
    Ok(toks)
}

/// The rest of a quoted string after its `"`; `\"`, `\\` and a
/// backslash-newline (continuation) are escapes. `None` when not closed.
fn quoted(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, line: &mut u32) -> Option<String> {
    let mut s = String::new();
    loop {
        match chars.next()? {
            '"' => return Some(s),
            '\\' => match chars.next()? {
                '\n' => *line += 1,
                c => s.push(c),
            },
            '\n' => {
                *line += 1;
                s.push('\n');
            }
            c => s.push(c),
        }
    }
}

/// Statements until the `}` that closes the block opened on line `open`
/// (`None`: until the end of the file).
fn parse_block(
    toks: &[(Tok, u32)],
    pos: &mut usize,
    file: &Arc<Path>,
    depth: usize,
    open: Option<u32>,
) -> Result<Vec<Stmt>, ImportError> {
    let at = |line: u32| Loc {
        file: Arc::clone(file),
        line,
    };
    if depth > MAX_DEPTH {
        let line = open.unwrap_or(1);
        return Err(ImportError::Limit(format!(
            "{}: blocks nested more than {MAX_DEPTH} deep",
            at(line)
        )));
    }
    let mut stmts = Vec::new();
    let mut words: Vec<Word> = Vec::new();
    loop {
        let Some((tok, line)) = toks.get(*pos) else {
            return block_end(&words, open, None, &at).map(|()| stmts);
        };
        *pos += 1;
        match tok {
            Tok::Word(w) => words.push(Word {
                text: w.clone(),
                line: *line,
            }),
            Tok::Semi => {
                if let Some(first) = words.first() {
                    let loc = at(first.line);
                    stmts.push(Stmt {
                        words: std::mem::take(&mut words),
                        block: None,
                        loc,
                    });
                }
            }
            Tok::Close => return block_end(&words, open, Some(*line), &at).map(|()| stmts),
            Tok::Open => {
                let stmt = open_block(toks, pos, file, depth, std::mem::take(&mut words), *line)?;
                stmts.push(stmt);
            }
        }
    }
}

/// A block ends at a `}` on line `close` (`None`: the end of the file):
/// no statement may be left open, and the end must match the start.
fn block_end(
    words: &[Word],
    open: Option<u32>,
    close: Option<u32>,
    at: &dyn Fn(u32) -> Loc,
) -> Result<(), ImportError> {
    if let Some(w) = words.first() {
        let before = match close {
            Some(l) => format!("the `}}` on line {l}"),
            None => "the end of the file".to_owned(),
        };
        return Err(syntax(
            &at(w.line),
            &format!("`{}` is not ended by `;` before {before}", w.text),
        ));
    }
    match (open, close) {
        (None, Some(l)) => Err(syntax(&at(l), "a `}` closes no block")),
        (Some(l), None) => Err(syntax(
            &at(l),
            "this `{` is never closed (a `}` is missing)",
        )),
        _ => Ok(()),
    }
}

/// The block statement whose `{` is on `line`, after `words`.
fn open_block(
    toks: &[(Tok, u32)],
    pos: &mut usize,
    file: &Arc<Path>,
    depth: usize,
    words: Vec<Word>,
    line: u32,
) -> Result<Stmt, ImportError> {
    let at = |line: u32| Loc {
        file: Arc::clone(file),
        line,
    };
    let Some(first) = words.first() else {
        return Err(syntax(&at(line), "a `{` without a section name before it"));
    };
    if !SECTIONS.contains(&first.text.as_str()) {
        // `incon-degr-cmd "..."` then `startup {`: the `;` is missing.
        let before = words.last().map_or("", |w| w.text.as_str());
        return Err(syntax(
            &at(first.line),
            &format!(
                "`{}` is not ended by `;` (the `{{` on line {line} after `{before}` belongs to a new section)",
                first.text
            ),
        ));
    }
    let loc = at(first.line);
    let block = parse_block(toks, pos, file, depth + 1, Some(line))?;
    Ok(Stmt {
        words,
        block: Some(block),
        loc,
    })
}

#[cfg(test)]
pub(super) fn parse_text(text: &str) -> Result<Vec<Stmt>, ImportError> {
    let file: Arc<Path> = Arc::from(Path::new("drbd.conf"));
    let toks = tokenize(text, &file)?;
    let mut pos = 0;
    parse_block(&toks, &mut pos, &file, 0, None)
}
