//! The stages a frame passes through, in order: [`capture`] (camera or folder) →
//! [`preprocess`] (blur, Otsu, regions; [`health`] measures the frame) → [`classify`]
//! (the model) → [`decide`] (thresholds, alarms). Each stage's loop lives in its own file
//! (`run`); `pipeline` only builds the queues and starts the threads. This file holds
//! what every stage thread is handed: the shared counters, its heartbeat and the stop flag.

pub mod capture;
pub mod classify;
pub mod decide;
pub mod health;
pub mod look;
pub mod preprocess;
pub mod rewrite;
pub mod stem;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::telemetry::{Stage, Stats};

/// Counters (with the heartbeats) and the stop flag, shared by every stage thread.
#[derive(Clone)]
pub struct StageContext {
    pub stats: Arc<Stats>,
    pub stop: Arc<AtomicBool>,
}

impl StageContext {
    pub fn new(stats: Arc<Stats>) -> Self {
        Self {
            stats,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The stage shows life (the watchdog and the health checks read it).
    pub fn beat(&self, stage: Stage) {
        self.stats.heartbeats.beat(stage);
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Relaxed)
    }

    /// The stage that has not shown life for longest, and how long.
    pub fn stalest(&self) -> (Stage, Duration) {
        self.stats.heartbeats.stalest()
    }

    /// A stage's loop over its input queue: beats at least every second, hands each item
    /// to `f`, and ends when the queue is closed and empty or `f` returns false.
    pub fn for_each<T>(&self, stage: Stage, input: &Receiver<T>, f: impl FnMut(T) -> bool) {
        self.for_each_when(stage, None, input, f)
    }

    /// [`for_each`](Self::for_each), but with `credits` it takes an item only after
    /// taking a credit: one is handed back each time a classify worker finishes a frame,
    /// so the frame taken is the newest one there is when a worker is free, not one
    /// that then waits behind the frames in work.
    pub fn for_each_when<T>(
        &self,
        stage: Stage,
        credits: Option<&Receiver<()>>,
        input: &Receiver<T>,
        mut f: impl FnMut(T) -> bool,
    ) {
        let mut credit = false;
        loop {
            self.beat(stage);
            if let (Some(credits), false) = (credits, credit) {
                match credits.recv_timeout(Duration::from_secs(1)) {
                    Ok(()) => credit = true,
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            match input.recv_timeout(Duration::from_secs(1)) {
                Ok(item) => {
                    credit = false;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::{bounded, unbounded};
    use std::sync::Mutex;
    use std::time::Instant;

    #[test]
    fn with_credits_an_item_is_taken_only_when_a_credit_is() {
        let ctx = StageContext::new(Arc::new(Stats::default()));
        let (tx, rx) = unbounded::<u32>();
        let (credit_tx, credit_rx) = bounded::<()>(4);
        for i in 0..5 {
            tx.send(i).unwrap();
        }
        let taken = Arc::new(Mutex::new(Vec::new()));
        let (c, t) = (ctx.clone(), taken.clone());
        let stage = std::thread::spawn(move || {
            c.for_each_when(Stage::Preprocess, Some(&credit_rx), &rx, |i| {
                t.lock().unwrap().push(i);
                true
            })
        });
        std::thread::sleep(Duration::from_millis(100));
        assert!(taken.lock().unwrap().is_empty(), "no credit, nothing taken");
        credit_tx.send(()).unwrap();
        credit_tx.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while taken.lock().unwrap().len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(*taken.lock().unwrap(), vec![0, 1], "one item per credit");
        // The input closing ends the stage once it holds a credit.
        drop(tx);
        credit_tx.send(()).unwrap();
        for _ in 0..3 {
            let _ = credit_tx.try_send(());
        }
        stage.join().unwrap();
        assert_eq!(*taken.lock().unwrap(), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn the_stage_ends_when_no_credit_can_come_any_more() {
        let ctx = StageContext::new(Arc::new(Stats::default()));
        let (_tx, rx) = unbounded::<u32>();
        let (credit_tx, credit_rx) = bounded::<()>(1);
        drop(credit_tx);
        ctx.for_each_when(Stage::Preprocess, Some(&credit_rx), &rx, |_| true);
    }
}
