//! `keygate keys ...`: key management on the config file (through [`crate::config::edit`], the
//! same code as the admin API). A running gateway picks each change up within a second.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use super::{KeyFlags, KeysCommand, ListFormat};
use crate::auth::{ApiKey, key};
use crate::config::edit::{self, EditError, KeyFields, NewKey};
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

fn fields(flags: &KeyFlags, name: Option<String>) -> Result<KeyFields, String> {
    let expires = match &flags.expires {
        Some(t) => {
            let d = humantime::parse_duration(t)
                .map_err(|e| format!("--expires {t:?} is not a duration like 90d: {e}"))?;
            Some(edit::later(SystemTime::now(), d, "--expires").map_err(|e| e.to_string())?)
        }
        None => None,
    };
    let list = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
    Ok(KeyFields {
        name,
        description: flags.description.clone(),
        scopes: flags.scopes.clone(),
        models: flags.models.clone(),
        allowed_ips: list(&flags.allow_ip),
        allowed_referrers: list(&flags.allow_referrer),
        requests_per_minute: flags.rpm,
        tokens_per_minute: flags.tpm,
        monthly_spend_usd: flags.monthly_budget,
        max_concurrent_requests: flags.max_concurrent,
        expires,
    })
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

/// What the ledger (and, if reachable, the running gateway) knows of a key's use.
fn key_use(config: &Config, ledger: Option<&Ledger>, id: &str, month: u32) -> KeyUse {
    let spend = ledger
        .and_then(|l| l.month_spend(month).ok())
        .and_then(|m| m.get(id).copied());
    KeyUse {
        last_used: ledger.and_then(|l| l.last_used(id).ok().flatten()),
        month_spend_micros: spend.unwrap_or(0),
        windows: live_windows(config, id),
    }
}

fn list(path: &Path, format: ListFormat) -> Result<(), String> {
    let config = load(path)?;
    let ledger = Ledger::open_read_only(&config.storage.path).ok();
    let now = SystemTime::now();
    let rows: Vec<(&KeyPolicy, String)> = config
        .keys
        .iter()
        .map(|k| {
            let last = ledger
                .as_ref()
                .and_then(|l| l.last_used(&k.id).ok().flatten());
            (k.as_ref(), last.unwrap_or_else(|| "never".into()))
        })
        .collect();
    let created = |k: &KeyPolicy| humantime::format_rfc3339_seconds(k.created).to_string();
    match format {
        ListFormat::Table => {
            println!(
                "{:<22} {:<24} {:<9} {:<21} LAST_USED",
                "ID", "NAME", "STATUS", "CREATED"
            );
            for (k, last) in rows {
                println!(
                    "{:<22} {:<24} {:<9} {:<21} {last}",
                    &*k.id,
                    k.name,
                    keyinfo::status(k, now),
                    created(k)
                );
            }
        }
        ListFormat::Csv => {
            println!("id,name,status,created,last_used");
            for (k, last) in rows {
                println!(
                    "{},{},{},{},{last}",
                    &*k.id,
                    csv_field(&k.name),
                    keyinfo::status(k, now),
                    created(k)
                );
            }
        }
        ListFormat::Json => {
            let keys: Vec<Value> = rows
                .iter()
                .map(|(k, last)| json!({"id": &*k.id, "name": k.name, "status": keyinfo::status(k, now), "created": created(k), "last_used": last}))
                .collect();
            println!("{}", json!(keys));
        }
    }
    Ok(())
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
    let usage = key_use(&config, ledger.as_ref(), id, calendar::month_index(now));
    let v = keyinfo::describe(key, now, &usage);
    if as_json {
        println!("{v:#}");
        return Ok(());
    }
    if let Some(obj) = v.as_object() {
        for (field, value) in obj {
            let text = match value {
                Value::Null => "-".to_owned(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            println!("{field:<28} {text}");
        }
    }
    if usage.windows.is_none() {
        println!(
            "{:<28} unavailable (the gateway's admin API is not reachable from here)",
            "current_window"
        );
    }
    Ok(())
}

/// The running gateway's view of a key's request and token windows, through its admin API
/// (needs the admin token in the environment, as the gateway does).
fn live_windows(config: &Config, id: &str) -> Option<crate::limits::RateHeaders> {
    let token = std::env::var(&config.admin.token_env)
        .ok()
        .filter(|t| !t.trim().is_empty())?;
    let mut addr = config.admin.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::IpAddr::from([127, 0, 0, 1]));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    let body: Value = rt.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<bytes::Bytes>>();
        let req = http::Request::get(format!("http://{addr}/admin/keys/{id}"))
            .header("authorization", format!("Bearer {}", token.trim()))
            .body(http_body_util::Full::default())
            .ok()?;
        let resp = tokio::time::timeout(Duration::from_secs(1), client.request(req))
            .await
            .ok()?
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let bytes = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .ok()?
            .to_bytes();
        serde_json::from_slice(&bytes).ok()
    })?;
    let window = |v: &Value| {
        Some(crate::limits::Window {
            limit: v.get("limit")?.as_u64()?,
            remaining: v.get("remaining")?.as_u64()?,
            reset: Duration::ZERO,
        })
    };
    let w = body.get("current_window")?;
    Some(crate::limits::RateHeaders {
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
    let usage = key_use(&config, ledger.as_ref(), &k.id, calendar::month_index(now));
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
        if used >= 1.0 {
            say(
                false,
                format!(
                    "{line}: budget exhausted, requests get 429 budget_exceeded until next month or a higher limit"
                ),
            );
        } else {
            say(
                true,
                if used >= 0.8 {
                    format!("{line}: WARNING approaching the limit")
                } else {
                    line
                },
            );
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
            "     current rate-limit windows: unavailable (the gateway's admin API is not reachable)"
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
