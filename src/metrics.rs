//! The metrics file: Prometheus text format for node_exporter's textfile collector,
//! rewritten atomically after every run (failed ones too).
//!
//! Gauges describe the last run of each connection; `_total` counters add up across runs.
//! State that must survive a run (the last success, the counters) is read back from the
//! previous file, so no other state is needed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use chrono::Utc;

use crate::job::ConnectionReport;
use crate::status::write_atomically;

/// Serialises writers of the metrics file within the process.
static WRITE_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One connection's figures.
#[derive(Debug, Clone, Default, PartialEq)]
struct Figures {
    last_run: f64,
    last_success: Option<f64>,
    exit_code: u8,
    users: BTreeMap<String, u64>,
    duration: f64,
    requests_total: f64,
    retries_total: f64,
}

const METRICS: [(&str, &str, &str); 7] = [
    (
        "idsnap_last_run_timestamp_seconds",
        "gauge",
        "When the last run of the connection ended (Unix time).",
    ),
    (
        "idsnap_last_success_timestamp_seconds",
        "gauge",
        "When the last successful run of the connection ended (Unix time).",
    ),
    (
        "idsnap_last_run_exit_code",
        "gauge",
        "Exit code of the last run (0 = published).",
    ),
    (
        "idsnap_users",
        "gauge",
        "Users in the last published snapshot, by claim status.",
    ),
    (
        "idsnap_run_duration_seconds",
        "gauge",
        "Wall time of the last run.",
    ),
    (
        "idsnap_http_requests_total",
        "counter",
        "HTTP requests sent to the Admin API, retries included.",
    ),
    (
        "idsnap_http_retries_total",
        "counter",
        "HTTP requests that were retries.",
    ),
];

/// Escapes a label value per the text format.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Reads back what an earlier file said: `metric{connection="…"[,claim_status="…"]} value`.
fn parse(text: &str) -> BTreeMap<String, Figures> {
    let mut out: BTreeMap<String, Figures> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((head, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let Some((name, labels)) = head.split_once('{') else {
            continue;
        };
        let labels = parse_labels(labels.trim_end_matches('}'));
        let get = |key: &str| {
            labels
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        let Some(conn) = get("connection") else {
            continue;
        };
        let f = out.entry(conn).or_default();
        match name {
            "idsnap_last_success_timestamp_seconds" => f.last_success = Some(value),
            "idsnap_http_requests_total" => f.requests_total = value,
            "idsnap_http_retries_total" => f.retries_total = value,
            "idsnap_last_run_timestamp_seconds" => f.last_run = value,
            "idsnap_last_run_exit_code" => f.exit_code = value as u8,
            "idsnap_run_duration_seconds" => f.duration = value,
            "idsnap_users" => {
                if let Some(c) = get("claim_status") {
                    f.users.insert(c, value as u64);
                }
            }
            _ => {}
        }
    }
    out
}

/// `key="value",key="value"` with `\\`, `\"` and `\n` escapes.
fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() || chars.next() != Some('"') {
            return out;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.push((key.trim_start_matches(',').trim().to_owned(), value));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
}

fn render(all: &BTreeMap<String, Figures>) -> String {
    let mut out = String::new();
    for (name, kind, help) in METRICS {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (conn, f) in all {
            let c = label(conn);
            match name {
                "idsnap_last_run_timestamp_seconds" => {
                    let _ = writeln!(out, "{name}{{connection=\"{c}\"}} {}", f.last_run);
                }
                "idsnap_last_success_timestamp_seconds" => {
                    if let Some(t) = f.last_success {
                        let _ = writeln!(out, "{name}{{connection=\"{c}\"}} {t}");
                    }
                }
                "idsnap_last_run_exit_code" => {
                    let _ = writeln!(out, "{name}{{connection=\"{c}\"}} {}", f.exit_code);
                }
                "idsnap_users" => {
                    for (claim, n) in &f.users {
                        let _ = writeln!(
                            out,
                            "{name}{{connection=\"{c}\",claim_status=\"{}\"}} {n}",
                            label(claim)
                        );
                    }
                }
                "idsnap_run_duration_seconds" => {
                    let _ = writeln!(out, "{name}{{connection=\"{c}\"}} {:.3}", f.duration);
                }
                "idsnap_http_requests_total" => {
                    let _ = writeln!(out, "{name}{{connection=\"{c}\"}} {}", f.requests_total);
                }
                _ => {
                    let _ = writeln!(out, "{name}{{connection=\"{c}\"}} {}", f.retries_total);
                }
            }
        }
    }
    out
}

/// Merges the reports into the metrics file at `path` and rewrites it atomically.
/// `reports` pairs each report with its connection name and the HTTP effort of the run.
pub async fn record(path: &Path, reports: &[&ConnectionReport]) -> std::io::Result<()> {
    let _guard = WRITE_LOCK.lock().await;
    let previous = match tokio::fs::read_to_string(path).await {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let mut all = parse(&previous);
    let now = Utc::now().timestamp_millis() as f64 / 1000.0;
    for report in reports {
        let f = all.entry(report.name.clone()).or_default();
        f.last_run = now;
        f.exit_code = report.exit_code();
        f.duration = report.duration.as_secs_f64();
        f.requests_total += report.http_requests as f64;
        f.retries_total += report.http_retries as f64;
        if let Ok(summary) = &report.outcome {
            let c = &summary.manifest.counts;
            f.users = BTreeMap::from([
                ("managed".to_owned(), c.managed),
                ("unmanaged".to_owned(), c.unmanaged),
                ("unknown".to_owned(), c.unknown),
            ]);
            if report.exit_code() == 0 {
                f.last_success = Some(now);
            }
        }
    }
    write_atomically(path, render(&all).as_bytes()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_then_parse_round_trips() {
        let mut all = BTreeMap::new();
        all.insert(
            "Prod \"EU\"".to_owned(),
            Figures {
                last_run: 1.5,
                last_success: Some(1.0),
                exit_code: 4,
                users: BTreeMap::from([("managed".into(), 3)]),
                duration: 2.0,
                requests_total: 7.0,
                retries_total: 1.0,
            },
        );
        let text = render(&all);
        assert!(
            text.contains(
                "idsnap_users{connection=\"Prod \\\"EU\\\"\",claim_status=\"managed\"} 3"
            ),
            "{text}"
        );
        let back = parse(&text);
        assert_eq!(back.len(), 1);
        let f = back.values().next().unwrap();
        assert_eq!(
            (
                f.last_success,
                f.requests_total,
                f.retries_total,
                f.exit_code
            ),
            (Some(1.0), 7.0, 1.0, 4)
        );
    }
}
