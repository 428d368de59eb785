//! A small parser for nginx configuration files.
//!
//! `switchyard import` has to read real-world `nginx.conf` files, so this follows
//! nginx's own tokenizer (`ngx_conf_read_token`) rather than a line-based guess:
//! directives are `name args… ;`, blocks are `name args… { … }`, arguments may be
//! quoted with `"` or `'` (with backslash escapes), `#` starts a comment only at the
//! start of a token, `$var` and `${var}` stay text. `include` is expanded in place
//! (glob patterns, relative to the including file's directory or, failing that, to the
//! main file's directory as nginx does it; recursively), so the
//! translator sees one tree in which every directive still knows its file and line.
//!
//! Malformed input (unbalanced braces, unterminated quotes, include loops, missing
//! files) is an [`ParseError`] with the file and line, never a panic.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How deep includes may nest before we call it a loop we could not see (symlink
/// games defeat path comparison).
const MAX_INCLUDE_DEPTH: usize = 32;

/// How deep blocks may nest: real configurations use a handful of levels; the bound
/// keeps a hostile file from exhausting the stack.
const MAX_BLOCK_DEPTH: usize = 64;

/// One directive with its arguments and, for blocks, its children.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub name: String,
    pub args: Vec<String>,
    /// The file as it was named (the command-line path, or the include path joined to
    /// the including file's directory).
    pub file: Arc<str>,
    /// 1-based line of the directive's name.
    pub line: usize,
    /// `Some` for `name … { … }`.
    pub block: Option<Vec<Directive>>,
}

impl Directive {
    /// `file:line`, for messages.
    pub fn at(&self) -> String {
        format!("{}:{}", self.file, self.line)
    }

    /// The children of a block; empty for a simple directive.
    pub fn children(&self) -> &[Directive] {
        self.block.as_deref().unwrap_or(&[])
    }
}

/// A file that cannot be read as nginx configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub file: String,
    /// 1-based; 0 when the file itself could not be read.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            // The file itself (could not be read): no line to point at.
            write!(f, "{}: error: {}", self.file, self.message)
        } else {
            write!(f, "{}:{}: error: {}", self.file, self.line, self.message)
        }
    }
}

impl std::error::Error for ParseError {}

/// Parse a file and everything it includes.
pub fn parse_file(path: &Path) -> Result<Vec<Directive>, ParseError> {
    let name = path.display().to_string();
    let src = std::fs::read_to_string(path).map_err(|e| ParseError {
        file: name.clone(),
        line: 0,
        message: format!("cannot read: {e}"),
    })?;
    let mut stack = vec![(canonical(path), name.clone())];
    let root = path.parent().unwrap_or(Path::new("")).to_path_buf();
    parse_source(&src, &name, path, &root, &mut stack, 0)
}

/// Parse text that claims to come from `path` (used for includes relative to it).
pub fn parse_str(src: &str, path: &Path) -> Result<Vec<Directive>, ParseError> {
    let name = path.display().to_string();
    let mut stack = vec![(canonical(path), name.clone())];
    let root = path.parent().unwrap_or(Path::new("")).to_path_buf();
    parse_source(src, &name, path, &root, &mut stack, 0)
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

fn parse_source(
    src: &str,
    name: &str,
    path: &Path,
    root: &Path,
    stack: &mut Vec<(PathBuf, String)>,
    depth: usize,
) -> Result<Vec<Directive>, ParseError> {
    let file: Arc<str> = Arc::from(name);
    let mut lexer = Lexer {
        chars: src.chars().collect(),
        pos: 0,
        line: 1,
        file: file.clone(),
    };
    let mut ctx = Ctx { path, root, stack };
    let (list, end) = parse_block(&mut lexer, &mut ctx, None, depth)?;
    debug_assert!(matches!(end, Tok::Eof));
    Ok(list)
}

struct Ctx<'a> {
    path: &'a Path,
    /// The main file's directory: nginx's own base for relative includes.
    root: &'a Path,
    /// The files being read (canonical path, name for messages), outermost first.
    stack: &'a mut Vec<(PathBuf, String)>,
}

#[derive(Debug, PartialEq)]
enum Tok {
    Word(String),
    Semi,
    Open,
    Close,
    Eof,
}

struct Lexer {
    chars: Vec<char>,
    pos: usize,
    line: usize,
    file: Arc<str>,
}

impl Lexer {
    fn err(&self, line: usize, message: impl Into<String>) -> ParseError {
        ParseError {
            file: self.file.to_string(),
            line,
            message: message.into(),
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.chars.get(self.pos).copied()?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    /// The next token and the line it starts on.
    fn next(&mut self) -> Result<(Tok, usize), ParseError> {
        loop {
            match self.peek() {
                None => return Ok((Tok::Eof, self.line)),
                Some(c) if c.is_whitespace() => {
                    self.bump();
                }
                Some('#') => {
                    while let Some(c) = self.peek() {
                        if c == '\n' {
                            break;
                        }
                        self.bump();
                    }
                }
                Some(_) => break,
            }
        }
        let line = self.line;
        let tok = match self.peek() {
            Some(';') => {
                self.bump();
                Tok::Semi
            }
            Some('{') => {
                self.bump();
                Tok::Open
            }
            Some('}') => {
                self.bump();
                Tok::Close
            }
            Some(q @ ('"' | '\'')) => {
                self.bump();
                let word = self.quoted(q, line)?;
                // nginx: a closing quote must be followed by a separator (`)` ends
                // an `if` condition and becomes a token of its own).
                match self.peek() {
                    None | Some(';' | '{' | ')') => {}
                    Some(c) if c.is_whitespace() => {}
                    Some(c) => {
                        return Err(
                            self.err(self.line, format!("unexpected `{c}` after a quoted string"))
                        );
                    }
                }
                Tok::Word(word)
            }
            _ => Tok::Word(self.bare()),
        };
        Ok((tok, line))
    }

    fn quoted(&mut self, q: char, start: usize) -> Result<String, ParseError> {
        let mut out = String::new();
        loop {
            match self.bump() {
                None => {
                    return Err(self.err(
                        start,
                        format!("unterminated {} string", if q == '"' { "\"" } else { "'" }),
                    ));
                }
                Some('\\') => match self.bump() {
                    None => {
                        return Err(self.err(start, "unterminated string (ends in `\\`)"));
                    }
                    Some(c) => push_escape(&mut out, c, q),
                },
                Some(c) if c == q => return Ok(out),
                Some(c) => out.push(c),
            }
        }
    }

    fn bare(&mut self) -> String {
        let mut out = String::new();
        while let Some(c) = self.peek() {
            match c {
                ';' | '{' | '}' => break,
                c if c.is_whitespace() => break,
                '\\' => {
                    self.bump();
                    match self.bump() {
                        Some(n) => push_escape(&mut out, n, '"'),
                        None => out.push('\\'),
                    }
                }
                '$' if self.chars.get(self.pos + 1) == Some(&'{') => {
                    // `${var}`: the braces belong to the variable, not to a block.
                    while let Some(c) = self.bump() {
                        out.push(c);
                        if c == '}' {
                            break;
                        }
                    }
                }
                _ => {
                    out.push(c);
                    self.bump();
                }
            }
        }
        out
    }
}

/// nginx keeps unknown escapes as written and resolves `\"`, `\'`, `\\`, `\t`, `\r`, `\n`.
fn push_escape(out: &mut String, c: char, _quote: char) {
    match c {
        '"' | '\'' | '\\' => out.push(c),
        't' => out.push('\t'),
        'r' => out.push('\r'),
        'n' => out.push('\n'),
        other => {
            out.push('\\');
            out.push(other);
        }
    }
}

/// Parse directives until `}` (when `open` is the line of the enclosing `{`) or the
/// end of the file (at top level).
fn parse_block(
    lx: &mut Lexer,
    ctx: &mut Ctx<'_>,
    open: Option<usize>,
    depth: usize,
) -> Result<(Vec<Directive>, Tok), ParseError> {
    if depth > MAX_BLOCK_DEPTH {
        return Err(lx.err(
            lx.line,
            format!("blocks nest deeper than {MAX_BLOCK_DEPTH} levels"),
        ));
    }
    let mut out = Vec::new();
    loop {
        let (tok, line) = lx.next()?;
        let name = match tok {
            Tok::Word(w) => w,
            Tok::Eof => {
                return match open {
                    None => Ok((out, Tok::Eof)),
                    Some(l) => Err(lx.err(
                        line,
                        format!("unexpected end of file: the `{{` on line {l} is never closed"),
                    )),
                };
            }
            Tok::Close => {
                return match open {
                    Some(_) => Ok((out, Tok::Close)),
                    None => Err(lx.err(line, "unexpected `}`: no block is open")),
                };
            }
            Tok::Semi => return Err(lx.err(line, "unexpected `;`: no directive name")),
            Tok::Open => return Err(lx.err(line, "unexpected `{`: a block needs a name")),
        };
        let mut args = Vec::new();
        loop {
            let (tok, tline) = lx.next()?;
            match tok {
                Tok::Word(w) => args.push(w),
                Tok::Semi => {
                    if name == "include" {
                        out.extend(include(lx, ctx, &args, line, depth)?);
                    } else {
                        out.push(Directive {
                            name,
                            args,
                            file: lx.file.clone(),
                            line,
                            block: None,
                        });
                    }
                    break;
                }
                Tok::Open => {
                    let (children, _) = parse_block(lx, ctx, Some(tline), depth + 1)?;
                    out.push(Directive {
                        name,
                        args,
                        file: lx.file.clone(),
                        line,
                        block: Some(children),
                    });
                    break;
                }
                Tok::Close => {
                    return Err(lx.err(
                        tline,
                        format!("unexpected `}}`: directive `{name}` (line {line}) is not terminated by `;`"),
                    ));
                }
                Tok::Eof => {
                    return Err(lx.err(
                        tline,
                        format!("unexpected end of file: directive `{name}` (line {line}) is not terminated by `;`"),
                    ));
                }
            }
        }
    }
}

/// Expand `include PATTERN;` in place.
fn include(
    lx: &Lexer,
    ctx: &mut Ctx<'_>,
    args: &[String],
    line: usize,
    depth: usize,
) -> Result<Vec<Directive>, ParseError> {
    let [pattern] = args else {
        return Err(lx.err(line, "`include` takes exactly one argument"));
    };
    // Relative to the including file's directory; failing that, relative to the main
    // file's directory, which is what nginx itself does (its conf prefix).
    let base = ctx.path.parent().unwrap_or(Path::new(""));
    let full = base.join(pattern);
    let fallback = ctx.root.join(pattern);
    let files = if has_glob(pattern) {
        let found = glob(&full);
        if found.is_empty() && fallback != full {
            glob(&fallback)
        } else {
            found
        }
    } else if full.is_file() {
        vec![full]
    } else if fallback.is_file() {
        vec![fallback]
    } else {
        return Err(lx.err(
            line,
            format!("include `{pattern}`: no such file `{}`", full.display()),
        ));
    };
    let mut out = Vec::new();
    for f in files {
        let canon = canonical(&f);
        if ctx.stack.iter().any(|(p, _)| *p == canon) {
            return Err(lx.err(
                line,
                format!(
                    "include loop: `{}` is already being read (include chain: {})",
                    f.display(),
                    ctx.stack
                        .iter()
                        .map(|(_, name)| name.as_str())
                        .collect::<Vec<_>>()
                        .join(" -> ")
                ),
            ));
        }
        if ctx.stack.len() >= MAX_INCLUDE_DEPTH {
            return Err(lx.err(
                line,
                format!("includes nest deeper than {MAX_INCLUDE_DEPTH} files"),
            ));
        }
        let src = std::fs::read_to_string(&f)
            .map_err(|e| lx.err(line, format!("include `{}`: {e}", f.display())))?;
        ctx.stack.push((canon, f.display().to_string()));
        // An included file's blocks count towards the including block's depth.
        let parsed = parse_source(
            &src,
            &f.display().to_string(),
            &f,
            ctx.root,
            ctx.stack,
            depth,
        );
        ctx.stack.pop();
        out.extend(parsed?);
    }
    Ok(out)
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Expand a glob pattern component by component (like glob(3): `*` and `?` do not
/// match a leading `.`), sorted, files only.
fn glob(pattern: &Path) -> Vec<PathBuf> {
    let mut current: Vec<PathBuf> = vec![PathBuf::new()];
    let comps: Vec<_> = pattern.components().collect();
    for (i, comp) in comps.iter().enumerate() {
        let text = comp.as_os_str().to_string_lossy();
        let last = i + 1 == comps.len();
        let mut next = Vec::new();
        for dir in &current {
            if !has_glob(&text) {
                let p = dir.join(comp.as_os_str());
                if p.exists() {
                    next.push(p);
                }
                continue;
            }
            let read_from = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir.as_path()
            };
            let Ok(entries) = std::fs::read_dir(read_from) else {
                continue;
            };
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.') || text.starts_with('.'))
                .filter(|n| fnmatch(&text, n))
                .collect();
            names.sort();
            next.extend(names.into_iter().map(|n| dir.join(n)));
        }
        if !last {
            next.retain(|p| p.is_dir());
        }
        current = next;
    }
    current.retain(|p| p.is_file());
    current
}

/// `*`, `?` and `[…]` (with `!`/`^` negation and ranges) against a file name.
fn fnmatch(pat: &str, name: &str) -> bool {
    let p: Vec<char> = pat.chars().collect();
    let n: Vec<char> = name.chars().collect();
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|i| go(&p[1..], &n[i..])),
            Some('?') => !n.is_empty() && go(&p[1..], &n[1..]),
            Some('[') => {
                let Some(close) = p.iter().skip(2).position(|&c| c == ']').map(|i| i + 2) else {
                    return n.first() == Some(&'[') && go(&p[1..], &n[1..]);
                };
                let Some(&c) = n.first() else { return false };
                let mut set = &p[1..close];
                let negate = matches!(set.first(), Some('!' | '^'));
                if negate {
                    set = &set[1..];
                }
                let mut hit = false;
                let mut i = 0;
                while i < set.len() {
                    if i + 2 < set.len() && set[i + 1] == '-' {
                        hit |= set[i] <= c && c <= set[i + 2];
                        i += 3;
                    } else {
                        hit |= set[i] == c;
                        i += 1;
                    }
                }
                hit != negate && go(&p[close + 1..], &n[1..])
            }
            Some(&c) => n.first() == Some(&c) && go(&p[1..], &n[1..]),
        }
    }
    go(&p, &n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<Vec<Directive>, ParseError> {
        parse_str(src, Path::new("t.conf"))
    }

    fn err(src: &str) -> String {
        parse(src).unwrap_err().to_string()
    }

    #[test]
    fn directives_blocks_lines() {
        let d = parse("http {\n  server {\n    listen 80;\n  }\n}\nuser nobody;\n").unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].name, "http");
        let server = &d[0].children()[0];
        assert_eq!((server.name.as_str(), server.line), ("server", 2));
        let listen = &server.children()[0];
        assert_eq!(listen.args, vec!["80"]);
        assert_eq!(listen.at(), "t.conf:3");
        assert_eq!((d[1].name.as_str(), d[1].line), ("user", 6));
    }

    #[test]
    fn quotes_escapes_comments_variables() {
        let d = parse(concat!(
            "a \"x y\" 'it\\'s' \"q\\\"q\" b\\;c; # comment { ; }\n",
            "b $host${uri}x foo#bar \"\\d\";\n",
            "location ~ \"^/a{2}$\" { }\n",
        ));
        let d = d.unwrap();
        // nginx keeps the backslash of an escape it does not know (`\;`).
        assert_eq!(d[0].args, vec!["x y", "it's", "q\"q", "b\\;c"]);
        assert_eq!(d[1].args, vec!["$host${uri}x", "foo#bar", "\\d"]);
        assert_eq!(d[2].args, vec!["~", "^/a{2}$"]);
        // As in nginx, an unquoted `{` in a regex opens a block.
        assert!(parse("location ~ ^/a{2}$ { }").is_err());
        let d = parse("if ($a = \"1\") { }").unwrap();
        assert_eq!(d[0].args, vec!["($a", "=", "1", ")"]);
    }

    #[test]
    fn error_unbalanced_open() {
        assert_eq!(
            err("http {\n server {\n }\n"),
            "t.conf:4: error: unexpected end of file: the `{` on line 1 is never closed"
        );
    }

    #[test]
    fn error_unbalanced_close() {
        assert_eq!(
            err("a;\n}\n"),
            "t.conf:2: error: unexpected `}`: no block is open"
        );
    }

    #[test]
    fn error_missing_semicolon() {
        assert_eq!(
            err("server {\n listen 80\n}\n"),
            "t.conf:3: error: unexpected `}`: directive `listen` (line 2) is not terminated by `;`"
        );
        assert_eq!(
            err("user x"),
            "t.conf:1: error: unexpected end of file: directive `user` (line 1) is not terminated by `;`"
        );
    }

    #[test]
    fn error_unterminated_quotes() {
        assert_eq!(
            err("a;\nb \"open\n\n"),
            "t.conf:2: error: unterminated \" string"
        );
        assert_eq!(err("b 'open;"), "t.conf:1: error: unterminated ' string");
        assert_eq!(
            err("b \"x\\"),
            "t.conf:1: error: unterminated string (ends in `\\`)"
        );
    }

    #[test]
    fn error_text_after_quote_and_stray_tokens() {
        assert_eq!(
            err("a \"x\"y;"),
            "t.conf:1: error: unexpected `y` after a quoted string"
        );
        assert_eq!(
            err(";"),
            "t.conf:1: error: unexpected `;`: no directive name"
        );
        assert_eq!(
            err("\n{ }"),
            "t.conf:2: error: unexpected `{`: a block needs a name"
        );
    }

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        dir
    }

    #[test]
    fn includes_glob_nested_relative() {
        let dir = tree(&[
            ("main.conf", "http {\n include conf.d/*.conf;\n}\n"),
            ("conf.d/b.conf", "b;\n"),
            ("conf.d/a.conf", "a;\ninclude inner/x.inc;\n"),
            ("conf.d/.hidden.conf", "hidden;\n"),
            ("conf.d/inner/x.inc", "\nx 1;\n"),
            ("conf.d/skip.txt", "skip;\n"),
        ]);
        let d = parse_file(&dir.path().join("main.conf")).unwrap();
        let names: Vec<_> = d[0].children().iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, vec!["a", "x", "b"]);
        let x = &d[0].children()[1];
        assert_eq!(x.line, 2);
        assert!(x.file.ends_with("conf.d/inner/x.inc"), "{}", x.file);
    }

    #[test]
    fn includes_fall_back_to_the_main_files_directory() {
        let dir = tree(&[
            ("main.conf", "include sites/a.conf;\n"),
            (
                "sites/a.conf",
                "include snippets/p.conf;\ninclude snippets/*.glob;\n",
            ),
            ("snippets/p.conf", "p;\n"),
            ("snippets/q.glob", "q;\n"),
        ]);
        let d = parse_file(&dir.path().join("main.conf")).unwrap();
        let names: Vec<_> = d.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, vec!["p", "q"]);
    }

    #[test]
    fn an_empty_glob_is_fine() {
        let dir = tree(&[("main.conf", "include none/*.conf;\na;\n")]);
        let d = parse_file(&dir.path().join("main.conf")).unwrap();
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn error_include_missing_file() {
        let dir = tree(&[("main.conf", "a;\ninclude nope.conf;\n")]);
        let e = parse_file(&dir.path().join("main.conf")).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.file.ends_with("main.conf"));
        assert!(
            e.message.starts_with("include `nope.conf`: no such file"),
            "{e}"
        );
    }

    #[test]
    fn error_include_loop() {
        let dir = tree(&[
            ("main.conf", "include sub/a.conf;\n"),
            ("sub/a.conf", "a;\n\ninclude ../main.conf;\n"),
        ]);
        let e = parse_file(&dir.path().join("main.conf")).unwrap_err();
        assert!(e.file.ends_with("sub/a.conf"), "{e}");
        assert_eq!(e.line, 3);
        assert!(e.message.starts_with("include loop:"), "{e}");
        assert!(e.message.contains("main.conf -> "), "{e}");
    }

    #[test]
    fn error_inside_an_included_file_names_that_file() {
        let dir = tree(&[
            ("main.conf", "include sub/a.conf;\n"),
            ("sub/a.conf", "a;\nb {\n"),
        ]);
        let e = parse_file(&dir.path().join("main.conf")).unwrap_err();
        assert!(e.file.ends_with("sub/a.conf"), "{e}");
        assert_eq!(e.line, 3);
    }

    #[test]
    fn error_include_arguments_and_unreadable_file() {
        assert_eq!(
            err("include a b;"),
            "t.conf:1: error: `include` takes exactly one argument"
        );
        let e = parse_file(Path::new("/nonexistent/x.conf")).unwrap_err();
        assert_eq!(e.line, 0);
        assert!(e.message.starts_with("cannot read"));
    }

    #[test]
    fn fnmatch_classes() {
        assert!(fnmatch("*.conf", "a.conf"));
        assert!(!fnmatch("*.conf", "a.conf.bak"));
        assert!(fnmatch("site-[a-c]?.conf", "site-b1.conf"));
        assert!(!fnmatch("site-[!a-c].conf", "site-b.conf"));
        assert!(fnmatch("x[", "x["));
    }

    #[test]
    fn error_deep_nesting() {
        let src = "a {".repeat(10_000);
        assert_eq!(
            err(&src),
            "t.conf:1: error: blocks nest deeper than 64 levels"
        );
    }

    #[test]
    fn garbage_never_panics() {
        for src in [
            "\"",
            "'",
            "\\",
            "${",
            "a ${b",
            "{",
            "}",
            ";",
            "a \"b\"\"c\";",
            "\u{0}",
        ] {
            let _ = parse(src);
        }
    }
}
