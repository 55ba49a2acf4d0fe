//! The dashboard's HTML pages, rendered on the server from [`super::model`]: the key list, a
//! page per key, the security events and a 404 page.
//!
//! Every page is self-contained: one inline `<style>` block ([`STYLE`]), SVG charts inlined by
//! [`super::svg`], no script, no font, no image and no absolute URL, so it works offline and a
//! browser showing it asks nothing of any host (the `Content-Security-Policy` meta tag makes the
//! browser enforce that too). Links are root-relative. Every string from the config or from
//! requests (key ids and names, reasons, addresses, model names) is escaped. Money is formatted
//! from integer micro-dollars by [`usd`], never through floats; the charts alone take floats.
//!
//! The key page's charts plot, per day: requests, tokens, cost in USD (`micros / 1e6`) and the
//! error rate in percent ([`error_rate`]); tests compare the charts' `data-value`s with those.

use super::model::{Day, EventRow, KeyPage, KeyRow, ModelCost, Overview, Utilization};
use super::svg::{self, escape};
use crate::usage::report;

/// The stylesheet every page inlines: readable down to a 375 px wide phone. On a narrow screen
/// each table row becomes a card of labelled cells (the labels come from `data-th`); wider
/// tables scroll inside their own box instead of widening the page.
pub const STYLE: &str = r":root{color-scheme:light;--muted:#6b7280;--line:#e5e7eb}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#111827;background:#f9fafb}
header{background:#111827;padding:8px 12px}
nav{display:flex;flex-wrap:wrap;gap:4px 16px}
nav a{color:#fff;text-decoration:none;font-weight:600}
main{max-width:1100px;margin:0 auto;padding:12px}
h1{font-size:1.4rem;margin:.4rem 0;overflow-wrap:anywhere}
h2{font-size:1.1rem;margin:1.4rem 0 .5rem}
p,li,dd{overflow-wrap:anywhere}
a{color:#1d4ed8}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.95em}
.muted{color:var(--muted)}
.small{font-size:.85rem}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;max-width:100%;border:1px solid var(--line);border-radius:6px;background:#fff}
table{border-collapse:collapse;width:100%}
th,td{padding:6px 10px;text-align:left;vertical-align:top;border-bottom:1px solid var(--line)}
th{font-size:.85rem;color:var(--muted);font-weight:600;white-space:nowrap}
td{white-space:nowrap}
td.wrap{white-space:normal;overflow-wrap:anywhere;min-width:6rem;max-width:14rem}
.num{text-align:right;font-variant-numeric:tabular-nums}
.meter-cell{min-width:10rem}
.meter{display:block;width:100%;height:10px;margin:2px 0}
.limit+.limit{margin-top:4px}
.status{display:inline-block;padding:0 6px;border-radius:9px;font-size:.8rem;font-weight:600;background:#e5e7eb}
.status-active{background:#dcfce7;color:#166534}
.status-inactive{background:#f3f4f6;color:#374151}
.status-expired{background:#fee2e2;color:#991b1b}
.facts{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,12rem),1fr));align-items:start;gap:8px;margin:0}
.facts>div{background:#fff;border:1px solid var(--line);border-radius:6px;padding:8px}
.facts dt{font-size:.8rem;color:var(--muted)}
.facts dd{margin:0}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,24rem),1fr));gap:12px}
figure{margin:0;background:#fff;border:1px solid var(--line);border-radius:6px;padding:6px;min-width:0}
svg.chart{display:block;width:100%;height:auto}
ul.suggest{padding-left:1.2rem;margin:.3rem 0}
@media (max-width:640px){
thead{display:none}
table,tbody,tr,td{display:block;width:100%}
tr{border-bottom:1px solid var(--line);padding:4px 0}
td,td.wrap,td.num,.meter-cell{border:0;padding:2px 10px;white-space:normal;overflow-wrap:anywhere;min-width:0;max-width:none;text-align:left}
td::before{content:attr(data-th);display:block;font-size:.75rem;color:var(--muted)}
}
";

/// The key list: each key's status, dates, spend against budget and limit utilization, then
/// the recent security events across keys.
pub fn overview(o: &Overview) -> String {
    let keys = if o.keys.is_empty() {
        r#"<p class="muted">No keys are configured.</p>"#.to_owned()
    } else {
        let rows: Vec<Vec<Cell>> = o.keys.iter().map(key_row).collect();
        table(
            "keys",
            &[
                "Key",
                "Name",
                "Status",
                "Created",
                "Last used",
                "Spend",
                "Limits",
            ],
            &rows,
        )
    };
    let shown = if o.matching > o.keys.len() {
        format!(
            r#"<p class="muted small">Showing the {} keys with the most spend this month, of {} {}. Search by id or name to find others.</p>"#,
            o.keys.len(),
            o.matching,
            if o.query.is_empty() {
                "keys"
            } else {
                "matching keys"
            },
        )
    } else {
        String::new()
    };
    let search = format!(
        r#"<form method="get" action="/dashboard" class="search"><input type="search" name="q" value="{}" placeholder="Key id or name" aria-label="Search keys"> <button type="submit">Search</button></form>"#,
        escape(&o.query)
    );
    let body = format!(
        r#"<h1>Keys</h1><p class="muted small">Generated {generated}</p>{search}{shown}{keys}<h2>Recent security events</h2>{events}"#,
        generated = escape(&o.generated),
        events = events_table(&o.events),
    );
    page("Keys", &body)
}

/// One key: its state, daily charts over the period, cost by model, latency, limit
/// suggestions, cost advice and its recent security events.
pub fn key(p: &KeyPage) -> String {
    let k = &p.key;
    let charts = [
        svg::bars(
            "Requests per day",
            &series(&p.days, |d| d.requests as f64),
            "requests",
        ),
        svg::bars(
            "Tokens per day",
            &series(&p.days, |d| d.tokens as f64),
            "tokens",
        ),
        svg::bars(
            "Cost per day",
            &series(&p.days, |d| d.cost_micros as f64 / 1e6),
            "USD",
        ),
        svg::line("Error rate", &series(&p.days, error_rate), "%"),
    ]
    .iter()
    .map(|chart| format!("<figure>{chart}</figure>"))
    .collect::<String>();
    let facts = [
        ("Created", escape(&k.created)),
        ("Last used", last_used(k)),
        ("Spend", spend(k)),
        ("Limits", limits(&k.limits)),
        (
            "Latency",
            format!(
                "p50 {} · p95 {}",
                milliseconds(p.latency_p50_ms),
                milliseconds(p.latency_p95_ms)
            ),
        ),
    ]
    .iter()
    .map(|(term, value)| format!("<div><dt>{term}</dt><dd>{value}</dd></div>"))
    .collect::<String>();
    let body = format!(
        r#"<h1>Key <code>{id}</code></h1><p>{name} {status}</p><dl class="facts">{facts}</dl><h2>Last {days} days</h2><div class="charts">{charts}</div><h2>Cost by model</h2>{by_model}<h2>Limit suggestions</h2>{suggestion}<h2>Cost advice</h2>{advice}<h2>Recent security events</h2>{events}"#,
        id = escape(&k.id),
        name = escape(&k.name),
        status = status(k.status),
        days = p.days.len(),
        by_model = by_model(&p.by_model),
        suggestion = suggestion(p.suggestion.as_ref()),
        advice = advice(&p.advice),
        events = events_table(&p.events),
    );
    page(&format!("Key {}", k.id), &body)
}

/// Recent security events across keys.
pub fn events(events: &[EventRow]) -> String {
    let body = format!("<h1>Security events</h1>{}", events_table(events));
    page("Security events", &body)
}

/// The 404 page; `what` names the missing thing ("Key abc").
pub fn not_found(what: &str) -> String {
    message("Not found", &format!("{what} was not found."))
}

/// A page that only says something: a refusal, or what was not found.
pub fn message(title: &str, text: &str) -> String {
    let body = format!(
        r#"<h1>{}</h1><p>{}</p><p><a href="/dashboard">Back to the key list</a></p>"#,
        escape(title),
        escape(text)
    );
    page(title, &body)
}

/// A day's error rate in percent: errors × 100 / requests, 0 for a day without requests.
pub fn error_rate(d: &Day) -> f64 {
    if d.requests == 0 {
        0.0
    } else {
        d.errors as f64 * 100.0 / d.requests as f64
    }
}

/// Micro-dollars as USD with two to six decimals, by integer arithmetic: `$1,234.50`,
/// `$0.000123`.
pub fn usd(micros: u64) -> String {
    let mut fraction = format!("{:06}", micros % 1_000_000);
    while fraction.len() > 2 && fraction.ends_with('0') {
        fraction.pop();
    }
    format!("${}.{fraction}", grouped(micros / 1_000_000))
}

/// The page around `body` (already HTML); `title` is escaped here.
fn page(title: &str, body: &str) -> String {
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<meta name="robots" content="noindex">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'self'">
<link rel="icon" href="data:,">
<title>{title} · keygate</title>
<style>{STYLE}</style></head>
<body><header><nav><a href="/dashboard">Keys</a><a href="/dashboard/events">Security events</a></nav></header>
<main>{body}</main></body></html>
"#,
        title = escape(title),
    )
}

/// One table cell: already-escaped HTML and its CSS class.
struct Cell {
    class: &'static str,
    html: String,
}

impl Cell {
    fn text(html: String) -> Self {
        Cell { class: "", html }
    }

    /// A number, right-aligned.
    fn num(html: String) -> Self {
        Cell { class: "num", html }
    }

    /// Free text from the config (ids, names), which may wrap anywhere.
    fn wrap(html: String) -> Self {
        Cell {
            class: "wrap",
            html,
        }
    }

    /// Meters, which need some width.
    fn meters(html: String) -> Self {
        Cell {
            class: "meter-cell",
            html,
        }
    }
}

/// A table in its own horizontal scroll box. Each cell carries its column's heading in
/// `data-th`, which labels it when a phone shows the row as a card.
fn table(id: &str, headings: &[&str], rows: &[Vec<Cell>]) -> String {
    let head: String = headings.iter().map(|h| format!("<th>{h}</th>")).collect();
    let body: String = rows
        .iter()
        .map(|cells| {
            let tds: String = cells
                .iter()
                .zip(headings)
                .map(|(cell, heading)| {
                    format!(
                        r#"<td class="{class}" data-th="{heading}">{html}</td>"#,
                        class = cell.class,
                        html = cell.html,
                    )
                })
                .collect();
            format!("<tr>{tds}</tr>")
        })
        .collect();
    format!(
        r#"<div class="scroll"><table id="{id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"#
    )
}

fn key_row(k: &KeyRow) -> Vec<Cell> {
    vec![
        Cell::wrap(key_link(&k.id)),
        Cell::wrap(escape(&k.name)),
        Cell::text(status(k.status)),
        Cell::text(escape(&k.created)),
        Cell::text(last_used(k)),
        Cell::meters(spend(k)),
        Cell::meters(limits(&k.limits)),
    ]
}

fn key_link(id: &str) -> String {
    format!(
        r#"<a href="{href}"><code>{id}</code></a>"#,
        href = key_href(id),
        id = escape(id),
    )
}

/// The key page's path, the id percent-encoded so any id stays one path segment.
fn key_href(id: &str) -> String {
    let mut out = String::from("/dashboard/keys/");
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn status(status: &str) -> String {
    let status = escape(status);
    format!(r#"<span class="status status-{status}">{status}</span>"#)
}

fn last_used(k: &KeyRow) -> String {
    k.last_used
        .as_deref()
        .map_or_else(|| r#"<span class="muted">never</span>"#.to_owned(), escape)
}

/// Spend as text, with a meter against the budget when there is one.
fn spend(k: &KeyRow) -> String {
    match k.budget_micros {
        Some(budget) => format!(
            r#"{meter}<span class="small">{spent} of {budget}</span>"#,
            meter = svg::meter(k.spend_micros as f64, budget as f64),
            spent = usd(k.spend_micros),
            budget = usd(budget),
        ),
        None => format!(
            r#"{} <span class="muted small">no budget</span>"#,
            usd(k.spend_micros)
        ),
    }
}

fn limits(limits: &[Utilization]) -> String {
    if limits.is_empty() {
        return r#"<span class="muted">no limits</span>"#.to_owned();
    }
    limits
        .iter()
        .map(|u| {
            format!(
                r#"<div class="limit"><span class="small">{label}: {used} of {limit}</span>{meter}</div>"#,
                label = escape(u.label),
                used = grouped(u.used),
                limit = grouped(u.limit),
                meter = svg::meter(u.used as f64, u.limit as f64),
            )
        })
        .collect()
}

fn events_table(events: &[EventRow]) -> String {
    if events.is_empty() {
        return r#"<p class="muted">No recent security events.</p>"#.to_owned();
    }
    let rows: Vec<Vec<Cell>> = events
        .iter()
        .map(|e| {
            vec![
                Cell::text(escape(&e.time)),
                Cell::text(escape(e.kind)),
                Cell::text(escape(e.reason)),
                Cell::wrap(e.key_id.as_deref().map_or_else(dash, key_link)),
                Cell::text(e.client_ip.as_deref().map_or_else(dash, escape)),
                Cell::num(grouped(e.count)),
            ]
        })
        .collect();
    table(
        "events",
        &["Time", "Kind", "Reason", "Key", "Client IP", "Count"],
        &rows,
    )
}

fn by_model(models: &[ModelCost]) -> String {
    if models.is_empty() {
        return r#"<p class="muted">No requests in this period.</p>"#.to_owned();
    }
    let rows: Vec<Vec<Cell>> = models
        .iter()
        .map(|m| {
            vec![
                Cell::wrap(escape(&m.model)),
                Cell::num(grouped(m.requests)),
                Cell::num(grouped(m.tokens)),
                Cell::num(usd(m.cost_micros)),
            ]
        })
        .collect();
    table("by-model", &["Model", "Requests", "Tokens", "Cost"], &rows)
}

fn suggestion(s: Option<&report::Suggestion>) -> String {
    let Some(s) = s else {
        return r#"<p class="muted">No traffic in this period to base a suggestion on.</p>"#
            .to_owned();
    };
    format!(
        r#"<ul class="suggest"><li>peak {peak_rpm} requests/min → suggest <strong>{rpm}</strong> (now {current_rpm})</li><li>peak {peak_tpm} tokens/min → suggest <strong>{tpm}</strong> (now {current_tpm})</li></ul><p class="muted small">max(peak × 1.2, 100) requests and max(peak × 1.2, 10,000) tokens per minute. The dashboard never changes the config.</p>"#,
        peak_rpm = grouped(s.peak_requests_per_minute),
        rpm = grouped(s.suggested_requests_per_minute),
        current_rpm = current(s.current_requests_per_minute),
        peak_tpm = grouped(s.peak_tokens_per_minute),
        tpm = grouped(s.suggested_tokens_per_minute),
        current_tpm = current(s.current_tokens_per_minute),
    )
}

fn current(limit: Option<u64>) -> String {
    limit.map_or_else(|| "unlimited".to_owned(), grouped)
}

fn advice(advice: &[report::ModelUse]) -> String {
    if advice.is_empty() {
        return r#"<p class="muted">No requests in this period.</p>"#.to_owned();
    }
    let rows: Vec<Vec<Cell>> = advice
        .iter()
        .map(|a| {
            vec![
                Cell::wrap(escape(&a.model)),
                Cell::num(grouped(a.requests)),
                Cell::num(grouped(a.average_tokens)),
                Cell::num(usd(a.cost_micros)),
                Cell::wrap(a.cheapest_model.as_deref().map_or_else(dash, escape)),
                Cell::num(if a.saving_micros == 0 {
                    dash()
                } else {
                    usd(a.saving_micros)
                }),
            ]
        })
        .collect();
    table(
        "advice",
        &[
            "Model",
            "Requests",
            "Avg tokens",
            "Cost",
            "Cheapest in scope",
            "Saving",
        ],
        &rows,
    )
}

fn milliseconds(v: Option<f64>) -> String {
    v.filter(|v| v.is_finite())
        .map_or_else(dash, |v| format!("{v:.1} ms"))
}

/// What an empty cell shows.
fn dash() -> String {
    "—".to_owned()
}

fn series(days: &[Day], value: impl Fn(&Day) -> f64) -> Vec<(String, f64)> {
    days.iter().map(|d| (d.day.clone(), value(d))).collect()
}

/// An integer with thousands separators: `12,345`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVIL: &str = "<script>alert(1)</script>";

    fn row(id: &str, name: &str) -> KeyRow {
        KeyRow {
            id: id.to_owned(),
            name: name.to_owned(),
            status: "active",
            created: "2026-11-01".to_owned(),
            last_used: Some("2026-12-30T10:00:00Z".to_owned()),
            spend_micros: 1_500_000,
            budget_micros: Some(10_000_000),
            limits: vec![
                Utilization {
                    label: "requests/min",
                    used: 12,
                    limit: 100,
                },
                Utilization {
                    label: "concurrent",
                    used: 3,
                    limit: 4,
                },
            ],
        }
    }

    fn event(key: Option<&str>) -> EventRow {
        EventRow {
            time: "2026-12-30T09:00:00Z".to_owned(),
            kind: "ip_denied",
            reason: "ip_not_allowed",
            key_id: key.map(str::to_owned),
            client_ip: Some("203.0.113.7".to_owned()),
            count: 1234,
        }
    }

    fn key_page(days: usize) -> KeyPage {
        KeyPage {
            key: row("k1", "batch jobs"),
            days: (0..days)
                .map(|i| Day {
                    day: format!("2026-12-{:02}", i + 1),
                    requests: i as u64 * 10,
                    errors: i as u64,
                    tokens: i as u64 * 1000,
                    cost_micros: i as u64 * 1234,
                })
                .collect(),
            by_model: vec![ModelCost {
                model: "gpt-4o".to_owned(),
                requests: 10,
                tokens: 20_000,
                cost_micros: 50_000,
            }],
            latency_p50_ms: Some(120.25),
            latency_p95_ms: None,
            events: vec![event(Some("k1"))],
            suggestion: Some(report::Suggestion {
                key_id: "k1".to_owned(),
                peak_requests_per_minute: 50,
                peak_tokens_per_minute: 20_000,
                current_requests_per_minute: Some(60),
                current_tokens_per_minute: None,
                suggested_requests_per_minute: 100,
                suggested_tokens_per_minute: 24_000,
            }),
            advice: vec![report::ModelUse {
                key_id: "k1".to_owned(),
                model: "gpt-4o".to_owned(),
                requests: 10,
                average_tokens: 2000,
                cost_micros: 50_000,
                cheapest_model: Some("gpt-4o-mini".to_owned()),
                saving_micros: 47_000,
            }],
        }
    }

    fn all_pages() -> Vec<String> {
        let mut evil = key_page(3);
        evil.key = row(EVIL, EVIL);
        evil.events = vec![event(Some(EVIL))];
        vec![
            overview(&Overview {
                generated: "2026-12-31T00:00:00Z".to_owned(),
                keys: vec![row("k1", EVIL), row(EVIL, "x")],
                matching: 5,
                query: EVIL.to_owned(),
                events: vec![event(None), event(Some(EVIL))],
            }),
            overview(&Overview::default()),
            key(&key_page(30)),
            key(&evil),
            key(&KeyPage::default()),
            events(&[event(Some("k1")), event(None)]),
            events(&[]),
            not_found(EVIL),
        ]
    }

    /// (chart title, number of data points) for each chart on a page.
    fn charts(html: &str) -> Vec<(String, usize)> {
        html.split("<svg ")
            .skip(1)
            .filter_map(|s| {
                let body = s.split("</svg>").next()?;
                let title = body.split("data-chart=\"").nth(1)?.split('"').next()?;
                Some((title.to_owned(), body.matches("data-value=").count()))
            })
            .collect()
    }

    #[test]
    fn key_names_and_ids_are_escaped() {
        for html in all_pages() {
            assert!(!html.contains("<script"), "{html}");
            assert!(!html.contains("alert(1)</"), "{html}");
        }
        let html = overview(&Overview {
            keys: vec![row("k1", EVIL)],
            ..Overview::default()
        });
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(not_found(EVIL).contains("&lt;script&gt;"));
    }

    #[test]
    fn the_overview_links_every_key() {
        let ids = ["k1", "team-b_2", "with space", EVIL];
        let html = overview(&Overview {
            keys: ids.iter().map(|id| row(id, "n")).collect(),
            ..Overview::default()
        });
        for id in ["k1", "team-b_2", "with%20space"] {
            assert!(
                html.contains(&format!(r#"href="/dashboard/keys/{id}""#)),
                "{id}: {html}"
            );
        }
        assert!(html.contains(r#"href="/dashboard/keys/%3Cscript%3Ealert%281%29%3C%2Fscript%3E""#));
        assert_eq!(
            html.matches(r#"<a href="/dashboard/keys/"#).count(),
            ids.len()
        );
        assert!(html.contains("$1.50 of $10.00"), "{html}");
        assert!(html.contains("requests/min: 12 of 100"), "{html}");
        assert_eq!(html.matches("data-used=").count(), 3 * ids.len());
    }

    #[test]
    fn a_long_key_list_says_how_many_it_leaves_out() {
        let html = overview(&Overview {
            keys: vec![row("k1", "n")],
            matching: 100_000,
            ..Overview::default()
        });
        assert!(
            html.contains("Showing the 1 keys with the most spend this month, of 100000 keys"),
            "{html}"
        );
        let all = overview(&Overview {
            keys: vec![row("k1", "n")],
            matching: 1,
            ..Overview::default()
        });
        assert!(!all.contains("Showing the"));
    }

    #[test]
    fn pages_hold_no_absolute_url_and_no_external_resource() {
        for html in all_pages() {
            for needle in [
                "http://",
                "https://",
                "\"//",
                "'//",
                "url(",
                "<script",
                "<img",
                "<iframe",
                "@import",
                "stylesheet",
            ] {
                assert!(!html.contains(needle), "{needle} in {html}");
            }
            assert!(html.starts_with("<!DOCTYPE html>"));
            assert!(html.contains(
                r#"<meta name="viewport" content="width=device-width, initial-scale=1">"#
            ));
            assert!(html.contains(r#"<meta name="referrer" content="no-referrer">"#));
            assert!(html.contains(r#"<meta name="robots" content="noindex">"#));
            assert_eq!(html.matches("<style>").count(), 1);
        }
    }

    #[test]
    fn the_key_page_charts_every_day() {
        let page = key_page(30);
        let html = key(&page);
        let found = charts(&html);
        let titles: Vec<&str> = found.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            titles,
            [
                "Requests per day",
                "Tokens per day",
                "Cost per day",
                "Error rate"
            ]
        );
        for (title, points) in &found {
            assert_eq!(*points, 30, "{title}");
        }
        // Day 3 (index 2): 20 requests, 2 errors, 2000 tokens, 2468 micro-dollars.
        assert!(html.contains(r#"data-label="2026-12-03" data-value="20""#));
        assert!(html.contains(r#"data-label="2026-12-03" data-value="2000""#));
        assert!(html.contains(r#"data-label="2026-12-03" data-value="0.002468""#));
        assert!(html.contains(r#"data-label="2026-12-03" data-value="10""#));
        // Day 1 has no requests: an error rate of 0, not NaN.
        assert!(html.contains(r#"data-label="2026-12-01" data-value="0""#));
        assert!(!html.contains("NaN"));
        assert!(html.contains("peak 50 requests/min → suggest <strong>100</strong>"));
        assert!(html.contains("peak 20,000 tokens/min → suggest <strong>24,000</strong>"));
        assert!(html.contains("p50 120.2 ms · p95 —") || html.contains("p50 120.3 ms · p95 —"));
        assert!(html.contains("gpt-4o-mini") && html.contains("$0.047"));
        assert!(html.contains("Last 30 days"));

        let empty = key(&KeyPage::default());
        assert_eq!(charts(&empty).len(), 4);
        assert!(charts(&empty).iter().all(|(_, n)| *n == 0));
        assert!(empty.contains("No data for this period"));
        assert!(empty.contains("never"));
    }

    #[test]
    fn money_is_formatted_from_integers() {
        assert_eq!(usd(0), "$0.00");
        assert_eq!(usd(1), "$0.000001");
        assert_eq!(usd(500_000), "$0.50");
        assert_eq!(usd(1_370_000), "$1.37");
        assert_eq!(usd(1_234_567), "$1.234567");
        assert_eq!(usd(1_234_567_890_000), "$1,234,567.89");
        assert_eq!(usd(u64::MAX), "$18,446,744,073,709.551615");
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(123_456_789), "123,456,789");
    }

    #[test]
    fn error_rate_is_a_percentage() {
        let day = |requests, errors| Day {
            requests,
            errors,
            ..Day::default()
        };
        assert_eq!(error_rate(&day(0, 0)), 0.0);
        assert_eq!(error_rate(&day(4, 1)), 25.0);
        assert_eq!(error_rate(&day(3, 3)), 100.0);
    }
}
