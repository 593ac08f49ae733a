//! Snapshots on a real S3 server (moto, started by `.ci/test`): multipart uploads, atomic
//! reruns, the storage probe, and storage failures.
//!
//! These tests need `IDSNAP_TEST_S3_ENDPOINT` and `IDSNAP_TEST_S3_BUCKET`. Without them they
//! say so and pass, except in CI (`CI` set), where a missing S3 server is a failure.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

struct S3 {
    endpoint: String,
    bucket: String,
}

fn s3() -> Option<S3> {
    match (
        std::env::var("IDSNAP_TEST_S3_ENDPOINT"),
        std::env::var("IDSNAP_TEST_S3_BUCKET"),
    ) {
        (Ok(endpoint), Ok(bucket)) => Some(S3 { endpoint, bucket }),
        _ => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must run the S3 tests: start them with bash .ci/test"
            );
            eprintln!("skipped: no S3 server (run the suite with bash .ci/test)");
            None
        }
    }
}

fn unique_prefix(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{name}-{nanos:x}")
}

impl S3 {
    fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::new(
            AmazonS3Builder::new()
                .with_bucket_name(&self.bucket)
                .with_endpoint(&self.endpoint)
                .with_allow_http(true)
                .with_region("us-east-1")
                .with_access_key_id("testing")
                .with_secret_access_key("testing")
                .build()
                .unwrap(),
        )
    }

    /// A config whose storage is `s3://bucket/prefix` on `endpoint`.
    fn config(
        &self,
        h: &Harness,
        endpoint: &str,
        bucket: &str,
        prefix: &str,
        extra: &str,
    ) -> std::path::PathBuf {
        let text = h.config_text(extra).replace(
            &format!("[storage]\nurl = \"file://{}\"", h.out().display()),
            &format!(
                "[storage]\nurl = \"s3://{bucket}/{prefix}\"\nmax_retries = 1\nretry_timeout_secs = 3\n[storage.options]\naws_endpoint = \"{endpoint}\"\naws_allow_http = \"true\"\naws_region = \"us-east-1\"\n"
            ),
        );
        assert!(text.contains("s3://"), "storage table replaced");
        let path = h.dir.path().join(format!("{prefix}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn s3_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("IDSNAP_TEST_TOKEN", TOKEN),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ]
}

async fn rows_of(store: &Arc<dyn ObjectStore>, path: &ObjPath) -> usize {
    let bytes = store.get(path).await.unwrap().bytes().await.unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap();
    reader.map(|b| b.unwrap().num_rows()).sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn run_writes_multipart_snapshots_to_s3_and_a_rerun_replaces_them() {
    let Some(s3) = s3() else { return };
    // 250,000 users make a file of more than two 10 MiB parts.
    let h = Harness::new(users(250_000, 40)).await;
    let prefix = unique_prefix("multipart");
    let config = s3.config(
        &h,
        &s3.endpoint,
        &s3.bucket,
        &prefix,
        "scan_unmanaged_users = true",
    );
    let cfg = config.to_str().unwrap();
    let out = run_bin(
        &[
            "--config",
            cfg,
            "-q",
            "run",
            "--snapshot-date",
            "2026-05-01",
        ],
        &s3_env(),
        h.dir.path(),
    )
    .await;
    assert_exit(&out, 0);
    assert!(stdout(&out).contains(&format!("snapshot: s3://{}/{prefix}/atlassian_users/connection=test-org/snapshot_date=2026-05-01/users.parquet", s3.bucket)), "{}", stdout(&out));

    let store = s3.store();
    let data = ObjPath::from(format!("{prefix}/{}", h.key("2026-05-01").data_path()));
    let meta = store.head(&data).await.unwrap();
    let parts: usize = meta
        .e_tag
        .as_deref()
        .unwrap()
        .trim_matches('"')
        .rsplit_once('-')
        .map(|(_, n)| n.parse().unwrap())
        .unwrap_or(1);
    assert!(
        parts >= 3,
        "expected a multipart upload of several parts, got e_tag {:?} ({} bytes)",
        meta.e_tag,
        meta.size
    );
    let got = store.get(&data).await.unwrap();
    assert_eq!(
        got.attributes
            .get(&object_store::Attribute::ContentType)
            .map(|v| v.as_ref()),
        Some("application/vnd.apache.parquet")
    );
    assert_eq!(rows_of(&store, &data).await, 250_000);
    let manifest_path = ObjPath::from(format!("{prefix}/{}", h.key("2026-05-01").manifest_path()));
    let manifest: idsnap::snapshot::manifest::Manifest = serde_json::from_slice(
        &store
            .get(&manifest_path)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(manifest.data_file.size_bytes, meta.size);
    assert_eq!(manifest.data_file.rows, 250_000);

    // A rerun on the same date replaces the object in one step.
    h.sim.set_users(users(3_000, 41));
    let out = run_bin(
        &[
            "--config",
            cfg,
            "-q",
            "run",
            "--snapshot-date",
            "2026-05-01",
            "--accept-drop",
        ],
        &s3_env(),
        h.dir.path(),
    )
    .await;
    assert_exit(&out, 0);
    assert_eq!(rows_of(&store, &data).await, 3_000);
    let listed: Vec<_> = futures::TryStreamExt::try_collect::<Vec<_>>(
        store.list(Some(&ObjPath::from(prefix.as_str()))),
    )
    .await
    .unwrap();
    assert_eq!(
        listed.len(),
        2,
        "only the data file and the manifest: {listed:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn test_probes_the_store_and_says_what_is_wrong() {
    let Some(s3) = s3() else { return };
    let h = Harness::new(users(10, 42)).await;
    let prefix = unique_prefix("probe");
    let good = s3.config(&h, &s3.endpoint, &s3.bucket, &prefix, "");
    let out = run_bin(
        &["--config", good.to_str().unwrap(), "test"],
        &s3_env(),
        h.dir.path(),
    )
    .await;
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains("ok: wrote, read back and deleted a probe object"),
        "{}",
        stdout(&out)
    );
    let listed: Vec<_> = futures::TryStreamExt::try_collect::<Vec<_>>(
        s3.store().list(Some(&ObjPath::from(prefix.as_str()))),
    )
    .await
    .unwrap();
    assert!(listed.is_empty(), "the probe object is deleted: {listed:?}");

    let missing = s3.config(&h, &s3.endpoint, "idsnap-no-such-bucket", &prefix, "");
    let out = run_bin(
        &["--config", missing.to_str().unwrap(), "test"],
        &s3_env(),
        h.dir.path(),
    )
    .await;
    assert_eq!(out.status.code(), Some(6));
    assert!(
        stdout(&out).contains("the bucket does not exist"),
        "{}",
        stdout(&out)
    );

    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let unreachable = s3.config(&h, &dead, &s3.bucket, &prefix, "");
    let out = run_bin(
        &["--config", unreachable.to_str().unwrap(), "test"],
        &s3_env(),
        h.dir.path(),
    )
    .await;
    assert_eq!(out.status.code(), Some(6));
    assert!(
        stdout(&out).contains("the endpoint is unreachable"),
        "{}",
        stdout(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_bucket_fails_the_run_with_exit_6_naming_the_url() {
    let Some(s3) = s3() else { return };
    let h = Harness::new(users(100, 43)).await;
    let config = s3.config(&h, &s3.endpoint, "idsnap-no-such-bucket", "p", "");
    let out = run_bin(
        &["--config", config.to_str().unwrap(), "run"],
        &s3_env(),
        h.dir.path(),
    )
    .await;
    assert_exit(&out, 6);
    let text = stdout(&out);
    assert!(
        text.contains("storage s3://idsnap-no-such-bucket/p"),
        "{text}"
    );
    assert!(text.contains("the bucket does not exist"), "{text}");
}

/// A TCP forwarder to the S3 server that can be cut: it counts the bytes sent upstream and,
/// when told, drops every connection and refuses new ones.
struct Cuttable {
    addr: String,
    sent: Arc<AtomicU64>,
    cut: tokio::sync::watch::Sender<bool>,
}

async fn cuttable_proxy(upstream: &str) -> Cuttable {
    let upstream = upstream.trim_start_matches("http://").to_owned();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let sent = Arc::new(AtomicU64::new(0));
    let (cut, mut cut_rx) = tokio::sync::watch::channel(false);
    let counter = Arc::clone(&sent);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cut_rx.changed() => return, // drops the listener: new connections are refused
                Ok((client, _)) = listener.accept() => {
                    let upstream = upstream.clone();
                    let counter = Arc::clone(&counter);
                    let mut cut_rx = cut_rx.clone();
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(&upstream).await else { return };
                        tokio::select! {
                            _ = cut_rx.changed() => {}
                            _ = pipe(client, server, counter) => {}
                        }
                    });
                }
            }
        }
    });
    Cuttable { addr, sent, cut }
}

async fn pipe(client: TcpStream, server: TcpStream, sent: Arc<AtomicU64>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            sent.fetch_add(n as u64, Ordering::Relaxed);
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = sw.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut sr, &mut cw).await;
        let _ = cw.shutdown().await;
    };
    tokio::join!(up, down);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_s3_server_that_stops_mid_upload_fails_the_run_and_keeps_the_previous_snapshot() {
    let Some(s3) = s3() else { return };
    let h = Harness::new(users(2_000, 44)).await;
    let prefix = unique_prefix("cut");
    let store = s3.store();
    let data = ObjPath::from(format!("{prefix}/{}", h.key("2026-05-02").data_path()));
    let manifest = ObjPath::from(format!("{prefix}/{}", h.key("2026-05-02").manifest_path()));

    let direct = s3.config(
        &h,
        &s3.endpoint,
        &s3.bucket,
        &prefix,
        "scan_unmanaged_users = true",
    );
    let out = run_bin(
        &[
            "--config",
            direct.to_str().unwrap(),
            "-q",
            "run",
            "--snapshot-date",
            "2026-05-02",
        ],
        &s3_env(),
        h.dir.path(),
    )
    .await;
    assert_exit(&out, 0);
    let before_data = store.get(&data).await.unwrap().bytes().await.unwrap();
    let before_manifest = store.get(&manifest).await.unwrap().bytes().await.unwrap();

    // Now 200,000 users through a proxy that is cut once the first part has gone up.
    h.sim.set_users(users(200_000, 45));
    let proxy = cuttable_proxy(&s3.endpoint).await;
    let via_proxy = s3.config(
        &h,
        &proxy.addr,
        &s3.bucket,
        &prefix,
        "scan_unmanaged_users = true",
    );
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_idsnap"))
        .args([
            "--config",
            via_proxy.to_str().unwrap(),
            "-q",
            "run",
            "--snapshot-date",
            "2026-05-02",
        ])
        .envs(s3_env())
        .current_dir(h.dir.path())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    while proxy.sent.load(Ordering::Relaxed) < 11 * 1024 * 1024 {
        assert!(
            std::time::Instant::now() < deadline,
            "the upload never started"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before the cut"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.cut.send(true).unwrap();
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the run gave up in time")
        .unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", stdout(&out));
    assert!(
        stdout(&out).contains(&format!("storage s3://{}/{prefix}", s3.bucket)),
        "{}",
        stdout(&out)
    );

    assert_eq!(
        store.get(&data).await.unwrap().bytes().await.unwrap(),
        before_data
    );
    assert_eq!(
        store.get(&manifest).await.unwrap().bytes().await.unwrap(),
        before_manifest
    );
}
