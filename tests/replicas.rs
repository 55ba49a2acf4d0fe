//! Several replicas sharing per-key limits on a real `redis-server`: the same exactness as one
//! process, leases that free what a killed replica held, Redis stopped and restarted under
//! load in each degraded mode, and spend that survives every process restarting.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly by design

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use serde_json::{Value, json};
use tokio::sync::Barrier;

/// Two (or more) keygate processes on one config and one Redis.
struct Cluster {
    mock: MockUpstream,
    redis_url: String,
    dir: tempfile::TempDir,
    replicas: Vec<Binary>,
    key: TestKey,
}

fn cluster_config(
    upstream: &str,
    dir: &std::path::Path,
    replica: usize,
    key: &str,
    extra: &str,
) -> String {
    let (_, _) = (dir, replica);
    format!(
        "{}\n[cluster]\nredis_url_env = \"KG_TEST_REDIS\"\nreplicas_hint = 2\n{extra}\n",
        config_text(upstream, "", key)
    )
}

impl Cluster {
    async fn start(redis: &Redis, limits: &str, cluster_extra: &str, n: usize) -> Self {
        let mock = MockUpstream::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (key, hash) = TestKey::new("app");
        let key_table = key_toml("app", &hash, &format!("scopes = [\"chat\"]\n{limits}"));
        let mut c = Self {
            mock,
            redis_url: redis.url(),
            dir,
            replicas: Vec::new(),
            key,
        };
        for i in 0..n {
            let gw = c.spawn(i, &key_table, cluster_extra).await;
            c.replicas.push(gw);
        }
        c
    }

    /// Each replica has its own ledger (its own directory) and the same config otherwise.
    async fn spawn(&self, i: usize, key_table: &str, cluster_extra: &str) -> Binary {
        let dir = self.dir.path().join(format!("replica{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let text = format!(
            "{}\n[storage]\npath = \"{}\"\n",
            cluster_config(&self.mock.url(), &dir, i, key_table, cluster_extra),
            dir.join("keygate.db").display()
        );
        let path = dir.join("keygate.toml");
        std::fs::write(&path, text).unwrap();
        let gw = Binary::serve(
            &path,
            &[
                ("KEYGATE_TEST_UNUSED", UPSTREAM_KEY),
                ("KG_TEST_REDIS", &self.redis_url),
            ],
        )
        .await;
        wait_store_up(&gw, true).await;
        gw
    }

    fn url(&self, i: usize) -> String {
        self.replicas[i % self.replicas.len()].url("/v1/chat/completions")
    }
}

async fn metric(gw: &Binary, series: &str) -> Option<f64> {
    let text = get(&gw.admin_url("/metrics"), None).await.text();
    sample(&text, series)
}

async fn wait_store_up(gw: &Binary, up: bool) {
    let want = if up { 1.0 } else { 0.0 };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while metric(gw, "keygate_limit_store_up").await != Some(want) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "keygate_limit_store_up never became {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn chat_req(
    url: &str,
    key: &TestKey,
    body: &Value,
    headers: &[(&str, &str)],
) -> Request<Full<Bytes>> {
    post_req(url, Some(key), body, headers)
}

/// Fires `n` requests at once, alternating between replicas, and returns their statuses.
async fn burst(c: &Cluster, n: usize, body: &Value, headers: &[(&str, &str)]) -> Vec<u16> {
    let barrier = Arc::new(Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let req = chat_req(&c.url(i), &c.key, body, headers);
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                send(req).await.status.as_u16()
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpm_10_over_two_replicas_admits_exactly_10_of_200() {
    let redis = Redis::start().await;
    let c = Cluster::start(&redis, "limits = { requests_per_minute = 10 }", "", 2).await;
    let statuses = burst(&c, 200, &chat("deepseek-chat"), &[]).await;
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|&&s| s == 429).count(), 190);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_and_budget_count_across_replicas() {
    let redis = Redis::start().await;
    let c = Cluster::start(
        &redis,
        "limits = { max_concurrent_requests = 2, monthly_spend_usd = 0.05 }",
        "",
        2,
    )
    .await;
    let body = json!({"model": "deepseek-chat", "max_tokens": 4000, "messages": [{"role": "user", "content": "hi"}]});
    // Slow answers: only two may run at once over both replicas.
    let statuses = burst(
        &c,
        20,
        &body,
        &[("x-mock-delay-ms", "400"), ("x-mock-chunks", "100000")],
    )
    .await;
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        2,
        "{statuses:?}"
    );
    // Then the budget: $0.05 holds eleven requests of 4000 tokens, whichever replica serves.
    let mut ok = 0;
    for i in 0..30 {
        let a = send(chat_req(
            &c.url(i),
            &c.key,
            &body,
            &[("x-mock-chunks", "100000")],
        ))
        .await;
        ok += u32::from(a.status == 200);
    }
    assert_eq!(ok, 9, "eleven fit in all, two already spent");
    let generated: u64 = c
        .mock
        .generated()
        .iter()
        .map(|g| {
            (u128::from(g.prompt_tokens) * 270_000 + u128::from(g.completion_tokens) * 1_100_000)
                .div_ceil(1_000_000) as u64
        })
        .sum();
    assert!(
        generated <= 50_000,
        "generated {generated} µ$ on $0.05 over two replicas"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_slots_expire_with_their_lease() {
    let redis = Redis::start().await;
    let mut c = Cluster::start(
        &redis,
        "limits = { max_concurrent_requests = 1 }",
        "lease = \"2s\"",
        2,
    )
    .await;
    // Replica 0 takes the only slot with a long answer, then dies with SIGKILL.
    let slow = chat_req(
        &c.url(0),
        &c.key,
        &chat("deepseek-chat"),
        &[("x-mock-delay-ms", "30000")],
    );
    let pending = tokio::spawn(async move { client().request(slow).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let busy = send(chat_req(&c.url(1), &c.key, &chat("deepseek-chat"), &[])).await;
    assert_eq!(busy.code(), "rate_limit_exceeded", "the slot is taken");
    c.replicas[0].signal("-KILL");
    let _ = pending.await;
    c.replicas.remove(0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let a = send(chat_req(&c.url(0), &c.key, &chat("deepseek-chat"), &[])).await;
        if a.status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dead replica's slot never expired"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Redis stopped under load with `on_redis_down = "local"`: no request hangs, each replica
/// enforces its share, the state is visible, and it all comes back without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_in_local_mode_enforces_shares_and_recovers() {
    let redis = Redis::start().await;
    let c = Cluster::start(
        &redis,
        "limits = { requests_per_minute = 20 }",
        "on_redis_down = \"local\"",
        2,
    )
    .await;
    assert_eq!(
        send(chat_req(&c.url(0), &c.key, &chat("deepseek-chat"), &[]))
            .await
            .status,
        200
    );
    let port = redis.stop();
    // Each replica now allows its share: 20 / 2 = 10 a minute, of which the burst below can
    // use what is left on each.
    let started = tokio::time::Instant::now();
    let statuses = burst(&c, 60, &chat("deepseek-chat"), &[]).await;
    assert!(started.elapsed() < Duration::from_secs(20), "requests hung");
    let ok = statuses.iter().filter(|&&s| s == 200).count();
    assert!((1..=20).contains(&ok), "{ok} admitted: {statuses:?}");
    for gw in &c.replicas {
        wait_store_up(gw, false).await;
        let ready = get(&gw.admin_url("/readyz"), None).await.json();
        assert_eq!(
            ready["checks"]["limit_store"]["status"], "warning",
            "{ready}"
        );
    }
    let _redis = Redis::start_on(port).await;
    for gw in &c.replicas {
        wait_store_up(gw, true).await;
    }
    assert_eq!(
        send(chat_req(&c.url(1), &c.key, &chat("deepseek-chat"), &[]))
            .await
            .status,
        429,
        "the shared minute is used up"
    );
}

/// `on_redis_down = "deny"`: requests on keys with limits get 503 `limits_unavailable` at
/// once, and are served again when Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_in_deny_mode_refuses_and_recovers() {
    let redis = Redis::start().await;
    let c = Cluster::start(
        &redis,
        "limits = { requests_per_minute = 1000 }",
        "on_redis_down = \"deny\"",
        2,
    )
    .await;
    let port = redis.stop();
    let started = tokio::time::Instant::now();
    let statuses = burst(&c, 20, &chat("deepseek-chat"), &[]).await;
    assert!(started.elapsed() < Duration::from_secs(10), "requests hung");
    assert!(statuses.iter().all(|&s| s == 503), "{statuses:?}");
    let a = send(chat_req(&c.url(0), &c.key, &chat("deepseek-chat"), &[])).await;
    assert_eq!(a.code(), "limits_unavailable");
    let _redis = Redis::start_on(port).await;
    for gw in &c.replicas {
        wait_store_up(gw, true).await;
    }
    assert_eq!(
        send(chat_req(&c.url(0), &c.key, &chat("deepseek-chat"), &[]))
            .await
            .status,
        200
    );
}

/// Spend lives in Redis, and each replica's ledger fills an empty Redis again: after every
/// process restarts (Redis included), the key is still out of budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_survives_every_process_restarting() {
    let redis = Redis::start().await;
    let mut c = Cluster::start(&redis, "limits = { monthly_spend_usd = 0.01 }", "", 2).await;
    let body = json!({"model": "deepseek-chat", "max_tokens": 4000, "messages": [{"role": "user", "content": "hi"}]});
    let mut ok = 0;
    for i in 0..6 {
        ok += u32::from(
            send(chat_req(
                &c.url(i),
                &c.key,
                &body,
                &[("x-mock-chunks", "100000")],
            ))
            .await
            .status
                == 200,
        );
    }
    assert_eq!(ok, 2, "two requests of $0.0044 fit in $0.01");
    let spent = metric(&c.replicas[0], "keygate_key_spend_usd{key=\"app\"}")
        .await
        .unwrap();
    for gw in c.replicas.drain(..) {
        gw.signal("-TERM");
        assert!(gw.wait().await.0.success());
    }
    let port = redis.stop();
    let _redis = Redis::start_on(port).await;
    let key_table = key_toml(
        "app",
        &{
            // The same key: reuse its hash from the first replica's config.
            let text = std::fs::read_to_string(c.dir.path().join("replica0/keygate.toml")).unwrap();
            text.split("hash = \"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .to_owned()
        },
        "scopes = [\"chat\"]\nlimits = { monthly_spend_usd = 0.01 }",
    );
    for i in 0..2 {
        let gw = c.spawn(i, &key_table, "").await;
        c.replicas.push(gw);
    }
    let a = send(chat_req(&c.url(0), &c.key, &body, &[])).await;
    assert_eq!(a.code(), "budget_exceeded");
    let restored = metric(&c.replicas[1], "keygate_key_spend_usd{key=\"app\"}")
        .await
        .unwrap();
    assert!(
        (restored - spent).abs() < 1e-9,
        "spend {spent} before, {restored} after"
    );
    // The usage report sums both replicas' ledgers (once the last request is written, within
    // a second).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = std::process::Command::new(KEYGATE_BIN)
            .args(["usage", "app", "--format", "json", "--ledger"])
            .arg(c.dir.path().join("replica0/keygate.db"))
            .arg("--ledger")
            .arg(c.dir.path().join("replica1/keygate.db"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        let requests: u64 = report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["requests"].as_u64().unwrap())
            .sum();
        if requests == 7 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{requests} requests in the ledgers"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
