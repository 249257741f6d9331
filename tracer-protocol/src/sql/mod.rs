//! SQL statement text for spans: the sanitiser (`db.query.text` with every literal replaced by
//! `?`, comments dropped, whitespace collapsed, bounded) and the operation and collection a
//! statement names (`db.operation.name`, `db.collection.name`).
//!
//! Not a SQL parser: a single pass over the bytes that knows the lexical forms that can hold
//! data (quoted strings in their PostgreSQL and MySQL spellings, dollar quoting, numbers, hex
//! and bit strings). Anything it does not recognise is kept only if it is an identifier,
//! keyword, operator or placeholder, so an unknown form degrades to `?`, never to a value.
#[cfg(test)]
mod tests;

/// `db.query.text` is cut to this many bytes (at a token boundary).
pub const MAX_QUERY_TEXT: usize = 2048;

/// `text` with literals replaced by `?`, at most `max` bytes (cut before the token that would
/// not fit). Double-quoted words are identifiers in standard SQL and stay, except where they
/// hold spaces or quotes (MySQL's default treats them as strings): then they are `?` too.
pub fn sanitize(text: &[u8], max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    let mut i = 0;
    // Whether a space goes before the next token (collapsed whitespace and dropped comments).
    let mut space = false;
    while i < text.len() {
        let b = text[i];
        let (token, next): (Token<'_>, usize) = match b {
            b' ' | b'\t' | b'\r' | b'\n' | 0x0c => {
                space = !out.is_empty();
                i += 1;
                continue;
            }
            b'-' if text.get(i + 1) == Some(&b'-') => {
                space = !out.is_empty();
                i = line_end(text, i);
                continue;
            }
            b'#' => {
                // MySQL's line comment (PostgreSQL has `#` only as an operator: XOR).
                space = !out.is_empty();
                i = line_end(text, i);
                continue;
            }
            b'/' if text.get(i + 1) == Some(&b'*') => {
                space = !out.is_empty();
                i = block_comment_end(text, i);
                continue;
            }
            b'\'' => (Token::Literal, quoted_end(text, i + 1, b'\'')),
            b'"' => {
                let end = quoted_end(text, i + 1, b'"');
                let inner = &text[i + 1..end.saturating_sub(1).max(i + 1)];
                let plain = end > i + 2
                    && text[end - 1] == b'"'
                    && inner
                        .iter()
                        .all(|c| c.is_ascii_alphanumeric() || *c == b'_');
                if plain {
                    (Token::Text(&text[i..end]), end)
                } else {
                    (Token::Literal, end)
                }
            }
            b'`' => {
                let end = quoted_end(text, i + 1, b'`');
                (Token::Text(&text[i..end]), end)
            }
            b'$' => match dollar_tag_end(text, i) {
                Some(tag_end) => (Token::Literal, dollar_quoted_end(text, i, tag_end)),
                None => {
                    // `$1` placeholders stay; anything else after `$` is an operator char.
                    let end = digits_end(text, i + 1);
                    (Token::Text(&text[i..end.max(i + 1)]), end.max(i + 1))
                }
            },
            b'0'..=b'9' => (Token::Literal, number_end(text, i)),
            b'.' if text.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                (Token::Literal, number_end(text, i))
            }
            c if is_word_start(c) => {
                let end = word_end(text, i);
                let word = &text[i..end];
                // Prefixed strings: E'..', B'..', X'..', N'..', U&'..', _utf8'..'.
                if text.get(end) == Some(&b'\'') && is_string_prefix(word) {
                    (Token::Literal, quoted_end(text, end + 1, b'\''))
                } else if word.eq_ignore_ascii_case(b"U")
                    && text.get(end) == Some(&b'&')
                    && text.get(end + 1) == Some(&b'\'')
                {
                    (Token::Literal, quoted_end(text, end + 2, b'\''))
                } else {
                    (Token::Text(word), end)
                }
            }
            c if c.is_ascii_punctuation() => (Token::Text(&text[i..i + 1]), i + 1),
            // Control bytes and non-ASCII outside any word or quote: never copied.
            _ => (Token::Literal, utf8_run_end(text, i)),
        };
        let piece: &[u8] = match token {
            Token::Literal => b"?",
            Token::Text(t) => t,
        };
        let sep = usize::from(space && needs_space(&out, piece));
        if out.len() + sep + piece.len() > max {
            break;
        }
        if sep == 1 {
            out.push(' ');
        }
        // Every kept piece is ASCII (words, punctuation, digits after `$`, `?`); a quoted
        // identifier may hold UTF-8, checked here.
        match std::str::from_utf8(piece) {
            Ok(s) => out.push_str(s),
            Err(_) => out.push('?'),
        }
        space = false;
        i = next.max(i + 1);
    }
    out
}

enum Token<'a> {
    /// Data: replaced by `?`.
    Literal,
    /// Kept as written.
    Text(&'a [u8]),
}

/// Whether a collapsed space must be kept between the output so far and `piece`: always,
/// except around punctuation that reads the same without it.
fn needs_space(out: &str, piece: &[u8]) -> bool {
    let tight = |c: u8| matches!(c, b'(' | b')' | b',' | b'.' | b';');
    let last = out.as_bytes().last().copied().unwrap_or(b' ');
    !(tight(piece[0]) && piece[0] != b'(' || last == b'(' || last == b'.')
}

fn is_word_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn word_end(text: &[u8], i: usize) -> usize {
    let mut j = i;
    while j < text.len() && (is_word_start(text[j]) || text[j].is_ascii_digit() || text[j] == b'$')
    {
        j += 1;
    }
    j
}

fn is_string_prefix(word: &[u8]) -> bool {
    matches!(
        word,
        [b'e' | b'E' | b'b' | b'B' | b'x' | b'X' | b'n' | b'N']
    ) || (word.first() == Some(&b'_') && word.len() > 1)
}

fn digits_end(text: &[u8], i: usize) -> usize {
    let mut j = i;
    while j < text.len() && text[j].is_ascii_digit() {
        j += 1;
    }
    j
}

/// A numeric literal: digits, a fraction, an exponent, hex/octal/binary prefixes, `_`
/// separators (PostgreSQL 16). Letters glued to it (`1abc`) are consumed too: never copied.
fn number_end(text: &[u8], i: usize) -> usize {
    let mut j = i;
    while j < text.len() {
        let c = text[j];
        let exponent_sign = (c == b'+' || c == b'-')
            && j > i
            && matches!(text[j - 1], b'e' | b'E')
            && !text[i..j].starts_with(b"0x");
        if c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || exponent_sign {
            j += 1;
        } else {
            break;
        }
    }
    j
}

/// Past the closing quote of a string opened before `i`; a doubled quote is an escaped quote,
/// and (for single quotes) a backslash escapes the next byte, as MySQL and PostgreSQL's E''
/// strings read it. Unterminated: the end of the text (all of it is data).
fn quoted_end(text: &[u8], mut i: usize, quote: u8) -> usize {
    while i < text.len() {
        let c = text[i];
        if c == b'\\' && quote == b'\'' {
            i += 2;
        } else if c == quote {
            if text.get(i + 1) == Some(&quote) {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    text.len()
}

/// `$tag$` or `$$` at `i`: the index past the opening tag.
fn dollar_tag_end(text: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    if text.get(j).is_some_and(u8::is_ascii_digit) {
        return None;
    }
    while j < text.len() && (text[j].is_ascii_alphanumeric() || text[j] == b'_') {
        j += 1;
    }
    (text.get(j) == Some(&b'$')).then_some(j + 1)
}

/// Past the closing tag of a dollar-quoted string whose opening tag is `text[i..tag_end]`.
fn dollar_quoted_end(text: &[u8], i: usize, tag_end: usize) -> usize {
    let tag = &text[i..tag_end];
    let body = &text[tag_end..];
    match body.windows(tag.len()).position(|w| w == tag) {
        Some(p) => tag_end + p + tag.len(),
        None => text.len(),
    }
}

fn line_end(text: &[u8], i: usize) -> usize {
    text[i..]
        .iter()
        .position(|&c| c == b'\n')
        .map_or(text.len(), |p| i + p + 1)
}

/// Past a `/* */` comment (nested, as PostgreSQL allows).
fn block_comment_end(text: &[u8], mut i: usize) -> usize {
    let mut depth = 0u32;
    while i + 1 < text.len() {
        match (text[i], text[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    text.len()
}

fn utf8_run_end(text: &[u8], i: usize) -> usize {
    let mut j = i + 1;
    while j < text.len() && (text[j] >= 0x80 || text[j] < 0x20) && !text[j].is_ascii_whitespace() {
        j += 1;
    }
    j
}

/// What a statement does and to which collection: `db.operation.name` (its first keyword,
/// upper case) and `db.collection.name` (the one table it reads or writes, when it names a
/// single one plainly).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub operation: Option<String>,
    pub collection: Option<String>,
}

/// The longest operation or collection name kept.
const MAX_NAME: usize = 64;

/// The [`Summary`] of a (sanitised or raw) statement.
pub fn summarize(text: &str) -> Summary {
    let mut words = Words::new(text);
    let Some(first) = words.next() else {
        return Summary::default();
    };
    if !first.bytes().all(|c| c.is_ascii_alphabetic()) || first.len() > MAX_NAME {
        return Summary::default();
    }
    let operation = first.to_ascii_uppercase();
    // The keyword after which the statement's one table is named.
    let marker: &[&str] = match operation.as_str() {
        "SELECT" | "DELETE" => &["FROM"],
        "INSERT" | "REPLACE" => &["INTO"],
        "UPDATE" => &[],
        "TRUNCATE" => &["TABLE"],
        "COPY" => &[],
        _ => {
            return Summary {
                operation: Some(operation),
                collection: None,
            };
        }
    };
    let mut depth = 0i32;
    let mut table = None;
    let mut found_marker = marker.is_empty();
    let rest = words.by_ref();
    if found_marker {
        // UPDATE [ONLY] t / COPY t / TRUNCATE [TABLE] t.
        table = rest.find(|w| !w.eq_ignore_ascii_case("ONLY") && !w.eq_ignore_ascii_case("TABLE"));
    } else {
        for w in rest.by_ref() {
            match w {
                "(" => depth += 1,
                ")" => depth -= 1,
                _ if depth == 0 && marker.iter().any(|m| w.eq_ignore_ascii_case(m)) => {
                    found_marker = true;
                    table = rest.find(|w| !w.eq_ignore_ascii_case("ONLY"));
                    break;
                }
                _ => {}
            }
        }
        if operation == "TRUNCATE" && table.is_none() {
            found_marker = true;
        }
    }
    let collection = table
        .filter(|t| found_marker && is_table_name(t))
        .and_then(|t| {
            // A second table (joins, comma lists, subqueries in FROM): not one collection.
            let single = match rest.next() {
                Some(",") => false,
                Some(w) => {
                    !w.eq_ignore_ascii_case("JOIN") && !rest.any(|w| w.eq_ignore_ascii_case("JOIN"))
                }
                None => true,
            };
            single.then(|| t.replace(['"', '`'], ""))
        });
    Summary {
        operation: Some(operation),
        collection: collection.filter(|c| c.len() <= MAX_NAME),
    }
}

/// A table name as written: identifiers, quoted or not, dot-qualified.
fn is_table_name(t: &str) -> bool {
    !t.is_empty()
        && t.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'"' | b'`'))
        && !t.as_bytes()[0].is_ascii_digit()
}

/// Tokens of a statement for [`summarize`]: words (with dots and quotes joined, so
/// `public.users` is one), and single punctuation characters.
struct Words<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Words<'a> {
    fn new(text: &'a str) -> Self {
        Self { text, at: 0 }
    }
}

impl<'a> Iterator for Words<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        let b = self.text.as_bytes();
        while self.at < b.len() && b[self.at].is_ascii_whitespace() {
            self.at += 1;
        }
        let start = self.at;
        let c = *b.get(start)?;
        let word =
            |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'"' | b'`' | b'$');
        if word(c) {
            while self.at < b.len() && word(b[self.at]) {
                self.at += 1;
            }
        } else {
            // One character (any UTF-8 length).
            self.at += self.text[start..].chars().next().map_or(1, char::len_utf8);
        }
        Some(&self.text[start..self.at])
    }
}
