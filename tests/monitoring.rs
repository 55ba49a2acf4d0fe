//! The shipped Prometheus and Grafana files: rules and config that promtool accepts, alert
//! unit tests that pass, and a Grafana dashboard whose every query parses as PromQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly by design

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::promtool;

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn run_promtool(args: &[&str], files: &[&Path]) -> String {
    let out = Command::new(promtool())
        .args(args)
        .args(files)
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{report}");
    report
}

#[test]
fn alert_rules_and_scrape_config_are_valid() {
    let report = run_promtool(&["check", "rules"], &[&deploy("prometheus/alerts.yml")]);
    assert!(report.contains("SUCCESS"), "{report}");
    run_promtool(
        &["check", "config", "--syntax-only"],
        &[&deploy("prometheus/prometheus.yml")],
    );
}

#[test]
fn every_alert_fires_on_its_synthetic_series_and_stays_quiet_otherwise() {
    let report = run_promtool(&["test", "rules"], &[&deploy("prometheus/alerts_test.yml")]);
    assert!(report.contains("SUCCESS"), "{report}");
    // Every alert in alerts.yml has a firing test case.
    let rules = std::fs::read_to_string(deploy("prometheus/alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(deploy("prometheus/alerts_test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 12, "{alerts:?}");
    for alert in alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} has no promtool test"
        );
    }
}

/// Grafana template variables replaced by values Prometheus would see.
fn expand(expr: &str) -> String {
    expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "7d")
        .replace("$key", ".+")
        .replace("$instance", ".+")
}

#[test]
fn the_grafana_dashboard_is_well_formed_and_every_query_parses() {
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("grafana/keygate.json")).unwrap())
            .unwrap();
    assert_eq!(dash["uid"], "keygate");
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 36);
    let vars = dash["templating"]["list"].as_array().unwrap();
    let key_var = vars
        .iter()
        .find(|v| v["name"] == "key")
        .expect("a key selector variable");
    assert_eq!(key_var["multi"], true);
    let instance_var = vars
        .iter()
        .find(|v| v["name"] == "instance")
        .expect("an instance selector variable");
    assert_eq!(instance_var["multi"], true);
    assert_eq!(instance_var["includeAll"], true);
    let mut exprs = Vec::new();
    // label_values(selector, label) and query_result(query) are Grafana's; the selector or
    // query inside must be valid PromQL.
    for var in vars.iter().filter(|v| v["type"] == "query") {
        let def = var["definition"].as_str().unwrap();
        let inner = match def.strip_prefix("query_result(") {
            Some(q) => q.strip_suffix(')').unwrap(),
            None => def
                .strip_prefix("label_values(")
                .and_then(|d| d.rsplit_once(','))
                .map(|(s, _)| s)
                .unwrap(),
        };
        exprs.push(inner.to_owned());
    }

    let panels = dash["panels"].as_array().unwrap();
    let titles: Vec<&str> = panels
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for wanted in [
        "Daily requests",
        "Daily tokens",
        "Daily cost",
        "Error rate",
        "Latency",
        "Limit utilization",
        "budget burn",
    ] {
        assert!(
            titles
                .iter()
                .any(|t| t.to_lowercase().contains(&wanted.to_lowercase())),
            "no panel for {wanted}: {titles:?}"
        );
    }
    for p in panels {
        for field in ["h", "w", "x", "y"] {
            assert!(
                p["gridPos"][field].is_u64(),
                "{}: gridPos.{field}",
                p["title"]
            );
        }
        assert!(p["type"].is_string() && p["datasource"]["type"] == "prometheus");
        for t in p["targets"].as_array().unwrap() {
            assert!(t["refId"].is_string());
            let expr = t["expr"].as_str().unwrap();
            // Every selector is filtered by the replica selector.
            assert_eq!(
                expr.matches('{').count(),
                expr.matches("instance=~\"$instance\"").count(),
                "{}: {expr}",
                p["title"]
            );
            exprs.push(expr.to_owned());
        }
    }
    // promtool parses each query as a recording rule's expression.
    let mut rules = String::from("groups:\n  - name: grafana\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: grafana:query_{i}\n        expr: {}\n",
            serde_json::to_string(&expand(e)).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("grafana_queries.yml");
    std::fs::write(&file, rules).unwrap();
    let report = run_promtool(&["check", "rules"], &[&file]);
    assert!(
        report.contains(&format!("SUCCESS: {} rules found", exprs.len())),
        "{report}"
    );
}

/// Two scrapes of a real gateway, a minute apart in promtool's eyes, as a rules unit test:
/// a key whose small budget cannot cover a request's worst case is refused, and the shipped
/// `KeygateBudgetExhausted` fires for it although its spend is far from 100%.
#[tokio::test]
async fn budget_refusals_of_a_real_gateway_fire_the_budget_alert() {
    use common::*;
    // $0.004 left; a request without max_tokens reserves 4096 output tokens at $1.10/M.
    let s = Setup::new(&[
        (
            "tiny",
            "scopes = [\"chat\"]\nlimits = { monthly_spend_usd = 0.004 }",
        ),
        (
            "roomy",
            "scopes = [\"chat\"]\nlimits = { monthly_spend_usd = 100 }",
        ),
    ])
    .await;
    assert_eq!(
        chat_request(&s.gw.url("/v1/chat/completions"), s.key("roomy"))
            .await
            .status,
        200
    );
    let scrape = || async {
        let a = get(&s.gw.admin_url("/metrics"), None).await;
        assert_eq!(a.status, 200);
        a.text()
    };
    let before = scrape().await;
    let refused = chat_request(&s.gw.url("/v1/chat/completions"), s.key("tiny")).await;
    assert_eq!(refused.code(), "budget_exceeded", "{}", refused.text());
    let after = scrape().await;

    let samples = |text: &str| -> std::collections::BTreeMap<String, String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_owned(), value.to_owned()))
            })
            .collect()
    };
    let (before, after) = (samples(&before), samples(&after));
    let mut input = String::new();
    for (series, value) in &after {
        // Only the series the budget alerts read, so the test stays small.
        if ![
            "keygate_key_spend_usd",
            "keygate_key_limit",
            "keygate_rate_limited_total",
        ]
        .iter()
        .any(|m| series.starts_with(&format!("{m}{{")))
        {
            continue;
        }
        let old = before.get(series).map_or("0", String::as_str);
        input.push_str(&format!(
            "  - series: '{series}'\n    values: '{old} {value} {value}'\n"
        ));
    }
    assert!(input.contains("limit=\"spend\""), "{input}");
    let test = format!(
        "rule_files:\n  - {}\ntests:\n- interval: 1m\n  input_series:\n{input}  alert_rule_test:\n  - eval_time: 2m\n    alertname: KeygateBudgetExhausted\n    exp_alerts:\n    - exp_labels:\n        severity: critical\n        key: tiny\n      exp_annotations:\n        summary: Key tiny is refused for its monthly budget\n        description: \"Spend has reached the budget, or what is left cannot cover a request's worst-case cost: requests get budget_exceeded until the next UTC month, a higher budget or a smaller max_tokens. `keygate keys diagnose` gives the numbers.\"\n",
        deploy("prometheus/alerts.yml").display()
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("real_scrape_test.yml");
    std::fs::write(&file, &test).unwrap();
    let report = run_promtool(&["test", "rules"], &[&file]);
    assert!(report.contains("SUCCESS"), "{report}\n{test}");
}
