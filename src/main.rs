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
            suggest_limits,
            by_model,
        } => {
            let report = if suggest_limits {
                cli::usage::Report::SuggestLimits
            } else if by_model {
                cli::usage::Report::ByModel
            } else {
                cli::usage::Report::Daily
            };
            cli::usage::run(&config, &ledgers, key_id.as_deref(), days, format, report)
        }
        Command::Keys(command) => cli::keys::run(*command),
        Command::Serve { config } => cli::serve::run(&config),
    }
}
