//! `keygate keys ...`: key management from the command line.

use std::process::ExitCode;

use crate::auth::ApiKey;

/// Prints a fresh key once, with the hash line the config stores in its place.
pub fn generate(json: bool) -> ExitCode {
    let key = ApiKey::generate();
    let hash = key.digest().to_string();
    if json {
        println!("{}", serde_json::json!({"key": key.expose(), "hash": hash}));
    } else {
        println!("key:  {}", key.expose());
        println!("      (shown once: give it to the application; keygate stores only the hash)");
        println!("hash = \"{hash}\"");
    }
    ExitCode::SUCCESS
}
