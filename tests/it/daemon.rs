//! `idsnap schedule` as a real process: runs on a 2-second cron against the simulator,
//! keeps a status file, and stops cleanly on SIGTERM.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_runs_on_schedule_and_stops_cleanly_on_sigterm() {
    let h = Harness::new(users(300, 60)).await;
    let status = h.dir.path().join("state/status.json");
    let text = format!(
        "status_file = \"{}\"\n{}\n[schedule]\ncron = \"*/2 * * * * *\"\nshutdown_grace_secs = 20\n",
        status.display(),
        h.config_text("scan_unmanaged_users = true")
    );
    let config = h.dir.path().join("daemon.toml");
    std::fs::write(&config, text).unwrap();

    // --dry-run prints five times per connection and exits.
    let out = h
        .bin(
            &[
                "--config",
                config.to_str().unwrap(),
                "schedule",
                "--dry-run",
            ],
            TOKEN,
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("Test Org (*/2 * * * * * in UTC):"),
        "{text}"
    );
    assert_eq!(
        text.lines().filter(|l| l.ends_with(" UTC)")).count(),
        5,
        "{text}"
    );

    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_idsnap"))
        .args(["--config", config.to_str().unwrap(), "schedule"])
        .env("IDSNAP_TEST_TOKEN", TOKEN)
        .current_dir(h.dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();

    // Wait for at least two completed runs, as the status file records them.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let runs = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "two runs did not happen in time"
        );
        if let Ok(bytes) = std::fs::read(&status) {
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            let runs = v["connections"]["test-org"]["runs"].as_u64().unwrap_or(0);
            if runs >= 2 {
                break v;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let entry = &runs["connections"]["test-org"];
    assert_eq!(entry["last_exit_code"], 0);
    assert_eq!(entry["users"], 300);
    assert!(entry["last_success"].is_string());
    assert!(
        h.data_file(&chrono::Utc::now().format("%Y-%m-%d").to_string())
            .exists()
            || h.data_file(
                &(chrono::Utc::now() - chrono::Duration::days(1))
                    .format("%Y-%m-%d")
                    .to_string()
            )
            .exists()
    );

    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("exited after SIGTERM")
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("Signal received"), "{log}");
    assert!(log.contains("Stopped."), "{log}");
    assert!(
        log.contains("Scheduled.") && log.contains("next_local") && log.contains("next_utc"),
        "the next run is logged in both zones: {log}"
    );
    // Nothing partial is left where readers look.
    let visible: Vec<_> = files_below(&h.out())
        .into_iter()
        .filter(|f| f.ends_with(".parquet") || f.ends_with(".json"))
        .collect();
    assert!(visible.iter().all(|f| !f.contains('#')), "{visible:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_file_records_failures_too() {
    let h = Harness::new(users(50, 61)).await;
    let status = h.dir.path().join("status.json");
    let text = format!(
        "status_file = \"{}\"\n{}",
        status.display(),
        h.config_text("")
    );
    let config = h.dir.path().join("s.toml");
    std::fs::write(&config, text).unwrap();
    let out = h
        .bin(&["--config", config.to_str().unwrap(), "run"], TOKEN)
        .await;
    assert_eq!(out.status.code(), Some(0));
    let out = h
        .bin(&["--config", config.to_str().unwrap(), "run"], "revoked")
        .await;
    assert_eq!(out.status.code(), Some(4));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&status).unwrap()).unwrap();
    let entry = &v["connections"]["test-org"];
    assert_eq!(entry["runs"], 2);
    assert_eq!(entry["failures"], 1);
    assert_eq!(entry["last_exit_code"], 4);
    assert!(
        entry["last_success"].is_string(),
        "the last success survives a failed run"
    );
    assert!(entry["last_error"].as_str().unwrap().contains("rejected"));
}
