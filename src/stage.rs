//! What every stage thread is handed: the shared counters, its heartbeat and the stop
//! flag. Each stage's loop lives in the stage's own file (`run`); `pipeline` only builds
//! the queues and starts the threads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::telemetry::Stats;

/// The stages, in frame order; heartbeats are kept per stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// Counters, heartbeats and the stop flag, shared by every stage thread.
#[derive(Clone)]
pub struct StageContext {
    pub stats: Arc<Stats>,
    pub stop: Arc<AtomicBool>,
    heartbeats: Arc<[AtomicU64; 5]>,
    started: Instant,
}

impl StageContext {
    pub fn new(stats: Arc<Stats>) -> Self {
        Self {
            stats,
            stop: Arc::new(AtomicBool::new(false)),
            heartbeats: Arc::new(std::array::from_fn(|_| AtomicU64::new(0))),
            started: Instant::now(),
        }
    }

    /// The stage shows life (the watchdog and the health checks read it).
    pub fn beat(&self, stage: Stage) {
        self.heartbeats[stage as usize].store(self.started.elapsed().as_millis() as u64, Relaxed);
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Relaxed)
    }

    /// The stage that has not shown life for longest, and how long.
    pub fn stalest(&self) -> (Stage, Duration) {
        let now = self.started.elapsed().as_millis() as u64;
        Stage::ALL
            .into_iter()
            .map(|s| {
                (
                    s,
                    now.saturating_sub(self.heartbeats[s as usize].load(Relaxed)),
                )
            })
            .max_by_key(|&(_, age)| age)
            .map(|(s, age)| (s, Duration::from_millis(age)))
            .unwrap_or((Stage::Capture, Duration::ZERO))
    }

    /// A stage's loop over its input queue: beats at least every second, hands each item
    /// to `f`, and ends when the queue is closed and empty or `f` returns false.
    pub fn for_each<T>(&self, stage: Stage, input: &Receiver<T>, mut f: impl FnMut(T) -> bool) {
        loop {
            self.beat(stage);
            match input.recv_timeout(Duration::from_secs(1)) {
                Ok(item) => {
                    if !f(item) {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}
