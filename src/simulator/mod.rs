//! The simulated Admin API: a real HTTP server on 127.0.0.1 that behaves like the documented
//! organization directory endpoints, used by `demo`, the tests and the benchmarks, and
//! runnable as `idsnap simulate`.
//!
//! It implements bearer auth (401 with the gateway's body on a wrong token, 404 on an unknown
//! org), `GET /directories`, the users list (`GET .../directories/-/users`) and search
//! (`POST .../users/search`) endpoints with opaque cursors that need URL-encoding, `limit`
//! 1..100 (400 outside), the `claimStatus` and `status` filters, the count endpoint, and the
//! documented error bodies. Pages are assembled from users rendered once at start-up, so the
//! simulator stays cheap next to the client it measures. A [`FaultPlan`] injects failures into
//! chosen users-page requests. It must never be pointed at anything but loopback.

pub mod http;
pub mod population;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use self::http::{Delivery, Request, Response};
pub use self::population::{PopulationOptions, SimUser};

/// Settings of a simulated organization.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The organization ID the simulator answers for.
    pub org_id: String,
    /// The only bearer token it accepts.
    pub token: String,
    /// Number of directories it lists.
    pub directories: usize,
    /// Send `links.next` as a full URL (v1 style) instead of a bare cursor.
    pub next_as_url: bool,
    /// Added before every users-page response (benchmarks' network latency).
    pub latency: Duration,
    /// Ignore the `claimStatus` filter and return every account (to prove the client drops
    /// what it did not ask for).
    pub ignore_claim_filter: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            org_id: "sim-org-0001".into(),
            token: "sim-token".into(),
            directories: 2,
            next_as_url: false,
            latency: Duration::ZERO,
            ignore_claim_filter: false,
        }
    }
}

/// How a 429 announces when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitHint {
    /// `Retry-After: <seconds>`.
    RetryAfterSecs(u64),
    /// `Retry-After: <HTTP date>` this many seconds ahead.
    RetryAfterDate(u64),
    /// `X-RateLimit-Reset` at minute precision (`2026-03-26T16:00Z`), the next full minute.
    ResetMinute,
    /// No hint at all.
    None,
}

/// A failure injected into one users-page request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 429 with this hint.
    RateLimited(RateLimitHint),
    /// This status with an `errors` body (500, 502, 503, 408, ...).
    Status(u16),
    /// Close the connection without answering.
    Reset,
    /// Wait this long, then answer normally.
    Slow(Duration),
    /// Send half the body, then close.
    Truncate,
    /// Answer normally but with `links.next` equal to the cursor of this request.
    RepeatCursor,
    /// 401 as if the key had been revoked mid-walk.
    Unauthorized,
    /// A 200 page without `data`.
    NoData,
    /// 400 as for an expired cursor.
    BadCursor,
    /// Answer normally with `X-RateLimit-Remaining: 0` and a reset this many seconds ahead.
    WindowExhausted(u64),
    /// 302 to `http://127.0.0.1:<port>/steal`, as a hostile or misconfigured proxy might.
    RedirectTo(u16),
    /// A 200 page with 101 records (more than any `limit` allows).
    Oversized,
}

impl std::str::FromStr for Fault {
    type Err = String;

    /// The `idsnap simulate --fault N:KIND` spellings: `429`, `429-retry-after=S`,
    /// `429-retry-after-date=S`, `429-reset-minute`, `500`/`502`/`503`/`408` (any status),
    /// `reset`, `slow=MS`, `truncate`, `repeat-cursor`, `401`, `no-data`, `bad-cursor`,
    /// `window-exhausted=S`.
    fn from_str(kind: &str) -> Result<Fault, String> {
        let number = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{v:?} is not a number in fault {kind:?}"))
        };
        let (name, value) = match kind.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (kind, None),
        };
        Ok(match (name, value) {
            ("429", None) => Fault::RateLimited(RateLimitHint::None),
            ("429-retry-after", Some(v)) => {
                Fault::RateLimited(RateLimitHint::RetryAfterSecs(number(v)?))
            }
            ("429-retry-after-date", Some(v)) => {
                Fault::RateLimited(RateLimitHint::RetryAfterDate(number(v)?))
            }
            ("429-reset-minute", None) => Fault::RateLimited(RateLimitHint::ResetMinute),
            ("401", None) => Fault::Unauthorized,
            ("reset", None) => Fault::Reset,
            ("slow", Some(v)) => Fault::Slow(Duration::from_millis(number(v)?)),
            ("truncate", None) => Fault::Truncate,
            ("repeat-cursor", None) => Fault::RepeatCursor,
            ("no-data", None) => Fault::NoData,
            ("bad-cursor", None) => Fault::BadCursor,
            ("window-exhausted", Some(v)) => Fault::WindowExhausted(number(v)?),
            ("redirect", Some(v)) => Fault::RedirectTo(
                u16::try_from(number(v)?).map_err(|_| format!("{v} is not a port"))?,
            ),
            ("oversized", None) => Fault::Oversized,
            (code, None)
                if code.len() == 3
                    && code.parse::<u16>().is_ok_and(|c| (400..600).contains(&c)) =>
            {
                Fault::Status(code.parse().unwrap_or(500))
            }
            _ => return Err(format!("unknown fault {kind:?}")),
        })
    }
}

/// A `--fault` argument: which users-page requests (`N` or `N-M`, 1-based) get which fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultSpec {
    /// First request hit.
    pub first: u64,
    /// Last request hit.
    pub last: u64,
    /// The fault.
    pub fault: Fault,
}

impl std::str::FromStr for FaultSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<FaultSpec, String> {
        let (when, kind) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: expected N:KIND or N-M:KIND"))?;
        let bad = |_| format!("{when:?} is not a request number or range");
        let (first, last) = match when.split_once('-') {
            Some((a, b)) => (a.parse().map_err(bad)?, b.parse().map_err(bad)?),
            None => {
                let n = when.parse().map_err(bad)?;
                (n, n)
            }
        };
        if first == 0 || last < first {
            return Err(format!("{when:?}: requests are numbered from 1"));
        }
        Ok(FaultSpec {
            first,
            last,
            fault: kind.parse()?,
        })
    }
}

/// Faults keyed by the 1-based number of the users-page request they hit; each fires once.
#[derive(Debug, Default)]
pub struct FaultPlan {
    faults: Mutex<BTreeMap<u64, Fault>>,
}

impl FaultPlan {
    /// Injects `fault` into the `request`-th users-page request.
    pub fn at(&self, request: u64, fault: Fault) {
        lock(&self.faults).insert(request, fault);
    }

    /// Injects `fault` into every users-page request from `first` through `last`.
    pub fn range(&self, first: u64, last: u64, fault: Fault) {
        for n in first..=last {
            self.at(n, fault);
        }
    }

    fn take(&self, request: u64) -> Option<Fault> {
        lock(&self.faults).remove(&request)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The simulator's maps stay valid even if a handler panicked mid-request.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// (claimStatus filter, status filter) → entry indexes.
type FilterIndexes = HashMap<(Option<String>, Option<String>), Arc<Vec<u32>>>;

/// A population with its filter indexes.
struct Population {
    users: Vec<SimUser>,
    /// Entry indexes per (claimStatus filter, status filter), built on first use.
    indexes: Mutex<FilterIndexes>,
}

impl Population {
    fn new(users: Vec<SimUser>) -> Population {
        Population {
            users,
            indexes: Mutex::new(HashMap::new()),
        }
    }

    fn index(&self, claim: Option<&str>, status: Option<&str>) -> Arc<Vec<u32>> {
        let key = (claim.map(str::to_owned), status.map(str::to_owned));
        let mut indexes = lock(&self.indexes);
        Arc::clone(indexes.entry(key).or_insert_with(|| {
            Arc::new(
                self.users
                    .iter()
                    .enumerate()
                    .filter(|(_, u)| claim.is_none_or(|c| u.claim_status == Some(c)))
                    .filter(|(_, u)| status.is_none_or(|s| u.status == s))
                    .map(|(i, _)| i as u32)
                    .collect(),
            )
        }))
    }

    fn unique_count(&self, claim: Option<&str>, status: Option<&str>) -> usize {
        let index = self.index(claim, status);
        let ids: std::collections::HashSet<&str> = index
            .iter()
            .map(|&i| self.users[i as usize].account_id.as_str())
            .collect();
        ids.len()
    }
}

struct State {
    config: SimConfig,
    population: RwLock<Arc<Population>>,
    faults: FaultPlan,
    users_requests: AtomicU64,
    requests: AtomicU64,
    log: Mutex<Vec<String>>,
}

/// A running simulator. Dropping it stops the server.
pub struct Simulator {
    addr: SocketAddr,
    state: Arc<State>,
    _stop: watch::Sender<bool>,
}

impl Simulator {
    /// Starts a simulator on `127.0.0.1:port` (0 picks a free port) serving `users`.
    pub async fn start(
        config: SimConfig,
        users: Vec<SimUser>,
        port: u16,
    ) -> std::io::Result<Simulator> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            config,
            population: RwLock::new(Arc::new(Population::new(users))),
            faults: FaultPlan::default(),
            users_requests: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
        });
        let (stop, mut stopped) = watch::channel(false);
        let server_state = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let _ = stream.set_nodelay(true);
                        let state = Arc::clone(&server_state);
                        let mut stopped = stopped.clone();
                        tokio::spawn(async move {
                            tokio::select! {
                                _ = stopped.changed() => {}
                                _ = serve_connection(stream, state) => {}
                            }
                        });
                    }
                }
            }
        });
        Ok(Simulator {
            addr,
            state,
            _stop: stop,
        })
    }

    /// `http://127.0.0.1:PORT`, to use as `api_base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The fault plan, to inject failures.
    pub fn faults(&self) -> &FaultPlan {
        &self.state.faults
    }

    /// Replaces the population (a new "day" in end-to-end tests).
    pub fn set_users(&self, users: Vec<SimUser>) {
        let mut guard = self
            .state
            .population
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *guard = Arc::new(Population::new(users));
    }

    /// Users-page requests served so far (list and search).
    pub fn users_requests(&self) -> u64 {
        self.state.users_requests.load(Ordering::Relaxed)
    }

    /// All requests served so far.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// `METHOD target` of every request so far, in arrival order.
    pub fn request_log(&self) -> Vec<String> {
        lock(&self.state.log).clone()
    }
}

async fn serve_connection(mut stream: tokio::net::TcpStream, state: Arc<State>) {
    let mut buf = Vec::new();
    loop {
        let request = match http::read_request(&mut stream, &mut buf).await {
            Ok(Some(r)) => r,
            Ok(None) | Err(_) => return,
        };
        let keep_alive = request
            .headers
            .get("connection")
            .is_none_or(|v| !v.eq_ignore_ascii_case("close"));
        let (response, delivery) = handle(&state, &request).await;
        match http::write_response(&mut stream, &response, delivery, keep_alive).await {
            Ok(true) => {}
            _ => return,
        }
    }
}

fn errors_body(status: u16, code: &str, title: &str) -> Vec<u8> {
    serde_json::json!({"errors": [{"id": "sim", "status": status.to_string(), "code": code, "title": title, "detail": title}]})
        .to_string()
        .into_bytes()
}

async fn handle(state: &State, req: &Request) -> (Response, Delivery) {
    state.requests.fetch_add(1, Ordering::Relaxed);
    let query: Vec<String> = req.query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    lock(&state.log).push(format!("{} {}?{}", req.method, req.path, query.join("&")));
    let full = Delivery::Full;

    let authorized = req
        .headers
        .get("authorization")
        .is_some_and(|h| h.strip_prefix("Bearer ") == Some(state.config.token.as_str()));
    if !authorized {
        return (
            Response::json(
                401,
                br#"{"code":401,"message":"Unauthorized; scope does not match"}"#.to_vec(),
            ),
            full,
        );
    }
    let segments: Vec<String> = req
        .path
        .trim_matches('/')
        .split('/')
        .map(|s| {
            url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        })
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let org = match segs.as_slice() {
        ["admin", "v2", "orgs", org, ..] => *org,
        _ => {
            return (
                Response::json(404, errors_body(404, "ADMIN-404-1", "Unknown resource")),
                full,
            );
        }
    };
    if org != state.config.org_id {
        return (
            Response::json(
                404,
                errors_body(404, "ADMIN-404-2", "Organization not found"),
            ),
            full,
        );
    }
    let population = Arc::clone(
        &state
            .population
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    match (req.method.as_str(), &segs[4..]) {
        ("GET", ["directories"]) => (directories(state, req), full),
        ("GET", ["directories", "-", "users"]) => {
            let params = UsersParams::from_query(&req.query);
            users_page(state, &population, params, 20).await
        }
        ("POST", ["directories", "-", "users", "search"]) => {
            match UsersParams::from_body(&req.body) {
                Ok(params) => users_page(state, &population, params, 50).await,
                Err(e) => (
                    Response::json(400, errors_body(400, "ADMIN-400-24", &e)),
                    full,
                ),
            }
        }
        ("GET", ["directories", "-", "users", "count"]) => {
            let count = population.unique_count(
                req.query.get("claimStatus").map(String::as_str),
                req.query.get("status").map(String::as_str),
            );
            (Response::json(200, format!("{{\"count\":{count}}}")), full)
        }
        _ => (
            Response::json(404, errors_body(404, "ADMIN-404-1", "Unknown resource")),
            full,
        ),
    }
}

fn directories(state: &State, req: &Request) -> Response {
    let (offset, limit) = match (req.query.get("cursor"), req.query.get("limit")) {
        (Some(c), _) => match c.strip_prefix("dir:").and_then(|r| r.split_once(':')) {
            Some((o, l)) => (o.parse().unwrap_or(usize::MAX), l.parse().unwrap_or(20)),
            None => {
                return Response::json(400, errors_body(400, "INVALID_CURSOR", "Invalid cursor"));
            }
        },
        (None, Some(l)) => match l.parse::<usize>() {
            Ok(l) if (1..=100).contains(&l) => (0, l),
            _ => {
                return Response::json(
                    400,
                    errors_body(400, "INVALID_LIMIT", "limit must be 1..100"),
                );
            }
        },
        (None, None) => (0, 20),
    };
    let n = state.config.directories;
    let data: Vec<_> = (offset..n.min(offset.saturating_add(limit)))
        .map(|i| serde_json::json!({"directoryId": format!("12345678-1234-1234-1234-{i:012}"), "name": format!("Directory {i}")}))
        .collect();
    let end = offset.saturating_add(limit);
    let mut body =
        serde_json::json!({"data": data, "links": {"self": format!("dir:{offset}:{limit}")}});
    if end < n {
        body["links"]["next"] = format!("dir:{end}:{limit}").into();
    }
    Response::json(200, body.to_string())
}

/// A users request after cursor decoding: where to start and with which filter.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UsersParams {
    claim: Option<String>,
    status: Option<String>,
    offset: usize,
    limit: Option<usize>,
    cursor: Option<String>,
    error: Option<String>,
}

impl UsersParams {
    fn from_query(q: &BTreeMap<String, String>) -> UsersParams {
        if let Some(c) = q.get("cursor") {
            // "If present, all other parameters are discarded."
            return UsersParams::from_cursor(c);
        }
        UsersParams {
            claim: q.get("claimStatus").cloned(),
            status: q.get("status").cloned(),
            offset: 0,
            limit: q.get("limit").map(|l| l.parse().unwrap_or(0)),
            cursor: None,
            error: None,
        }
    }

    fn from_body(body: &[u8]) -> Result<UsersParams, String> {
        let v: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
        if let Some(c) = v.get("cursor").and_then(|c| c.as_str()) {
            return Ok(UsersParams::from_cursor(c));
        }
        let status = match v.get("status") {
            Some(serde_json::Value::Array(a)) if a.len() == 1 => a[0].as_str().map(str::to_owned),
            Some(_) => return Err("status must be an array of one value in this simulator".into()),
            None => None,
        };
        Ok(UsersParams {
            claim: v
                .get("claimStatus")
                .and_then(|c| c.as_str())
                .map(str::to_owned),
            status,
            offset: 0,
            limit: v.get("limit").map(|l| l.as_u64().unwrap_or(0) as usize),
            cursor: None,
            error: None,
        })
    }

    /// Cursors look like real ones (`Qh8+…/….…`), so a client that forgets to URL-encode
    /// them (`+` becomes a space, `/` splits nothing but confuses proxies) breaks here as it
    /// would on Atlassian.
    fn to_cursor(&self, offset: usize, limit: usize) -> String {
        format!(
            "Qh8+{}/{}/{:x}.{}..",
            self.claim.as_deref().unwrap_or("all"),
            self.status.as_deref().unwrap_or("any"),
            offset,
            limit
        )
    }

    fn from_cursor(c: &str) -> UsersParams {
        let parsed = (|| {
            let rest = c.strip_prefix("Qh8+")?.strip_suffix("..")?;
            let mut parts = rest.splitn(3, '/');
            let claim = parts.next()?;
            let status = parts.next()?;
            let (offset, limit) = parts.next()?.split_once('.')?;
            Some(UsersParams {
                claim: (claim != "all").then(|| claim.to_owned()),
                status: (status != "any").then(|| status.to_owned()),
                offset: usize::from_str_radix(offset, 16).ok()?,
                limit: Some(limit.parse().ok()?),
                cursor: Some(c.to_owned()),
                error: None,
            })
        })();
        parsed.unwrap_or(UsersParams {
            claim: None,
            status: None,
            offset: 0,
            limit: None,
            cursor: Some(c.to_owned()),
            error: Some(format!("Invalid cursor {c:?}")),
        })
    }
}

async fn users_page(
    state: &State,
    population: &Population,
    params: UsersParams,
    default_limit: usize,
) -> (Response, Delivery) {
    let n = state.users_requests.fetch_add(1, Ordering::Relaxed) + 1;
    let fault = state.faults.take(n);
    if !state.config.latency.is_zero() {
        tokio::time::sleep(state.config.latency).await;
    }
    let full = Delivery::Full;
    if let Some(e) = &params.error {
        return (
            Response::json(400, errors_body(400, "INVALID_CURSOR", e)),
            full,
        );
    }
    let limit = params.limit.unwrap_or(default_limit);
    if !(1..=100).contains(&limit) {
        return (
            Response::json(
                400,
                errors_body(400, "INVALID_LIMIT", "limit must be between 1 and 100"),
            ),
            full,
        );
    }
    if let Some(claim) = &params.claim
        && claim != "managed"
        && claim != "unmanaged"
    {
        return (
            Response::json(
                400,
                errors_body(
                    400,
                    "INVALID_CLAIM_STATUS",
                    "claimStatus must be managed or unmanaged",
                ),
            ),
            full,
        );
    }
    match fault {
        Some(Fault::RateLimited(hint)) => {
            let mut r = Response::json(
                429,
                br#"{"code":429,"message":"Too many requests"}"#.to_vec(),
            );
            let now = chrono::Utc::now();
            r = match hint {
                RateLimitHint::RetryAfterSecs(s) => r.with_header("retry-after", s.to_string()),
                RateLimitHint::RetryAfterDate(s) => r.with_header(
                    "retry-after",
                    (now + chrono::Duration::seconds(s as i64 + 1))
                        .format("%a, %d %b %Y %H:%M:%S GMT")
                        .to_string(),
                ),
                RateLimitHint::ResetMinute => {
                    let next = now + chrono::Duration::seconds(60);
                    r.with_header(
                        "x-ratelimit-reset",
                        next.format("%Y-%m-%dT%H:%MZ").to_string(),
                    )
                    .with_header("x-ratelimit-remaining", "0")
                }
                RateLimitHint::None => r,
            };
            return (r, full);
        }
        Some(Fault::Status(code)) => {
            return (
                Response::json(code, errors_body(code, "ADMIN-500-1", "Simulated failure")),
                full,
            );
        }
        Some(Fault::Reset) => return (Response::json(200, Vec::new()), Delivery::Drop),
        Some(Fault::Slow(d)) => tokio::time::sleep(d).await,
        Some(Fault::Unauthorized) => {
            return (
                Response::json(401, br#"{"code":401,"message":"Unauthorized"}"#.to_vec()),
                full,
            );
        }
        Some(Fault::NoData) => return (Response::json(200, br#"{"links":{}}"#.to_vec()), full),
        Some(Fault::RedirectTo(port)) => {
            return (
                Response::json(302, Vec::new())
                    .with_header("location", format!("http://127.0.0.1:{port}/steal")),
                full,
            );
        }
        Some(Fault::BadCursor) if params.cursor.is_some() => {
            return (
                Response::json(400, errors_body(400, "INVALID_CURSOR", "Cursor expired")),
                full,
            );
        }
        _ => {}
    }
    let claim = if state.config.ignore_claim_filter {
        None
    } else {
        params.claim.as_deref()
    };
    let index = population.index(claim, params.status.as_deref());
    let start = params.offset.min(index.len());
    // An oversized page sends one record more than asked for.
    let extra = usize::from(fault == Some(Fault::Oversized));
    let end = (start + limit + extra).min(index.len());
    let mut body = String::with_capacity((end - start) * 900 + 200);
    body.push_str("{\"data\":[");
    for (k, &i) in index[start..end].iter().enumerate() {
        if k > 0 {
            body.push(',');
        }
        body.push_str(&population.users[i as usize].json);
    }
    body.push_str("],\"links\":{\"self\":");
    push_json_str(&mut body, &params.to_cursor(start, limit));
    let next = if fault == Some(Fault::RepeatCursor) {
        params
            .cursor
            .clone()
            .or_else(|| Some(params.to_cursor(0, limit)))
    } else {
        (end < index.len()).then(|| params.to_cursor(end, limit))
    };
    if let Some(next) = next {
        body.push_str(",\"next\":");
        if state.config.next_as_url {
            let mut url = url::Url::parse("https://api.atlassian.example/admin/v2/users")
                .unwrap_or_else(|_| unreachable!("constant URL"));
            url.query_pairs_mut().append_pair("cursor", &next);
            push_json_str(&mut body, url.as_str());
        } else {
            push_json_str(&mut body, &next);
        }
    }
    body.push_str("}}");
    let mut response = Response::json(200, body.into_bytes());
    match fault {
        Some(Fault::Truncate) => {
            let half = response.body.len() / 2;
            return (response, Delivery::Truncate(half));
        }
        Some(Fault::WindowExhausted(secs)) => {
            let reset = chrono::Utc::now() + chrono::Duration::seconds(secs as i64);
            response = response
                .with_header("x-ratelimit-remaining", "0")
                .with_header(
                    "x-ratelimit-reset",
                    reset.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                );
        }
        _ => {}
    }
    (response, full)
}

fn push_json_str(out: &mut String, s: &str) {
    // Serialising a &str cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_specs() {
        let f: FaultSpec = "3:429-retry-after=2".parse().unwrap();
        assert_eq!(
            f,
            FaultSpec {
                first: 3,
                last: 3,
                fault: Fault::RateLimited(RateLimitHint::RetryAfterSecs(2))
            }
        );
        let f: FaultSpec = "2-4:503".parse().unwrap();
        assert_eq!((f.first, f.last, f.fault), (2, 4, Fault::Status(503)));
        assert_eq!(
            "1:slow=250".parse::<FaultSpec>().unwrap().fault,
            Fault::Slow(Duration::from_millis(250))
        );
        assert!("0:reset".parse::<FaultSpec>().is_err());
        assert!("1:explode".parse::<FaultSpec>().is_err());
    }

    #[test]
    fn cursor_round_trip() {
        let p = UsersParams {
            claim: Some("managed".into()),
            status: None,
            offset: 0,
            limit: Some(100),
            cursor: None,
            error: None,
        };
        let c = p.to_cursor(300, 100);
        let back = UsersParams::from_cursor(&c);
        assert_eq!(back.offset, 300);
        assert_eq!(back.claim.as_deref(), Some("managed"));
        assert!(UsersParams::from_cursor("garbage").error.is_some());
    }
}
