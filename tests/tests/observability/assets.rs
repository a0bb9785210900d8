//! Checks of the generated files that need no server: up to date, structure, rules, runbooks, promtool.

use std::collections::BTreeSet;

use cryptoviz_tests::repo_root;
use serde_json::json;

use crate::support::{alert_rules, dashboards, exprs, panels, run, yaml};

/// The committed dashboards, rules and fixtures are exactly what dashboards/gen/generate.py writes.
#[test]
fn generated_files_are_up_to_date() {
    let (ok, out) = run("python3", &["dashboards/gen/generate.py", "--check"], None);
    assert!(ok, "{out}");
}

/// Grafana structure: current schema, unique ids, the datasource variable everywhere, namespace and pipeline
/// variables (label_values queries on the datasource), and every query filtered by them.
#[test]
fn dashboards_are_well_formed() {
    let ds = json!({"type": "prometheus", "uid": "${datasource}"});
    let mut uids = BTreeSet::new();
    for (file, d) in dashboards() {
        assert!(d["schemaVersion"].as_u64().unwrap_or(0) >= 39, "{file}: schemaVersion {}", d["schemaVersion"]);
        assert!(uids.insert(d["uid"].as_str().expect("uid").to_string()), "{file}: duplicate uid");
        assert!(d["title"].as_str().is_some_and(|t| t.starts_with("CryptoViz")), "{file}: title");

        let vars = d["templating"]["list"].as_array().expect("templating.list");
        let var = |name: &str| vars.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("{file}: no ${name}"));
        let dsv = var("datasource");
        assert_eq!((&dsv["type"], &dsv["query"]), (&json!("datasource"), &json!("prometheus")), "{file}");
        for name in ["namespace", "pipeline"] {
            let v = var(name);
            assert_eq!(v["type"], "query", "{file}: ${name}");
            assert_eq!(v["datasource"], ds, "{file}: ${name} must query ${{datasource}}");
            let def = v["definition"].as_str().unwrap();
            assert!(def.starts_with("label_values(") && def.ends_with(&format!(", {name})")), "{file}: {def}");
            assert_eq!(v["query"]["query"], def, "{file}: ${name} definition and query differ");
        }

        let mut ids = BTreeSet::new();
        let all = panels(&d);
        assert!(all.len() > 5, "{file}: too few panels");
        for p in &all {
            let id = p["id"].as_u64().unwrap_or_else(|| panic!("{file}: panel {} without id", p["title"]));
            assert!(ids.insert(id), "{file}: panel id {id} is used twice");
            let g = &p["gridPos"];
            assert!(g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24, "{file}: {} too wide", p["title"]);
            if p["type"] == "row" {
                continue;
            }
            assert_eq!(p["datasource"], ds, "{file}: panel {} does not use ${{datasource}}", p["title"]);
            let targets = p["targets"].as_array().unwrap_or_else(|| panic!("{file}: {} has no targets", p["title"]));
            assert!(!targets.is_empty(), "{file}: {} has no targets", p["title"]);
            for t in targets {
                assert_eq!(t["datasource"], ds, "{file}: a target of {} does not use ${{datasource}}", p["title"]);
            }
        }
        for (title, e) in exprs(&d) {
            assert!(e.contains("$namespace"), "{file}: {title}: {e} ignores $namespace");
            if !file.contains("operator") {
                assert!(e.contains("$pipeline"), "{file}: {title}: {e} ignores $pipeline");
            }
            assert!(!e.contains("[5m]") && !e.contains("[1m]"), "{file}: {title}: use $__rate_interval: {e}");
        }
    }
}

/// The plain rule file and the PrometheusRule carry the same groups; every alert has a severity, a summary, a
/// description and a runbook_url whose section exists in docs/runbooks.md, and every runbook section has its alert.
#[test]
fn alert_rules_are_one_source_with_runbooks() {
    let plain = yaml("dashboards/alerts.rules.yaml");
    let cr = yaml("dashboards/prometheusrule.yaml");
    assert_eq!(
        (cr["apiVersion"].as_str(), cr["kind"].as_str()),
        (Some("monitoring.coreos.com/v1"), Some("PrometheusRule"))
    );
    assert_eq!(cr["spec"]["groups"], plain["groups"], "prometheusrule.yaml and alerts.rules.yaml differ");

    let runbooks = std::fs::read_to_string(repo_root().join("docs/runbooks.md")).unwrap();
    let sections: BTreeSet<String> =
        runbooks.lines().filter_map(|l| l.strip_prefix("## ")).map(|h| h.trim().to_lowercase()).collect();
    let mut alerts = BTreeSet::new();
    for r in alert_rules() {
        let name = r["alert"].as_str().expect("only alerting rules").to_string();
        assert!(alerts.insert(name.clone()), "{name} twice");
        assert!(["warning", "critical"].contains(&r["labels"]["severity"].as_str().unwrap_or("")), "{name}: severity");
        for k in ["summary", "description", "runbook_url"] {
            assert!(r["annotations"][k].as_str().is_some_and(|s| s.len() > 10), "{name}: no {k}");
        }
        let url = r["annotations"]["runbook_url"].as_str().unwrap();
        let (page, anchor) = url.split_once('#').unwrap_or_else(|| panic!("{name}: {url} has no #section"));
        assert!(page.ends_with("/docs/runbooks.md"), "{name}: {url}");
        assert!(sections.contains(anchor), "{name}: docs/runbooks.md has no section #{anchor}");
        assert!(r["for"].as_str().is_some(), "{name}: no `for`: one bad scrape must not page");
    }
    let documented: BTreeSet<String> = alerts.iter().map(|a| a.to_lowercase()).collect();
    assert_eq!(sections, documented, "runbook sections and alerts differ");
    for required in [
        "CryptoVizSourceDown",
        "CryptoVizNoData",
        "CryptoVizConsumerLagGrowing",
        "CryptoVizDeadLettersGrowing",
        "CryptoVizSSEDropRate",
        "CryptoVizReconcileErrors",
        "CryptoVizPipelineNotReady",
    ] {
        assert!(alerts.contains(required), "{required} is missing");
    }
}

/// `promtool check rules` accepts the rule file and `promtool test rules` makes every alert fire and resolve.
#[test]
fn promtool_checks_the_rules_and_every_alert_fires_and_resolves() {
    let (ok, out) = run("promtool", &["check", "rules", "dashboards/alerts.rules.yaml"], None);
    assert!(ok, "{out}");
    let dir = repo_root().join("dashboards/tests");
    let mut fixtures: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yml") || f.ends_with(".yaml"))
        .collect();
    fixtures.sort();
    assert!(!fixtures.is_empty());
    let mut args = vec!["test", "rules"];
    args.extend(fixtures.iter().map(String::as_str));
    let (ok, out) = run("promtool", &args, Some(dir));
    assert!(ok, "{out}");
    // Every alert has a case that fires it and one that sees it resolved.
    let tested: BTreeSet<String> = fixtures
        .iter()
        .flat_map(|f| yaml(&format!("dashboards/tests/{f}"))["tests"].as_array().unwrap().clone())
        .flat_map(|t| t["alert_rule_test"].as_array().unwrap().clone())
        .map(|c| format!("{}:{}", c["alertname"].as_str().unwrap(), c["exp_alerts"].as_array().unwrap().is_empty()))
        .collect();
    for r in alert_rules() {
        let name = r["alert"].as_str().unwrap();
        assert!(tested.contains(&format!("{name}:false")), "{name}: no promtool case where it fires");
        assert!(tested.contains(&format!("{name}:true")), "{name}: no promtool case where it resolves");
    }
}
