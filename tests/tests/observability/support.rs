//! Reading the generated dashboards and rules, and talking to Prometheus with curl (as the smoke test does).

use std::collections::BTreeSet;
use std::path::PathBuf;

use cryptoviz_tests::repo_root;
use serde_json::Value;

/// Every dashboard in dashboards/: (file name, JSON).
pub fn dashboards() -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = std::fs::read_dir(repo_root().join("dashboards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let v = serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
                .unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(out.len() >= 3, "the pipelines, pipeline and operator dashboards: {:?}", out.iter().map(|d| &d.0));
    out
}

/// Every panel, rows' nested panels included.
pub fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().expect("panels") {
        out.push(p);
        if let Some(nested) = p["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

/// Every (panel title, PromQL) of a dashboard.
pub fn exprs(dashboard: &Value) -> Vec<(String, String)> {
    panels(dashboard)
        .into_iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or("").to_string();
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| (title.clone(), t["expr"].as_str().expect("every target has an expr").to_string()))
        })
        .collect()
}

/// A YAML file of the repository as JSON.
pub fn yaml(rel: &str) -> Value {
    let text = std::fs::read_to_string(repo_root().join(rel)).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{rel} is not YAML: {e}"))
}

/// Every alert rule of the plain rule file.
pub fn alert_rules() -> Vec<Value> {
    let rules: Vec<Value> = yaml("dashboards/alerts.rules.yaml")["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").clone())
        .collect();
    assert!(!rules.is_empty());
    rules
}

/// Metric names a PromQL expression names: identifiers starting `cryptoviz_`, and `up` used as a selector.
/// (Label names, functions and keywords never start with `cryptoviz_`.)
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    let mut in_string = false;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c == '"' {
            in_string = !in_string;
            i += 1;
            continue;
        }
        if !in_string && (c.is_ascii_alphabetic() || c == '_') && (i == 0 || !is_ident(bytes[i - 1] as char)) {
            let start = i;
            while i < bytes.len() && is_ident(bytes[i] as char) {
                i += 1;
            }
            let word = &expr[start..i];
            let next = expr[i..].trim_start().chars().next();
            if word.starts_with("cryptoviz_") || (word == "up" && next == Some('{')) {
                out.insert(word.to_string());
            }
            continue;
        }
        i += 1;
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// GET a Prometheus API path with form parameters; the JSON body, whatever the status (errors are JSON too).
pub async fn prom_get(base: &str, path: &str, params: &[(&str, &str)]) -> Option<Value> {
    let out = tokio::process::Command::new("curl")
        .args(["-sG", "--max-time", "10"])
        .arg(format!("{base}{path}"))
        .args(params.iter().flat_map(|(k, v)| ["--data-urlencode".to_string(), format!("{k}={v}")]))
        .output()
        .await
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

/// An instant query: Ok(result array) or Err(Prometheus's error).
pub async fn query(base: &str, q: &str) -> Result<Vec<Value>, String> {
    let body = prom_get(base, "/api/v1/query", &[("query", q)]).await.ok_or("Prometheus did not answer")?;
    if body["status"] != "success" {
        return Err(format!("{}: {}", body["errorType"], body["error"]));
    }
    Ok(body["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// Run a program to completion: (success, stdout + stderr).
pub fn run(program: &str, args: &[&str], dir: Option<PathBuf>) -> (bool, String) {
    let mut cmd = std::process::Command::new(program);
    cmd.args(args).current_dir(dir.unwrap_or_else(repo_root));
    let out = cmd.output().unwrap_or_else(|e| panic!("run {program}: {e}"));
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn metric_names_are_parsed_out_of_promql() {
    let names = metric_names(
        r#"sum by (le) (rate(cryptoviz_a_bucket{namespace=~"cryptoviz_x"}[1m])) / on (up) up{job="x"} + time()"#,
    );
    assert_eq!(names.into_iter().collect::<Vec<_>>(), vec!["cryptoviz_a_bucket".to_string(), "up".to_string()]);
}
