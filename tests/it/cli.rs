//! The real binary: `test`, `run`, `demo`, config errors, exit codes and messages.

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn run_prints_a_summary_and_exits_0() {
    let h = Harness::new(users(450, 20)).await;
    let config = h.write_config("scan_unmanaged_users = true");
    let out = h
        .bin(
            &[
                "--config",
                config.to_str().unwrap(),
                "run",
                "--snapshot-date",
                "2026-03-04",
            ],
            TOKEN,
        )
        .await;
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(text.contains("Test Org: published 450 users"), "{text}");
    assert!(text.contains("5 pages"), "{text}");
    assert!(
        text.contains("connection=test-org/snapshot_date=2026-03-04/users.parquet"),
        "{text}"
    );
    assert!(text.contains("API count 450 (matches)"), "{text}");
    assert!(h.data_file("2026-03-04").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_token_names_the_connection_exits_4_and_publishes_nothing() {
    let h = Harness::new(users(100, 21)).await;
    let config = h.write_config("");
    let out = h
        .bin(
            &["--config", config.to_str().unwrap(), "run"],
            "wrong-token",
        )
        .await;
    assert_eq!(out.status.code(), Some(4));
    let text = stdout(&out);
    assert!(text.contains("Test Org: FAILED (exit 4)"), "{text}");
    assert!(text.contains("API key was rejected (401"), "{text}");
    assert!(
        text.contains("IDSNAP_TEST_TOKEN"),
        "says where the token came from: {text}"
    );
    assert!(!text.contains("wrong-token") && !stderr(&out).contains("wrong-token"));
    assert!(files_below(&h.out()).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_org_is_reported_by_id() {
    let h = Harness::new(users(10, 22)).await;
    let text = h.config_text("").replace(ORG, "org-nobody");
    let path = h.dir.path().join("other.toml");
    std::fs::write(&path, text).unwrap();
    let out = h
        .bin(&["--config", path.to_str().unwrap(), "run"], TOKEN)
        .await;
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stdout(&out).contains("organization not found: org_id \"org-nobody\""),
        "{}",
        stdout(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn test_command_reports_directories_and_failures() {
    let h = Harness::new(users(10, 23)).await;
    let config = h.write_config("");
    let out = h
        .bin(&["--config", config.to_str().unwrap(), "test"], TOKEN)
        .await;
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("Test Org: ok: 2 directories found in org org-test-1"),
        "{}",
        stdout(&out)
    );
    let out = h
        .bin(&["--config", config.to_str().unwrap(), "test"], "nope")
        .await;
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stdout(&out).contains("Test Org: FAILED"),
        "{}",
        stdout(&out)
    );
    // test never writes anything.
    assert!(files_below(&h.out()).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn config_problems_are_all_reported_with_exit_2_before_any_request() {
    let h = Harness::new(users(10, 24)).await;
    let text = r#"
[storage]
url = "file://./x"
[[connections]]
name = "One"
org_id = "o1"
api_token_env = "IDSNAP_UNSET_VAR"
users_endpoint = "scan"
[[connections]]
name = "one!"
api_token_env = "IDSNAP_TEST_TOKEN"
"#;
    let path = h.dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let out = h
        .bin(&["--config", path.to_str().unwrap(), "run"], TOKEN)
        .await;
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    for needle in [
        "connections[0].api_token_env: environment variable IDSNAP_UNSET_VAR is not set",
        "connections[0].users_endpoint: unknown value \"scan\"",
        "connections[1].org_id: missing",
        "connections[1].name: \"one!\" gives the same folder name \"one\"",
    ] {
        assert!(err.contains(needle), "{needle} not in {err}");
    }
    assert_eq!(h.sim.requests(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_config_file_says_how_to_fix_it() {
    let dir = tempfile::TempDir::new().unwrap();
    let out = run_bin(&["run"], &[], dir.path()).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot read config/idsnap.toml"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("--config"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_works_with_no_config_and_no_credentials() {
    let dir = tempfile::TempDir::new().unwrap();
    let out = run_bin(&["demo", "--users", "321"], &[], dir.path()).await;
    assert_exit(&out, 0);
    let text = stdout(&out);
    assert!(text.contains("Demo Org: published 321 users"), "{text}");
    assert!(text.contains("duckdb -c"), "{text}");
    let files = files_below(&dir.path().join("snapshots"));
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files[1].ends_with("users.parquet"));
}
