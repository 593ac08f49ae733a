//! Shared helpers: a simulator plus a temporary snapshot folder, config files, running the
//! real binary, and reading snapshots back.

use std::path::{Path, PathBuf};
use std::process::Output;

use arrow::array::RecordBatch;
use chrono::NaiveDate;
use idsnap::config::{self, Config, Env, Selection};
use idsnap::simulator::population::generate;
use idsnap::simulator::{PopulationOptions, SimConfig, SimUser, Simulator};
use idsnap::snapshot::SnapshotKey;
use idsnap::snapshot::manifest::Manifest;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::reader::{FileReader, SerializedFileReader};
use tempfile::TempDir;

pub const TOKEN: &str = "test-token-123";
pub const ORG: &str = "org-test-1";

pub fn date(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
}

pub fn users(n: usize, seed: u64) -> Vec<SimUser> {
    generate(n, seed, &PopulationOptions::default())
}

pub struct Harness {
    pub sim: Simulator,
    pub dir: TempDir,
}

impl Harness {
    pub async fn new(users: Vec<SimUser>) -> Harness {
        Harness::with(SimConfig::default(), users).await
    }

    pub async fn with(sim: SimConfig, users: Vec<SimUser>) -> Harness {
        // Keep a token the test chose; replace the simulator's default one.
        let token = if sim.token == SimConfig::default().token {
            TOKEN.into()
        } else {
            sim.token.clone()
        };
        let sim = SimConfig {
            org_id: ORG.into(),
            token,
            ..sim
        };
        Harness {
            sim: Simulator::start(sim, users, 0).await.unwrap(),
            dir: TempDir::new().unwrap(),
        }
    }

    pub fn out(&self) -> PathBuf {
        self.dir.path().join("snapshots")
    }

    /// A config with one connection named "Test Org" pointing at the simulator; `extra` is
    /// appended inside the connection table.
    pub fn config_text(&self, extra: &str) -> String {
        format!(
            r#"
[storage]
url = "file://{out}"

[http]
max_retries = 3
max_retry_wait_secs = 1
request_timeout_secs = 5

[[connections]]
name = "Test Org"
org_id = "{ORG}"
api_token_env = "IDSNAP_TEST_TOKEN"
api_base_url = "{base}"
allow_insecure_http = true
{extra}
"#,
            out = self.out().display(),
            base = self.sim.base_url(),
        )
    }

    pub fn write_config(&self, extra: &str) -> PathBuf {
        let path = self.dir.path().join("idsnap.toml");
        std::fs::write(&path, self.config_text(extra)).unwrap();
        path
    }

    pub fn config(&self, extra: &str) -> Config {
        self.config_with_token(extra, TOKEN)
    }

    pub fn config_with_token(&self, extra: &str, token: &str) -> Config {
        let env = Env::from_pairs([("IDSNAP_TEST_TOKEN", token)]);
        config::from_toml_str(
            &self.config_text(extra),
            &env,
            Selection::All,
            self.dir.path(),
        )
        .unwrap()
    }

    pub fn key(&self, day: &str) -> SnapshotKey {
        SnapshotKey {
            slug: "test-org".into(),
            date: date(day),
        }
    }

    pub fn data_file(&self, day: &str) -> PathBuf {
        self.out().join(self.key(day).data_path())
    }

    pub fn manifest(&self, day: &str) -> Manifest {
        let text = std::fs::read_to_string(self.out().join(self.key(day).manifest_path())).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// Runs the real binary with the test token in its environment.
    pub async fn bin(&self, args: &[&str], token: &str) -> Output {
        run_bin(args, &[("IDSNAP_TEST_TOKEN", token)], self.dir.path()).await
    }
}

pub async fn run_bin(args: &[&str], env: &[(&str, &str)], cwd: &Path) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_idsnap"));
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("IDSNAP_CONFIG")
        .env_remove("RUST_LOG")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.unwrap()
}

/// Asserts a process's exit code, showing both of its streams when it differs.
#[track_caller]
pub fn assert_exit(o: &Output, code: i32) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every batch of a Parquet file.
pub fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    let file = std::fs::File::open(path).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    reader.map(|b| b.unwrap()).collect()
}

/// The file's key-value metadata as pairs.
pub fn parquet_kv(path: &Path) -> Vec<(String, String)> {
    let reader = SerializedFileReader::new(std::fs::File::open(path).unwrap()).unwrap();
    reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kv| {
            kv.iter()
                .map(|k| (k.key.clone(), k.value.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

/// All files below `dir`, relative, sorted.
pub fn files_below(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
