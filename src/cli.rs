//! The command line: argument parsing (clap derive), logging set-up, what each command prints,
//! and its exit code.
//!
//! Only runtime knobs are flags (`--config`, `--connection`, `--snapshot-date`, verbosity);
//! what to scan and where to write lives in the config file. Results go to stdout, logs to
//! stderr. This is the only module that prints.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use chrono::NaiveDate;
use clap::{Parser, Subcommand};

use crate::atlassian::AdminClient;
use crate::atlassian::model::Cursor;
use crate::changes::{self, Comparison, DiffError, FeedOutcome};
use crate::config::{
    self, Config, ConnectionConfig, Env, HttpConfig, Selection, StorageConfig, TokenSource,
    UsersEndpoint,
};
use crate::diff::ChangeType;
use crate::error::{EXIT_INTERNAL, EXIT_OK, Error};
use crate::job::{self, ConnectionReport, RunOptions};
use crate::secret::ApiToken;
use crate::simulator::{self, PopulationOptions, SimConfig, Simulator};
use crate::snapshot::{SnapshotKey, catalog};
use crate::store::{Storage, StorageUrl};
use crate::{metrics, progress, schedule, status};

/// Nightly identity snapshots of Atlassian organizations, as Parquet on object storage.
#[derive(Debug, Parser)]
#[command(name = "idsnap", version, about)]
pub struct Cli {
    /// Config file [default: config/idsnap.toml]
    #[arg(long, global = true, env = "IDSNAP_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less log output (-q warnings and errors only, -qq errors only).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub quiet: u8,
    /// Log format on stderr: human-readable text, or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check each connection's credentials, org ID and scope with one cheap call.
    Test {
        /// Only this connection (name or slug).
        #[arg(long)]
        connection: Option<String>,
    },
    /// Scan every connection (or one) once and publish the snapshots.
    Run {
        /// Only this connection (name or slug).
        #[arg(long)]
        connection: Option<String>,
        /// Snapshot date (YYYY-MM-DD) instead of today's UTC date.
        #[arg(long, value_name = "YYYY-MM-DD")]
        snapshot_date: Option<NaiveDate>,
        /// Publish even if the population guard refuses (the drop is real).
        #[arg(long)]
        accept_drop: bool,
    },
    /// Scan the built-in simulated organization into ./snapshots; no credentials needed.
    Demo {
        /// Folder to write the snapshots to.
        #[arg(long, default_value = "snapshots")]
        out: PathBuf,
        /// Users in the simulated organization.
        #[arg(long, default_value_t = 2_500)]
        users: usize,
        /// Seed of the simulated population.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Write a commented starter config (never over an existing file).
    Init {
        /// Where to write it [default: the --config path].
        path: Option<PathBuf>,
    },
    /// Work with the config file.
    Config {
        /// What to do with it.
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Run every connection on its cron schedule until SIGTERM or SIGINT.
    Schedule {
        /// Print the next five run times per connection and exit.
        #[arg(long)]
        dry_run: bool,
    },
    /// List the published snapshots, one line each.
    Snapshots {
        /// Only this connection (name or slug).
        #[arg(long)]
        connection: Option<String>,
    },
    /// Compare two snapshots of a connection (by default the two latest). Exit status as
    /// diff(1): 0 no differences, 1 differences, 2 error.
    Diff {
        /// The connection (name or slug).
        #[arg(long)]
        connection: String,
        /// The baseline date [default: the latest usable snapshot before --to].
        #[arg(long, value_name = "YYYY-MM-DD")]
        from: Option<NaiveDate>,
        /// The date compared [default: the latest snapshot].
        #[arg(long, value_name = "YYYY-MM-DD")]
        to: Option<NaiveDate>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = DiffFormat::Table)]
        format: DiffFormat,
    },
    /// Serve the simulated Admin API on 127.0.0.1 until interrupted.
    Simulate {
        /// Port (0 picks a free one).
        #[arg(long, default_value_t = 8089)]
        port: u16,
        /// Users in the simulated organization.
        #[arg(long, default_value_t = 2_500)]
        users: usize,
        /// Seed of the simulated population.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// The organization ID it answers for.
        #[arg(long, default_value = "sim-org-0001")]
        org_id: String,
        /// The bearer token it accepts.
        #[arg(long, default_value = "sim-token")]
        token: String,
        /// Latency added to every users page, in milliseconds.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Inject a fault into users-page request N (or N-M), e.g. `3:503`, `5:429-retry-after=2`,
        /// `7:reset`, `2:slow=3000`, `4:truncate`, `6:repeat-cursor`, `8:401`, `9:no-data`,
        /// `10:bad-cursor`, `11:429-reset-minute`, `12:window-exhausted=5`. Repeatable.
        #[arg(long = "fault", value_name = "N:KIND")]
        faults: Vec<simulator::FaultSpec>,
        /// Return every account whatever the claimStatus filter says.
        #[arg(long)]
        ignore_claim_filter: bool,
        /// Send links.next as a full URL instead of a bare cursor.
        #[arg(long)]
        next_as_url: bool,
    },
}

/// `idsnap config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Validate the config and print the effective settings (file plus environment), with
    /// every secret shown as ***. Exits 2 on problems.
    Check,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// How `diff` prints its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DiffFormat {
    /// Aligned columns for a terminal.
    Table,
    /// One JSON document.
    Json,
    /// CSV with a header row.
    Csv,
}

/// Parses the process arguments, runs the command, and returns its exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet, cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_INTERNAL);
        }
    };
    // Every event of this invocation carries the run ID (and, inside a scan, the connection).
    let run_id = format!("{:016x}", {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one((std::process::id(), std::time::SystemTime::now()))
    });
    let root = tracing::info_span!("idsnap", run_id = %run_id);
    match runtime.block_on(tracing::Instrument::instrument(dispatch(cli), root)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn init_logging(verbose: u8, quiet: u8, format: LogFormat) {
    let level = match i16::from(verbose) - i16::from(quiet) {
        i16::MIN..=-2 => "error",
        -1 => "warn",
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("idsnap={level},warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_target(false).try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .flatten_event(true)
            .try_init(),
    };
}

async fn dispatch(cli: Cli) -> Result<u8, Error> {
    let config_path = cli
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_CONFIG_PATH));
    match cli.command {
        Command::Test { connection } => {
            let selection = connection
                .as_deref()
                .map_or(Selection::All, Selection::Named);
            let config = config::load(&config_path, &Env::from_process(), selection)?;
            Ok(test_connections(&config).await)
        }
        Command::Run {
            connection,
            snapshot_date,
            accept_drop,
        } => {
            let selection = connection
                .as_deref()
                .map_or(Selection::All, Selection::Named);
            let config = config::load(&config_path, &Env::from_process(), selection)?;
            let storage = Storage::open(&config.storage)?;
            let options = RunOptions {
                snapshot_date,
                accept_drop,
                ..RunOptions::default()
            };
            let reports = run_with_progress(&config, &storage, options).await;
            let code = print_reports(&reports);
            record_status(&config, &reports).await;
            Ok(code)
        }
        Command::Demo { out, users, seed } => demo(out, users, seed).await,
        Command::Init { path } => init(path.unwrap_or(config_path)),
        Command::Config {
            action: ConfigAction::Check,
        } => {
            let config = config::load(&config_path, &Env::from_process(), Selection::All)?;
            println!(
                "# {} is valid. Effective settings (file plus IDSNAP__ environment overrides):",
                config_path.display()
            );
            print!("{}", config::render_effective(&config));
            Ok(EXIT_OK)
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "idsnap", &mut std::io::stdout());
            Ok(EXIT_OK)
        }
        Command::Schedule { dry_run } => {
            let config = config::load(
                &config_path,
                &Env::from_process(),
                if dry_run {
                    Selection::NoTokens
                } else {
                    Selection::All
                },
            )?;
            schedule(config_path, config, dry_run).await
        }
        Command::Snapshots { connection } => {
            let config = config::load(&config_path, &Env::from_process(), Selection::NoTokens)?;
            let storage = Storage::open(&config.storage)?;
            list_snapshots(&config, &storage, connection.as_deref()).await
        }
        Command::Diff {
            connection,
            from,
            to,
            format,
        } => {
            // diff(1)'s convention: any trouble is exit 2, whatever its kind.
            let comparison = async {
                let config = config::load(&config_path, &Env::from_process(), Selection::NoTokens)?;
                let storage = Storage::open(&config.storage)?;
                let slug = resolve_slug(&config, &connection);
                let comparison = changes::compare(&storage, &slug, from, to)
                    .await
                    .map_err(|e| Error::Usage(e.to_string()))?;
                if comparison.from.is_none() {
                    return Err(Error::Usage(
                        DiffError::TooFew { slug, found: 1 }.to_string(),
                    ));
                }
                Ok(comparison)
            }
            .await
            .map_err(|e| match e {
                Error::Config(_) | Error::Usage(_) => e,
                other => Error::Usage(other.to_string()),
            })?;
            print_diff(&connection, &comparison, format);
            Ok(if comparison.difference.is_empty() {
                0
            } else {
                1
            })
        }
        Command::Simulate {
            port,
            users,
            seed,
            org_id,
            token,
            latency_ms,
            faults,
            ignore_claim_filter,
            next_as_url,
        } => {
            let sim_config = SimConfig {
                org_id: org_id.clone(),
                token,
                latency: Duration::from_millis(latency_ms),
                ignore_claim_filter,
                next_as_url,
                ..SimConfig::default()
            };
            let population =
                simulator::population::generate(users, seed, &PopulationOptions::default());
            let sim = Simulator::start(sim_config, population, port)
                .await
                .map_err(|e| Error::Internal(format!("cannot listen on 127.0.0.1:{port}: {e}")))?;
            for spec in &faults {
                sim.faults().range(spec.first, spec.last, spec.fault);
            }
            println!(
                "Simulated Admin API for org {org_id:?} with {users} users on {}",
                sim.base_url()
            );
            println!(
                "Point a connection at it with api_base_url = \"{}\" and allow_insecure_http = true.",
                sim.base_url()
            );
            println!("Press Ctrl-C to stop.");
            tokio::signal::ctrl_c()
                .await
                .map_err(|e| Error::Internal(format!("waiting for Ctrl-C failed: {e}")))?;
            Ok(EXIT_OK)
        }
    }
}

/// The slug for a connection given by name or slug; names not in the config are slugified,
/// so snapshots of a connection since removed from the config stay reachable.
fn resolve_slug(config: &Config, name: &str) -> String {
    config
        .connections
        .iter()
        .find(|c| c.name == name || c.slug == name)
        .map_or_else(|| config::slugify(name), |c| c.slug.clone())
}

async fn list_snapshots(
    config: &Config,
    storage: &Storage,
    connection: Option<&str>,
) -> Result<u8, Error> {
    let slugs = match connection {
        Some(name) => vec![resolve_slug(config, name)],
        None => catalog::connection_slugs(storage).await?,
    };
    println!(
        "{:<24} {:<10} {:>10} {:>10} {:>10}  written at",
        "connection", "date", "users", "managed", "unmanaged"
    );
    let mut any = false;
    for slug in slugs {
        for date in catalog::snapshot_dates(storage, &slug).await? {
            any = true;
            let key = SnapshotKey {
                slug: slug.clone(),
                date,
            };
            match catalog::read_manifest(storage, &key).await {
                Ok(m) => println!(
                    "{:<24} {:<10} {:>10} {:>10} {:>10}  {}",
                    m.connection,
                    date,
                    thousands(m.counts.users),
                    thousands(m.counts.managed),
                    thousands(m.counts.unmanaged),
                    m.scan_finished_at
                ),
                Err(problem) => println!("{slug:<24} {date:<10} ({problem})"),
            }
        }
    }
    if !any {
        println!("(no snapshots under {})", storage.url);
    }
    Ok(EXIT_OK)
}

fn truncate(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn print_diff(connection: &str, c: &Comparison, format: DiffFormat) {
    let from = c
        .from
        .as_ref()
        .map(|(d, _)| d.to_string())
        .unwrap_or_default();
    let to = c.to.0.to_string();
    let d = &c.difference;
    match format {
        DiffFormat::Json => {
            let rows: Vec<_> = d
                .changes
                .iter()
                .map(|ch| {
                    let cur = ch.current();
                    serde_json::json!({
                        "account_id": ch.account_id,
                        "change_type": ch.change_type.as_str(),
                        "changed_fields": ch.changed_fields,
                        "email": cur.email, "name": cur.name, "claim_status": cur.claim_status, "status": cur.status,
                        "before": ch.before, "after": ch.after,
                    })
                })
                .collect();
            let counts: serde_json::Map<String, serde_json::Value> = ChangeType::ALL
                .iter()
                .map(|t| (t.as_str().to_owned(), d.count(*t).into()))
                .collect();
            let doc = serde_json::json!({
                "connection": connection, "from": from, "to": to, "scope_note": c.scope_note,
                "counts": counts, "changes": rows,
            });
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        }
        DiffFormat::Csv => {
            println!(
                "account_id,change_type,changed_fields,email,name,claim_status,status,before,after"
            );
            for ch in &d.changes {
                let cur = ch.current();
                let fields = [
                    ch.account_id.clone(),
                    ch.change_type.as_str().to_owned(),
                    ch.changed_fields.join(";"),
                    cur.email.clone().unwrap_or_default(),
                    cur.name.clone().unwrap_or_default(),
                    cur.claim_status.clone().unwrap_or_default(),
                    cur.status.clone().unwrap_or_default(),
                    ch.before.as_ref().map(|b| b.to_json()).unwrap_or_default(),
                    ch.after.as_ref().map(|a| a.to_json()).unwrap_or_default(),
                ];
                println!(
                    "{}",
                    fields
                        .iter()
                        .map(|f| csv_field(f))
                        .collect::<Vec<_>>()
                        .join(",")
                );
            }
        }
        DiffFormat::Table => {
            println!("{connection}: {from} → {to}");
            if let Some(note) = &c.scope_note {
                println!("WARNING: {note}");
            }
            let counts: Vec<String> = ChangeType::ALL
                .iter()
                .map(|t| format!("{} {}", d.count(*t), t.as_str()))
                .collect();
            println!("{}", counts.join(", "));
            if d.is_empty() {
                return;
            }
            println!();
            println!(
                "{:<10} {:<28} {:<30} {:<22} changed",
                "change", "account_id", "email", "name"
            );
            for ch in &d.changes {
                let cur = ch.current();
                println!(
                    "{:<10} {:<28} {:<30} {:<22} {}",
                    ch.change_type.as_str(),
                    truncate(&ch.account_id, 28),
                    truncate(cur.email.as_deref().unwrap_or("-"), 30),
                    truncate(cur.name.as_deref().unwrap_or("-"), 22),
                    ch.changed_fields.join(",")
                );
            }
        }
    }
}

/// The starter config: the commented example shipped in the repository.
pub const STARTER_CONFIG: &str = include_str!("../config/idsnap.toml");

fn init(path: PathBuf) -> Result<u8, Error> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Usage(format!("cannot create {}: {e}", dir.display())))?;
    }
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Error::Usage(format!(
                "{} already exists; not overwriting it (pass another path: idsnap init PATH)",
                path.display()
            )));
        }
        Err(e) => {
            return Err(Error::Usage(format!(
                "cannot create {}: {e}",
                path.display()
            )));
        }
    };
    file.write_all(STARTER_CONFIG.as_bytes())
        .map_err(|e| Error::Usage(format!("cannot write {}: {e}", path.display())))?;
    println!("Wrote {}. Fill in:", path.display());
    println!("  1. storage.url: where snapshots go (a folder, or s3://bucket/prefix);");
    println!(
        "  2. connections[0].name and org_id: the Organization ID from admin.atlassian.com/o/<org id>/;"
    );
    println!(
        "  3. the API key: create one under Settings → API keys with the read:directories:admin scope,"
    );
    println!(
        "     then export ATLASSIAN_API_TOKEN=... (or point api_token_file at a file only you can read)."
    );
    println!(
        "Then check it with `idsnap --config {} config check` and `idsnap --config {} test`.",
        path.display(),
        path.display()
    );
    Ok(EXIT_OK)
}

/// `run_all` with the progress display (bars on a terminal, log lines otherwise).
async fn run_with_progress(
    config: &Config,
    storage: &Storage,
    mut options: RunOptions,
) -> Vec<ConnectionReport> {
    let board = std::sync::Arc::new(progress::ProgressBoard::default());
    options.progress = Some(std::sync::Arc::clone(&board));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let display = tokio::spawn(progress::display(board, stopped));
    let reports = job::run_all(config, storage, &options).await;
    let _ = stop.send(true);
    let _ = display.await;
    reports
}

/// Records the reports in the status file and the metrics file, where configured. A failure
/// to write them is logged, not fatal: the snapshots are what matter.
async fn record_status(config: &Config, reports: &[ConnectionReport]) {
    if let Some(path) = &config.status_file {
        let entries: Vec<(String, &ConnectionReport)> = reports
            .iter()
            .map(|r| (resolve_slug(config, &r.name), r))
            .collect();
        if let Err(e) = status::record(path, &entries).await {
            tracing::error!(path = %path.display(), error = %e, "Could not write the status file.");
        }
    }
    if let Some(path) = &config.metrics_file {
        let all: Vec<&ConnectionReport> = reports.iter().collect();
        if let Err(e) = metrics::record(path, &all).await {
            tracing::error!(path = %path.display(), error = %e, "Could not write the metrics file.");
        }
    }
}

/// The daemon's runner: each run re-reads the config (so rotated tokens are picked up
/// without a restart), scans one connection, prints its summary and records its status.
struct ConfigRunner {
    config_path: PathBuf,
    names: Vec<String>,
}

impl schedule::Runner for ConfigRunner {
    fn run(&self, index: usize, cancel: schedule::Cancel) -> schedule::RunFuture {
        let path = self.config_path.clone();
        let name = self.names[index].clone();
        Box::pin(async move {
            let config = match config::load(&path, &Env::from_process(), Selection::Named(&name)) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(connection = %name, error = %e, "The config no longer loads; this run is skipped.");
                    return crate::error::EXIT_CONFIG;
                }
            };
            let storage = match Storage::open(&config.storage) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(connection = %name, error = %e, "The storage cannot be opened; this run is skipped.");
                    return crate::error::EXIT_STORAGE;
                }
            };
            let Some(conn) = config.connections.iter().find(|c| c.name == name) else {
                tracing::error!(connection = %name, "The connection is no longer in the config; this run is skipped.");
                return crate::error::EXIT_CONFIG;
            };
            let options = RunOptions {
                cancel,
                ..RunOptions::default()
            };
            let report = job::run_one(&config, &storage, conn, &options).await;
            let code = print_reports(std::slice::from_ref(&report));
            record_status(&config, std::slice::from_ref(&report)).await;
            code
        })
    }
}

async fn schedule(config_path: PathBuf, config: Config, dry_run: bool) -> Result<u8, Error> {
    let mut jobs = Vec::new();
    let mut missing = Vec::new();
    for c in &config.connections {
        match c.cron.clone().or_else(|| config.schedule.cron.clone()) {
            Some(schedule) => jobs.push(schedule::Job {
                name: c.name.clone(),
                schedule,
            }),
            None => missing.push(format!("connections[{}].cron", c.index)),
        }
    }
    if !missing.is_empty() {
        return Err(Error::Usage(format!(
            "no schedule for {}: set [schedule] cron = \"0 2 * * *\" (or cron on each connection)",
            missing.join(", ")
        )));
    }
    if dry_run {
        let now = chrono::Utc::now();
        for job in &jobs {
            println!(
                "{} ({} in {}):",
                job.name,
                job.schedule.expression(),
                job.schedule.timezone()
            );
            for t in job.schedule.upcoming(now, 5) {
                println!(
                    "  {}  ({})",
                    t.with_timezone(&job.schedule.timezone())
                        .format("%Y-%m-%d %H:%M:%S %Z"),
                    t.format("%Y-%m-%d %H:%M:%S UTC")
                );
            }
        }
        return Ok(EXIT_OK);
    }
    let runner = ConfigRunner {
        config_path,
        names: jobs.iter().map(|j| j.name.clone()).collect(),
    };
    let daemon = schedule::Daemon {
        jobs,
        runner: std::sync::Arc::new(runner),
        clock: std::sync::Arc::new(schedule::SystemClock),
        run_on_start: config.schedule.run_on_start,
        shutdown_grace: config.schedule.shutdown_grace,
    };
    let mut signals =
        Signals::new().map_err(|e| Error::Internal(format!("cannot listen for signals: {e}")))?;
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
    let (second_tx, second_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        signals.next().await;
        tracing::info!("Signal received: stopping (send it again to stop at once).");
        let _ = first_tx.send(());
        signals.next().await;
        tracing::warn!("Second signal: abandoning runs in progress now.");
        let _ = second_tx.send(());
    });
    let report = daemon
        .run(
            async {
                let _ = first_rx.await;
            },
            async {
                let _ = second_rx.await;
            },
        )
        .await;
    tracing::info!(
        runs = report.runs_started.iter().sum::<u64>(),
        skipped = report.ticks_skipped.iter().sum::<u64>(),
        abandoned = report.cancelled,
        "Stopped."
    );
    Ok(EXIT_OK)
}

/// SIGTERM and SIGINT, as one stream.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

async fn test_connections(config: &Config) -> u8 {
    let mut worst = EXIT_OK;
    match Storage::open(&config.storage) {
        Ok(storage) => match storage.probe().await {
            Ok(()) => println!(
                "storage {}: ok: wrote, read back and deleted a probe object",
                storage.url
            ),
            Err(message) => {
                worst = crate::error::EXIT_STORAGE;
                println!("storage {}: FAILED: {message}", storage.url);
            }
        },
        Err(e) => {
            worst = crate::error::EXIT_STORAGE;
            println!("storage: FAILED: {e}");
        }
    }
    for conn in config.connections.iter().filter(|c| c.token.is_some()) {
        match test_one(conn, &config.http).await {
            Ok(line) => println!("{}: ok: {line}", conn.name),
            Err((code, message)) => {
                worst = worst.max(code);
                println!("{}: FAILED: {message}", conn.name);
            }
        }
    }
    worst
}

/// One connection's test: the directories call (same scope as the scan), then the count of
/// directories, then one page of the configured users endpoint (whose scope is not
/// documented for `search`).
async fn test_one(conn: &ConnectionConfig, http: &HttpConfig) -> Result<String, (u8, String)> {
    let client = AdminClient::new(conn, http).map_err(|e| (EXIT_INTERNAL, e))?;
    let first = client
        .directories_page(1, None)
        .await
        .map_err(|e| (e.exit_code(), e.to_string()))?;
    let mut directories = first.data.len() as u64;
    if first
        .links
        .as_ref()
        .and_then(|l| l.next.as_deref())
        .is_some_and(|n| !n.is_empty())
    {
        // Count the rest with full pages: a cursor keeps the limit it was made with.
        directories = 0;
        let mut cursor: Option<Cursor> = None;
        for _ in 0..1000 {
            let page = client
                .directories_page(100, cursor.as_ref())
                .await
                .map_err(|e| (e.exit_code(), e.to_string()))?;
            directories += page.data.len() as u64;
            let next = page.links.and_then(|l| l.next).filter(|n| !n.is_empty());
            match Cursor::from_next(next.as_deref()) {
                Ok(Some(c)) => cursor = Some(c),
                _ => break,
            }
        }
    }
    let users = client
        .users_page(&crate::atlassian::UsersFilter::default(), None)
        .await
        .map_err(|e| (e.exit_code(), e.to_string()))?;
    Ok(format!(
        "{directories} director{} found in org {}; the {} users endpoint answered ({} users on the first page)",
        if directories == 1 { "y" } else { "ies" },
        conn.org_id,
        conn.users_endpoint.as_str(),
        users.users.len()
    ))
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Prints one block per connection and returns the highest exit code.
fn print_reports(reports: &[ConnectionReport]) -> u8 {
    let mut worst = EXIT_OK;
    if reports.is_empty() {
        println!("No connection selected.");
    }
    for report in reports {
        worst = worst.max(report.exit_code());
        match &report.outcome {
            Ok(summary) => {
                let m = &summary.manifest;
                let c = &m.counts;
                println!(
                    "{}: published {} users (managed {} / unmanaged {} / unknown {}), {} pages, {:.1} s",
                    report.name,
                    thousands(c.users),
                    thousands(c.managed),
                    thousands(c.unmanaged),
                    thousands(c.unknown),
                    thousands(m.pages),
                    summary.duration.as_secs_f64()
                );
                println!("  snapshot: {}", summary.location);
                let api = match m.api_count {
                    Some(n) if n == c.users => format!("API count {} (matches)", thousands(n)),
                    Some(n) => format!(
                        "WARNING: API count {} differs from users written ({})",
                        thousands(n),
                        thousands(c.users)
                    ),
                    None => "API count unavailable".to_owned(),
                };
                println!(
                    "  {api}; {} duplicates skipped; {} non-managed records dropped{}",
                    thousands(c.duplicates),
                    thousands(c.dropped_not_managed),
                    if m.scan_unmanaged_users {
                        ""
                    } else {
                        " (scan_unmanaged_users = false)"
                    }
                );
                println!(
                    "  http: {} requests, {} retries, {:.1} s waiting",
                    thousands(m.http.requests),
                    thousands(m.http.retries),
                    m.http.wait_secs
                );
                if m.scan_unmanaged_users {
                    println!(
                        "  note: {} unmanaged accounts found. Atlassian lists only accounts in at least one of the organization's directories, so site-only users can be missing (README: \"Why identities may be missing\")",
                        thousands(c.unmanaged)
                    );
                }
                match &summary.changes {
                    Ok(FeedOutcome::First) => println!(
                        "  changes: first snapshot of this connection, no change feed written"
                    ),
                    Ok(FeedOutcome::Written {
                        previous,
                        counts,
                        scope_note,
                        skipped,
                    }) => {
                        println!(
                            "  changes since {previous}: {} appeared, {} vanished, {} reappeared, {} changed",
                            thousands(counts[0] as u64),
                            thousands(counts[1] as u64),
                            thousands(counts[2] as u64),
                            thousands(counts[3] as u64)
                        );
                        if let Some(note) = scope_note {
                            println!("  WARNING: {note}");
                        }
                        for s in skipped {
                            println!("  note: skipped snapshot {s} as a baseline");
                        }
                    }
                    Err(e) => println!(
                        "  FAILED to write the change feed (exit 6; the snapshot is published): {e}"
                    ),
                }
            }
            Err(e) => println!("{}: FAILED (exit {}): {e}", report.name, e.exit_code()),
        }
    }
    worst
}

async fn demo(out: PathBuf, users: usize, seed: u64) -> Result<u8, Error> {
    // A fresh random token each time: the demo needs none from the user, and nothing else
    // can talk to the simulator meanwhile.
    let token = format!("demo-{:016x}", {
        use std::hash::{BuildHasher, RandomState};
        RandomState::new().hash_one(std::process::id())
    });
    let sim_config = SimConfig {
        token: token.clone(),
        ..SimConfig::default()
    };
    let population = simulator::population::generate(users, seed, &PopulationOptions::default());
    let sim = Simulator::start(sim_config.clone(), population, 0)
        .await
        .map_err(|e| Error::Internal(format!("cannot start the simulator on 127.0.0.1: {e}")))?;
    println!(
        "Started the simulated Admin API on {} ({} users, seed {seed}).",
        sim.base_url(),
        thousands(users as u64)
    );
    let base = config::parse_base_url(&sim.base_url(), true).map_err(Error::Internal)?;
    let config = Config {
        storage: StorageConfig::new(StorageUrl::Local(out.clone())),
        http: HttpConfig::default(),
        max_concurrent_connections: 1,
        connections: vec![ConnectionConfig {
            name: "Demo Org".into(),
            slug: "demo-org".into(),
            org_id: sim_config.org_id.clone(),
            token_source: TokenSource::Builtin,
            token: Some(ApiToken::new(token)),
            scan_unmanaged_users: true,
            member_source_of_truth: false,
            api_base_url: base,
            allow_insecure_http: true,
            users_endpoint: UsersEndpoint::List,
            max_drop_percent: 100,
            partitioned_walk: false,
            cron: None,
            index: 0,
        }],
        schedule: Default::default(),
        status_file: None,
        metrics_file: None,
    };
    let storage = Storage::open(&config.storage)?;
    let reports = run_with_progress(&config, &storage, RunOptions::default()).await;
    let code = print_reports(&reports);
    if code == EXIT_OK {
        let glob = out.join("atlassian_users/**/*.parquet");
        println!();
        println!("Look at it with DuckDB (https://duckdb.org):");
        println!(
            "  duckdb -c \"SELECT claim_status, status, count(*) AS users FROM read_parquet('{}', hive_partitioning = true) GROUP BY ALL ORDER BY ALL\"",
            glob.display()
        );
    }
    Ok(code)
}
