//! A large route table parsed in pieces, so that a reload never runs long without a
//! pause.
//!
//! The TOML crate lexes a whole document into one vector of tokens and then one of
//! events before it builds a table, and neither step allocates per item: for a
//! 10,000-route file that is about 10 ms of work with no point at which the background
//! thread can give the core back ([`crate::background::pace`] runs on allocations), plus
//! page faults and copies for vectors of several MiB. On a busy core those stretches
//! held the request thread off for whole scheduler ticks (4 ms) during every reload.
//!
//! So a file with many `[[routes]]` is cut before some of its `[[routes]]` header lines,
//! about every [`PIECE`] bytes, and each piece is parsed alone. The pieces after the
//! first must hold nothing but routes; the spans of each piece's values are moved by
//! where it begins, so that every `Spanned` value is the same as in a parse of the
//! whole file. Whenever a piece does not parse, or holds anything but
//! routes, the whole file is parsed instead, so errors and their messages are exactly
//! those of a whole parse. A unit test checks that both ways give equal results.

use serde::Deserialize;
use toml::Spanned;
use toml_parser::lexer::TokenKind;

use super::file::{FileConfig, RouteFile};

/// About how many bytes of the file go into one piece. Lexing and parsing a piece is one
/// run without a pause: 1–2 ms for the 64 KiB pieces this was, 0.3–0.6 ms now (`perf`
/// of paced reloads of the e2e benchmark's 10,000-route file on an idle core). Under
/// that benchmark's load the p99 went from 1.64–1.83 to 1.45–1.51 ms (three alternating
/// pairs, with the longer [`crate::background::PAUSE`]).
pub const PIECE: usize = 16 * 1024;

/// Parse `src` as a [`FileConfig`], in pieces when it is large (see the module doc).
pub fn from_str(src: &str) -> Result<FileConfig, toml::de::Error> {
    let points = split_points(src, PIECE);
    if !points.is_empty()
        && let Some(file) = parse_pieces(src, &points)
    {
        return Ok(file);
    }
    toml::from_str(src)
}

/// A piece after the first: routes only.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutesOnly {
    #[serde(default)]
    routes: Vec<Spanned<Box<RouteFile>>>,
}

/// Parse the pieces that begin at `points` (ascending, all > 0); `None` when any piece
/// does not parse on its own.
fn parse_pieces(src: &str, points: &[usize]) -> Option<FileConfig> {
    let mut file: FileConfig = toml::from_str(&src[..points[0]]).ok()?;
    for (i, &start) in points.iter().enumerate() {
        let end = points.get(i + 1).copied().unwrap_or(src.len());
        let piece = parse_at(&src[start..end], start)?;
        file.routes.extend(piece.routes);
    }
    Some(file)
}

/// Parse `piece`, which begins `offset` bytes into the file, with every span moved by
/// `offset`: the spans of a parse of the whole file.
///
/// Until 2026-12-05 each piece was parsed with `offset` spaces in front of it instead.
/// That padding grew with the square of the number of pieces: about 13 MB of spaces to
/// lex for the e2e benchmark's 10,000-route file (640 KB, 40 pieces), and the pieces'
/// count had to be capped, so that a very large file was parsed in long runs without a
/// pause.
fn parse_at(piece: &str, offset: usize) -> Option<RoutesOnly> {
    let root = toml::de::DeTable::parse(piece).ok()?;
    let root = moved(root, offset, |table| shift_table(table, offset));
    RoutesOnly::deserialize(toml::de::Deserializer::from(root)).ok()
}

/// `spanned` with its span moved by `by`, and `inner` applied to its value.
fn moved<T>(spanned: Spanned<T>, by: usize, inner: impl FnOnce(&mut T)) -> Spanned<T> {
    let span = spanned.span();
    let mut value = spanned.into_inner();
    inner(&mut value);
    Spanned::new(span.start + by..span.end + by, value)
}

/// Move the spans of everything in `table`, keys too (maps with `Spanned` keys keep
/// them), by `by` bytes. The map is rebuilt: it does not lend its keys mutably. The
/// rebuilt map loses the parser's dotted/implicit/inline marks, which only the parser
/// reads, not the deserializer.
fn shift_table(table: &mut toml::de::DeTable<'_>, by: usize) {
    *table = std::mem::take(table)
        .into_iter()
        .map(|(key, value)| (moved(key, by, |_| {}), moved(value, by, |v| shift(v, by))))
        .collect();
}

/// Move the spans of everything in `value` by `by` bytes.
fn shift(value: &mut toml::de::DeValue<'_>, by: usize) {
    use toml::de::DeValue;
    match value {
        DeValue::Array(items) => {
            for item in items.iter_mut() {
                let taken = std::mem::replace(item, Spanned::new(0..0, DeValue::Boolean(false)));
                *item = moved(taken, by, |v| shift(v, by));
            }
        }
        DeValue::Table(table) => shift_table(table, by),
        _ => {}
    }
}

/// Where a header line's tokens have got to.
#[derive(Clone, Copy, PartialEq)]
enum Line {
    /// Only whitespace so far.
    Start,
    /// `[`
    Open,
    /// `[[`, maybe with whitespace after it.
    Open2,
    /// `[[routes`
    Name,
    /// `[[routes]`
    Close,
    /// `[[routes]]`, maybe with whitespace or a comment after it.
    Header,
    /// Anything else.
    Other,
}

/// The starts of the lines that are exactly a `[[routes]]` header (whitespace and a
/// comment allowed), skipping the first such line and then any line less than `min`
/// bytes after the last point. Found with the TOML lexer, so a header-like line inside a
/// multi-line string is not one.
fn split_points(src: &str, min: usize) -> Vec<usize> {
    let mut points = Vec::new();
    // The start of the first header line: the first piece holds at least one route.
    let mut last: Option<usize> = None;
    let mut line_start = 0;
    let mut line = Line::Start;
    for (n, token) in toml_parser::Source::new(src).lex().enumerate() {
        // `pace` reads the clock every 32nd call: about every 1,000 tokens here.
        if n % 32 == 0 {
            crate::background::pace();
        }
        let span = token.span();
        line = match (line, token.kind()) {
            (_, TokenKind::Newline) => {
                if line == Line::Header {
                    match last {
                        None => last = Some(line_start),
                        Some(l) if line_start - l >= min => {
                            points.push(line_start);
                            last = Some(line_start);
                        }
                        Some(_) => {}
                    }
                }
                line_start = span.end();
                Line::Start
            }
            (Line::Start, TokenKind::Whitespace) => Line::Start,
            (Line::Start, TokenKind::LeftSquareBracket) => Line::Open,
            (Line::Open, TokenKind::LeftSquareBracket) => Line::Open2,
            (Line::Open2, TokenKind::Whitespace) => Line::Open2,
            (Line::Open2, TokenKind::Atom)
                if src.get(span.start()..span.end()) == Some("routes") =>
            {
                Line::Name
            }
            (Line::Name, TokenKind::Whitespace) => Line::Name,
            (Line::Name, TokenKind::RightSquareBracket) => Line::Close,
            (Line::Close, TokenKind::RightSquareBracket) => Line::Header,
            (Line::Header, TokenKind::Whitespace | TokenKind::Comment) => Line::Header,
            _ => Line::Other,
        };
    }
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parsed whole and in pieces (a piece at every `[[routes]]` line but the first),
    /// as text: equal values with equal spans.
    fn both_ways(src: &str) -> (String, Option<String>) {
        let whole = format!(
            "{:?}",
            toml::from_str::<FileConfig>(src).map_err(|e| e.to_string())
        );
        let points = split_points(src, 1);
        let pieces = parse_pieces(src, &points).map(|f| format!("{:?}", Ok::<_, String>(f)));
        (whole, pieces)
    }

    const TABLE: &str = r#"# head
[listen]
http = "127.0.0.1:8080"

[services.users]
endpoints = ["127.0.0.1:9001"]

[services.orders]
endpoints = ["127.0.0.1:9002"]
connect_timeout = "2s"

[[routes]]
name = "users"
path = "/users"
service = "users"

  [[ routes ]]   # indented, spaced, with a comment
name = "orders"
path = "/orders"
service = "orders"
[routes.rate_limit]
per_second = 100
burst = 200

[[routes]]
name = "text"
path = "/text"
service = "users"
headers = { x-note = """
[[routes]]
name = "not a route"
""" }
# between routes
[[routes]]
name = "last"
path = "/"
service = "users"
"#;

    #[test]
    fn pieces_parse_to_what_the_whole_file_parses_to() {
        let points = split_points(TABLE, 1);
        // Three header lines after the first one; the one in the string is not a header.
        assert_eq!(points.len(), 3, "{points:?}");
        for p in &points {
            assert!(
                TABLE[*p..].trim_start().starts_with("[["),
                "{:?}",
                &TABLE[*p..]
            );
        }
        let (whole, pieces) = both_ways(TABLE);
        assert!(whole.starts_with("Ok("), "{whole}");
        assert_eq!(pieces.as_deref(), Some(whole.as_str()));
    }

    #[test]
    fn the_shipped_route_table_parses_the_same_in_pieces() {
        let src = include_str!("../../routes.toml");
        assert!(!split_points(src, 1).is_empty());
        let (whole, pieces) = both_ways(src);
        assert!(whole.starts_with("Ok("), "{whole}");
        assert_eq!(pieces.as_deref(), Some(whole.as_str()));
    }

    #[test]
    fn a_large_table_is_cut_about_every_piece_size() {
        let mut src = String::from("[services.up]\nendpoints = [\"127.0.0.1:1\"]\n");
        for i in 0..5000 {
            src.push_str(&format!(
                "\n[[routes]]\nname = \"r{i}\"\npath = \"/r{i}\"\nservice = \"up\"\n"
            ));
        }
        let points = split_points(&src, PIECE);
        assert_eq!(points.len(), src.len() / PIECE, "{} bytes", src.len());
        for w in points.windows(2) {
            assert!(w[1] - w[0] >= PIECE && w[1] - w[0] < PIECE + 100);
        }
        let file = from_str(&src).unwrap();
        assert_eq!(file.routes.len(), 5000);
        assert_eq!(
            format!("{file:?}"),
            format!("{:?}", toml::from_str::<FileConfig>(&src).unwrap())
        );
    }

    #[test]
    fn a_table_after_the_routes_means_a_whole_parse() {
        let src = format!("{TABLE}\n[services.late]\nendpoints = [\"127.0.0.1:9003\"]\n");
        let (whole, pieces) = both_ways(&src);
        assert!(whole.starts_with("Ok("), "{whole}");
        assert_eq!(pieces, None);
        assert_eq!(
            format!("{:?}", from_str(&src).map_err(|e| e.to_string())),
            whole
        );
    }

    #[test]
    fn errors_are_those_of_the_whole_file() {
        for bad in [
            // a broken piece
            format!("{TABLE}\n[[routes]]\nname = \n"),
            // routes defined inline in the first piece, then as headers
            format!("routes = []\n{TABLE}"),
            // an unknown key in a later piece
            format!("{TABLE}\n[[routes]]\nname = \"x\"\nservise = \"users\"\n"),
            // a duplicate key in a later piece
            format!("{TABLE}\n[[routes]]\nname = \"x\"\nname = \"y\"\n"),
        ] {
            let whole = toml::from_str::<FileConfig>(&bad)
                .map(|_| ())
                .map_err(|e| e.to_string());
            assert!(whole.is_err(), "{bad}");
            let split = {
                let points = split_points(&bad, 1);
                parse_pieces(&bad, &points)
            };
            assert!(split.is_none(), "{bad}");
            assert_eq!(from_str(&bad).map(|_| ()).map_err(|e| e.to_string()), whole);
        }
    }

    #[test]
    fn a_file_with_one_route_is_not_cut() {
        let src = "[services.a]\nendpoints = [\"127.0.0.1:1\"]\n[[routes]]\nname = \"a\"\npath = \"/\"\nservice = \"a\"\n";
        assert!(split_points(src, 1).is_empty());
    }
}
