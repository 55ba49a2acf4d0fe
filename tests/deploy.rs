//! The shipped deployment files in `deploy/`: a Dockerfile that hadolint accepts, Kubernetes
//! manifests valid against the Kubernetes API's schemas, a hardened systemd unit that
//! `systemd-analyze verify` accepts, a compose file that follows the compose spec and mounts
//! only files that exist, and an nginx config that `nginx -t` accepts. Every keygate config
//! they ship passes `keygate check`, and the files agree with each other (ports, names,
//! addresses). The validators come from `scripts/test.sh` (through `scripts/deploy-tools.sh`);
//! a missing one fails its test, never skips it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly by design

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{KEYGATE_BIN, promtool, python, run_keygate};
use serde_json::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn deploy(path: &str) -> PathBuf {
    root().join("deploy").join(path)
}

/// A validator: `$var` if set, else the copy `scripts/test.sh` installs in the repository
/// (`local`), else `name` on PATH. Missing is a failure that says how to get it.
fn tool(var: &str, name: &str, local: Option<&str>) -> PathBuf {
    let hint = format!("run scripts/test.sh, which installs {name} (scripts/deploy-tools.sh)");
    if let Some(path) = std::env::var_os(var) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "${var} is {}, which does not exist: {hint}",
            path.display()
        );
        return path;
    }
    if let Some(local) = local.map(|l| root().join(l)).filter(|l| l.is_file()) {
        return local;
    }
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("{name} is missing: {hint}"))
}

/// Runs a command; whether it succeeded, and its stdout and stderr together.
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), report)
}

/// Every YAML document of a file, as JSON. Anchors and merge keys (`<<`) are resolved.
fn yaml(path: &Path) -> Vec<Value> {
    const SCRIPT: &str = "import json, sys, yaml\n\
        with open(sys.argv[1]) as f:\n    \
        json.dump(list(yaml.safe_load_all(f)), sys.stdout, default=str)\n";
    let out = Command::new(python())
        .args(["-c", SCRIPT])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cannot parse {} as YAML (run scripts/test.sh, which installs PyYAML into .venv):\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn toml_file(path: &Path) -> toml::Table {
    std::fs::read_to_string(path)
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The keygate config held by the ConfigMap in `deploy/kubernetes/configmap.yaml`.
fn configmap_toml() -> String {
    let configmap = yaml(&deploy("kubernetes/configmap.yaml")).remove(0);
    configmap["data"]["keygate.toml"]
        .as_str()
        .expect("configmap.yaml holds keygate.toml")
        .to_owned()
}

/// The item of a JSON list whose `field` is `value`.
fn find<'a>(list: &'a Value, field: &str, value: &str) -> &'a Value {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .find(|item| item[field] == value)
        .unwrap_or_else(|| panic!("no {field} = {value} in {list}"))
}

/// The manifest of one kind.
fn manifest<'a>(manifests: &'a BTreeMap<String, Value>, kind: &str) -> &'a Value {
    manifests
        .get(kind)
        .unwrap_or_else(|| panic!("no {kind} in deploy/kubernetes"))
}

/// The fixed address a compose service has on its network.
fn fixed_address(service: &Value) -> Option<String> {
    service["networks"]
        .as_object()?
        .values()
        .find_map(|n| n["ipv4_address"].as_str())
        .map(str::to_owned)
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect()
}

#[test]
fn the_dockerfile_passes_hadolint_and_copies_only_what_the_context_holds() {
    let dockerfile = deploy("docker/Dockerfile");
    let hadolint = tool("KEYGATE_HADOLINT", "hadolint", Some(".venv/bin/hadolint"));
    let (ok, report) = run(Command::new(hadolint)
        .arg("--no-color")
        .arg(dockerfile.as_path()));
    // hadolint prints nothing for a clean file; style findings print without failing.
    assert!(ok && report.trim().is_empty(), "hadolint:\n{report}");

    // Every file the build copies from the context exists and is let through .dockerignore.
    let text = std::fs::read_to_string(dockerfile).unwrap();
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    let allowed: BTreeSet<&str> = ignore
        .lines()
        .filter_map(|l| l.trim().strip_prefix('!'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    let mut copied = BTreeSet::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from="))
    {
        let words: Vec<&str> = line.split_whitespace().skip(1).collect();
        let (_destination, sources) = words.split_last().unwrap();
        for &source in sources {
            let source = source.trim_end_matches('/');
            assert!(root().join(source).exists(), "COPY {source}: no such file");
            assert!(
                allowed.contains(source),
                "COPY {source}: .dockerignore keeps it out of the build context"
            );
            copied.insert(source);
        }
    }
    // cargo loads the whole workspace, so every member must be in the image's build.
    let cargo_toml = toml_file(&root().join("Cargo.toml"));
    for member in cargo_toml["workspace"]["members"].as_array().unwrap() {
        let member = member.as_str().unwrap();
        assert!(
            member == "." || copied.iter().any(|c| member.starts_with(c)),
            "workspace member {member} is not copied into the build stage"
        );
    }
    for wanted in ["Cargo.toml", "Cargo.lock", "src", "benches"] {
        assert!(copied.contains(wanted), "the build does not copy {wanted}");
    }
    // The runtime contract the compose file and the Kubernetes manifests rely on.
    for wanted in [
        "EXPOSE 8080 8090",
        "USER 10001:10001",
        "COPY deploy/docker/keygate.toml /etc/keygate/keygate.toml",
        r#"ENTRYPOINT ["/usr/local/bin/keygate"]"#,
        r#"CMD ["serve", "--config", "/etc/keygate/keygate.toml"]"#,
    ] {
        assert!(
            text.lines().any(|l| l == wanted),
            "the Dockerfile lacks {wanted}"
        );
    }
}

#[test]
fn every_shipped_config_passes_keygate_check_and_is_set_up_for_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let configmap = dir.path().join("configmap-keygate.toml");
    std::fs::write(&configmap, configmap_toml()).unwrap();
    for config in [
        deploy("docker/keygate.toml"),
        deploy("compose/keygate.toml"),
        configmap,
    ] {
        let out = run_keygate(&["check"], &config);
        assert!(
            out.status.success(),
            "keygate check {}:\n{}{}",
            config.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let table = toml_file(&config);
        let name = config.display();
        // Reachable from other containers and pods, the ledger in the image's writable
        // directory, and limits shared through the Redis named by the environment.
        assert_eq!(
            table["server"]["listen"].as_str(),
            Some("0.0.0.0:8080"),
            "{name}"
        );
        assert_eq!(
            table["admin"]["listen"].as_str(),
            Some("0.0.0.0:8090"),
            "{name}"
        );
        assert!(
            table["storage"]["path"]
                .as_str()
                .unwrap()
                .starts_with("/var/lib/keygate/"),
            "{name}"
        );
        assert_eq!(
            table["cluster"]["redis_url_env"].as_str(),
            Some("KEYGATE_REDIS_URL"),
            "{name}"
        );
    }
}

#[test]
fn the_kubernetes_manifests_validate_and_refer_to_each_other() {
    let validator = tool(
        "KEYGATE_KUBERNETES_VALIDATE",
        "kubernetes-validate",
        Some(".venv/bin/kubernetes-validate"),
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy("kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let versions: [&[&str]; 2] = [&["--kubernetes-version", "1.30.0"], &[]];
    let mut manifests = BTreeMap::new();
    for file in &files {
        let mut docs = yaml(file);
        assert_eq!(docs.len(), 1, "{}: one manifest per file", file.display());
        let doc = docs.remove(0);
        let kind = doc["kind"].as_str().unwrap().to_owned();
        // Strictly (an unknown field is an error), against the oldest Kubernetes the manifests
        // support (1.30: the preStop sleep action) and the newest the validator knows. It has
        // no schema for the ServiceMonitor CRD or for kustomize's file: those are checked by
        // their references below.
        for version in versions {
            let (ok, report) = run(Command::new(validator.as_path())
                .arg("--strict")
                .args(version)
                .arg(file));
            assert!(ok, "kubernetes-validate {version:?}:\n{report}");
            if !matches!(kind.as_str(), "ServiceMonitor" | "Kustomization") {
                assert!(
                    report.contains(&format!("{} passed", file.display())),
                    "kubernetes-validate {version:?}:\n{report}"
                );
            }
        }
        assert!(
            manifests.insert(kind, doc).is_none(),
            "{}: one file per kind",
            file.display()
        );
    }
    let get = |kind: &str| manifest(&manifests, kind);
    let (deployment, service, configmap) = (get("Deployment"), get("Service"), get("ConfigMap"));
    let config: toml::Table = configmap_toml().parse().unwrap();

    // kustomization.yaml lists every other manifest.
    let listed: BTreeSet<&str> = strings(&get("Kustomization")["resources"])
        .into_iter()
        .collect();
    let present: BTreeSet<&str> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_str().unwrap())
        .filter(|f| *f != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present, "kustomization.yaml resources");

    // Every selector selects the Deployment's pods.
    let pod = &deployment["spec"]["template"];
    let selects = |selector: &Value| {
        let selector = selector.as_object().unwrap();
        !selector.is_empty()
            && selector
                .iter()
                .all(|(k, v)| pod["metadata"]["labels"][k.as_str()] == *v)
    };
    assert!(selects(&deployment["spec"]["selector"]["matchLabels"]));
    assert!(selects(&service["spec"]["selector"]));
    assert!(selects(
        &get("PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    ));
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 2);

    // The autoscaler scales this Deployment, and its maximum is the degraded mode's hint.
    let hpa = &get("HorizontalPodAutoscaler")["spec"];
    assert_eq!(hpa["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(
        hpa["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    assert!(hpa["minReplicas"].as_u64().unwrap() >= 2);
    assert_eq!(
        hpa["maxReplicas"].as_i64(),
        config["cluster"]["replicas_hint"].as_integer(),
        "hpa.yaml maxReplicas and the ConfigMap's cluster.replicas_hint go together"
    );

    // The container: ports, probes, resources, hardening.
    let spec = &pod["spec"];
    let containers = spec["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(find(&c["ports"], "name", "http")["containerPort"], 8080);
    assert_eq!(find(&c["ports"], "name", "admin")["containerPort"], 8090);
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{probe}");
        assert_eq!(c[probe]["httpGet"]["port"], "admin", "{probe}");
    }
    for bound in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                c["resources"][bound][resource].is_string(),
                "resources.{bound}.{resource}"
            );
        }
    }
    let security = &c["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert!(
        strings(&c["args"]).contains(&"/etc/keygate/keygate.toml"),
        "{}",
        c["args"]
    );

    // Secrets come from Secret references, under the names the config reads them from.
    for env_name in [
        config["upstream"]["api_key_env"].as_str().unwrap(),
        config["admin"]["token_env"].as_str().unwrap(),
        config["cluster"]["redis_url_env"].as_str().unwrap(),
    ] {
        let var = find(&c["env"], "name", env_name);
        assert!(
            var["valueFrom"]["secretKeyRef"]["name"].is_string(),
            "{env_name} is not taken from a Secret: {var}"
        );
    }

    // The config directory is the whole ConfigMap (no subPath, which would never be
    // updated), read-only; the ledger is on an emptyDir.
    let mount = |path: &str| {
        let m = find(&c["volumeMounts"], "mountPath", path);
        (
            m,
            find(&spec["volumes"], "name", m["name"].as_str().unwrap()),
        )
    };
    let (m, volume) = mount("/etc/keygate");
    assert!(
        m.get("subPath").is_none() && m["readOnly"].as_bool() == Some(true),
        "{m}"
    );
    assert_eq!(volume["configMap"]["name"], configmap["metadata"]["name"]);
    let (_, volume) = mount("/var/lib/keygate");
    assert!(volume["emptyDir"].is_object(), "{volume}");
    assert!(
        config["storage"]["path"]
            .as_str()
            .unwrap()
            .starts_with("/var/lib/keygate/")
    );

    // The Service: the API on port 80, the admin listener as "metrics", which the
    // ServiceMonitor scrapes.
    let service_port = |name: &str| find(&service["spec"]["ports"], "name", name);
    assert_eq!(service_port("http")["port"], 80);
    assert_eq!(service_port("http")["targetPort"], "http");
    assert_eq!(service_port("metrics")["targetPort"], "admin");
    let monitor = get("ServiceMonitor");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    let wanted = monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap();
    assert!(
        !wanted.is_empty()
            && wanted
                .iter()
                .all(|(k, v)| service["metadata"]["labels"][k.as_str()] == *v),
        "the ServiceMonitor does not select the Service"
    );
    let endpoints = monitor["spec"]["endpoints"].as_array().unwrap();
    assert!(!endpoints.is_empty());
    for endpoint in endpoints {
        assert_eq!(
            service_port(endpoint["port"].as_str().unwrap())["targetPort"],
            "admin"
        );
        assert_eq!(endpoint["path"], "/metrics");
    }
}

#[test]
fn the_systemd_unit_verifies_and_keeps_its_hardening() {
    let analyze = tool("KEYGATE_SYSTEMD_ANALYZE", "systemd-analyze", None);
    let unit = std::fs::read_to_string(deploy("systemd/keygate.service")).unwrap();
    for directive in [
        "ExecStart=/usr/local/bin/keygate serve --config /etc/keygate/keygate.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "EnvironmentFile=-/etc/keygate/keygate.env",
        "Restart=on-failure",
        "DynamicUser=yes",
        "StateDirectory=keygate",
        "ConfigurationDirectory=keygate",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "CapabilityBoundingSet=",
        "SystemCallFilter=@system-service",
    ] {
        assert!(
            unit.lines().any(|l| l == directive),
            "keygate.service lacks {directive}"
        );
    }
    // verify checks that ExecStart's program exists: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keygate.service");
    let local = unit.replace(
        "ExecStart=/usr/local/bin/keygate ",
        &format!("ExecStart={KEYGATE_BIN} "),
    );
    std::fs::write(&file, local).unwrap();
    let (ok, report) = run(Command::new(analyze.as_path())
        .args(["verify", "--man=no"])
        .arg(file.as_path()));
    // verify only warns about an unknown or unparsable setting, and still exits 0: any
    // output is a failure.
    assert!(
        ok && report.trim().is_empty(),
        "systemd-analyze verify:\n{report}"
    );
    // systemd's own exposure score (0 = fully sandboxed, 10 = not at all) stays at most 2.0.
    let (ok, report) = run(Command::new(analyze.as_path())
        .args(["security", "--offline=yes", "--no-pager", "--threshold=20"])
        .arg(file.as_path()));
    assert!(ok, "systemd-analyze security:\n{report}");
}

/// Where a path inside a compose service's container comes from on the host, through its
/// bind mounts (`./host:/container[:mode]`, relative to `deploy/`).
fn host_path(service: &Value, container_path: &str) -> Option<PathBuf> {
    service["volumes"].as_array()?.iter().find_map(|v| {
        let mut parts = v.as_str()?.split(':');
        let (source, target) = (parts.next()?, parts.next()?);
        let rest = container_path.strip_prefix(target)?;
        if !source.starts_with('.') {
            return None;
        }
        if rest.is_empty() {
            return Some(deploy(source));
        }
        Some(deploy(source).join(rest.strip_prefix('/')?))
    })
}

/// The names a service lists under `key`, whether as a list or as a map.
fn names<'a>(service: &'a Value, key: &str) -> Vec<&'a str> {
    match &service[key] {
        Value::Array(list) => list.iter().map(|v| v.as_str().unwrap()).collect(),
        Value::Object(map) => map.keys().map(String::as_str).collect(),
        Value::Null => Vec::new(),
        other => panic!("{key}: {other}"),
    }
}

#[test]
fn the_compose_file_follows_the_compose_spec_and_mounts_only_what_exists() {
    let compose_file = deploy("compose.yaml");
    let checker = tool(
        "KEYGATE_CHECK_JSONSCHEMA",
        "check-jsonschema",
        Some(".venv/bin/check-jsonschema"),
    );
    let (ok, report) = run(Command::new(checker)
        .args(["--builtin-schema", "vendor.compose-spec"])
        .arg(compose_file.as_path()));
    assert!(ok, "compose.yaml against the compose spec:\n{report}");

    let compose = yaml(&compose_file).remove(0);
    let services = compose["services"].as_object().unwrap();
    let volumes = compose["volumes"].as_object().unwrap();
    let networks = compose["networks"].as_object().unwrap();
    let mut binds = 0;
    for (name, service) in services {
        if let Some(build) = service.get("build") {
            let context = deploy(build["context"].as_str().unwrap());
            let dockerfile = context.join(build["dockerfile"].as_str().unwrap_or("Dockerfile"));
            assert!(
                dockerfile.is_file(),
                "{name}: builds from {}, which does not exist",
                dockerfile.display()
            );
        }
        for volume in names(service, "volumes") {
            let source = volume.split(':').next().unwrap();
            if source.starts_with('.') || source.contains('/') {
                assert!(
                    source.starts_with("./") || source.starts_with("../"),
                    "{name}: {source} is not relative to deploy/"
                );
                assert!(
                    deploy(source).exists(),
                    "{name}: mounts {source}, which does not exist in deploy/"
                );
                binds += 1;
            } else {
                assert!(
                    volumes.contains_key(source),
                    "{name}: volume {source} is not declared"
                );
            }
        }
        for file in names(service, "env_file") {
            assert!(
                deploy(file).is_file(),
                "{name}: env_file {file} does not exist"
            );
        }
        for dependency in names(service, "depends_on") {
            assert!(
                services.contains_key(dependency),
                "{name}: depends on {dependency}"
            );
        }
        for network in names(service, "networks") {
            assert!(networks.contains_key(network), "{name}: network {network}");
        }
    }
    assert!(binds >= 6, "{binds} bind mounts");

    // Two or more keygate replicas built from the Dockerfile, sharing the Redis service and
    // one config directory.
    let replicas: Vec<(&String, &Value)> = services
        .iter()
        .filter(|(_, s)| s["build"]["dockerfile"] == "deploy/docker/Dockerfile")
        .collect();
    assert!(replicas.len() >= 2, "{} keygate replicas", replicas.len());
    assert!(services.contains_key("redis"));
    let config_file = host_path(replicas[0].1, "/etc/keygate/keygate.toml")
        .expect("the replicas mount their config directory");
    let config = toml_file(&config_file);
    let nginx_conf = std::fs::read_to_string(deploy("nginx/keygate.conf")).unwrap();
    let mut scraped = BTreeSet::new();
    for (name, replica) in &replicas {
        assert_eq!(
            replica["environment"]["KEYGATE_REDIS_URL"], "redis://redis:6379/0",
            "{name}"
        );
        assert_eq!(
            host_path(replica, "/etc/keygate/keygate.toml").as_ref(),
            Some(&config_file),
            "{name}: every replica reads the same config"
        );
        assert_eq!(replica["read_only"], true, "{name}");
        // nginx balances over it, Prometheus scrapes its admin listener by address.
        assert!(
            nginx_conf.contains(&format!("server {name}:8080")),
            "nginx/keygate.conf does not send to {name}"
        );
        scraped.insert(format!(
            "{}:8090",
            fixed_address(replica).unwrap_or_else(|| panic!("{name} has no fixed address"))
        ));
    }
    assert_eq!(
        config["cluster"]["replicas_hint"].as_integer(),
        i64::try_from(replicas.len()).ok()
    );

    // keygate believes X-Forwarded-For from the nginx service only.
    let nginx = &services["nginx"];
    let nginx_address = fixed_address(nginx).expect("nginx has a fixed address");
    let trusted: Vec<&str> = config["server"]["trusted_proxies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(trusted, [nginx_address.as_str()]);
    assert!(
        host_path(nginx, "/etc/nginx/conf.d/default.conf").is_some_and(|p| p.is_file()),
        "nginx mounts nginx/keygate.conf"
    );

    // Prometheus: a config promtool accepts, loading the alert rules, scraping every replica.
    let prometheus = &services["prometheus"];
    let config_arg = strings(&prometheus["command"])
        .into_iter()
        .find_map(|a| a.strip_prefix("--config.file="))
        .expect("prometheus is given --config.file");
    let prometheus_config = host_path(prometheus, config_arg)
        .unwrap_or_else(|| panic!("{config_arg} is not mounted from deploy/"));
    let (ok, report) = run(Command::new(promtool())
        .args(["check", "config"])
        .arg(prometheus_config.as_path()));
    assert!(
        ok && report.contains("SUCCESS: 1 rule files found"),
        "promtool:\n{report}"
    );
    let prometheus_yaml = yaml(&prometheus_config).remove(0);
    let targets: BTreeSet<String> = prometheus_yaml["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|job| job["static_configs"].as_array().unwrap())
        .flat_map(|group| strings(&group["targets"]))
        .map(str::to_owned)
        .collect();
    assert_eq!(targets, scraped, "Prometheus scrapes every replica");

    // Grafana: the datasource is the compose Prometheus, the dashboard provider's folder
    // holds the shipped dashboard.
    let grafana = &services["grafana"];
    let provisioning = host_path(grafana, "/etc/grafana/provisioning")
        .expect("grafana mounts its provisioning directory");
    let datasources = yaml(&provisioning.join("datasources/prometheus.yml")).remove(0);
    let url = datasources["datasources"][0]["url"].as_str().unwrap();
    let host = url
        .strip_prefix("http://")
        .and_then(|u| u.split(':').next())
        .unwrap();
    assert!(
        services.contains_key(host),
        "the datasource {url} is no service"
    );
    let dashboards = yaml(&provisioning.join("dashboards/keygate.yml")).remove(0);
    let folder = dashboards["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    let dashboard = host_path(grafana, &format!("{folder}/keygate.json"))
        .expect("the dashboard is mounted into the provider's folder");
    assert_eq!(dashboard, deploy("grafana/keygate.json"));
}

#[test]
fn the_nginx_config_passes_nginx_t_and_streams_unbuffered() {
    let nginx = tool(
        "KEYGATE_NGINX",
        "nginx",
        Some(".tools/nginx/usr/sbin/nginx"),
    );
    let conf = std::fs::read_to_string(deploy("nginx/keygate.conf")).unwrap();
    for wanted in [
        "proxy_buffering off;",
        "proxy_request_buffering off;",
        "proxy_http_version 1.1;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
    ] {
        assert!(
            conf.lines().any(|l| l.trim() == wanted),
            "nginx/keygate.conf lacks {wanted}"
        );
    }
    // Longer than keygate's own upstream timeouts (120 s), so keygate answers a slow upstream.
    let read_timeout: u64 = conf
        .lines()
        .find_map(|l| l.trim().strip_prefix("proxy_read_timeout "))
        .and_then(|v| v.trim_end_matches(';').strip_suffix('s'))
        .and_then(|v| v.parse().ok())
        .expect("proxy_read_timeout in seconds");
    assert!(read_timeout > 120, "proxy_read_timeout {read_timeout}s");

    // nginx -t resolves the upstream servers' names: the compose service names become
    // 127.0.0.1 here. The file goes in an http {} block, as in nginx's conf.d.
    let local: Vec<String> = conf
        .lines()
        .map(|l| match l.trim_start().strip_prefix("server ") {
            Some(rest) if rest.contains(':') => {
                let (_host, port) = rest.split_once(':').unwrap();
                format!("    server 127.0.0.1:{port}")
            }
            _ => l.to_owned(),
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    std::fs::write(dir.path().join("keygate.conf"), local.join("\n")).unwrap();
    let main = format!(
        "pid {d}/nginx.pid;\n\
         events {{}}\n\
         http {{\n\
         access_log off;\n\
         client_body_temp_path {d}/client_body;\n\
         proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n\
         uwsgi_temp_path {d}/uwsgi;\n\
         scgi_temp_path {d}/scgi;\n\
         include {d}/keygate.conf;\n\
         }}\n"
    );
    std::fs::write(dir.path().join("nginx.conf"), main).unwrap();
    let (ok, report) = run(Command::new(nginx)
        .args(["-t", "-e", "stderr", "-p"])
        .arg(dir.path())
        .arg("-c")
        .arg(dir.path().join("nginx.conf")));
    assert!(
        ok && report.contains("test is successful"),
        "nginx -t:\n{report}"
    );
}
