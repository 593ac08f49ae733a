//! The change feed and `idsnap diff` over three simulated days with known churn.

use arrow::array::{Array, AsArray};
use idsnap::simulator::PopulationOptions;
use idsnap::simulator::SimUser;
use idsnap::simulator::population::generate;

use crate::support::*;

fn edit(u: &SimUser, f: impl FnOnce(&mut serde_json::Value)) -> SimUser {
    let mut v: serde_json::Value = serde_json::from_str(&u.json).unwrap();
    f(&mut v);
    SimUser {
        status: v["status"].as_str().unwrap().to_owned(),
        json: v.to_string(),
        ..u.clone()
    }
}

struct Row {
    account_id: String,
    change_type: String,
    changed_fields: Option<Vec<String>>,
    previous: Option<i32>,
    email: Option<String>,
    before: Option<serde_json::Value>,
    after: Option<serde_json::Value>,
}

fn feed(h: &Harness, day: &str) -> Vec<Row> {
    let path = h.out().join(format!(
        "atlassian_user_changes/connection=test-org/snapshot_date={day}/changes.parquet"
    ));
    let mut rows = Vec::new();
    for b in read_parquet(&path) {
        let s = |name: &str| b.column_by_name(name).unwrap().as_string::<i32>().clone();
        let (ids, types, emails, before, after) = (
            s("account_id"),
            s("change_type"),
            s("email"),
            s("before"),
            s("after"),
        );
        let fields = b
            .column_by_name("changed_fields")
            .unwrap()
            .as_list::<i32>()
            .clone();
        let prev = b
            .column_by_name("previous_snapshot_date")
            .unwrap()
            .as_primitive::<arrow::datatypes::Date32Type>()
            .clone();
        for i in 0..b.num_rows() {
            let json = |a: &arrow::array::StringArray| {
                (!a.is_null(i)).then(|| serde_json::from_str(a.value(i)).unwrap())
            };
            rows.push(Row {
                account_id: ids.value(i).to_owned(),
                change_type: types.value(i).to_owned(),
                changed_fields: (!fields.is_null(i)).then(|| {
                    fields
                        .value(i)
                        .as_string::<i32>()
                        .iter()
                        .map(|v| v.unwrap().to_owned())
                        .collect()
                }),
                previous: (!prev.is_null(i)).then(|| prev.value(i)),
                email: (!emails.is_null(i)).then(|| emails.value(i).to_owned()),
                before: json(&before),
                after: json(&after),
            });
        }
    }
    rows
}

fn days_since_epoch(day: &str) -> i32 {
    (date(day) - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()).num_days() as i32
}

#[tokio::test(flavor = "multi_thread")]
async fn three_days_of_churn_in_the_feed_and_in_diff() {
    let day1 = users(600, 50);
    let h = Harness::new(day1.clone()).await;
    let config = h.write_config("scan_unmanaged_users = true");
    let cfg = config.to_str().unwrap().to_owned();
    let run = |day: &'static str| {
        let cfg = cfg.clone();
        let h = &h;
        async move {
            h.bin(&["--config", &cfg, "run", "--snapshot-date", day], TOKEN)
                .await
        }
    };

    let out = run("2026-01-01").await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("changes: first snapshot of this connection, no change feed written"),
        "{}",
        stdout(&out)
    );
    assert!(!h.out().join("atlassian_user_changes").exists());

    // Day 2: two leavers, three joiners, one status change, one email change, one role change.
    let (leaver1, leaver2) = (day1[10].clone(), day1[20].clone());
    let joiners = generate(3, 99, &PopulationOptions::default());
    let pick = |pred: &dyn Fn(&serde_json::Value) -> bool, skip: &[&str]| {
        day1.iter()
            .enumerate()
            .find(|(i, u)| {
                *i > 30
                    && !skip.contains(&u.account_id.as_str())
                    && pred(&serde_json::from_str(&u.json).unwrap())
            })
            .map(|(i, _)| i)
            .unwrap()
    };
    let s = pick(&|v| v["status"] == "active", &[]);
    let e = pick(&|v| v["email"].is_string(), &[&day1[s].account_id]);
    let r = pick(
        &|v| v["platformRoles"].as_array().unwrap().is_empty(),
        &[&day1[s].account_id, &day1[e].account_id],
    );
    let mut day2: Vec<SimUser> = day1.clone();
    day2[s] = edit(&day1[s], |v| v["status"] = "suspended".into());
    day2[e] = edit(&day1[e], |v| v["email"] = "renamed@acme.example".into());
    // A cosmetic change must not count: pictures and resource counts are not compared.
    day2[r] = edit(&day1[r], |v| {
        v["platformRoles"] = serde_json::json!(["atlassian/org-admin"]);
        v["picture"] = "https://avatar.example/new.png".into();
        v["counts"]["resources"] = 99.into();
    });
    let c = pick(
        &|_| true,
        &[
            &day1[s].account_id,
            &day1[e].account_id,
            &day1[r].account_id,
        ],
    );
    day2[c] = edit(&day1[c], |v| {
        v["picture"] = "https://avatar.example/other.png".into()
    });
    day2.retain(|u| u.account_id != leaver1.account_id && u.account_id != leaver2.account_id);
    day2.extend(joiners.iter().cloned());
    h.sim.set_users(day2.clone());
    let out = run("2026-01-02").await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out)
            .contains("changes since 2026-01-01: 3 appeared, 2 vanished, 0 reappeared, 3 changed"),
        "{}",
        stdout(&out)
    );

    let rows = feed(&h, "2026-01-02");
    assert_eq!(rows.len(), 8);
    let find = |id: &str| {
        rows.iter()
            .find(|r| r.account_id == id)
            .unwrap_or_else(|| panic!("{id} not in the feed"))
    };
    for j in &joiners {
        let row = find(&j.account_id);
        assert_eq!(row.change_type, "appeared");
        assert!(row.before.is_none() && row.after.is_some() && row.changed_fields.is_none());
    }
    for l in [&leaver1, &leaver2] {
        let row = find(&l.account_id);
        assert_eq!(row.change_type, "vanished");
        assert!(row.after.is_none());
        let last: serde_json::Value = serde_json::from_str(&l.json).unwrap();
        assert_eq!(
            row.email.as_deref(),
            last["email"].as_str(),
            "last known values for vanished"
        );
    }
    let status = find(&day1[s].account_id);
    assert_eq!(
        (
            status.change_type.as_str(),
            status.changed_fields.clone().unwrap()
        ),
        ("changed", vec!["status".to_owned()])
    );
    assert_eq!(status.before.as_ref().unwrap()["status"], "active");
    assert_eq!(status.after.as_ref().unwrap()["status"], "suspended");
    let email = find(&day1[e].account_id);
    assert_eq!(
        email.changed_fields.clone().unwrap(),
        vec!["email".to_owned()]
    );
    assert_eq!(email.email.as_deref(), Some("renamed@acme.example"));
    let role = find(&day1[r].account_id);
    assert_eq!(
        role.changed_fields.clone().unwrap(),
        vec!["platform_roles".to_owned()]
    );
    assert_eq!(
        role.after.as_ref().unwrap()["platform_roles"],
        serde_json::json!(["atlassian/org-admin"])
    );
    assert!(
        rows.iter()
            .all(|r| r.previous == Some(days_since_epoch("2026-01-01")))
    );
    assert!(
        !rows.iter().any(|r| r.account_id == day1[c].account_id),
        "a picture change is not a change"
    );

    // Day 3: one leaver returns.
    let mut day3 = day2.clone();
    day3.push(leaver1.clone());
    h.sim.set_users(day3.clone());
    let out = run("2026-01-03").await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rows = feed(&h, "2026-01-03");
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].account_id.as_str(), rows[0].change_type.as_str()),
        (leaver1.account_id.as_str(), "reappeared")
    );

    // diff: by default the two latest snapshots.
    let diff = |args: &[&str]| {
        let mut all = vec!["--config", cfg.as_str(), "diff", "--connection", "Test Org"];
        all.extend_from_slice(args);
        let all: Vec<String> = all.into_iter().map(str::to_owned).collect();
        let h = &h;
        async move {
            h.bin(&all.iter().map(String::as_str).collect::<Vec<_>>(), TOKEN)
                .await
        }
    };
    let out = diff(&[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("2026-01-02 → 2026-01-03"), "{text}");
    assert!(
        text.contains("0 appeared, 0 vanished, 1 reappeared, 0 changed"),
        "{text}"
    );
    assert!(text.contains(&leaver1.account_id), "{text}");

    let out = diff(&[
        "--from",
        "2026-01-01",
        "--to",
        "2026-01-02",
        "--format",
        "json",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        doc["counts"],
        serde_json::json!({"appeared": 3, "vanished": 2, "reappeared": 0, "changed": 3})
    );
    assert_eq!(doc["changes"].as_array().unwrap().len(), 8);

    let out = diff(&[
        "--from",
        "2026-01-01",
        "--to",
        "2026-01-03",
        "--format",
        "csv",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    let csv = stdout(&out);
    let lines: Vec<_> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "account_id,change_type,changed_fields,email,name,claim_status,status,before,after"
    );
    // Over two days: leaver 1 left and came back, so only leaver 2 vanished.
    assert_eq!(lines.len(), 1 + 3 + 1 + 3, "{csv}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{},vanished", leaver2.account_id)))
    );

    // No differences: exit 0. Errors: exit 2.
    h.sim.set_users(day3.clone());
    let out = run("2026-01-04").await;
    assert!(
        stdout(&out)
            .contains("changes since 2026-01-03: 0 appeared, 0 vanished, 0 reappeared, 0 changed"),
        "{}",
        stdout(&out)
    );
    assert_eq!(diff(&[]).await.status.code(), Some(0));
    assert_eq!(
        diff(&["--from", "2026-01-04", "--to", "2026-01-04"])
            .await
            .status
            .code(),
        Some(2)
    );
    assert_eq!(diff(&["--from", "2025-12-31"]).await.status.code(), Some(2));

    // A rerun on the same date recomputes that date's feed.
    h.sim.set_users(day2.clone());
    let out = h
        .bin(
            &["--config", &cfg, "run", "--snapshot-date", "2026-01-04"],
            TOKEN,
        )
        .await;
    assert_eq!(out.status.code(), Some(0));
    let rows = feed(&h, "2026-01-04");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].change_type, "vanished");

    // A snapshot whose manifest does not match its data file is never a baseline.
    let manifest_path = h.out().join(h.key("2026-01-04").manifest_path());
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    m["data_file"]["size_bytes"] = 1.into();
    std::fs::write(&manifest_path, m.to_string()).unwrap();
    h.sim.set_users(day3.clone());
    let out = run("2026-01-05").await;
    let text = stdout(&out);
    assert!(
        text.contains("changes since 2026-01-03: 0 appeared"),
        "{text}"
    );
    assert!(text.contains("skipped snapshot 2026-01-04"), "{text}");

    // Different scan_unmanaged_users settings: managed accounts only, and said loudly.
    let managed_only = h.write_config("");
    let out = h
        .bin(
            &[
                "--config",
                managed_only.to_str().unwrap(),
                "run",
                "--snapshot-date",
                "2026-01-06",
                "--accept-drop",
            ],
            TOKEN,
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.contains(
            "WARNING: scan_unmanaged_users differs (2026-01-05: true, 2026-01-06: false)"
        ),
        "{text}"
    );
    assert!(
        text.contains("changes since 2026-01-05: 0 appeared, 0 vanished"),
        "{text}"
    );

    // snapshots lists every date.
    let out = h.bin(&["--config", &cfg, "snapshots"], TOKEN).await;
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    for day in [
        "2026-01-01",
        "2026-01-02",
        "2026-01-03",
        "2026-01-04",
        "2026-01-05",
        "2026-01-06",
    ] {
        assert!(
            text.contains(&format!("Test Org                 {day}")),
            "{day} in {text}"
        );
    }
}
