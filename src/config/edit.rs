//! Edits of the config file, shared by the CLI and the admin API: one function per change.
//!
//! Every edit takes the file's lock (`<file>.lock`, so two processes or two admin calls never
//! lose each other's change), applies the change with toml_edit (comments, order and layout are
//! kept), validates the result exactly as `serve` would, and only then replaces the file
//! atomically (temp file in the same directory, fsync, rename). On any error the file is
//! untouched.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rand::Rng;
use toml_edit::{Array, DocumentMut, InlineTable, Item, Table, Value, value};

use crate::auth::ApiKey;

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("no key with id {0:?}")]
    NotFound(String),
    #[error("the change was refused; the file is unchanged:\n{}", .0.join("\n"))]
    Invalid(Vec<String>),
    /// The change conflicts with the key's state (a rotation already in its grace).
    #[error("{0}")]
    Conflict(String),
    /// The config file is on a read-only file system (a Kubernetes ConfigMap, say).
    #[error(
        "{0} is read-only (a Kubernetes ConfigMap or a read-only mount): change keys where the file comes from; the gateway follows the new file"
    )]
    ReadOnly(PathBuf),
}

/// An I/O error while changing the file, telling a read-only file system apart.
fn io_error(path: &Path, source: std::io::Error) -> EditError {
    match source.kind() {
        std::io::ErrorKind::ReadOnlyFilesystem => EditError::ReadOnly(path.to_owned()),
        _ => EditError::Io {
            path: path.to_owned(),
            source,
        },
    }
}

/// The latest time an edit may write (expiry, grace): a hundred years from now.
const MAX_AHEAD: Duration = Duration::from_secs(100 * 365 * 86_400);

/// `now + d`, refused when it is absurdly far ahead (or would overflow).
pub fn later(now: SystemTime, d: Duration, what: &str) -> Result<SystemTime, EditError> {
    if d > MAX_AHEAD {
        return Err(EditError::Invalid(vec![format!(
            "{what}: {} is more than a hundred years",
            humantime::format_duration(d)
        )]));
    }
    now.checked_add(d)
        .ok_or_else(|| EditError::Invalid(vec![format!("{what}: too far in the future")]))
}

/// A new key's settings (unset fields come from its environment).
#[derive(Debug, Default, Clone)]
pub struct NewKey {
    pub name: String,
    pub description: String,
    pub environment: String,
    pub fields: KeyFields,
    /// Lifetime from now.
    pub expires_in: Option<Duration>,
}

/// What an edit does to one optional setting of a key.
#[derive(Debug, Default, Clone, PartialEq)]
pub enum Change<T> {
    /// Leave it as it is.
    #[default]
    Keep,
    /// Set it to this value (an empty list clears a list).
    Set(T),
    /// Remove it from the key's table, so the key falls back to its environment's default (or
    /// to no such setting when the environment sets none).
    Remove,
}

impl<T> Change<T> {
    /// `Set(v)` when there is a value, `Keep` otherwise.
    pub fn from_option(v: Option<T>) -> Self {
        v.map_or(Change::Keep, Change::Set)
    }
}

/// Settings that `create` and `update` can change. `None` and [`Change::Keep`] leave a field
/// as it is.
#[derive(Debug, Default, Clone)]
pub struct KeyFields {
    pub name: Option<String>,
    pub description: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub models: Change<Vec<String>>,
    pub allowed_ips: Change<Vec<String>>,
    pub allowed_referrers: Change<Vec<String>>,
    pub requests_per_minute: Change<u64>,
    pub tokens_per_minute: Change<u64>,
    pub monthly_spend_usd: Change<f64>,
    pub max_concurrent_requests: Change<u64>,
    pub default_max_tokens: Change<u64>,
    pub expires: Change<SystemTime>,
}

impl KeyFields {
    /// The limits this edit removes from the key, by their TOML names.
    pub fn removed_limits(&self) -> Vec<&'static str> {
        [
            (
                "requests_per_minute",
                self.requests_per_minute == Change::Remove,
            ),
            (
                "tokens_per_minute",
                self.tokens_per_minute == Change::Remove,
            ),
            (
                "monthly_spend_usd",
                self.monthly_spend_usd == Change::Remove,
            ),
            (
                "max_concurrent_requests",
                self.max_concurrent_requests == Change::Remove,
            ),
            (
                "default_max_tokens",
                self.default_max_tokens == Change::Remove,
            ),
        ]
        .into_iter()
        .filter_map(|(name, removed)| removed.then_some(name))
        .collect()
    }
}

/// An exclusive lock on `<config>.lock`, released on drop.
struct FileLock(File);

impl FileLock {
    fn acquire(config: &Path) -> Result<Self, EditError> {
        let path = lock_path(config);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| io_error(config, source))?;
        file.lock()
            .map_err(|source| EditError::Io { path, source })?;
        Ok(Self(file))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

fn lock_path(config: &Path) -> PathBuf {
    let mut name = config.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    config.with_file_name(name)
}

fn utc(t: SystemTime) -> Result<toml_edit::Datetime, EditError> {
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .parse()
        .map_err(|_| EditError::Invalid(vec!["cannot represent the time".into()]))
}

fn strings(list: &[String]) -> Value {
    let mut a = Array::new();
    list.iter().for_each(|s| a.push(s.as_str()));
    Value::Array(a)
}

/// The config file's real path (not a symlink to it), so that one lock covers every spelling.
fn real_path(path: &Path) -> Result<PathBuf, EditError> {
    std::fs::canonicalize(path).map_err(|source| EditError::Io {
        path: path.to_owned(),
        source,
    })
}

fn read(path: &Path) -> Result<String, EditError> {
    std::fs::read_to_string(path).map_err(|source| EditError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Runs `change` on the whole document of `text` (the file, read under its lock), validates
/// the result as `serve` would, and writes it atomically.
fn apply_whole<T>(
    path: &Path,
    text: &str,
    change: impl FnOnce(&mut DocumentMut) -> Result<T, EditError>,
) -> Result<T, EditError> {
    let mut doc: DocumentMut =
        text.parse()
            .map_err(|e: toml_edit::TomlError| EditError::Syntax {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
    let result = change(&mut doc)?;
    let new_text = doc.to_string();
    let base = path.parent().unwrap_or(Path::new("."));
    super::from_str(&new_text, base).map_err(|e| EditError::Invalid(e.problems))?;
    write_atomically(path, &[new_text.as_bytes()]).map_err(|e| io_error(path, e))?;
    Ok(result)
}

/// A change made to one key's table.
type TableEdit<'a> = Box<dyn FnOnce(&mut Table) -> Result<(), EditError> + 'a>;

/// A change to one key, made on that key's table alone when the file can be split into key
/// tables ([`super::split`]): the table is parsed, changed and validated (with the rest of
/// the config, and its id and hash against every other key's), and the file is rewritten in
/// one pass with the other bytes as they were. Otherwise the whole document is edited.
enum KeyChange<'a> {
    /// Change the key with this id.
    Edit(&'a str, TableEdit<'a>),
    /// Add this key.
    Add(Box<Table>),
    /// Remove the key with this id.
    Remove(&'a str),
}

fn apply_key(path: &Path, change: KeyChange<'_>) -> Result<(), EditError> {
    let path = &real_path(path)?;
    let _lock = FileLock::acquire(path)?;
    let text = read(path)?;
    let Some(index) = super::split::split(&text).and_then(|parts| KeyIndex::new(&text, parts))
    else {
        return apply_whole(path, &text, |doc| whole(doc, change));
    };
    match change {
        KeyChange::Remove(id) => {
            let i = index.position(id)?;
            let range = index.parts.keys[i].clone();
            let (before, after) = (&text[..range.start], &text[range.end..]);
            // Removing a table cannot make the others invalid; the rest is checked anyway.
            check_rest(path, &text, &index)?;
            write_atomically(path, &[before.as_bytes(), after.as_bytes()])
                .map_err(|e| io_error(path, e))
        }
        KeyChange::Edit(id, f) => {
            let i = index.position(id)?;
            let range = index.parts.keys[i].clone();
            let mut doc: DocumentMut = match text[range.clone()].parse() {
                Ok(doc) => doc,
                Err(_) => {
                    return apply_whole(path, &text, |doc| whole(doc, KeyChange::Edit(id, f)));
                }
            };
            let Some(table) =
                only_key(&mut doc).filter(|t| t.get("id").and_then(|v| v.as_str()) == Some(id))
            else {
                return apply_whole(path, &text, |doc| whole(doc, KeyChange::Edit(id, f)));
            };
            f(table)?;
            let new = doc.to_string();
            index.check(path, &text, &new, i, Some(i))?;
            write_atomically(
                path,
                &[
                    &text.as_bytes()[..range.start],
                    new.as_bytes(),
                    &text.as_bytes()[range.end..],
                ],
            )
            .map_err(|e| io_error(path, e))
        }
        KeyChange::Add(table) => {
            let mut doc = DocumentMut::new();
            let mut keys = toml_edit::ArrayOfTables::new();
            keys.push(*table);
            doc.insert("keys", Item::ArrayOfTables(keys));
            // After the last key, separated from it by a blank line.
            let at = index.parts.keys.last().map_or(text.len(), |r| r.end);
            let before = &text[..at];
            let gap = if before.ends_with("\n\n") || before.is_empty() {
                ""
            } else if before.ends_with('\n') {
                "\n"
            } else {
                "\n\n"
            };
            let new = format!("{gap}{doc}");
            let i = index.parts.keys.len();
            index.check(path, &text, &new, i, None)?;
            let mut pieces = vec![before.as_bytes(), new.as_bytes(), &text.as_bytes()[at..]];
            if !text[at..].is_empty() && !new.ends_with("\n\n") {
                pieces.insert(2, b"\n");
            }
            write_atomically(path, &pieces).map_err(|e| io_error(path, e))
        }
    }
}

/// A [`KeyChange`] on the whole document.
fn whole(doc: &mut DocumentMut, change: KeyChange<'_>) -> Result<(), EditError> {
    match change {
        KeyChange::Edit(id, f) => f(find(doc, id)?),
        KeyChange::Add(table) => {
            keys_mut(doc)?.push(*table);
            Ok(())
        }
        KeyChange::Remove(id) => {
            let keys = keys_mut(doc)?;
            let index = keys
                .iter()
                .position(|t| t.get("id").and_then(|v| v.as_str()) == Some(id))
                .ok_or_else(|| EditError::NotFound(id.to_owned()))?;
            keys.remove(index);
            Ok(())
        }
    }
}

/// The one `[[keys]]` table of a document holding a single key table.
fn only_key(doc: &mut DocumentMut) -> Option<&mut Table> {
    let keys = doc.get_mut("keys")?.as_array_of_tables_mut()?;
    if keys.len() != 1 {
        return None;
    }
    keys.get_mut(0)
}

/// The ids and hashes of a split file's key tables, read from their lines without parsing
/// them: what an edit of one key is checked against. It borrows the file's text, so building
/// it allocates a few vectors, not one string per key (in a running gateway, per-key garbage
/// would stay behind in the allocator).
struct KeyIndex<'t> {
    parts: super::split::Parts,
    ids: Vec<&'t str>,
    /// `hash` and `previous_hash` of each key, as written.
    hashes: Vec<[Option<&'t str>; 2]>,
}

impl<'t> KeyIndex<'t> {
    /// `None` when a table does not state its id on a plain `id = "..."` line before anything
    /// that could hide one (a multi-line string): the whole document is edited then.
    fn new(text: &'t str, parts: super::split::Parts) -> Option<Self> {
        let mut ids = Vec::with_capacity(parts.keys.len());
        let mut hashes = Vec::with_capacity(parts.keys.len());
        for r in &parts.keys {
            let table = text.get(r.clone())?;
            let mut id = None;
            let mut own = [None, None];
            // Past the blank and comment lines before the header, and the header itself.
            let body = table
                .lines()
                .skip_while(|l| !l.trim_start().starts_with('['));
            for line in body.skip(1) {
                let line = line.trim();
                if line.contains("\"\"\"") || line.contains("'''") {
                    return None;
                }
                if line.starts_with('[') {
                    break;
                }
                match assignment(line) {
                    Some(("id", v)) if id.is_none() => id = Some(v),
                    Some(("id", _)) => return None,
                    Some(("hash", v)) => own[0] = Some(v),
                    Some(("previous_hash", v)) => own[1] = Some(v),
                    _ => {}
                }
            }
            ids.push(id?);
            hashes.push(own);
        }
        Some(Self { parts, ids, hashes })
    }

    fn position(&self, id: &str) -> Result<usize, EditError> {
        let mut found = self.ids.iter().enumerate().filter(|(_, k)| **k == id);
        match (found.next(), found.next()) {
            (Some((i, _)), None) => Ok(i),
            (None, _) => Err(EditError::NotFound(id.to_owned())),
            (Some(_), Some(_)) => Err(EditError::Invalid(vec![format!(
                "key id {id:?} is in the file twice; fix the file first"
            )])),
        }
    }

    /// Validates key table `new` (to be the key at `index`, replacing key `replaces`) with the
    /// rest of the config, as `serve` would, and its id and hashes against the other keys.
    fn check(
        &self,
        path: &Path,
        text: &str,
        new: &str,
        index: usize,
        replaces: Option<usize>,
    ) -> Result<(), EditError> {
        let base = path.parent().unwrap_or(Path::new("."));
        let mut alone = self.parts.rest(text);
        if !alone.ends_with('\n') {
            alone.push('\n');
        }
        alone.push_str(new);
        let config = super::from_str(&alone, base).map_err(|e| {
            // Problems of the key alone are `keys[0]...`; in the file it is `keys[index]`.
            EditError::Invalid(
                e.problems
                    .into_iter()
                    .map(|p| match p.strip_prefix("keys[0]") {
                        Some(rest) => format!("keys[{index}]{rest}"),
                        None => p,
                    })
                    .collect(),
            )
        })?;
        let Some(key) = config.keys.first() else {
            return Err(EditError::Invalid(vec![format!(
                "keys[{index}]: the change left no key table"
            )]));
        };
        let others = |i: &usize| Some(*i) != replaces;
        let mut problems = Vec::new();
        if let Some(i) = (0..self.ids.len())
            .filter(others)
            .find(|i| *self.ids[*i] == *key.id)
        {
            problems.push(format!(
                "keys[{index}].id: duplicate key id {:?} (also keys[{i}])",
                &*key.id
            ));
        }
        let own = std::iter::once(key.digest.to_string())
            .chain(key.previous.as_ref().map(|p| p.digest.to_string()));
        for digest in own {
            if let Some(i) = (0..self.hashes.len()).filter(others).find(|i| {
                self.hashes[*i]
                    .iter()
                    .flatten()
                    .any(|h| h.eq_ignore_ascii_case(&digest))
            }) {
                problems.push(format!(
                    "keys[{index}].hash: already used by key {:?}",
                    self.ids[i]
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(EditError::Invalid(problems))
        }
    }
}

/// Checks that the config without its keys is valid (before removing one).
fn check_rest(path: &Path, text: &str, index: &KeyIndex<'_>) -> Result<(), EditError> {
    let base = path.parent().unwrap_or(Path::new("."));
    super::from_str(&index.parts.rest(text), base)
        .map(|_| ())
        .map_err(|e| EditError::Invalid(e.problems))
}

/// `name = "value"` (a bare name, a basic or literal string without escapes), a comment
/// after it allowed.
fn assignment(line: &str) -> Option<(&str, &str)> {
    let (name, value) = line.split_once('=')?;
    let name = name.trim();
    let value = value.trim();
    let quote = value.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let inner = value.get(1..)?;
    let end = inner.find(quote)?;
    let v = &inner[..end];
    let after = inner[end + 1..].trim();
    if v.contains('\\') || !(after.is_empty() || after.starts_with('#')) {
        return None;
    }
    Some((name, v))
}

/// Writes `pieces`, one after the other, as the new content of `path`: a temp file in the
/// same directory, fsync, rename.
fn write_atomically(path: &Path, pieces: &[&[u8]]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp{}", rand::thread_rng().r#gen::<u32>()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = File::create(&tmp)?;
        if let Ok(meta) = std::fs::metadata(path) {
            f.set_permissions(meta.permissions())?;
        }
        let mut w = std::io::BufWriter::new(&mut f);
        for piece in pieces {
            w.write_all(piece)?;
        }
        w.flush()?;
        drop(w);
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_ok() {
        // The new file is in place; making the rename itself durable is best effort.
        if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot fsync the config directory");
        }
    }
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn keys_mut(doc: &mut DocumentMut) -> Result<&mut toml_edit::ArrayOfTables, EditError> {
    if !doc.contains_key("keys") {
        doc.insert("keys", Item::ArrayOfTables(Default::default()));
    }
    doc["keys"]
        .as_array_of_tables_mut()
        .ok_or_else(|| EditError::Invalid(vec!["keys: must be [[keys]] tables".into()]))
}

fn find<'a>(doc: &'a mut DocumentMut, id: &str) -> Result<&'a mut Table, EditError> {
    keys_mut(doc)?
        .iter_mut()
        .find(|t| t.get("id").and_then(|v| v.as_str()) == Some(id))
        .ok_or_else(|| EditError::NotFound(id.to_owned()))
}

fn integer(n: u64) -> Value {
    Value::from(i64::try_from(n).unwrap_or(i64::MAX))
}

fn set_fields(table: &mut Table, f: &KeyFields) -> Result<(), EditError> {
    if let Some(v) = &f.name {
        table["name"] = value(v.as_str());
    }
    if let Some(v) = &f.description {
        table["description"] = value(v.as_str());
    }
    if let Some(list) = &f.scopes {
        table["scopes"] = Item::Value(strings(list));
    }
    for (field, change) in [
        ("models", &f.models),
        ("allowed_ips", &f.allowed_ips),
        ("allowed_referrers", &f.allowed_referrers),
    ] {
        match change {
            Change::Keep => {}
            Change::Set(list) => table[field] = Item::Value(strings(list)),
            Change::Remove => {
                table.remove(field);
            }
        }
    }
    match f.expires {
        Change::Keep => {}
        Change::Set(t) => table["expires"] = value(utc(t)?),
        Change::Remove => {
            table.remove("expires");
        }
    }
    let limits = [
        ("requests_per_minute", map(&f.requests_per_minute, integer)),
        ("tokens_per_minute", map(&f.tokens_per_minute, integer)),
        ("monthly_spend_usd", map(&f.monthly_spend_usd, Value::from)),
        (
            "max_concurrent_requests",
            map(&f.max_concurrent_requests, integer),
        ),
        ("default_max_tokens", map(&f.default_max_tokens, integer)),
    ];
    if limits.iter().any(|(_, c)| matches!(c, Change::Set(_))) && !table.contains_key("limits") {
        table["limits"] = Item::Value(Value::InlineTable(InlineTable::new()));
    }
    for (name, change) in limits {
        match (&mut table.get_mut("limits"), change) {
            (_, Change::Keep) | (None, Change::Remove) => {}
            (Some(Item::Value(Value::InlineTable(t))), Change::Set(v)) => {
                t.insert(name, v);
            }
            (Some(Item::Value(Value::InlineTable(t))), Change::Remove) => {
                t.remove(name);
            }
            (Some(Item::Table(t)), Change::Set(v)) => {
                t[name] = Item::Value(v);
            }
            (Some(Item::Table(t)), Change::Remove) => {
                t.remove(name);
            }
            _ => return Err(EditError::Invalid(vec!["limits must be a table".into()])),
        }
    }
    // Removing the last limit removes the (then empty) table.
    let empty = match table.get("limits") {
        Some(Item::Value(Value::InlineTable(t))) => t.is_empty(),
        Some(Item::Table(t)) => t.is_empty(),
        _ => false,
    };
    if empty {
        table.remove("limits");
    }
    Ok(())
}

fn map<T: Copy>(c: &Change<T>, f: impl FnOnce(T) -> Value) -> Change<Value> {
    match c {
        Change::Keep => Change::Keep,
        Change::Set(v) => Change::Set(f(*v)),
        Change::Remove => Change::Remove,
    }
}

fn new_id() -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rngs::OsRng;
    let suffix: String = (0..12)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect();
    format!("key_{suffix}")
}

/// Adds a key; returns its id and its secret (shown once, never stored).
pub fn create(path: &Path, spec: &NewKey, now: SystemTime) -> Result<(String, ApiKey), EditError> {
    let key = ApiKey::generate();
    let id = new_id();
    let hash = key.digest().to_string();
    let table = {
        let mut t = Table::new();
        t["id"] = value(id.as_str());
        t["name"] = value(spec.name.as_str());
        t["description"] = value(spec.description.as_str());
        t["environment"] = value(spec.environment.as_str());
        t["hash"] = value(hash.as_str());
        t["status"] = value("active");
        t["created"] = value(utc(now)?);
        // A removal asked for on a new key removes nothing: the table starts without fields.
        let mut fields = spec.fields.clone();
        if let Some(life) = spec.expires_in {
            fields.expires = Change::Set(later(now, life, "expires")?);
        }
        set_fields(&mut t, &fields)?;
        t
    };
    apply_key(path, KeyChange::Add(Box::new(table)))?;
    Ok((id, key))
}

pub fn update(path: &Path, id: &str, fields: &KeyFields) -> Result<(), EditError> {
    apply_key(
        path,
        KeyChange::Edit(id, Box::new(|t: &mut Table| set_fields(t, fields))),
    )
}

pub fn set_active(path: &Path, id: &str, active: bool) -> Result<(), EditError> {
    apply_key(
        path,
        KeyChange::Edit(
            id,
            Box::new(move |t: &mut Table| {
                t["status"] = value(if active { "active" } else { "inactive" });
                Ok(())
            }),
        ),
    )
}

pub fn delete(path: &Path, id: &str) -> Result<(), EditError> {
    apply_key(path, KeyChange::Remove(id))
}

/// Gives the key a new secret; the old one stays valid until now + `grace`. Same id, so
/// usage, budget, limits and metrics carry on.
pub fn rotate(
    path: &Path,
    id: &str,
    grace: Duration,
    now: SystemTime,
) -> Result<ApiKey, EditError> {
    let key = ApiKey::generate();
    let hash = key.digest().to_string();
    let change = move |t: &mut Table| {
        let old = t.get("hash").and_then(|v| v.as_str()).map(str::to_owned);
        let Some(old) = old else {
            return Err(EditError::Invalid(vec![format!("key {id:?} has no hash")]));
        };
        // A second rotation inside the grace would cut off the secret clients still use.
        let grace_running = t
            .get("previous_expires")
            .and_then(|v| v.as_datetime())
            .and_then(|d| humantime::parse_rfc3339(&d.to_string()).ok())
            .filter(|until| *until > now);
        if let Some(until) = grace_running {
            return Err(EditError::Conflict(format!(
                "key {id:?} is already in a rotation grace until {}; rotate again after it ends",
                humantime::format_rfc3339_seconds(until)
            )));
        }
        t["previous_hash"] = value(old);
        t["previous_expires"] = value(utc(later(now, grace, "grace")?)?);
        t["hash"] = value(hash.as_str());
        Ok(())
    };
    apply_key(path, KeyChange::Edit(id, Box::new(change)))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"# keygate config
[server]
listen = "127.0.0.1:0"   # loopback

[upstream]
url = "http://127.0.0.1:1"
api_key_env = "X"

[[models]]
name = "deepseek-chat"
scope = "chat"
input_per_million = 0.27
output_per_million = 1.10

# the keys
"#;

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keygate.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn create_update_rotate_delete_keep_comments_and_validate() {
        let (_dir, path) = file(BASE);
        let spec = NewKey {
            name: "app".into(),
            environment: "production".into(),
            fields: KeyFields {
                scopes: Some(vec!["chat".into()]),
                requests_per_minute: Change::Set(10),
                ..Default::default()
            },
            ..Default::default()
        };
        let now = humantime::parse_rfc3339("2026-11-27T00:00:00Z").unwrap();
        let (id, key) = create(&path, &spec, now).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("# keygate config\n")
                && text.contains("# loopback")
                && text.contains("# the keys")
        );
        assert!(text.contains(&key.digest().to_string()));
        assert!(!text.contains(key.expose()));
        assert!(text.contains("requests_per_minute = 10"));

        update(
            &path,
            &id,
            &KeyFields {
                tokens_per_minute: Change::Set(500),
                ..Default::default()
            },
        )
        .unwrap();
        let config = crate::config::load(&path).unwrap();
        assert_eq!(
            config.keys[0].limits.tokens_per_minute.map(|n| n.get()),
            Some(500)
        );
        assert_eq!(
            config.keys[0].limits.requests_per_minute.map(|n| n.get()),
            Some(10)
        );

        let new = rotate(
            &path,
            &id,
            Duration::from_secs(7 * 86400),
            SystemTime::now(),
        )
        .unwrap();
        let config = crate::config::load(&path).unwrap();
        assert_eq!(config.keys[0].digest, new.digest());
        assert_eq!(
            config.keys[0].previous.as_ref().map(|p| p.digest),
            Some(key.digest())
        );

        set_active(&path, &id, false).unwrap();
        assert!(!crate::config::load(&path).unwrap().keys[0].active);
        delete(&path, &id).unwrap();
        assert!(crate::config::load(&path).unwrap().keys.is_empty());
        assert!(matches!(delete(&path, &id), Err(EditError::NotFound(_))));
    }

    #[test]
    fn settings_can_be_removed_and_lists_cleared() {
        let (_dir, path) = file(BASE);
        let now = humantime::parse_rfc3339("2026-11-27T00:00:00Z").unwrap();
        let spec = NewKey {
            name: "app".into(),
            environment: "production".into(),
            fields: KeyFields {
                scopes: Some(vec!["chat".into()]),
                allowed_ips: Change::Set(vec!["10.0.0.0/8".into()]),
                allowed_referrers: Change::Set(vec!["https://example.com/*".into()]),
                requests_per_minute: Change::Set(10),
                tokens_per_minute: Change::Set(1000),
                default_max_tokens: Change::Set(256),
                ..Default::default()
            },
            expires_in: Some(Duration::from_secs(86_400)),
            ..Default::default()
        };
        let (id, _) = create(&path, &spec, now).unwrap();
        let key = &crate::config::load(&path).unwrap().keys[0];
        assert!(key.expires.is_some());
        assert_eq!(key.limits.default_max_tokens.map(|n| n.get()), Some(256));

        let removal = KeyFields {
            allowed_ips: Change::Set(vec![]),
            allowed_referrers: Change::Remove,
            requests_per_minute: Change::Remove,
            default_max_tokens: Change::Remove,
            expires: Change::Remove,
            ..Default::default()
        };
        assert_eq!(
            removal.removed_limits(),
            ["requests_per_minute", "default_max_tokens"]
        );
        update(&path, &id, &removal).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("allowed_ips = []"), "{text}");
        assert!(!text.contains("allowed_referrers"), "{text}");
        assert!(!text.contains("expires"), "{text}");
        let key = &crate::config::load(&path).unwrap().keys[0];
        assert!(key.expires.is_none());
        assert!(key.allowed_ips.is_empty());
        assert!(key.limits.requests_per_minute.is_none());
        assert!(key.limits.default_max_tokens.is_none());
        assert_eq!(key.limits.tokens_per_minute.map(|n| n.get()), Some(1000));

        // The last limit gone, the table goes too; removing what is not there is no error.
        let rest = KeyFields {
            tokens_per_minute: Change::Remove,
            monthly_spend_usd: Change::Remove,
            ..Default::default()
        };
        update(&path, &id, &rest).unwrap();
        update(&path, &id, &rest).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("limits"), "{text}");

        // A new key asked to go without a setting simply does not get it.
        let bare = NewKey {
            name: "bare".into(),
            environment: "production".into(),
            fields: KeyFields {
                scopes: Some(vec!["chat".into()]),
                models: Change::Remove,
                allowed_ips: Change::Remove,
                allowed_referrers: Change::Remove,
                requests_per_minute: Change::Remove,
                tokens_per_minute: Change::Set(500),
                monthly_spend_usd: Change::Remove,
                max_concurrent_requests: Change::Remove,
                default_max_tokens: Change::Remove,
                expires: Change::Remove,
                ..Default::default()
            },
            ..Default::default()
        };
        let (bare_id, _) = create(&path, &bare, now).unwrap();
        let config = crate::config::load(&path).unwrap();
        let key = config.keys.iter().find(|k| *k.id == *bare_id).unwrap();
        assert!(key.expires.is_none() && key.allowed_ips.is_empty());
        assert_eq!(key.limits.tokens_per_minute.map(|n| n.get()), Some(500));
        assert!(key.limits.requests_per_minute.is_none());
        let text = std::fs::read_to_string(&path).unwrap();
        let table = &text[text.find(&*bare_id).unwrap()..];
        for absent in [
            "models",
            "allowed_ips",
            "allowed_referrers",
            "expires",
            "monthly",
        ] {
            assert!(!table.contains(absent), "{absent} in {table}");
        }
    }

    #[test]
    fn an_invalid_change_leaves_the_file_untouched() {
        let (_dir, path) = file(BASE);
        let bad = NewKey {
            name: "app".into(),
            environment: "production".into(),
            fields: KeyFields {
                scopes: Some(vec!["chat".into()]),
                allowed_ips: Change::Set(vec!["10.0.0.300".into()]),
                ..Default::default()
            },
            ..Default::default()
        };
        let err = create(&path, &bad, SystemTime::now()).unwrap_err();
        assert!(err.to_string().contains("keys[0].allowed_ips[0]"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), BASE);
    }

    fn key_table(id: &str, hash_seed: u8, extra: &str) -> String {
        let hash = crate::auth::ApiKey::generate().digest().to_string();
        let _ = hash_seed;
        format!(
            "[[keys]]\nid = \"{id}\"   # {id}'s comment\nname = \"{id}\"\nenvironment = \"production\"\nhash = \"{hash}\"\ncreated = 2026-01-01T00:00:00Z\nscopes = [\"chat\"]\n{extra}\n"
        )
    }

    /// On a file of key tables, an edit touches the bytes of its key's table only.
    #[test]
    fn one_key_is_edited_in_place_and_every_other_byte_is_kept() {
        let text = format!(
            "{BASE}\n{}\n{}[keys.limits]   # sub-table\nrequests_per_minute = 5\n\n{}\n# after the keys\n[storage]\npath = \"x.db\"\n",
            key_table("a", 1, ""),
            key_table("b", 2, ""),
            key_table("c", 3, "")
        );
        let (_dir, path) = file(&text);
        update(
            &path,
            "b",
            &KeyFields {
                tokens_per_minute: Change::Set(700),
                ..Default::default()
            },
        )
        .unwrap();
        let after = std::fs::read_to_string(&path).unwrap();
        let (start, end) = (
            text.find("[[keys]]\nid = \"b\"").unwrap(),
            text.find("[[keys]]\nid = \"c\"").unwrap(),
        );
        assert!(after.starts_with(&text[..start]));
        assert!(after.ends_with(&text[end..]));
        let b = &after[start..after.len() - (text.len() - end)];
        assert!(
            b.contains("# b's comment") && b.contains("# sub-table"),
            "{b}"
        );
        assert!(
            b.contains("tokens_per_minute = 700") && b.contains("requests_per_minute = 5"),
            "{b}"
        );
        let config = crate::config::load(&path).unwrap();
        assert_eq!(config.keys.len(), 3);
        assert_eq!(
            config.keys[1].limits.tokens_per_minute.map(|n| n.get()),
            Some(700)
        );

        // A new key goes after the last key, before the tables that follow the keys.
        let (id, _) = create(
            &path,
            &NewKey {
                name: "d".into(),
                environment: "production".into(),
                fields: KeyFields {
                    scopes: Some(vec!["chat".into()]),
                    ..Default::default()
                },
                ..Default::default()
            },
            SystemTime::now(),
        )
        .unwrap();
        let after = std::fs::read_to_string(&path).unwrap();
        let new_at = after.find(&format!("id = \"{id}\"")).unwrap();
        assert!(
            new_at > after.find("id = \"c\"").unwrap()
                && new_at < after.find("# after the keys").unwrap(),
            "{after}"
        );
        let config = crate::config::load(&path).unwrap();
        assert_eq!(config.keys.len(), 4);
        assert_eq!(config.storage.path.file_name().unwrap(), "x.db");

        delete(&path, "a").unwrap();
        let after = std::fs::read_to_string(&path).unwrap();
        assert!(!after.contains("id = \"a\"") && after.contains("# b's comment"));
        assert_eq!(crate::config::load(&path).unwrap().keys.len(), 3);
        assert!(matches!(delete(&path, "a"), Err(EditError::NotFound(_))));
    }

    /// An edit that would clash with another key, or break the key, is refused with the key's
    /// path in the file, and the file is unchanged.
    #[test]
    fn an_edit_is_validated_against_the_other_keys() {
        let text = format!(
            "{BASE}\n{}\n{}",
            key_table("a", 1, ""),
            key_table("b", 2, "")
        );
        let (_dir, path) = file(&text);
        let err = update(
            &path,
            "b",
            &KeyFields {
                allowed_ips: Change::Set(vec!["300.1.1.1".into()]),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("keys[1].allowed_ips[0]"), "{err}");
        let err = update(
            &path,
            "b",
            &KeyFields {
                name: Some("x".into()),
                ..Default::default()
            },
        );
        assert!(err.is_ok());
        // Give b a's hash through the edit closure: refused as a duplicate.
        let a_hash = text
            .split("hash = \"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap()
            .to_owned();
        let before = std::fs::read_to_string(&path).unwrap();
        let give_b = |hash: String| {
            apply_key(
                &path,
                KeyChange::Edit(
                    "b",
                    Box::new(move |t: &mut Table| {
                        t["hash"] = value(hash.as_str());
                        Ok(())
                    }),
                ),
            )
        };
        let err = give_b(a_hash.clone()).unwrap_err();
        assert!(
            err.to_string().contains("already used by key \"a\""),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
        // A rotated-out secret still opens its key during the grace: b cannot have it either.
        let now = humantime::parse_rfc3339("2026-11-27T00:00:00Z").unwrap();
        rotate(&path, "a", Duration::from_secs(3600), now).unwrap();
        let err = give_b(a_hash.clone()).unwrap_err();
        assert!(
            err.to_string().contains("already used by key \"a\""),
            "{err}"
        );
        let before = std::fs::read_to_string(&path).unwrap();
        let err = apply_key(
            &path,
            KeyChange::Edit(
                "b",
                Box::new(|t: &mut Table| {
                    t["id"] = value("a");
                    Ok(())
                }),
            ),
        )
        .unwrap_err();
        assert!(err.to_string().contains("duplicate key id \"a\""), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
    }

    /// A key whose table hides a header-like line in a multi-line string is edited through the
    /// whole document, correctly.
    #[test]
    fn unusual_files_fall_back_to_the_whole_document() {
        let text = format!(
            "{BASE}\n{}\n[[keys]]\ndescription = \"\"\"\n[[keys]]\nid = \"evil\"\n\"\"\"\nid = \"b\"\nname = \"b\"\nenvironment = \"production\"\nhash = \"{}\"\ncreated = 2026-01-01T00:00:00Z\nscopes = [\"chat\"]\n",
            key_table("a", 1, ""),
            crate::auth::ApiKey::generate().digest()
        );
        let (_dir, path) = file(&text);
        assert_eq!(crate::config::load(&path).unwrap().keys.len(), 2);
        set_active(&path, "b", false).unwrap();
        let config = crate::config::load(&path).unwrap();
        assert!(config.keys[0].active && !config.keys[1].active);
        assert!(config.keys[1].description.contains("id = \"evil\""));
        assert!(matches!(
            set_active(&path, "evil", false),
            Err(EditError::NotFound(_))
        ));
    }
}
