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
    },
    /// Manage keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Print a new key (shown this once) and the `hash = ...` line to put in its [[keys]] table.
    Generate {
        /// Print a JSON object instead, for scripts.
        #[arg(long)]
        json: bool,
    },
}

/// Sets up logging to stderr: `RUST_LOG` filters (default `info`), `--log-format` picks text or
/// JSON. Lines are written by a background thread so a slow stderr never blocks a request; the
/// returned guard flushes what is queued when dropped at exit.
pub fn init_tracing(format: LogFormat) -> tracing_appender::non_blocking::WorkerGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
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
