//! The usage ledger: SQLite in WAL mode at `storage.path`.
//!
//! `usage_daily` holds one row per (key id, UTC day, model) with requests, errors, tokens by
//! kind, cost, how many were estimated, and the latency sum. Month-to-date spend is the sum of
//! a month's days. `key_activity` holds each key's last use. `settled` remembers recent request
//! ids so a batch written twice (a retry after an error) is counted once.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::calendar;
use super::recorder::UsageEvent;

/// How long request ids are kept for deduplication.
const SETTLED_RETENTION: Duration = Duration::from_secs(3 * 24 * 3600);

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
CREATE TABLE IF NOT EXISTS key_activity (
    key_id TEXT PRIMARY KEY,
    last_used TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS settled (
    request_id TEXT PRIMARY KEY,
    day TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS settled_day ON settled (day);
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

    /// Writes a batch in one transaction; events already settled are skipped. Returns how many
    /// were new.
    pub fn write(&mut self, events: &[UsageEvent]) -> rusqlite::Result<usize> {
        let tx = self.conn.transaction()?;
        let mut new = 0;
        {
            let mut mark = tx.prepare_cached(
                "INSERT OR IGNORE INTO settled (request_id, day) VALUES (?1, ?2)",
            )?;
            let mut add = tx.prepare_cached(
                "INSERT INTO usage_daily (key_id, day, model, requests, errors, prompt_tokens,
                    cached_prompt_tokens, completion_tokens, cost_micros, estimated, latency_ms_sum)
                 VALUES (?1, ?2, ?3, 1, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (key_id, day, model) DO UPDATE SET
                    requests = requests + 1,
                    errors = errors + excluded.errors,
                    prompt_tokens = prompt_tokens + excluded.prompt_tokens,
                    cached_prompt_tokens = cached_prompt_tokens + excluded.cached_prompt_tokens,
                    completion_tokens = completion_tokens + excluded.completion_tokens,
                    cost_micros = cost_micros + excluded.cost_micros,
                    estimated = estimated + excluded.estimated,
                    latency_ms_sum = latency_ms_sum + excluded.latency_ms_sum",
            )?;
            let mut touch = tx.prepare_cached(
                "INSERT INTO key_activity (key_id, last_used) VALUES (?1, ?2)
                 ON CONFLICT (key_id) DO UPDATE SET last_used = max(last_used, excluded.last_used)",
            )?;
            for e in events {
                let day = calendar::day(e.started);
                if mark.execute(params![e.request_id, day])? == 0 {
                    continue;
                }
                new += 1;
                add.execute(params![
                    &*e.key_id,
                    day,
                    e.model.as_deref().unwrap_or(""),
                    i64::from(e.error),
                    to_i64(e.usage.prompt_tokens),
                    to_i64(e.usage.cached_prompt_tokens),
                    to_i64(e.usage.completion_tokens),
                    to_i64(e.cost_micros),
                    i64::from(e.estimated),
                    to_i64(e.latency_ms),
                ])?;
                touch.execute(params![
                    &*e.key_id,
                    humantime::format_rfc3339_seconds(e.finished).to_string()
                ])?;
            }
        }
        tx.commit()?;
        Ok(new)
    }

    /// Forgets request ids older than the dedup window.
    pub fn prune(&self, now: SystemTime) -> rusqlite::Result<usize> {
        let cutoff = calendar::day(
            now.checked_sub(SETTLED_RETENTION)
                .unwrap_or(SystemTime::UNIX_EPOCH),
        );
        self.conn
            .execute("DELETE FROM settled WHERE day < ?1", params![cutoff])
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
