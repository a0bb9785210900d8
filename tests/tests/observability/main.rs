//! Dashboards and alert rules (issue #8): generated files up to date, structure, promtool, and every query run
//! against a real Prometheus scraping the real operator and workers.

mod assets;
mod live;
mod support;
