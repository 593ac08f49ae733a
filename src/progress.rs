//! Progress of the scans in flight: counters the walks bump, and a display for people.
//!
//! When stdout is a terminal, [`display`] draws one `indicatif` bar per connection (users and
//! pages so far, users per second, and the API's total when the count endpoint gave one).
//! Otherwise it writes a plain log line per connection every ten seconds. Scans that nobody
//! watches (tests, the daemon) pass no board and pay nothing.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::watch;

/// One connection's counters.
#[derive(Debug)]
pub struct ConnectionProgress {
    /// Connection name.
    pub name: String,
    pages: AtomicU64,
    users: AtomicU64,
    /// The API's count, or `u64::MAX` while unknown.
    total: AtomicU64,
    started: Instant,
    done: AtomicU64,
}

impl ConnectionProgress {
    /// Adds one page of `users` records.
    pub fn page(&self, users: usize) {
        self.pages.fetch_add(1, Ordering::Relaxed);
        self.users.fetch_add(users as u64, Ordering::Relaxed);
    }

    /// Records the API's total.
    pub fn set_total(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }

    /// Marks the scan finished.
    pub fn finish(&self) {
        self.done.store(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> (u64, u64, Option<u64>, f64, bool) {
        let users = self.users.load(Ordering::Relaxed);
        let total = self.total.load(Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        (
            self.pages.load(Ordering::Relaxed),
            users,
            (total != u64::MAX).then_some(total),
            users as f64 / secs,
            self.done.load(Ordering::Relaxed) == 1,
        )
    }
}

/// Every connection being scanned.
#[derive(Debug, Default)]
pub struct ProgressBoard {
    connections: Mutex<Vec<Arc<ConnectionProgress>>>,
}

impl ProgressBoard {
    /// Registers a connection's scan.
    pub fn start(&self, name: &str) -> Arc<ConnectionProgress> {
        let p = Arc::new(ConnectionProgress {
            name: name.to_owned(),
            pages: AtomicU64::new(0),
            users: AtomicU64::new(0),
            total: AtomicU64::new(u64::MAX),
            started: Instant::now(),
            done: AtomicU64::new(0),
        });
        self.list().push(Arc::clone(&p));
        p
    }

    fn list(&self) -> std::sync::MutexGuard<'_, Vec<Arc<ConnectionProgress>>> {
        // A list of counters stays valid whatever a panicking holder was doing.
        self.connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn line(p: &ConnectionProgress) -> String {
    let (pages, _, total, rate, done) = p.snapshot();
    let total = total.map(|t| format!(" of {t}")).unwrap_or_default();
    format!(
        "{pages} pages, {rate:.0} users/s{}{}",
        total,
        if done { ", done" } else { "" }
    )
}

/// Shows the board until `stop` fires: bars on a terminal, log lines otherwise.
pub async fn display(board: Arc<ProgressBoard>, mut stop: watch::Receiver<bool>) {
    if std::io::stdout().is_terminal() {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
        let style = ProgressStyle::with_template("{prefix:.bold} [{bar:30}] {pos} users, {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let mut bars: Vec<(Arc<ConnectionProgress>, ProgressBar)> = Vec::new();
        loop {
            let stopping = *stop.borrow();
            for p in board.list().iter() {
                if !bars.iter().any(|(q, _)| Arc::ptr_eq(p, q)) {
                    let bar = multi.add(
                        ProgressBar::new(0)
                            .with_style(style.clone())
                            .with_prefix(p.name.clone()),
                    );
                    bars.push((Arc::clone(p), bar));
                }
            }
            for (p, bar) in &bars {
                let (_, users, total, _, _) = p.snapshot();
                bar.set_length(total.unwrap_or(users).max(users));
                bar.set_position(users);
                bar.set_message(line(p));
            }
            if stopping {
                for (_, bar) in &bars {
                    bar.finish();
                }
                if !bars.is_empty() && std::io::stderr().is_terminal() {
                    // Leave the cursor below the bars, so the summary starts on its own line.
                    eprintln!();
                }
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = stop.changed() => {}
            }
        }
    } else {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                _ = stop.changed() => return,
            }
            for p in board.list().iter() {
                let (pages, users, total, rate, done) = p.snapshot();
                if !done {
                    tracing::info!(connection = %p.name, users, pages, users_per_sec = rate as u64, api_total = total, "Progress.");
                }
            }
        }
    }
}
