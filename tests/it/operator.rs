//! What operators touch: `init`, `config check`, completions, the metrics file, and the
//! progress display on a terminal.

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn init_writes_a_starter_config_that_parses_and_never_overwrites() {
    let dir = tempfile::TempDir::new().unwrap();
    let out = run_bin(&["init", "conf/idsnap.toml"], &[], dir.path()).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("Fill in"), "{}", stdout(&out));
    let path = dir.path().join("conf/idsnap.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, idsnap::cli::STARTER_CONFIG);
    // It parses, and config check accepts it once the token is there.
    let out = run_bin(
        &["--config", "conf/idsnap.toml", "config", "check"],
        &[("ATLASSIAN_API_TOKEN", "t")],
        dir.path(),
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let shown = stdout(&out);
    assert!(
        shown.contains("org_id = \"00000000-0000-0000-0000-000000000000\""),
        "{shown}"
    );
    // Round trip: the effective settings match what the file says.
    let config = idsnap::config::load(
        &path,
        &idsnap::config::Env::default(),
        idsnap::config::Selection::NoTokens,
    )
    .unwrap();
    assert!(
        shown.contains(&format!("url = {:?}", config.storage.url.to_string())),
        "{shown}"
    );
    assert!(
        shown.contains(&format!(
            "cron = {:?}",
            config.schedule.cron.as_ref().unwrap().expression()
        )),
        "{shown}"
    );
    // A second init refuses and leaves the file alone.
    std::fs::write(&path, "# mine\n").unwrap();
    let out = run_bin(&["init", "conf/idsnap.toml"], &[], dir.path()).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "# mine\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn config_check_hides_secrets_and_reports_every_problem() {
    let h = Harness::new(users(10, 80)).await;
    let text = h.config_text("").replacen(
        &format!("[storage]\nurl = \"file://{}\"", h.out().display()),
        "[storage]\nurl = \"s3://bucket/prefix\"\n[storage.options]\naws_secret_access_key = \"SUPERSECRET-1\"\naws_region = \"eu-west-1\"",
        1,
    );
    let path = h.dir.path().join("check.toml");
    std::fs::write(&path, &text).unwrap();
    let out = run_bin(
        &["--config", path.to_str().unwrap(), "config", "check"],
        &[("IDSNAP_TEST_TOKEN", "CANARY-TOKEN-9")],
        h.dir.path(),
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let shown = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        !shown.contains("SUPERSECRET") && !shown.contains("CANARY-TOKEN"),
        "{shown}"
    );
    assert!(
        shown.contains("options.aws_secret_access_key = \"***\""),
        "{shown}"
    );
    assert!(
        shown.contains("options.aws_region = \"eu-west-1\""),
        "{shown}"
    );
    assert!(
        shown.contains("api_token = *** (from environment variable IDSNAP_TEST_TOKEN)"),
        "{shown}"
    );

    // Environment overrides show up in the effective settings.
    let out = run_bin(
        &["--config", path.to_str().unwrap(), "config", "check"],
        &[
            ("IDSNAP_TEST_TOKEN", "x"),
            ("IDSNAP__HTTP__MAX_RETRIES", "2"),
        ],
        h.dir.path(),
    )
    .await;
    assert!(
        stdout(&out).contains("max_retries = 2\n"),
        "{}",
        stdout(&out)
    );

    let broken = text
        .replace("max_retries = 3", "max_retries = 300")
        .replace(&format!("org_id = \"{ORG}\""), "");
    std::fs::write(&path, broken).unwrap();
    let out = run_bin(
        &["--config", path.to_str().unwrap(), "config", "check"],
        &[],
        h.dir.path(),
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    for key in [
        "http.max_retries",
        "connections[0].org_id",
        "connections[0].api_token_env",
    ] {
        assert!(err.contains(key), "{key} in {err}");
    }
    assert!(err.contains("3 problem(s)"), "{err}");
}

/// Checks the Prometheus text exposition format line by line and returns the samples.
fn parse_prometheus(text: &str) -> Vec<(String, String, f64)> {
    let mut samples = Vec::new();
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["gauge", "counter"].contains(&kind), "{line}");
            typed.insert(name.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "unexpected line {line:?}"
        );
        let (head, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value in {line:?}"));
        let (name, labels) = match head.split_once('{') {
            Some((n, l)) => {
                assert!(l.ends_with('}'), "{line}");
                (n, l.trim_end_matches('}'))
            }
            None => (head, ""),
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        assert!(typed.contains(name), "sample before its TYPE: {line}");
        for pair in labels.split(",\"").filter(|p| !p.is_empty()) {
            assert!(pair.contains("=\""), "{line}");
        }
        samples.push((name.to_owned(), labels.to_owned(), value));
    }
    samples
}

#[tokio::test(flavor = "multi_thread")]
async fn the_metrics_file_is_prometheus_text_and_is_updated_after_a_failed_run() {
    let h = Harness::new(users(220, 81)).await;
    let metrics = h.dir.path().join("metrics/idsnap.prom");
    let text = format!(
        "metrics_file = \"{}\"\n{}",
        metrics.display(),
        h.config_text("scan_unmanaged_users = true")
    );
    let path = h.dir.path().join("m.toml");
    std::fs::write(&path, text).unwrap();
    let out = h
        .bin(&["--config", path.to_str().unwrap(), "run"], TOKEN)
        .await;
    assert_eq!(out.status.code(), Some(0));
    let first = parse_prometheus(&std::fs::read_to_string(&metrics).unwrap());
    let get = |s: &[(String, String, f64)], name: &str, label: &str| {
        s.iter()
            .find(|(n, l, _)| n == name && l.contains(label))
            .map(|(_, _, v)| *v)
    };
    assert_eq!(
        get(&first, "idsnap_last_run_exit_code", "Test Org"),
        Some(0.0)
    );
    let users: f64 = ["managed", "unmanaged", "unknown"]
        .iter()
        .map(|c| get(&first, "idsnap_users", &format!("claim_status=\"{c}\"")).unwrap())
        .sum();
    assert_eq!(users, 220.0);
    let success = get(&first, "idsnap_last_success_timestamp_seconds", "Test Org").unwrap();
    let requests = get(&first, "idsnap_http_requests_total", "Test Org").unwrap();
    assert!(requests >= 3.0);
    assert!(get(&first, "idsnap_run_duration_seconds", "Test Org").is_some());
    assert_eq!(
        get(&first, "idsnap_http_retries_total", "Test Org"),
        Some(0.0)
    );

    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let out = h
        .bin(&["--config", path.to_str().unwrap(), "run"], "revoked")
        .await;
    assert_eq!(out.status.code(), Some(4));
    let second = parse_prometheus(&std::fs::read_to_string(&metrics).unwrap());
    assert_eq!(
        get(&second, "idsnap_last_run_exit_code", "Test Org"),
        Some(4.0)
    );
    assert_eq!(
        get(&second, "idsnap_last_success_timestamp_seconds", "Test Org"),
        Some(success),
        "last success kept"
    );
    assert!(
        get(&second, "idsnap_last_run_timestamp_seconds", "Test Org").unwrap()
            > get(&first, "idsnap_last_run_timestamp_seconds", "Test Org").unwrap()
    );
    assert!(
        get(&second, "idsnap_http_requests_total", "Test Org").unwrap() > requests,
        "counters add up"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn progress_shows_on_a_terminal_and_not_in_a_pipe() {
    let dir = tempfile::TempDir::new().unwrap();
    let bin = env!("CARGO_BIN_EXE_idsnap");
    // `script` runs the command under a pseudo-terminal.
    let out = tokio::process::Command::new("script")
        .args(["-qfec", &format!("{bin} demo --users 3000"), "/dev/null"])
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(
        tty.contains("3000 users, 30 pages") && tty.contains("users/s of 3000"),
        "{tty}"
    );

    let dir = tempfile::TempDir::new().unwrap();
    let out = run_bin(&["demo", "--users", "3000"], &[], dir.path()).await;
    assert_eq!(out.status.code(), Some(0));
    let piped = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!piped.contains("users/s"), "{piped}");
    assert!(piped.contains("Demo Org: published 3,000 users"), "{piped}");
}

#[tokio::test(flavor = "multi_thread")]
async fn version_and_completions() {
    let dir = tempfile::TempDir::new().unwrap();
    let out = run_bin(&["--version"], &[], dir.path()).await;
    assert_eq!(
        stdout(&out).trim(),
        format!("idsnap {}", env!("CARGO_PKG_VERSION"))
    );
    let out = run_bin(&["completions", "bash"], &[], dir.path()).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("_idsnap()"), "{}", stdout(&out));
}
