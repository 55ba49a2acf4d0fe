//! The admin API's key endpoints and event list. Every change goes through
//! [`crate::config::edit`] (the same code as the CLI), is applied at once by a reload, and is
//! recorded as an `admin_change` event.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::edit::{self, Change, EditError, KeyFields, NewKey};
use crate::events::Event;
use crate::keyinfo::{self, KeyUse};
use crate::state::Gateway;
use crate::usage::{Ledger, calendar};

/// An admin answer: status and JSON body.
pub type Answer = (StatusCode, Value);

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Answer {
    (
        status,
        json!({"error": {"message": message.into(), "type": "invalid_request_error", "code": code}}),
    )
}

/// A field of a JSON merge patch (RFC 7396): absent keeps, `null` removes, a value sets.
fn patch<'de, D, T>(d: D) -> Result<Change<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.map_or(Change::Remove, Change::Set))
}

#[derive(Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
struct LimitsBody {
    #[serde(default, deserialize_with = "patch")]
    requests_per_minute: Change<u64>,
    #[serde(default, deserialize_with = "patch")]
    tokens_per_minute: Change<u64>,
    #[serde(default, deserialize_with = "patch")]
    monthly_spend_usd: Change<f64>,
    #[serde(default, deserialize_with = "patch")]
    max_concurrent_requests: Change<u64>,
    #[serde(default, deserialize_with = "patch")]
    default_max_tokens: Change<u64>,
}

/// The body of `POST /admin/keys` and `PATCH /admin/keys/{id}`: a JSON merge patch, so on
/// `PATCH` `null` removes a setting (`"limits": null` every limit of the key) and `[]` clears a
/// list.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct KeyBody {
    #[serde(default, deserialize_with = "patch")]
    name: Change<String>,
    #[serde(default, deserialize_with = "patch")]
    description: Change<String>,
    environment: Option<String>,
    #[serde(default, deserialize_with = "patch")]
    scopes: Change<Vec<String>>,
    #[serde(default, deserialize_with = "patch")]
    models: Change<Vec<String>>,
    #[serde(default, deserialize_with = "patch")]
    allowed_ips: Change<Vec<String>>,
    #[serde(default, deserialize_with = "patch")]
    allowed_referrers: Change<Vec<String>>,
    #[serde(default, deserialize_with = "patch")]
    limits: Change<LimitsBody>,
    /// A lifetime from now, like "90d"; `null` or "never" removes the expiry.
    #[serde(default, deserialize_with = "patch")]
    expires_in: Change<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    grace: Option<String>,
}

fn duration(text: &str, field: &str) -> Result<Duration, Answer> {
    humantime::parse_duration(text).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("{field}: {text:?} is not a duration like \"7d\": {e}"),
        )
    })
}

impl KeyBody {
    fn fields(&self, now: SystemTime) -> Result<KeyFields, Answer> {
        let expires = match &self.expires_in {
            Change::Keep => Change::Keep,
            Change::Remove => Change::Remove,
            Change::Set(t) if t.eq_ignore_ascii_case("never") => Change::Remove,
            Change::Set(t) => Change::Set(
                edit::later(now, duration(t, "expires_in")?, "expires_in").map_err(edit_error)?,
            ),
        };
        let limits = match &self.limits {
            Change::Keep => LimitsBody::default(),
            Change::Set(l) => l.clone(),
            Change::Remove => LimitsBody {
                requests_per_minute: Change::Remove,
                tokens_per_minute: Change::Remove,
                monthly_spend_usd: Change::Remove,
                max_concurrent_requests: Change::Remove,
                default_max_tokens: Change::Remove,
            },
        };
        let required = |field: &str| {
            error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("{field} cannot be removed, only changed"),
            )
        };
        let name = match &self.name {
            Change::Keep => None,
            Change::Set(n) => Some(n.clone()),
            Change::Remove => return Err(required("name")),
        };
        let scopes = match &self.scopes {
            Change::Keep => None,
            Change::Set(s) => Some(s.clone()),
            Change::Remove => return Err(required("scopes")),
        };
        let description = match &self.description {
            Change::Keep => None,
            Change::Set(d) => Some(d.clone()),
            Change::Remove => Some(String::new()),
        };
        Ok(KeyFields {
            name,
            description,
            scopes,
            models: self.models.clone(),
            allowed_ips: self.allowed_ips.clone(),
            allowed_referrers: self.allowed_referrers.clone(),
            requests_per_minute: limits.requests_per_minute,
            tokens_per_minute: limits.tokens_per_minute,
            monthly_spend_usd: limits.monthly_spend_usd,
            max_concurrent_requests: limits.max_concurrent_requests,
            default_max_tokens: limits.default_max_tokens,
            expires,
        })
    }
}

fn parse<T: for<'de> Deserialize<'de> + Default>(body: &[u8]) -> Result<T, Answer> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    // The member at fault is named (`limits.requests_per_minute: invalid value: ...`).
    let mut de = serde_json::Deserializer::from_slice(body);
    let invalid = |e: &dyn std::fmt::Display| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("invalid JSON body: {e}"),
        )
    };
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| invalid(&e))?;
    // Nothing but white space may follow the document.
    de.end().map_err(|e| invalid(&e))?;
    Ok(value)
}

fn edit_error(e: EditError) -> Answer {
    match e {
        EditError::NotFound(id) => error(
            StatusCode::NOT_FOUND,
            "key_not_found",
            format!("no key with id {id:?}"),
        ),
        EditError::Conflict(message) => error(StatusCode::CONFLICT, "conflict", message),
        e @ EditError::ReadOnly(_) => {
            error(StatusCode::FORBIDDEN, "config_read_only", e.to_string())
        }
        EditError::Invalid(problems) => (
            StatusCode::BAD_REQUEST,
            json!({"error": {"message": "the change was refused; the config is unchanged", "type": "invalid_request_error", "code": "invalid_config", "problems": problems}}),
        ),
        e @ (EditError::Io { .. } | EditError::Syntax { .. }) => {
            tracing::error!(target: "keygate::admin", error = %e, "config edit failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "edit_failed",
                e.to_string(),
            )
        }
    }
}

/// Runs a file edit off the async threads, reloads so it applies at once, and records the
/// change. It runs as its own task, so a client that hangs up cannot leave a change half done
/// (written but not applied or not recorded).
async fn change<T: Send + 'static>(
    gw: &Arc<Gateway>,
    action: &'static str,
    key_id: impl FnOnce(&T) -> String + Send + 'static,
    edit: impl FnOnce(&std::path::Path) -> Result<T, EditError> + Send + 'static,
) -> Result<T, Answer> {
    let Some(path) = gw.config_path.clone() else {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_config_file",
            "this gateway was not started from a config file",
        ));
    };
    let gw = gw.clone();
    let task = tokio::spawn(async move {
        // The edit and the reload read and write files: off the async threads, on the reload
        // thread, where the edit's transient memory is reused by the reloads' (measured: ten
        // edits in a row with 100,000 keys left 33 MB behind there, 40 to 75 MB on the
        // blocking pool). The reload follows the edit in the same job and records the version
        // it read, so the file watcher does not read that version again.
        let reloader = gw.clone();
        let result = crate::reload::on_reload_thread(move || {
            let edited = edit(&path);
            if edited.is_ok() {
                crate::reload::reload(&reloader, &path);
            }
            edited
        })
        .await
        .ok_or_else(|| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "edit_failed",
                "the edit failed unexpectedly; check the config file with keygate check",
            )
        })?
        .map_err(edit_error)?;
        gw.metering.events.record(Event {
            time: SystemTime::now(),
            kind: crate::events::EventKind::AdminChange,
            reason: action,
            key_id: Some(Arc::from(key_id(&result))),
            client_ip: None,
            detail: None,
            request_id: None,
        });
        Ok(result)
    });
    task.await.map_err(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "edit_failed",
            e.to_string(),
        )
    })?
}

/// [`change`] for an existing key: the event names it.
async fn change_key<T: Send + 'static>(
    gw: &Arc<Gateway>,
    action: &'static str,
    id: &str,
    edit: impl FnOnce(&std::path::Path, &str) -> Result<T, EditError> + Send + 'static,
) -> Result<T, Answer> {
    let (for_edit, for_event) = (id.to_owned(), id.to_owned());
    change(
        gw,
        action,
        move |_: &T| for_event,
        move |p| edit(p, &for_edit),
    )
    .await
}

/// What `read` finds in the ledger, read off the async threads; `None` when the ledger cannot
/// be opened or read.
async fn from_ledger<T: Send + 'static>(
    gw: &Gateway,
    read: impl FnOnce(&Ledger) -> Option<T> + Send + 'static,
) -> Option<T> {
    let path = gw.runtime().config.storage.path.clone();
    tokio::task::spawn_blocking(move || read(&Ledger::open_read_only(&path).ok()?))
        .await
        .ok()
        .flatten()
}

/// Every key's last use.
pub(crate) async fn last_used(gw: &Gateway) -> HashMap<String, String> {
    from_ledger(gw, |l| l.last_used_all().ok())
        .await
        .unwrap_or_default()
}

/// A key as the admin API shows it, with its last use.
fn describe_key(gw: &Gateway, key: &crate::config::KeyPolicy, last_used: Option<String>) -> Value {
    let metering = &gw.metering;
    let now = metering.clock.now_utc();
    let usage = KeyUse {
        last_used,
        month_spend_micros: metering
            .limits
            .month_spend(&key.id, calendar::month_index(now)),
        windows: Some(metering.limits.windows(&key.id, &key.limits)),
    };
    keyinfo::describe(key, now, &usage)
}

/// One key as the admin API shows it, its last use read from the ledger (only that key's).
async fn describe(gw: &Gateway, id: &str) -> Option<Value> {
    let rt = gw.runtime();
    let key = rt.config.keys.iter().find(|k| &*k.id == id)?.clone();
    let owned = id.to_owned();
    let last_used = from_ledger(gw, move |l| l.last_used(&owned).ok().flatten()).await;
    Some(describe_key(gw, &key, last_used))
}

pub async fn handle(
    gw: &Arc<Gateway>,
    method: &http::Method,
    segments: &[&str],
    query: Option<&str>,
    body: &[u8],
) -> Answer {
    use http::Method;
    // The gateway's clock (injectable in tests), so expiry and grace follow the same time the
    // gateway authenticates with.
    let now = gw.metering.clock.now_utc();
    let result: Result<Answer, Answer> = async {
        match (method, segments) {
            (&Method::GET, ["keys"]) => {
                let rt = gw.runtime();
                let mut used = last_used(gw).await;
                let keys: Vec<Value> = rt
                    .config
                    .keys
                    .iter()
                    .map(|k| describe_key(gw, k, used.remove(&*k.id)))
                    .collect();
                Ok((StatusCode::OK, json!({"keys": keys})))
            }
            (&Method::POST, ["keys"]) => {
                let b: KeyBody = parse(body)?;
                let (Change::Set(name), Some(environment)) =
                    (b.name.clone(), b.environment.clone())
                else {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "a new key needs \"name\" and \"environment\"",
                    ));
                };
                let spec = NewKey {
                    name,
                    description: match &b.description {
                        Change::Set(d) => d.clone(),
                        _ => String::new(),
                    },
                    environment,
                    fields: KeyFields {
                        name: None,
                        description: None,
                        ..b.fields(now)?
                    },
                    expires_in: None,
                };
                let (id, key) = change(
                    gw,
                    "key_created",
                    |(id, _): &(String, _)| id.clone(),
                    move |p| edit::create(p, &spec, now),
                )
                .await?;
                let mut v = describe(gw, &id).await.unwrap_or_else(|| json!({"id": id}));
                v["key"] = json!(key.expose());
                Ok((StatusCode::CREATED, v))
            }
            (&Method::GET, ["keys", id]) => describe(gw, id)
                .await
                .map(|v| (StatusCode::OK, v))
                .ok_or_else(|| {
                    error(
                        StatusCode::NOT_FOUND,
                        "key_not_found",
                        format!("no key with id {id:?}"),
                    )
                }),
            (&Method::PATCH, ["keys", id]) => {
                let b: KeyBody = parse(body)?;
                if b.environment.is_some() {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "a key's environment cannot change; create a new key",
                    ));
                }
                let fields = b.fields(now)?;
                change_key(gw, "key_updated", id, move |p, id| {
                    edit::update(p, id, &fields)
                })
                .await?;
                Ok((
                    StatusCode::OK,
                    describe(gw, id).await.unwrap_or(Value::Null),
                ))
            }
            (&Method::DELETE, ["keys", id]) => {
                change_key(gw, "key_deleted", id, edit::delete).await?;
                Ok((StatusCode::OK, json!({"id": id, "deleted": true})))
            }
            (&Method::POST, ["keys", id, action @ ("activate" | "deactivate")]) => {
                let active = *action == "activate";
                let what = if active {
                    "key_activated"
                } else {
                    "key_deactivated"
                };
                change_key(gw, what, id, move |p, id| edit::set_active(p, id, active)).await?;
                Ok((
                    StatusCode::OK,
                    describe(gw, id).await.unwrap_or(Value::Null),
                ))
            }
            (&Method::POST, ["keys", id, "rotate"]) => {
                let b: RotateBody = parse(body)?;
                let grace = duration(b.grace.as_deref().unwrap_or("7d"), "grace")?;
                let key = change_key(gw, "key_rotated", id, move |p, id| {
                    edit::rotate(p, id, grace, now)
                })
                .await?;
                let mut v = describe(gw, id).await.unwrap_or_else(|| json!({"id": id}));
                v["key"] = json!(key.expose());
                Ok((StatusCode::OK, v))
            }
            (&Method::GET, ["keys", id, "usage"]) => {
                let days: u64 = query_param(query, "days")
                    .and_then(|d| d.parse().ok())
                    .unwrap_or(30)
                    .clamp(1, 3650);
                let rt = gw.runtime();
                if !rt.config.keys.iter().any(|k| &*k.id == *id) {
                    return Err(error(
                        StatusCode::NOT_FOUND,
                        "key_not_found",
                        format!("no key with id {id:?}"),
                    ));
                }
                let since = calendar::days_before(now, days - 1);
                let path = rt.config.storage.path.clone();
                let owned = id.to_string();
                let since2 = since.clone();
                let rows = tokio::task::spawn_blocking(move || {
                    Ledger::open_read_only(&path)
                        .and_then(|l| l.daily(Some(&owned), &since2).map_err(|e| e.to_string()))
                })
                .await
                .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, "ledger", e.to_string()))?
                .unwrap_or_default();
                Ok((
                    StatusCode::OK,
                    json!({"key_id": id, "since": since, "days": days, "rows": rows}),
                ))
            }
            (&Method::GET, ["events"]) => {
                let limit: usize = query_param(query, "limit")
                    .and_then(|d| d.parse().ok())
                    .unwrap_or(100)
                    .clamp(1, 1000);
                let events: Vec<Value> = gw
                    .metering
                    .events
                    .recent(limit)
                    .iter()
                    .map(crate::events::Entry::to_json)
                    .collect();
                Ok((StatusCode::OK, json!({"events": events})))
            }
            _ => Err(error(
                StatusCode::NOT_FOUND,
                "unknown_route",
                "Unknown admin route.",
            )),
        }
    }
    .await;
    result.unwrap_or_else(|e| e)
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}
