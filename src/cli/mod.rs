//! The `keygate` command line: one file per subcommand family.

pub mod check;
pub mod keys;
pub mod serve;
pub mod usage;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

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

/// `--config`, shared by every `keys` subcommand.
#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    #[arg(long, default_value = "config/keygate.toml")]
    pub config: PathBuf,
}

/// Settings a key can be created or updated with.
#[derive(Debug, Default, clap::Args)]
pub struct KeyFlags {
    /// Comma-separated scopes (chat, code, image, audio, embeddings, files, fine_tuning).
    #[arg(long, value_delimiter = ',')]
    pub scopes: Option<Vec<String>>,
    /// Comma-separated models the key may use.
    #[arg(long, value_delimiter = ',')]
    pub models: Option<Vec<String>>,
    /// Requests per minute.
    #[arg(long)]
    pub rpm: Option<u64>,
    /// Tokens per minute.
    #[arg(long)]
    pub tpm: Option<u64>,
    /// Monthly spending limit in USD.
    #[arg(long)]
    pub monthly_budget: Option<f64>,
    /// Concurrent requests.
    #[arg(long)]
    pub max_concurrent: Option<u64>,
    /// An address or CIDR the key may be used from (repeatable; replaces the list).
    #[arg(long = "allow-ip")]
    pub allow_ip: Vec<String>,
    /// A referrer pattern like 'https://example.com/*' (repeatable; replaces the list).
    #[arg(long = "allow-referrer")]
    pub allow_referrer: Vec<String>,
    /// Lifetime from now, like 90d.
    #[arg(long)]
    pub expires: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
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
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    guard
}
