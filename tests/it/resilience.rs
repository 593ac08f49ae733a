//! Faults from the API and the store: full snapshots after recoverable ones; the right exit
//! code, a clear message and an untouched previous snapshot after the others; the population
//! guard; and a process killed mid-run.

use std::time::Duration;

use idsnap::job::{ConnectionReport, RunOptions, run_all};
use idsnap::simulator::{Fault, RateLimitHint};
use idsnap::store::Storage;

use crate::support::*;

async fn run_cfg(
    h: &Harness,
    extra: &str,
    day: &str,
    tweak: impl FnOnce(&mut idsnap::config::Config),
) -> ConnectionReport {
    let mut config = h.config(extra);
    tweak(&mut config);
    let storage = Storage::open(&config.storage).unwrap();
    let mut reports = run_all(
        &config,
        &storage,
        &RunOptions {
            snapshot_date: Some(date(day)),
            accept_drop: false,
            ..RunOptions::default()
        },
    )
    .await;
    reports.remove(0)
}

fn raw_column(h: &Harness, day: &str) -> Vec<String> {
    use arrow::array::AsArray;
    read_parquet(&h.data_file(day))
        .iter()
        .flat_map(|b| {
            b.column_by_name("raw")
                .unwrap()
                .as_string::<i32>()
                .iter()
                .map(|v| v.unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_recoverable_fault_still_gives_the_full_snapshot() {
    let population = users(350, 30);
    let clean = Harness::new(population.clone()).await;
    assert!(
        run_cfg(&clean, "scan_unmanaged_users = true", "2026-01-01", |_| {})
            .await
            .outcome
            .is_ok()
    );
    let expected = raw_column(&clean, "2026-01-01");
    assert_eq!(expected.len(), 350);

    let faults = [
        Fault::RateLimited(RateLimitHint::RetryAfterSecs(1)),
        Fault::RateLimited(RateLimitHint::RetryAfterDate(1)),
        Fault::RateLimited(RateLimitHint::ResetMinute),
        Fault::RateLimited(RateLimitHint::None),
        Fault::Status(500),
        Fault::Status(502),
        Fault::Status(503),
        Fault::Status(408),
        Fault::Reset,
        Fault::Truncate,
        Fault::Slow(Duration::from_millis(2500)),
        Fault::WindowExhausted(1),
        Fault::BadCursor,
    ];
    let runs = faults.iter().map(|&fault| {
        let population = population.clone();
        async move {
            let h = Harness::new(population).await;
            h.sim.faults().at(2, fault);
            let report = run_cfg(&h, "scan_unmanaged_users = true", "2026-01-01", |c| {
                // Only the slow response should time out; the others keep the 5 s limit so a
                // busy test machine does not add retries of its own.
                if matches!(fault, Fault::Slow(_)) {
                    c.http.request_timeout = Duration::from_secs(1);
                }
            })
            .await;
            (fault, h, report)
        }
    });
    for (fault, h, report) in futures::future::join_all(runs).await {
        let summary = report.outcome.unwrap_or_else(|e| panic!("{fault:?}: {e}"));
        assert_eq!(raw_column(&h, "2026-01-01"), expected, "{fault:?}");
        let m = &summary.manifest;
        assert_eq!(m.counts.users, 350, "{fault:?}");
        match fault {
            // The walk restarts from page 1: page 1, the rejected page 2, then 4 pages.
            Fault::BadCursor => {
                assert_eq!(m.pages, 4);
                assert_eq!(h.sim.users_requests(), 6);
            }
            Fault::WindowExhausted(_) => {
                assert_eq!(m.http.retries, 0);
                assert!(m.http.wait_secs > 0.0, "{fault:?}: the pause is recorded");
            }
            _ => {
                assert_eq!(m.pages, 4, "{fault:?}");
                assert_eq!(m.http.retries, 1, "{fault:?}");
            }
        }
    }
}

/// Publishes a first snapshot, then runs again on the same date with `fault` and checks the
/// failure and that the first snapshot is byte for byte intact.
async fn assert_fails_and_keeps_previous(setup: impl FnOnce(&Harness), exit: u8, message: &str) {
    let h = Harness::new(users(450, 31)).await;
    assert!(run_cfg(&h, "", "2026-01-01", |_| {}).await.outcome.is_ok());
    let data = std::fs::read(h.data_file("2026-01-01")).unwrap();
    let manifest = std::fs::read(h.out().join(h.key("2026-01-01").manifest_path())).unwrap();
    setup(&h);
    let report = run_cfg(&h, "", "2026-01-01", |_| {}).await;
    let err = report.outcome.unwrap_err();
    assert_eq!(err.exit_code(), exit, "{err}");
    assert!(
        err.to_string().contains(message),
        "{message:?} not in {err}"
    );
    assert!(
        err.to_string().contains("Test Org"),
        "names the connection: {err}"
    );
    assert_eq!(std::fs::read(h.data_file("2026-01-01")).unwrap(), data);
    assert_eq!(
        std::fs::read(h.out().join(h.key("2026-01-01").manifest_path())).unwrap(),
        manifest
    );
    assert_eq!(
        files_below(&h.out()).len(),
        2,
        "{:?}",
        files_below(&h.out())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_401_mid_walk_fails_at_once_with_exit_4() {
    // The first run used 4 users requests (450 managed-only users fit in 4 pages or fewer).
    assert_fails_and_keeps_previous(
        |h| {
            h.sim
                .faults()
                .at(h.sim.users_requests() + 2, Fault::Unauthorized)
        },
        4,
        "API key was rejected",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_that_stays_down_gives_exit_5() {
    assert_fails_and_keeps_previous(
        |h| {
            let next = h.sim.users_requests() + 2;
            h.sim.faults().range(next, next + 20, Fault::Status(503));
        },
        5,
        "stayed unavailable",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cursor_rejected_twice_fails_with_exit_3() {
    assert_fails_and_keeps_previous(
        |h| {
            let next = h.sim.users_requests();
            // Page 2 of the first walk, then page 2 of the restarted walk.
            h.sim.faults().at(next + 2, Fault::BadCursor);
            h.sim.faults().at(next + 4, Fault::BadCursor);
        },
        3,
        "rejected a page cursor",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_population_guard_refuses_a_large_drop_unless_accepted() {
    let h = Harness::new(users(1000, 32)).await;
    assert!(
        run_cfg(&h, "scan_unmanaged_users = true", "2026-01-01", |_| {})
            .await
            .outcome
            .is_ok()
    );

    h.sim.set_users(users(400, 33));
    let err = run_cfg(&h, "scan_unmanaged_users = true", "2026-01-02", |_| {})
        .await
        .outcome
        .unwrap_err();
    assert_eq!(err.exit_code(), 3);
    let text = err.to_string();
    assert!(
        text.contains("found 400 users, the snapshot of 2026-01-01 had 1000"),
        "{text}"
    );
    assert!(text.contains("--accept-drop"), "{text}");
    assert!(!h.data_file("2026-01-02").exists());

    // A higher threshold lets it through.
    assert!(
        run_cfg(
            &h,
            "scan_unmanaged_users = true\nmax_drop_percent = 70",
            "2026-01-02",
            |_| {}
        )
        .await
        .outcome
        .is_ok()
    );

    // Zero users after some is refused, and --accept-drop (via the binary) overrides it.
    h.sim.set_users(Vec::new());
    let err = run_cfg(&h, "scan_unmanaged_users = true", "2026-01-03", |_| {})
        .await
        .outcome
        .unwrap_err();
    assert_eq!(err.exit_code(), 3);
    let config = h.write_config("scan_unmanaged_users = true");
    let cfg = config.to_str().unwrap();
    let out = h
        .bin(
            &["--config", cfg, "run", "--snapshot-date", "2026-01-03"],
            TOKEN,
        )
        .await;
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("population guard"),
        "{}",
        stdout(&out)
    );
    let out = h
        .bin(
            &[
                "--config",
                cfg,
                "run",
                "--snapshot-date",
                "2026-01-03",
                "--accept-drop",
            ],
            TOKEN,
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(h.manifest("2026-01-03").counts.users, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_failing_connection_does_not_stop_the_others() {
    let h = Harness::new(users(200, 34)).await;
    let mut text = h.config_text("");
    text.push_str(&format!(
        "\n[[connections]]\nname = \"Broken Org\"\norg_id = \"{ORG}\"\napi_token_env = \"IDSNAP_OTHER_TOKEN\"\napi_base_url = \"{}\"\nallow_insecure_http = true\n",
        h.sim.base_url()
    ));
    let path = h.dir.path().join("two.toml");
    std::fs::write(&path, text).unwrap();
    let out = run_bin(
        &[
            "--config",
            path.to_str().unwrap(),
            "run",
            "--snapshot-date",
            "2026-01-01",
        ],
        &[
            ("IDSNAP_TEST_TOKEN", TOKEN),
            ("IDSNAP_OTHER_TOKEN", "revoked"),
        ],
        h.dir.path(),
    )
    .await;
    assert_eq!(out.status.code(), Some(4));
    let text = stdout(&out);
    assert!(text.contains("Test Org: published"), "{text}");
    assert!(text.contains("Broken Org: FAILED (exit 4)"), "{text}");
    assert!(h.data_file("2026-01-01").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_storage_failure_names_the_url_and_exits_6() {
    let h = Harness::new(users(50, 35)).await;
    // The partition folder's place is taken by a file, so the upload cannot be written.
    let blocker = h
        .out()
        .join("atlassian_users/connection=test-org/snapshot_date=2026-01-01");
    std::fs::create_dir_all(blocker.parent().unwrap()).unwrap();
    std::fs::write(&blocker, b"not a folder").unwrap();
    let config = h.write_config("");
    let out = h
        .bin(
            &[
                "--config",
                config.to_str().unwrap(),
                "run",
                "--snapshot-date",
                "2026-01-01",
            ],
            TOKEN,
        )
        .await;
    assert_eq!(out.status.code(), Some(6), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("storage file://{}", h.out().display())),
        "{text}"
    );
    assert!(text.contains("users.parquet"), "{text}");

    // A storage URL that cannot be a folder fails before anything is contacted.
    let file = h.dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let text = h.config_text("").replace(
        &format!("file://{}", h.out().display()),
        &format!("file://{}", file.display()),
    );
    let path = h.dir.path().join("bad-storage.toml");
    std::fs::write(&path, text).unwrap();
    let before = h.sim.requests();
    let out = h
        .bin(&["--config", path.to_str().unwrap(), "run"], TOKEN)
        .await;
    assert_eq!(out.status.code(), Some(6));
    assert!(
        stderr(&out).contains("cannot open storage"),
        "{}",
        stderr(&out)
    );
    assert_eq!(h.sim.requests(), before);
}

/// SIGKILL during the walk and during the upload: nothing where readers look, and the
/// previous snapshot of the same date byte for byte intact.
#[tokio::test(flavor = "multi_thread")]
async fn a_process_killed_mid_walk_or_mid_upload_leaves_no_partial_snapshot() {
    let h = Harness::new(users(1000, 36)).await;
    let config = h.write_config("scan_unmanaged_users = true");
    let cfg = config.to_str().unwrap().to_owned();
    let out = h
        .bin(
            &["--config", &cfg, "run", "--snapshot-date", "2026-01-01"],
            TOKEN,
        )
        .await;
    assert_eq!(out.status.code(), Some(0));
    let data = std::fs::read(h.data_file("2026-01-01")).unwrap();
    let manifest = std::fs::read(h.out().join(h.key("2026-01-01").manifest_path())).unwrap();

    // 150,000 users make a data file of more than one 10 MiB part, so the multipart upload
    // is under way for a while before it completes.
    h.sim.set_users(users(150_000, 37));
    let partition = h.data_file("2026-01-01").parent().unwrap().to_owned();
    for stage in ["walk", "upload"] {
        let start_requests = h.sim.users_requests();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_idsnap"))
            .args([
                "--config",
                &cfg,
                "-q",
                "run",
                "--snapshot-date",
                "2026-01-01",
            ])
            .env("IDSNAP_TEST_TOKEN", TOKEN)
            .current_dir(h.dir.path())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(240);
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "{stage}: the moment to kill never came"
            );
            assert!(
                child.try_wait().unwrap().is_none(),
                "{stage}: the run ended before it could be killed"
            );
            let ready = match stage {
                "walk" => h.sim.users_requests() >= start_requests + 20,
                _ => std::fs::read_dir(&partition)
                    .unwrap()
                    .any(|e| e.unwrap().file_name().to_string_lossy().contains('#')),
            };
            if ready {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        child.start_kill().unwrap();
        child.wait().await.unwrap();

        assert_eq!(
            std::fs::read(h.data_file("2026-01-01")).unwrap(),
            data,
            "{stage}"
        );
        assert_eq!(
            std::fs::read(h.out().join(h.key("2026-01-01").manifest_path())).unwrap(),
            manifest,
            "{stage}"
        );
        // Readers look for *.parquet (and the manifest); a staging file is neither.
        let visible: Vec<_> = files_below(&h.out())
            .into_iter()
            .filter(|f| f.ends_with(".parquet") || f.ends_with(".json"))
            .collect();
        assert_eq!(visible.len(), 2, "{stage}: {visible:?}");
    }
}
