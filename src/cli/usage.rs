//! `keygate usage`: per key and day, requests, errors, tokens by kind and cost, with totals,
//! daily average, peak day, error rate, cost per request and per 1k tokens. Reads the ledger
//! directly, so it works whether or not the gateway is running.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use clap::ValueEnum;
use serde_json::json;

use crate::usage::calendar;
use crate::usage::ledger::{DailyRow, Ledger};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

use crate::usage::cost::format_usd as usd;

/// `part / whole` as a percentage with two decimals.
fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "0.00%".into();
    }
    let hundredths = u128::from(part) * 10_000 / u128::from(whole);
    format!("{}.{:02}%", hundredths / 100, hundredths % 100)
}

#[derive(Default)]
struct Totals {
    requests: u64,
    errors: u64,
    prompt: u64,
    cached: u64,
    completion: u64,
    cost: u64,
    estimated: u64,
    by_day: BTreeMap<String, u64>,
}

impl Totals {
    fn add(&mut self, r: &DailyRow) {
        self.requests += r.requests;
        self.errors += r.errors;
        self.prompt += r.prompt_tokens;
        self.cached += r.cached_prompt_tokens;
        self.completion += r.completion_tokens;
        self.cost += r.cost_micros;
        self.estimated += r.estimated;
        *self.by_day.entry(r.day.clone()).or_default() += r.cost_micros;
    }

    fn peak_day(&self) -> Option<(&String, &u64)> {
        self.by_day
            .iter()
            .max_by_key(|(day, cost)| (**cost, std::cmp::Reverse((*day).clone())))
    }

    fn per_request(&self) -> u64 {
        self.cost.checked_div(self.requests).unwrap_or(0)
    }

    fn per_1k_tokens(&self) -> u64 {
        let tokens = self.prompt + self.completion;
        u64::try_from(u128::from(self.cost) * 1000 / u128::from(tokens.max(1))).unwrap_or(u64::MAX)
    }
}

/// What `read` finds in each ledger, one after the other.
fn read_each<R>(
    paths: &[PathBuf],
    read: impl Fn(&Ledger) -> rusqlite::Result<Vec<R>>,
) -> Result<Vec<R>, String> {
    let mut all = Vec::new();
    for path in paths {
        let ledger = Ledger::open_read_only(path)?;
        all.extend(
            read(&ledger)
                .map_err(|e| format!("cannot read the usage ledger {}: {e}", path.display()))?,
        );
    }
    Ok(all)
}

/// The rows of every ledger in `paths` since `since`, with the rows of the same key, day and
/// model summed: several replicas' ledgers read as one.
fn read_ledgers(
    paths: &[PathBuf],
    key: Option<&str>,
    since: &str,
) -> Result<Vec<DailyRow>, String> {
    let mut summed: BTreeMap<(String, String, String), DailyRow> = BTreeMap::new();
    for r in read_each(paths, |l| l.daily(key, since))? {
        let entry = summed
            .entry((r.key_id.clone(), r.day.clone(), r.model.clone()))
            .or_insert_with(|| DailyRow {
                key_id: r.key_id.clone(),
                day: r.day.clone(),
                model: r.model.clone(),
                ..DailyRow::default()
            });
        entry.requests += r.requests;
        entry.errors += r.errors;
        entry.prompt_tokens += r.prompt_tokens;
        entry.cached_prompt_tokens += r.cached_prompt_tokens;
        entry.completion_tokens += r.completion_tokens;
        entry.cost_micros += r.cost_micros;
        entry.estimated += r.estimated;
        entry.latency_ms_sum += r.latency_ms_sum;
    }
    Ok(summed.into_values().collect())
}

/// The first day of a report over the last `days` days, today included.
pub fn since(days: u32) -> String {
    let days = days.clamp(1, 36_500);
    calendar::days_before(SystemTime::now(), u64::from(days - 1))
}

/// Which report `keygate usage` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Report {
    /// Per key and day, with totals.
    Daily,
    /// `--suggest-limits`.
    SuggestLimits,
    /// `--by-model`.
    ByModel,
}

pub fn run(
    config_path: &Path,
    ledgers: &[PathBuf],
    key: Option<&str>,
    days: u32,
    format: Format,
    report: Report,
) -> ExitCode {
    let days = days.clamp(1, 36_500);
    let since = since(days);
    if report != Report::Daily {
        return match advice(config_path, ledgers, key, &since, format, report) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // The config is read only when no ledger is named (summing other replicas' ledgers
    // needs none).
    let paths = ledger_paths(ledgers, || {
        crate::config::load(config_path)
            .map(|config| config.storage.path)
            .map_err(|e| e.problems.join("\n"))
    });
    let rows = match paths.and_then(|paths| read_ledgers(&paths, key, &since)) {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut totals: BTreeMap<&str, Totals> = BTreeMap::new();
    for r in &rows {
        totals.entry(&r.key_id).or_default().add(r);
    }
    print!("{}", render(&rows, &totals, &since, days, format));
    ExitCode::SUCCESS
}

/// The ledgers named, or else the config's own (`configured`).
fn ledger_paths(
    ledgers: &[PathBuf],
    configured: impl FnOnce() -> Result<PathBuf, String>,
) -> Result<Vec<PathBuf>, String> {
    if ledgers.is_empty() {
        configured().map(|path| vec![path])
    } else {
        Ok(ledgers.to_vec())
    }
}

/// `--suggest-limits` and `--by-model`.
fn advice(
    config_path: &Path,
    ledgers: &[PathBuf],
    key: Option<&str>,
    since: &str,
    format: Format,
    report: Report,
) -> Result<String, String> {
    let config = crate::config::load(config_path).map_err(|e| e.problems.join("\n"))?;
    let paths = ledger_paths(ledgers, || Ok(config.storage.path.clone()))?;
    let mut out = String::new();
    if report == Report::SuggestLimits {
        let peaks = read_each(&paths, |l| l.peaks(key, since))?;
        // Several replicas' peaks of one minute add up (each saw part of that minute).
        let mut summed: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
        for p in peaks {
            let s = summed.entry((p.key_id, p.day)).or_default();
            s.0 += p.peak_requests;
            s.1 += p.peak_tokens;
        }
        let peaks: Vec<_> = summed
            .into_iter()
            .map(|((key_id, day), (r, t))| crate::usage::ledger::DailyPeak {
                key_id,
                day,
                peak_requests: r,
                peak_tokens: t,
            })
            .collect();
        let rows = crate::usage::report::suggestions(&config, &peaks, key);
        let limit = |v: Option<u64>| v.map_or_else(|| "none".to_owned(), |n| n.to_string());
        match format {
            Format::Json => {
                let _ = writeln!(out, "{}", json!({"since": since, "keys": rows}));
            }
            Format::Csv | Format::Table => {
                let cells = |r: &crate::usage::report::Suggestion| {
                    [
                        r.key_id.clone(),
                        limit(r.current_requests_per_minute),
                        r.peak_requests_per_minute.to_string(),
                        r.suggested_requests_per_minute.to_string(),
                        limit(r.current_tokens_per_minute),
                        r.peak_tokens_per_minute.to_string(),
                        r.suggested_tokens_per_minute.to_string(),
                    ]
                };
                rows_out(
                    &mut out,
                    format,
                    "key_id,current_rpm,peak_rpm,suggested_rpm,current_tpm,peak_tpm,suggested_tpm",
                    [
                        "KEY",
                        "RPM NOW",
                        "PEAK RPM",
                        "SUGGESTED RPM",
                        "TPM NOW",
                        "PEAK TPM",
                        "SUGGESTED TPM",
                    ],
                    &[
                        (24, Left),
                        (12, Right),
                        (10, Right),
                        (14, Right),
                        (12, Right),
                        (10, Right),
                        (14, Right),
                    ],
                    None,
                    rows.iter().map(cells),
                );
                if matches!(format, Format::Csv) {
                    return Ok(out);
                }
                let _ = writeln!(
                    out,
                    "\npeaks since {since}; suggestion = max(peak x 1.2, 100) requests and max(peak x 1.2, 10000) tokens per minute"
                );
            }
        }
        return Ok(out);
    }
    let rows = read_ledgers(&paths, key, since)?;
    let uses = crate::usage::report::by_model(&config, &rows);
    match format {
        Format::Json => {
            // Money as USD strings, like the daily report.
            let models: Vec<_> = uses
                .iter()
                .map(|u| {
                    json!({
                        "key_id": u.key_id,
                        "model": u.model,
                        "requests": u.requests,
                        "average_tokens": u.average_tokens,
                        "cost_usd": usd(u.cost_micros),
                        "cheapest_model": u.cheapest_model,
                        "saving_usd": usd(u.saving_micros),
                    })
                })
                .collect();
            let _ = writeln!(out, "{}", json!({"since": since, "models": models}));
        }
        Format::Csv | Format::Table => {
            let cells = |u: &crate::usage::report::ModelUse| {
                [
                    u.key_id.clone(),
                    u.model.clone(),
                    u.requests.to_string(),
                    u.average_tokens.to_string(),
                    usd(u.cost_micros),
                    u.cheapest_model.clone().unwrap_or_default(),
                    usd(u.saving_micros),
                ]
            };
            rows_out(
                &mut out,
                format,
                "key_id,model,requests,average_tokens,cost_usd,cheapest_model,saving_usd",
                [
                    "KEY",
                    "MODEL",
                    "REQUESTS",
                    "AVG TOKENS",
                    "COST USD",
                    "CHEAPEST",
                    "SAVING USD",
                ],
                &[
                    (24, Left),
                    (20, Left),
                    (9, Right),
                    (10, Right),
                    (14, Right),
                    (20, Left),
                    (14, Right),
                ],
                Some(5),
                uses.iter().map(cells),
            );
        }
    }
    Ok(out)
}

/// The per-day columns the table and CSV share, in order.
fn cells(r: &DailyRow) -> [String; 10] {
    [
        r.key_id.clone(),
        r.day.clone(),
        r.model.clone(),
        r.requests.to_string(),
        r.errors.to_string(),
        r.prompt_tokens.to_string(),
        r.cached_prompt_tokens.to_string(),
        r.completion_tokens.to_string(),
        usd(r.cost_micros),
        r.estimated.to_string(),
    ]
}

const TABLE_HEADER: [&str; 10] = [
    "KEY",
    "DAY",
    "MODEL",
    "REQUESTS",
    "ERRORS",
    "PROMPT",
    "CACHED",
    "COMPLETION",
    "COST_USD",
    "EST",
];
/// Column widths; the first three are left-aligned, the numbers right-aligned.
const TABLE_LAYOUT: [(usize, Align); 10] = [
    (20, Left),
    (10, Left),
    (18, Left),
    (9, Right),
    (7, Right),
    (10, Right),
    (10, Right),
    (11, Right),
    (12, Right),
    (5, Right),
];

#[derive(Clone, Copy)]
enum Align {
    Left,
    Right,
}
use Align::{Left, Right};

/// One line of a report table: each cell padded to its width, separated by a space.
fn table_line<const N: usize>(out: &mut String, cells: &[String; N], layout: &[(usize, Align); N]) {
    for (i, (cell, (width, align))) in cells.iter().zip(layout).enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let _ = match align {
            Left => write!(out, "{cell:<width$}"),
            Right => write!(out, "{cell:>width$}"),
        };
    }
    out.push('\n');
}

/// A report's rows as CSV (`csv_header`, then each row's cells joined by commas) or as a
/// table (`titles`, then each row padded to `layout`; an empty cell in column `dash` shows
/// as `-`).
fn rows_out<const N: usize>(
    out: &mut String,
    format: Format,
    csv_header: &str,
    titles: [&str; N],
    layout: &[(usize, Align); N],
    dash: Option<usize>,
    rows: impl Iterator<Item = [String; N]>,
) {
    if matches!(format, Format::Csv) {
        let _ = writeln!(out, "{csv_header}");
        for row in rows {
            let _ = writeln!(out, "{}", row.join(","));
        }
        return;
    }
    table_line(out, &titles.map(String::from), layout);
    for mut row in rows {
        if let Some(cell) = dash.and_then(|i| row.get_mut(i))
            && cell.is_empty()
        {
            *cell = "-".into();
        }
        table_line(out, &row, layout);
    }
}

fn render(
    rows: &[DailyRow],
    totals: &BTreeMap<&str, Totals>,
    since: &str,
    days: u32,
    format: Format,
) -> String {
    let mut out = String::new();
    match format {
        Format::Csv => {
            out.push_str("key_id,day,model,requests,errors,prompt_tokens,cached_prompt_tokens,completion_tokens,cost_usd,estimated,avg_latency_ms\n");
            for r in rows {
                let avg_ms = r.latency_ms_sum.checked_div(r.requests).unwrap_or(0);
                let _ = writeln!(out, "{},{avg_ms}", cells(r).join(","));
            }
        }
        Format::Json => {
            let keys: Vec<_> = totals
                .iter()
                .map(|(key, t)| {
                    json!({
                        "key_id": key,
                        "requests": t.requests,
                        "errors": t.errors,
                        "error_rate": percent(t.errors, t.requests),
                        "prompt_tokens": t.prompt,
                        "cached_prompt_tokens": t.cached,
                        "completion_tokens": t.completion,
                        "estimated": t.estimated,
                        "cost_micros": t.cost,
                        "cost_usd": usd(t.cost),
                        "daily_average_usd": usd(t.cost / u64::from(days)),
                        "peak_day": t.peak_day().map(|(d, c)| json!({"day": d, "cost_usd": usd(*c)})),
                        "cost_per_request_usd": usd(t.per_request()),
                        "cost_per_1k_tokens_usd": usd(t.per_1k_tokens()),
                    })
                })
                .collect();
            let body = json!({"since": since, "days": days, "rows": rows, "keys": keys});
            let _ = writeln!(out, "{body:#}");
        }
        Format::Table => {
            // The CSV above has one more column (the average latency): only the table is here.
            rows_out(
                &mut out,
                format,
                "",
                TABLE_HEADER,
                &TABLE_LAYOUT,
                Some(2),
                rows.iter().map(cells),
            );
            for (key, t) in totals {
                let peak = t
                    .peak_day()
                    .map_or_else(|| "-".to_owned(), |(d, c)| format!("{d} (${})", usd(*c)));
                let _ = writeln!(
                    out,
                    "\n{key}: {} requests, {} errors ({} error rate), {} prompt / {} cached / {} completion tokens\n  cost ${} over {days} days: daily average ${}, peak day {peak}, ${} per request, ${} per 1k tokens",
                    t.requests,
                    t.errors,
                    percent(t.errors, t.requests),
                    t.prompt,
                    t.cached,
                    t.completion,
                    usd(t.cost),
                    usd(t.cost / u64::from(days)),
                    usd(t.per_request()),
                    usd(t.per_1k_tokens()),
                );
            }
            if rows.is_empty() {
                let _ = writeln!(out, "no usage since {since}");
            }
        }
    }
    out
}
