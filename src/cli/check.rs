//! `keygate check`: validate a config file the way `serve` would, and say precisely what is wrong.

use std::path::Path;
use std::process::ExitCode;

pub fn run(path: &Path) -> ExitCode {
    match crate::config::load(path) {
        Ok(config) => {
            let env = &config.upstream.api_key_env;
            if std::env::var(env).map_or(true, |v| v.trim().is_empty()) {
                eprintln!(
                    "warning: upstream.api_key_env: ${env} is not set; requests would fail with 502"
                );
            }
            println!(
                "{}: OK ({} keys, {} models)",
                path.display(),
                config.keys.len(),
                config.models.iter().count()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            for problem in &e.problems {
                eprintln!("error: {problem}");
            }
            eprintln!(
                "{}: invalid ({} problems)",
                path.display(),
                e.problems.len()
            );
            ExitCode::FAILURE
        }
    }
}
