//! Benchmark: `idsnap diff` on two local snapshots of 1,000,000 users with 2 % churn.
//!
//! Run with `cargo bench --bench diff`. It writes the two snapshots once (into
//! `target/bench-diff/`), then runs the release `idsnap diff` binary five times and prints
//! the median wall time and peak RSS (from `wait4`), against the targets of 3 s and 400 MiB.
//! Set `IDSNAP_BENCH_USERS` to change the size. (The only `unsafe` in the project is the
//! two libc calls here that read the child's peak RSS.)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

use std::path::Path;
use std::process::Command;

use chrono::{NaiveDate, Utc};
use idsnap::atlassian::model::{ClaimTag, UserRecord};
use idsnap::simulator::PopulationOptions;
use idsnap::simulator::population::generate;
use idsnap::snapshot::SnapshotKey;
use idsnap::snapshot::manifest::{Counts, DataFileFacts, HttpEffort, Manifest};
use idsnap::snapshot::schema::{SCHEMA_VERSION, UsersBatchBuilder, users_schema};
use idsnap::snapshot::writer::{ParquetUpload, writer_properties};
use idsnap::store::Storage;
use object_store::ObjectStoreExt;

mod common;
use common::{measure, median};

async fn write_snapshot(storage: &Storage, date: NaiveDate, users: &[UserRecord]) {
    let key = SnapshotKey {
        slug: "bench".into(),
        date,
    };
    let mut upload = ParquetUpload::create(
        storage,
        &key.data_path(),
        users_schema(),
        writer_properties(Vec::new()),
    )
    .unwrap();
    let mut builder = UsersBatchBuilder::new("bench-org");
    let mut counts = Counts::default();
    let now = Utc::now();
    for u in users {
        let tag = ClaimTag::from_claim_status(u.claim_status.as_deref());
        match tag {
            ClaimTag::Managed => counts.managed += 1,
            ClaimTag::Unmanaged => counts.unmanaged += 1,
            ClaimTag::Unknown => counts.unknown += 1,
        }
        counts.users += 1;
        builder.append(u, tag, now);
        if builder.len() >= 8192 {
            upload.write(&builder.finish()).await.unwrap();
        }
    }
    upload.write(&builder.finish()).await.unwrap();
    let data = upload.finish(Vec::new()).await.unwrap();
    let manifest = Manifest {
        schema_version: SCHEMA_VERSION,
        idsnap_version: "bench".into(),
        connection: "Bench".into(),
        connection_slug: "bench".into(),
        org_id: "bench-org".into(),
        snapshot_date: date.to_string(),
        scan_started_at: now.to_rfc3339(),
        scan_finished_at: now.to_rfc3339(),
        users_endpoint: "list".into(),
        scan_unmanaged_users: true,
        member_source_of_truth: false,
        counts,
        pages: 0,
        api_count: None,
        http: HttpEffort::default(),
        data_file: DataFileFacts {
            path: key.data_path(),
            size_bytes: data.size_bytes,
            rows: data.rows,
        },
    };
    storage
        .store
        .put(
            &storage.path(&key.manifest_path()),
            manifest.to_json().into(),
        )
        .await
        .unwrap();
}

fn records(n: usize, seed: u64) -> Vec<UserRecord> {
    generate(n, seed, &PopulationOptions::default())
        .into_iter()
        .map(|u| {
            let mut r: UserRecord = serde_json::from_str(&u.json).unwrap();
            r.raw = u.json;
            r
        })
        .collect()
}

fn main() {
    let n: usize = std::env::var("IDSNAP_BENCH_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("target/bench-diff/{n}"));
    let out = root.join("snapshots");
    let config = root.join("idsnap.toml");
    let day1 = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
    let day2 = NaiveDate::from_ymd_opt(2026, 1, 2).unwrap();
    // The snapshots are written by a child process: Linux carries a process's peak RSS
    // across fork and exec, so a parent that held a million records would inflate every
    // measurement of the `idsnap diff` children it starts.
    if std::env::args().nth(1).as_deref() != Some("--prepare") {
        if !config.exists() {
            let status = Command::new(std::env::current_exe().unwrap())
                .arg("--prepare")
                .status()
                .unwrap();
            assert!(status.success(), "preparing the snapshots failed");
        }
    } else {
        std::fs::create_dir_all(&out).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let storage = Storage::open(&idsnap::config::StorageConfig::new(
                idsnap::store::StorageUrl::Local(out.clone()),
            ))
            .unwrap();
            eprintln!("writing two snapshots of {n} users ...");
            let before = records(n, 1);
            write_snapshot(&storage, day1, &before).await;
            // 2 % churn: 1 % leave, 1 % join, and 0.5 % change status.
            let mut after: Vec<UserRecord> = before
                .into_iter()
                .enumerate()
                .filter(|(i, _)| i % 100 != 7)
                .map(|(_, u)| u)
                .collect();
            for (i, u) in after.iter_mut().enumerate() {
                if i % 200 == 3 {
                    u.status = Some("suspended".into());
                }
            }
            after.extend(records(n / 100, 2).into_iter().map(|mut u| {
                u.account_id = format!("joiner-{}", u.account_id);
                u
            }));
            write_snapshot(&storage, day2, &after).await;
        });
        std::fs::write(
            &config,
            format!(
                "[storage]\nurl = \"file://{}\"\n[[connections]]\nname = \"Bench\"\norg_id = \"bench-org\"\napi_token_env = \"UNUSED\"\n",
                out.display()
            ),
        )
        .unwrap();
        return;
    }
    let bin = env!("CARGO_BIN_EXE_idsnap");
    let mut times = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..5 {
        let m = measure(Command::new(bin).args([
            "--config",
            config.to_str().unwrap(),
            "-q",
            "diff",
            "--connection",
            "Bench",
        ]));
        assert_eq!(m.code, 1, "diff finds differences");
        times.push(m.wall.as_secs_f64());
        rss.push(common::mib(m.peak_rss));
    }
    let (t, m) = (median(times.clone()), median(rss.clone()));
    println!(
        "diff of two snapshots of {n} users, 2 % churn (local Parquet), 5 runs of idsnap diff:"
    );
    println!("| figure | median | runs | target |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| wall time | {t:.2} s | {} | < 3 s |",
        times
            .iter()
            .map(|v| format!("{v:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "| peak RSS | {m:.0} MiB | {} | < 400 MiB |",
        rss.iter()
            .map(|v| format!("{v:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
