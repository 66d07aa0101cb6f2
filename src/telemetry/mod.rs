//! Logs and counters: the tracing subscriber (`pretty`, `json`, `journald`), the
//! lock-free [`Stats`] every stage updates and `stats` publishes, the stages' heartbeats
//! and the [`live`] view of the newest frames.

pub mod live;
pub mod plant;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::contract::{
    round_to, AlarmKind, AlarmStats, CameraState, CameraStats, Drops, Latencies, Latency,
    MqttStats, StatsMsg, WorkerMsg,
};

/// A stage silent for longer than this is not live: the watchdog stops its pings
/// (systemd then restarts us) and `/health/live` turns 503.
pub const LIVENESS: Duration = Duration::from_secs(45);

/// The stages, in frame order; heartbeats are kept per stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Stage {
    Capture,
    Preprocess,
    Classify,
    Decide,
    Publish,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::Capture,
        Stage::Preprocess,
        Stage::Classify,
        Stage::Decide,
        Stage::Publish,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Capture => "capture",
            Stage::Preprocess => "preprocess",
            Stage::Classify => "classify",
            Stage::Decide => "decide",
            Stage::Publish => "publish",
        }
    }
}

/// Installs the global tracing subscriber. `level` is a tracing filter; `RUST_LOG`, when
/// set, wins. The embedded broker (rumqttd) logs routine client disconnects as errors, so
/// its logs are off unless asked for (`RUST_LOG=info,rumqttd=info`).
pub fn init_logging(level: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(v)?,
        _ => EnvFilter::try_new(format!("rumqttd=off,rumqttc=warn,{level}"))?,
    };
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Pretty => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init()?,
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init()?,
        LogFormat::Journald => registry.with(tracing_journald::layer()?).try_init()?,
    }
    Ok(())
}

/// Latency histogram with log-spaced buckets from 1 µs to ~16 s; lock-free. The stats
/// publisher reads and resets one copy; the other counts since start.
pub struct Histogram {
    buckets: [AtomicU32; 96],
    totals: [AtomicU32; 96],
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU32::new(0)),
            totals: std::array::from_fn(|_| AtomicU32::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Four buckets per doubling.
    fn bucket(us: u64) -> usize {
        if us <= 1 {
            return 0;
        }
        let lz = 63 - us.leading_zeros() as usize;
        let frac = ((us >> lz.saturating_sub(2)) & 0b11) as usize;
        (lz * 4 + frac).min(95)
    }

    fn bucket_upper_us(i: usize) -> f64 {
        let lz = i / 4;
        let frac = i % 4;
        let base = (1u64 << lz) as f64;
        base + base * (frac as f64 + 1.0) / 4.0
    }

    pub fn record_us(&self, us: u64) {
        let b = Self::bucket(us);
        self.buckets[b].fetch_add(1, Relaxed);
        self.totals[b].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// Since start, for Prometheus: the sum of every value in seconds, the count, and the
    /// cumulative count at each power of two microseconds from 2 µs to 2^24 µs (~16.8 s),
    /// as (upper bound in seconds, count at or below it). Exact: every fourth bucket
    /// ends at a power of two.
    pub fn cumulative(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut seen = 0u64;
        let mut out = Vec::with_capacity(24);
        for (i, t) in self.totals.iter().enumerate() {
            seen += t.load(Relaxed) as u64;
            if i % 4 == 3 && i < 96 {
                out.push((Self::bucket_upper_us(i) / 1e6, seen));
            }
        }
        (self.sum_us.load(Relaxed) as f64 / 1e6, seen, out)
    }

    /// (count, p50 ms, p99 ms) since the last call; resets.
    pub fn take(&self) -> (u64, f64, f64) {
        Self::quantiles(
            self.buckets
                .iter()
                .map(|b| b.swap(0, Relaxed) as u64)
                .collect(),
        )
    }

    /// (count, p50 ms, p99 ms) since start.
    pub fn since_start(&self) -> (u64, f64, f64) {
        Self::quantiles(self.totals.iter().map(|b| b.load(Relaxed) as u64).collect())
    }

    fn quantiles(counts: Vec<u64>) -> (u64, f64, f64) {
        let total: u64 = counts.iter().sum();
        let q = |frac: f64| -> f64 {
            if total == 0 {
                return 0.0;
            }
            let want = (frac * total as f64).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= want {
                    return Self::bucket_upper_us(i) / 1000.0;
                }
            }
            0.0
        };
        (total, q(0.5), q(0.99))
    }
}

/// One classify worker's share: frames classified and time spent on them.
#[derive(Default)]
pub struct WorkerStats {
    pub frames: AtomicU64,
    pub busy_us: AtomicU64,
}

impl WorkerStats {
    pub fn record_us(&self, us: u64) {
        self.frames.fetch_add(1, Relaxed);
        self.busy_us.fetch_add(us, Relaxed);
    }
}

/// Per-worker counters for up to [`ClassifyWorkers::MAX`] classify workers (the most
/// `model.workers` allows); `running` of them are in use.
pub struct ClassifyWorkers {
    pub running: AtomicU64,
    each: [WorkerStats; ClassifyWorkers::MAX],
}

impl Default for ClassifyWorkers {
    fn default() -> Self {
        Self {
            running: AtomicU64::new(0),
            each: std::array::from_fn(|_| WorkerStats::default()),
        }
    }
}

impl ClassifyWorkers {
    pub const MAX: usize = 64;

    pub fn get(&self, worker: usize) -> Option<&WorkerStats> {
        self.each.get(worker)
    }

    /// The running workers' counters, worker 0 first.
    pub fn running(&self) -> &[WorkerStats] {
        let n = (self.running.load(Relaxed) as usize).min(Self::MAX);
        &self.each[..n]
    }
}

/// When each stage last showed life, in ms since the stats were made.
pub struct Heartbeats {
    started: Instant,
    last_ms: [AtomicU64; 5],
}

impl Default for Heartbeats {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            last_ms: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Heartbeats {
    /// Milliseconds since the stats were made.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn beat(&self, stage: Stage) {
        self.last_ms[stage as usize].store(self.now_ms(), Relaxed);
    }

    /// The stage that has been silent longest, and how long.
    pub fn stalest(&self) -> (Stage, Duration) {
        self.ages()
            .into_iter()
            .max_by_key(|&(_, age)| age)
            .unwrap_or((Stage::Capture, Duration::ZERO))
    }

    /// How long each stage has been silent.
    pub fn ages(&self) -> [(Stage, Duration); 5] {
        let now = self.now_ms();
        Stage::ALL.map(|s| {
            let age = now.saturating_sub(self.last_ms[s as usize].load(Relaxed));
            (s, Duration::from_millis(age))
        })
    }
}

/// Alarm events stored, per class (up to 64, the most a model may have) and event.
pub struct AlarmCounts {
    each: [[AtomicU64; 3]; 64],
}

impl Default for AlarmCounts {
    fn default() -> Self {
        Self {
            each: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }
}

impl AlarmCounts {
    pub fn add(&self, class: usize, kind: AlarmKind) {
        if let Some(c) = self.each.get(class) {
            c[kind as usize].fetch_add(1, Relaxed);
        }
    }

    /// Every event of every class.
    pub fn total(&self) -> u64 {
        self.each.iter().flatten().map(|c| c.load(Relaxed)).sum()
    }

    pub fn get(&self, class: usize, kind: AlarmKind) -> u64 {
        self.each
            .get(class)
            .map_or(0, |c| c[kind as usize].load(Relaxed))
    }
}

/// Counters shared by every stage. Totals since start, except the histograms.
#[derive(Default)]
pub struct Stats {
    pub frames_captured: AtomicU64,
    pub frames_published: AtomicU64,
    pub dropped_capture_queue: AtomicU64,
    pub dropped_results: AtomicU64,
    pub corrupt_files: AtomicU64,
    pub frame_errors: AtomicU64,
    pub camera_reconnects: AtomicU64,
    /// The camera source's state ([`CameraState`] as a number; 0: none).
    pub camera_state: AtomicU64,
    pub outbox_pending: AtomicU64,
    pub outbox_bytes: AtomicU64,
    pub outbox_dropped: AtomicU64,
    pub alarms_published: AtomicU64,
    pub alarms_acked_by_broker: AtomicU64,
    pub mqtt_connected: AtomicU64,
    pub mqtt_reconnects: AtomicU64,
    pub preprocess: Histogram,
    pub classify: Histogram,
    /// The first look's part of classify (frames with the first look on only).
    pub first_look: Histogram,
    pub decide: Histogram,
    pub end_to_end: Histogram,
    pub classify_workers: ClassifyWorkers,
    /// Alarm events stored in the outbox, per class and event.
    pub alarm_events: AlarmCounts,
    /// Frames decide did not count again because they repeated the previous one.
    pub repeats_skipped: AtomicU64,
    /// Pixels of the frames classified, and how many of them the detector ran on (the
    /// rest the first look found clean).
    pub frame_pixels: AtomicU64,
    pub detector_pixels: AtomicU64,
    /// Health conditions in force ([`crate::contract::Condition`] bits), and how many times
    /// what the retained `health` says changed: each condition change, and the first
    /// frame's measures (0: no frame measured yet).
    pub health: AtomicU64,
    pub health_changes: AtomicU64,
    /// `[strip]`: whether the line speed told over MQTT is fresh
    /// ([`SpeedState`](crate::stages::decide::strip::SpeedState) code; 0: a fixed speed).
    pub strip_speed: AtomicU64,
    /// The last frame's mean gray level, contrast and saturated fraction, times 1000.
    pub frame_mean_milli: AtomicU64,
    pub frame_stddev_milli: AtomicU64,
    pub frame_saturated_milli: AtomicU64,
    /// Evidence images written, not written (queue full), failed (disk), and removed by
    /// retention; bytes kept.
    pub evidence_written: AtomicU64,
    pub evidence_dropped: AtomicU64,
    pub evidence_errors: AtomicU64,
    pub evidence_removed: AtomicU64,
    pub evidence_bytes: AtomicU64,
    /// 1 once the model is loaded and the pipeline runs.
    pub model_loaded: AtomicU64,
    /// [`Heartbeats::now_ms`] when capture last delivered a frame (0: never).
    pub last_frame_ms: AtomicU64,
    /// The source has delivered everything it will (a folder replayed once).
    pub source_finished: AtomicU64,
    pub heartbeats: Heartbeats,
    /// What the live page and the metrics need beyond counters.
    pub live: crate::telemetry::live::LiveView,
    /// What the plant faces (Modbus TCP, Sparkplug B, OPC UA) read: alarms, the last verdict.
    pub plant: plant::PlantView,
    pub modbus: plant::ModbusStats,
    pub sparkplug: plant::SparkplugStats,
    pub opcua: plant::OpcUaStats,
}

impl Stats {
    /// A camera that is not streaming (opening, lost or backing off); false without one.
    pub fn camera_down(&self) -> bool {
        CameraState::from_code(self.camera_state.load(Relaxed))
            .is_some_and(|s| s != CameraState::Streaming)
    }

    /// The last frame's mean gray level, contrast and saturated fraction; None before a
    /// frame was measured.
    pub fn frame_measures(&self) -> Option<[f64; 3]> {
        (self.health_changes.load(Relaxed) > 0).then(|| {
            [
                &self.frame_mean_milli,
                &self.frame_stddev_milli,
                &self.frame_saturated_milli,
            ]
            .map(|a| round_to(a.load(Relaxed) as f64 / 1000.0, 1e3))
        })
    }

    /// The `stats` JSON: totals, and fps and latencies since the previous call.
    pub fn snapshot_json(&self, since: &mut (Instant, u64), model: &str) -> String {
        let now = Instant::now();
        let published = self.frames_published.load(Relaxed);
        let secs = now.duration_since(since.0).as_secs_f64().max(1e-9);
        let fps = (published - since.1) as f64 / secs;
        *since = (now, published);
        let stage = |h: &Histogram| {
            let (n, p50, p99) = h.take();
            Latency {
                n,
                p50_ms: round_to(p50, 1e3),
                p99_ms: round_to(p99, 1e3),
            }
        };
        let msg = StatsMsg {
            v: 1,
            ts: crate::frame::unix_ms(),
            model,
            frames: self.frames_captured.load(Relaxed),
            published,
            fps: round_to(fps, 1e3),
            drops: Drops {
                capture_queue: self.dropped_capture_queue.load(Relaxed),
                results: self.dropped_results.load(Relaxed),
                outbox: self.outbox_dropped.load(Relaxed),
            },
            corrupt_files: self.corrupt_files.load(Relaxed),
            frame_errors: self.frame_errors.load(Relaxed),
            camera: CameraStats {
                state: CameraState::name_of(self.camera_state.load(Relaxed)),
                down: self.camera_down(),
                reconnects: self.camera_reconnects.load(Relaxed),
            },
            mqtt: MqttStats {
                connected: self.mqtt_connected.load(Relaxed) == 1,
                reconnects: self.mqtt_reconnects.load(Relaxed),
            },
            alarms: AlarmStats {
                outbox_pending: self.outbox_pending.load(Relaxed),
                published: self.alarms_published.load(Relaxed),
                acked_by_broker: self.alarms_acked_by_broker.load(Relaxed),
            },
            classify_workers: self
                .classify_workers
                .running()
                .iter()
                .map(|w| WorkerMsg {
                    frames: w.frames.load(Relaxed),
                    busy_s: round_to(w.busy_us.load(Relaxed) as f64 / 1e6, 1e3),
                })
                .collect(),
            detector_share: {
                let (all, ran) = (
                    self.frame_pixels.load(Relaxed),
                    self.detector_pixels.load(Relaxed),
                );
                if all == 0 {
                    1.0
                } else {
                    round_to(ran as f64 / all as f64, 1e4)
                }
            },
            latency: Latencies {
                preprocess: stage(&self.preprocess),
                classify: stage(&self.classify),
                first_look: stage(&self.first_look),
                decide: stage(&self.decide),
                end_to_end: stage(&self.end_to_end),
            },
        };
        serde_json::to_string(&msg).expect("stats serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_land_in_the_right_bucket() {
        let h = Histogram::default();
        for _ in 0..98 {
            h.record_us(1000);
        }
        h.record_us(50_000);
        h.record_us(50_000);
        let (n, p50, p99) = h.take();
        assert_eq!(n, 100);
        assert!((1.0..=1.25).contains(&p50), "{p50}");
        assert!((50.0..=62.5).contains(&p99), "{p99}");
        assert_eq!(h.take().0, 0, "take resets");
        assert_eq!(h.since_start().0, 100, "the totals do not");
    }
}
