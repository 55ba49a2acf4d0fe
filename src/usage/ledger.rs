//! The usage ledger: SQLite in WAL mode at `storage.path`.
//!
//! `usage_daily` holds one row per (key id, UTC day, model) with requests, errors, tokens by
//! kind, cost, how many were estimated, and the latency sum. Month-to-date spend is the sum of
//! a month's days. `key_activity` holds each key's last use. A batch is one transaction, so
//! it counts entirely or not at all.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::calendar;
use super::recorder::UsageEvent;

pub struct Ledger {
    conn: Connection,
}

/// One (key, day, model) row.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DailyRow {
    pub key_id: String,
    pub day: String,
    pub model: String,
    pub requests: u64,
    pub errors: u64,
    pub prompt_tokens: u64,
    pub cached_prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_micros: u64,
    pub estimated: u64,
    pub latency_ms_sum: u64,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS usage_daily (
    key_id TEXT NOT NULL,
    day TEXT NOT NULL,
    model TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    errors INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    cached_prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cost_micros INTEGER NOT NULL DEFAULT 0,
    estimated INTEGER NOT NULL DEFAULT 0,
    latency_ms_sum INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, day, model)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS key_activity (
    key_id TEXT PRIMARY KEY,
    last_used TEXT NOT NULL
) WITHOUT ROWID;
";

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl Ledger {
    /// Opens (creating the file and its directory if needed) for writing.
    pub fn open(path: &Path) -> Result<Self, String> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let conn =
            Connection::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .and_then(|()| conn.pragma_update(None, "synchronous", "NORMAL"))
            .and_then(|()| conn.busy_timeout(Duration::from_secs(5)))
            .and_then(|()| conn.execute_batch(SCHEMA))
            .map_err(|e| format!("cannot prepare {}: {e}", path.display()))?;
        Ok(Self { conn })
    }

    /// Opens an existing ledger for reading; works while a gateway writes to it.
    pub fn open_read_only(path: &Path) -> Result<Self, String> {
        if !path.exists() {
            return Err(format!(
                "no usage ledger at {} yet (nothing has been recorded)",
                path.display()
            ));
        }
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        Ok(Self { conn })
    }

    /// Writes a batch in one transaction, summed per (key, day, model) first so a batch costs
    /// one row update per group rather than per request. Returns the number of groups.
    pub fn write(&mut self, events: &[UsageEvent]) -> rusqlite::Result<usize> {
        type Group<'a> = (&'a str, u64, &'a str);
        let mut groups: HashMap<Group<'_>, DailyRow> = HashMap::new();
        let mut last_used: HashMap<&str, SystemTime> = HashMap::new();
        for e in events {
            let day_number = e
                .started
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() / 86_400);
            let g = groups
                .entry((&e.key_id, day_number, e.model.as_deref().unwrap_or("")))
                .or_default();
            g.requests += 1;
            g.errors += u64::from(e.error);
            g.prompt_tokens += e.usage.prompt_tokens;
            g.cached_prompt_tokens += e.usage.cached_prompt_tokens;
            g.completion_tokens += e.usage.completion_tokens;
            g.cost_micros += e.cost_micros;
            g.estimated += u64::from(e.estimated);
            g.latency_ms_sum += e.latency_ms;
            let t = last_used.entry(&e.key_id).or_insert(e.finished);
            *t = (*t).max(e.finished);
        }
        let tx = self.conn.transaction()?;
        {
            let mut add = tx.prepare_cached(
                "INSERT INTO usage_daily (key_id, day, model, requests, errors, prompt_tokens,
                    cached_prompt_tokens, completion_tokens, cost_micros, estimated, latency_ms_sum)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT (key_id, day, model) DO UPDATE SET
                    requests = requests + excluded.requests,
                    errors = errors + excluded.errors,
                    prompt_tokens = prompt_tokens + excluded.prompt_tokens,
                    cached_prompt_tokens = cached_prompt_tokens + excluded.cached_prompt_tokens,
                    completion_tokens = completion_tokens + excluded.completion_tokens,
                    cost_micros = cost_micros + excluded.cost_micros,
                    estimated = estimated + excluded.estimated,
                    latency_ms_sum = latency_ms_sum + excluded.latency_ms_sum",
            )?;
            for ((key_id, day_number, model), g) in &groups {
                let day = calendar::day(
                    SystemTime::UNIX_EPOCH + Duration::from_secs(day_number * 86_400),
                );
                add.execute(params![
                    key_id,
                    day,
                    model,
                    to_i64(g.requests),
                    to_i64(g.errors),
                    to_i64(g.prompt_tokens),
                    to_i64(g.cached_prompt_tokens),
                    to_i64(g.completion_tokens),
                    to_i64(g.cost_micros),
                    to_i64(g.estimated),
                    to_i64(g.latency_ms_sum),
                ])?;
            }
            let mut touch = tx.prepare_cached(
                "INSERT INTO key_activity (key_id, last_used) VALUES (?1, ?2)
                 ON CONFLICT (key_id) DO UPDATE SET last_used = max(last_used, excluded.last_used)",
            )?;
            for (key_id, t) in &last_used {
                touch.execute(params![
                    key_id,
                    humantime::format_rfc3339_seconds(*t).to_string()
                ])?;
            }
        }
        tx.commit()?;
        Ok(groups.len())
    }

    /// Each key's spend in the month with this index, in micro-dollars.
    pub fn month_spend(&self, month: u32) -> rusqlite::Result<HashMap<String, u64>> {
        let prefix = format!("{}-%", calendar::month_label(month));
        let mut stmt = self.conn.prepare(
            "SELECT key_id, SUM(cost_micros) FROM usage_daily WHERE day LIKE ?1 GROUP BY key_id",
        )?;
        let rows = stmt.query_map(params![prefix], |r| {
            Ok((r.get::<_, String>(0)?, to_u64(r.get(1)?)))
        })?;
        rows.collect()
    }

    /// This ledger's replica id (made once, kept in the ledger): the name of this replica's
    /// share of spend in a shared limit store.
    pub fn replica_id(&self) -> rusqlite::Result<String> {
        let existing: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE name = 'replica_id'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(id) = existing {
            return Ok(id);
        }
        let id = format!("r{:016x}", rand::random::<u64>());
        self.conn.execute(
            "INSERT OR IGNORE INTO meta (name, value) VALUES ('replica_id', ?1)",
            params![id],
        )?;
        self.conn.query_row(
            "SELECT value FROM meta WHERE name = 'replica_id'",
            [],
            |r| r.get(0),
        )
    }

    /// Every key's last use.
    pub fn last_used_all(&self) -> rusqlite::Result<HashMap<String, String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT key_id, last_used FROM key_activity")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    }

    pub fn last_used(&self, key_id: &str) -> rusqlite::Result<Option<String>> {
        self.conn
            .query_row(
                "SELECT last_used FROM key_activity WHERE key_id = ?1",
                params![key_id],
                |r| r.get(0),
            )
            .optional()
    }

    /// Rows from `since_day` (inclusive), optionally for one key, ordered by key, day, model.
    pub fn daily(&self, key_id: Option<&str>, since_day: &str) -> rusqlite::Result<Vec<DailyRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT key_id, day, model, requests, errors, prompt_tokens, cached_prompt_tokens,
                    completion_tokens, cost_micros, estimated, latency_ms_sum
             FROM usage_daily WHERE day >= ?1 AND (?2 IS NULL OR key_id = ?2)
             ORDER BY key_id, day, model",
        )?;
        let rows = stmt.query_map(params![since_day, key_id], |r| {
            Ok(DailyRow {
                key_id: r.get(0)?,
                day: r.get(1)?,
                model: r.get(2)?,
                requests: to_u64(r.get(3)?),
                errors: to_u64(r.get(4)?),
                prompt_tokens: to_u64(r.get(5)?),
                cached_prompt_tokens: to_u64(r.get(6)?),
                completion_tokens: to_u64(r.get(7)?),
                cost_micros: to_u64(r.get(8)?),
                estimated: to_u64(r.get(9)?),
                latency_ms_sum: to_u64(r.get(10)?),
            })
        })?;
        rows.collect()
    }
}
