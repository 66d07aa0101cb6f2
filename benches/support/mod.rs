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

/// Runs a script of ../shared/anchors with `$INSPECTD_PYTHON` (default python3); its JSON
/// line, or None when Python or its packages are missing.
pub fn anchor(script: &str, args: &[String]) -> Option<serde_json::Value> {
    let python = std::env::var("INSPECTD_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(python)
        .arg(repo().join("../shared/anchors").join(script))
        .args(args)
        .output()
        .ok()?;
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
    serde_json::from_slice(
        out.stdout
            .split(|&b| b == b'\n')
            .find(|l| l.starts_with(b"{"))?,
    )
    .ok()
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
