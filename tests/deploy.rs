//! The deployment files (`Dockerfile`, `deploy/`) against the real binary:
//! they parse, every flag and config key they give is one `ringway --help`
//! lists (and the ConfigMap's file passes `ringway check`), every path a
//! probe or the HEALTHCHECK asks for is served by `--metrics-listen`, the
//! HEALTHCHECK's own command line tells 200 from 503 and from nothing, and
//! every metric the dashboard and the alert rules query is one ringway
//! exports. A rename on either side fails here, not in a cluster.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use yaml_rust2::{Yaml, YamlLoader};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every file under `dir` whose name ends with one of `exts`, sorted.
fn files_under(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if exts
                .iter()
                .any(|x| path.extension().is_some_and(|e| e == *x))
            {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The documents of one YAML file; panics with the file's name on a
/// syntax error.
fn yaml_docs(path: &Path) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every document of every manifest under deploy/kubernetes/.
fn manifests() -> Vec<Yaml> {
    files_under(&repo().join("deploy/kubernetes"), &["yaml", "yml"])
        .iter()
        .flat_map(|p| yaml_docs(p))
        .collect()
}

fn of_kind(docs: &[Yaml], kind: &str) -> Vec<Yaml> {
    docs.iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
        .cloned()
        .collect()
}

/// The one Deployment.
fn deployment() -> Yaml {
    let mut all = of_kind(&manifests(), "Deployment");
    assert_eq!(all.len(), 1, "one Deployment under deploy/kubernetes/");
    all.remove(0)
}

fn seq(y: &Yaml) -> &[Yaml] {
    y.as_vec().map_or(&[], Vec::as_slice)
}

/// The strings of a YAML list (`args`, `command`).
fn strings(y: &Yaml) -> Vec<String> {
    seq(y)
        .iter()
        .map(|v| match v {
            Yaml::String(s) => s.clone(),
            Yaml::Integer(i) => i.to_string(),
            other => panic!("not a string: {other:?}"),
        })
        .collect()
}

/// The long flag names `ringway --help` lists (`listen`, `metrics-listen`, ...).
fn ringway_flags() -> BTreeSet<String> {
    let (code, help, _) = run_with_output(&["--help"], PATIENCE);
    assert_eq!(code, Some(0), "ringway --help");
    let flags = help_flags(&help);
    assert!(
        flags.contains("listen") && flags.contains("metrics-listen"),
        "no flags found in --help: {help}"
    );
    flags
}

/// The long flags (`--name` or `--name=value`) among `args`, without `--`.
fn flags_in(args: &[String]) -> Vec<String> {
    args.iter()
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap().to_string())
        .collect()
}

/// The value after `--flag` (or of `--flag=value`) in `args`.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let long = format!("--{flag}");
    args.iter().enumerate().find_map(|(i, a)| {
        if *a == long {
            args.get(i + 1).map(String::as_str)
        } else {
            a.strip_prefix(&format!("{long}="))
        }
    })
}

/// The port of `--metrics-listen` in `args`.
fn metrics_port(args: &[String]) -> u16 {
    let addr = flag_value(args, "metrics-listen").expect("--metrics-listen in the arguments");
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    addr.port()
}

/// A ringway with a metrics endpoint, in front of an echo backend.
fn proxy_with_metrics(backend: &Backend) -> (Proxy, std::net::SocketAddr) {
    let proxy = start_proxy(backend, &["--metrics-listen", "127.0.0.1:0"]);
    let metrics = metrics_addr(&proxy);
    (proxy, metrics)
}

#[test]
fn every_deploy_file_parses() {
    let dir = repo().join("deploy");
    let yamls = files_under(&dir, &["yaml", "yml"]);
    assert!(yamls.len() >= 5, "YAML files under deploy/: {yamls:?}");
    for path in &yamls {
        let docs = yaml_docs(path);
        assert!(!docs.is_empty(), "{}: no document", path.display());
        for doc in &docs {
            assert!(
                doc.as_hash().is_some(),
                "{}: a document that is not a mapping",
                path.display()
            );
        }
    }
    for path in files_under(&dir, &["json"]) {
        serde_json::from_str::<serde_json::Value>(&read(&path))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    // Every Kubernetes object names its API and kind; the kustomization
    // lists files that exist.
    for doc in manifests() {
        assert!(
            doc["apiVersion"].as_str().is_some() && doc["kind"].as_str().is_some(),
            "a manifest without apiVersion or kind: {doc:?}"
        );
    }
    let kustomization = yaml_docs(&repo().join("deploy/kubernetes/kustomization.yaml"));
    for file in strings(&kustomization[0]["resources"]) {
        let path = repo().join("deploy/kubernetes").join(&file);
        assert!(path.is_file(), "kustomization.yaml names {file}, absent");
    }
}

#[test]
fn deployment_args_are_ringway_flags() {
    let known = ringway_flags();
    let deployment = deployment();
    let containers = seq(&deployment["spec"]["template"]["spec"]["containers"]);
    assert!(!containers.is_empty(), "the Deployment has no container");
    for c in containers {
        let mut args = strings(&c["command"]);
        args.extend(strings(&c["args"]));
        let unknown: Vec<String> = flags_in(&args)
            .into_iter()
            .filter(|f| !known.contains(f))
            .collect();
        assert!(
            unknown.is_empty(),
            "the Deployment's container {:?} gives flags `ringway --help` does not list: {unknown:?}",
            c["name"]
        );
    }
}

/// The ConfigMap's TOML file, as `(key in data, text)`.
fn configmap_tomls() -> Vec<(String, String)> {
    let maps = of_kind(&manifests(), "ConfigMap");
    assert!(!maps.is_empty(), "no ConfigMap under deploy/kubernetes/");
    let mut out = Vec::new();
    for map in &maps {
        for (k, v) in map["data"].as_hash().into_iter().flatten() {
            let key = k.as_str().unwrap();
            if key.ends_with(".toml") {
                out.push((key.to_string(), v.as_str().unwrap().to_string()));
            }
        }
    }
    assert!(!out.is_empty(), "no .toml in the ConfigMap's data");
    out
}

/// `text` with the host names of its `upstream` entries replaced by
/// 127.0.0.1: ringway resolves them at start (and `check` does too), and a
/// cluster's Service names do not resolve here. Everything else stays.
fn with_resolvable_upstreams(table: &toml::Table, text: &str) -> String {
    let mut text = text.to_string();
    let Some(list) = table.get("upstream").and_then(|v| v.as_array()) else {
        return text;
    };
    for entry in list.iter().filter_map(|v| v.as_str()) {
        let (head, params) = match entry.split_once(',') {
            Some((h, p)) => (h, format!(",{p}")),
            None => (entry, String::new()),
        };
        let (group, addr) = match head.split_once('=') {
            Some((g, a)) => (format!("{g}="), a),
            None => (String::new(), head),
        };
        let (scheme, hostport) = match addr.split_once("://") {
            Some((s, hp)) => (format!("{s}://"), hp),
            None => (String::new(), addr),
        };
        let (host, port) = hostport.rsplit_once(':').expect("HOST:PORT");
        if host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok() {
            continue;
        }
        let local = format!("{group}{scheme}127.0.0.1:{port}{params}");
        text = text.replace(&format!("\"{entry}\""), &format!("\"{local}\""));
    }
    text
}

#[test]
fn configmap_toml_keys_are_flags_and_pass_check() {
    let known = ringway_flags();
    let dir = TempDir::new();
    for (name, text) in configmap_tomls() {
        let table: toml::Table = text
            .parse()
            .unwrap_or_else(|e| panic!("the ConfigMap's {name}: {e}"));
        let unknown: Vec<&String> = table
            .keys()
            .filter(|k| !known.contains(&k.replace('_', "-")))
            .collect();
        assert!(
            unknown.is_empty(),
            "the ConfigMap's {name} has keys that are not ringway flags: {unknown:?}"
        );
        let file = dir.file(&name, &with_resolvable_upstreams(&table, &text));
        let (code, out, err) = run_with_output(&["check", "--config", &file], PATIENCE);
        assert_eq!(
            code,
            Some(0),
            "ringway check --config (the ConfigMap's {name}): {err}{out}"
        );
    }
}

#[test]
fn probe_paths_are_served_on_the_metrics_port() {
    let deployment = deployment();
    let pod = &deployment["spec"]["template"];
    let container = &seq(&pod["spec"]["containers"])[0];
    let args = strings(&container["args"]);
    let port = metrics_port(&args);

    // The probes' port (by name or number) is --metrics-listen's, and so is
    // the scrape annotation's.
    let ports = seq(&container["ports"]);
    let port_of = |p: &Yaml| -> i64 {
        match p {
            Yaml::Integer(n) => *n,
            Yaml::String(name) => ports
                .iter()
                .find(|cp| cp["name"].as_str() == Some(name))
                .and_then(|cp| cp["containerPort"].as_i64())
                .unwrap_or_else(|| panic!("no container port named {name}")),
            other => panic!("a probe port {other:?}"),
        }
    };
    let mut paths = Vec::new();
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        let get = &container[probe]["httpGet"];
        if get.is_badvalue() {
            continue;
        }
        assert_eq!(
            port_of(&get["port"]),
            i64::from(port),
            "{probe}'s port is not --metrics-listen's"
        );
        paths.push((probe.to_string(), get["path"].as_str().unwrap().to_string()));
    }
    assert!(
        paths.iter().any(|(p, _)| p == "readinessProbe")
            && paths.iter().any(|(p, _)| p == "livenessProbe"),
        "readiness and liveness probes over HTTP: {paths:?}"
    );
    let notes = &pod["metadata"]["annotations"];
    if let Some(scrape_port) = notes["prometheus.io/port"].as_str() {
        assert_eq!(scrape_port, port.to_string(), "prometheus.io/port");
    }
    if let Some(path) = notes["prometheus.io/path"].as_str() {
        paths.push(("prometheus.io/path".into(), path.to_string()));
    }

    let backend = Backend::echo();
    let (_proxy, metrics) = proxy_with_metrics(&backend);
    for (what, path) in paths {
        let (status, body) = scrape(metrics, &path);
        assert_eq!(status, 200, "{what} GET {path}: {body}");
    }
}

/// A duration as the config file writes it: `30s`, `500ms`, `2m`, `1h`, or
/// bare seconds.
fn seconds(s: &str) -> f64 {
    let s = s.trim();
    let (n, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = n.parse().unwrap_or_else(|_| panic!("duration {s:?}"));
    n * match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => panic!("duration {s:?}"),
    }
}

#[test]
fn grace_period_covers_prestop_and_drain() {
    let deployment = deployment();
    let spec = &deployment["spec"]["template"]["spec"];
    let container = &seq(&spec["containers"])[0];
    let args = strings(&container["args"]);
    // --drain-timeout: the arguments', else the ConfigMap's, else 30 s.
    let drain = flag_value(&args, "drain-timeout")
        .map(seconds)
        .or_else(|| {
            configmap_tomls().iter().find_map(|(_, text)| {
                let table: toml::Table = text.parse().unwrap();
                let v = table.get("drain-timeout").or(table.get("drain_timeout"))?;
                Some(match v {
                    toml::Value::Integer(n) => *n as f64,
                    v => seconds(v.as_str().unwrap()),
                })
            })
        })
        .unwrap_or(30.0);
    let pre_stop = &container["lifecycle"]["preStop"];
    let sleep = if let Some(s) = pre_stop["sleep"]["seconds"].as_i64() {
        s as f64
    } else {
        let command = strings(&pre_stop["exec"]["command"]);
        assert_eq!(
            command.first().map(String::as_str),
            Some("sleep"),
            "preStop"
        );
        seconds(&command[1])
    };
    let grace = spec["terminationGracePeriodSeconds"]
        .as_i64()
        .expect("terminationGracePeriodSeconds") as f64;
    assert!(
        grace > sleep + drain,
        "terminationGracePeriodSeconds {grace} must exceed preStop {sleep} s + --drain-timeout {drain} s"
    );
}

/// The Dockerfile's instructions, continuation lines joined, comments and
/// the parser directive dropped: `(INSTRUCTION, rest)`.
fn dockerfile() -> Vec<(String, String)> {
    let text = read(&repo().join("Dockerfile"));
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (word, rest) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((word.to_ascii_uppercase(), rest.trim().to_string()));
                current.clear();
            }
        }
    }
    out
}

/// The exec form (`["a", "b"]`) of an instruction's argument.
fn exec_form(rest: &str) -> Vec<String> {
    let json = &rest[rest.find('[').expect("exec form, [\"...\"]")..];
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{json}: {e}"))
}

/// The Dockerfile's last `name` instruction (the one that counts).
fn instruction(all: &[(String, String)], name: &str) -> String {
    all.iter()
        .rev()
        .find(|(w, _)| w == name)
        .map(|(_, r)| r.clone())
        .unwrap_or_else(|| panic!("no {name} in the Dockerfile"))
}

/// Run the HEALTHCHECK's command with its port changed to `port`: whether
/// it exited 0.
fn healthcheck_passes(command: &[String], image_port: u16, port: u16) -> bool {
    let from = format!("/dev/tcp/127.0.0.1/{image_port}");
    let to = format!("/dev/tcp/127.0.0.1/{port}");
    let command: Vec<String> = command.iter().map(|a| a.replace(&from, &to)).collect();
    let mut child = Command::new(&command[0])
        .args(&command[1..])
        .spawn()
        .expect("run the HEALTHCHECK command");
    // Docker's --timeout, here PATIENCE.
    wait_child(&mut child, PATIENCE).is_some_and(|st| st.success())
}

#[test]
fn dockerfile_runs_real_flags_and_its_healthcheck_tells_health() {
    let known = ringway_flags();
    let all = dockerfile();
    let entrypoint = exec_form(&instruction(&all, "ENTRYPOINT"));
    assert!(
        entrypoint[0].ends_with("/ringway"),
        "ENTRYPOINT runs ringway: {entrypoint:?}"
    );
    let mut args = entrypoint[1..].to_vec();
    args.extend(exec_form(&instruction(&all, "CMD")));
    let unknown: Vec<String> = flags_in(&args)
        .into_iter()
        .filter(|f| !known.contains(f))
        .collect();
    assert!(
        unknown.is_empty(),
        "ENTRYPOINT/CMD flags `ringway --help` does not list: {unknown:?}"
    );
    assert_eq!(
        flag_value(&args, "config"),
        Some("/etc/ringway/ringway.toml"),
        "the config is the mounted file"
    );
    let port = metrics_port(&args);

    assert_eq!(instruction(&all, "STOPSIGNAL"), "SIGTERM");
    let user = instruction(&all, "USER");
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("a numeric USER");
    assert_ne!(uid, 0, "USER is not root");
    let exposed = instruction(&all, "EXPOSE");
    assert!(
        exposed.split_whitespace().any(|p| p == port.to_string()),
        "EXPOSE {exposed} lacks the metrics port {port}"
    );

    // The HEALTHCHECK asks the --metrics-listen port for a path ringway
    // serves ...
    let health = exec_form(&instruction(&all, "HEALTHCHECK"));
    let script = health.join(" ");
    assert!(
        script.contains(&format!("/dev/tcp/127.0.0.1/{port}")),
        "the HEALTHCHECK does not ask --metrics-listen's port {port}: {script}"
    );
    let path = script
        .split("GET ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .expect("a GET in the HEALTHCHECK");
    let backend = Backend::echo();
    let (proxy, metrics) = proxy_with_metrics(&backend);
    let (status, body) = scrape(metrics, path);
    assert_eq!(status, 200, "HEALTHCHECK GET {path}: {body}");

    // ... and its command line, run as Docker runs it, passes while
    // ringway accepts, fails while it drains (503) and when nothing
    // listens.
    assert!(
        healthcheck_passes(&health, port, metrics.port()),
        "the HEALTHCHECK failed against a healthy ringway"
    );
    let mut tunnel = ws_client(&proxy, "/held");
    echo_once(&mut tunnel, "keeps the drain going");
    proxy.signal("TERM");
    let deadline = Instant::now() + PATIENCE;
    while scrape(metrics, path).0 != 503 {
        assert!(Instant::now() < deadline, "{path} never answered 503");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        !healthcheck_passes(&health, port, metrics.port()),
        "the HEALTHCHECK passed while ringway drained"
    );
    let nothing = dead_port();
    assert!(
        !healthcheck_passes(&health, port, nothing.port()),
        "the HEALTHCHECK passed with nothing listening"
    );
}

/// Every PromQL expression of the dashboard (panel targets, and the
/// template variables' queries) and of the alert rules, with where it is.
fn queries() -> Vec<(String, String)> {
    fn walk(v: &serde_json::Value, at: &str, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(map) => {
                let title = map.get("title").and_then(|t| t.as_str()).unwrap_or("");
                let here = if title.is_empty() {
                    at.to_string()
                } else {
                    format!("{at} > {title}")
                };
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                            out.push((format!("{here} ({k})"), s.clone()))
                        }
                        _ => walk(v, &here, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, at, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    let dashboards = files_under(&repo().join("deploy/grafana"), &["json"]);
    assert!(!dashboards.is_empty(), "no dashboard under deploy/grafana/");
    for path in dashboards {
        let json: serde_json::Value = serde_json::from_str(&read(&path)).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        walk(&json, &name, &mut out);
    }
    let rule_files = files_under(&repo().join("deploy/prometheus"), &["yaml", "yml"]);
    assert!(!rule_files.is_empty(), "no rules under deploy/prometheus/");
    for path in rule_files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        for doc in yaml_docs(&path) {
            for group in seq(&doc["groups"]) {
                for rule in seq(&group["rules"]) {
                    let id = rule["alert"]
                        .as_str()
                        .or(rule["record"].as_str())
                        .unwrap_or_else(|| panic!("{name}: a rule with no alert or record name"));
                    if rule["alert"].as_str().is_some() {
                        assert!(
                            rule["labels"]["severity"].as_str().is_some()
                                && rule["annotations"]["summary"].as_str().is_some(),
                            "{name}: {id} needs labels.severity and annotations.summary"
                        );
                    }
                    let expr = rule["expr"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{name}: {id} has no expr"));
                    out.push((format!("{name} > {id}"), expr.to_string()));
                }
            }
        }
    }
    out
}

/// The metric names an expression uses that start with `ringway_`: the
/// identifiers outside quotes (label values, strings), outside `{...}`
/// (label names) and outside the label lists of `by`, `without`, `on`,
/// `ignoring`, `group_left` and `group_right`, whole.
fn ringway_names(expr: &str) -> Vec<String> {
    const LABEL_LISTS: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let mut names = Vec::new();
    let (mut quote, mut braces, mut labels) = (None, 0u32, false);
    let (mut word, mut last) = (String::new(), String::new());
    for c in expr.chars().chain(std::iter::once(' ')) {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
            continue;
        }
        if !word.is_empty() {
            if braces == 0 && !labels && word.starts_with("ringway_") {
                names.push(word.clone());
            }
            last = std::mem::take(&mut word).to_ascii_lowercase();
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '{' => braces += 1,
            '}' => braces = braces.saturating_sub(1),
            '(' if LABEL_LISTS.contains(&last.as_str()) => labels = true,
            ')' => labels = false,
            _ => {}
        }
        if !c.is_whitespace() {
            last.clear();
        }
    }
    names
}

/// Brackets balance and quotes close: what a typo breaks first.
fn balanced(expr: &str) -> bool {
    let mut stack = Vec::new();
    let mut quote = None;
    for c in expr.chars() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '"' | '\'' | '`' => quote = Some(c),
            '(' | '[' | '{' => stack.push(c),
            ')' | ']' | '}' => {
                let open = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if stack.pop() != Some(open) {
                    return false;
                }
            }
            _ => {}
        }
    }
    stack.is_empty() && quote.is_none()
}

#[test]
fn dashboard_and_alerts_query_only_exported_metrics() {
    // The families /metrics declares (`# TYPE name kind`), after a tunnel
    // and a refusal; a histogram's samples are its _bucket, _sum, _count.
    let backend = Backend::echo();
    let (proxy, metrics) = proxy_with_metrics(&backend);
    let mut ws = ws_client(&proxy, "/traffic");
    echo_once(&mut ws, "some bytes");
    let _ = raw_exchange(proxy.addr, b"GET /nothing HTTP/1.1\r\n\r\n");
    let (status, text) = scrape(metrics, "/metrics");
    assert_eq!(status, 200);
    let mut exported = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        exported.insert(name.to_string());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                exported.insert(format!("{name}{suffix}"));
            }
        }
    }
    assert!(exported.contains("ringway_tunnels_active"), "{text}");

    let queries = queries();
    assert!(queries.len() >= 20, "few queries found: {queries:?}");
    let mut used = BTreeSet::new();
    let mut wrong = Vec::new();
    for (at, expr) in &queries {
        assert!(
            balanced(expr),
            "{at}: unbalanced brackets or quotes in {expr:?}"
        );
        for name in ringway_names(expr) {
            if !exported.contains(&name) {
                wrong.push(format!("{at}: {name}"));
            }
            used.insert(name);
        }
    }
    assert!(
        wrong.is_empty(),
        "metrics ringway does not export (its /metrics declares {exported:?}):\n{}",
        wrong.join("\n")
    );
    assert!(used.len() >= 15, "few ringway metrics used: {used:?}");
}

#[test]
fn metric_names_are_found_in_promql() {
    assert_eq!(
        ringway_names(
            "histogram_quantile(0.9, sum by (le) (rate(ringway_upstream_connect_seconds_bucket{instance=~\"ringway_x\"}[5m]))) / on (instance) ringway_workers"
        ),
        ["ringway_upstream_connect_seconds_bucket", "ringway_workers"]
    );
    assert_eq!(
        ringway_names(
            "sum by (ringway_label) (up{job='ringway_job'}) * on (ringway_l) group_left (ringway_m) ringway_build_info"
        ),
        ["ringway_build_info"],
        "label lists and label values are not metric names"
    );
    assert!(balanced("sum(rate(a{b=\"(\"}[5m]))"));
    assert!(!balanced("sum(rate(a[5m])"));
}
