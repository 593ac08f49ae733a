//! The Admin API client: one method per endpoint, each returning one page, with the retry
//! policy underneath.
//!
//! This module owns everything that touches the network for Atlassian: the bearer header (sent
//! to the configured host only; redirects are never followed), timeouts, the body-size limit,
//! and retries. Retryable failures (429, 5xx, 408, resets, timeouts, truncated or undecodable
//! bodies) wait as the server asks (`Retry-After`, then `X-RateLimit-Reset`) or back off
//! exponentially with full jitter, within `max_retries`, `max_retry_wait` and a per-run
//! `retry_budget`. A rate-limit pause is shared by every walk of the same client. Failures that
//! retrying cannot fix (401, 403, 404, 400) end at once with a message that says what to do.
//! Pagination loops live in the scanner, not here.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use url::Url;

use super::model::{
    self, CountResponse, Cursor, DirectoriesPage, PageError, UsersPage, decode_users_page,
};
use super::retry::{Attempt, HttpStats, Retrier};
use crate::config::{ConnectionConfig, HttpConfig, PageLimits, UsersEndpoint};

/// The page size idsnap asks for: the documented maximum.
pub const PAGE_LIMIT: u32 = 100;

/// Why an Admin API call failed for good.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401: the key was not accepted.
    #[error(
        "connection {connection:?}: the API key was rejected (401{detail}). It may be invalid, expired (keys last at most a year) or revoked: create an organization API key at admin.atlassian.com (Settings → API keys) and put it in the {token_source}"
    )]
    Unauthorized {
        /// Connection name.
        connection: String,
        /// Where the token came from.
        token_source: String,
        /// `: reason` from the body, or empty.
        detail: String,
    },
    /// 403: the key is valid but may not do this.
    #[error(
        "connection {connection:?}: permission denied (403{detail}). The key lacks the read:directories:admin scope, or belongs to another organization than org_id {org_id:?}: create a key with that scope in this organization"
    )]
    Forbidden {
        /// Connection name.
        connection: String,
        /// The configured org ID.
        org_id: String,
        /// `: reason` from the body, or empty.
        detail: String,
    },
    /// 404 on the organization.
    #[error(
        "connection {connection:?}: organization not found: org_id {org_id:?} (404{detail}). Copy the ID from your admin.atlassian.com/o/<org id>/ URL"
    )]
    OrgNotFound {
        /// Connection name.
        connection: String,
        /// The configured org ID.
        org_id: String,
        /// `: reason` from the body, or empty.
        detail: String,
    },
    /// 400 on a request that carried a cursor: the cursor expired or was rejected.
    #[error("connection {connection:?}: the API rejected a page cursor (400{detail})")]
    BadCursor {
        /// Connection name.
        connection: String,
        /// `: reason` from the body, or empty.
        detail: String,
    },
    /// Any other status that retrying cannot fix.
    #[error("connection {connection:?}: {what} returned {status}{detail}")]
    Rejected {
        /// Connection name.
        connection: String,
        /// Method and path.
        what: String,
        /// The status.
        status: StatusCode,
        /// `: reason` from the body, or empty.
        detail: String,
    },
    /// The API stayed unavailable through every retry.
    #[error(
        "connection {connection:?}: the Atlassian API stayed unavailable for {what} after {attempts} attempt(s) ({reason}); last error: {last}. Try again later, or raise [http] max_retries / retry_budget_secs"
    )]
    Unavailable {
        /// Connection name.
        connection: String,
        /// Method and path.
        what: String,
        /// Attempts made.
        attempts: u32,
        /// Why retrying stopped.
        reason: &'static str,
        /// The last failure.
        last: String,
    },
    /// A response that is well-formed HTTP but not what the API documents.
    #[error("connection {connection:?}: {what}: {detail}")]
    Malformed {
        /// Connection name.
        connection: String,
        /// Method and path.
        what: String,
        /// What was wrong.
        detail: String,
    },
}

impl ApiError {
    /// True for authentication and permission failures (exit code 4).
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            ApiError::Unauthorized { .. }
                | ApiError::Forbidden { .. }
                | ApiError::OrgNotFound { .. }
        )
    }

    /// The exit code this failure maps to: 4 for authentication, 3 for a response that
    /// makes the walk incomplete, 5 for an API that stayed unavailable or refused.
    pub fn exit_code(&self) -> u8 {
        use crate::error::{EXIT_API, EXIT_AUTH, EXIT_GUARD};
        match self {
            e if e.is_auth() => EXIT_AUTH,
            ApiError::Malformed { .. } | ApiError::BadCursor { .. } => EXIT_GUARD,
            _ => EXIT_API,
        }
    }
}

/// Which users a walk asks for. Filters go on the first page only; the cursor carries them on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsersFilter {
    /// `claimStatus=managed|unmanaged`, or all.
    pub claim_status: Option<&'static str>,
    /// `status=...`, or all.
    pub status: Option<String>,
}

impl UsersFilter {
    /// Adds the filter's query parameters (`claimStatus`, `status`).
    fn append_to(&self, q: &mut url::form_urlencoded::Serializer<'_, url::UrlQuery<'_>>) {
        if let Some(claim) = self.claim_status {
            q.append_pair("claimStatus", claim);
        }
        if let Some(status) = &self.status {
            q.append_pair("status", status);
        }
    }
}

/// The client for one connection.
#[derive(Debug, Clone)]
pub struct AdminClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    base: Url,
    org_id: String,
    auth: HeaderValue,
    connection: String,
    token_source: String,
    endpoint: UsersEndpoint,
    limits: PageLimits,
    retry: Retrier,
}

impl AdminClient {
    /// Builds the client for a connection whose token has been resolved.
    pub fn new(conn: &ConnectionConfig, settings: &HttpConfig) -> Result<AdminClient, String> {
        let token = conn
            .token
            .as_ref()
            .ok_or("no token was resolved for this connection")?;
        let auth = token
            .bearer_header()
            .ok_or("the token cannot be sent in an HTTP header")?;
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("idsnap/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout.min(Duration::from_secs(10)))
            .https_only(!conn.allow_insecure_http);
        if conn.allow_insecure_http {
            // A plain-HTTP base URL must never go through a proxy that would see the token.
            builder = builder.no_proxy();
        }
        let http = builder
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(AdminClient {
            inner: Arc::new(Inner {
                http,
                base: conn.api_base_url.clone(),
                org_id: conn.org_id.clone(),
                auth,
                connection: conn.name.clone(),
                token_source: conn.token_source.to_string(),
                endpoint: conn.users_endpoint,
                limits: settings.limits,
                retry: Retrier::new(&conn.name, settings),
            }),
        })
    }

    /// Request counters so far.
    pub fn stats(&self) -> &HttpStats {
        self.inner.retry.stats()
    }

    /// The response limits in force.
    pub fn limits(&self) -> PageLimits {
        self.inner.limits
    }

    /// The connection name this client serves.
    pub fn connection(&self) -> &str {
        &self.inner.connection
    }

    fn url(&self, tail: &[&str]) -> Url {
        let mut url = self.inner.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments
                .pop_if_empty()
                .extend(["admin", "v2", "orgs", &self.inner.org_id])
                .extend(tail);
        }
        url
    }

    /// `GET /admin/v2/orgs/{orgId}/directories?limit=N` (or `?cursor=`): the connection test.
    pub async fn directories_page(
        &self,
        limit: u32,
        cursor: Option<&Cursor>,
    ) -> Result<DirectoriesPage, ApiError> {
        let mut url = self.url(&["directories"]);
        match cursor {
            Some(c) => url.query_pairs_mut().append_pair("cursor", &c.0),
            None => url
                .query_pairs_mut()
                .append_pair("limit", &limit.to_string()),
        };
        self.call(Method::GET, url, None, cursor.is_some(), |body| {
            serde_json::from_slice::<DirectoriesPage>(body).map_err(|e| page_error(&e))
        })
        .await
    }

    /// One page of users from the configured endpoint.
    pub async fn users_page(
        &self,
        filter: &UsersFilter,
        cursor: Option<&Cursor>,
    ) -> Result<UsersPage, ApiError> {
        let (method, url, body) = match self.inner.endpoint {
            UsersEndpoint::List => {
                let mut url = self.url(&["directories", "-", "users"]);
                {
                    let mut q = url.query_pairs_mut();
                    match cursor {
                        // "If present, all other parameters are discarded": send it alone.
                        Some(c) => {
                            q.append_pair("cursor", &c.0);
                        }
                        None => {
                            q.append_pair("limit", &PAGE_LIMIT.to_string());
                            filter.append_to(&mut q);
                        }
                    }
                }
                (Method::GET, url, None)
            }
            UsersEndpoint::Search => {
                let url = self.url(&["directories", "-", "users", "search"]);
                let body = match cursor {
                    Some(c) => serde_json::json!({ "cursor": c.0 }),
                    None => {
                        let mut b = serde_json::json!({
                            "limit": PAGE_LIMIT,
                            "expand": ["platformRoles", "counts.resources"],
                        });
                        if let Some(claim) = filter.claim_status {
                            b["claimStatus"] = claim.into();
                        }
                        if let Some(status) = &filter.status {
                            b["status"] = serde_json::json!([status]);
                        }
                        b
                    }
                };
                (Method::POST, url, Some(body.to_string()))
            }
        };
        let max_chars = self.inner.limits.max_field_chars;
        self.call(method, url, body, cursor.is_some(), |body| {
            let page = decode_users_page(body, max_chars)?;
            if page.users.len() > PAGE_LIMIT as usize {
                return Err(PageError::Malformed(format!(
                    "the page holds {} records, more than the {PAGE_LIMIT} asked for",
                    page.users.len()
                )));
            }
            Ok(page)
        })
        .await
    }

    /// `GET .../directories/-/users/count` with the same filter as a walk.
    pub async fn users_count(&self, filter: &UsersFilter) -> Result<u64, ApiError> {
        let mut url = self.url(&["directories", "-", "users", "count"]);
        filter.append_to(&mut url.query_pairs_mut());
        if url.query() == Some("") {
            url.set_query(None);
        }
        self.call(Method::GET, url, None, false, |body| {
            serde_json::from_slice::<CountResponse>(body)
                .map(|c| c.count)
                .map_err(|e| page_error(&e))
        })
        .await
    }

    /// Sends one logical request, retrying as the policy allows, and decodes the body.
    async fn call<T>(
        &self,
        method: Method,
        url: Url,
        body: Option<String>,
        has_cursor: bool,
        decode: impl Fn(&[u8]) -> Result<T, PageError>,
    ) -> Result<T, ApiError> {
        let what = format!("{method} {}", url.path());
        self.inner
            .retry
            .run(&what, || {
                self.attempt(&method, &url, body.as_deref(), has_cursor, &what, &decode)
            })
            .await
    }

    async fn attempt<T>(
        &self,
        method: &Method,
        url: &Url,
        body: Option<&str>,
        has_cursor: bool,
        what: &str,
        decode: &impl Fn(&[u8]) -> Result<T, PageError>,
    ) -> Attempt<T> {
        let mut request = self
            .inner
            .http
            .request(method.clone(), url.clone())
            .header(AUTHORIZATION, self.inner.auth.clone())
            .header(ACCEPT, "application/json");
        if let Some(body) = body {
            request = request
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_owned());
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Retry {
                    wait: None,
                    error: transport_error(&e),
                };
            }
        };
        let status = response.status();
        let headers = response.headers().clone();
        self.note_rate_limit(&headers);
        let bytes = match read_limited(response, self.inner.limits.max_page_bytes).await {
            Ok(b) => b,
            Err(BodyError::TooLarge) => {
                return Attempt::Fail(self.malformed(
                    what,
                    format!(
                        "the response body exceeds {} bytes ([http] max_page_bytes)",
                        self.inner.limits.max_page_bytes
                    ),
                ));
            }
            Err(BodyError::Transport(e)) => {
                return Attempt::Retry {
                    wait: None,
                    error: e,
                };
            }
        };
        let detail = || {
            model::error_reason(&bytes)
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        };
        let conn = || self.inner.connection.clone();
        match status {
            s if s.is_success() => match decode(&bytes) {
                Ok(v) => Attempt::Done(v),
                Err(PageError::NotJson(e)) => Attempt::Retry {
                    wait: None,
                    error: format!("undecodable body: {e}"),
                },
                Err(PageError::Malformed(e)) => Attempt::Fail(self.malformed(what, e)),
            },
            StatusCode::TOO_MANY_REQUESTS => Attempt::Retry {
                wait: server_wait(&headers, Utc::now()),
                error: "429 Too Many Requests".into(),
            },
            StatusCode::REQUEST_TIMEOUT => Attempt::Retry {
                wait: None,
                error: "408 Request Timeout".into(),
            },
            s if s.is_server_error() => Attempt::Retry {
                wait: retry_after(&headers, Utc::now()),
                error: format!("{s}{}", detail()),
            },
            StatusCode::UNAUTHORIZED => Attempt::Fail(ApiError::Unauthorized {
                connection: conn(),
                token_source: self.inner.token_source.clone(),
                detail: detail(),
            }),
            StatusCode::FORBIDDEN => Attempt::Fail(ApiError::Forbidden {
                connection: conn(),
                org_id: self.inner.org_id.clone(),
                detail: detail(),
            }),
            StatusCode::NOT_FOUND => Attempt::Fail(ApiError::OrgNotFound {
                connection: conn(),
                org_id: self.inner.org_id.clone(),
                detail: detail(),
            }),
            StatusCode::BAD_REQUEST if has_cursor => Attempt::Fail(ApiError::BadCursor {
                connection: conn(),
                detail: detail(),
            }),
            s => Attempt::Fail(ApiError::Rejected {
                connection: conn(),
                what: what.to_owned(),
                status: s,
                detail: detail(),
            }),
        }
    }

    fn malformed(&self, what: &str, detail: String) -> ApiError {
        ApiError::Malformed {
            connection: self.inner.connection.clone(),
            what: what.to_owned(),
            detail,
        }
    }

    /// When the window is used up (`X-RateLimit-Remaining: 0`), hold every request until
    /// the reset.
    fn note_rate_limit(&self, headers: &HeaderMap) {
        let remaining =
            header_str(headers, "x-ratelimit-remaining").and_then(|v| v.trim().parse::<u64>().ok());
        if remaining != Some(0) {
            return;
        }
        if let Some(reset) = header_str(headers, "x-ratelimit-reset").and_then(parse_reset_time) {
            let wait = (reset - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            self.inner.retry.pause_for_window(wait);
        }
    }
}

fn page_error(e: &serde_json::Error) -> PageError {
    if e.is_syntax() || e.is_eof() {
        PageError::NotJson(e.to_string())
    } else {
        PageError::Malformed(e.to_string())
    }
}

fn transport_error(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "connection failed"
    };
    // The chain of sources says why (reset, refused, TLS); URLs carry no secrets.
    let mut text = format!("{kind}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

enum BodyError {
    TooLarge,
    Transport(String),
}

async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::with_capacity(response.content_length().unwrap_or(0) as usize);
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err(BodyError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                return Err(BodyError::Transport(format!(
                    "reading the body failed: {}",
                    transport_error(&e)
                )));
            }
        }
    }
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// How long a 429 asks us to wait: `Retry-After` first, then `X-RateLimit-Reset`.
pub fn server_wait(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    retry_after(headers, now).or_else(|| {
        let reset = header_str(headers, "x-ratelimit-reset").and_then(parse_reset_time)?;
        Some((reset - now).to_std().unwrap_or(Duration::ZERO))
    })
}

/// `Retry-After` as delta-seconds or an HTTP date.
pub fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let value = header_str(headers, RETRY_AFTER.as_str())?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// `X-RateLimit-Reset`: ISO-8601 UTC, with or without seconds (`2026-03-26T16:00Z` is seen in
/// the wild), with `Z` or an offset.
pub fn parse_reset_time(value: &str) -> Option<DateTime<Utc>> {
    let v = value.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%dT%H:%M%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(t) = DateTime::parse_from_str(v, fmt) {
            return Some(t.with_timezone(&Utc));
        }
    }
    let v = v.strip_suffix('Z').unwrap_or(v);
    for fmt in ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(v, fmt) {
            return Some(t.and_utc());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn reset_time_forms() {
        let want = DateTime::parse_from_rfc3339("2026-03-26T16:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        for v in [
            "2026-03-26T16:00Z",
            "2026-03-26T16:00:00Z",
            "2026-03-26T16:00:00.000Z",
            "2026-03-26T18:00+02:00",
            "2026-03-26T16:00",
        ] {
            assert_eq!(parse_reset_time(v), Some(want), "{v}");
        }
        assert_eq!(parse_reset_time("soon"), None);
    }

    #[test]
    fn retry_after_beats_reset_header() {
        let now = DateTime::parse_from_rfc3339("2026-03-26T15:59:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let h = headers(&[
            ("retry-after", "7"),
            ("x-ratelimit-reset", "2026-03-26T16:00Z"),
        ]);
        assert_eq!(server_wait(&h, now), Some(Duration::from_secs(7)));
        let h = headers(&[("x-ratelimit-reset", "2026-03-26T16:00Z")]);
        assert_eq!(server_wait(&h, now), Some(Duration::from_secs(60)));
        let h = headers(&[("retry-after", "Thu, 26 Mar 2026 15:59:30 GMT")]);
        assert_eq!(server_wait(&h, now), Some(Duration::from_secs(30)));
        assert_eq!(server_wait(&HeaderMap::new(), now), None);
    }
}
