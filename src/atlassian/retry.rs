//! The retry policy, apart from HTTP so that its timing can be tested under paused time.
//!
//! [`Retrier::run`] repeats an attempt until it succeeds, fails for good, or the limits are
//! reached: `max_retries` per request, `max_retry_wait` per wait, and `retry_budget` for all
//! waiting of one connection's run. A wait the server asked for (`Retry-After`,
//! `X-RateLimit-Reset`) is honoured up to `max_retry_wait`; otherwise the wait is exponential
//! backoff with full jitter. Every wait also holds back the other walks of the same
//! connection (a shared "not before" instant), so a 429 slows the whole connection.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::client::ApiError;
use crate::config::HttpConfig;

/// First backoff step; doubled per attempt, then capped by `max_retry_wait`.
pub const BASE_BACKOFF: Duration = Duration::from_millis(500);

/// What one attempt produced.
#[derive(Debug)]
pub enum Attempt<T> {
    /// Success.
    Done(T),
    /// A retryable failure, with the wait the server asked for, if any.
    Retry {
        /// Server-requested wait.
        wait: Option<Duration>,
        /// What failed, for logs and the final error.
        error: String,
    },
    /// A failure retrying cannot fix.
    Fail(ApiError),
}

/// Counters for the summary and manifest.
#[derive(Debug, Default)]
pub struct HttpStats {
    requests: AtomicU64,
    retries: AtomicU64,
    waited_ms: AtomicU64,
}

impl HttpStats {
    /// HTTP requests sent (attempts, including retries).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
    /// Attempts that were retries.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }
    /// Total time spent waiting before retries or for rate-limit resets.
    pub fn waited(&self) -> Duration {
        Duration::from_millis(self.waited_ms.load(Ordering::Relaxed))
    }
}

/// Retry state shared by every request of one connection.
#[derive(Debug)]
pub struct Retrier {
    connection: String,
    settings: HttpConfig,
    stats: HttpStats,
    /// No request before this instant: set by every retry wait and by exhausted rate-limit
    /// windows, and shared by all walks of the connection.
    not_before: Mutex<Option<Instant>>,
    /// Total waiting so far, checked against `retry_budget`.
    waited: Mutex<Duration>,
    rng: Mutex<u64>,
}

/// Locks a mutex whose data stays consistent even if a holder panicked (plain counters and
/// instants), so poisoning is ignored rather than propagated.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Retrier {
    /// A fresh state for `connection`.
    pub fn new(connection: &str, settings: &HttpConfig) -> Retrier {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Retrier {
            connection: connection.to_owned(),
            settings: settings.clone(),
            stats: HttpStats::default(),
            not_before: Mutex::new(None),
            waited: Mutex::new(Duration::ZERO),
            rng: Mutex::new(seed),
        }
    }

    /// The counters.
    pub fn stats(&self) -> &HttpStats {
        &self.stats
    }

    /// Runs `attempt` until it is done, fails for good, or the limits are reached. `what`
    /// names the request in logs and errors.
    pub async fn run<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Attempt<T>>,
    {
        let mut retries = 0u32;
        loop {
            self.wait_for_gate().await;
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let (asked, error) = match attempt().await {
                Attempt::Done(v) => return Ok(v),
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry { wait, error } => (wait, error),
            };
            let unavailable = |reason| ApiError::Unavailable {
                connection: self.connection.clone(),
                what: what.to_owned(),
                attempts: retries + 1,
                reason,
                last: error.clone(),
            };
            if retries >= self.settings.max_retries {
                return Err(unavailable("max_retries reached"));
            }
            let wait = asked
                .unwrap_or_else(|| self.backoff(retries))
                .min(self.settings.max_retry_wait);
            {
                let mut waited = lock(&self.waited);
                if *waited + wait > self.settings.retry_budget {
                    return Err(unavailable("retry_budget_secs used up"));
                }
                *waited += wait;
            }
            tracing::warn!(
                connection = %self.connection,
                request = %what,
                retry = retries + 1,
                wait_ms = wait.as_millis() as u64,
                error = %error,
                "Request failed; retrying."
            );
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            self.stats
                .waited_ms
                .fetch_add(wait.as_millis() as u64, Ordering::Relaxed);
            self.hold_until(Instant::now() + wait);
            retries += 1;
        }
    }

    /// Holds every request of the connection for `wait` (capped by `max_retry_wait`): the
    /// rate-limit window is used up.
    pub fn pause_for_window(&self, wait: Duration) {
        let wait = wait.min(self.settings.max_retry_wait);
        if wait.is_zero() {
            return;
        }
        tracing::info!(connection = %self.connection, wait_ms = wait.as_millis() as u64, "Rate-limit window used up; pausing until it resets.");
        self.stats
            .waited_ms
            .fetch_add(wait.as_millis() as u64, Ordering::Relaxed);
        self.hold_until(Instant::now() + wait);
    }

    /// Exponential backoff with full jitter: uniform in `[0, base·2^retry]`, capped by
    /// `max_retry_wait`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let cap = BASE_BACKOFF
            .saturating_mul(1u32 << retry.min(16))
            .min(self.settings.max_retry_wait);
        let r = splitmix64(&mut lock(&self.rng));
        cap.mul_f64((r >> 11) as f64 / (1u64 << 53) as f64)
    }

    fn hold_until(&self, until: Instant) {
        let mut gate = lock(&self.not_before);
        if gate.is_none_or(|g| g < until) {
            *gate = Some(until);
        }
    }

    async fn wait_for_gate(&self) {
        let until = *lock(&self.not_before);
        if let Some(until) = until {
            tokio::time::sleep_until(until).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_retries: u32, max_wait: u64, budget: u64) -> HttpConfig {
        HttpConfig {
            max_retries,
            max_retry_wait: Duration::from_secs(max_wait),
            retry_budget: Duration::from_secs(budget),
            ..HttpConfig::default()
        }
    }

    fn retry_then_done(
        waits: Vec<Option<Duration>>,
    ) -> impl FnMut() -> std::future::Ready<Attempt<u32>> {
        let mut n = 0usize;
        move || {
            let out = match waits.get(n) {
                Some(w) => Attempt::Retry {
                    wait: *w,
                    error: "503".into(),
                },
                None => Attempt::Done(n as u32),
            };
            n += 1;
            std::future::ready(out)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waits_exactly_what_the_server_asks_capped_by_max_retry_wait() {
        let r = Retrier::new("c", &settings(5, 30, 900));
        let start = Instant::now();
        let out = r
            .run(
                "GET x",
                retry_then_done(vec![
                    Some(Duration::from_secs(7)),
                    Some(Duration::from_secs(100)),
                ]),
            )
            .await;
        assert_eq!(out.unwrap(), 2);
        // 7 s as asked, then 100 s capped to max_retry_wait = 30 s.
        assert_eq!(start.elapsed(), Duration::from_secs(37));
        assert_eq!(r.stats().retries(), 2);
        assert_eq!(r.stats().requests(), 3);
        assert_eq!(r.stats().waited(), Duration::from_secs(37));
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_is_exponential_with_full_jitter() {
        let r = Retrier::new("c", &settings(10, 60, 900));
        for retry in 0..6 {
            let cap = BASE_BACKOFF * (1 << retry);
            let samples: Vec<_> = (0..200).map(|_| r.backoff(retry)).collect();
            assert!(samples.iter().all(|d| *d <= cap));
            // Full jitter spreads over the whole range, not just near the cap.
            assert!(samples.iter().any(|d| *d < cap / 4), "retry {retry}");
            assert!(samples.iter().any(|d| *d > cap * 3 / 4), "retry {retry}");
        }
        let start = Instant::now();
        r.run("GET x", retry_then_done(vec![None, None, None]))
            .await
            .unwrap();
        // Three jittered waits of at most 0.5, 1 and 2 seconds.
        assert!(
            start.elapsed() <= Duration::from_millis(3500),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_retries_and_on_the_budget() {
        let r = Retrier::new("Prod", &settings(2, 10, 900));
        let err = r
            .run(
                "GET x",
                retry_then_done(vec![Some(Duration::from_secs(1)); 5]),
            )
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("after 3 attempt(s) (max_retries reached)"),
            "{err}"
        );

        let r = Retrier::new("Prod", &settings(10, 10, 15));
        let start = Instant::now();
        let err = r
            .run(
                "GET x",
                retry_then_done(vec![Some(Duration::from_secs(10)); 5]),
            )
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("retry_budget_secs used up"),
            "{err}"
        );
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_holds_back_every_request_of_the_connection() {
        let r = Retrier::new("c", &settings(5, 60, 900));
        r.pause_for_window(Duration::from_secs(20));
        let start = Instant::now();
        r.run("GET y", retry_then_done(vec![])).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(20));
    }
}
