//! The shipped Grafana dashboard (`examples/grafana/syncflow.json`) and
//! Prometheus alerts (`examples/prometheus/alerts.yaml`) parse, have the
//! shape Grafana and Prometheus expect, and query only metrics syncflow
//! emits: every `syncflow_*` name in their expressions (histogram series
//! `_bucket`/`_sum`/`_count` taken back to the histogram) must be a string
//! literal somewhere in the `.rs` files under `src/`. A renamed or removed
//! metric fails here instead of leaving an empty panel or an alert that can
//! never fire. No network, no Prometheus needed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use regex::Regex;
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

const DASHBOARD: &str = "examples/grafana/syncflow.json";
const ALERTS: &str = "examples/prometheus/alerts.yaml";

/// Dashboard keys whose string values are PromQL: panel targets and
/// annotations (`expr`), template variables (`query`, `definition`).
const QUERY_KEYS: &[&str] = &["expr", "query", "definition"];

const SEVERITIES: &[&str] = &["critical", "warning", "info"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(file: &str) -> String {
    fs::read_to_string(root().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn dashboard() -> Json {
    serde_json::from_str(&read(DASHBOARD))
        .unwrap_or_else(|e| panic!("{DASHBOARD}: invalid JSON: {e}"))
}

fn alerts() -> Yaml {
    serde_yaml::from_str(&read(ALERTS)).unwrap_or_else(|e| panic!("{ALERTS}: invalid YAML: {e}"))
}

/// Every `"syncflow_..."` string literal in the `.rs` files under `src/`.
fn emitted() -> BTreeSet<String> {
    let literal = Regex::new(r#""(syncflow_[a-z0-9_]+)""#).unwrap();
    let mut names = BTreeSet::new();
    let mut dirs = vec![root().join("src")];
    while let Some(dir) = dirs.pop() {
        let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path: PathBuf = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let text =
                    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                names.extend(literal.captures_iter(&text).map(|c| c[1].to_string()));
            }
        }
    }
    // A scanner that finds nothing would let every name through as unknown
    // and hide the real failure; one that finds a known metric works.
    assert!(
        names.contains("syncflow_pipeline_received_total"),
        "found no metric names under src/ (found {names:?})"
    );
    names
}

/// The metric names an expression queries, each with the expression.
fn metrics_in(expr: &str, found: &mut BTreeMap<String, String>) {
    let name = Regex::new(r"syncflow_[a-z0-9_]+").unwrap();
    for m in name.find_iter(expr) {
        let series = m.as_str();
        let metric = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| series.strip_suffix(suffix))
            .unwrap_or(series);
        found
            .entry(metric.to_string())
            .or_insert_with(|| expr.trim().to_string());
    }
}

/// The PromQL strings of the dashboard, at any depth (collapsed rows nest
/// their panels; variable queries may be a string or `{query: ...}`).
fn dashboard_queries(value: &Json, out: &mut Vec<String>) {
    match value {
        Json::Object(map) => {
            for (key, child) in map {
                if let (true, Some(text)) = (QUERY_KEYS.contains(&key.as_str()), child.as_str()) {
                    out.push(text.to_string());
                }
                dashboard_queries(child, out);
            }
        }
        Json::Array(items) => items.iter().for_each(|item| dashboard_queries(item, out)),
        _ => {}
    }
}

/// Every rule of every group, with its group's name.
fn rules(doc: &Yaml) -> Vec<(String, &Yaml)> {
    let groups = doc["groups"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{ALERTS}: no `groups` list"));
    assert!(!groups.is_empty(), "{ALERTS}: `groups` is empty");
    let mut all = Vec::new();
    for group in groups {
        let name = group["name"]
            .as_str()
            .unwrap_or_else(|| panic!("{ALERTS}: a group has no name"))
            .to_string();
        let rules = group["rules"]
            .as_sequence()
            .unwrap_or_else(|| panic!("{ALERTS}: group {name} has no `rules` list"));
        all.extend(rules.iter().map(|rule| (name.clone(), rule)));
    }
    all
}

/// Names every metric of `found` that `emitted` lacks, and the file using it.
fn unknown(
    file: &str,
    found: &BTreeMap<String, String>,
    emitted: &BTreeSet<String>,
) -> Vec<String> {
    found
        .iter()
        .filter(|(metric, _)| !emitted.contains(*metric))
        .map(|(metric, expr)| {
            format!("{file}: `{metric}` is not a metric syncflow emits (no \"{metric}\" literal under src/), in: {expr}")
        })
        .collect()
}

#[test]
fn the_dashboard_queries_only_emitted_metrics() {
    let mut queries = Vec::new();
    dashboard_queries(&dashboard(), &mut queries);
    let mut found = BTreeMap::new();
    queries.iter().for_each(|q| metrics_in(q, &mut found));
    assert!(
        found.len() > 20,
        "{DASHBOARD}: only {} metrics found in its queries: {:?}",
        found.len(),
        found.keys()
    );
    let unknown = unknown(DASHBOARD, &found, &emitted());
    assert!(unknown.is_empty(), "\n{}\n", unknown.join("\n"));
}

#[test]
fn the_alerts_query_only_emitted_metrics() {
    let doc = alerts();
    let mut found = BTreeMap::new();
    for (_, rule) in rules(&doc) {
        if let Some(expr) = rule["expr"].as_str() {
            metrics_in(expr, &mut found);
        }
    }
    assert!(
        !found.is_empty(),
        "{ALERTS}: no metrics found in its expressions"
    );
    let unknown = unknown(ALERTS, &found, &emitted());
    assert!(unknown.is_empty(), "\n{}\n", unknown.join("\n"));
}

#[test]
fn every_alert_has_an_expression_a_severity_and_a_summary() {
    let doc = alerts();
    let mut problems = Vec::new();
    let mut names = BTreeSet::new();
    for (group, rule) in rules(&doc) {
        let Some(alert) = rule["alert"].as_str() else {
            // A recording rule: only its expression matters here.
            if rule["expr"].as_str().is_none_or(|e| e.trim().is_empty()) {
                problems.push(format!(
                    "{ALERTS}: a rule of group {group} has neither `alert` nor `expr`"
                ));
            }
            continue;
        };
        if !names.insert(alert.to_string()) {
            problems.push(format!("{ALERTS}: alert {alert} is defined twice"));
        }
        if rule["expr"].as_str().is_none_or(|e| e.trim().is_empty()) {
            problems.push(format!("{ALERTS}: alert {alert} has no `expr`"));
        }
        match rule["labels"]["severity"].as_str() {
            None => problems.push(format!("{ALERTS}: alert {alert} has no `labels.severity`")),
            Some(s) if !SEVERITIES.contains(&s) => problems.push(format!(
                "{ALERTS}: alert {alert}: severity `{s}` is not one of {SEVERITIES:?}"
            )),
            Some(_) => {}
        }
        for annotation in ["summary", "description"] {
            if rule["annotations"][annotation]
                .as_str()
                .is_none_or(|a| a.trim().is_empty())
            {
                problems.push(format!(
                    "{ALERTS}: alert {alert} has no `annotations.{annotation}`"
                ));
            }
        }
    }
    assert!(!names.is_empty(), "{ALERTS}: no alerts");
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}

#[test]
fn the_dashboard_takes_its_datasource_and_filters_from_variables() {
    let dashboard = dashboard();
    let mut problems = Vec::new();

    let version = dashboard["schemaVersion"].as_u64().unwrap_or(0);
    if version < 36 {
        problems.push(format!(
            "{DASHBOARD}: schemaVersion {version}, expected 36 or later"
        ));
    }
    let variables = dashboard["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let variable = |name: &str| variables.iter().find(|v| v["name"] == name);
    match variable("datasource") {
        Some(v) if v["type"] == "datasource" && v["query"] == "prometheus" => {}
        _ => problems.push(format!(
            "{DASHBOARD}: no `datasource` variable of type datasource, query prometheus"
        )),
    }
    for name in ["pipeline", "provider"] {
        match variable(name) {
            Some(v)
                if v["type"] == "query"
                    && v["definition"]
                        .as_str()
                        .is_some_and(|d| d.contains("label_values")) => {}
            _ => problems.push(format!(
                "{DASHBOARD}: no `{name}` variable from label_values"
            )),
        }
    }

    // Panels at any depth: a collapsed row holds its own.
    let mut panels = Vec::new();
    let mut pending: Vec<&Json> = dashboard["panels"]
        .as_array()
        .map(|p| p.iter().collect())
        .unwrap_or_default();
    while let Some(panel) = pending.pop() {
        if let Some(nested) = panel["panels"].as_array() {
            pending.extend(nested);
        }
        panels.push(panel);
    }
    let mut ids = BTreeSet::new();
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or("(untitled)");
        match panel["id"].as_u64() {
            Some(id) if ids.insert(id) => {}
            _ => problems.push(format!(
                "{DASHBOARD}: panel `{title}` has a missing or repeated id"
            )),
        }
        if panel["type"] == "row" {
            continue;
        }
        if panel["datasource"]["uid"] != "${datasource}" {
            problems.push(format!(
                "{DASHBOARD}: panel `{title}` does not use the ${{datasource}} variable"
            ));
        }
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("{DASHBOARD}: panel `{title}` has no queries"));
        }
        for target in &targets {
            if target["expr"].as_str().is_none_or(|e| e.trim().is_empty()) {
                problems.push(format!(
                    "{DASHBOARD}: a query of panel `{title}` has no `expr`"
                ));
            }
            if target["datasource"]["uid"] != "${datasource}" {
                problems.push(format!("{DASHBOARD}: a query of panel `{title}` does not use the ${{datasource}} variable"));
            }
        }
    }
    assert!(
        panels.len() > 20,
        "{DASHBOARD}: only {} panels",
        panels.len()
    );
    assert!(problems.is_empty(), "\n{}\n", problems.join("\n"));
}
