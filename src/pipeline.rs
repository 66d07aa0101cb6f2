//! The pipeline: one named thread per stage, joined by bounded channels.
//!
//! ```text
//! capture ─▶ preprocess ─▶ classify ─▶ decide ─▶ publish ─▶ MQTT
//!    (camera: drops the oldest queued frame when behind; replay: waits)  ▲ cmd/ack, reloads
//! ```
//!
//! A camera never blocks on the stages behind it: when the first queue is full capture
//! drops the oldest waiting frame and counts it, and preprocess takes a frame only when a
//! classify worker is free (credits handed back by the workers), so when the model is
//! the bottleneck a frame waits at most one frame interval in the capture queue (the
//! default `capture.queue = 1`), not behind every frame in the queues after it. A
//! replayed folder waits for room instead, so every file is inspected (`capture.fps =
//! 0`: as fast as the pipeline goes). Every later stage blocks on the next one, which is safe because publish never
//! waits on the broker. `model.workers` classify threads share one queue; decide puts
//! their frames back in order. Alarm events get their ids and are fsync'd to the outbox
//! in decide, before anything can publish them.
//!
//! Each stage's loop lives in its own file (`run`); this file only builds the queues and
//! starts the threads.
//!
//! Stopping is something passed in: [`Pipeline::stop`] stops capture; the frames in
//! flight drain through every stage and are published, then `status` goes offline.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, Sender};
use thiserror::Error;
use tracing::{error, info, warn};

use crate::config::{MqttMode, Settings, SourceKind};
use crate::contract::{Command, Topics};
use crate::frame::{FramePool, PooledFrame};
use crate::mqtt::{PublishConfig, Publisher};
use crate::stages::capture::{CaptureError, CaptureStage, Source};
use crate::stages::classify::{Classifier, ClassifyError};
use crate::stages::decide::reorder::Reorder;
pub use crate::stages::decide::Control;
use crate::stages::decide::{AlarmTracker, DecideStage, Decider, Evidence, ToPublish};
use crate::stages::health::HealthMonitor;
use crate::stages::preprocess::Preprocessor;
use crate::stages::StageContext;
use crate::state::alarms::AlarmState;
use crate::state::outbox::{Outbox, OutboxError};
use crate::telemetry::Stats;

/// How long capture waits at start for the broker's retained commands (README:
/// Delivery); a broker that refuses or cannot be reached ends the wait at once.
const BROKER_WAIT: Duration = Duration::from_secs(2);

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

/// A running pipeline. Dropping it stops it and joins the threads.
pub struct Pipeline {
    ctx: StageContext,
    /// The plant faces (OPC UA, Modbus, Sparkplug); stopped after the stages.
    _faces: crate::plant::Faces,
    threads: Vec<JoinHandle<()>>,
    control: Sender<Control>,
}

impl Pipeline {
    /// Loads the model, opens the outbox and the source, connects to (or starts) the
    /// broker and starts every stage.
    pub fn start(settings: &Settings, stats: Arc<Stats>) -> Result<Pipeline, StartError> {
        // A camera's frame size is known: optimise for it now, not on the first frame.
        let frame_size = (settings.capture.source == SourceKind::V4l2)
            .then_some((settings.capture.width, settings.capture.height));
        let workers = settings.model.worker_count();
        let first = Classifier::new(&settings.model, frame_size)?;
        let mut classifiers = (1..workers)
            .map(|_| first.worker())
            .collect::<Result<Vec<_>, _>>()?;
        classifiers.insert(0, first);
        let meta = classifiers[0].meta().clone();
        let classes = meta.labels.clone();
        if classes.len() > 64 {
            return Err(StartError::Config(format!(
                "the model has {} classes; inspectd handles 64",
                classes.len()
            )));
        }
        if let Some(st) = &settings.strip {
            crate::stages::decide::coil::check_rules(&st.block, &classes)
                .map_err(StartError::Config)?;
        }
        let queue = settings.capture.queue;
        let outbox = Arc::new(Mutex::new(Outbox::open(
            &settings.state.dir,
            settings.state.max_outbox_bytes,
        )?));
        let state = AlarmState::new(&settings.state.dir);
        let mut tracker = AlarmTracker::new(&settings.alarm, classes.clone());
        let alarms_before = outbox.lock().expect("outbox lock").next_id() > 1;
        let restored = tracker.restore(&state.load(alarms_before));
        stats.plant.set_alarms(tracker.views());
        stats.live.set_model(&classes, &meta.id);
        let mut threads = Vec::new();
        let evidence = if settings.evidence.enabled {
            let (sink, handle) = crate::state::evidence::start(
                &settings.evidence,
                &settings.state.dir,
                stats.clone(),
            )?;
            threads.push(handle);
            Some(Evidence {
                sink,
                sample_every: settings.evidence.sample_every,
                defect_frames: 0,
            })
        } else {
            None
        };
        let decide = DecideStage {
            decider: Decider::new(&settings.decide, &classes).map_err(StartError::Config)?,
            tracker,
            outbox: outbox.clone(),
            state,
            // Every frame that can be between preprocess and decide at once.
            reorder: Reorder::new(2 * (queue + 16)),
            evidence,
            skip_repeats: settings.decide.skip_repeats,
            strip: settings
                .strip
                .as_ref()
                .map(crate::stages::decide::strip::Strip::new),
            ended: Vec::new(),
            reports: settings
                .strip
                .as_ref()
                .map(|st| crate::stages::decide::coil::Reports {
                    state_dir: settings.state.dir.clone(),
                    keep: st.keep_coils,
                }),
        };
        let capture = CaptureStage {
            source: Source::open(&settings.capture)?,
            pool: FramePool::new(queue + 16),
        };
        let live = !capture.source.waits_for_room();
        if settings.mqtt.mode == MqttMode::Embedded {
            crate::mqtt::broker::start(&settings.mqtt.host, settings.mqtt.port as u16)
                .map_err(StartError::Mqtt)?;
        }
        let (cmd_tx, cmd_rx) = bounded::<Command>(64);
        let face_commands = cmd_tx.clone();
        let (primed_tx, primed_rx) = bounded::<()>(1);
        let publisher = Publisher::start(
            PublishConfig::from_settings(settings),
            Topics::new(&settings.topic_root(), &classes),
            outbox,
            stats.clone(),
            meta.labels.clone(),
            meta.id.clone(),
            restored,
            cmd_tx,
            primed_tx,
        )
        .map_err(StartError::Mqtt)?;
        // The broker's retained commands (the coil being inspected, the line speed) come
        // before the first frame, so it is stamped with them; a broker that is down or
        // slow holds capture back at most BROKER_WAIT.
        if primed_rx.recv_timeout(BROKER_WAIT).is_err() {
            warn!(
                wait_s = BROKER_WAIT.as_secs_f64(),
                "The MQTT broker has not answered yet; capture starts without its retained commands."
            );
        }
        let faces = crate::plant::Faces::start(settings, stats.clone(), face_commands)
            .map_err(StartError::Config)?;

        let ctx = StageContext::new(stats);
        let (cap_tx, cap_rx) = bounded::<PooledFrame>(queue);
        let (pre_tx, pre_rx) = bounded::<PooledFrame>(2);
        let (cls_tx, cls_rx) = bounded::<PooledFrame>(2);
        let (dec_tx, dec_rx) = bounded::<ToPublish>(8);
        let (ctl_tx, ctl_rx) = bounded::<Control>(64);
        let mut spawn = |name: String, f: Box<dyn FnOnce() + Send>| -> std::io::Result<()> {
            threads.push(std::thread::Builder::new().name(name).spawn(f)?);
            Ok(())
        };
        let (c, oldest) = (ctx.clone(), cap_rx.clone());
        spawn(
            "capture".into(),
            Box::new(move || capture.run(cap_tx, oldest, c)),
        )?;
        // Live: preprocess takes a frame only when a classify worker is free (one credit
        // per worker), so the frame classified is the newest, not one that waited.
        let (credit_tx, credit_rx) = bounded::<()>(workers);
        for _ in 0..workers {
            let _ = credit_tx.try_send(());
        }
        let (c, pre) = (ctx.clone(), Preprocessor::new(&settings.preprocess));
        let credits = live.then_some(credit_rx);
        let health = HealthMonitor::new(&settings.health);
        spawn(
            "preprocess".into(),
            Box::new(move || pre.run(cap_rx, pre_tx, credits, health, c)),
        )?;
        ctx.stats
            .classify_workers
            .running
            .store(workers as u64, Relaxed);
        for (i, classifier) in classifiers.into_iter().enumerate() {
            let (c, input, output) = (ctx.clone(), pre_rx.clone(), cls_tx.clone());
            let credits = live.then(|| credit_tx.clone());
            let name = if workers == 1 {
                "classify".into()
            } else {
                format!("classify-{i}")
            };
            spawn(
                name,
                Box::new(move || classifier.run(i, input, output, credits, c)),
            )?;
        }
        drop(credit_tx);
        drop((pre_rx, cls_tx));
        let c = ctx.clone();
        spawn(
            "decide".into(),
            Box::new(move || decide.run(cls_rx, cmd_rx, ctl_rx, dec_tx, c)),
        )?;
        let (c, interval) = (
            ctx.clone(),
            Duration::from_secs_f64(settings.mqtt.stats_interval_s),
        );
        let model_id = meta.id.clone();
        spawn(
            "publish".into(),
            Box::new(move || publisher.run(dec_rx, interval, model_id, c)),
        )?;

        ctx.stats.model_loaded.store(1, Relaxed);
        info!(model = %meta.id, labels = meta.labels.len(), classify_workers = workers, threads_per_worker = settings.model.threads, "Pipeline running.");
        Ok(Pipeline {
            ctx,
            _faces: faces,
            threads,
            control: ctl_tx,
        })
    }

    /// Stops capture; the frames in flight are finished and published.
    pub fn stop(&self) {
        self.ctx.stop.store(true, Relaxed);
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
        let (stage, age) = self.ctx.stalest();
        (stage.name(), age)
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.ctx.stop.store(true, Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
