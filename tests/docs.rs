//! The docs tell the truth. `docs/reference.md` names every metric and every error code in the
//! source, and its error table says what keygate really answers. The README stands alone (no
//! link out of the repository, none to a missing file or heading). And the README's quick
//! start works as written: its commands run against the real binary, and its Python snippet
//! gets an answer through the OpenAI SDK.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly by design

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::*;
use http::{HeaderValue, StatusCode};
use keygate::access::Scope;
use keygate::auth::{AuthError, KeyFormatError};
use keygate::error::{LimitKind, Refusal};
use keygate::limits::{BudgetShortfall, RateHeaders, Window};
use keygate::pipeline::body::ResponseBody;

const README: &str = include_str!("../README.md");
const REFERENCE: &str = include_str!("../docs/reference.md");
const METRICS_RS: &str = include_str!("../src/metrics.rs");
const ERROR_RS: &str = include_str!("../src/error.rs");
const SHIPPED_CONFIG: &str = include_str!("../config/keygate.toml");

// ---------------------------------------------------------------------------------------------
// Markdown helpers

/// The text of a section: from its heading line to the next heading of the same or a higher
/// level.
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let level = heading.chars().take_while(|&c| c == '#').count();
    let start = text
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("no heading {heading:?}"))
        + 1;
    let body = &text[start + heading.len()..];
    let end = body
        .match_indices('\n')
        .map(|(i, _)| i + 1)
        .find(|&i| {
            let hashes = body[i..].chars().take_while(|&c| c == '#').count();
            (1..=level).contains(&hashes) && body[i + hashes..].starts_with(' ')
        })
        .unwrap_or(body.len());
    &text[start..start + heading.len() + end]
}

/// The fenced code blocks of one language, with the fence's indentation removed from each line
/// (the README's blocks sit inside list items).
fn fenced(text: &str, lang: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim_start() != format!("```{lang}") {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let mut block = String::new();
        for line in lines.by_ref() {
            if line.trim() == "```" {
                break;
            }
            block.push_str(line.get(indent..).unwrap_or(line.trim_start()));
            block.push('\n');
        }
        blocks.push(block);
    }
    blocks
}

/// Heading anchors as GitHub makes them: lowercase, spaces to `-`, punctuation dropped.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut in_code = false;
    let mut out = BTreeSet::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if in_code || hashes == 0 || !line[hashes..].starts_with(' ') {
            continue;
        }
        let slug = line[hashes + 1..]
            .trim()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c.to_ascii_lowercase()),
                _ => None,
            })
            .collect();
        out.insert(slug);
    }
    out
}

/// Every relative link of a Markdown file points at a file of the repository, and a link
/// to a heading names one that exists.
fn check_links(file: &str, text: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join(file).parent().unwrap().to_owned();
    for (at, _) in text.match_indices("](") {
        let rest = &text[at + 2..];
        let Some(target) = rest.find(')').map(|end| &rest[..end]) else {
            continue;
        };
        if target.contains("://") || target.contains(' ') {
            continue;
        }
        let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
        let (resolved, content) = if path.is_empty() {
            (root.join(file), text.to_owned())
        } else {
            let resolved = dir.join(path);
            assert!(
                resolved.exists(),
                "{file} links {target:?}, which does not exist"
            );
            let content = if path.ends_with(".md") {
                std::fs::read_to_string(&resolved).unwrap()
            } else {
                String::new()
            };
            (resolved, content)
        };
        let inside = resolved.canonicalize().unwrap();
        assert!(
            inside.starts_with(root.canonicalize().unwrap()),
            "{file} links {target:?}, outside the repository"
        );
        if !anchor.is_empty() {
            assert!(
                anchors(&content).contains(anchor),
                "{file} links {target:?}, but there is no such heading"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What the source says

/// The values of the `pub const NAME: &str = "..."` lines of `metrics::names`.
fn metric_names() -> Vec<String> {
    let module = METRICS_RS
        .split_once("pub mod names {")
        .expect("src/metrics.rs has no `pub mod names`")
        .1;
    let module = &module[..module.find("\n}").unwrap()];
    let names: Vec<String> = module
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .map(|decl| {
            let value = decl.split_once('=').expect("a const with a value").1;
            value
                .trim()
                .trim_end_matches(';')
                .trim_matches('"')
                .to_owned()
        })
        .collect();
    // Every const was read (none spans several lines), and they are metric names.
    assert_eq!(names.len(), module.matches("pub const").count());
    assert!(names.iter().all(|n| n.starts_with("keygate_")), "{names:?}");
    names
}

/// Every string literal in `Refusal::code`, the one function that maps a refusal to its
/// `error.code`.
fn error_codes() -> BTreeSet<String> {
    let body = ERROR_RS
        .split_once("pub fn code(&self) -> &'static str {")
        .expect("src/error.rs has no `pub fn code`")
        .1;
    let body = &body[..body.find("\n    }\n").unwrap()];
    body.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_source_parsers_find_what_the_crate_has() {
    let names = metric_names();
    for name in [
        keygate::metrics::names::REQUESTS,
        keygate::metrics::names::KEY_INFO,
        keygate::metrics::names::SECURITY_EVENTS,
    ] {
        assert!(names.iter().any(|n| n == name), "{name} not parsed");
    }
    // Every family a fresh registry exports is one of the names.
    let metrics = keygate::metrics::Metrics::new().unwrap();
    for family in metrics.registry.gather() {
        assert!(
            names.iter().any(|n| n == family.name()),
            "{} is registered but not in metrics::names",
            family.name()
        );
    }

    let codes = error_codes();
    for refusal in every_refusal() {
        assert!(
            codes.contains(refusal.code()),
            "{} not parsed from Refusal::code",
            refusal.code()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// docs/reference.md

#[test]
fn the_reference_lists_every_metric() {
    let table = section(REFERENCE, "## Metrics");
    let missing: Vec<String> = metric_names()
        .into_iter()
        .filter(|name| !table.contains(&format!("\n| `{name}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/reference.md has no row in its metrics table for {missing:?}"
    );
}

#[test]
fn the_reference_lists_every_error_code() {
    let rows = error_rows();
    let missing: Vec<String> = error_codes()
        .into_iter()
        .filter(|code| !rows.iter().any(|r| r.code == format!("`{code}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/reference.md has no row in its error table for {missing:?}"
    );
}

/// One row of the reference's error table.
#[derive(Debug)]
struct Row {
    status: String,
    code: String,
    kind: String,
    when: String,
    retry: String,
    sdk: String,
}

fn error_rows() -> Vec<Row> {
    let errors = section(REFERENCE, "## Errors");
    let table = errors
        .split("### ")
        .next()
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| status "));
    let rows: Vec<Row> = table
        .map(|line| {
            let cells: Vec<String> = line
                .trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().to_owned())
                .collect();
            assert_eq!(
                cells.len(),
                6,
                "error table row with other than 6 cells: {line}"
            );
            let [status, code, kind, when, retry, sdk] = cells.try_into().unwrap();
            Row {
                status,
                code,
                kind,
                when,
                retry,
                sdk,
            }
        })
        .collect();
    assert!(rows.len() > 10, "no error table found in docs/reference.md");
    rows
}

fn window() -> Option<Window> {
    Some(Window {
        limit: 10,
        remaining: 0,
        reset: Duration::from_millis(1500),
    })
}

/// One refusal of each kind (and of each retry advice a kind can give).
fn every_refusal() -> Vec<Refusal> {
    let limited = |limit, secs| Refusal::RateLimited {
        limit,
        retry_after: Duration::from_secs(secs),
        headers: RateHeaders {
            requests: window(),
            tokens: window(),
        },
    };
    let upstream = |status: u16, retry: Option<u64>| Refusal::UpstreamStatus {
        status: StatusCode::from_u16(status).unwrap(),
        retry_after: retry.map(Duration::from_secs),
    };
    vec![
        Refusal::Auth(AuthError::Missing),
        Refusal::Auth(AuthError::Malformed(KeyFormatError::Malformed)),
        Refusal::Auth(AuthError::Malformed(KeyFormatError::BadChecksum)),
        Refusal::Auth(AuthError::Unknown),
        Refusal::Auth(AuthError::Expired),
        Refusal::Auth(AuthError::Inactive),
        Refusal::AmbiguousCredentials,
        Refusal::IpNotAllowed,
        Refusal::ReferrerNotAllowed,
        Refusal::ScopeNotAllowed(Scope::Chat),
        Refusal::ModelNotAllowed,
        Refusal::ModelNotFound,
        Refusal::CostUnbounded("no per-request price".into()),
        Refusal::UnknownRoute,
        Refusal::MethodNotAllowed,
        Refusal::NotCanonical,
        Refusal::InvalidRequest("bad JSON".into()),
        Refusal::UriTooLong,
        Refusal::BodyTooLarge,
        Refusal::BodyTimeout,
        Refusal::UpstreamUnreachable,
        Refusal::UpstreamTimeout,
        Refusal::UpstreamAuth,
        Refusal::UpstreamKeyMissing,
        upstream(429, Some(3)),
        upstream(429, None),
        upstream(402, None),
        upstream(500, None),
        upstream(503, Some(120)),
        limited(LimitKind::Requests, 2),
        limited(LimitKind::Tokens, 30),
        Refusal::RateLimited {
            limit: LimitKind::Concurrency,
            retry_after: Duration::from_secs(1),
            headers: RateHeaders::default(),
        },
        Refusal::TooManyTokens {
            headers: RateHeaders {
                requests: None,
                tokens: window(),
            },
        },
        // Only reservations in flight stand in the way: retryable.
        Refusal::BudgetExceeded(BudgetShortfall {
            budget: 1_000_000,
            spent: 100_000,
            in_flight: 800_000,
            request: 200_000,
        }),
        // Settled spend leaves too little: not retryable.
        Refusal::BudgetExceeded(BudgetShortfall {
            budget: 1_000_000,
            spent: 900_000,
            in_flight: 0,
            request: 200_000,
        }),
        Refusal::BlockedClient,
        Refusal::LedgerUnavailable,
        Refusal::BadForwardedFor,
        Refusal::BodyBufferFull,
        Refusal::LimitsUnavailable,
    ]
}

/// The number in a cell's `` `retry-after: N` ``, if it states one.
fn stated_retry_after(cell: &str) -> Option<&str> {
    let rest = cell.split_once("`retry-after: ")?.1;
    Some(&rest[..rest.find('`')?])
}

#[test]
fn the_reference_error_table_says_what_keygate_answers() {
    let rows = error_rows();
    let mut used = vec![false; rows.len()];
    for refusal in every_refusal() {
        let response = refusal.to_response(&HeaderValue::from_static("req_docs"));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let ResponseBody::Full(Some(body)) = response.into_body() else {
            panic!("a refusal's body is a full JSON body");
        };
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let code = body["error"]["code"].as_str().unwrap().to_owned();
        let kind = body["error"]["type"].as_str().unwrap().to_owned();
        let should_retry = headers
            .get("x-should-retry")
            .map(|v| v.to_str().unwrap().to_owned());
        let retry_after = headers
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let rate_headers = headers
            .keys()
            .any(|k| k.as_str().starts_with("x-ratelimit-"));
        // What the OpenAI SDKs do with it (openai-python's `_should_retry`).
        let sdk_retries = match should_retry.as_deref() {
            Some(v) => v == "true",
            None => matches!(status, 408 | 409 | 429) || status >= 500,
        };

        let matches = |row: &Row| {
            let status_ok = row.status == status.to_string()
                || (row.status == "5xx" && (500..600).contains(&status));
            let retry_ok = match &should_retry {
                Some(v) => row.retry.contains(&format!("`x-should-retry: {v}`")),
                None => row.retry == "none",
            } && match (&retry_after, stated_retry_after(&row.retry)) {
                (Some(sent), Some(stated)) => sent == stated,
                (Some(_), None) => row.retry.contains("retry-after"),
                (None, Some(_)) => false,
                (None, None) => true,
            };
            status_ok
                && row.code == format!("`{code}`")
                && row.kind == format!("`{kind}`")
                && retry_ok
                && row.sdk == if sdk_retries { "yes" } else { "no" }
                && (!rate_headers || row.when.contains("`x-ratelimit-*`"))
        };
        let mut found = false;
        for (row, used) in rows.iter().zip(&mut used) {
            if matches(row) {
                *used = true;
                found = true;
            }
        }
        assert!(
            found,
            "no row of docs/reference.md's error table fits {refusal:?}: status {status}, \
             code {code}, type {kind}, x-should-retry {should_retry:?}, retry-after \
             {retry_after:?}, x-ratelimit-* {rate_headers}, SDK retries {sdk_retries}"
        );
    }
    let stale: Vec<&Row> = rows
        .iter()
        .zip(&used)
        .filter(|(_, used)| !**used)
        .map(|(row, _)| row)
        .collect();
    assert!(
        stale.is_empty(),
        "rows of docs/reference.md's error table that no refusal fits: {stale:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// README.md

#[test]
fn the_readme_stands_alone() {
    assert!(
        !README.contains("../shared"),
        "README.md points outside the repository"
    );
    assert!(README.contains("](docs/reference.md"));
    check_links("README.md", README);
    check_links("docs/reference.md", REFERENCE);
}

/// Splits a shell command line into words: whitespace separates, quotes group, an unquoted `#`
/// that starts a word starts a comment.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quote = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.get_or_insert_default().push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                word.get_or_insert_default();
            }
            (None, '#') if word.is_none() => break,
            (None, c) if c.is_whitespace() => words.extend(word.take()),
            (None, c) => word.get_or_insert_default().push(c),
        }
    }
    assert!(quote.is_none(), "unbalanced quote in {line:?}");
    words.extend(word);
    words
}

/// The commands of a `sh` block, each as words, and the lines it shows as their output. In a
/// block with `$ ` prompts, only prompted lines are commands; otherwise every line is.
fn commands(block: &str) -> (Vec<Vec<String>>, Vec<String>) {
    let prompted = block.lines().any(|l| l.starts_with("$ "));
    let mut cmds = Vec::new();
    let mut output = Vec::new();
    let mut current: Option<String> = None;
    for line in block.lines() {
        if let Some(mut cmd) = current.take() {
            cmd.push(' ');
            cmd.push_str(line);
            current = Some(cmd);
        } else if let Some(cmd) = line.strip_prefix("$ ").or((!prompted).then_some(line)) {
            current = Some(cmd.to_owned());
        } else {
            output.push(line.split(" #").next().unwrap().trim().to_owned());
            continue;
        }
        let cmd = current.take().unwrap();
        match cmd.strip_suffix('\\') {
            Some(open) => current = Some(open.to_owned()),
            None => {
                let words = shell_words(&cmd);
                if !words.is_empty() {
                    cmds.push(words);
                }
            }
        }
    }
    assert!(current.is_none(), "a command ends with a line continuation");
    (cmds, output)
}

/// What a quick-start command does.
enum Step {
    /// `export NAME=VALUE`
    Export(String, String),
    /// `cargo run [-q] [--release] -- ARGS`: keygate with these arguments.
    Keygate(Vec<String>),
}

fn step(words: &[String]) -> Step {
    match words {
        [export, assignment] if export == "export" => {
            let (name, value) = assignment.split_once('=').unwrap();
            Step::Export(name.to_owned(), value.to_owned())
        }
        [cargo, run, rest @ ..] if cargo == "cargo" && run == "run" => {
            let dashes = rest
                .iter()
                .position(|w| w == "--")
                .unwrap_or_else(|| panic!("`cargo run` without `--`: {words:?}"));
            assert!(
                rest[..dashes]
                    .iter()
                    .all(|flag| flag == "-q" || flag == "--release"),
                "unexpected cargo flags in {words:?}"
            );
            Step::Keygate(rest[dashes + 1..].to_vec())
        }
        _ => panic!("the quick start runs a command this test does not know: {words:?}"),
    }
}

/// keygate's arguments without `--config config/keygate.toml`, which the test points at its
/// own copy of that file.
fn without_config(args: &[String]) -> Vec<String> {
    let at = args
        .iter()
        .position(|a| a == "--config")
        .unwrap_or_else(|| panic!("no --config in {args:?}"));
    assert_eq!(
        args.get(at + 1).map(String::as_str),
        Some("config/keygate.toml")
    );
    let mut rest = args.to_vec();
    rest.drain(at..at + 2);
    rest
}

/// Replaces the one occurrence of `placeholder` in the snippet.
fn substitute(snippet: &str, placeholder: &str, value: &str) -> String {
    assert_eq!(
        snippet.matches(placeholder).count(),
        1,
        "the README's Python snippet should contain {placeholder} once:\n{snippet}"
    );
    snippet.replace(placeholder, value)
}

/// The quick start, as written, against the shipped config. The test changes only what must
/// differ on a test machine: the config is a copy whose upstream is a mock and whose listeners
/// take free ports, the upstream key is a test value, the binary stands in for `cargo run`, and
/// the Python snippet gets the gateway's real address and the key step 1 printed.
#[tokio::test]
async fn the_readme_quick_start_works_as_written() {
    let using = section(README, "## Using it");
    let sh = fenced(using, "sh");
    assert_eq!(sh.len(), 2, "the quick start has two shell blocks");
    let py = fenced(using, "python");
    assert_eq!(py.len(), 1, "the quick start has one Python block");

    let mock = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config: toml_edit::DocumentMut = SHIPPED_CONFIG.parse().unwrap();
    let documented_listen = config["server"]["listen"].as_str().unwrap().to_owned();
    let key_env = config["upstream"]["api_key_env"]
        .as_str()
        .unwrap()
        .to_owned();
    config["server"]["listen"] = toml_edit::value("127.0.0.1:0");
    config["admin"]["listen"] = toml_edit::value("127.0.0.1:0");
    config["upstream"]["url"] = toml_edit::value(mock.url());
    // `storage.path` is relative to the file, so the ledger lands in the temporary directory.
    let config_path = dir.path().join("keygate.toml");
    std::fs::write(&config_path, config.to_string()).unwrap();

    // Step 1: create the key.
    let (create, shown) = commands(&sh[0]);
    let [create] = create.as_slice() else {
        panic!("step 1 should be one command: {create:?}");
    };
    let Step::Keygate(args) = step(create) else {
        panic!("step 1 should run keygate");
    };
    let args = without_config(&args);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_keygate(&args, &config_path);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "step 1 failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It prints what the README shows, line for line (the id and secret differ).
    let printed: Vec<&str> = stdout.lines().collect();
    for (i, line) in shown.iter().enumerate() {
        let first = line.split_whitespace().next().unwrap();
        assert!(
            printed
                .get(i)
                .is_some_and(|p| p.split_whitespace().next() == Some(first)),
            "the README shows {line:?} as line {} of step 1's output, keygate printed:\n{stdout}",
            i + 1
        );
    }
    let secret = printed
        .iter()
        .find_map(|l| l.strip_prefix("key: "))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no `key: ` line in:\n{stdout}"));
    assert!(secret.starts_with("sk-kg-"), "{secret}");

    // Step 2: export the upstream key and serve.
    let (steps, _) = commands(&sh[1]);
    let mut env: Vec<(String, String)> = Vec::new();
    let mut serve = None;
    for words in &steps {
        match step(words) {
            Step::Export(name, _placeholder) => {
                assert_eq!(
                    name, key_env,
                    "step 2 exports another variable than the config names"
                );
                env.push((name, UPSTREAM_KEY.to_owned()));
            }
            Step::Keygate(args) => serve = Some(without_config(&args)),
        }
    }
    assert_eq!(
        serve.as_deref(),
        Some(&["serve".to_owned()][..]),
        "step 2 should run `serve --config config/keygate.toml`"
    );
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let gw = Binary::serve(&config_path, &env).await;

    // Step 3: the Python snippet, pointed at this gateway with the key from step 1.
    let snippet = substitute(
        &py[0],
        &format!("base_url=\"http://{documented_listen}/v1\""),
        &format!("base_url=\"{}\"", gw.url("/v1")),
    );
    let snippet = substitute(
        &snippet,
        "api_key=\"sk-kg-…\"",
        &format!("api_key=\"{secret}\""),
    );
    let out = tokio::process::Command::new(python())
        .arg("-c")
        .arg(&snippet)
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "the README's Python snippet failed:\n{snippet}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // It went upstream once, with the real key in place of the keygate key.
    let seen = mock.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path_and_query, "/chat/completions");
    assert_eq!(
        seen[0].headers["authorization"],
        format!("Bearer {UPSTREAM_KEY}").as_str()
    );

    gw.signal("-TERM");
    let (status, logs) = gw.wait().await;
    assert!(status.success(), "serve did not exit cleanly:\n{logs}");
}
