//! The cron-driven daemon: when each connection runs, no overlap, graceful shutdown.
//!
//! [`CronSchedule`] parses the standard 5-field form (`0 2 * * *`, day of week 0–7 with 0
//! and 7 Sunday) and the `cron` crate's 6/7-field form with seconds, in an IANA time zone.
//! [`Daemon`] runs one loop per connection: wait until the next fire time (re-reading the
//! wall clock at least every 30 s, so a suspend or an NTP step is noticed), start the run
//! unless the previous one is still going (that tick is skipped with a warning), repeat. A
//! jump past several fire times gives one run, not a burst. The runner and the clock are
//! parameters, so tests drive the loop under `tokio::time::pause` with fake runs. On
//! shutdown, runs in progress get `shutdown_grace`; after that they are cancelled, which
//! aborts their uploads, so nothing partial is ever published.

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A parsed cron expression and the zone it is read in.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    expression: String,
    schedule: cron::Schedule,
    timezone: Tz,
}

/// Turns the standard 5-field form into the `cron` crate's 6-field form: a `0` seconds
/// field in front, and numeric days of week (0–7, Sunday = 0 or 7) as names, because the
/// crate numbers days 1–7 from Sunday.
fn to_six_fields(expression: &str) -> Result<String, String> {
    let fields: Vec<&str> = expression.split_whitespace().collect();
    match fields.len() {
        5 => {
            let names = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"];
            let mut dow = String::new();
            let mut digits = String::new();
            let flush = |digits: &mut String, dow: &mut String| -> Result<(), String> {
                if digits.is_empty() {
                    return Ok(());
                }
                let n: usize = digits
                    .parse()
                    .map_err(|_| format!("bad day of week {digits:?}"))?;
                let name = names
                    .get(n)
                    .ok_or_else(|| format!("day of week {n} is out of range 0-7"))?;
                dow.push_str(name);
                digits.clear();
                Ok(())
            };
            let mut after_slash = false;
            for c in fields[4].chars() {
                if c.is_ascii_digit() && !after_slash {
                    digits.push(c);
                } else {
                    flush(&mut digits, &mut dow)?;
                    dow.push(c);
                    after_slash = match c {
                        '/' => true,
                        ',' | '-' => false,
                        _ => after_slash,
                    };
                }
            }
            flush(&mut digits, &mut dow)?;
            Ok(format!(
                "0 {} {} {} {} {dow}",
                fields[0], fields[1], fields[2], fields[3]
            ))
        }
        6 | 7 => Ok(fields.join(" ")),
        n => Err(format!(
            "expected 5 fields (minute hour day month weekday) or 6/7 with seconds, found {n}"
        )),
    }
}

impl CronSchedule {
    /// Parses `expression` in `timezone` (an IANA name such as `Europe/Berlin`).
    pub fn parse(expression: &str, timezone: &str) -> Result<CronSchedule, String> {
        let timezone = Tz::from_str(timezone.trim()).map_err(|_| format!("unknown time zone {timezone:?}: use an IANA name such as \"UTC\" or \"Europe/Berlin\""))?;
        let six = to_six_fields(expression)?;
        let schedule =
            cron::Schedule::from_str(&six).map_err(|e| format!("not a cron expression ({e})"))?;
        if schedule.upcoming(timezone).next().is_none() {
            return Err("never fires".into());
        }
        Ok(CronSchedule {
            expression: expression.trim().to_owned(),
            schedule,
            timezone,
        })
    }

    /// The expression as written.
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The zone it is read in.
    pub fn timezone(&self) -> Tz {
        self.timezone
    }

    /// The first fire time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.schedule
            .after(&after.with_timezone(&self.timezone))
            .next()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The next `n` fire times after `after`.
    pub fn upcoming(&self, after: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
        self.schedule
            .after(&after.with_timezone(&self.timezone))
            .take(n)
            .map(|t| t.with_timezone(&Utc))
            .collect()
    }
}

/// The wall clock, replaceable in tests.
pub trait Clock: Send + Sync + 'static {
    /// Now, in UTC.
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A future that completes when a run should give up (shutdown grace is over).
#[derive(Debug, Clone, Default)]
pub struct Cancel(Option<watch::Receiver<bool>>);

impl Cancel {
    /// A cancel signal with its trigger.
    pub fn new() -> (watch::Sender<bool>, Cancel) {
        let (tx, rx) = watch::channel(false);
        (tx, Cancel(Some(rx)))
    }

    /// True once triggered.
    pub fn is_cancelled(&self) -> bool {
        self.0.as_ref().is_some_and(|rx| *rx.borrow())
    }

    /// Completes when triggered; never, for the default (a one-shot `run`).
    pub async fn cancelled(&mut self) {
        let Some(rx) = &mut self.0 else {
            return std::future::pending().await;
        };
        loop {
            if *rx.borrow_and_update() {
                return;
            }
            if rx.changed().await.is_err() {
                // The trigger is gone without firing: it never will.
                return std::future::pending().await;
            }
        }
    }
}

/// A boxed future of a run's exit code.
pub type RunFuture = Pin<Box<dyn Future<Output = u8> + Send>>;

/// Starts one connection's run; the run stops early when `cancel` fires.
pub trait Runner: Send + Sync + 'static {
    /// Runs connection `index` and returns its exit code (0 = published).
    fn run(&self, index: usize, cancel: Cancel) -> RunFuture;
}

/// One scheduled connection.
#[derive(Debug, Clone)]
pub struct Job {
    /// Connection name, for logs.
    pub name: String,
    /// When it runs.
    pub schedule: CronSchedule,
}

/// How the daemon ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DaemonReport {
    /// Runs started, per job.
    pub runs_started: Vec<u64>,
    /// Ticks skipped because the previous run was still going, per job.
    pub ticks_skipped: Vec<u64>,
    /// Runs cancelled at shutdown.
    pub cancelled: u64,
}

/// The scheduler.
pub struct Daemon<R: Runner, C: Clock> {
    /// The connections and their schedules.
    pub jobs: Vec<Job>,
    /// Starts runs.
    pub runner: Arc<R>,
    /// Tells the time.
    pub clock: Arc<C>,
    /// Run every connection once at start, then follow the schedule.
    pub run_on_start: bool,
    /// How long runs in progress may take to finish after a shutdown signal.
    pub shutdown_grace: Duration,
}

/// The longest single sleep, so wall-clock jumps are noticed.
const MAX_NAP: Duration = Duration::from_secs(30);

async fn sleep_until_wall(clock: &dyn Clock, target: DateTime<Utc>) {
    loop {
        let now = clock.now();
        if now >= target {
            return;
        }
        let left = (target - now).to_std().unwrap_or(Duration::ZERO);
        tokio::time::sleep(left.min(MAX_NAP)).await;
    }
}

struct Running {
    handle: JoinHandle<u8>,
    cancel: watch::Sender<bool>,
}

impl<R: Runner, C: Clock> Daemon<R, C> {
    /// Logs when each connection runs next, in the schedule's zone and in UTC.
    pub fn log_next_runs(&self) {
        let now = self.clock.now();
        for job in &self.jobs {
            if let Some(next) = job.schedule.next_after(now) {
                tracing::info!(
                    connection = %job.name,
                    cron = job.schedule.expression(),
                    next_local = %next.with_timezone(&job.schedule.timezone()).format("%Y-%m-%d %H:%M:%S %Z"),
                    next_utc = %next.format("%Y-%m-%d %H:%M:%S UTC"),
                    "Scheduled."
                );
            }
        }
    }

    /// Runs until `shutdown` completes; then gives runs in progress the grace period,
    /// cancels what is left, and returns. If `force` completes during the grace period,
    /// runs are cancelled at once.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()>,
        force: impl Future<Output = ()>,
    ) -> DaemonReport {
        self.log_next_runs();
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut loops = Vec::new();
        for (index, job) in self.jobs.iter().cloned().enumerate() {
            let runner = Arc::clone(&self.runner);
            let clock = Arc::clone(&self.clock);
            let mut stop = stop_rx.clone();
            let run_on_start = self.run_on_start;
            let span = tracing::Span::current();
            loops.push(tokio::spawn(tracing::Instrument::instrument(async move {
                let mut running: Option<Running> = None;
                let (mut started, mut skipped) = (0u64, 0u64);
                let mut first = run_on_start;
                loop {
                    if !first {
                        let Some(next) = job.schedule.next_after(clock.now()) else { break };
                        tokio::select! {
                            _ = sleep_until_wall(clock.as_ref(), next) => {}
                            _ = stop.changed() => break,
                        }
                    }
                    first = false;
                    if *stop.borrow() {
                        break;
                    }
                    if running.as_ref().is_some_and(|r| !r.handle.is_finished()) {
                        skipped += 1;
                        tracing::warn!(connection = %job.name, "The previous run is still going; skipping this scheduled run.");
                        continue;
                    }
                    if let Some(done) = running.take() {
                        report_finished(&job.name, done.handle.await);
                    }
                    let (cancel_tx, cancel) = Cancel::new();
                    started += 1;
                    tracing::info!(connection = %job.name, "Starting a scheduled run.");
                    let run = tracing::Instrument::instrument(runner.run(index, cancel), tracing::Span::current());
                    running = Some(Running { handle: tokio::spawn(run), cancel: cancel_tx });
                    if let Some(next) = job.schedule.next_after(clock.now()) {
                        tracing::info!(connection = %job.name, next_utc = %next.format("%Y-%m-%d %H:%M:%S UTC"), "Next run.");
                    }
                }
                (started, skipped, running)
            }, span)));
        }

        shutdown.await;
        tracing::info!(
            grace_secs = self.shutdown_grace.as_secs(),
            "Shutting down: no new runs; waiting for runs in progress."
        );
        let _ = stop_tx.send(true);
        let mut report = DaemonReport::default();
        let mut in_progress = Vec::new();
        for l in loops {
            // A loop only ends by returning; a panic inside it is a bug and counts as nothing.
            if let Ok((started, skipped, running)) = l.await {
                report.runs_started.push(started);
                report.ticks_skipped.push(skipped);
                if let Some(r) = running {
                    in_progress.push(r);
                }
            }
        }
        let mut force = std::pin::pin!(force);
        let grace = tokio::time::sleep(self.shutdown_grace);
        tokio::pin!(grace);
        for r in &mut in_progress {
            if r.handle.is_finished() {
                continue;
            }
            tokio::select! {
                _ = &mut r.handle => {}
                _ = &mut grace => {}
                _ = &mut force => {}
            }
        }
        for r in in_progress {
            if !r.handle.is_finished() {
                report.cancelled += 1;
                tracing::warn!(
                    "A run did not finish within the shutdown grace period; abandoning it (nothing is published)."
                );
                let _ = r.cancel.send(true);
                // The cancelled run aborts its upload; give that a moment, then go.
                let _ = tokio::time::timeout(Duration::from_secs(10), r.handle).await;
            }
        }
        report
    }
}

fn report_finished(name: &str, result: Result<u8, tokio::task::JoinError>) {
    match result {
        Ok(0) => {}
        Ok(code) => {
            tracing::warn!(connection = %name, exit_code = code, "The last run failed; it will be retried at the next scheduled time.")
        }
        Err(e) => {
            tracing::error!(connection = %name, error = %e, "The last run panicked; it will be retried at the next scheduled time.")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn five_field_expressions_follow_standard_cron() {
        let s = CronSchedule::parse("0 2 * * *", "UTC").unwrap();
        assert_eq!(
            s.next_after(utc("2026-03-01T01:00:00Z")),
            Some(utc("2026-03-01T02:00:00Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-03-01T02:00:00Z")),
            Some(utc("2026-03-02T02:00:00Z"))
        );
        // Monday to Friday in standard numbering (2026-03-06 is a Friday).
        let weekdays = CronSchedule::parse("30 6 * * 1-5", "UTC").unwrap();
        assert_eq!(
            weekdays.next_after(utc("2026-03-06T07:00:00Z")),
            Some(utc("2026-03-09T06:30:00Z"))
        );
        let sunday = CronSchedule::parse("0 0 * * 0", "UTC").unwrap();
        assert_eq!(
            sunday.next_after(utc("2026-03-02T00:00:00Z")),
            Some(utc("2026-03-08T00:00:00Z"))
        );
        assert_eq!(
            CronSchedule::parse("0 0 * * 7", "UTC")
                .unwrap()
                .next_after(utc("2026-03-02T00:00:00Z")),
            Some(utc("2026-03-08T00:00:00Z"))
        );
    }

    #[test]
    fn six_field_expressions_have_seconds() {
        let s = CronSchedule::parse("*/2 * * * * *", "UTC").unwrap();
        assert_eq!(
            s.upcoming(utc("2026-03-01T00:00:00Z"), 3),
            vec![
                utc("2026-03-01T00:00:02Z"),
                utc("2026-03-01T00:00:04Z"),
                utc("2026-03-01T00:00:06Z")
            ]
        );
    }

    #[test]
    fn a_zone_with_daylight_saving() {
        // 02:30 in Berlin: 01:30 UTC in winter, 00:30 UTC in summer. On 2026-03-29 clocks
        // jump from 02:00 to 03:00, so 02:30 does not exist that day.
        let s = CronSchedule::parse("30 2 * * *", "Europe/Berlin").unwrap();
        assert_eq!(
            s.next_after(utc("2026-03-27T12:00:00Z")),
            Some(utc("2026-03-28T01:30:00Z"))
        );
        let after_gap = s.next_after(utc("2026-03-28T12:00:00Z")).unwrap();
        assert_eq!(
            after_gap,
            utc("2026-03-30T00:30:00Z"),
            "the skipped local time is not invented"
        );
        let nine = CronSchedule::parse("0 9 * * *", "America/New_York").unwrap();
        assert_eq!(
            nine.upcoming(utc("2026-03-07T00:00:00Z"), 2),
            vec![utc("2026-03-07T14:00:00Z"), utc("2026-03-08T13:00:00Z")]
        );
    }

    #[test]
    fn bad_expressions_and_zones_are_rejected() {
        assert!(
            CronSchedule::parse("0 2 * *", "UTC")
                .unwrap_err()
                .contains("expected 5 fields")
        );
        assert!(
            CronSchedule::parse("0 2 * * 9", "UTC")
                .unwrap_err()
                .contains("out of range")
        );
        assert!(
            CronSchedule::parse("0 2 * * *", "Mars/Olympus")
                .unwrap_err()
                .contains("unknown time zone")
        );
        assert!(CronSchedule::parse("61 2 * * *", "UTC").is_err());
    }

    /// Wall time that follows tokio's (paused) clock, plus a jump the test can add.
    struct TestClock {
        base: DateTime<Utc>,
        start: tokio::time::Instant,
        jump_secs: AtomicI64,
    }

    impl Clock for TestClock {
        fn now(&self) -> DateTime<Utc> {
            self.base
                + chrono::Duration::from_std(self.start.elapsed()).unwrap()
                + chrono::Duration::seconds(self.jump_secs.load(Ordering::Relaxed))
        }
    }

    #[derive(Default)]
    struct FakeState {
        duration: Duration,
        fail: bool,
        finished: AtomicU64,
        cancelled: AtomicU64,
        /// (running now, most at once)
        concurrent: Mutex<(u32, u32)>,
    }

    #[derive(Clone)]
    struct FakeRunner(Arc<FakeState>);

    impl Runner for FakeRunner {
        fn run(&self, _index: usize, mut cancel: Cancel) -> RunFuture {
            let me = Arc::clone(&self.0);
            Box::pin(async move {
                {
                    let mut c = me.concurrent.lock().unwrap();
                    c.0 += 1;
                    c.1 = c.1.max(c.0);
                }
                let code = tokio::select! {
                    _ = tokio::time::sleep(me.duration) => {
                        me.finished.fetch_add(1, Ordering::SeqCst);
                        if me.fail { 5 } else { 0 }
                    }
                    _ = cancel.cancelled() => {
                        me.cancelled.fetch_add(1, Ordering::SeqCst);
                        1
                    }
                };
                me.concurrent.lock().unwrap().0 -= 1;
                code
            })
        }
    }

    fn fake(duration_secs: u64, fail: bool) -> (FakeRunner, Arc<FakeState>) {
        let state = Arc::new(FakeState {
            duration: Duration::from_secs(duration_secs),
            fail,
            ..Default::default()
        });
        (FakeRunner(Arc::clone(&state)), state)
    }

    fn daemon(
        runner: FakeRunner,
        cron: &str,
        clock: Arc<TestClock>,
        grace: Duration,
    ) -> Daemon<FakeRunner, TestClock> {
        Daemon {
            jobs: vec![Job {
                name: "A".into(),
                schedule: CronSchedule::parse(cron, "UTC").unwrap(),
            }],
            runner: Arc::new(runner),
            clock,
            run_on_start: false,
            shutdown_grace: grace,
        }
    }

    fn clock() -> Arc<TestClock> {
        Arc::new(TestClock {
            base: utc("2026-03-01T00:00:00Z"),
            start: tokio::time::Instant::now(),
            jump_secs: AtomicI64::new(0),
        })
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn runs_on_schedule_and_never_overlaps() {
        // Every 10 s, each run taking 25 s: runs at 10, 40, 70, ...; ticks at 20, 30, 50, ... skipped.
        let (runner, r) = fake(25, false);
        let d = daemon(runner, "*/10 * * * * *", clock(), Duration::from_secs(60));
        let report = d
            .run(
                tokio::time::sleep(Duration::from_secs(95)),
                std::future::pending(),
            )
            .await;
        assert_eq!(
            r.concurrent.lock().unwrap().1,
            1,
            "never two runs of one connection at once"
        );
        assert_eq!(report.runs_started, vec![3]);
        assert_eq!(report.ticks_skipped, vec![6]);
        assert_eq!(
            r.finished.load(Ordering::SeqCst),
            3,
            "the run in progress finished within the grace"
        );
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn shutdown_with_no_run_in_progress_is_immediate() {
        let (runner, _r) = fake(1, false);
        let d = daemon(runner, "0 2 * * *", clock(), Duration::from_secs(60));
        let start = tokio::time::Instant::now();
        let report = d
            .run(
                tokio::time::sleep(Duration::from_secs(5)),
                std::future::pending(),
            )
            .await;
        assert_eq!(report.runs_started, vec![0]);
        assert_eq!(start.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_run_longer_than_the_grace_is_cancelled() {
        let (runner, r) = fake(600, false);
        let mut d = daemon(runner, "0 2 * * *", clock(), Duration::from_secs(60));
        d.run_on_start = true;
        let start = tokio::time::Instant::now();
        let report = d
            .run(
                tokio::time::sleep(Duration::from_secs(5)),
                std::future::pending(),
            )
            .await;
        assert_eq!(report.cancelled, 1);
        assert_eq!(r.cancelled.load(Ordering::SeqCst), 1);
        assert_eq!(r.finished.load(Ordering::SeqCst), 0);
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(65),
            "5 s running, then the 60 s grace"
        );
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_second_signal_cancels_at_once() {
        let (runner, _r) = fake(600, false);
        let mut d = daemon(runner, "0 2 * * *", clock(), Duration::from_secs(60));
        d.run_on_start = true;
        let start = tokio::time::Instant::now();
        // The second signal comes 2 s after the first.
        let report = d
            .run(
                tokio::time::sleep(Duration::from_secs(5)),
                tokio::time::sleep(Duration::from_secs(7)),
            )
            .await;
        assert_eq!(report.cancelled, 1);
        assert_eq!(start.elapsed(), Duration::from_secs(7));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn failing_runs_do_not_stop_the_daemon() {
        let (runner, r) = fake(1, true);
        let d = daemon(runner, "*/10 * * * * *", clock(), Duration::from_secs(60));
        let report = d
            .run(
                tokio::time::sleep(Duration::from_secs(55)),
                std::future::pending(),
            )
            .await;
        assert_eq!(report.runs_started, vec![5]);
        assert_eq!(r.finished.load(Ordering::SeqCst), 5);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_clock_jump_past_many_fire_times_runs_once() {
        let (runner, _r) = fake(1, false);
        let c = clock();
        let d = daemon(runner, "0 * * * *", Arc::clone(&c), Duration::from_secs(60));
        let jumper = {
            let c = Arc::clone(&c);
            async move {
                tokio::time::sleep(Duration::from_secs(10)).await;
                // Suspend for five hours: five hourly fire times pass while asleep.
                c.jump_secs.store(5 * 3600, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(120)).await;
            }
        };
        let report = d.run(jumper, std::future::pending()).await;
        assert_eq!(report.runs_started, vec![1], "one catch-up run, not five");
    }
}
