//! Finds the `[[keys]]` tables of a config file by their header lines, so that a file of many
//! keys can be parsed (and edited) one key at a time instead of as one large tree.
//!
//! A key's table runs from its `[[keys]]` header to the next header that is not one of its
//! sub-tables (`[keys.limits]`). The scan looks at lines only, so a line that merely looks like
//! a header inside a multi-line string or array would be taken for one; the text it then cuts
//! off starts with the rest of that value (its closing delimiter without its opening), which
//! does not parse on its own. Callers therefore parse every piece and fall back to the whole
//! file on any error: a wrong split can cost time, never change a result.

use std::ops::Range;

/// Byte ranges of a config text: each `[[keys]]` table, and everything else.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parts {
    pub keys: Vec<Range<usize>>,
    /// What is not a key table, in file order.
    pub others: Vec<Range<usize>>,
}

impl Parts {
    /// Everything but the key tables, as one text.
    pub fn rest(&self, text: &str) -> String {
        let mut out = String::with_capacity(self.others.iter().map(|r| r.len()).sum());
        for r in &self.others {
            out.push_str(text.get(r.clone()).unwrap_or(""));
        }
        out
    }
}

/// What a header line opens.
#[derive(Debug, PartialEq, Eq)]
enum Header {
    /// `[[keys]]`: a new key.
    Key,
    /// `[keys.something]`: a sub-table of the current key.
    KeySub,
    /// Any other table.
    Other,
}

/// The header a line opens, if it is one; `Err` for a header about `keys` that is neither of
/// the two forms above (the caller then leaves the file to the whole parse).
fn header(line: &str) -> Result<Option<Header>, ()> {
    let l = line.trim();
    let Some(rest) = l.strip_prefix('[') else {
        return Ok(None);
    };
    let (array, inner) = match rest.strip_prefix('[') {
        Some(inner) => (true, inner.split("]]").next().unwrap_or("")),
        None => (false, rest.split(']').next().unwrap_or("")),
    };
    let name: String = inner.chars().filter(|c| !c.is_whitespace()).collect();
    let about_keys = name == "keys"
        || name.starts_with("keys.")
        || name.starts_with("\"keys\"")
        || name.starts_with("'keys'");
    Ok(Some(match (array, about_keys) {
        (true, true) if name == "keys" => Header::Key,
        (false, true) if name.starts_with("keys.") => Header::KeySub,
        (_, false) => Header::Other,
        _ => return Err(()),
    }))
}

/// The key tables of `text` and the rest, or `None` when the file has no `[[keys]]` table or
/// writes about `keys` in a form this scan does not follow. Blank and comment lines right
/// before a header go with that header (they are about what follows), so removing a key leaves
/// the next one's comment and a key added after the last one goes before the comment of the
/// table that follows.
pub fn split(text: &str) -> Option<Parts> {
    let mut parts = Parts::default();
    let mut pos = 0;
    let mut in_key = false;
    // Where the current run of blank and comment lines began, if one is running.
    let mut run: Option<usize> = None;
    for line in text.split_inclusive('\n') {
        let end = pos + line.len();
        let opened = header(line).ok()?;
        if let Some(h) = &opened {
            // The section before ends where its trailing blank and comment lines begin.
            let boundary = run.take().unwrap_or(pos);
            let current = if in_key {
                &mut parts.keys
            } else {
                &mut parts.others
            };
            if let Some(last) = current.last_mut() {
                last.end = boundary;
                if last.start == last.end {
                    current.pop();
                }
            }
            in_key = match h {
                Header::Key => true,
                Header::KeySub if in_key => true,
                Header::KeySub => return None,
                Header::Other => false,
            };
            let next = if in_key {
                &mut parts.keys
            } else {
                &mut parts.others
            };
            if *h == Header::Key {
                next.push(boundary..end);
            } else {
                extend(next, boundary, end);
            }
        } else {
            let trimmed = line.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                run.get_or_insert(pos);
            } else {
                run = None;
            }
            let current = if in_key {
                &mut parts.keys
            } else {
                &mut parts.others
            };
            extend(current, pos, end);
        }
        pos = end;
    }
    (!parts.keys.is_empty()).then_some(parts)
}

/// Adds `start..end` to the last range when they touch, as a new range otherwise.
fn extend(ranges: &mut Vec<Range<usize>>, start: usize, end: usize) {
    match ranges.last_mut() {
        Some(r) if r.end == start => r.end = end,
        _ => ranges.push(start..end),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_tables_and_their_sub_tables_are_cut_out_in_order() {
        let text = "[server]\nlisten = \"x\"\n\n[[keys]]\nid = \"a\"\n[keys.limits]\nrpm = 1\n\n[[ keys ]] # two\nid = \"b\"\n[admin]\nlisten = \"y\"\n[[keys]]\nid = \"c\"\n";
        let p = split(text).unwrap();
        let keys: Vec<&str> = p.keys.iter().map(|r| &text[r.clone()]).collect();
        assert_eq!(
            keys,
            [
                "\n[[keys]]\nid = \"a\"\n[keys.limits]\nrpm = 1\n",
                "\n[[ keys ]] # two\nid = \"b\"\n",
                "[[keys]]\nid = \"c\"\n"
            ]
        );
        assert_eq!(
            p.rest(text),
            "[server]\nlisten = \"x\"\n[admin]\nlisten = \"y\"\n"
        );
        // Every byte is in exactly one part.
        let mut all: Vec<_> = p.keys.iter().chain(&p.others).cloned().collect();
        all.sort_by_key(|r| r.start);
        assert_eq!(all.first().unwrap().start, 0);
        assert_eq!(all.last().unwrap().end, text.len());
        assert!(all.windows(2).all(|w| w[0].end == w[1].start));
    }

    #[test]
    fn comments_before_a_header_go_with_it() {
        let text = "[[keys]]\nid = \"a\"\n\n# customer b\n[[keys]]\nid = \"b\"\n# storage next\n[storage]\n";
        let p = split(text).unwrap();
        assert_eq!(&text[p.keys[0].clone()], "[[keys]]\nid = \"a\"\n");
        assert_eq!(
            &text[p.keys[1].clone()],
            "\n# customer b\n[[keys]]\nid = \"b\"\n"
        );
        assert_eq!(p.rest(text), "# storage next\n[storage]\n");
    }

    #[test]
    fn unusual_forms_are_left_to_the_whole_parse() {
        assert_eq!(split("[server]\n"), None);
        assert_eq!(split("[keys]\nid = 1\n"), None);
        assert_eq!(split("[keys.limits]\n[[keys]]\n"), None);
        assert_eq!(split("[[\"keys\"]]\nid = 1\n"), None);
    }

    #[test]
    fn a_header_inside_a_multi_line_string_is_cut_where_parsing_fails() {
        // The scan takes the quoted line for a header; the piece it cuts off begins with the
        // string's closing quotes, which cannot parse, so the caller falls back.
        let text = "[[keys]]\nid = \"a\"\ndescription = \"\"\"\n[[keys]]\nid = \"evil\"\n\"\"\"\n";
        let p = split(text).unwrap();
        assert_eq!(p.keys.len(), 2);
        let second = &text[p.keys[1].clone()];
        assert!(toml::from_str::<toml::Table>(second).is_err(), "{second}");
    }
}
