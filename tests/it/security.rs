//! Secrets and hostile input: the token appears nowhere, the Authorization header goes
//! nowhere else, broken configs and responses fail clearly, and values are stored, never
//! interpreted.

use std::os::unix::fs::PermissionsExt;

use arrow::array::AsArray;
use idsnap::simulator::{Fault, SimConfig, SimUser};

use crate::support::*;

const CANARY: &str = "idsnap-secret-canary-7f3a";

/// A valid config with one connection; each case below breaks it in one way.
fn base_config(h: &Harness) -> String {
    h.config_text("")
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_configs_exit_2_and_name_the_key() {
    let h = Harness::new(users(10, 70)).await;
    let base = base_config(&h);
    let dir = h.dir.path();
    let missing_file = dir.join("no-such-token");
    let folder = dir.join("a-folder");
    std::fs::create_dir_all(&folder).unwrap();
    let conn = |line: &str| {
        base.replace(
            "allow_insecure_http = true",
            &format!("allow_insecure_http = true\n{line}"),
        )
    };
    let swap = |from: &str, to: &str| {
        assert!(base.contains(from), "{from}");
        base.replace(from, to)
    };
    // (config text, the key the message must name, extra environment)
    type Case<'a> = (String, &'a str, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        (
            conn("scan_unmanaged_users = \"yes\""),
            "connections[0].scan_unmanaged_users",
            vec![],
        ),
        (format!("colour = 1\n{base}"), "colour", vec![]),
        (conn("orgid = \"x\""), "connections[0].orgid", vec![]),
        (
            swap("[storage]", "[storage]\nuri = \"x\""),
            "storage.uri",
            vec![],
        ),
        (
            swap(
                &format!("url = \"file://{}\"", h.out().display()),
                "url = \"ftp://example/x\"",
            ),
            "storage.url",
            vec![],
        ),
        (
            swap(
                &format!("url = \"file://{}\"", h.out().display()),
                "url = \"\"",
            ),
            "storage.url",
            vec![],
        ),
        (
            swap(
                &format!("url = \"file://{}\"", h.out().display()),
                "url = \"s3:///prefix\"",
            ),
            "storage.url",
            vec![],
        ),
        (
            swap(
                &format!("api_base_url = \"{}\"", h.sim.base_url()),
                "api_base_url = \"not a url\"",
            ),
            "connections[0].api_base_url",
            vec![],
        ),
        (
            swap("allow_insecure_http = true", "allow_insecure_http = false"),
            "connections[0].api_base_url",
            vec![],
        ),
        (
            swap(
                &format!("api_base_url = \"{}\"", h.sim.base_url()),
                "api_base_url = \"https://x.example/?a=1\"",
            ),
            "connections[0].api_base_url",
            vec![],
        ),
        (
            format!("{base}\n[schedule]\ncron = \"every day\"\n"),
            "schedule.cron",
            vec![],
        ),
        (
            format!("{base}\n[schedule]\ncron = \"0 2 * * *\"\ntimezone = \"Mars/Olympus\"\n"),
            "schedule.timezone",
            vec![],
        ),
        (conn("cron = \"0 25 * * *\""), "connections[0].cron", vec![]),
        (
            format!(
                "{base}\n[[connections]]\nname = \"test org\"\norg_id = \"o\"\napi_token_env = \"IDSNAP_TEST_TOKEN\"\n"
            ),
            "connections[1].name",
            vec![],
        ),
        (
            swap("IDSNAP_TEST_TOKEN", "IDSNAP_NOT_SET_ANYWHERE"),
            "connections[0].api_token_env",
            vec![],
        ),
        (
            base.clone(),
            "connections[0].api_token_env",
            vec![("IDSNAP_TEST_TOKEN", "   ")],
        ),
        (
            swap(
                "api_token_env = \"IDSNAP_TEST_TOKEN\"",
                &format!("api_token_file = \"{}\"", missing_file.display()),
            ),
            "connections[0].api_token_file",
            vec![],
        ),
        (
            swap(
                "api_token_env = \"IDSNAP_TEST_TOKEN\"",
                &format!("api_token_file = \"{}\"", folder.display()),
            ),
            "connections[0].api_token_file",
            vec![],
        ),
        (
            conn(&format!("api_token_file = \"{}\"", missing_file.display())),
            "connections[0].api_token_env",
            vec![],
        ),
        (
            conn("api_token = \"inline-secret\""),
            "connections[0].api_token",
            vec![],
        ),
        (
            swap(&format!("org_id = \"{ORG}\""), ""),
            "connections[0].org_id",
            vec![],
        ),
        (
            swap(&format!("org_id = \"{ORG}\""), "org_id = \"a/b\""),
            "connections[0].org_id",
            vec![],
        ),
        (
            swap("name = \"Test Org\"", ""),
            "connections[0].name",
            vec![],
        ),
        (
            swap("name = \"Test Org\"", "name = \"../\""),
            "connections[0].name",
            vec![],
        ),
        (
            conn("users_endpoint = \"scan\""),
            "connections[0].users_endpoint",
            vec![],
        ),
        (
            swap("max_retries = 3", "max_retries = 99"),
            "http.max_retries",
            vec![],
        ),
        (
            swap("request_timeout_secs = 5", "request_timeout_secs = 0"),
            "http.request_timeout_secs",
            vec![],
        ),
        (
            swap(
                "request_timeout_secs = 5",
                "request_timeout_secs = 5\nmax_page_bytes = 10",
            ),
            "http.max_page_bytes",
            vec![],
        ),
        (
            conn("max_drop_percent = 150"),
            "connections[0].max_drop_percent",
            vec![],
        ),
        (
            format!("max_concurrent_connections = 0\n{base}"),
            "max_concurrent_connections",
            vec![],
        ),
        (
            format!(
                "{}\nconnections = \"x\"\n",
                base.split("[[connections]]")
                    .next()
                    .unwrap()
                    .replace("[storage]", "connections = 1\n[storage]")
            ),
            "connections",
            vec![],
        ),
        (
            base.split("[[connections]]").next().unwrap().to_owned(),
            "connections",
            vec![],
        ),
        ("this is = = not toml".to_owned(), "(file)", vec![]),
        (
            base.replace("[storage]", "[storage_area]"),
            "storage",
            vec![],
        ),
        (
            base.clone(),
            "http.max_retries",
            vec![("IDSNAP__HTTP__MAX_RETRIES", "lots")],
        ),
    ];
    assert!(cases.len() >= 25);
    for (i, (text, key, env)) in cases.iter().enumerate() {
        let path = dir.join(format!("broken-{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let mut all_env = vec![("IDSNAP_TEST_TOKEN", TOKEN)];
        for (k, v) in env {
            all_env.retain(|(name, _)| name != k);
            all_env.push((k, v));
        }
        let out = run_bin(&["--config", path.to_str().unwrap(), "run"], &all_env, dir).await;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "case {i} ({key}): {err}");
        assert!(
            err.contains(&format!("{key}:")) || err.contains(&format!("{key}.")),
            "case {i}: {key} not named in {err}"
        );
        assert!(
            !err.contains("inline-secret"),
            "case {i}: a secret was echoed"
        );
    }
    assert_eq!(h.sim.requests(), 0, "nothing was contacted");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_token_appears_in_no_byte_written() {
    let h = Harness::with(
        SimConfig {
            token: CANARY.into(),
            ..SimConfig::default()
        },
        users(450, 71),
    )
    .await;
    let status = h.dir.path().join("status.json");
    let token_file = h.dir.path().join("token");
    std::fs::write(&token_file, format!("{CANARY}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = format!(
        "status_file = \"{}\"\n{}",
        status.display(),
        h.config_text("scan_unmanaged_users = true")
    )
    .replace(
        "api_token_env = \"IDSNAP_TEST_TOKEN\"",
        &format!("api_token_file = \"{}\"", token_file.display()),
    );
    let config = h.dir.path().join("canary.toml");
    std::fs::write(&config, text).unwrap();
    let cfg = config.to_str().unwrap();
    let env = [("RUST_LOG", "trace")];
    let mut written = Vec::new();
    let mut logs = String::new();
    for (args, fault) in [
        (
            vec!["--config", cfg, "--log-format", "json", "-vv", "test"],
            None,
        ),
        (
            vec![
                "--config",
                cfg,
                "--log-format",
                "json",
                "-vv",
                "run",
                "--snapshot-date",
                "2026-01-01",
            ],
            None,
        ),
        (
            vec![
                "--config",
                cfg,
                "--log-format",
                "json",
                "-vv",
                "run",
                "--snapshot-date",
                "2026-01-02",
            ],
            Some(Fault::Status(503)),
        ),
        (
            vec![
                "--config",
                cfg,
                "--log-format",
                "json",
                "-vv",
                "run",
                "--snapshot-date",
                "2026-01-03",
            ],
            Some(Fault::Unauthorized),
        ),
    ] {
        if let Some(f) = fault {
            h.sim.faults().at(h.sim.users_requests() + 2, f);
        }
        let out = run_bin(&args, &env, h.dir.path()).await;
        written.extend_from_slice(&out.stdout);
        written.extend_from_slice(&out.stderr);
        logs.push_str(&stderr(&out));
    }
    // Logs are JSON, one object per line.
    let lines: Vec<&str> = logs.lines().collect();
    assert!(lines.len() > 50, "trace logging produced output");
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.is_object());
    }
    assert!(
        lines.iter().any(|l| l.contains("\"run_id\"")),
        "events carry a run ID"
    );
    for path in files_below(h.dir.path()) {
        if path.ends_with(".toml") || path == "token" {
            continue;
        }
        written.extend(std::fs::read(h.dir.path().join(&path)).unwrap());
    }
    assert!(
        status.exists() && h.data_file("2026-01-01").exists(),
        "{logs}"
    );
    let haystack = String::from_utf8_lossy(&written);
    assert!(!haystack.contains(CANARY), "the token leaked");
    assert!(
        !haystack.contains("secret-canary"),
        "part of the token leaked"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_file_readable_by_others_is_warned_about() {
    let h = Harness::new(users(10, 72)).await;
    let token_file = h.dir.path().join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let text = h.config_text("").replace(
        "api_token_env = \"IDSNAP_TEST_TOKEN\"",
        &format!("api_token_file = \"{}\"", token_file.display()),
    );
    let config = h.dir.path().join("perm.toml");
    std::fs::write(&config, text).unwrap();
    let out = h
        .bin(&["--config", config.to_str().unwrap(), "run"], TOKEN)
        .await;
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("readable by its group or by others"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("Plain HTTP to the Admin API"),
        "the insecure-http warning is given at every run"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_are_never_followed() {
    let thief = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = thief.local_addr().unwrap().port();
    let stolen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&stolen);
    tokio::spawn(async move {
        if thief.accept().await.is_ok() {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let h = Harness::new(users(300, 73)).await;
    h.sim.faults().at(2, Fault::RedirectTo(port));
    let config = h.write_config("");
    let out = h
        .bin(&["--config", config.to_str().unwrap(), "run"], TOKEN)
        .await;
    assert_eq!(out.status.code(), Some(5), "{}", stdout(&out));
    assert!(stdout(&out).contains("302"), "{}", stdout(&out));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        !stolen.load(std::sync::atomic::Ordering::SeqCst),
        "the redirect target was contacted"
    );
    assert!(files_below(&h.out()).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_values_are_stored_verbatim_and_never_become_paths() {
    let mut population = users(120, 74);
    let nasty_id = "../../etc/passwd\"';DROP TABLE users;--\u{7}\u{0}/\\..";
    let nasty_email = "a/../../b@EVIL.example/../..";
    let nasty_name = "Robert'); DROP TABLE students;--\u{1b}[31m\r\n";
    let json = serde_json::json!({"accountId": nasty_id, "email": nasty_email, "name": nasty_name, "claimStatus": "managed", "status": "active"});
    population.push(SimUser {
        account_id: nasty_id.into(),
        claim_status: Some("managed"),
        status: "active".into(),
        json: json.to_string(),
    });
    let h = Harness::new(population).await;
    let text = h
        .config_text("")
        .replace("name = \"Test Org\"", "name = \"../Evil/..//Name\"");
    let config = h.dir.path().join("hostile.toml");
    std::fs::write(&config, text).unwrap();
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
    assert_exit(&out, 0);
    let files = files_below(h.dir.path());
    let data: Vec<_> = files
        .iter()
        .filter(|f| f.ends_with(".parquet") || f.ends_with("_manifest.json"))
        .collect();
    assert_eq!(data.len(), 2, "{files:?}");
    assert!(
        data.iter().all(|f| f.starts_with(
            "snapshots/atlassian_users/connection=evil-name/snapshot_date=2026-01-01/"
        )),
        "{data:?}"
    );
    let batches = read_parquet(
        &h.dir
            .path()
            .join(data.iter().find(|f| f.ends_with(".parquet")).unwrap()),
    );
    let mut found = false;
    for b in &batches {
        let ids = b.column_by_name("account_id").unwrap().as_string::<i32>();
        for i in 0..b.num_rows() {
            if ids.value(i) == nasty_id {
                found = true;
                let s = |c: &str| {
                    b.column_by_name(c)
                        .unwrap()
                        .as_string::<i32>()
                        .value(i)
                        .to_owned()
                };
                assert_eq!(s("email"), nasty_email);
                assert_eq!(s("name"), nasty_name);
                assert_eq!(s("email_domain"), "evil.example/../..");
            }
        }
    }
    assert!(found, "the hostile record is stored");
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_over_the_limits_fail_the_run_and_publish_nothing() {
    // More records than the limit asked for.
    let h = Harness::new(users(500, 75)).await;
    h.sim.faults().at(2, Fault::Oversized);
    let config = h.write_config("scan_unmanaged_users = true");
    let out = h
        .bin(&["--config", config.to_str().unwrap(), "run"], TOKEN)
        .await;
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("101 records, more than the 100 asked for"),
        "{}",
        stdout(&out)
    );
    assert!(files_below(&h.out()).is_empty());

    for (setting, message) in [
        ("max_page_bytes = 16384", "exceeds 16384 bytes"),
        ("max_field_chars = 64", "more than the limit of 64"),
        ("max_pages_per_walk = 3", "passed 3 pages"),
    ] {
        let mut population = users(500, 76);
        let long = format!("{}@acme.example", "x".repeat(80));
        population.push(SimUser {
            account_id: "long-1".into(),
            claim_status: Some("managed"),
            status: "active".into(),
            json:
                serde_json::json!({"accountId": "long-1", "email": long, "claimStatus": "managed"})
                    .to_string(),
        });
        let h = Harness::new(population).await;
        let text = h.config_text("scan_unmanaged_users = true").replace(
            "request_timeout_secs = 5",
            &format!("request_timeout_secs = 5\n{setting}"),
        );
        let path = h.dir.path().join("limits.toml");
        std::fs::write(&path, text).unwrap();
        let out = h
            .bin(&["--config", path.to_str().unwrap(), "run"], TOKEN)
            .await;
        assert_eq!(out.status.code(), Some(3), "{setting}: {}", stdout(&out));
        assert!(
            stdout(&out).contains(message),
            "{setting}: {}",
            stdout(&out)
        );
        assert!(files_below(&h.out()).is_empty(), "{setting}");
    }
}
