//! `keygate keys ...`: key management on the config file (through [`crate::config::edit`], the
//! same code as the admin API). A running gateway picks each change up within a second.

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use super::{KeyFlags, KeysCommand, ListFormat};
use crate::auth::{ApiKey, key};
use crate::config::edit::{self, Change, EditError, KeyFields, NewKey};
use crate::config::{Config, KeyPolicy};
use crate::keyinfo::{self, KeyUse};
use crate::usage::cost::format_usd;
use crate::usage::{Ledger, calendar};

pub fn run(command: KeysCommand) -> ExitCode {
    let result = match command {
        KeysCommand::Generate { json } => {
            generate(json);
            Ok(())
        }
        KeysCommand::Create {
            config,
            name,
            environment,
            flags,
            json,
        } => create(&config.config, name, environment, &flags, json),
        KeysCommand::List { config, format } => list(&config.config, format),
        KeysCommand::Show { id, config, json } => show(&config.config, &id, json),
        KeysCommand::Update {
            id,
            config,
            name,
            flags,
        } => fields(&flags, name).and_then(|f| {
            edit::update(&config.config, &id, &f).map_err(|e| e.to_string())?;
            println!("updated {id}");
            inherited_note(&config.config, &id, &f.removed_limits());
            Ok(())
        }),
        KeysCommand::Deactivate { id, config } => set_active(&config.config, &id, false),
        KeysCommand::Activate { id, config } => set_active(&config.config, &id, true),
        KeysCommand::Delete { id, config, yes } => {
            if yes {
                edit::delete(&config.config, &id)
                    .map_err(|e| e.to_string())
                    .map(|()| println!("deleted {id}"))
            } else {
                Err(format!(
                    "deleting {id} cannot be undone: add --yes to confirm"
                ))
            }
        }
        KeysCommand::Rotate {
            id,
            config,
            grace,
            json,
        } => rotate(&config.config, &id, &grace, json),
        KeysCommand::Diagnose { key, config } => {
            read_key(key).and_then(|key| diagnose(&config.config, &key))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a fresh key once, with the hash line the config stores in its place.
pub fn generate(json: bool) {
    let key = ApiKey::generate();
    let hash = key.digest().to_string();
    if json {
        println!("{}", json!({"key": key.expose(), "hash": hash}));
    } else {
        println!("key:  {}", key.expose());
        println!("      (shown once: give it to the application; keygate stores only the hash)");
        println!("hash = \"{hash}\"");
    }
}

/// `--allow-ip`/`--allow-referrer` values: none given keeps the list, `none` alone clears it.
fn list_flag(values: &[String], flag: &str) -> Result<Change<Vec<String>>, String> {
    match values {
        [] => Ok(Change::Keep),
        [one] if one.eq_ignore_ascii_case("none") => Ok(Change::Set(Vec::new())),
        many if many.iter().any(|v| v.eq_ignore_ascii_case("none")) => Err(format!(
            "{flag} none clears the list and cannot be combined with other values"
        )),
        many => Ok(Change::Set(many.to_vec())),
    }
}

fn fields(flags: &KeyFlags, name: Option<String>) -> Result<KeyFields, String> {
    let expires = match flags.expires {
        None => Change::Keep,
        Some(Change::Set(d)) => {
            Change::Set(edit::later(SystemTime::now(), d, "--expires").map_err(|e| e.to_string())?)
        }
        Some(Change::Keep) => Change::Keep,
        Some(Change::Remove) => Change::Remove,
    };
    Ok(KeyFields {
        name,
        description: flags.description.clone(),
        scopes: flags.scopes.clone(),
        models: Change::from_option(flags.models.clone()),
        allowed_ips: list_flag(&flags.allow_ip, "--allow-ip")?,
        allowed_referrers: list_flag(&flags.allow_referrer, "--allow-referrer")?,
        requests_per_minute: flags.rpm.clone().unwrap_or_default(),
        tokens_per_minute: flags.tpm.clone().unwrap_or_default(),
        monthly_spend_usd: flags.monthly_budget.clone().unwrap_or_default(),
        max_concurrent_requests: flags.max_concurrent.clone().unwrap_or_default(),
        default_max_tokens: flags.default_max_tokens.clone().unwrap_or_default(),
        expires,
    })
}

/// After removing limits from a key: says which ones its environment still sets.
fn inherited_note(path: &Path, id: &str, removed: &[&str]) {
    if removed.is_empty() {
        return;
    }
    let Ok(config) = load(path) else { return };
    let Some(key) = config.keys.iter().find(|k| &*k.id == id) else {
        return;
    };
    let l = &key.limits;
    for name in removed {
        let still = match *name {
            "requests_per_minute" => l.requests_per_minute.map(|n| n.to_string()),
            "tokens_per_minute" => l.tokens_per_minute.map(|n| n.to_string()),
            "max_concurrent_requests" => l.max_concurrent_requests.map(|n| n.to_string()),
            "default_max_tokens" => l.default_max_tokens.map(|n| n.to_string()),
            "monthly_spend_usd" => l.monthly_spend_micros.map(crate::usage::cost::format_usd),
            _ => None,
        };
        if let Some(v) = still {
            println!(
                "note: {name} is still {v}, the default of environment {:?}",
                key.environment.name()
            );
        }
    }
}

fn create(
    path: &Path,
    name: String,
    environment: String,
    flags: &KeyFlags,
    json: bool,
) -> Result<(), String> {
    let spec = NewKey {
        name,
        description: flags.description.clone().unwrap_or_default(),
        environment,
        fields: KeyFields {
            description: None,
            ..fields(flags, None)?
        },
        expires_in: None,
    };
    let (id, key) = edit::create(path, &spec, SystemTime::now()).map_err(|e| e.to_string())?;
    if json {
        println!(
            "{}",
            json!({"id": id, "key": key.expose(), "name": spec.name, "environment": spec.environment})
        );
    } else {
        println!("created {id}");
        println!("key: {}", key.expose());
        println!("     (shown once: keygate stores only its hash)");
    }
    Ok(())
}

fn set_active(path: &Path, id: &str, active: bool) -> Result<(), String> {
    edit::set_active(path, id, active).map_err(|e| e.to_string())?;
    println!("{} {id}", if active { "activated" } else { "deactivated" });
    Ok(())
}

fn rotate(path: &Path, id: &str, grace: &str, json: bool) -> Result<(), String> {
    let grace = humantime::parse_duration(grace)
        .map_err(|e| format!("--grace {grace:?} is not a duration like 7d: {e}"))?;
    let now = SystemTime::now();
    let key = edit::rotate(path, id, grace, now).map_err(|e| e.to_string())?;
    let until = edit::later(now, grace, "--grace").map_or_else(
        |e| e.to_string(),
        |t| humantime::format_rfc3339_seconds(t).to_string(),
    );
    if json {
        println!(
            "{}",
            json!({"id": id, "key": key.expose(), "previous_valid_until": until})
        );
    } else {
        println!("rotated {id}");
        println!("key: {}", key.expose());
        println!("     (shown once; the previous secret stays valid until {until})");
    }
    Ok(())
}

fn load(path: &Path) -> Result<Config, String> {
    crate::config::load(path).map_err(|e| e.to_string())
}

/// What the ledger (and, if reachable, the running gateway) knows of a key's use; with the
/// reason the live windows are missing, when they are.
fn key_use(
    config: &Config,
    ledger: Option<&Ledger>,
    id: &str,
    month: u32,
) -> (KeyUse, Option<String>) {
    let spend = ledger
        .and_then(|l| l.month_spend(month).ok())
        .and_then(|m| m.get(id).copied());
    let (windows, why) = match live_windows(config, id) {
        Ok(w) => (Some(w), None),
        Err(why) => (None, Some(why)),
    };
    let usage = KeyUse {
        last_used: ledger.and_then(|l| l.last_used(id).ok().flatten()),
        month_spend_micros: spend.unwrap_or(0),
        windows,
    };
    (usage, why)
}

fn list(path: &Path, format: ListFormat) -> Result<(), String> {
    let config = load(path)?;
    // One query for every key's last use.
    let mut used = Ledger::open_read_only(&config.storage.path)
        .ok()
        .and_then(|l| l.last_used_all().ok())
        .unwrap_or_default();
    let now = SystemTime::now();
    let rows: Vec<(&KeyPolicy, Option<String>)> = config
        .keys
        .iter()
        .map(|k| (k.as_ref(), used.remove(&*k.id)))
        .collect();
    // One buffered writer: a line per key must not cost a write per key.
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let created = |k: &KeyPolicy| humantime::format_rfc3339_seconds(k.created).to_string();
    match format {
        ListFormat::Table => {
            let _ = writeln!(
                out,
                "{:<22} {:<24} {:<9} {:<21} LAST_USED",
                "ID", "NAME", "STATUS", "CREATED"
            );
            for (k, last) in rows {
                let _ = writeln!(
                    out,
                    "{:<22} {:<24} {:<9} {:<21} {}",
                    &*k.id,
                    k.name,
                    keyinfo::status(k, now),
                    created(k),
                    last.as_deref().unwrap_or("never")
                );
            }
        }
        ListFormat::Csv => {
            let _ = writeln!(out, "id,name,status,created,last_used");
            for (k, last) in rows {
                let _ = writeln!(
                    out,
                    "{},{},{},{},{}",
                    &*k.id,
                    csv_field(&k.name),
                    keyinfo::status(k, now),
                    created(k),
                    last.as_deref().unwrap_or("")
                );
            }
        }
        ListFormat::Json => {
            let keys: Vec<Value> = rows
                .iter()
                .map(|(k, last)| json!({"id": &*k.id, "name": k.name, "status": keyinfo::status(k, now), "created": created(k), "last_used": last}))
                .collect();
            let _ = writeln!(out, "{}", json!(keys));
        }
    }
    out.flush()
        .map_err(|e| format!("cannot write the list: {e}"))
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn show(path: &Path, id: &str, as_json: bool) -> Result<(), String> {
    let config = load(path)?;
    let key = config
        .keys
        .iter()
        .find(|k| &*k.id == id)
        .ok_or_else(|| EditError::NotFound(id.into()).to_string())?;
    let ledger = Ledger::open_read_only(&config.storage.path).ok();
    let now = SystemTime::now();
    let (usage, unavailable) = key_use(&config, ledger.as_ref(), id, calendar::month_index(now));
    let v = keyinfo::describe(key, now, &usage);
    if as_json {
        println!("{v:#}");
        return Ok(());
    }
    if let Some(obj) = v.as_object() {
        for (field, value) in obj {
            let text = match (field.as_str(), value) {
                ("budget_used", Value::Number(n)) => {
                    format!("{:.2}%", n.as_f64().unwrap_or(0.0) * 100.0)
                }
                ("current_window", Value::Null) => format!(
                    "unavailable: {}",
                    unavailable.as_deref().unwrap_or("unknown")
                ),
                (_, Value::Null) => "-".to_owned(),
                (_, Value::String(s)) => s.clone(),
                (_, other) => other.to_string(),
            };
            println!("{field:<28} {text}");
        }
    }
    Ok(())
}

/// The running gateway's view of a key's request and token windows, through its admin API
/// (needs the admin token in the environment, as the gateway does); else why not, in words an
/// operator can act on.
fn live_windows(config: &Config, id: &str) -> Result<crate::limits::RateHeaders, String> {
    let env = &config.admin.token_env;
    let token = std::env::var(env)
        .ok()
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| {
            format!("{env} is not set here, so the gateway's admin API cannot be asked")
        })?;
    let mut addr = config.admin.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::IpAddr::from([127, 0, 0, 1]));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let body: Value = rt.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<bytes::Bytes>>();
        let url = format!("http://{addr}/admin/keys/{id}");
        let req = http::Request::get(&url)
            .header("authorization", format!("Bearer {}", token.trim()))
            .body(http_body_util::Full::default())
            .map_err(|e| e.to_string())?;
        let resp = match tokio::time::timeout(Duration::from_secs(2), client.request(req)).await {
            Err(_) => return Err(format!("the admin API at {addr} did not answer within 2 s")),
            Ok(Err(e)) => {
                return Err(format!(
                    "the admin API at {addr} is not reachable ({}): is the gateway running?",
                    std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string())
                ));
            }
            Ok(Ok(r)) => r,
        };
        match resp.status() {
            s if s.is_success() => {}
            http::StatusCode::UNAUTHORIZED => {
                return Err(format!(
                    "the admin API at {addr} refused the token in {env}: it is not the gateway's admin token"
                ));
            }
            http::StatusCode::NOT_FOUND => {
                return Err(format!(
                    "the gateway at {addr} does not know key {id} yet (it reloads the file within a second or two)"
                ));
            }
            s => return Err(format!("the admin API at {addr} answered {s}")),
        }
        let bytes = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map_err(|e| format!("the admin API at {addr} broke off: {e}"))?
            .to_bytes();
        serde_json::from_slice(&bytes)
            .map_err(|e| format!("the admin API at {addr} sent invalid JSON: {e}"))
    })?;
    let window = |v: &Value| {
        Some(crate::limits::Window {
            limit: v.get("limit")?.as_u64()?,
            remaining: v.get("remaining")?.as_u64()?,
            reset: Duration::ZERO,
        })
    };
    let w = body
        .get("current_window")
        .filter(|w| !w.is_null())
        .ok_or("the key has no per-minute limits")?;
    Ok(crate::limits::RateHeaders {
        requests: w.get("requests").and_then(window),
        tokens: w.get("tokens").and_then(window),
    })
}

/// The key to diagnose: as given, or read from standard input when given as `-`.
fn read_key(arg: String) -> Result<String, String> {
    if arg != "-" {
        return Ok(arg);
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the key from standard input: {e}"))?;
    Ok(line.trim().to_owned())
}

/// The seed's troubleshooting in one command.
fn diagnose(path: &Path, presented: &str) -> Result<(), String> {
    let config = load(path)?;
    let mut problems = 0;
    let mut say = |ok: bool, line: String| {
        if !ok {
            problems += 1;
        }
        println!("{} {line}", if ok { "ok  " } else { "FAIL" });
    };
    let digest = match key::verify(presented.trim()) {
        Ok(d) => {
            say(
                true,
                "well-formed keygate key (prefix, length and checksum are right)".into(),
            );
            d
        }
        Err(e) => {
            say(
                false,
                format!("{e}. Check that the whole key was copied, with no spaces."),
            );
            println!("\n1 problem: this is not a usable keygate key.");
            return Err("the key is malformed".into());
        }
    };
    let found = config.keys.iter().find_map(|k| {
        if k.digest == digest {
            Some((k, false))
        } else {
            k.previous
                .as_ref()
                .filter(|p| p.digest == digest)
                .map(|_| (k, true))
        }
    });
    let Some((k, previous)) = found else {
        say(
            false,
            format!(
                "unknown to {}: deleted, rotated out past its grace, or issued for another gateway",
                path.display()
            ),
        );
        return Err("the key is not in this config".into());
    };
    let now = SystemTime::now();
    say(
        true,
        format!(
            "known: key {} ({:?}, environment {})",
            &*k.id,
            k.name,
            k.environment.name()
        ),
    );
    if previous {
        let until = k.previous.as_ref().map(|p| p.expires);
        let valid = until.is_some_and(|u| u > now);
        say(
            valid,
            format!(
                "this is the key's PREVIOUS secret (rotation grace until {}): switch to the new secret{}",
                until.map_or_else(
                    || "-".into(),
                    |u| humantime::format_rfc3339_seconds(u).to_string()
                ),
                if valid { "" } else { "; the grace has ended" }
            ),
        );
    }
    say(
        k.active,
        if k.active {
            "active".into()
        } else {
            format!("inactive: run `keygate keys activate {}`", &*k.id)
        },
    );
    match k.expires {
        Some(e) if e <= now => say(
            false,
            format!(
                "expired at {}: rotate it or set a later expiry",
                humantime::format_rfc3339_seconds(e)
            ),
        ),
        Some(e) => say(
            true,
            format!("expires {}", humantime::format_rfc3339_seconds(e)),
        ),
        None => say(true, "never expires".into()),
    }
    let scopes: Vec<&str> = k.scopes.iter().map(|s| s.name()).collect();
    println!("     scopes: {}", scopes.join(", "));
    match &k.models {
        Some(m) => println!(
            "     models: {}",
            m.iter()
                .map(|m| m.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => println!("     models: any configured model within its scopes"),
    }
    let ips: Vec<String> = k.allowed_ips.nets().iter().map(|n| n.to_string()).collect();
    println!(
        "     allowed IPs: {}",
        if ips.is_empty() {
            "any".into()
        } else {
            ips.join(", ")
        }
    );
    let refs: Vec<&str> = k.allowed_referrers.patterns().collect();
    println!(
        "     allowed referrers: {}",
        if refs.is_empty() {
            "any".into()
        } else {
            format!(
                "{} (requests without Referer or Origin are refused)",
                refs.join(", ")
            )
        }
    );
    if !ips.is_empty() && config.server.trusted_proxies.is_empty() {
        println!(
            "     note: no trusted_proxies are set, so the client address is the socket peer: behind a load balancer, every request comes from the balancer's address"
        );
    }

    let ledger = Ledger::open_read_only(&config.storage.path).ok();
    let (usage, unavailable) = key_use(&config, ledger.as_ref(), &k.id, calendar::month_index(now));
    if let Some(budget) = k.limits.monthly_spend_micros {
        let used = if budget == 0 {
            1.0
        } else {
            usage.month_spend_micros as f64 / budget as f64
        };
        let line = format!(
            "monthly spend ${} of ${} ({:.0}%)",
            format_usd(usage.month_spend_micros),
            format_usd(budget),
            used * 100.0
        );
        let left = budget.saturating_sub(usage.month_spend_micros);
        let reservations = default_reservations(&config, k);
        let fitting = reservations.iter().filter(|r| r.cost <= left).count();
        if used >= 1.0 {
            say(
                false,
                format!(
                    "{line}: budget exhausted, requests get 429 budget_exceeded until next month or a higher limit"
                ),
            );
        } else if !reservations.is_empty() && fitting == 0 {
            // Even the cheapest request without max_tokens cannot be reserved.
            let r = reservations.iter().min_by_key(|r| r.cost).copied();
            if let Some(r) = r {
                say(
                    false,
                    format!(
                        "{line}: a request without max_tokens on {} reserves up to ${} (max_tokens {} by default), more than the ${} left, so it gets 429 budget_exceeded. {}",
                        r.model,
                        format_usd(r.cost),
                        r.cap,
                        format_usd(left),
                        fix(&r, left, &k.id)
                    ),
                );
            }
        } else {
            say(
                true,
                if used >= 0.8 {
                    format!("{line}: WARNING approaching the limit")
                } else {
                    line
                },
            );
            for r in reservations.iter().filter(|r| r.cost > left) {
                println!(
                    "     WARNING: a request without max_tokens on {} reserves up to ${} (max_tokens {} by default), more than the ${} left: it gets 429 budget_exceeded. {}",
                    r.model,
                    format_usd(r.cost),
                    r.cap,
                    format_usd(left),
                    fix(r, left, &k.id)
                );
            }
        }
    }
    match usage.windows {
        Some(w) => {
            for (name, window) in [("requests/min", w.requests), ("tokens/min", w.tokens)] {
                if let Some(w) = window {
                    let used = 1.0 - w.remaining as f64 / w.limit.max(1) as f64;
                    let line = format!(
                        "{name}: {} of {} used in the current window",
                        w.limit - w.remaining.min(w.limit),
                        w.limit
                    );
                    say(
                        used < 1.0,
                        if used >= 0.8 {
                            format!("{line}: WARNING approaching the limit")
                        } else {
                            line
                        },
                    );
                }
            }
        }
        None => println!(
            "     current rate-limit windows: unavailable: {}",
            unavailable.as_deref().unwrap_or("unknown")
        ),
    }
    println!(
        "     last used: {}",
        usage.last_used.unwrap_or_else(|| "never".into())
    );
    if problems == 0 {
        println!("\nno problems: requests with this key should be accepted");
        Ok(())
    } else {
        Err(format!("{problems} problem(s) found"))
    }
}

/// What a small request without `max_tokens` reserves against a budget on one model.
#[derive(Debug, Clone, Copy)]
struct DefaultReservation<'a> {
    model: &'a str,
    /// The completion cap it runs with: the key's `default_max_tokens`, else the model's, else
    /// 4096.
    cap: u64,
    cost: u64,
    /// Micro-dollars per million output tokens, to say which cap would fit.
    output_price: u64,
    prompt_cost: u64,
}

/// A short chat's body, for the prompt part of the reservation.
const SMALL_REQUEST_BYTES: usize = 200;

/// Per model the key may use: what a small request without `max_tokens` reserves.
fn default_reservations<'a>(config: &'a Config, k: &KeyPolicy) -> Vec<DefaultReservation<'a>> {
    use crate::limits::estimate;
    config
        .models
        .iter()
        .filter(|m| k.may_use(m))
        .filter(|m| m.per_request_micros.is_none() || m.price.output > 0)
        .map(|m| {
            let cap = k.default_cap(m);
            let prompt = estimate::prompt_ceiling(SMALL_REQUEST_BYTES);
            DefaultReservation {
                model: &m.name,
                cap,
                cost: crate::usage::cost::worst_case(&m.price, prompt, cap),
                output_price: m.price.output,
                prompt_cost: crate::usage::cost::worst_case(&m.price, prompt, 0),
            }
        })
        .collect()
}

/// How to make such a request fit in what is left.
fn fix(r: &DefaultReservation<'_>, left: u64, id: &str) -> String {
    let fits = left
        .saturating_sub(r.prompt_cost)
        .saturating_mul(1_000_000)
        .checked_div(r.output_price)
        .unwrap_or(0);
    if fits == 0 {
        "Raise monthly_spend_usd: not even a short prompt fits.".to_owned()
    } else {
        format!(
            "Send max_tokens of at most {fits} (a short prompt), lower the key's default_max_tokens (`keygate keys update {id} --default-max-tokens {fits}`), or raise monthly_spend_usd."
        )
    }
}
