//! Shared by the benchmark harnesses: run a child and read its wall time and peak RSS.

#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::expect_used,
    clippy::unwrap_used
)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Wall time, peak RSS in bytes, and exit code of one child run.
pub struct Measured {
    pub wall: Duration,
    pub peak_rss: u64,
    pub code: i32,
}

/// Runs the command to completion and measures it. The child is reaped by `wait4`, which
/// is what yields its resource usage. Linux carries a process's peak RSS across fork and
/// exec, so the calling process must itself stay small.
#[allow(clippy::zombie_processes)]
pub fn measure(cmd: &mut Command) -> Measured {
    let start = Instant::now();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut status = 0;
    let mut usage = zeroed_rusage();
    let pid = child.id() as libc::pid_t;
    assert_eq!(wait4(pid, &mut status, &mut usage), pid);
    Measured {
        wall: start.elapsed(),
        peak_rss: usage.ru_maxrss as u64 * 1024,
        code: libc::WEXITSTATUS(status),
    }
}

#[allow(unsafe_code)]
fn zeroed_rusage() -> libc::rusage {
    // SAFETY: rusage is a plain C struct of integers and timevals; all-zero is valid.
    unsafe { std::mem::zeroed() }
}

#[allow(unsafe_code)]
fn wait4(pid: libc::pid_t, status: &mut i32, usage: &mut libc::rusage) -> libc::pid_t {
    // SAFETY: pid is our own child, and both out-pointers are valid for the call.
    unsafe { libc::wait4(pid, status, 0, usage) }
}

/// CPU seconds (user + system) a process has used so far, from /proc.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
