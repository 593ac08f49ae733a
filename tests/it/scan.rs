//! Scanning the simulator through the library: pages, filters, de-duplication, tagging,
//! failures that publish nothing, and the Parquet contract.

use arrow::array::{Array, AsArray};
use arrow::datatypes::TimestampMicrosecondType;
use idsnap::job::{RunOptions, run_all};
use idsnap::simulator::population::generate;
use idsnap::simulator::{Fault, PopulationOptions, SimConfig};
use idsnap::snapshot::schema::users_schema;
use idsnap::store::Storage;

use crate::support::*;

async fn run(h: &Harness, extra: &str, day: &str) -> Vec<idsnap::job::ConnectionReport> {
    run_with(h, extra, day, false).await
}

pub async fn run_with(
    h: &Harness,
    extra: &str,
    day: &str,
    accept_drop: bool,
) -> Vec<idsnap::job::ConnectionReport> {
    let config = h.config(extra);
    let storage = Storage::open(&config.storage).unwrap();
    run_all(
        &config,
        &storage,
        &RunOptions {
            snapshot_date: Some(date(day)),
            accept_drop,
            ..RunOptions::default()
        },
    )
    .await
}

fn rows(h: &Harness, day: &str) -> usize {
    read_parquet(&h.data_file(day))
        .iter()
        .map(|b| b.num_rows())
        .sum()
}

fn column_strings(h: &Harness, day: &str, name: &str) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for b in read_parquet(&h.data_file(day)) {
        let col = b.column_by_name(name).unwrap().as_string::<i32>().clone();
        out.extend(col.iter().map(|v| v.map(str::to_owned)));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_every_page_of_2345_users() {
    let h = Harness::new(users(2345, 1)).await;
    let reports = run(&h, "scan_unmanaged_users = true", "2026-01-05").await;
    let summary = reports[0].outcome.as_ref().unwrap();
    assert_eq!(summary.manifest.pages, 24);
    assert_eq!(summary.manifest.counts.users, 2345);
    assert_eq!(rows(&h, "2026-01-05"), 2345);
    assert_eq!(h.sim.users_requests(), 24);
    // Page 1 carries the limit; later pages carry only the cursor, URL-encoded so that the
    // simulator's `+` and `/` survive.
    let log: Vec<_> = h
        .sim
        .request_log()
        .into_iter()
        .filter(|l| l.contains("/users?"))
        .collect();
    assert!(log[0].ends_with("users?limit=100"), "{}", log[0]);
    assert!(
        log[1].contains("?cursor=Qh8+all/any/64.100.."),
        "{}",
        log[1]
    );
    assert!(!log[1].contains("limit="));
    let ids: std::collections::HashSet<_> = column_strings(&h, "2026-01-05", "account_id")
        .into_iter()
        .collect();
    assert_eq!(ids.len(), 2345);
}

#[tokio::test(flavor = "multi_thread")]
async fn managed_only_by_default_all_users_on_request() {
    let population = users(1000, 2);
    let managed = population
        .iter()
        .filter(|u| u.claim_status == Some("managed"))
        .count();
    let h = Harness::new(population).await;

    let reports = run(&h, "", "2026-01-01").await;
    let m = &reports[0].outcome.as_ref().unwrap().manifest;
    assert_eq!(m.counts.users as usize, managed);
    assert_eq!(m.counts.unmanaged, 0);
    assert!(
        h.sim
            .request_log()
            .iter()
            .any(|l| l.contains("claimStatus=managed"))
    );
    assert!(
        column_strings(&h, "2026-01-01", "claim_status")
            .iter()
            .all(|c| c.as_deref() == Some("managed"))
    );

    let reports = run(&h, "scan_unmanaged_users = true", "2026-01-02").await;
    let m = &reports[0].outcome.as_ref().unwrap().manifest;
    assert_eq!(m.counts.users, 1000);
    assert_eq!(m.counts.managed as usize, managed);
    assert_eq!(m.counts.unmanaged as usize, 1000 - managed);
    assert_eq!(m.api_count, Some(1000));
}

#[tokio::test(flavor = "multi_thread")]
async fn unmanaged_records_that_arrive_anyway_are_dropped_and_counted() {
    let population = users(500, 3);
    let managed = population
        .iter()
        .filter(|u| u.claim_status == Some("managed"))
        .count();
    let h = Harness::with(
        SimConfig {
            ignore_claim_filter: true,
            ..SimConfig::default()
        },
        population,
    )
    .await;
    let reports = run(&h, "", "2026-01-01").await;
    let m = &reports[0].outcome.as_ref().unwrap().manifest;
    assert_eq!(m.counts.users as usize, managed);
    assert_eq!(m.counts.dropped_not_managed as usize, 500 - managed);
    assert_eq!(rows(&h, "2026-01-01"), managed);
}

#[tokio::test(flavor = "multi_thread")]
async fn users_repeated_across_pages_are_written_once() {
    let population = generate(
        1200,
        4,
        &PopulationOptions {
            duplicate_every: 100,
            ..Default::default()
        },
    );
    let entries = population.len();
    assert!(entries > 1200);
    let h = Harness::new(population).await;
    let reports = run(&h, "scan_unmanaged_users = true", "2026-01-01").await;
    let m = &reports[0].outcome.as_ref().unwrap().manifest;
    assert_eq!(m.counts.users, 1200);
    assert_eq!(m.counts.duplicates as usize, entries - 1200);
    let ids: std::collections::HashSet<_> = column_strings(&h, "2026-01-01", "account_id")
        .into_iter()
        .collect();
    assert_eq!(ids.len(), 1200);
    assert_eq!(rows(&h, "2026-01-01"), 1200);
}

#[tokio::test(flavor = "multi_thread")]
async fn records_without_claim_status_are_tagged_unknown() {
    let population = generate(
        300,
        5,
        &PopulationOptions {
            missing_claim_status_every: 10,
            ..Default::default()
        },
    );
    let h = Harness::new(population).await;
    let reports = run(&h, "scan_unmanaged_users = true", "2026-01-01").await;
    let m = &reports[0].outcome.as_ref().unwrap().manifest;
    assert_eq!(m.counts.unknown, 30);
    let batches = read_parquet(&h.data_file("2026-01-01"));
    let mut unknown_managed = 0;
    for b in &batches {
        let claim = b.column_by_name("claim_status").unwrap().as_string::<i32>();
        let managed = b.column_by_name("is_managed").unwrap().as_boolean();
        for i in 0..b.num_rows() {
            if claim.value(i) == "unknown" {
                unknown_managed += usize::from(managed.value(i));
            }
            assert_eq!(managed.value(i), claim.value(i) == "managed");
        }
    }
    assert_eq!(unknown_managed, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn search_endpoint_and_url_cursors_yield_the_same_records() {
    let population = users(730, 6);
    let h = Harness::new(population.clone()).await;
    run(&h, "scan_unmanaged_users = true", "2026-01-01").await;
    run(
        &h,
        "scan_unmanaged_users = true\nusers_endpoint = \"search\"",
        "2026-01-02",
    )
    .await;
    assert!(
        h.sim
            .request_log()
            .iter()
            .any(|l| l.starts_with("POST ") && l.contains("/users/search"))
    );
    let url = Harness::with(
        SimConfig {
            next_as_url: true,
            ..SimConfig::default()
        },
        population,
    )
    .await;
    run(&url, "scan_unmanaged_users = true", "2026-01-03").await;
    let list = column_strings(&h, "2026-01-01", "raw");
    assert_eq!(list.len(), 730);
    assert_eq!(column_strings(&h, "2026-01-02", "raw"), list);
    assert_eq!(column_strings(&url, "2026-01-03", "raw"), list);
}

#[tokio::test(flavor = "multi_thread")]
async fn parquet_has_the_documented_schema_and_values() {
    let population = users(250, 7);
    let h = Harness::new(population.clone()).await;
    let reports = run(
        &h,
        "scan_unmanaged_users = true\nmember_source_of_truth = true",
        "2026-02-03",
    )
    .await;
    let summary = reports[0].outcome.as_ref().unwrap();
    let batches = read_parquet(&h.data_file("2026-02-03"));
    assert_eq!(batches[0].schema(), users_schema());

    // Compare every column of one record with the JSON the simulator served.
    let b = &batches[0];
    let raw = b.column_by_name("raw").unwrap().as_string::<i32>();
    let i = (0..b.num_rows())
        .find(|&i| {
            raw.value(i).contains("\"email\"") && raw.value(i).contains("platformRoles\":[\"")
        })
        .unwrap();
    let json: serde_json::Value = serde_json::from_str(raw.value(i)).unwrap();
    let served = population
        .iter()
        .find(|u| u.account_id == json["accountId"])
        .unwrap();
    assert_eq!(
        raw.value(i),
        served.json,
        "raw is the record exactly as sent"
    );
    let s = |name: &str| {
        b.column_by_name(name)
            .unwrap()
            .as_string::<i32>()
            .value(i)
            .to_owned()
    };
    assert_eq!(s("org_id"), ORG);
    assert_eq!(s("account_id"), json["accountId"].as_str().unwrap());
    for (col, key) in [
        ("status", "status"),
        ("account_status", "accountStatus"),
        ("membership_status", "membershipStatus"),
        ("email", "email"),
        ("name", "name"),
        ("nickname", "nickname"),
        ("account_type", "accountType"),
    ] {
        assert_eq!(s(col), json[key].as_str().unwrap(), "{col}");
    }
    let email = json["email"].as_str().unwrap();
    assert_eq!(
        s("email_domain"),
        email.rsplit_once('@').unwrap().1.to_lowercase()
    );
    let added = b
        .column_by_name("added_to_org")
        .unwrap()
        .as_primitive::<TimestampMicrosecondType>()
        .value(i);
    let expected = chrono::DateTime::parse_from_rfc3339(json["addedToOrg"].as_str().unwrap())
        .unwrap()
        .timestamp_micros();
    assert_eq!(added, expected);
    let roles = b
        .column_by_name("platform_roles")
        .unwrap()
        .as_list::<i32>()
        .value(i);
    let roles: Vec<_> = roles
        .as_string::<i32>()
        .iter()
        .map(|r| r.unwrap().to_owned())
        .collect();
    let want: Vec<_> = json["platformRoles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(roles, want);
    let count = b
        .column_by_name("resource_count")
        .unwrap()
        .as_primitive::<arrow::datatypes::Int64Type>()
        .value(i);
    assert_eq!(count, json["counts"]["resources"].as_i64().unwrap());
    assert!(!b.column_by_name("scanned_at").unwrap().is_null(i));

    // Absent values are nulls: some user has no email.
    let emails = column_strings(&h, "2026-02-03", "email");
    assert!(emails.iter().any(Option::is_none));

    // Manifest matches the file; the footer carries the run's facts.
    let m = h.manifest("2026-02-03");
    assert_eq!(m, summary.manifest);
    assert_eq!(
        m.data_file.size_bytes,
        std::fs::metadata(h.data_file("2026-02-03")).unwrap().len()
    );
    assert_eq!(m.data_file.rows, 250);
    assert!(m.member_source_of_truth);
    let kv = parquet_kv(&h.data_file("2026-02-03"));
    let get = |k: &str| {
        kv.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{k} missing"))
    };
    assert_eq!(get("idsnap.org_id"), ORG);
    assert_eq!(get("idsnap.connection"), "Test Org");
    assert_eq!(get("idsnap.schema_version"), "1");
    assert_eq!(get("idsnap.users"), "250");
    assert_eq!(get("idsnap.scan_unmanaged_users"), "true");
    assert_eq!(get("idsnap.member_source_of_truth"), "true");
    assert_eq!(get("idsnap.api_count"), "250");
    assert_eq!(get("idsnap.users_endpoint"), "list");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_page_without_data_fails_the_run_and_publishes_nothing() {
    let h = Harness::new(users(1000, 8)).await;
    h.sim.faults().at(4, Fault::NoData);
    let reports = run(&h, "scan_unmanaged_users = true", "2026-01-01").await;
    let err = reports[0].outcome.as_ref().unwrap_err();
    assert_eq!(err.exit_code(), 3, "{err}");
    assert!(err.to_string().contains("no \"data\" array"), "{err}");
    assert!(
        files_below(&h.out()).is_empty(),
        "{:?}",
        files_below(&h.out())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_cursor_is_an_error_not_an_endless_loop() {
    let h = Harness::new(users(1000, 9)).await;
    h.sim.faults().at(3, Fault::RepeatCursor);
    h.sim.faults().at(4, Fault::RepeatCursor);
    let reports = run(&h, "scan_unmanaged_users = true", "2026-01-01").await;
    let err = reports[0].outcome.as_ref().unwrap_err();
    assert_eq!(err.exit_code(), 3);
    assert!(err.to_string().contains("same page cursor"), "{err}");
    assert!(files_below(&h.out()).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rerun_replaces_the_snapshot_and_a_failed_rerun_keeps_it() {
    let h = Harness::new(users(300, 10)).await;
    run(&h, "scan_unmanaged_users = true", "2026-01-01").await;
    let first = std::fs::read(h.data_file("2026-01-01")).unwrap();
    let first_manifest = std::fs::read(h.out().join(h.key("2026-01-01").manifest_path())).unwrap();

    // A failed rerun leaves both files byte for byte as they were.
    h.sim.faults().at(h.sim.users_requests() + 2, Fault::NoData);
    let reports = run(&h, "scan_unmanaged_users = true", "2026-01-01").await;
    assert!(reports[0].outcome.is_err());
    assert_eq!(std::fs::read(h.data_file("2026-01-01")).unwrap(), first);
    assert_eq!(
        std::fs::read(h.out().join(h.key("2026-01-01").manifest_path())).unwrap(),
        first_manifest
    );

    // A successful rerun with a different population replaces it.
    // (120 of 300 is a 60 % drop, so the population guard must be overridden.)
    h.sim.set_users(users(120, 11));
    let reports = run_with(&h, "scan_unmanaged_users = true", "2026-01-01", true).await;
    assert!(reports[0].outcome.is_ok());
    assert_eq!(rows(&h, "2026-01-01"), 120);
    assert_eq!(h.manifest("2026-01-01").counts.users, 120);
    assert_eq!(
        files_below(&h.out()).len(),
        2,
        "{:?}",
        files_below(&h.out())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_organization_writes_a_valid_empty_snapshot() {
    let h = Harness::new(Vec::new()).await;
    let reports = run(&h, "", "2026-01-01").await;
    let m = &reports[0].outcome.as_ref().unwrap().manifest;
    assert_eq!(m.counts.users, 0);
    assert_eq!(m.pages, 1);
    assert_eq!(rows(&h, "2026-01-01"), 0);
}

fn sorted_raw(h: &Harness, day: &str) -> Vec<String> {
    let mut raw: Vec<String> = column_strings(h, day, "raw")
        .into_iter()
        .map(Option::unwrap)
        .collect();
    raw.sort();
    raw
}

#[tokio::test(flavor = "multi_thread")]
async fn partitioned_and_single_walks_give_identical_snapshots() {
    let population = generate(
        2600,
        12,
        &PopulationOptions {
            duplicate_every: 400,
            ..Default::default()
        },
    );
    let h = Harness::new(population).await;
    for (extra, day) in [
        ("scan_unmanaged_users = true", "2026-01-01"),
        (
            "scan_unmanaged_users = true\npartitioned_walk = true",
            "2026-01-02",
        ),
    ] {
        let r = run(&h, extra, day).await;
        assert!(r[0].outcome.is_ok(), "{:?}", r[0].outcome.as_ref().err());
    }
    let log = h.sim.request_log();
    assert!(
        log.iter().any(|l| l.contains("/users?")
            && l.contains("claimStatus=unmanaged")
            && l.contains("status=suspended")),
        "the partitions were walked"
    );
    assert_eq!(sorted_raw(&h, "2026-01-01"), sorted_raw(&h, "2026-01-02"));
    let (a, b) = (h.manifest("2026-01-01"), h.manifest("2026-01-02"));
    assert_eq!(a.counts, b.counts);
    assert!(
        b.pages > a.pages,
        "more, smaller walks: {} vs {}",
        b.pages,
        a.pages
    );

    // Managed only, partitioned by status.
    run(&h, "", "2026-01-03").await;
    run(&h, "partitioned_walk = true", "2026-01-04").await;
    assert_eq!(sorted_raw(&h, "2026-01-03"), sorted_raw(&h, "2026-01-04"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unexpected_status_makes_the_partitioned_walk_fall_back_to_one_walk() {
    let population = generate(
        900,
        13,
        &PopulationOptions {
            odd_status_every: 50,
            ..Default::default()
        },
    );
    let h = Harness::new(population).await;
    run(&h, "scan_unmanaged_users = true", "2026-01-01").await;
    let before = h.sim.request_log().len();
    let r = run(
        &h,
        "scan_unmanaged_users = true\npartitioned_walk = true",
        "2026-01-02",
    )
    .await;
    assert!(r[0].outcome.is_ok());
    let walked: Vec<_> = h.sim.request_log()[before..]
        .iter()
        .filter(|l| l.contains("/users?") && !l.contains("/count"))
        .cloned()
        .collect();
    assert!(
        walked.iter().all(|l| !l.contains("status=")),
        "fell back to one unfiltered walk: {walked:?}"
    );
    assert_eq!(sorted_raw(&h, "2026-01-01"), sorted_raw(&h, "2026-01-02"));
    assert_eq!(h.manifest("2026-01-02").counts.users, 900);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_run_publishes_nothing() {
    let h = Harness::with(
        SimConfig {
            latency: std::time::Duration::from_millis(40),
            ..SimConfig::default()
        },
        users(3000, 14),
    )
    .await;
    let config = h.config("scan_unmanaged_users = true");
    let storage = Storage::open(&config.storage).unwrap();
    let (trigger, cancel) = idsnap::schedule::Cancel::new();
    let options = RunOptions {
        snapshot_date: Some(date("2026-01-01")),
        cancel,
        ..RunOptions::default()
    };
    let run = run_all(&config, &storage, &options);
    let stop = async {
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        trigger.send(true).unwrap();
        std::future::pending::<()>().await
    };
    let reports = tokio::select! { r = run => r, _ = stop => unreachable!() };
    let err = reports[0].outcome.as_ref().unwrap_err();
    assert!(err.to_string().contains("abandoned at shutdown"), "{err}");
    assert!(h.sim.users_requests() < 30, "stopped early");
    assert!(
        files_below(&h.out()).is_empty(),
        "{:?}",
        files_below(&h.out())
    );
}
