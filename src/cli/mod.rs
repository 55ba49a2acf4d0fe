//! The `keygate` command line: one file per subcommand family.

pub mod check;
pub mod keys;
pub mod serve;
pub mod usage;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config::edit::Change;

#[derive(Debug, Parser)]
#[command(
    name = "keygate",
    version,
    about = "An authenticating, metering gateway for OpenAI-compatible APIs"
)]
pub struct Cli {
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "KEYGATE_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve {
        #[arg(long, default_value = "config/keygate.toml")]
        config: PathBuf,
    },
    /// Validate a config file: exit 0 if it is valid, 1 with every problem listed if not.
    Check {
        #[arg(long, default_value = "config/keygate.toml")]
        config: PathBuf,
    },
    /// Usage per key and day, with totals; works whether or not the gateway runs.
    Usage {
        /// Only this key.
        key_id: Option<String>,
        #[arg(long, default_value = "config/keygate.toml")]
        config: PathBuf,
        /// How many days back, today included.
        #[arg(long, default_value_t = 30)]
        days: u32,
        #[arg(long, value_enum, default_value_t = usage::Format::Table)]
        format: usage::Format,
        /// Read this ledger instead of storage.path; repeat it to sum several replicas'
        /// ledgers.
        #[arg(long = "ledger")]
        ledgers: Vec<PathBuf>,
        /// Per key: current per-minute limits, the busiest minute's requests and tokens over
        /// the period, and suggested limits (peak + 20%, at least 100 requests and 10000
        /// tokens).
        #[arg(long, conflicts_with = "by_model")]
        suggest_limits: bool,
        /// Per key and model: requests, average tokens per request, cost, and the saving at
        /// the cheapest configured model of the same scope.
        #[arg(long)]
        by_model: bool,
    },
    /// Manage keys.
    #[command(subcommand)]
    Keys(Box<KeysCommand>),
}

// `--config`, shared by every `keys` subcommand. (A plain comment: clap would show a doc
// comment here as the text of a subcommand that has none.)
#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    #[arg(long, default_value = "config/keygate.toml")]
    pub config: PathBuf,
}

/// Settings a key can be created or updated with. On `update`, `none` removes a limit (the
/// key falls back to its environment's default, if any), `never` removes the expiry and
/// `--allow-ip none` / `--allow-referrer none` clear the lists.
#[derive(Debug, Default, clap::Args)]
pub struct KeyFlags {
    /// Comma-separated scopes (chat, code, image, audio, embeddings, files, fine_tuning).
    #[arg(long, value_delimiter = ',')]
    pub scopes: Option<Vec<String>>,
    /// Comma-separated models the key may use.
    #[arg(long, value_delimiter = ',')]
    pub models: Option<Vec<String>>,
    /// Requests per minute, or `none`.
    #[arg(long, value_name = "N|none", value_parser = count)]
    pub rpm: Option<Change<u64>>,
    /// Tokens per minute, or `none`.
    #[arg(long, value_name = "N|none", value_parser = count)]
    pub tpm: Option<Change<u64>>,
    /// Monthly spending limit in USD, or `none`.
    #[arg(long, value_name = "USD|none", value_parser = usd)]
    pub monthly_budget: Option<Change<f64>>,
    /// Concurrent requests, or `none`.
    #[arg(long, value_name = "N|none", value_parser = count)]
    pub max_concurrent: Option<Change<u64>>,
    /// Completion tokens reserved (and written upstream) for a request that sets no
    /// `max_tokens`, or `none`.
    #[arg(long, value_name = "N|none", value_parser = count)]
    pub default_max_tokens: Option<Change<u64>>,
    /// An address or CIDR the key may be used from (repeatable; replaces the list; `none`
    /// clears it: any address).
    #[arg(long = "allow-ip", value_name = "CIDR|none")]
    pub allow_ip: Vec<String>,
    /// A referrer pattern like 'https://example.com/*' (repeatable; replaces the list; `none`
    /// clears it: any referrer).
    #[arg(long = "allow-referrer", value_name = "PATTERN|none")]
    pub allow_referrer: Vec<String>,
    /// Lifetime from now, like 90d, or `never`.
    #[arg(long, value_name = "DURATION|never", value_parser = lifetime)]
    pub expires: Option<Change<std::time::Duration>>,
    #[arg(long)]
    pub description: Option<String>,
}

/// `N` (at least 1) or `none`.
fn count(s: &str) -> Result<Change<u64>, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(Change::Remove);
    }
    match s.parse::<u64>() {
        Ok(0) => Err("must be at least 1; `none` removes the limit".into()),
        Ok(n) if n > u64::from(u32::MAX) => Err(format!("must be at most {}", u32::MAX)),
        Ok(n) => Ok(Change::Set(n)),
        Err(_) => Err(format!("{s:?} is not a whole number or `none`")),
    }
}

/// An amount of USD (0 stops the key's paid requests) or `none`.
fn usd(s: &str) -> Result<Change<f64>, String> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(Change::Remove);
    }
    crate::config::validate::usd_micros(s.parse::<f64>().map_err(|_| {
        format!("{s:?} is not an amount of USD or `none` (which removes the budget)")
    })?)
    .map(|micros| Change::Set(micros as f64 / 1e6))
}

/// A duration like `90d` or `never`.
fn lifetime(s: &str) -> Result<Change<std::time::Duration>, String> {
    if s.eq_ignore_ascii_case("never") {
        return Ok(Change::Remove);
    }
    humantime::parse_duration(s)
        .map(Change::Set)
        .map_err(|e| format!("{s:?} is not a duration like 90d or `never`: {e}"))
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key: prints it once, writes only its hash.
    Create {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        name: String,
        /// production, development or restricted.
        #[arg(long = "env")]
        environment: String,
        #[command(flatten)]
        flags: KeyFlags,
        /// Print a JSON object, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// List keys: ID NAME STATUS CREATED LAST_USED.
    List {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
    /// Everything about one key except secrets.
    Show {
        id: String,
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
    },
    /// Change a key's scopes, models, limits, IPs, referrers, description, name or expiry.
    Update {
        id: String,
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        flags: KeyFlags,
    },
    /// Refuse a key (401 inactive_api_key) until it is activated again.
    Deactivate {
        id: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Accept a deactivated key again.
    Activate {
        id: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Remove a key from the config (its usage stays in the ledger).
    Delete {
        id: String,
        #[command(flatten)]
        config: ConfigArg,
        /// Required: deleting cannot be undone.
        #[arg(long)]
        yes: bool,
    },
    /// New secret, same id; the old secret stays valid for the grace period.
    Rotate {
        id: String,
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long, default_value = "7d")]
        grace: String,
        #[arg(long)]
        json: bool,
    },
    /// Why would this key be refused right now, and what to do about it.
    Diagnose {
        /// The key, or `-` to read it from standard input (a key on the command line shows
        /// in `ps` and in shell history).
        key: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print a new key (shown this once) and the `hash = ...` line to put in its [[keys]] table.
    Generate {
        /// Print a JSON object instead, for scripts.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
    Csv,
}

/// Sets up logging to stderr: `RUST_LOG` filters (default `info`), `--log-format` picks text or
/// JSON. Lines are batched by [`crate::logging`]; the returned guard writes what is left when
/// dropped at exit.
pub fn init_tracing(format: LogFormat) -> Option<crate::logging::FlushGuard> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = match crate::logging::BatchedStderr::start() {
        Ok((writer, guard)) => (writer, Some(guard)),
        Err(e) => {
            eprintln!("keygate: cannot start the log writer: {e}");
            return None;
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    match format {
        LogFormat::Text => builder
            .event_format(crate::logging::text::Text::default())
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .event_format(crate::logging::json::Json::default())
            .init(),
    }
    guard
}
