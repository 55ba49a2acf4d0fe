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

    /// A new key has nothing to remove: `Remove` becomes `Keep`.
    fn for_new_key(self) -> Self {
        match self {
            Change::Remove => Change::Keep,
            other => other,
        }
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

/// Runs `change` on the document under the lock, validates, writes atomically.
fn apply<T>(
    path: &Path,
    change: impl FnOnce(&mut DocumentMut) -> Result<T, EditError>,
) -> Result<T, EditError> {
    // Edit the real file (not a symlink to it), under one lock whatever the spelling.
    let path = &std::fs::canonicalize(path).map_err(|source| EditError::Io {
        path: path.to_owned(),
        source,
    })?;
    let _lock = FileLock::acquire(path)?;
    let io = |source| EditError::Io {
        path: path.to_owned(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(io)?;
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
    write_atomically(path, new_text.as_bytes()).map_err(|e| io_error(path, e))?;
    Ok(result)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
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
        f.write_all(bytes)?;
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
    apply(path, |doc| {
        let mut t = Table::new();
        t["id"] = value(id.as_str());
        t["name"] = value(spec.name.as_str());
        t["description"] = value(spec.description.as_str());
        t["environment"] = value(spec.environment.as_str());
        t["hash"] = value(hash.as_str());
        t["status"] = value("active");
        t["created"] = value(utc(now)?);
        let f = spec.fields.clone();
        let mut fields = KeyFields {
            models: f.models.for_new_key(),
            allowed_ips: f.allowed_ips.for_new_key(),
            allowed_referrers: f.allowed_referrers.for_new_key(),
            requests_per_minute: f.requests_per_minute.for_new_key(),
            tokens_per_minute: f.tokens_per_minute.for_new_key(),
            monthly_spend_usd: f.monthly_spend_usd.for_new_key(),
            max_concurrent_requests: f.max_concurrent_requests.for_new_key(),
            default_max_tokens: f.default_max_tokens.for_new_key(),
            expires: f.expires.for_new_key(),
            ..f
        };
        if let Some(life) = spec.expires_in {
            fields.expires = Change::Set(later(now, life, "expires")?);
        }
        set_fields(&mut t, &fields)?;
        keys_mut(doc)?.push(t);
        Ok(())
    })?;
    Ok((id, key))
}

pub fn update(path: &Path, id: &str, fields: &KeyFields) -> Result<(), EditError> {
    apply(path, |doc| set_fields(find(doc, id)?, fields))
}

pub fn set_active(path: &Path, id: &str, active: bool) -> Result<(), EditError> {
    apply(path, |doc| {
        find(doc, id)?["status"] = value(if active { "active" } else { "inactive" });
        Ok(())
    })
}

pub fn delete(path: &Path, id: &str) -> Result<(), EditError> {
    apply(path, |doc| {
        let keys = keys_mut(doc)?;
        let index = keys
            .iter()
            .position(|t| t.get("id").and_then(|v| v.as_str()) == Some(id))
            .ok_or_else(|| EditError::NotFound(id.to_owned()))?;
        keys.remove(index);
        Ok(())
    })
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
    apply(path, |doc| {
        let t = find(doc, id)?;
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
    })?;
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
}
