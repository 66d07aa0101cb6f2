//! The pipeline: one named thread per stage, joined by bounded channels.
//!
//! ```text
//! capture ─▶ preprocess ─▶ classify ─▶ decide ─▶ publish ─▶ MQTT
//!    (camera: drops the oldest queued frame when behind; replay: waits)  ▲ cmd/ack, reloads
//! ```
//!
//! A camera never blocks on the stages behind it: when the first queue is full capture
//! drops the oldest waiting frame and counts it. A replayed folder waits for room
//! instead, so every file is inspected (`capture.fps = 0`: as fast as the pipeline
//! goes). Every later stage blocks on the next one, which is safe because publish never
//! waits on the broker. Alarm events get their ids
//! and are fsync'd to the outbox in decide, before anything can publish them.
//!
//! Stopping is something passed in: [`Pipeline::stop`] stops capture; the frames in
//! flight drain through every stage and are published, then `status` goes offline.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, SendTimeoutError, Sender, TrySendError};
use thiserror::Error;
use tracing::{debug, error, info, warn};

use crate::capture::{CaptureError, Read, Source};
use crate::classify::{Classifier, ClassifyError};
use crate::config::{AlarmConfig, DecideConfig, MqttMode, Settings, SourceKind};
use crate::decide::{AlarmKind, AlarmTracker, Decider};
use crate::frame::{FramePool, PooledFrame};
use crate::outbox::{Outbox, OutboxError};
use crate::preprocess::Preprocessor;
use crate::publish::{alarm_json, Command, Decided, PublishConfig, Publisher, Topics};
use crate::reorder::Reorder;
use crate::telemetry::Stats;

#[derive(Debug, Error)]
pub enum StartError {
    #[error(transparent)]
    Classify(#[from] ClassifyError),
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("{0}")]
    Config(String),
    #[error("MQTT: {0}")]
    Mqtt(String),
    #[error("cannot start a thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Messages for the decide stage besides frames.
#[derive(Debug)]
pub enum Control {
    /// A reloaded config's thresholds and alarm settings.
    Reconfigure(DecideConfig, AlarmConfig),
}

/// Stage names, in order, for heartbeats and logs.
pub const STAGES: [&str; 5] = ["capture", "preprocess", "classify", "decide", "publish"];

/// A running pipeline. Dropping it stops it and joins the threads.
pub struct Pipeline {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    control: Sender<Control>,
    heartbeats: Arc<[AtomicU64; 5]>,
    started: Instant,
}

impl Pipeline {
    /// Loads the model, opens the outbox and the source, connects to (or starts) the
    /// broker and starts every stage.
    pub fn start(settings: &Settings, stats: Arc<Stats>) -> Result<Pipeline, StartError> {
        // A camera's frame size is known: optimise for it now, not on the first frame.
        let frame_size = (settings.capture.source == SourceKind::V4l2)
            .then_some((settings.capture.width, settings.capture.height));
        let workers = settings.model.worker_count();
        let classifiers = (0..workers)
            .map(|_| Classifier::new(&settings.model, frame_size))
            .collect::<Result<Vec<_>, _>>()?;
        let meta = classifiers[0].meta().clone();
        let decider = Decider::new(&settings.decide, &meta.labels).map_err(StartError::Config)?;
        let classes = meta.labels.clone();
        if classes.len() > 64 {
            return Err(StartError::Config(format!(
                "the model has {} classes; inspectd handles 64",
                classes.len()
            )));
        }
        let outbox = Arc::new(Mutex::new(Outbox::open(
            &settings.state.dir,
            settings.state.max_outbox_bytes,
        )?));
        let mut source = Source::open(&settings.capture)?;
        let replay = source.waits_for_room();
        if settings.mqtt.mode == MqttMode::Embedded {
            crate::broker::start(&settings.mqtt.host, settings.mqtt.port as u16)
                .map_err(StartError::Mqtt)?;
        }
        let topics = Topics::new(&settings.topic_root(), &classes);
        let (cmd_tx, cmd_rx) = bounded::<Command>(64);
        let mut publisher = Publisher::start(
            PublishConfig::from_settings(settings),
            topics,
            outbox.clone(),
            stats.clone(),
            meta.labels.clone(),
            meta.id.clone(),
            vec![false; classes.len()],
            cmd_tx,
        )
        .map_err(StartError::Mqtt)?;

        let stop = Arc::new(AtomicBool::new(false));
        let heartbeats: Arc<[AtomicU64; 5]> = Arc::new(std::array::from_fn(|_| AtomicU64::new(0)));
        let started = Instant::now();
        let beat = {
            let hb = heartbeats.clone();
            move |stage: usize| hb[stage].store(started.elapsed().as_millis() as u64, Relaxed)
        };
        let queue = settings.capture.queue;
        let pool = FramePool::new(queue + 16);
        let (cap_tx, cap_rx) = bounded::<PooledFrame>(queue);
        let (pre_tx, pre_rx) = bounded::<PooledFrame>(2);
        let (cls_tx, cls_rx) = bounded::<PooledFrame>(2);
        let (dec_tx, dec_rx) = bounded::<ToPublish>(8);
        let (ctl_tx, ctl_rx) = bounded::<Control>(64);
        let mut threads = Vec::new();

        // capture
        {
            let (stop, stats, beat, oldest) =
                (stop.clone(), stats.clone(), beat.clone(), cap_rx.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("capture".into())
                    .spawn(move || {
                        let mut seq = 0u64;
                        while !stop.load(Relaxed) {
                            beat(0);
                            let mut frame = pool.take();
                            frame.reset(seq + 1, 0, 0);
                            match source.read(&mut frame, &stats, &stop) {
                                Read::Frame => {}
                                Read::Nothing => continue,
                                Read::End => {
                                    info!(frames = seq, "Source finished; draining the pipeline.");
                                    break;
                                }
                            }
                            seq += 1;
                            // Stamp the frame when it arrived, not when the read began
                            // (the replay pacer or the camera may have kept us waiting).
                            frame.ts_ms = crate::frame::unix_ms();
                            frame.captured_at = Some(Instant::now());
                            stats.frames_captured.fetch_add(1, Relaxed);
                            let mut pending = frame;
                            if replay {
                                // A replay waits for room: every file is inspected.
                                loop {
                                    match cap_tx.send_timeout(pending, Duration::from_millis(200)) {
                                        Ok(()) => break,
                                        Err(SendTimeoutError::Timeout(f)) => {
                                            beat(0);
                                            if stop.load(Relaxed) {
                                                return;
                                            }
                                            pending = f;
                                        }
                                        Err(SendTimeoutError::Disconnected(_)) => return,
                                    }
                                }
                                continue;
                            }
                            loop {
                                match cap_tx.try_send(pending) {
                                    Ok(()) => break,
                                    Err(TrySendError::Full(f)) => {
                                        if let Ok(old) = oldest.try_recv() {
                                            stats.dropped_capture_queue.fetch_add(1, Relaxed);
                                            debug!(
                                                seq = old.seq,
                                                "Frame queue full; dropped the oldest frame."
                                            );
                                        }
                                        pending = f;
                                    }
                                    Err(TrySendError::Disconnected(_)) => return,
                                }
                            }
                        }
                    })?,
            );
        }

        // preprocess
        {
            let mut pre = Preprocessor::new(&settings.preprocess);
            let (stats, beat) = (stats.clone(), beat.clone());
            let mut order = 0u64;
            threads.push(
                std::thread::Builder::new()
                    .name("preprocess".into())
                    .spawn(move || loop {
                        beat(1);
                        match cap_rx.recv_timeout(Duration::from_secs(1)) {
                            Ok(mut frame) => {
                                frame.order = order;
                                order += 1;
                                let t = Instant::now();
                                pre.process(&mut frame);
                                let us = t.elapsed().as_micros() as u64;
                                frame.times.preprocess_us = us as u32;
                                stats.preprocess.record_us(us);
                                if pre_tx.send(frame).is_err() {
                                    return;
                                }
                            }
                            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                        }
                    })?,
            );
        }

        // classify: `workers` threads take frames from one queue; decide restores order.
        for (i, mut classifier) in classifiers.into_iter().enumerate() {
            let (stats, beat, pre_rx, cls_tx) =
                (stats.clone(), beat.clone(), pre_rx.clone(), cls_tx.clone());
            let name = if workers == 1 {
                "classify".to_string()
            } else {
                format!("classify-{i}")
            };
            threads.push(std::thread::Builder::new().name(name).spawn(move || loop {
                beat(2);
                match pre_rx.recv_timeout(Duration::from_secs(1)) {
                    Ok(mut frame) => {
                        let t = Instant::now();
                        if let Err(e) = classifier.classify(&mut frame) {
                            stats.frame_errors.fetch_add(1, Relaxed);
                            warn!(seq = frame.seq, error = %e, "Could not classify a frame; skipped it.");
                            frame.failed = true;
                        }
                        let us = t.elapsed().as_micros() as u64;
                        frame.times.classify_us = us as u32;
                        stats.classify.record_us(us);
                        if cls_tx.send(frame).is_err() {
                            return;
                        }
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                }
            })?);
        }
        drop((pre_rx, cls_tx));

        // decide
        {
            let mut tracker = AlarmTracker::new(&settings.alarm, classes.clone());
            // Every frame that can be between preprocess and decide at once.
            let mut reorder = Reorder::new(2 * (queue + 16));
            let mut decider = decider;
            let (stats, beat, outbox) = (stats.clone(), beat.clone(), outbox.clone());
            let labels = meta.labels.clone();
            threads.push(std::thread::Builder::new().name("decide".into()).spawn(move || {
                let mut changes = Vec::new();
                let store = |changes: &mut Vec<crate::decide::AlarmChange>, tracker: &mut AlarmTracker| {
                    let mut out = Vec::with_capacity(changes.len());
                    for c in changes.drain(..) {
                        let res = outbox.lock().expect("outbox lock").append(|id| alarm_json(id, &c));
                        match res {
                            Ok(id) => {
                                if c.kind == AlarmKind::Raised {
                                    tracker.set_raised_id(&c.class, id);
                                }
                                info!(id, class = %c.class, event = c.kind.as_str(), frames = c.frames, window = c.window, "Alarm.");
                                out.push((id, c));
                            }
                            Err(e) => error!(error = %e, class = %c.class, event = c.kind.as_str(), "Could not store an alarm event; it is lost."),
                        }
                    }
                    out
                };
                let active_bits = |t: &AlarmTracker| (0..t.classes().len()).fold(0u64, |m, i| m | ((t.active(i) as u64) << i));
                loop {
                    beat(3);
                    select! {
                        recv(cls_rx) -> msg => {
                            let Ok(frame) = msg else { return };
                            reorder.push(frame.order, frame);
                            while let Some(mut frame) = reorder.pop() {
                                if frame.failed {
                                    continue;
                                }
                                let t = Instant::now();
                                decider.decide(&mut frame);
                                let present = |i: usize| frame.verdict.defects.iter().any(|d| d.label == i);
                                tracker.observe(frame.seq, present, &mut changes);
                                let alarms = store(&mut changes, &mut tracker);
                                let us = t.elapsed().as_micros() as u64;
                                frame.times.decide_us = us as u32;
                                stats.decide.record_us(us);
                                let active = active_bits(&tracker);
                                if dec_tx.send(ToPublish::Frame(Decided { frame, alarms, active })).is_err() {
                                    return;
                                }
                            }
                        }
                        recv(cmd_rx) -> msg => {
                            if let Ok(Command::Ack(id)) = msg {
                                if !tracker.ack(id, &mut changes) {
                                    warn!(id = ?id, "cmd/ack names no active alarm; ignored.");
                                }
                                store(&mut changes, &mut tracker);
                                let _ = dec_tx.send(ToPublish::AlarmsStored { active: active_bits(&tracker) });
                            }
                        }
                        recv(ctl_rx) -> msg => match msg {
                            Ok(Control::Reconfigure(d, a)) => match Decider::new(&d, &labels) {
                                Ok(new) => {
                                    decider = new;
                                    tracker.reconfigure(&a);
                                    info!("Applied the new thresholds and alarm settings.");
                                }
                                Err(e) => error!(error = %e, "Config reload refused; keeping the running thresholds."),
                            },
                            Err(_) => {}
                        },
                        default(Duration::from_secs(1)) => {}
                    }
                }
            })?);
        }

        // publish
        {
            let (stats, beat) = (stats.clone(), beat.clone());
            let interval = Duration::from_secs_f64(settings.mqtt.stats_interval_s);
            let model_id = meta.id.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("publish".into())
                    .spawn(move || {
                        let mut next_stats = Instant::now() + interval;
                        let mut since = (Instant::now(), 0u64);
                        loop {
                            beat(4);
                            let wait = next_stats
                                .saturating_duration_since(Instant::now())
                                .min(Duration::from_secs(1));
                            match dec_rx.recv_timeout(wait) {
                                Ok(ToPublish::Frame(d)) => publisher.publish(&d),
                                Ok(ToPublish::AlarmsStored { active }) => {
                                    publisher.set_active(active);
                                    publisher.publish_pending();
                                }
                                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                            }
                            if Instant::now() >= next_stats {
                                publisher.publish_stats(stats.snapshot_json(&mut since, &model_id));
                                next_stats += interval;
                                if next_stats < Instant::now() {
                                    next_stats = Instant::now() + interval;
                                }
                            }
                        }
                        publisher.publish_stats(stats.snapshot_json(&mut since, &model_id));
                        publisher.shutdown(Duration::from_secs(2));
                        info!("Pipeline drained; status is offline.");
                    })?,
            );
        }

        info!(model = %meta.id, labels = meta.labels.len(), classify_workers = workers, "Pipeline running.");
        Ok(Pipeline {
            stop,
            threads,
            control: ctl_tx,
            heartbeats,
            started,
        })
    }

    /// Stops capture; the frames in flight are finished and published.
    pub fn stop(&self) {
        self.stop.store(true, Relaxed);
    }

    /// True once every stage thread has ended (a finished non-looping folder, or a stop).
    pub fn finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    /// Waits for every stage to end.
    pub fn join(mut self) {
        for t in self.threads.drain(..) {
            let name = t.thread().name().unwrap_or("?").to_string();
            if t.join().is_err() {
                error!(stage = %name, "A pipeline thread panicked.");
            }
        }
    }

    /// Sends a control message to the decide stage.
    pub fn control(&self, msg: Control) {
        if self.control.try_send(msg).is_err() {
            warn!("Decide stage is not taking control messages; dropped one.");
        }
    }

    /// The stage that has not shown life for longest, and how long (for the watchdog).
    pub fn stalest_stage(&self) -> (&'static str, Duration) {
        let now = self.started.elapsed().as_millis() as u64;
        let (i, age) = self
            .heartbeats
            .iter()
            .enumerate()
            .map(|(i, h)| (i, now.saturating_sub(h.load(Relaxed))))
            .max_by_key(|&(_, age)| age)
            .unwrap_or((0, 0));
        (STAGES[i], Duration::from_millis(age))
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// What decide hands to publish.
enum ToPublish {
    Frame(Decided),
    /// Alarm events were stored without a frame (acknowledgements): send them, and the
    /// active set after them.
    AlarmsStored {
        active: u64,
    },
}
