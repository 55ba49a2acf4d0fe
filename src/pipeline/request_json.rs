//! Reads just enough of a JSON request body to authorize and meter it (model, stream,
//! max_tokens, stream_options.include_usage). The body is forwarded unchanged, except that
//! [`with_include_usage`] asks a stream for its usage when the client did not.
//!
//! Refused: bodies that are not a JSON object, nesting deeper than the configured limit, and
//! duplicate keys at the top level or in `stream_options`, because two parsers that pick
//! different duplicates would let a client authorize one model and use another.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::hash::{BuildHasher, Hasher};

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

/// The fields keygate reads from a request body.
#[derive(Debug, Default, PartialEq)]
pub struct RequestFields<'a> {
    pub model: Option<Cow<'a, str>>,
    pub stream: bool,
    pub max_tokens: Option<u64>,
    pub include_usage: Option<bool>,
    /// The body has a `stream_options` member (whatever its value).
    pub has_stream_options: bool,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BodyError {
    #[error("the request body nests JSON deeper than {0} levels")]
    TooDeep(usize),
    #[error("the request body is not valid JSON: {0}")]
    Invalid(String),
}

pub fn parse(body: &[u8], max_depth: usize) -> Result<RequestFields<'_>, BodyError> {
    check_depth(body, max_depth)?;
    let mut de = serde_json::Deserializer::from_slice(body);
    let fields = de
        .deserialize_map(FieldsVisitor)
        .and_then(|f| de.end().map(|()| f))
        .map_err(|e| BodyError::Invalid(e.to_string()))?;
    Ok(fields)
}

/// The body with `stream_options.include_usage` set to true, so a stream reports its usage.
/// When the body has no `stream_options`, the member is appended before the closing brace and
/// every other byte stays as the client sent it; otherwise the object is rewritten (member
/// order is preserved).
pub fn with_include_usage(body: &[u8], fields: &RequestFields<'_>) -> Result<Vec<u8>, BodyError> {
    const MEMBER: &[u8] = b",\"stream_options\":{\"include_usage\":true}";
    let trimmed = body.trim_ascii_end();
    if !fields.has_stream_options
        && let Some(head) = trimmed.strip_suffix(b"}")
        && head.trim_ascii_end().len() > 1
    {
        let mut out = Vec::with_capacity(body.len() + MEMBER.len());
        out.extend_from_slice(head);
        out.extend_from_slice(MEMBER);
        out.push(b'}');
        return Ok(out);
    }
    let mut value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| BodyError::Invalid(e.to_string()))?;
    let Some(object) = value.as_object_mut() else {
        return Err(BodyError::Invalid("not an object".into()));
    };
    let options = object
        .entry("stream_options")
        .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
    if !options.is_object() {
        *options = serde_json::Value::Object(serde_json::Map::new());
    }
    if let Some(o) = options.as_object_mut() {
        o.insert("include_usage".into(), serde_json::Value::Bool(true));
    }
    serde_json::to_vec(&value).map_err(|e| BodyError::Invalid(e.to_string()))
}

/// One pass over the bytes counting `[`/`{` nesting outside strings.
fn check_depth(body: &[u8], max_depth: usize) -> Result<(), BodyError> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in body {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return Err(BodyError::TooDeep(max_depth));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Remembers the keys of one object (as 64-bit hashes) to refuse duplicates: the first 16 in
/// an array (typical bodies allocate nothing), the rest in a hash set, so a body with a
/// million keys costs linear, not quadratic, time.
struct SeenKeys {
    hasher: std::hash::RandomState,
    inline: [u64; 16],
    len: usize,
    spill: HashSet<u64>,
}

impl SeenKeys {
    fn new() -> Self {
        Self {
            hasher: std::hash::RandomState::new(),
            inline: [0; 16],
            len: 0,
            spill: HashSet::new(),
        }
    }

    /// False if `key` was seen before.
    fn insert(&mut self, key: &str) -> bool {
        let mut h = self.hasher.build_hasher();
        h.write(key.as_bytes());
        let h = h.finish();
        let stored = &self.inline[..self.len.min(16)];
        if stored.contains(&h) || self.spill.contains(&h) {
            return false;
        }
        if self.len < 16 {
            self.inline[self.len] = h;
        } else {
            self.spill.insert(h);
        }
        self.len += 1;
        true
    }
}

/// A key as it appears in the body; borrowed unless it contains escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = RequestFields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = RequestFields::default();
        let mut seen = SeenKeys::new();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            if !seen.insert(&key) {
                return Err(de::Error::custom(format_args!("duplicate key {key:?}")));
            }
            match &*key {
                "model" => fields.model = Some(map.next_value::<Key<'de>>()?.0),
                "stream" => fields.stream = map.next_value::<Option<bool>>()?.unwrap_or(false),
                "max_tokens" | "max_completion_tokens" => {
                    let v = map.next_value::<Option<u64>>()?;
                    // When both are sent, the larger bounds the completion.
                    fields.max_tokens = fields.max_tokens.max(v);
                }
                "stream_options" => {
                    fields.has_stream_options = true;
                    fields.include_usage =
                        map.next_value::<Option<StreamOptions>>()?.and_then(|o| o.0)
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(fields)
    }
}

struct StreamOptions(Option<bool>);

impl<'de> de::Deserialize<'de> for StreamOptions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StreamOptions;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut seen = SeenKeys::new();
                let mut include = None;
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    if !seen.insert(&key) {
                        return Err(de::Error::custom(format_args!(
                            "duplicate key {key:?} in stream_options"
                        )));
                    }
                    if key == "include_usage" {
                        include = map.next_value::<Option<bool>>()?;
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(StreamOptions(include))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fields_it_needs() {
        let body = br#"{"model":"deepseek-chat","messages":[{"role":"user","content":"hi"}],"stream":true,"max_tokens":50,"stream_options":{"include_usage":true}}"#;
        let f = parse(body, 128).unwrap();
        assert_eq!(f.model.as_deref(), Some("deepseek-chat"));
        assert!(matches!(f.model, Some(Cow::Borrowed(_))));
        assert!(f.stream);
        assert_eq!(f.max_tokens, Some(50));
        assert_eq!(f.include_usage, Some(true));
        assert_eq!(
            parse(br#"{"input":"x"}"#, 128).unwrap(),
            RequestFields::default()
        );
    }

    #[test]
    fn include_usage_is_added_without_touching_other_bytes() {
        let body = b"{ \"model\": \"m\", \"stream\": true }\n";
        let f = parse(body, 128).unwrap();
        let out = with_include_usage(body, &f).unwrap();
        assert_eq!(
            out,
            b"{ \"model\": \"m\", \"stream\": true ,\"stream_options\":{\"include_usage\":true}}"
        );
        let body = br#"{"model":"m","stream_options":{"include_usage":false,"x":1},"stream":true}"#;
        let f = parse(body, 128).unwrap();
        let out = with_include_usage(body, &f).unwrap();
        assert_eq!(
            out,
            br#"{"model":"m","stream_options":{"include_usage":true,"x":1},"stream":true}"#
        );
        let body = br#"{"model":"m","stream_options":null}"#;
        let out = with_include_usage(body, &parse(body, 128).unwrap()).unwrap();
        assert_eq!(
            out,
            br#"{"model":"m","stream_options":{"include_usage":true}}"#
        );
    }

    #[test]
    fn refuses_duplicates_even_when_escaped() {
        assert!(parse(br#"{"model":"a","model":"b"}"#, 128).is_err());
        assert!(parse(br#"{"model":"a","mod\u0065l":"b"}"#, 128).is_err());
        assert!(
            parse(
                br#"{"stream_options":{"include_usage":true,"include_usage":false}}"#,
                128
            )
            .is_err()
        );
        let many: String = (0..40).map(|i| format!("\"k{i}\":1,")).collect();
        assert!(parse(format!("{{{many}\"k3\":2}}").as_bytes(), 128).is_err());
        assert!(parse(format!("{{{many}\"k40\":2}}").as_bytes(), 128).is_ok());
    }

    #[test]
    fn refuses_non_objects_bad_types_and_deep_nesting() {
        assert!(parse(b"[1,2]", 128).is_err());
        assert!(parse(b"{\"model\": 5}", 128).is_err());
        assert!(parse(b"{\"stream\": \"yes\"}", 128).is_err());
        assert!(parse(b"{} trailing", 128).is_err());
        let deep = format!("{{\"x\":{}1{}}}", "[".repeat(128), "]".repeat(128));
        assert_eq!(parse(deep.as_bytes(), 128), Err(BodyError::TooDeep(128)));
        let ok = format!("{{\"x\":{}1{}}}", "[".repeat(127), "]".repeat(127));
        assert!(parse(ok.as_bytes(), 128).is_ok());
        // Brackets inside strings do not count.
        let s = format!("{{\"x\":\"{}\\\"{}\"}}", "[".repeat(300), "{".repeat(300));
        assert!(parse(s.as_bytes(), 128).is_ok());
    }
}
