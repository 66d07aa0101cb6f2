//! Shared by the benches: the camera-sized frame, medians, and the Python anchors.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Instant;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn line_frame() -> PathBuf {
    repo().join("../shared/datasets/frames/line_1280x1024.png")
}

/// The median of some figures (sorted in place).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median milliseconds of `iters` runs after a warm-up.
pub fn median_ms(iters: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..iters.min(10) {
        f();
    }
    let mut t: Vec<f64> = (0..iters)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

/// The Python the anchors run with: `$INSPECTD_PYTHON`, else `models/.venv` when it
/// exists, else python3.
pub fn python() -> String {
    std::env::var("INSPECTD_PYTHON").unwrap_or_else(|_| {
        let venv = repo().join("models/.venv/bin/python");
        if venv.exists() {
            venv.display().to_string()
        } else {
            "python3".into()
        }
    })
}

/// Runs a script of ../shared/anchors with [`python`]; its JSON line, or None when
/// Python or its packages are missing.
pub fn anchor(script: &str, args: &[String]) -> Option<serde_json::Value> {
    anchor_cpu(script, args).map(|(v, _)| v)
}

/// [`anchor`], with the CPU-seconds (user + system, getrusage) the script's process took.
pub fn anchor_cpu(script: &str, args: &[String]) -> Option<(serde_json::Value, f64)> {
    let before = children_cpu_seconds();
    let out = std::process::Command::new(python())
        .arg(repo().join("../shared/anchors").join(script))
        .args(args)
        .output()
        .ok()?;
    let cpu = children_cpu_seconds() - before;
    if !out.status.success() {
        eprintln!(
            "anchor {script} not run: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
        return None;
    }
    let json = serde_json::from_slice(
        out.stdout
            .split(|&b| b == b'\n')
            .find(|l| l.starts_with(b"{"))?,
    )
    .ok()?;
    Some((json, cpu))
}

fn rusage_seconds(who: libc::c_int) -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given; `who` is RUSAGE_SELF or _CHILDREN.
    unsafe { libc::getrusage(who, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// User + system CPU time of this process so far, in seconds.
pub fn cpu_seconds() -> f64 {
    rusage_seconds(libc::RUSAGE_SELF)
}

/// This thread's CPU time, in milliseconds: a clock that a busy machine's other work
/// does not stretch (wall time does).
pub fn thread_cpu_ms() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 * 1e3 + t.tv_nsec as f64 * 1e-6
}

/// Median milliseconds of this thread's CPU time over `iters` runs after a warm-up.
pub fn median_thread_cpu_ms(iters: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..iters.min(10) {
        f();
    }
    let mut t: Vec<f64> = (0..iters)
        .map(|_| {
            let s = thread_cpu_ms();
            f();
            thread_cpu_ms() - s
        })
        .collect();
    median(&mut t)
}

/// User + system CPU time of the child processes waited for so far, in seconds.
pub fn children_cpu_seconds() -> f64 {
    rusage_seconds(libc::RUSAGE_CHILDREN)
}

/// The CPU's model name (lscpu's "Model name"), printed beside every figure.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}
