//! The usage ledger: SQLite in WAL mode at `storage.path`.
//!
//! `usage_daily` holds one row per (key id, UTC day, model) with requests, errors, tokens by
//! kind, cost, how many were estimated, and the latency sum. Month-to-date spend is the sum of
//! a month's days. `key_activity` holds each key's last use. `peaks_daily` holds, per key and
//! day, the busiest minute's requests and tokens (from `minute_usage`, the per-minute counts of
//! the last two days), for limit suggestions; `latency_daily` a latency histogram per key and
//! day, for percentiles. Every figure is summed with saturation, so none can overflow. A
//! batch is one transaction, so it counts entirely or not at all.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::calendar;
use super::recorder::UsageEvent;

pub struct Ledger {
    conn: Connection,
    /// The minute of the last clean-up of `minute_usage` (done at most hourly).
    pruned_at: u64,
}

/// Upper bounds (ms) of the latency histogram's buckets; the last bucket is everything above.
pub const LATENCY_BUCKETS_MS: [u64; 17] = [
    50, 100, 200, 300, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000, 7_500, 10_000, 20_000, 30_000,
    60_000, 120_000,
];

fn latency_bucket(ms: u64) -> i64 {
    LATENCY_BUCKETS_MS
        .iter()
        .position(|&b| ms <= b)
        .unwrap_or(LATENCY_BUCKETS_MS.len()) as i64
}

/// The latency below which a share `q` (0..1) of the histogram's requests fell: the upper
/// bound of the bucket that reaches it (twice the last bound for the open bucket).
pub fn percentile_ms(counts: &[u64], q: f64) -> Option<u64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let wanted = (total as f64 * q).ceil().max(1.0) as u64;
    let mut seen = 0u64;
    for (i, c) in counts.iter().enumerate() {
        seen += c;
        if seen >= wanted {
            return Some(LATENCY_BUCKETS_MS.get(i).copied().unwrap_or(2 * 120_000));
        }
    }
    None
}

/// Minute-by-minute counts older than this many minutes are dropped (peaks keep the days).
const MINUTES_KEPT: u64 = 2 * 1440;

/// One (key, day) busiest minute.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DailyPeak {
    pub key_id: String,
    pub day: String,
    pub peak_requests: u64,
    pub peak_tokens: u64,
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
CREATE TABLE IF NOT EXISTS minute_usage (
    key_id TEXT NOT NULL,
    minute INTEGER NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, minute)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS peaks_daily (
    key_id TEXT NOT NULL,
    day TEXT NOT NULL,
    peak_requests INTEGER NOT NULL DEFAULT 0,
    peak_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, day)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS latency_daily (
    key_id TEXT NOT NULL,
    day TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    count INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, day, bucket)
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
        Ok(Self { conn, pruned_at: 0 })
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
        Ok(Self { conn, pruned_at: 0 })
    }

    /// Writes a batch in one transaction, summed per (key, day, model) first so a batch costs
    /// one row update per group rather than per request. Returns the number of groups.
    pub fn write(&mut self, events: &[UsageEvent]) -> rusqlite::Result<usize> {
        type Group<'a> = (&'a str, u64, &'a str);
        let mut groups: HashMap<Group<'_>, DailyRow> = HashMap::new();
        let mut last_used: HashMap<&str, SystemTime> = HashMap::new();
        // (key, minute) -> (requests, tokens); (key, day, bucket) -> count.
        let mut minutes: HashMap<(&str, u64), (u64, u64)> = HashMap::new();
        let mut latencies: HashMap<(&str, u64, i64), u64> = HashMap::new();
        for e in events {
            let secs = e
                .started
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let day_number = secs / 86_400;
            let g = groups
                .entry((&e.key_id, day_number, e.model.as_deref().unwrap_or("")))
                .or_default();
            let tokens = e
                .usage
                .prompt_tokens
                .saturating_add(e.usage.completion_tokens);
            g.requests += 1;
            g.errors += u64::from(e.error);
            g.prompt_tokens = g.prompt_tokens.saturating_add(e.usage.prompt_tokens);
            g.cached_prompt_tokens = g
                .cached_prompt_tokens
                .saturating_add(e.usage.cached_prompt_tokens);
            g.completion_tokens = g
                .completion_tokens
                .saturating_add(e.usage.completion_tokens);
            g.cost_micros = g.cost_micros.saturating_add(e.cost_micros);
            g.estimated += u64::from(e.estimated);
            g.latency_ms_sum = g.latency_ms_sum.saturating_add(e.latency_ms);
            let t = last_used.entry(&e.key_id).or_insert(e.finished);
            *t = (*t).max(e.finished);
            let m = minutes.entry((&e.key_id, secs / 60)).or_default();
            m.0 += 1;
            m.1 = m.1.saturating_add(tokens);
            *latencies
                .entry((&e.key_id, day_number, latency_bucket(e.latency_ms)))
                .or_default() += 1;
        }
        let tx = self.conn.transaction()?;
        {
            let mut add = tx.prepare_cached(
                "INSERT INTO usage_daily (key_id, day, model, requests, errors, prompt_tokens,
                    cached_prompt_tokens, completion_tokens, cost_micros, estimated, latency_ms_sum)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT (key_id, day, model) DO UPDATE SET
                    requests = min(requests + excluded.requests, 9223372036854775807),
                    errors = min(errors + excluded.errors, 9223372036854775807),
                    prompt_tokens = min(prompt_tokens + excluded.prompt_tokens, 9223372036854775807),
                    cached_prompt_tokens = min(cached_prompt_tokens + excluded.cached_prompt_tokens, 9223372036854775807),
                    completion_tokens = min(completion_tokens + excluded.completion_tokens, 9223372036854775807),
                    cost_micros = min(cost_micros + excluded.cost_micros, 9223372036854775807),
                    estimated = min(estimated + excluded.estimated, 9223372036854775807),
                    latency_ms_sum = min(latency_ms_sum + excluded.latency_ms_sum, 9223372036854775807)",
            )?;
            for ((key_id, day_number, model), g) in &groups {
                let day = calendar::day_of_number(*day_number);
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
            let mut minute = tx.prepare_cached(
                "INSERT INTO minute_usage (key_id, minute, requests, tokens) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (key_id, minute) DO UPDATE SET
                    requests = min(requests + excluded.requests, 9223372036854775807),
                    tokens = min(tokens + excluded.tokens, 9223372036854775807)
                 RETURNING requests, tokens",
            )?;
            // The busiest of this batch's minutes per key and day, at their new totals. Counts
            // only grow and every earlier total was folded into the day's peak when it was
            // written, so that and the stored peak give the day's busiest minute without
            // reading the day's other minutes again.
            let mut days: HashMap<(&str, u64), (i64, i64)> = HashMap::new();
            for ((key_id, m), (requests, tokens)) in &minutes {
                let (requests, tokens): (i64, i64) = minute.query_row(
                    params![key_id, to_i64(*m), to_i64(*requests), to_i64(*tokens)],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )?;
                let busiest = days.entry((key_id, m / 1440)).or_default();
                *busiest = (busiest.0.max(requests), busiest.1.max(tokens));
            }
            let mut peak = tx.prepare_cached(
                "INSERT INTO peaks_daily (key_id, day, peak_requests, peak_tokens)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (key_id, day) DO UPDATE SET
                    peak_requests = max(peak_requests, excluded.peak_requests),
                    peak_tokens = max(peak_tokens, excluded.peak_tokens)",
            )?;
            for ((key_id, day_number), (requests, tokens)) in &days {
                let day = calendar::day_of_number(*day_number);
                peak.execute(params![key_id, day, requests, tokens])?;
            }
            let mut latency = tx.prepare_cached(
                "INSERT INTO latency_daily (key_id, day, bucket, count) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (key_id, day, bucket) DO UPDATE SET
                    count = min(count + excluded.count, 9223372036854775807)",
            )?;
            for ((key_id, day_number, bucket), count) in &latencies {
                let day = calendar::day_of_number(*day_number);
                latency.execute(params![key_id, day, bucket, to_i64(*count)])?;
            }
            // Minute counts are only needed until their day's peak is known.
            if let Some(newest) = minutes.keys().map(|(_, m)| *m).max()
                && newest >= self.pruned_at + 60
            {
                tx.execute(
                    "DELETE FROM minute_usage WHERE minute < ?1",
                    params![to_i64(newest.saturating_sub(MINUTES_KEPT))],
                )?;
                self.pruned_at = newest;
            }
        }
        tx.commit()?;
        Ok(groups.len())
    }

    /// Each day's busiest minute from `since_day`, optionally for one key.
    pub fn peaks(&self, key_id: Option<&str>, since_day: &str) -> rusqlite::Result<Vec<DailyPeak>> {
        let mut stmt = self.conn.prepare(
            "SELECT key_id, day, peak_requests, peak_tokens FROM peaks_daily
             WHERE day >= ?1 AND (?2 IS NULL OR key_id = ?2) ORDER BY key_id, day",
        )?;
        let rows = stmt.query_map(params![since_day, key_id], |r| {
            Ok(DailyPeak {
                key_id: r.get(0)?,
                day: r.get(1)?,
                peak_requests: to_u64(r.get(2)?),
                peak_tokens: to_u64(r.get(3)?),
            })
        })?;
        rows.collect()
    }

    /// A key's latency histogram from `since_day`: the count per bucket of
    /// [`LATENCY_BUCKETS_MS`] (one more for everything above).
    pub fn latency(&self, key_id: &str, since_day: &str) -> rusqlite::Result<Vec<u64>> {
        let mut counts = vec![0u64; LATENCY_BUCKETS_MS.len() + 1];
        let mut stmt = self.conn.prepare(
            "SELECT bucket, sum(count) FROM latency_daily WHERE key_id = ?1 AND day >= ?2
             GROUP BY bucket",
        )?;
        let rows = stmt.query_map(params![key_id, since_day], |r| {
            Ok((r.get::<_, i64>(0)?, to_u64(r.get(1)?)))
        })?;
        for row in rows {
            let (bucket, count) = row?;
            if let Some(slot) = usize::try_from(bucket).ok().and_then(|b| counts.get_mut(b)) {
                *slot = slot.saturating_add(count);
            }
        }
        Ok(counts)
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::upstream::Usage;

    fn event(key: &str, at: &str, tokens: u64, latency_ms: u64) -> UsageEvent {
        let started = humantime::parse_rfc3339(at).unwrap();
        UsageEvent {
            key_id: Arc::from(key),
            model: Some(Arc::from("m")),
            started,
            finished: started,
            error: false,
            usage: Usage {
                prompt_tokens: tokens,
                cached_prompt_tokens: 0,
                completion_tokens: 0,
            },
            cost_micros: 1,
            estimated: false,
            latency_ms,
        }
    }

    #[test]
    fn peaks_are_the_busiest_minute_of_each_day_across_batches_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let mut ledger = Ledger::open(&path).unwrap();
        // 23:59 on the 1st: three requests; the next minute is the 2nd.
        let mut batch: Vec<UsageEvent> = (0..3)
            .map(|_| event("k", "2026-12-01T23:59:10Z", 100, 40))
            .collect();
        batch.push(event("k", "2026-12-02T00:00:05Z", 7, 40));
        ledger.write(&batch).unwrap();
        drop(ledger);
        // After a restart, more arrive for the same minutes, one of them late (a long stream
        // that started at 23:59 and settled after midnight).
        let mut ledger = Ledger::open(&path).unwrap();
        let mut later: Vec<UsageEvent> = (0..4)
            .map(|_| event("k", "2026-12-02T00:00:30Z", 10, 400))
            .collect();
        later.push(event("k", "2026-12-01T23:59:59Z", 1000, 2500));
        ledger.write(&later).unwrap();
        // A quieter minute later on the 2nd leaves its peak where it was.
        ledger
            .write(&[event("k", "2026-12-02T09:00:00Z", 1, 400)])
            .unwrap();
        let peaks = ledger.peaks(Some("k"), "2026-12-01").unwrap();
        assert_eq!(
            peaks
                .iter()
                .map(|p| (p.day.as_str(), p.peak_requests, p.peak_tokens))
                .collect::<Vec<_>>(),
            vec![("2026-12-01", 4, 1300), ("2026-12-02", 5, 47)]
        );
        let latency = ledger.latency("k", "2026-12-01").unwrap();
        assert_eq!(latency.iter().sum::<u64>(), 10);
        assert_eq!(percentile_ms(&latency, 0.5), Some(500));
        assert_eq!(percentile_ms(&latency, 0.95), Some(3_000));
    }
}
