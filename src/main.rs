use std::process::ExitCode;

use clap::Parser;
use keygate::cli::{self, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _log_guard = cli::init_tracing(cli.log_format);
    match cli.command {
        Command::Check { config } => cli::check::run(&config),
        Command::Usage {
            key_id,
            config,
            days,
            format,
            ledgers,
        } => cli::usage::run(&config, &ledgers, key_id.as_deref(), days, format),
        Command::Keys(command) => cli::keys::run(*command),
        Command::Serve { config } => cli::serve::run(&config),
    }
}
