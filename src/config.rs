//! Configuration: the TOML file plus `IDSNAP__...` environment overrides, checked in full.
//!
//! Loading has two phases. The `config` crate merges the file and the environment into a tree
//! of untyped values; [`validate`] then walks that tree by hand, so that it can report **every**
//! problem at once, each with its key path (`connections[1].org_id: missing`), instead of
//! stopping at the first like a serde derive would. Every table rejects keys it does not know.
//! Tokens are resolved here too (from the environment or a file), so a missing secret is a
//! config error caught before any request is sent. This module does no network I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Value, ValueKind};
use url::Url;

use crate::schedule::CronSchedule;
use crate::secret::ApiToken;
use crate::store::StorageUrl;

/// The Atlassian API host used when a connection does not name another.
pub const DEFAULT_API_BASE_URL: &str = "https://api.atlassian.com";
/// Where `--config` points when neither the flag nor `IDSNAP_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "config/idsnap.toml";
/// Prefix of the environment variables that override file settings
/// (`IDSNAP__STORAGE__URL=s3://bucket/prefix`).
pub const ENV_PREFIX: &str = "IDSNAP";

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where snapshots are written.
    pub storage: StorageConfig,
    /// HTTP behaviour shared by every connection.
    pub http: HttpConfig,
    /// How many connections are scanned at the same time.
    pub max_concurrent_connections: usize,
    /// The Atlassian organizations to scan, in file order.
    pub connections: Vec<ConnectionConfig>,
    /// `[schedule]`: when `idsnap schedule` runs each connection.
    pub schedule: ScheduleConfig,
    /// Where to keep the status file, if anywhere.
    pub status_file: Option<PathBuf>,
    /// Where to write Prometheus metrics, if anywhere.
    pub metrics_file: Option<PathBuf>,
}

/// `[schedule]`: the daemon's timing.
#[derive(Debug, Clone)]
pub struct ScheduleConfig {
    /// The default schedule of every connection (a connection's own `cron` overrides it).
    pub cron: Option<CronSchedule>,
    /// IANA zone the expressions are read in.
    pub timezone: String,
    /// Run every connection once at start.
    pub run_on_start: bool,
    /// How long a run in progress may take to finish after SIGTERM or SIGINT.
    pub shutdown_grace: Duration,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            cron: None,
            timezone: "UTC".into(),
            run_on_start: false,
            shutdown_grace: Duration::from_secs(DEFAULT_SHUTDOWN_GRACE_SECS),
        }
    }
}

impl StorageConfig {
    /// A store at `url` with no options and the default retry settings.
    pub fn new(url: StorageUrl) -> StorageConfig {
        StorageConfig {
            url,
            options: BTreeMap::new(),
            max_retries: DEFAULT_STORAGE_MAX_RETRIES as usize,
            retry_timeout: Duration::from_secs(DEFAULT_STORAGE_RETRY_TIMEOUT_SECS),
        }
    }
}

/// `[storage]`: the object store that receives snapshots.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// The parsed `url`.
    pub url: StorageUrl,
    /// `[storage.options]`, handed to object_store unchanged.
    pub options: BTreeMap<String, String>,
    /// Retries of one storage request (cloud stores).
    pub max_retries: usize,
    /// Longest time one storage request may keep retrying (cloud stores).
    pub retry_timeout: Duration,
}

/// `[http]`: timeouts and retry limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Longest time one request may take, connection and body included.
    pub request_timeout: Duration,
    /// How many times one request is retried after a retryable failure.
    pub max_retries: u32,
    /// Longest single wait between two attempts.
    pub max_retry_wait: Duration,
    /// Longest total time one connection's run may spend waiting to retry.
    pub retry_budget: Duration,
    /// What a response may cost: body size, string lengths, pages per walk.
    pub limits: PageLimits,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            request_timeout: Duration::from_secs(DEFAULT_REQUEST_TIMEOUT_SECS),
            max_retries: DEFAULT_MAX_RETRIES,
            max_retry_wait: Duration::from_secs(DEFAULT_MAX_RETRY_WAIT_SECS),
            retry_budget: Duration::from_secs(DEFAULT_RETRY_BUDGET_SECS),
            limits: PageLimits::default(),
        }
    }
}

const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 30;
const DEFAULT_MAX_RETRIES: u32 = 6;
const DEFAULT_MAX_RETRY_WAIT_SECS: u64 = 120;
const DEFAULT_RETRY_BUDGET_SECS: u64 = 900;
const DEFAULT_MAX_CONCURRENT_CONNECTIONS: u64 = 4;
const DEFAULT_MAX_PAGE_BYTES: u64 = 8 * 1024 * 1024;
const DEFAULT_MAX_FIELD_CHARS: u64 = 8 * 1024;
const DEFAULT_MAX_PAGES_PER_WALK: u64 = 1_000_000;
const DEFAULT_MAX_DROP_PERCENT: u64 = 50;
const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 60;
const DEFAULT_STORAGE_MAX_RETRIES: u64 = 10;
const DEFAULT_STORAGE_RETRY_TIMEOUT_SECS: u64 = 180;

/// Limits on what an API response may cost; each breach fails the run (nothing published).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimits {
    /// Largest response body of one page.
    pub max_page_bytes: usize,
    /// Longest string field (in characters) kept in the snapshot.
    pub max_field_chars: usize,
    /// Most pages one walk may take: a backstop against endless cursors.
    pub max_pages_per_walk: u64,
}

impl Default for PageLimits {
    fn default() -> Self {
        PageLimits {
            max_page_bytes: DEFAULT_MAX_PAGE_BYTES as usize,
            max_field_chars: DEFAULT_MAX_FIELD_CHARS as usize,
            max_pages_per_walk: DEFAULT_MAX_PAGES_PER_WALK,
        }
    }
}

/// Which Admin API operation lists the users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsersEndpoint {
    /// `GET .../directories/-/users` (deprecated by Atlassian after 2027-06-30).
    List,
    /// `POST .../directories/-/users/search`, its successor.
    Search,
}

impl UsersEndpoint {
    /// The config spelling, also recorded in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            UsersEndpoint::List => "list",
            UsersEndpoint::Search => "search",
        }
    }
}

/// Where a connection's token came from, for messages (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// Read from this environment variable.
    Env(String),
    /// Read from this file.
    File(PathBuf),
    /// Supplied by the program itself (the demo's simulator).
    Builtin,
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Env(name) => write!(f, "environment variable {name}"),
            TokenSource::File(path) => write!(f, "file {}", path.display()),
            TokenSource::Builtin => f.write_str("built-in demo token"),
        }
    }
}

/// One `[[connections]]` entry: an Atlassian organization and how to scan it.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// The label the team sees.
    pub name: String,
    /// `name` reduced to lower-case letters, digits and hyphens: the path segment.
    pub slug: String,
    /// The Atlassian Organization ID.
    pub org_id: String,
    /// Where the token was read from.
    pub token_source: TokenSource,
    /// The token; `None` only for connections not selected for this command.
    pub token: Option<ApiToken>,
    /// Include unmanaged (unclaimed) accounts. Off: managed accounts only.
    pub scan_unmanaged_users: bool,
    /// Recorded with every snapshot: whether this organization is the member source of truth.
    pub member_source_of_truth: bool,
    /// Scheme, host and optional path prefix of the Admin API, without a trailing slash.
    pub api_base_url: Url,
    /// Permits `http://` base URLs (local simulators and tests only).
    pub allow_insecure_http: bool,
    /// Which listing operation to walk.
    pub users_endpoint: UsersEndpoint,
    /// Largest drop, in percent of the previous snapshot's users, published without
    /// `--accept-drop`.
    pub max_drop_percent: u8,
    /// Split the walk into concurrent filtered walks (by claim status and status).
    pub partitioned_walk: bool,
    /// This connection's own schedule, overriding `[schedule] cron`.
    pub cron: Option<CronSchedule>,
    /// Position in the file, for key paths in later messages.
    pub index: usize,
}

/// One problem found while loading, with the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfigProblem {
    /// Key path such as `connections[1].org_id`, or `(file)` for the file as a whole.
    pub key: String,
    /// What is wrong and, where it helps, what to do.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found in one load, sorted by key. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The file that was loaded, if any.
    pub path: Option<PathBuf>,
    /// The problems.
    pub problems: Vec<ConfigProblem>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        match &self.path {
            Some(p) => write!(f, "{n} problem(s) in config {}:", p.display())?,
            None => write!(f, "{n} problem(s) in config:")?,
        }
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A snapshot of the environment variables, so loading is testable without touching the
/// process environment.
#[derive(Debug, Clone, Default)]
pub struct Env(HashMap<String, String>);

impl Env {
    /// The current process environment (variables that are not valid UTF-8 are skipped).
    pub fn from_process() -> Self {
        Env(std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect())
    }

    /// An environment made of these pairs only.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Env(pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect())
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

/// Which connections a command works on; tokens are resolved for these only, so a
/// `run --connection A` does not need B's secret.
#[derive(Debug, Clone, Copy)]
pub enum Selection<'a> {
    /// Every connection.
    All,
    /// The connection with this name (or slug).
    Named(&'a str),
    /// Validate without reading any token (for `config check`-style uses).
    NoTokens,
}

/// Loads `path` with environment overrides from `env` and validates it.
pub fn load(path: &Path, env: &Env, selection: Selection<'_>) -> Result<Config, ConfigErrors> {
    let fail = |message: String| ConfigErrors {
        path: Some(path.to_owned()),
        problems: vec![ConfigProblem {
            key: "(file)".into(),
            message,
        }],
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        fail(format!(
            "cannot read {}: {e}; pass --config PATH or set IDSNAP_CONFIG (see config/idsnap.toml for an example)",
            path.display()
        ))
    })?;
    let base_dir = path.parent().map(Path::to_owned).unwrap_or_default();
    from_toml_str(&text, env, selection, &base_dir).map_err(|mut e| {
        e.path = Some(path.to_owned());
        e
    })
}

/// Parses and validates TOML text. Relative `api_token_file` paths resolve against `base_dir`
/// (the config file's folder).
pub fn from_toml_str(
    text: &str,
    env: &Env,
    selection: Selection<'_>,
    base_dir: &Path,
) -> Result<Config, ConfigErrors> {
    let overrides: config::Map<String, String> = env
        .0
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let merged = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(overrides)),
        )
        .build()
        .and_then(|c| c.try_deserialize::<config::Map<String, Value>>());
    let root = match merged {
        Ok(root) => root,
        Err(e) => {
            return Err(ConfigErrors {
                path: None,
                problems: vec![ConfigProblem {
                    key: "(file)".into(),
                    message: format!("not valid TOML: {e}"),
                }],
            });
        }
    };
    let mut problems = Problems::default();
    let config = validate(&root, env, selection, base_dir, &mut problems);
    match (config, problems.0.is_empty()) {
        (Some(config), true) => Ok(config),
        _ => {
            let mut problems: Vec<_> = problems.0.into_iter().collect();
            problems.sort();
            Err(ConfigErrors {
                path: None,
                problems,
            })
        }
    }
}

/// Reduces a connection name to lower-case ASCII letters, digits and single hyphens.
/// `EMEA Atlassian` → `emea-atlassian`. Returns an empty string when nothing is left.
pub fn slugify(name: &str) -> String {
    let mut slug = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
    }
    while slug.ends_with('-') {
        slug.pop();
    }
    slug
}

#[derive(Default)]
struct Problems(BTreeSet<ConfigProblem>);

impl Problems {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.insert(ConfigProblem {
            key: key.into(),
            message: message.into(),
        });
    }
}

/// Reads typed fields out of one table, remembering which keys were used so the rest can be
/// reported as unknown.
struct Table<'a> {
    path: String,
    map: &'a config::Map<String, Value>,
    used: BTreeSet<&'static str>,
}

fn kind_name(kind: &ValueKind) -> &'static str {
    match kind {
        ValueKind::Nil => "nothing",
        ValueKind::Boolean(_) => "a boolean",
        ValueKind::I64(_) | ValueKind::I128(_) | ValueKind::U64(_) | ValueKind::U128(_) => {
            "an integer"
        }
        ValueKind::Float(_) => "a float",
        ValueKind::String(_) => "a string",
        ValueKind::Table(_) => "a table",
        ValueKind::Array(_) => "an array",
    }
}

impl<'a> Table<'a> {
    fn new(path: impl Into<String>, map: &'a config::Map<String, Value>) -> Self {
        Table {
            path: path.into(),
            map,
            used: BTreeSet::new(),
        }
    }

    fn key(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.used.insert(key);
        self.map
            .get(key)
            .filter(|v| !matches!(v.kind, ValueKind::Nil))
    }

    fn string(&mut self, key: &'static str, p: &mut Problems) -> Option<String> {
        let v = self.get(key)?;
        match &v.kind {
            ValueKind::String(s) => Some(s.clone()),
            // An environment override of a digits-only value arrives parsed as a number.
            ValueKind::I64(n) => Some(n.to_string()),
            ValueKind::U64(n) => Some(n.to_string()),
            other => {
                p.push(
                    self.key(key),
                    format!("expected a string, found {}", kind_name(other)),
                );
                None
            }
        }
    }

    fn required_string(&mut self, key: &'static str, p: &mut Problems) -> Option<String> {
        if self.get(key).is_none() {
            p.push(self.key(key), "missing");
            return None;
        }
        let s = self.string(key, p)?;
        if s.trim().is_empty() {
            p.push(self.key(key), "must not be empty");
            return None;
        }
        Some(s)
    }

    fn bool(&mut self, key: &'static str, default: bool, p: &mut Problems) -> bool {
        let Some(v) = self.get(key) else {
            return default;
        };
        match &v.kind {
            ValueKind::Boolean(b) => *b,
            ValueKind::String(s) if s == "true" => true,
            ValueKind::String(s) if s == "false" => false,
            other => {
                p.push(
                    self.key(key),
                    format!("expected true or false, found {}", kind_name(other)),
                );
                default
            }
        }
    }

    fn integer(
        &mut self,
        key: &'static str,
        default: u64,
        range: std::ops::RangeInclusive<u64>,
        p: &mut Problems,
    ) -> u64 {
        let Some(v) = self.get(key) else {
            return default;
        };
        let n = match &v.kind {
            ValueKind::I64(n) => u64::try_from(*n).ok(),
            ValueKind::U64(n) => Some(*n),
            ValueKind::String(s) => s.trim().parse().ok(),
            other => {
                p.push(
                    self.key(key),
                    format!("expected an integer, found {}", kind_name(other)),
                );
                return default;
            }
        };
        match n {
            Some(n) if range.contains(&n) => n,
            _ => {
                p.push(
                    self.key(key),
                    format!(
                        "must be a whole number from {} to {}",
                        range.start(),
                        range.end()
                    ),
                );
                default
            }
        }
    }

    fn table(
        &mut self,
        key: &'static str,
        p: &mut Problems,
    ) -> Option<&'a config::Map<String, Value>> {
        let v = self.get(key)?;
        match &v.kind {
            ValueKind::Table(t) => Some(t),
            other => {
                p.push(
                    self.key(key),
                    format!("expected a table, found {}", kind_name(other)),
                );
                None
            }
        }
    }

    /// Reports every key of the table that no reader asked for.
    fn finish(self, p: &mut Problems) {
        for key in self.map.keys() {
            if !self.used.contains(key.as_str()) {
                p.push(
                    self.key(key),
                    "unknown key (check the spelling against config/idsnap.toml)",
                );
            }
        }
    }
}

fn validate(
    root: &config::Map<String, Value>,
    env: &Env,
    selection: Selection<'_>,
    base_dir: &Path,
    p: &mut Problems,
) -> Option<Config> {
    let mut top = Table::new("", root);

    let storage = match top.table("storage", p) {
        Some(t) => validate_storage(t, p),
        None => {
            p.push(
                "storage.url",
                "missing (for a local folder: url = \"file://./snapshots\")",
            );
            None
        }
    };

    let http = match top.table("http", p) {
        Some(t) => validate_http(t, p),
        None => HttpConfig::default(),
    };

    let schedule = match top.table("schedule", p) {
        Some(t) => validate_schedule(t, p),
        None => ScheduleConfig::default(),
    };
    let status_file = top.string("status_file", p).map(|f| base_dir.join(f));
    let metrics_file = top.string("metrics_file", p).map(|f| base_dir.join(f));

    let max_concurrent_connections = top.integer(
        "max_concurrent_connections",
        DEFAULT_MAX_CONCURRENT_CONNECTIONS,
        1..=64,
        p,
    ) as usize;

    let mut connections = Vec::new();
    match top.get("connections").map(|v| &v.kind) {
        None => p.push(
            "connections",
            "missing: add at least one [[connections]] table",
        ),
        Some(ValueKind::Array(items)) if items.is_empty() => p.push(
            "connections",
            "empty: add at least one [[connections]] table",
        ),
        Some(ValueKind::Array(items)) => {
            let mut names = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let key = format!("connections[{i}]");
                match &item.kind {
                    ValueKind::Table(t) => {
                        let name = t.get("name").and_then(|v| match &v.kind {
                            ValueKind::String(s) => Some(s.clone()),
                            _ => None,
                        });
                        let wanted = match (selection, &name) {
                            (Selection::All, _) => true,
                            (Selection::Named(want), Some(name)) => {
                                name == want || slugify(name) == want
                            }
                            _ => false,
                        };
                        if let Some(name) = name {
                            names.push((i, name));
                        }
                        if let Some(c) =
                            validate_connection(i, t, env, wanted, &schedule.timezone, base_dir, p)
                        {
                            connections.push(c);
                        }
                    }
                    other => p.push(key, format!("expected a table, found {}", kind_name(other))),
                }
            }
            check_unique(&names, p);
            if let Selection::Named(want) = selection
                && !names.iter().any(|(_, n)| n == want || slugify(n) == want)
            {
                let known: Vec<_> = names.iter().map(|(_, n)| n.as_str()).collect();
                p.push(
                    "connections",
                    format!("no connection named {want:?} (configured: {known:?})"),
                );
            }
        }
        Some(other) => p.push(
            "connections",
            format!(
                "expected an array of tables ([[connections]]), found {}",
                kind_name(other)
            ),
        ),
    }
    top.finish(p);

    Some(Config {
        storage: storage?,
        http,
        max_concurrent_connections,
        connections,
        schedule,
        status_file,
        metrics_file,
    })
}

fn validate_storage(t: &config::Map<String, Value>, p: &mut Problems) -> Option<StorageConfig> {
    let mut table = Table::new("storage", t);
    let url = match table.required_string("url", p) {
        Some(raw) => match StorageUrl::parse(&raw) {
            Ok(url) => Some(url),
            Err(message) => {
                p.push("storage.url", message);
                None
            }
        },
        None => None,
    };
    let mut options = BTreeMap::new();
    if let Some(opts) = table.table("options", p) {
        for (k, v) in opts {
            let value = match &v.kind {
                ValueKind::String(s) => s.clone(),
                ValueKind::Boolean(b) => b.to_string(),
                ValueKind::I64(n) => n.to_string(),
                ValueKind::U64(n) => n.to_string(),
                other => {
                    p.push(
                        format!("storage.options.{k}"),
                        format!("expected a string, found {}", kind_name(other)),
                    );
                    continue;
                }
            };
            options.insert(k.clone(), value);
        }
    }
    let max_retries = table.integer("max_retries", DEFAULT_STORAGE_MAX_RETRIES, 0..=50, p) as usize;
    let retry_timeout = Duration::from_secs(table.integer(
        "retry_timeout_secs",
        DEFAULT_STORAGE_RETRY_TIMEOUT_SECS,
        1..=3600,
        p,
    ));
    table.finish(p);
    Some(StorageConfig {
        url: url?,
        options,
        max_retries,
        retry_timeout,
    })
}

fn validate_schedule(t: &config::Map<String, Value>, p: &mut Problems) -> ScheduleConfig {
    let mut table = Table::new("schedule", t);
    let timezone = table.string("timezone", p).unwrap_or_else(|| "UTC".into());
    let zone_ok = timezone.parse::<chrono_tz::Tz>().is_ok();
    if !zone_ok {
        p.push("schedule.timezone", format!("unknown time zone {timezone:?}: use an IANA name such as \"UTC\" or \"Europe/Berlin\""));
    }
    let cron = table.string("cron", p).and_then(|expr| {
        if !zone_ok {
            return None;
        }
        match CronSchedule::parse(&expr, &timezone) {
            Ok(c) => Some(c),
            Err(e) => {
                p.push("schedule.cron", e);
                None
            }
        }
    });
    let run_on_start = table.bool("run_on_start", false, p);
    let shutdown_grace = Duration::from_secs(table.integer(
        "shutdown_grace_secs",
        DEFAULT_SHUTDOWN_GRACE_SECS,
        0..=3600,
        p,
    ));
    table.finish(p);
    ScheduleConfig {
        cron,
        timezone: if zone_ok { timezone } else { "UTC".into() },
        run_on_start,
        shutdown_grace,
    }
}

fn validate_http(t: &config::Map<String, Value>, p: &mut Problems) -> HttpConfig {
    let mut table = Table::new("http", t);
    let secs = Duration::from_secs;
    let http = HttpConfig {
        request_timeout: secs(table.integer(
            "request_timeout_secs",
            DEFAULT_REQUEST_TIMEOUT_SECS,
            1..=600,
            p,
        )),
        max_retries: table.integer("max_retries", u64::from(DEFAULT_MAX_RETRIES), 0..=20, p) as u32,
        max_retry_wait: secs(table.integer(
            "max_retry_wait_secs",
            DEFAULT_MAX_RETRY_WAIT_SECS,
            1..=3600,
            p,
        )),
        retry_budget: secs(table.integer(
            "retry_budget_secs",
            DEFAULT_RETRY_BUDGET_SECS,
            0..=86_400,
            p,
        )),
        limits: PageLimits {
            max_page_bytes: table.integer(
                "max_page_bytes",
                DEFAULT_MAX_PAGE_BYTES,
                16 * 1024..=256 * 1024 * 1024,
                p,
            ) as usize,
            max_field_chars: table.integer(
                "max_field_chars",
                DEFAULT_MAX_FIELD_CHARS,
                64..=1024 * 1024,
                p,
            ) as usize,
            max_pages_per_walk: table.integer(
                "max_pages_per_walk",
                DEFAULT_MAX_PAGES_PER_WALK,
                1..=100_000_000,
                p,
            ),
        },
    };
    table.finish(p);
    http
}

fn validate_connection(
    index: usize,
    t: &config::Map<String, Value>,
    env: &Env,
    wanted: bool,
    timezone: &str,
    base_dir: &Path,
    p: &mut Problems,
) -> Option<ConnectionConfig> {
    let path = format!("connections[{index}]");
    let mut table = Table::new(path.clone(), t);
    let key = |k: &str| format!("{path}.{k}");

    let name = table.required_string("name", p);
    let slug = name.as_deref().map(slugify);
    if slug.as_deref() == Some("") {
        p.push(
            key("name"),
            "must contain at least one ASCII letter or digit (it names the folder)",
        );
    }
    if name
        .as_deref()
        .is_some_and(|n| n.chars().any(char::is_control))
    {
        p.push(key("name"), "must not contain control characters");
    }

    let org_id = table.required_string("org_id", p);
    if let Some(id) = &org_id {
        let bad = id.len() > 128
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '.'));
        if bad {
            p.push(
                key("org_id"),
                "not an Organization ID (letters, digits, '-', '_', ':' only); copy it from admin.atlassian.com/o/<org id>/",
            );
        }
    }

    if table.get("api_token").is_some() {
        p.push(
            key("api_token"),
            "tokens are never read from the config file; put the token in an environment variable named by api_token_env, or in a file named by api_token_file",
        );
    }
    let token_env = table.string("api_token_env", p);
    let token_file = table.string("api_token_file", p);
    let token_source = match (token_env, token_file) {
        (Some(_), Some(_)) => {
            p.push(
                key("api_token_env"),
                "set either api_token_env or api_token_file, not both",
            );
            None
        }
        (Some(var), None) if var.trim().is_empty() => {
            p.push(key("api_token_env"), "must name an environment variable");
            None
        }
        (Some(var), None) => Some(TokenSource::Env(var)),
        (None, Some(file)) => Some(TokenSource::File(base_dir.join(file))),
        (None, None) => {
            p.push(
                key("api_token_env"),
                "missing: name the environment variable that holds the API token (or set api_token_file)",
            );
            None
        }
    };
    // Tokens are read for the selected connections only, so `run --connection A` does not
    // need B's secret.
    let token = match (&token_source, wanted) {
        (Some(source), true) => match read_token(source, env) {
            Ok(token) => Some(token),
            Err((field, message)) => {
                p.push(key(field), message);
                None
            }
        },
        _ => None,
    };

    let scan_unmanaged_users = table.bool("scan_unmanaged_users", false, p);
    let member_source_of_truth = table.bool("member_source_of_truth", false, p);
    let allow_insecure_http = table.bool("allow_insecure_http", false, p);
    let partitioned_walk = table.bool("partitioned_walk", false, p);
    let max_drop_percent =
        table.integer("max_drop_percent", DEFAULT_MAX_DROP_PERCENT, 0..=100, p) as u8;
    let cron =
        table
            .string("cron", p)
            .and_then(|expr| match CronSchedule::parse(&expr, timezone) {
                Ok(c) => Some(c),
                Err(e) => {
                    p.push(key("cron"), e);
                    None
                }
            });

    let api_base_url = match table.string("api_base_url", p) {
        None => Url::parse(DEFAULT_API_BASE_URL).ok(),
        Some(raw) => match parse_base_url(&raw, allow_insecure_http) {
            Ok(u) => Some(u),
            Err(message) => {
                p.push(key("api_base_url"), message);
                None
            }
        },
    };

    let users_endpoint = match table.string("users_endpoint", p).as_deref() {
        None | Some("list") => Some(UsersEndpoint::List),
        Some("search") => Some(UsersEndpoint::Search),
        Some(other) => {
            p.push(
                key("users_endpoint"),
                format!("unknown value {other:?}: use \"list\" or \"search\""),
            );
            None
        }
    };
    table.finish(p);

    Some(ConnectionConfig {
        name: name?,
        slug: slug.filter(|s| !s.is_empty())?,
        org_id: org_id?,
        token_source: token_source?,
        token,
        scan_unmanaged_users,
        member_source_of_truth,
        api_base_url: api_base_url?,
        allow_insecure_http,
        users_endpoint: users_endpoint?,
        max_drop_percent,
        partitioned_walk,
        cron,
        index,
    })
}

/// The validated settings as TOML-like text, with every secret shown as `***`: tokens are
/// described by their source only, and storage options whose name suggests a secret are
/// masked.
pub fn render_effective(c: &Config) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let secretish = |k: &str| {
        ["secret", "token", "password", "key", "credential", "sas"]
            .iter()
            .any(|w| k.to_ascii_lowercase().contains(w))
    };
    let opt_path = |p: &Option<PathBuf>| {
        p.as_ref().map_or_else(
            || "(none)".to_owned(),
            |p| format!("{:?}", p.display().to_string()),
        )
    };
    let _ = writeln!(o, "status_file = {}", opt_path(&c.status_file));
    let _ = writeln!(o, "metrics_file = {}", opt_path(&c.metrics_file));
    let _ = writeln!(
        o,
        "max_concurrent_connections = {}",
        c.max_concurrent_connections
    );
    let _ = writeln!(o, "\n[storage]\nurl = {:?}", c.storage.url.to_string());
    let _ = writeln!(
        o,
        "max_retries = {}\nretry_timeout_secs = {}",
        c.storage.max_retries,
        c.storage.retry_timeout.as_secs()
    );
    for (k, v) in &c.storage.options {
        let shown = if secretish(k) { "***" } else { v.as_str() };
        let _ = writeln!(o, "options.{k} = {shown:?}");
    }
    let h = &c.http;
    let _ = writeln!(
        o,
        "\n[http]\nrequest_timeout_secs = {}\nmax_retries = {}\nmax_retry_wait_secs = {}\nretry_budget_secs = {}\nmax_page_bytes = {}\nmax_field_chars = {}\nmax_pages_per_walk = {}",
        h.request_timeout.as_secs(),
        h.max_retries,
        h.max_retry_wait.as_secs(),
        h.retry_budget.as_secs(),
        h.limits.max_page_bytes,
        h.limits.max_field_chars,
        h.limits.max_pages_per_walk
    );
    let s = &c.schedule;
    let _ = writeln!(
        o,
        "\n[schedule]\ncron = {}\ntimezone = {:?}\nrun_on_start = {}\nshutdown_grace_secs = {}",
        s.cron
            .as_ref()
            .map_or_else(|| "(none)".to_owned(), |c| format!("{:?}", c.expression())),
        s.timezone,
        s.run_on_start,
        s.shutdown_grace.as_secs()
    );
    for conn in &c.connections {
        let token = match &conn.token {
            Some(_) => format!("*** (from {})", conn.token_source),
            None => format!("(not read; from {})", conn.token_source),
        };
        let _ = writeln!(
            o,
            "\n[[connections]]\nname = {:?}\nslug = {:?}\norg_id = {:?}\napi_token = {token}\nscan_unmanaged_users = {}\nmember_source_of_truth = {}\napi_base_url = {:?}\nallow_insecure_http = {}\nusers_endpoint = {:?}\nmax_drop_percent = {}\npartitioned_walk = {}\ncron = {}",
            conn.name,
            conn.slug,
            conn.org_id,
            conn.scan_unmanaged_users,
            conn.member_source_of_truth,
            conn.api_base_url.as_str(),
            conn.allow_insecure_http,
            conn.users_endpoint.as_str(),
            conn.max_drop_percent,
            conn.partitioned_walk,
            conn.cron.as_ref().map_or_else(
                || "(the [schedule] cron)".to_owned(),
                |c| format!("{:?}", c.expression())
            )
        );
    }
    o
}

/// Parses an `api_base_url`: http(s) only, no query or fragment, no trailing slash, and
/// `https` unless the connection explicitly allows plain HTTP.
pub fn parse_base_url(raw: &str, allow_insecure_http: bool) -> Result<Url, String> {
    let mut url = Url::parse(raw.trim()).map_err(|e| format!("not a valid URL ({e})"))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_insecure_http => {}
        "http" => {
            return Err(
                "must be https:// (set allow_insecure_http = true only for a local simulator)"
                    .into(),
            );
        }
        other => return Err(format!("unsupported scheme {other:?}: use https://")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials".into());
    }
    let trimmed = url.path().trim_end_matches('/').to_owned();
    url.set_path(&trimmed);
    Ok(url)
}

fn check_unique(names: &[(usize, String)], p: &mut Problems) {
    let mut slugs: HashMap<String, &(usize, String)> = HashMap::new();
    for entry in names {
        let slug = slugify(&entry.1);
        if slug.is_empty() {
            continue;
        }
        if let Some(first) = slugs.get(&slug) {
            p.push(
                format!("connections[{}].name", entry.0),
                format!(
                    "{:?} gives the same folder name {slug:?} as connections[{}] ({:?}); rename one",
                    entry.1, first.0, first.1
                ),
            );
        } else {
            slugs.insert(slug, entry);
        }
    }
}

/// Warns when a token file can be read by its group or by others.
fn warn_if_shared(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o044 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", mode & 0o777),
                "The API token file is readable by its group or by others; restrict it with chmod 600."
            );
        }
    }
}

fn read_token(source: &TokenSource, env: &Env) -> Result<ApiToken, (&'static str, String)> {
    let token = match source {
        TokenSource::Env(var) => match env.get(var) {
            Some(v) => ApiToken::new(v),
            None => {
                return Err((
                    "api_token_env",
                    format!(
                        "environment variable {var} is not set; export it with the organization API key"
                    ),
                ));
            }
        },
        TokenSource::File(path) => match std::fs::read_to_string(path) {
            Ok(v) => {
                warn_if_shared(path);
                ApiToken::new(v)
            }
            Err(e) => {
                return Err((
                    "api_token_file",
                    format!("cannot read token file {}: {e}", path.display()),
                ));
            }
        },
        TokenSource::Builtin => return Err(("api_token_env", "no built-in token here".into())),
    };
    let field = match source {
        TokenSource::File(_) => "api_token_file",
        _ => "api_token_env",
    };
    if token.is_empty() {
        return Err((field, format!("the token in {source} is empty")));
    }
    if token.bearer_header().is_none() {
        return Err((
            field,
            format!("the token in {source} has characters that cannot be sent in an HTTP header"),
        ));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        from_toml_str(
            text,
            &Env::from_pairs(env.iter().copied()),
            Selection::All,
            Path::new("."),
        )
    }

    const MINIMAL: &str = r#"
        [storage]
        url = "file://./snapshots"
        [[connections]]
        name = "EMEA Atlassian"
        org_id = "0a1b2c3d-aaaa"
        api_token_env = "TOKEN"
    "#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = load_str(MINIMAL, &[("TOKEN", "t0k")]).unwrap();
        let conn = &c.connections[0];
        assert_eq!(conn.slug, "emea-atlassian");
        assert!(!conn.scan_unmanaged_users);
        assert!(!conn.member_source_of_truth);
        assert_eq!(conn.users_endpoint, UsersEndpoint::List);
        assert_eq!(conn.api_base_url.as_str(), "https://api.atlassian.com/");
        assert_eq!(c.http, HttpConfig::default());
        assert_eq!(c.max_concurrent_connections, 4);
        assert!(conn.token.is_some());
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let text = r#"
            colour = "blue"
            [storage]
            url = "ftp://nowhere"
            [http]
            max_retries = "many"
            [[connections]]
            name = "A"
            api_token_env = "MISSING"
            users_endpoint = "scan"
            [[connections]]
            name = "a"
            org_id = "x/y"
            api_token = "inline"
            api_token_env = "TOKEN"
            scan_unmanaged_users = "yes"
        "#;
        let err = load_str(text, &[("TOKEN", "t")]).unwrap_err();
        let keys: Vec<_> = err.problems.iter().map(|p| p.key.as_str()).collect();
        for expected in [
            "colour",
            "storage.url",
            "http.max_retries",
            "connections[0].org_id",
            "connections[0].users_endpoint",
            "connections[0].api_token_env",
            "connections[1].org_id",
            "connections[1].api_token",
            "connections[1].scan_unmanaged_users",
            "connections[1].name",
        ] {
            assert!(keys.contains(&expected), "{expected} not in {keys:?}");
        }
        let missing = err
            .problems
            .iter()
            .find(|p| p.key == "connections[0].org_id")
            .unwrap();
        assert_eq!(missing.message, "missing");
    }

    #[test]
    fn empty_token_and_unselected_connections() {
        let err = load_str(MINIMAL, &[("TOKEN", "  \n")]).unwrap_err();
        assert_eq!(err.problems[0].key, "connections[0].api_token_env");
        assert!(err.problems[0].message.contains("empty"));
        // A connection that is not selected needs no token.
        let c = from_toml_str(
            MINIMAL,
            &Env::default(),
            Selection::NoTokens,
            Path::new("."),
        )
        .unwrap();
        assert!(c.connections[0].token.is_none());
    }

    #[test]
    fn environment_overrides_file_values() {
        let c = load_str(
            MINIMAL,
            &[
                ("TOKEN", "t"),
                ("IDSNAP__STORAGE__URL", "memory://"),
                ("IDSNAP__HTTP__MAX_RETRIES", "2"),
            ],
        )
        .unwrap();
        assert_eq!(c.storage.url.to_string(), "memory://");
        assert_eq!(c.http.max_retries, 2);
    }

    #[test]
    fn http_base_url_needs_explicit_opt_in() {
        assert!(parse_base_url("http://127.0.0.1:9", false).is_err());
        assert_eq!(
            parse_base_url("http://127.0.0.1:9/", true)
                .unwrap()
                .as_str(),
            "http://127.0.0.1:9/"
        );
        assert_eq!(
            parse_base_url("https://proxy.example/atl/", false)
                .unwrap()
                .as_str(),
            "https://proxy.example/atl"
        );
        assert!(parse_base_url("https://x.example/?a=1", false).is_err());
    }

    #[test]
    fn schedule_table_and_connection_cron() {
        let text = format!(
            "{MINIMAL}\ncron = \"*/5 * * * *\"\n[schedule]\ncron = \"0 2 * * *\"\ntimezone = \"Europe/Berlin\"\nrun_on_start = true\n"
        );
        let c = load_str(&text, &[("TOKEN", "t")]).unwrap();
        assert_eq!(c.schedule.timezone, "Europe/Berlin");
        assert!(c.schedule.run_on_start);
        assert_eq!(c.schedule.cron.as_ref().unwrap().expression(), "0 2 * * *");
        assert_eq!(
            c.connections[0].cron.as_ref().unwrap().expression(),
            "*/5 * * * *"
        );
        let bad = format!(
            "{MINIMAL}\ncron = \"every night\"\n[schedule]\ntimezone = \"Moon/Base\"\nshutdown_grace_secs = -1\n"
        );
        let err = load_str(&bad, &[("TOKEN", "t")]).unwrap_err();
        let keys: Vec<_> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "connections[0].cron",
                "schedule.shutdown_grace_secs",
                "schedule.timezone"
            ]
        );
    }

    #[test]
    fn slugs() {
        assert_eq!(slugify("EMEA Atlassian"), "emea-atlassian");
        assert_eq!(slugify("../../etc/passwd"), "etc-passwd");
        assert_eq!(slugify("  Zürich -- Prod  "), "z-rich-prod");
        assert_eq!(slugify("../"), "");
    }

    #[test]
    fn the_example_config_in_the_repo_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/idsnap.toml");
        let c = load(&path, &Env::default(), Selection::NoTokens).unwrap();
        assert!(!c.connections.is_empty());
    }
}
