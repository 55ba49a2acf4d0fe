//! Reads just enough of a JSON request body to authorize, price and meter it: the model, the
//! stream flag, the completion cap (`max_tokens` / `max_completion_tokens`), how many outputs
//! it asks for (`n`, `best_of`, the prompts of an array `prompt`), how many inputs it carries
//! (prompt and embedding arrays, token-id arrays) and `stream_options.include_usage`, with the
//! byte positions keygate needs to edit the body in place.
//!
//! The body is forwarded as the client sent it, except for two edits spliced into its bytes
//! (never a re-serialisation): `max_tokens` when the client set no cap, so the cap keygate
//! reserved is the cap the upstream enforces, and `stream_options.include_usage` on streams,
//! so every stream reports its usage.
//!
//! Refused: bodies that are not a JSON object, nesting deeper than the configured limit,
//! duplicate keys at the top level or in `stream_options` (two parsers that pick different
//! duplicates would let a client authorize one model and use another), and caps or counts
//! that are not positive integers.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::hash::{BuildHasher, Hasher};

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// A completion cap member as the body has it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Cap {
    #[default]
    Absent,
    /// `null`, at this byte range: not set, and replaced in place when keygate sets it (so
    /// the body never has the member twice).
    Null(usize, usize),
    /// A positive integer.
    Set(u64),
}

impl Cap {
    pub fn value(self) -> Option<u64> {
        match self {
            Cap::Set(n) => Some(n),
            Cap::Absent | Cap::Null(..) => None,
        }
    }
}

/// The member an upstream reads a model's completion cap from: DeepSeek reads `max_tokens`
/// only; OpenAI's reasoning models read `max_completion_tokens` only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CapField {
    #[default]
    MaxTokens,
    MaxCompletionTokens,
}

impl CapField {
    pub fn name(self) -> &'static str {
        match self {
            CapField::MaxTokens => "max_tokens",
            CapField::MaxCompletionTokens => "max_completion_tokens",
        }
    }
}

/// The fields keygate reads from a request body, and where to edit it.
#[derive(Debug, Default, PartialEq)]
pub struct RequestFields<'a> {
    pub model: Option<Cow<'a, str>>,
    pub stream: bool,
    pub max_tokens: Cap,
    pub max_completion_tokens: Cap,
    /// `n`: completions per prompt (at least 1).
    pub n: Option<u64>,
    /// `best_of`: completions generated per prompt, of which `n` are returned.
    pub best_of: Option<u64>,
    /// What `prompt` carries (completions): how many prompts, and how many token ids.
    pub prompt: Inputs,
    /// What `input` carries (embeddings).
    pub input: Inputs,
    /// A chat message has a content part other than text (an image, audio, a file), whose
    /// tokens the body's size does not bound.
    pub media_parts: bool,
    pub include_usage: Option<bool>,
    /// Where `stream_options` stands, if the body has it.
    stream_options: Option<OptionsAt>,
    /// Byte offset of the object's closing brace.
    end: usize,
    /// The object has at least one member.
    has_members: bool,
}

/// What the `prompt` (completions) or `input` (embeddings) member holds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Inputs {
    /// Separate prompts: a string is one, an array of strings or of token-id arrays is one
    /// per element, a flat token-id array is one.
    pub prompts: u64,
    /// Token ids given directly (each is one token).
    pub token_ids: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OptionsAt {
    /// `stream_options` is an object: the offset of its `{`, whether it has members, and the
    /// byte range of `include_usage`'s value if present.
    Object {
        open: usize,
        has_members: bool,
        include_usage: Option<(usize, usize)>,
    },
    /// `stream_options: null`: the byte range of the `null`.
    Null(usize, usize),
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
    let mut fields = de
        .deserialize_map(FieldsVisitor { body })
        .and_then(|f| de.end().map(|()| f))
        .map_err(|e| BodyError::Invalid(e.to_string()))?;
    // A top-level object ends with `}` once trailing whitespace is gone.
    fields.end = body.trim_ascii_end().len().saturating_sub(1);
    Ok(fields)
}

impl RequestFields<'_> {
    pub fn cap(&self, field: CapField) -> Cap {
        match field {
            CapField::MaxTokens => self.max_tokens,
            CapField::MaxCompletionTokens => self.max_completion_tokens,
        }
    }
}

/// The body with the cap member `cap.0` set to `cap.1` (added, or written over its `null`)
/// and `stream_options.include_usage` set to true (when `include_usage`), or `None` when
/// neither edit is asked for. Every other byte stays as the client sent it.
pub fn rewrite(
    body: &[u8],
    fields: &RequestFields<'_>,
    cap: Option<(CapField, u64)>,
    include_usage: bool,
) -> Result<Option<Vec<u8>>, BodyError> {
    // (offset, bytes removed from there, text inserted), in increasing offset order.
    let mut edits: Vec<(usize, usize, Cow<'static, str>)> = Vec::with_capacity(2);
    let mut tail = String::new();
    let mut members = fields.has_members;
    let mut member = |text: &str| {
        if members {
            tail.push(',');
        }
        tail.push_str(text);
        members = true;
    };
    if include_usage {
        match fields.stream_options {
            None => member("\"stream_options\":{\"include_usage\":true}"),
            Some(OptionsAt::Null(start, end)) => {
                edits.push((start, end - start, "{\"include_usage\":true}".into()));
            }
            Some(OptionsAt::Object {
                include_usage: Some((start, end)),
                ..
            }) => edits.push((start, end - start, "true".into())),
            Some(OptionsAt::Object {
                open,
                has_members,
                include_usage: None,
            }) => {
                let text = if has_members {
                    "\"include_usage\":true,"
                } else {
                    "\"include_usage\":true"
                };
                edits.push((open + 1, 0, text.into()));
            }
        }
    }
    if let Some((field, value)) = cap {
        match fields.cap(field) {
            Cap::Null(start, end) => edits.push((start, end - start, value.to_string().into())),
            Cap::Absent => member(&format!("\"{}\":{value}", field.name())),
            Cap::Set(_) => {
                return Err(BodyError::Invalid(format!(
                    "'{}' is already set",
                    field.name()
                )));
            }
        }
    }
    if !tail.is_empty() {
        edits.push((fields.end, 0, tail.into()));
    }
    if edits.is_empty() {
        return Ok(None);
    }
    edits.sort_by_key(|(offset, _, _)| *offset);
    let added: usize = edits.iter().map(|(_, _, t)| t.len()).sum();
    let mut out = Vec::with_capacity(body.len() + added);
    let mut at = 0;
    let broken = || BodyError::Invalid("the body could not be edited".into());
    for (offset, removed, text) in &edits {
        out.extend_from_slice(body.get(at..*offset).ok_or_else(broken)?);
        out.extend_from_slice(text.as_bytes());
        at = offset + removed;
    }
    out.extend_from_slice(body.get(at..).ok_or_else(broken)?);
    Ok(Some(out))
}

/// The byte range of `raw` inside `body` (it always borrows from it).
fn span(body: &[u8], raw: &str) -> Option<(usize, usize)> {
    let start = (raw.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let end = start.checked_add(raw.len())?;
    (end <= body.len()).then_some((start, end))
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

struct FieldsVisitor<'b> {
    body: &'b [u8],
}

/// A cap member: a positive integer, or `null` (remembered by its byte range).
fn cap<E: de::Error>(body: &[u8], raw: &RawValue, field: &str) -> Result<Cap, E> {
    if raw.get() == "null" {
        let (start, end) = span(body, raw.get())
            .ok_or_else(|| E::custom(format_args!("'{field}' is not inside the body")))?;
        return Ok(Cap::Null(start, end));
    }
    Ok(positive(raw, field)?.map_or(Cap::Absent, Cap::Set))
}

/// A positive integer (a cap or a count), or `null` for "not set".
fn positive<E: de::Error>(raw: &RawValue, field: &str) -> Result<Option<u64>, E> {
    match serde_json::from_str::<Option<u64>>(raw.get()) {
        Ok(None) => Ok(None),
        Ok(Some(n)) if n >= 1 => Ok(Some(n)),
        _ => Err(E::custom(format_args!(
            "'{field}' must be a positive integer"
        ))),
    }
}

impl<'de> Visitor<'de> for FieldsVisitor<'de> {
    type Value = RequestFields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = RequestFields::default();
        let mut seen = SeenKeys::new();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            fields.has_members = true;
            if !seen.insert(&key) {
                return Err(de::Error::custom(format_args!("duplicate key {key:?}")));
            }
            let value = map.next_value::<&'de RawValue>()?;
            let json = |e: serde_json::Error| de::Error::custom(format_args!("'{key}': {e}"));
            match &*key {
                "model" => {
                    fields.model = Some(
                        serde_json::from_str::<Key<'de>>(value.get())
                            .map_err(json)?
                            .0,
                    )
                }
                "stream" => {
                    fields.stream = serde_json::from_str::<Option<bool>>(value.get())
                        .map_err(json)?
                        .unwrap_or(false)
                }
                "max_tokens" => fields.max_tokens = cap(self.body, value, "max_tokens")?,
                "max_completion_tokens" => {
                    fields.max_completion_tokens = cap(self.body, value, "max_completion_tokens")?
                }
                "n" => fields.n = positive(value, "n")?,
                "best_of" => fields.best_of = positive(value, "best_of")?,
                "prompt" => {
                    fields.prompt = serde_json::from_str::<Inputs>(value.get()).map_err(json)?
                }
                "input" => {
                    fields.input = serde_json::from_str::<Inputs>(value.get()).map_err(json)?
                }
                // Only content parts carry a `type`: plain text chats skip the walk.
                "messages"
                    if memchr::memmem::find(value.get().as_bytes(), b"\"type\"").is_some() =>
                {
                    fields.media_parts = serde_json::from_str::<Messages>(value.get())
                        .map_err(json)?
                        .0;
                }
                "stream_options" => {
                    let (options, include) = stream_options(self.body, value).map_err(json)?;
                    fields.stream_options = Some(options);
                    fields.include_usage = include;
                }
                _ => {}
            }
        }
        Ok(fields)
    }
}

fn stream_options(
    body: &[u8],
    raw: &RawValue,
) -> Result<(OptionsAt, Option<bool>), serde_json::Error> {
    let bad = || <serde_json::Error as de::Error>::custom("not inside the body");
    let (start, end) = span(body, raw.get()).ok_or_else(bad)?;
    if raw.get() == "null" {
        return Ok((OptionsAt::Null(start, end), None));
    }
    let inner: StreamOptions<'_> = serde_json::from_str(raw.get())?;
    let include_usage = match inner.include_usage {
        Some(value) => Some(span(body, value.get()).ok_or_else(bad)?),
        None => None,
    };
    let include = match inner.include_usage {
        Some(value) => serde_json::from_str::<Option<bool>>(value.get())?,
        None => None,
    };
    Ok((
        OptionsAt::Object {
            open: start,
            has_members: inner.has_members,
            include_usage,
        },
        include,
    ))
}

/// Whether any message of a chat's `messages` has a content part other than text.
struct Messages(bool);

impl<'de> de::Deserialize<'de> for Messages {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Messages;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of messages")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Messages, A::Error> {
                let mut media = false;
                while let Some(message) = seq.next_element::<Message>()? {
                    media |= message.0;
                }
                Ok(Messages(media))
            }
        }
        d.deserialize_seq(V)
    }
}

/// One message: whether its `content` has a part other than text.
struct Message(bool);

impl<'de> de::Deserialize<'de> for Message {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Message;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a message object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Message, A::Error> {
                let mut media = false;
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    let value = map.next_value::<&'de RawValue>()?;
                    if key == "content" && value.get().starts_with('[') {
                        let parts: Vec<Part<'de>> =
                            serde_json::from_str(value.get()).map_err(de::Error::custom)?;
                        media |= parts.iter().any(|p| p.kind.as_deref() != Some("text"));
                    }
                }
                Ok(Message(media))
            }
        }
        d.deserialize_map(V)
    }
}

/// A content part: only its `type` matters here.
#[derive(serde::Deserialize)]
struct Part<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
}

/// `stream_options` as an object: whether it has members, and its `include_usage` value.
struct StreamOptions<'a> {
    has_members: bool,
    include_usage: Option<&'a RawValue>,
}

impl<'de> de::Deserialize<'de> for StreamOptions<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StreamOptions<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut seen = SeenKeys::new();
                let mut options = StreamOptions {
                    has_members: false,
                    include_usage: None,
                };
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    options.has_members = true;
                    if !seen.insert(&key) {
                        return Err(de::Error::custom(format_args!(
                            "duplicate key {key:?} in stream_options"
                        )));
                    }
                    let value = map.next_value::<&'de RawValue>()?;
                    if key == "include_usage" {
                        options.include_usage = Some(value);
                    }
                }
                Ok(options)
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> de::Deserialize<'de> for Inputs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Inputs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, an array of strings, or token ids")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Inputs, E> {
                Ok(Inputs::default())
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Inputs, E> {
                Ok(Inputs {
                    prompts: 1,
                    token_ids: 0,
                })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Inputs, A::Error> {
                let mut inputs = Inputs::default();
                let mut flat_ids = false;
                while let Some(element) = seq.next_element::<Element>()? {
                    match element {
                        Element::Text => inputs.prompts += 1,
                        Element::Id => {
                            flat_ids = true;
                            inputs.token_ids += 1;
                        }
                        Element::Ids(n) => {
                            inputs.prompts += 1;
                            inputs.token_ids += n;
                        }
                    }
                }
                inputs.prompts += u64::from(flat_ids);
                Ok(inputs)
            }
        }
        d.deserialize_any(V)
    }
}

/// One element of a `prompt` / `input` array.
enum Element {
    Text,
    Id,
    /// A nested token-id array of this many ids.
    Ids(u64),
}

impl<'de> de::Deserialize<'de> for Element {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Element;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, a token id or an array of token ids")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Element, E> {
                Ok(Element::Text)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Element, E> {
                Ok(Element::Id)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Element, E> {
                Ok(Element::Id)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Element, A::Error> {
                let mut n = 0u64;
                while seq.next_element::<TokenId>()?.is_some() {
                    n += 1;
                }
                Ok(Element::Ids(n))
            }
        }
        d.deserialize_any(V)
    }
}

/// An integer token id inside a nested array.
struct TokenId;

impl<'de> de::Deserialize<'de> for TokenId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TokenId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a token id")
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<TokenId, E> {
                Ok(TokenId)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<TokenId, E> {
                Ok(TokenId)
            }
        }
        d.deserialize_any(V)
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
        assert_eq!(f.max_tokens, Cap::Set(50));
        assert_eq!(f.include_usage, Some(true));
        let f = parse(br#"{"input":"x"}"#, 128).unwrap();
        assert_eq!(
            f.input,
            Inputs {
                prompts: 1,
                token_ids: 0
            }
        );
        assert_eq!(f.prompt, Inputs::default());
        assert_eq!(f.model, None);
    }

    #[test]
    fn counts_outputs_and_inputs() {
        let f = parse(
            br#"{"n":128,"best_of":3,"max_completion_tokens":9,"max_tokens":7}"#,
            128,
        )
        .unwrap();
        assert_eq!(
            (f.n, f.best_of, f.max_tokens, f.max_completion_tokens),
            (Some(128), Some(3), Cap::Set(7), Cap::Set(9))
        );
        let prompt = |body: &[u8]| parse(body, 128).unwrap().prompt;
        let input = |body: &[u8]| parse(body, 128).unwrap().input;
        assert_eq!(prompt(br#"{"prompt":["a","b","c"]}"#).prompts, 3);
        // `input` next to `prompt` does not change what `prompt` asks for.
        assert_eq!(
            prompt(br#"{"prompt":["a","b","c"],"input":null}"#).prompts,
            3
        );
        assert_eq!(
            prompt(br#"{"prompt":[1,2,3,4]}"#),
            Inputs {
                prompts: 1,
                token_ids: 4
            }
        );
        assert_eq!(
            input(br#"{"input":[[1,2],[3],[]]}"#),
            Inputs {
                prompts: 3,
                token_ids: 3
            }
        );
        assert_eq!(input(br#"{"input":null}"#), Inputs::default());
    }

    #[test]
    fn refuses_caps_and_counts_that_are_not_positive_integers() {
        for body in [
            r#"{"max_tokens":0}"#,
            r#"{"max_tokens":-1}"#,
            r#"{"max_completion_tokens":1.5}"#,
            r#"{"max_tokens":"100"}"#,
            r#"{"n":0}"#,
            r#"{"best_of":-2}"#,
            r#"{"prompt":{"a":1}}"#,
            r#"{"prompt":[1.5]}"#,
            r#"{"stream_options":5}"#,
        ] {
            let e = parse(body.as_bytes(), 128).unwrap_err();
            assert!(matches!(e, BodyError::Invalid(_)), "{body}: {e:?}");
        }
        assert_eq!(
            parse(br#"{"max_tokens":null}"#, 128).unwrap().max_tokens,
            Cap::Null(14, 18)
        );
    }

    fn rewritten(body: &str, cap: Option<u64>, include_usage: bool) -> String {
        let f = parse(body.as_bytes(), 128).unwrap();
        let cap = cap.map(|c| (CapField::MaxTokens, c));
        let out = rewrite(body.as_bytes(), &f, cap, include_usage)
            .unwrap()
            .unwrap();
        // What keygate forwards is itself a valid body with the edits applied.
        let again = parse(&out, 128).unwrap();
        if let Some((_, cap)) = cap {
            assert_eq!(again.max_tokens, Cap::Set(cap));
        }
        if include_usage {
            assert_eq!(again.include_usage, Some(true));
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn edits_are_spliced_without_touching_other_bytes() {
        assert_eq!(
            rewritten("{ \"model\": \"m\", \"stream\": true }\n", None, true),
            "{ \"model\": \"m\", \"stream\": true ,\"stream_options\":{\"include_usage\":true}}\n"
        );
        assert_eq!(
            rewritten(
                r#"{"model":"m","stream_options":{"include_usage":false,"x":1},"stream":true}"#,
                Some(4096),
                true
            ),
            r#"{"model":"m","stream_options":{"include_usage":true,"x":1},"stream":true,"max_tokens":4096}"#
        );
        assert_eq!(
            rewritten(r#"{"model":"m","stream_options":null}"#, None, true),
            r#"{"model":"m","stream_options":{"include_usage":true}}"#
        );
        assert_eq!(
            rewritten(r#"{"model":"m","stream_options":{ "x" : 1 }}"#, None, true),
            r#"{"model":"m","stream_options":{"include_usage":true, "x" : 1 }}"#
        );
        assert_eq!(
            rewritten(r#"{"model":"m","stream_options":{}}"#, Some(7), true),
            r#"{"model":"m","stream_options":{"include_usage":true},"max_tokens":7}"#
        );
        assert_eq!(rewritten("{}", Some(7), false), r#"{"max_tokens":7}"#);
        // A `null` cap is written over, never added a second time.
        assert_eq!(
            rewritten(r#"{"max_tokens": null, "model":"m"}"#, Some(9), true),
            r#"{"max_tokens": 9, "model":"m","stream_options":{"include_usage":true}}"#
        );
        let f = parse(b"{\"model\":\"m\"}", 128).unwrap();
        assert_eq!(rewrite(b"{\"model\":\"m\"}", &f, None, false), Ok(None));
        // A cap already set is never overwritten.
        let f = parse(b"{\"max_tokens\":5}", 128).unwrap();
        assert!(
            rewrite(
                b"{\"max_tokens\":5}",
                &f,
                Some((CapField::MaxTokens, 9)),
                false
            )
            .is_err()
        );
    }

    #[test]
    fn media_parts_are_noticed() {
        let media = |body: &str| parse(body.as_bytes(), 128).unwrap().media_parts;
        assert!(!media(r#"{"messages":[{"role":"user","content":"hi"}]}"#));
        assert!(!media(
            r#"{"messages":[{"role":"user","content":[{"type":"text","text":"hi"}]},{"role":"assistant","tool_calls":[{"type":"function"}]}]}"#
        ));
        assert!(media(
            r#"{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"https://x"}}]}]}"#
        ));
        assert!(media(
            r#"{"messages":[{"role":"user","content":[{"type":"file","file":{"file_id":"f"}}]}]}"#
        ));
    }

    #[test]
    fn refuses_duplicates_even_when_escaped() {
        assert!(parse(br#"{"model":"a","model":"b"}"#, 128).is_err());
        assert!(parse(br#"{"model":"a","mod\u0065l":"b"}"#, 128).is_err());
        assert!(parse(br#"{"max_tokens":5,"max_tokens":4000}"#, 128).is_err());
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
