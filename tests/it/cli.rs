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

#[tokio::test(flavor = "multi_thread")]
async fn simulate_injects_faults_from_its_flags() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::TempDir::new().unwrap();
    let mut sim = tokio::process::Command::new(env!("CARGO_BIN_EXE_idsnap"))
        .args([
            "simulate",
            "--port",
            &port.to_string(),
            "--users",
            "450",
            "--org-id",
            ORG,
            "--token",
            TOKEN,
        ])
        .args(["--fault", "2:503", "--fault", "3:429-retry-after=1"])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the simulator did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let config = dir.path().join("sim.toml");
    std::fs::write(
        &config,
        format!(
            "[storage]\nurl = \"file://{}\"\n[http]\nmax_retry_wait_secs = 2\n[[connections]]\nname = \"Sim\"\norg_id = \"{ORG}\"\napi_token_env = \"T\"\napi_base_url = \"http://127.0.0.1:{port}\"\nallow_insecure_http = true\nscan_unmanaged_users = true\n",
            dir.path().join("out").display()
        ),
    )
    .unwrap();
    let out = run_bin(
        &["--config", config.to_str().unwrap(), "run"],
        &[("T", TOKEN)],
        dir.path(),
    )
    .await;
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("published 450 users"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("2 retries"),
        "the two injected faults were retried: {}",
        stdout(&out)
    );
    sim.start_kill().unwrap();
}
