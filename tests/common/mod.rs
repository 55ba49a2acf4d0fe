//! Test harness: a mock upstream and a keygate gateway on 127.0.0.1 port 0, real HTTP clients.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keygate::auth::ApiKey;
use keygate::limits::{Clock, SystemClock};
use keygate::state::{Gateway, Runtime};
#[allow(unused_imports)]
pub use mock_upstream::{MockUpstream, UPSTREAM_SECRET_TEXT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

pub const UPSTREAM_KEY: &str = "sk-upstream-REAL-secret-0123456789";
/// The binary under test.
pub const KEYGATE_BIN: &str = env!("CARGO_BIN_EXE_keygate");

pub const ADMIN_TOKEN: &str = "admin-token-for-tests-7c1e";

/// `[[models]]` shared by the tests.
pub const MODELS: &str = r#"
[[models]]
name = "deepseek-chat"
scope = "chat"
input_per_million = 0.27
cached_input_per_million = 0.07
output_per_million = 1.10

[[models]]
name = "deepseek-coder"
scope = "code"
input_per_million = 0.27
output_per_million = 1.10

[[models]]
name = "deepseek-reasoner"
scope = "chat"
input_per_million = 0.55
output_per_million = 2.19

[[models]]
name = "mock-embedding"
scope = "embeddings"
input_per_million = 0.02
output_per_million = 0
"#;

/// A key: its id and the secret a client sends.
pub struct TestKey {
    pub id: String,
    pub secret: String,
}

impl TestKey {
    /// The key in what `keys create --json` or `POST /admin/keys` printed.
    pub fn from_created(v: &serde_json::Value) -> Self {
        Self {
            id: v["id"].as_str().expect("an id").to_owned(),
            secret: v["key"].as_str().expect("a key").to_owned(),
        }
    }

    pub fn new(id: &str) -> (Self, String) {
        let key = ApiKey::generate();
        let hash = key.digest().to_string();
        (
            Self {
                id: id.to_owned(),
                secret: key.expose().to_owned(),
            },
            hash,
        )
    }

    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.secret)
    }
}

/// Renders one `[[keys]]` table; `extra` is more TOML lines for it.
pub fn key_toml(id: &str, hash: &str, extra: &str) -> String {
    format!(
        "\n[[keys]]\nid = \"{id}\"\nname = \"{id}\"\nenvironment = \"production\"\nhash = \"{hash}\"\ncreated = 2026-01-01T00:00:00Z\n{extra}\n"
    )
}

/// A standard config: the mock as upstream and `extra` appended (keys, server settings...).
pub fn config_text(upstream: &str, server_extra: &str, rest: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{server_extra}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[upstream]\nurl = \"{upstream}\"\napi_key_env = \"KEYGATE_TEST_UNUSED\"\nconnect_timeout = \"1s\"\nfirst_byte_timeout = \"3s\"\nidle_timeout = \"3s\"\n{MODELS}\n{rest}"
    )
}

pub struct Gw {
    pub addr: SocketAddr,
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`).
    pub admin: SocketAddr,
    pub gateway: Arc<Gateway>,
    /// Holds the usage ledger unless the config names its own `[storage]`.
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Gw {
    /// Starts a gateway in this process from config text.
    pub async fn start(config: &str) -> Self {
        Self::start_with_key(config, Some(UPSTREAM_KEY)).await
    }

    pub async fn start_with_key(config: &str, upstream_key: Option<&str>) -> Self {
        Self::start_with_clock(config, upstream_key, Arc::new(SystemClock::new())).await
    }

    pub async fn start_with_clock(
        config: &str,
        upstream_key: Option<&str>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // `@LEDGER@` in a config's own [storage] stands for the test's ledger path.
        let ledger = dir.path().join("keygate.db");
        let mut text = config.replace("@LEDGER@", &ledger.display().to_string());
        if !text.contains("[storage]") {
            text.push_str(&format!(
                "\n[storage]\npath = \"{}\"\n",
                dir.path().join("keygate.db").display()
            ));
        }
        let path = dir.path().join("keygate.toml");
        std::fs::write(&path, &text).unwrap();
        let loaded = keygate::reload::stamp(&path);
        let config =
            keygate::config::load(&path).unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        let runtime = Runtime::with_secrets(config, upstream_key, Some(ADMIN_TOKEN));
        let gateway = Arc::new(
            Gateway::start(runtime, clock)
                .unwrap()
                .with_config_path(path.clone()),
        );
        tokio::spawn(keygate::reload::watch(
            gateway.clone(),
            path,
            loaded,
            None,
            std::future::pending(),
        ));
        // As `serve` does: the upstream is checked in the background.
        tokio::spawn(keygate::upstream::probe::watch(
            gateway.clone(),
            std::future::pending(),
        ));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let admin_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = admin_listener.local_addr().unwrap();
        tokio::spawn(keygate::server::serve_admin(
            admin_listener,
            gateway.clone(),
            std::future::pending(),
        ));
        let task = tokio::spawn(keygate::server::run(
            listener,
            gateway.clone(),
            None,
            async {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            admin,
            gateway,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A gateway whose upstream is a port that was just free (nothing listens there), with one
    /// chat key.
    pub async fn with_dead_upstream() -> (Self, TestKey) {
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let (key, hash) = TestKey::new("app");
        let rest = key_toml("app", &hash, "scopes = [\"chat\"]");
        (
            Self::start(&config_text(&format!("http://{dead}"), "", &rest)).await,
            key,
        )
    }

    /// The config file this gateway runs on (watched: edits apply within a second).
    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("keygate.toml")
    }

    /// Waits until every usage event so far is in the ledger, then opens it for reading.
    pub fn ledger(&self) -> keygate::usage::Ledger {
        assert!(
            self.gateway
                .metering
                .recorder
                .flush(Duration::from_secs(10))
        );
        let path = &self.gateway.runtime().config.storage.path;
        keygate::usage::Ledger::open_read_only(path).unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Stops accepting and waits for the drain to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Gw {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A mock upstream plus a gateway in front of it, with one key per `(id, extra TOML)`.
pub struct Setup {
    pub mock: MockUpstream,
    pub gw: Gw,
    pub keys: Vec<TestKey>,
}

impl Setup {
    pub async fn new(keys: &[(&str, &str)]) -> Self {
        Self::with_server(keys, "").await
    }

    pub async fn with_server(keys: &[(&str, &str)], server_extra: &str) -> Self {
        let mock = MockUpstream::start().await.unwrap();
        let mut rest = String::new();
        let mut made = Vec::new();
        for (id, extra) in keys {
            let (key, hash) = TestKey::new(id);
            rest.push_str(&key_toml(id, &hash, extra));
            made.push(key);
        }
        let gw = Gw::start(&config_text(&mock.url(), server_extra, &rest)).await;
        Self {
            mock,
            gw,
            keys: made,
        }
    }

    pub fn key(&self, id: &str) -> &TestKey {
        self.keys.iter().find(|k| k.id == id).unwrap()
    }
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// `error.code` of an OpenAI-shaped error body.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends a request with a real HTTP client and reads the whole answer.
pub async fn send(req: Request<Full<Bytes>>) -> Answer {
    let resp = tokio::time::timeout(Duration::from_secs(20), client().request(req))
        .await
        .expect("request timed out")
        .expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body failed").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// POSTs JSON with the given key (or none).
pub async fn post_json(url: &str, key: Option<&TestKey>, body: serde_json::Value) -> Answer {
    send(post_req(url, key, &body, &[])).await
}

/// A JSON POST with the key (if any) as a bearer token and extra headers.
pub fn post_req(
    url: &str,
    key: Option<&TestKey>,
    body: &serde_json::Value,
    headers: &[(&str, &str)],
) -> Request<Full<Bytes>> {
    let mut b = Request::post(url).header("content-type", "application/json");
    if let Some(k) = key {
        b = b.header("authorization", k.bearer());
    }
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

/// The Python of the `.venv` that scripts/test.sh creates (with the openai SDK and PyYAML), or
/// `$KEYGATE_PYTHON`.
pub fn python() -> std::path::PathBuf {
    let path = std::env::var_os("KEYGATE_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python"))
        });
    assert!(
        path.exists(),
        "{} is missing: run scripts/test.sh, which creates .venv with the openai SDK",
        path.display()
    );
    path
}

pub async fn get(url: &str, key: Option<&TestKey>) -> Answer {
    let mut b = Request::get(url);
    if let Some(k) = key {
        b = b.header("authorization", k.bearer());
    }
    send(b.body(Full::new(Bytes::new())).unwrap()).await
}

/// Runs `keygate <args> --config <config>` (without an admin token in its environment).
pub fn run_keygate(args: &[&str], config: &std::path::Path) -> std::process::Output {
    std::process::Command::new(KEYGATE_BIN)
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("KEYGATE_ADMIN_TOKEN")
        .output()
        .unwrap()
}

/// A chat completion for `deepseek-chat` with `key`.
pub async fn chat_request(url: &str, key: &TestKey) -> Answer {
    post_json(url, Some(key), chat("deepseek-chat")).await
}

/// What keygate forwards for a JSON body that sets no completion cap: the client's bytes with
/// `"max_tokens": cap` spliced in before the closing brace.
pub fn with_cap(body: &str, cap: u64) -> String {
    let body = body.trim_end();
    format!("{},\"max_tokens\":{cap}}}", &body[..body.len() - 1])
}

pub fn chat(model: &str) -> serde_json::Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": "Say hello"}]})
}

/// Writes raw bytes on a fresh connection and reads until the server closes or `wait` passes.
pub async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// One HTTP/1.1 response read from a connection that stays open: status, head (lowercase) and
/// body (by `Content-Length`). `None` when the server closed the connection first.
pub async fn read_response(
    s: &mut (impl tokio::io::AsyncRead + Unpin),
) -> Option<(u16, String, Vec<u8>)> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((raw_status(&head), head, body))
}

/// Trickles a byte of body every `every`, `times` times, while reading the answer: the answer
/// and how long it took. The trickle and the reading run together, so an answer that only
/// comes once the client goes quiet shows up as late.
pub async fn trickle_and_read(
    conn: &mut TcpStream,
    every: Duration,
    times: usize,
) -> (Option<(u16, String, Vec<u8>)>, Duration) {
    let started = tokio::time::Instant::now();
    let (mut rd, mut wr) = conn.split();
    let trickle = async {
        for _ in 0..times {
            tokio::time::sleep(every).await;
            if wr.write_all(b" ").await.is_err() {
                break;
            }
        }
        // Then quiet: only the answer ends this.
        std::future::pending::<()>().await
    };
    let answer = tokio::select! {
        answer = read_response(&mut rd) => answer,
        () = trickle => None,
    };
    (answer, started.elapsed())
}

/// Status code of the first response in a raw HTTP answer (0 if none).
pub fn raw_status(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The real `keygate serve` binary on a config file, with its log on stderr.
pub struct Binary {
    pub child: tokio::process::Child,
    pub addr: String,
    /// The admin listener's address.
    pub admin: String,
    pub logs: tokio::task::JoinHandle<String>,
}

/// A config file in `dir` for the binary: [`config_text`] with one key, `app` (scope chat), and
/// the upstream key read from `KG_TEST_UPSTREAM_KEY`. Its path and the key.
pub fn app_config(
    dir: &std::path::Path,
    upstream: &str,
    server_extra: &str,
) -> (std::path::PathBuf, TestKey) {
    let (key, hash) = TestKey::new("app");
    let path = dir.join("keygate.toml");
    let text = config_text(
        upstream,
        server_extra,
        &key_toml("app", &hash, "scopes = [\"chat\"]"),
    )
    .replace("KEYGATE_TEST_UNUSED", "KG_TEST_UPSTREAM_KEY");
    std::fs::write(&path, text).unwrap();
    (path, key)
}

impl Binary {
    pub async fn serve(config: &std::path::Path, env: &[(&str, &str)]) -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut cmd = tokio::process::Command::new(KEYGATE_BIN);
        cmd.args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let mut early = String::new();
        let (addr, admin) = tokio::time::timeout(Duration::from_secs(20), async {
            let mut addr = None;
            while let Some(line) = lines.next_line().await.unwrap() {
                early.push_str(&line);
                early.push('\n');
                if let Some(rest) = line.split("keygate listening addr=").nth(1) {
                    addr = Some(rest.split_whitespace().next().unwrap().to_owned());
                }
                if let Some(rest) = line.split("admin listening admin_addr=").nth(1) {
                    let admin = rest.split_whitespace().next().unwrap().to_owned();
                    return (addr.expect("listening is logged first"), admin);
                }
            }
            panic!("keygate exited before listening:\n{early}");
        })
        .await
        .expect("keygate did not start");
        let logs = tokio::spawn(async move {
            let mut all = String::new();
            while let Ok(Some(line)) = lines.next_line().await {
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        Self {
            child,
            addr,
            admin,
            logs,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// A line of the process's `/proc/<pid>/status`, in kB (`VmRSS`, `VmHWM`).
    pub fn memory_kb(&self, field: &str) -> u64 {
        let pid = self.child.id().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().unwrap().to_string();
        assert!(
            std::process::Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Waits for the process to exit and returns its status and log.
    pub async fn wait(mut self) -> (std::process::ExitStatus, String) {
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .unwrap()
            .unwrap();
        (status, self.logs.await.unwrap())
    }
}

/// promtool (Debian's prometheus package): `$KEYGATE_PROMTOOL`, `promtool` on PATH, or the copy
/// `scripts/test.sh` extracts into `.tools/`. Missing is an error, never a skip.
pub fn promtool() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("KEYGATE_PROMTOOL") {
        return p.into();
    }
    let local =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/prometheus/usr/bin/promtool");
    if local.exists() {
        return local;
    }
    let on_path = std::process::Command::new("promtool")
        .arg("--version")
        .output();
    assert!(
        on_path.is_ok_and(|o| o.status.success()),
        "promtool is missing: run scripts/test.sh, which installs it from Debian's prometheus package"
    );
    "promtool".into()
}

/// Every sample line of a Prometheus text exposition, as `name{labels}`.
pub fn series(exposition: &str) -> std::collections::BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s.to_owned()))
        .collect()
}

/// The value of one sample (`name{labels}` exactly as exposed), if present.
pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}

/// A real `redis-server` on a free loopback port, with nothing saved to disk; killed on drop.
pub struct Redis {
    pub port: u16,
    child: std::process::Child,
}

impl Redis {
    pub async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(port).await
    }

    /// Starts on a given port (to restart a stopped server where replicas expect it).
    pub async fn start_on(port: u16) -> Self {
        let bin = std::env::var("KEYGATE_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = std::process::Command::new(&bin)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("redis-server is missing ({e}): run scripts/test.sh, which installs it")
            });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self { port, child }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Stops the server (its data is gone: nothing is saved).
    pub fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
