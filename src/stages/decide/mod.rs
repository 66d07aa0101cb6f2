//! Decide: per-class thresholds turn the model's detections into a frame verdict, and
//! N-of-M counters with hysteresis turn verdicts into alarm events.
//!
//! A detection of class `c` is a defect when its score reaches `c`'s threshold. Its box
//! can be snapped to the candidate regions preprocess found inside it
//! (`decide.snap_to_regions`; `inspectd eval` measures whether that helps a model).

pub mod coil;
pub mod reorder;
pub mod strip;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};
use serde::Serialize;
use serde_json::value::RawValue;
use tracing::{error, info, warn};

use crate::config::{AlarmConfig, AlarmCount, DecideConfig};
use crate::contract::{alarm_json, coil_json, defect_json, AlarmChange, AlarmKind, Command};
use crate::frame::{Defect, Frame, PooledFrame, Region};
use crate::stages::decide::reorder::Reorder;
use crate::stages::StageContext;
use crate::state::alarms::{ActiveAlarm, AlarmState};
use crate::state::evidence::EvidenceSink;
use crate::state::outbox::{EventKind, Outbox};
use crate::telemetry::Stage;
use crate::telemetry::Stats;

/// A decided frame and the alarm events it caused (ids already given by the outbox).
pub struct Decided {
    pub frame: crate::frame::PooledFrame,
    pub alarms: Vec<(u64, AlarmChange)>,
    /// Active alarms after this frame, in class order, as a bit set.
    pub active: u64,
}

/// What decide hands to publish.
pub enum ToPublish {
    Frame(Decided),
    /// Alarm events were stored without a frame (acknowledgements): send them, and the
    /// active set after them.
    AlarmsStored {
        active: u64,
    },
}

/// Turns the model's detections into a verdict.
pub struct Decider {
    labels: Vec<String>,
    thresholds: Vec<f32>,
    /// Per label: the area output's level that makes a region an area defect.
    area_thresholds: Vec<Option<f32>>,
    snap: bool,
    /// Flood-fill buffers for the area regions, kept between frames.
    seen: Vec<bool>,
    stack: Vec<usize>,
}

impl Decider {
    /// `labels`: the model's defect classes. Every threshold must name one of them.
    pub fn new(cfg: &DecideConfig, labels: &[String]) -> Result<Decider, String> {
        let mut problems = Vec::new();
        for (key, table) in [
            ("thresholds", &cfg.thresholds),
            ("area_thresholds", &cfg.area_thresholds),
        ] {
            for name in table.keys() {
                if !labels.contains(name) {
                    problems.push(format!(
                        "decide.{key}.{name}: the model has no defect class {name:?} (it has: {})",
                        labels.join(", ")
                    ));
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let thresholds = labels
            .iter()
            .map(|l| {
                cfg.thresholds
                    .get(l)
                    .copied()
                    .unwrap_or(cfg.default_threshold) as f32
            })
            .collect();
        Ok(Decider {
            labels: labels.to_vec(),
            thresholds,
            area_thresholds: labels
                .iter()
                .map(|l| cfg.area_thresholds.get(l).map(|&t| t as f32))
                .collect(),
            snap: cfg.snap_to_regions,
            seen: Vec::new(),
            stack: Vec::new(),
        })
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Each class's threshold, in label order.
    pub fn thresholds(&self) -> &[f32] {
        &self.thresholds
    }

    /// Each class's area threshold (None: boxes only), in label order.
    pub fn area_thresholds(&self) -> &[Option<f32>] {
        &self.area_thresholds
    }

    /// Fills `frame.verdict`: every detection at or above its class's threshold is a
    /// defect, its box in whole frame pixels, unless a better one of its class already
    /// covers the same spot (one defect, one box); then every area defect; best first.
    pub fn decide(&mut self, frame: &mut Frame) {
        let v = &mut frame.verdict;
        v.defects.clear();
        for d in &frame.detections {
            if d.score < self.thresholds[d.label] {
                continue;
            }
            let mut rect = whole_pixels(d.rect, frame.width, frame.height);
            if self.snap {
                rect = snap_to_regions(rect, &frame.regions);
            }
            let bbox = [rect[0], rect[1], rect[2] - rect[0], rect[3] - rect[1]];
            // Detections come best first: a box mostly on a reported one of its class is
            // the same defect seen from a second peak.
            if v.defects
                .iter()
                .any(|e| e.label == d.label && same_spot(e.bbox, bbox))
            {
                continue;
            }
            v.defects.push(Defect {
                label: d.label,
                score: d.score,
                bbox,
                area: false,
                place: None,
            });
        }
        self.area_defects(frame);
        let v = &mut frame.verdict;
        v.defects
            .sort_unstable_by(|a, b| b.score.total_cmp(&a.score));
        v.ok = v.defects.is_empty();
    }

    /// Adds, per class with an area threshold, each 4-connected region of area cells at
    /// or above it that no reported box of the class touches, as one defect: the cells'
    /// extent in frame pixels, scored by the surest cell.
    fn area_defects(&mut self, frame: &mut Frame) {
        let g = frame.area_grid;
        let cells = g.cols * g.rows;
        if cells == 0 || frame.area.len() < cells * self.labels.len() {
            return;
        }
        let (live_cols, live_rows) = g.live(frame.width, frame.height);
        for (c, t) in self.area_thresholds.iter().enumerate() {
            let Some(t) = *t else { continue };
            let map = &frame.area[c * cells..(c + 1) * cells];
            self.seen.clear();
            self.seen.resize(cells, false);
            for start in 0..cells {
                let (x, y) = (start % g.cols, start / g.cols);
                if x >= live_cols || y >= live_rows || self.seen[start] || map[start] < t {
                    continue;
                }
                let (mut lo, mut hi, mut best) = ([x, y], [x, y], 0f32);
                self.seen[start] = true;
                self.stack.clear();
                self.stack.push(start);
                while let Some(k) = self.stack.pop() {
                    let (x, y) = (k % g.cols, k / g.cols);
                    best = best.max(map[k]);
                    lo = [lo[0].min(x), lo[1].min(y)];
                    hi = [hi[0].max(x), hi[1].max(y)];
                    let next = [
                        (x > 0).then(|| k - 1),
                        (x + 1 < live_cols).then(|| k + 1),
                        (y > 0).then(|| k - g.cols),
                        (y + 1 < live_rows).then(|| k + g.cols),
                    ];
                    for n in next.into_iter().flatten() {
                        if !self.seen[n] && map[n] >= t {
                            self.seen[n] = true;
                            self.stack.push(n);
                        }
                    }
                }
                let (x0, x1) = g.cell_span(lo[0], hi[0], live_cols, frame.width);
                let (y0, y1) = g.cell_span(lo[1], hi[1], live_rows, frame.height);
                let bbox = [x0, y0, x1 - x0, y1 - y0];
                let v = &mut frame.verdict;
                if v.defects
                    .iter()
                    .any(|e| e.label == c && overlap(e.bbox, bbox) > 0)
                {
                    continue;
                }
                v.defects.push(Defect {
                    label: c,
                    score: best,
                    bbox,
                    area: true,
                    place: None,
                });
            }
        }
    }
}

/// Pixels two boxes (x, y, w, h) share.
pub(crate) fn overlap(a: [u32; 4], b: [u32; 4]) -> u64 {
    let w = (a[0] + a[2])
        .min(b[0] + b[2])
        .saturating_sub(a[0].max(b[0]));
    let h = (a[1] + a[3])
        .min(b[1] + b[3])
        .saturating_sub(a[1].max(b[1]));
    w as u64 * h as u64
}

/// Two boxes (x, y, w, h) mark the same spot: they overlap by half their union, or the
/// smaller lies mostly (70 %) inside the larger.
fn same_spot(a: [u32; 4], b: [u32; 4]) -> bool {
    let inter = overlap(a, b) as f64;
    let (aa, ab) = ((a[2] * a[3]) as f64, (b[2] * b[3]) as f64);
    inter >= 0.5 * (aa + ab - inter) || inter >= 0.7 * aa.min(ab)
}

/// A detection's box (x0, y0, x1, y1) in whole pixels that cover it, inside the frame.
pub fn whole_pixels(r: [f32; 4], width: u32, height: u32) -> [u32; 4] {
    let (x0, y0) = (r[0].floor() as u32, r[1].floor() as u32);
    let (x1, y1) = (
        (r[2].ceil() as u32).min(width),
        (r[3].ceil() as u32).min(height),
    );
    [x0, y0, x1.max(x0), y1.max(y0)]
}

/// Shrinks a box (x0, y0, x1, y1) to the candidate regions whose centre lies inside it:
/// the bounding box of their parts inside the box. A box with no such region is kept.
pub fn snap_to_regions(rect: [u32; 4], regions: &[Region]) -> [u32; 4] {
    let [x0, y0, x1, y1] = rect;
    let mut snapped: Option<[u32; 4]> = None;
    for r in regions {
        let [rx, ry, rw, rh] = r.bbox;
        let (cx, cy) = (rx + rw / 2, ry + rh / 2);
        if cx < x0 || cx >= x1 || cy < y0 || cy >= y1 {
            continue;
        }
        let part = [rx.max(x0), ry.max(y0), (rx + rw).min(x1), (ry + rh).min(y1)];
        let s = snapped.get_or_insert(part);
        *s = [
            s[0].min(part[0]),
            s[1].min(part[1]),
            s[2].max(part[2]),
            s[3].max(part[3]),
        ];
    }
    snapped.unwrap_or(rect)
}

/// The state of one class's alarm.
#[derive(Debug, Clone)]
struct ClassAlarm {
    /// The last `window` frames: did they have this class?
    history: Vec<bool>,
    next: usize,
    filled: usize,
    count: u32,
    active: bool,
    raised_id: Option<u64>,
    raised_ms: u64,
    latched: bool,
    acked: bool,
}

/// N-of-M alarms with hysteresis and optional latch, one per defect class.
pub struct AlarmTracker {
    cfg: AlarmConfig,
    classes: Vec<String>,
    alarms: Vec<ClassAlarm>,
}

impl AlarmTracker {
    /// `classes`: the defect classes, in label order (without the ok label).
    pub fn new(cfg: &AlarmConfig, classes: Vec<String>) -> Self {
        let alarm = ClassAlarm {
            history: vec![false; cfg.window as usize],
            next: 0,
            filled: 0,
            count: 0,
            active: false,
            raised_id: None,
            raised_ms: 0,
            latched: false,
            acked: false,
        };
        Self {
            cfg: cfg.clone(),
            alarms: vec![alarm; classes.len()],
            classes,
        }
    }

    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Applies a new alarm config, keeping each class's state when the window is unchanged
    /// and restarting the counts (not the active flags) when it changed.
    pub fn reconfigure(&mut self, cfg: &AlarmConfig) {
        if cfg.window != self.cfg.window {
            for a in &mut self.alarms {
                a.history = vec![false; cfg.window as usize];
                a.next = 0;
                a.filled = 0;
                a.count = 0;
            }
        }
        self.cfg = cfg.clone();
    }

    /// Do the windows count new tracks (`alarm.count = "tracks"`) rather than frames?
    pub fn counts_tracks(&self) -> bool {
        self.cfg.count == AlarmCount::Tracks
    }

    /// Is the alarm of class index `i` active?
    pub fn active(&self, i: usize) -> bool {
        self.alarms[i].active
    }

    pub fn any_active(&self) -> bool {
        self.alarms.iter().any(|a| a.active)
    }

    /// Records one frame: `present[i]` says whether class `i` was in it. Changes are
    /// appended to `out`.
    pub fn observe(
        &mut self,
        seq: u64,
        present: impl Fn(usize) -> bool,
        out: &mut Vec<AlarmChange>,
    ) {
        let window = self.cfg.window;
        for (i, a) in self.alarms.iter_mut().enumerate() {
            let now = present(i);
            if a.filled == a.history.len() && a.history[a.next] {
                a.count -= 1;
            }
            a.history[a.next] = now;
            a.next = (a.next + 1) % a.history.len();
            a.filled = (a.filled + 1).min(a.history.len());
            if now {
                a.count += 1;
            }
            let change = if !a.active && a.count >= self.cfg.raise {
                a.active = true;
                a.raised_ms = crate::frame::unix_ms();
                a.latched = self.cfg.latch;
                a.acked = false;
                Some(AlarmKind::Raised)
            } else if a.active && !self.cfg.latch && a.count <= self.cfg.clear {
                a.active = false;
                Some(AlarmKind::Cleared)
            } else {
                None
            };
            if let Some(kind) = change {
                out.push(AlarmChange {
                    kind,
                    class: self.classes[i].clone(),
                    frames: a.count,
                    window,
                    seq,
                    raised_id: if kind == AlarmKind::Cleared {
                        a.raised_id
                    } else {
                        None
                    },
                    evidence: None,
                });
            }
        }
    }

    /// Tells the tracker which id the outbox gave the raised event of class `i`, so that
    /// acknowledgements can name it.
    pub fn set_raised_id(&mut self, class: &str, id: u64) {
        if let Some(i) = self.classes.iter().position(|c| c == class) {
            self.alarms[i].raised_id = Some(id);
        }
    }

    /// Every class's alarm, in class order, as the plant faces show it.
    pub fn views(&self) -> Vec<crate::telemetry::plant::AlarmView> {
        self.alarms
            .iter()
            .map(|a| crate::telemetry::plant::AlarmView {
                active: a.active,
                latched: a.active && a.latched,
                acked: a.active && a.acked,
                raised_id: if a.active {
                    a.raised_id.unwrap_or(0)
                } else {
                    0
                },
            })
            .collect()
    }

    /// The active alarms, for [`AlarmState::save`](crate::state::alarms::AlarmState::save).
    pub fn snapshot(&self) -> Vec<ActiveAlarm> {
        self.alarms
            .iter()
            .zip(&self.classes)
            .filter(|(a, _)| a.active)
            .map(|(a, class)| ActiveAlarm {
                class: class.clone(),
                raised_id: a.raised_id,
                raised_ms: a.raised_ms,
                latched: a.latched,
                acked: a.acked,
            })
            .collect()
    }

    /// Takes back the alarms a previous process left active: each is active again with
    /// its `raised_id`, and counts as seen in every frame of the window, so it clears
    /// (with a `cleared` naming that id) once its class has been absent long enough, as
    /// it would have without the restart. A class the model no longer has is an ERROR
    /// and left out. Returns the active flags in class order.
    pub fn restore(&mut self, saved: &[ActiveAlarm]) -> Vec<bool> {
        for s in saved {
            let Some(i) = self.classes.iter().position(|c| *c == s.class) else {
                error!(class = %s.class, raised_id = ?s.raised_id, "A saved active alarm names a class the model does not have; it cannot be cleared by this model.");
                continue;
            };
            let a = &mut self.alarms[i];
            a.active = true;
            a.raised_id = s.raised_id;
            a.raised_ms = s.raised_ms;
            a.latched = s.latched;
            a.acked = s.acked;
            a.history.iter_mut().for_each(|h| *h = true);
            a.filled = a.history.len();
            a.next = 0;
            a.count = a.history.len() as u32;
            info!(class = %s.class, raised_id = ?s.raised_id, "Alarm still active from before the restart.");
        }
        self.alarms.iter().map(|a| a.active).collect()
    }

    /// Acknowledges the alarm raised with `id`, or every active alarm (`None`). Latched
    /// alarms clear on acknowledgement. Returns false when no active alarm has that id.
    pub fn ack(&mut self, id: Option<u64>, out: &mut Vec<AlarmChange>) -> bool {
        let mut any = false;
        for (i, a) in self.alarms.iter_mut().enumerate() {
            if !a.active || (id.is_some() && a.raised_id != id) {
                continue;
            }
            any = true;
            out.push(AlarmChange {
                kind: AlarmKind::Acked,
                class: self.classes[i].clone(),
                frames: a.count,
                window: self.cfg.window,
                seq: 0,
                raised_id: a.raised_id,
                evidence: None,
            });
            a.acked = true;
            if self.cfg.latch {
                a.active = false;
                // Start counting afresh, so a defect still in view raises a new alarm only
                // after N more frames.
                a.history.iter_mut().for_each(|h| *h = false);
                a.count = 0;
                a.filled = 0;
            }
        }
        any
    }
}

/// Messages for the decide stage besides frames.
#[derive(Debug)]
pub enum Control {
    /// A reloaded config's thresholds and alarm settings.
    Reconfigure(DecideConfig, AlarmConfig),
}

/// The decide stage: verdicts, alarm counters, and the outbox where alarm events are
/// stored (fsync'd) before anything can publish them.
pub struct DecideStage {
    pub decider: Decider,
    pub tracker: AlarmTracker,
    pub outbox: Arc<Mutex<Outbox>>,
    /// Where the active alarms are kept across restarts (saved after every change).
    pub state: AlarmState,
    /// Puts the classify workers' frames back in order.
    pub reorder: Reorder<PooledFrame>,
    /// Where frames worth keeping go (None: `evidence.enabled = false`).
    pub evidence: Option<Evidence>,
    /// `decide.skip_repeats`.
    pub skip_repeats: bool,
    /// `[strip]`: defects placed on the coil and followed as tracks (None: off).
    pub strip: Option<strip::Strip>,
    /// Tracks that ended, kept between frames.
    pub ended: Vec<strip::Track>,
    /// Where finished coils' reports go (with `[strip]`).
    pub reports: Option<coil::Reports>,
}

/// What decide needs to keep evidence.
pub struct Evidence {
    pub sink: EvidenceSink,
    /// `evidence.sample_every`: keep every Nth frame with a defect too (0: none).
    pub sample_every: u64,
    /// Frames with a defect seen so far (for the sampling).
    pub defect_frames: u64,
}

/// An evidence image's JSON sidecar; `result` is the frame's result JSON as it is.
#[derive(Serialize)]
struct Sidecar<'a> {
    v: u8,
    alarm_id: Option<u64>,
    model: &'a str,
    config_sha256: String,
    origin: &'a str,
    width: u32,
    height: u32,
    result: &'a RawValue,
}

impl Evidence {
    /// Queues `frame` for keeping under `what` (e.g. `alarm-17-scratches`), with its
    /// sidecar; the image's path relative to `state.dir` when queued.
    fn keep(
        &self,
        frame: &Frame,
        what: &str,
        alarm_id: Option<u64>,
        stats: &Stats,
    ) -> Option<String> {
        let stem = crate::state::evidence::stem(frame.ts_ms, what);
        let (labels, model) = (stats.live.labels(), stats.live.model_id());
        let mut result = Vec::new();
        let latency_ms = frame
            .captured_at
            .map_or(0.0, |t| t.elapsed().as_secs_f64() * 1e3);
        crate::contract::result_json(frame, labels, model, latency_ms, &mut result);
        let result = String::from_utf8(result).expect("serde_json writes UTF-8");
        let result = RawValue::from_string(result).expect("a result is JSON");
        let sidecar = serde_json::to_vec(&Sidecar {
            v: 1,
            alarm_id,
            model,
            config_sha256: stats.live.config_digest(),
            origin: &frame.origin,
            width: frame.width,
            height: frame.height,
            result: &result,
        })
        .expect("a sidecar serialises");
        let queued = self.sink.offer(crate::state::evidence::Item {
            stem: stem.clone(),
            width: frame.width,
            height: frame.height,
            pixels: frame.pixels.clone(),
            sidecar,
        });
        queued.then(|| format!("{stem}.png"))
    }
}

impl DecideStage {
    /// The stage's loop: frames (in order), acknowledgements from the broker and config
    /// reloads, until the classify workers are done.
    pub fn run(
        mut self,
        frames: Receiver<PooledFrame>,
        commands: Receiver<Command>,
        control: Receiver<Control>,
        output: Sender<ToPublish>,
        ctx: StageContext,
    ) {
        let mut changes = Vec::new();
        ctx.stats.plant.set_alarms(self.tracker.views());
        loop {
            ctx.beat(Stage::Decide);
            select! {
                recv(frames) -> msg => {
                    let Ok(frame) = msg else {
                        // The input is done: so is the coil being inspected.
                        if self.end_coil("shutdown", &ctx.stats) {
                            let active = self.active_bits();
                            let _ = output.send(ToPublish::AlarmsStored { active });
                        }
                        return;
                    };
                    self.reorder.push(frame.order, frame);
                    while let Some(frame) = self.reorder.pop() {
                        if frame.failed {
                            continue;
                        }
                        let decided = self.decide(frame, &mut changes, &ctx.stats);
                        if output.send(ToPublish::Frame(decided)).is_err() {
                            return;
                        }
                    }
                }
                recv(commands) -> msg => {
                    match (&msg, self.strip.as_mut()) {
                        (Ok(Command::Speed { mm_s, at_ms }), Some(strip)) => strip.set_speed(*mm_s, *at_ms),
                        (Ok(Command::Encoder { count, at_ms }), Some(strip)) => strip.set_count(*count, *at_ms),
                        _ => {}
                    }
                    if let Ok(Command::Coil(id)) = &msg {
                        match self.strip.as_mut() {
                            Some(strip) => {
                                let (ended, log) = strip.new_coil(id);
                                info!(coil = %id, "A new coil starts: MD 0 is the next frame's first row.");
                                self.finish_coil(ended, log, "cmd/coil", &ctx.stats);
                                let active = self.active_bits();
                                let _ = output.send(ToPublish::AlarmsStored { active });
                            }
                            None => warn!(coil = %id, "cmd/coil received, but [strip] is not configured; ignored."),
                        }
                    }
                    if let Ok(Command::Ack(id)) = msg {
                        if !self.tracker.ack(id, &mut changes) {
                            warn!(id = ?id, "cmd/ack names no active alarm; ignored.");
                        }
                        self.store(&mut changes, None, &ctx.stats);
                        let active = self.active_bits();
                        let _ = output.send(ToPublish::AlarmsStored { active });
                    }
                }
                recv(control) -> msg => {
                    if let Ok(Control::Reconfigure(d, a)) = msg {
                        match Decider::new(&d, &self.decider.labels) {
                            Ok(new) => {
                                self.decider = new;
                                self.skip_repeats = d.skip_repeats;
                                self.tracker.reconfigure(&a);
                                info!("Applied the new thresholds and alarm settings.");
                            }
                            Err(e) => error!(error = %e, "Config reload refused; keeping the running thresholds."),
                        }
                    }
                }
                default(Duration::from_secs(1)) => {}
            }
            self.check_speed(crate::frame::unix_ms(), &ctx.stats);
        }
    }

    fn decide(
        &mut self,
        mut frame: PooledFrame,
        changes: &mut Vec<AlarmChange>,
        stats: &Stats,
    ) -> Decided {
        let t = Instant::now();
        self.decider.decide(&mut frame);
        let moved = !(self.skip_repeats && frame.repeat);
        if let Some(strip) = self.strip.as_mut() {
            let mut ended = std::mem::take(&mut self.ended);
            strip.place(&mut frame, moved, &mut ended);
            // The frame that first shows a defect is its evidence (one image for all
            // the defects it is the first to show).
            if let Some(ev) = &self.evidence {
                let mut new = frame
                    .verdict
                    .defects
                    .iter()
                    .filter_map(|d| d.place.filter(|p| p.first).map(|p| (p.track, d.label)));
                if let Some((id, label)) = new.next() {
                    let what = format!("track-{id}-{}", self.decider.labels[label]);
                    if let Some(path) = ev.keep(&frame, &what, None, stats) {
                        strip.set_evidence(id, &path);
                        new.for_each(|(id, _)| strip.set_evidence(id, &path));
                    }
                }
            }
            if let Some(at) = &frame.verdict.strip {
                let cfg = strip.config();
                stats.live.map_position(
                    at.coil.as_deref(),
                    at.md_mm + frame.height as f64 * cfg.mm_per_px_md,
                    frame.width.saturating_sub(cfg.edge_px) as f64 * cfg.mm_per_px_cd,
                );
            }
            self.publish_tracks(&ended, stats);
            ended.clear();
            self.ended = ended;
        }
        if !moved {
            // The same image again (a stopped line): it says nothing new to the alarms.
            stats.repeats_skipped.fetch_add(1, Relaxed);
        } else {
            // `alarm.count = "tracks"`: a defect counts in the frame that first shows it.
            let tracks = self.tracker.counts_tracks();
            let present = |i: usize| {
                frame
                    .verdict
                    .defects
                    .iter()
                    .any(|d| d.label == i && (!tracks || d.place.is_some_and(|p| p.first)))
            };
            self.tracker.observe(frame.seq, present, changes);
        }
        let alarms = self.store(changes, Some(&frame), stats);
        if let Some(ev) = self.evidence.as_mut() {
            if !frame.verdict.ok && ev.sample_every > 0 {
                ev.defect_frames += 1;
                if ev.defect_frames.is_multiple_of(ev.sample_every) {
                    ev.keep(&frame, &format!("seq-{}", frame.seq), None, stats);
                }
            }
        }
        let us = t.elapsed().as_micros() as u64;
        frame.times.decide_us = us as u32;
        stats.decide.record_us(us);
        Decided {
            frame,
            alarms,
            active: self.active_bits(),
        }
    }

    /// Gives each alarm change its id by appending it to the outbox; a raised alarm's
    /// `frame` is queued as evidence first, so the event can name its image.
    fn store(
        &mut self,
        changes: &mut Vec<AlarmChange>,
        frame: Option<&Frame>,
        stats: &Stats,
    ) -> Vec<(u64, AlarmChange)> {
        let changed = !changes.is_empty();
        let mut out = Vec::with_capacity(changes.len());
        for mut c in changes.drain(..) {
            let mut outbox = self.outbox.lock().expect("outbox lock");
            if let (AlarmKind::Raised, Some(frame), Some(ev)) = (c.kind, frame, &self.evidence) {
                let id = outbox.next_id();
                c.evidence = ev.keep(frame, &format!("alarm-{id}-{}", c.class), Some(id), stats);
            }
            let res = outbox.append(|id| alarm_json(id, &c));
            drop(outbox);
            match res {
                Ok(id) => {
                    if c.kind == AlarmKind::Raised {
                        self.tracker.set_raised_id(&c.class, id);
                    }
                    if let Some(i) = self.tracker.classes().iter().position(|k| *k == c.class) {
                        stats.alarm_events.add(i, c.kind);
                    }
                    info!(id, class = %c.class, event = c.kind.as_str(), frames = c.frames, window = c.window, "Alarm.");
                    out.push((id, c));
                }
                Err(e) => {
                    error!(error = %e, class = %c.class, event = c.kind.as_str(), "Could not store an alarm event; it is lost.")
                }
            }
        }
        if changed {
            stats.plant.set_alarms(self.tracker.views());
        }
        if !out.is_empty() {
            if let Err(e) = self.state.save(&self.tracker.snapshot()) {
                error!(file = %self.state.path().display(), error = %e, "Could not save the active alarms; a restart now would not know them.");
            }
        }
        out
    }

    /// Each finished track: a log line, and its `defect` event stored in the outbox.
    fn publish_tracks(&self, ended: &[strip::Track], stats: &Stats) {
        for t in ended {
            let msg = coil::track_msg(t, &self.decider.labels);
            stats.live.map_mark(crate::telemetry::live::MapMark {
                track: t.id,
                label: t.label,
                score: t.best_score,
                md_mm: msg.md_mm,
                cd_mm: msg.cd_mm,
                length_mm: msg.length_mm,
                width_mm: msg.width_mm,
                periodic: t.periodic.as_ref().map(|p| p.first_track),
                evidence: t.evidence.clone(),
            });
            let coil = t.coil.as_deref();
            let res = self
                .outbox
                .lock()
                .expect("outbox lock")
                .append_event(EventKind::Defect, |id| defect_json(id, coil, &msg));
            match res {
                Ok(id) => info!(
                    id,
                    track = t.id,
                    class = %msg.class,
                    coil = coil.unwrap_or(""),
                    md_mm = msg.md_mm,
                    length_mm = msg.length_mm,
                    cd_mm = msg.cd_mm,
                    width_mm = msg.width_mm,
                    frames = t.frames,
                    best_score = msg.score,
                    periodic_pitch_mm = msg.periodic.as_ref().map(|p| p.pitch_mm),
                    "Defect track ended."
                ),
                Err(e) => {
                    error!(error = %e, track = t.id, "Could not store a defect event; it is lost.")
                }
            }
            if let Some(p) = &msg.periodic {
                if p.repeats
                    == self
                        .strip
                        .as_ref()
                        .map_or(0, |s| s.config().periodic_min_repeats)
                {
                    warn!(class = %msg.class, pitch_mm = p.pitch_mm, roll_diameter_mm = p.roll_diameter_mm, first_track = p.first_track, "Periodic defect: a roll may be marking the strip.");
                }
            }
        }
    }

    /// Tells health whether the line speed told over MQTT is fresh; a change is logged.
    fn check_speed(&self, now_ms: u64, stats: &Stats) {
        let Some(strip) = &self.strip else { return };
        let state = strip.speed_state(now_ms);
        let before = stats.strip_speed.swap(state.code(), Relaxed);
        if before == state.code() {
            return;
        }
        stats.health_changes.fetch_add(1, Relaxed);
        let stale_s = strip.config().speed_stale_s;
        match state {
            strip::SpeedState::Stale => warn!(stale_s, "Line speed: nothing on cmd/speed or cmd/encoder for too long; MD carries on from the last reading and health reports it stale."),
            strip::SpeedState::Missing => warn!("Line speed: nothing on cmd/speed or cmd/encoder yet; MD stays at 0 until it comes."),
            strip::SpeedState::Fresh => info!("Line speed: received."),
            strip::SpeedState::Fixed => {}
        }
    }

    /// Ends the coil being inspected (inspectd stops). True when events were stored.
    fn end_coil(&mut self, ended_by: &str, stats: &Stats) -> bool {
        let Some(strip) = self.strip.as_mut() else {
            return false;
        };
        let (ended, log) = strip.finish();
        self.finish_coil(ended, log, ended_by, stats);
        true
    }

    /// A coil ended: its last tracks' events, then its report and `coil` event.
    fn finish_coil(
        &mut self,
        ended: Vec<strip::Track>,
        log: strip::CoilLog,
        ended_by: &str,
        stats: &Stats,
    ) {
        self.publish_tracks(&ended, stats);
        let Some(strip) = self.strip.as_ref() else {
            return;
        };
        if log.coil.is_none() {
            if !log.tracks.is_empty() {
                info!(
                    defects = log.tracks.len(),
                    "The strip before the first cmd/coil is in no coil report."
                );
            }
            return;
        }
        let mut report = coil::report(&log, strip.config(), &self.decider.labels, ended_by);
        if let Some(reports) = &self.reports {
            if let Err(e) = reports.write(&mut report) {
                report.summary.report = None;
                error!(coil = %report.summary.coil, dir = %reports.state_dir.join(coil::FOLDER).display(), error = %e, "Could not write the coil's report; its summary is still published.");
            }
        }
        let s = &report.summary;
        let res = self
            .outbox
            .lock()
            .expect("outbox lock")
            .append_event(EventKind::Coil, |id| coil_json(id, s));
        match res {
            Ok(id) => {
                if s.block {
                    warn!(id, coil = %s.coil, reasons = %s.block_reasons.join("; "), "Coil ended: BLOCK.");
                }
                info!(id, coil = %s.coil, length_mm = s.length_mm, frames = s.frames, defects = report.defects.len(), periodic = s.periodic.len(), block = s.block, report = s.report.as_deref().unwrap_or(""), "Coil ended.");
            }
            Err(e) => {
                error!(error = %e, coil = %s.coil, "Could not store the coil event; it is lost.")
            }
        }
    }

    fn active_bits(&self) -> u64 {
        let t = &self.tracker;
        (0..t.classes().len()).fold(0u64, |m, i| m | ((t.active(i) as u64) << i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(window: u32, raise: u32, clear: u32, latch: bool) -> AlarmTracker {
        AlarmTracker::new(
            &AlarmConfig {
                window,
                raise,
                clear,
                latch,
                count: AlarmCount::Frames,
            },
            vec!["scratches".into()],
        )
    }

    /// Feeds a pattern of frames ('x' = class present) and returns (frame index, kind).
    fn run(t: &mut AlarmTracker, pattern: &str) -> Vec<(usize, AlarmKind)> {
        let mut out = Vec::new();
        let mut events = Vec::new();
        for (i, ch) in pattern.chars().enumerate() {
            out.clear();
            t.observe(i as u64, |_| ch == 'x', &mut out);
            events.extend(out.iter().map(|c| (i, c.kind)));
        }
        events
    }

    #[test]
    fn raises_at_n_of_m_and_clears_with_hysteresis() {
        // M=5, N=3, N_clear=1.
        let mut t = tracker(5, 3, 1, false);
        let ev = run(&mut t, "x.x.x.x...x....");
        // Frame 4 is the third 'x' within the last five: raised. It stays raised while 2
        // of the last 5 have it (up to frame 8: frames 4 and 6), and clears at frame 9,
        // when only frame 6 is left. Frame 10 alone does not raise it again.
        assert_eq!(ev, vec![(4, AlarmKind::Raised), (9, AlarmKind::Cleared)]);
    }

    #[test]
    fn does_not_raise_below_n() {
        let mut t = tracker(5, 3, 1, false);
        assert!(run(&mut t, "xx...xx...xx...").is_empty());
    }

    #[test]
    fn a_latched_alarm_holds_until_acknowledged() {
        let mut t = tracker(3, 2, 0, true);
        assert_eq!(run(&mut t, "xx......"), vec![(1, AlarmKind::Raised)]);
        assert!(t.active(0));
        t.set_raised_id("scratches", 41);
        let mut out = Vec::new();
        assert!(!t.ack(Some(7), &mut out), "a wrong id acknowledges nothing");
        assert!(out.is_empty());
        assert!(t.ack(Some(41), &mut out));
        assert_eq!(out[0].kind, AlarmKind::Acked);
        assert_eq!(out[0].raised_id, Some(41));
        assert!(!t.active(0));
    }

    #[test]
    fn a_restored_alarm_clears_with_its_old_id_once_its_class_is_gone() {
        let mut before = tracker(3, 2, 0, false);
        assert_eq!(run(&mut before, "xx"), vec![(1, AlarmKind::Raised)]);
        before.set_raised_id("scratches", 41);
        let mut out = Vec::new();
        before.ack(None, &mut out);
        let saved = before.snapshot();
        assert_eq!(saved.len(), 1);
        assert_eq!(
            (saved[0].raised_id, saved[0].acked, saved[0].latched),
            (Some(41), true, false)
        );
        assert!(saved[0].raised_ms > 1_700_000_000_000);

        let mut after = tracker(3, 2, 0, false);
        let mut unknown = saved[0].clone();
        unknown.class = "no_such_class".into();
        assert_eq!(after.restore(&[saved[0].clone(), unknown]), vec![true]);
        assert_eq!(after.snapshot(), saved, "restored as it was saved");
        // Counted as present in the whole window: clears after 3 frames without it.
        let mut out = Vec::new();
        let mut cleared = None;
        for i in 0..5 {
            out.clear();
            after.observe(i, |_| false, &mut out);
            if let Some(c) = out.first() {
                cleared = Some((i, c.kind, c.raised_id));
                break;
            }
        }
        assert_eq!(cleared, Some((2, AlarmKind::Cleared, Some(41))));
        assert!(after.snapshot().is_empty());
    }

    #[test]
    fn a_restored_latched_alarm_waits_for_its_acknowledgement() {
        let mut before = tracker(3, 2, 0, true);
        run(&mut before, "xx");
        before.set_raised_id("scratches", 5);
        let mut after = tracker(3, 2, 0, true);
        after.restore(&before.snapshot());
        assert!(run(&mut after, "......").is_empty(), "still latched");
        let mut out = Vec::new();
        assert!(after.ack(Some(5), &mut out));
        assert_eq!((out[0].kind, out[0].raised_id), (AlarmKind::Acked, Some(5)));
        assert!(!after.active(0));
    }

    #[test]
    fn acknowledging_an_unlatched_alarm_keeps_it_active() {
        let mut t = tracker(3, 2, 0, false);
        run(&mut t, "xx");
        let mut out = Vec::new();
        assert!(t.ack(None, &mut out));
        assert!(t.active(0));
    }

    fn frame(dets: &[(usize, f32, [f32; 4])]) -> Frame {
        let mut f = Frame::default();
        f.reset(1, 128, 64);
        f.detections = dets
            .iter()
            .map(|&(label, score, rect)| crate::frame::Detection { label, score, rect })
            .collect();
        f
    }

    fn labels() -> Vec<String> {
        vec!["crazing".to_string(), "scratches".to_string()]
    }

    fn decider(threshold: f64, snap: bool) -> Decider {
        let cfg = DecideConfig {
            thresholds: [("scratches".to_string(), 0.9)].into_iter().collect(),
            default_threshold: threshold,
            snap_to_regions: snap,
            ..DecideConfig::default()
        };
        Decider::new(&cfg, &labels()).unwrap()
    }

    #[test]
    fn one_defect_gets_one_box_of_its_class() {
        let mut d = decider(0.5, false);
        let mut f = frame(&[
            (0, 0.9, [10.0, 10.0, 60.0, 60.0]),
            (0, 0.7, [12.0, 14.0, 58.0, 62.0]), // the same spot, a second peak
            (0, 0.6, [20.0, 20.0, 40.0, 40.0]), // inside the first
            (1, 0.95, [12.0, 14.0, 58.0, 62.0]), // another class on that spot stays
            (0, 0.55, [70.0, 10.0, 120.0, 60.0]), // another spot stays
        ]);
        d.decide(&mut f);
        let got: Vec<(usize, f32)> = f
            .verdict
            .defects
            .iter()
            .map(|d| (d.label, d.score))
            .collect();
        assert_eq!(got, vec![(1, 0.95), (0, 0.9), (0, 0.55)]);
    }

    #[test]
    fn a_sure_region_of_the_area_output_is_one_area_defect_unless_a_box_names_it() {
        let cfg = DecideConfig {
            area_thresholds: [("crazing".to_string(), 0.8)].into_iter().collect(),
            ..DecideConfig::default()
        };
        let mut d = Decider::new(&cfg, &labels()).unwrap();
        assert_eq!(d.area_thresholds(), &[Some(0.8), None]);
        // A 128 x 64 frame on a 4 x 2 grid of 32 px cells; crazing sure at two
        // neighbouring cells, scratches (boxes only) sure everywhere.
        let mut f = frame(&[]);
        f.area_grid = crate::frame::AreaGrid {
            cols: 4,
            rows: 2,
            stride: 32,
        };
        f.area = vec![0.1, 0.9, 0.85, 0.1, 0.1, 0.7, 0.1, 0.1];
        f.area.extend([0.99; 8]);
        d.decide(&mut f);
        assert_eq!(
            f.verdict.defects,
            vec![Defect {
                label: 0,
                score: 0.9,
                bbox: [32, 0, 64, 32],
                area: true,
                place: None
            }]
        );
        assert!(!f.verdict.ok, "an area defect makes the frame not ok");
        // A crazing box touching the region already says it: no second defect.
        f.detections = vec![crate::frame::Detection {
            label: 0,
            score: 0.6,
            rect: [40.0, 8.0, 60.0, 30.0],
        }];
        d.decide(&mut f);
        assert_eq!(f.verdict.defects.len(), 1);
        assert_eq!(f.verdict.defects[0].score, 0.6);
        // An unknown class is refused, naming the key.
        let bad = DecideConfig {
            area_thresholds: [("rust".to_string(), 0.8)].into_iter().collect(),
            ..DecideConfig::default()
        };
        let err = Decider::new(&bad, &labels()).err().unwrap();
        assert!(err.contains("decide.area_thresholds.rust"), "{err}");
    }

    #[test]
    fn area_cells_mostly_past_the_frame_edge_are_not_reported_and_the_last_live_one_reaches_it() {
        let cfg = DecideConfig {
            area_thresholds: [("crazing".to_string(), 0.5)].into_iter().collect(),
            ..DecideConfig::default()
        };
        let mut d = Decider::new(&cfg, &labels()).unwrap();
        // A 200 x 200 image (NEU's size) padded to 224: 7 x 7 cells of 32 px, the last
        // column and row holding 8 real pixels each.
        let mut f = Frame::default();
        f.reset(1, 200, 200);
        f.area_grid = crate::frame::AreaGrid {
            cols: 7,
            rows: 7,
            stride: 32,
        };
        let at = |x: usize, y: usize| y * 7 + x;
        let mut crazing = vec![0.1f32; 49];
        crazing[at(6, 1)] = 0.9; // the padded column only
        crazing[at(2, 6)] = 0.9; // the padded row only
        f.area = crazing.clone();
        f.area.extend([0.0; 49]);
        d.decide(&mut f);
        assert!(
            f.verdict.ok,
            "cells mostly in padding say nothing: {:?}",
            f.verdict.defects
        );
        // The last live column and row reach the frame's edge: [160, 200) and [160, 200).
        crazing[at(5, 5)] = 0.8;
        f.area = crazing;
        f.area.extend([0.0; 49]);
        d.decide(&mut f);
        let boxes: Vec<_> = f.verdict.defects.iter().map(|d| d.bbox).collect();
        assert_eq!(boxes, vec![[160, 160, 40, 40]]);
        // A frame smaller than half a cell still has one live cell.
        let g = crate::frame::AreaGrid {
            cols: 1,
            rows: 1,
            stride: 32,
        };
        assert_eq!(g.live(10, 10), (1, 1));
        assert_eq!(g.live(0, 10), (0, 1));
        assert_eq!(g.cell_span(0, 0, 1, 10), (0, 10));
    }

    #[test]
    fn detections_above_their_class_threshold_are_defects_with_whole_pixel_boxes() {
        let mut d = decider(0.5, false);
        let mut f = frame(&[
            (0, 0.8, [10.4, 2.0, 30.2, 40.0]),
            (1, 0.85, [0.0, 0.0, 10.0, 10.0]), // scratches needs 0.9
            (0, 0.4, [50.0, 0.0, 60.0, 10.0]), // crazing needs 0.5
            (0, 0.6, [100.0, 50.0, 128.0, 64.0]),
        ]);
        d.decide(&mut f);
        assert!(!f.verdict.ok);
        assert_eq!(
            f.verdict.defects,
            vec![
                Defect {
                    label: 0,
                    score: 0.8,
                    bbox: [10, 2, 21, 38],
                    area: false,
                    place: None
                },
                Defect {
                    label: 0,
                    score: 0.6,
                    bbox: [100, 50, 28, 14],
                    area: false,
                    place: None
                }
            ]
        );
        let mut f = frame(&[(1, 0.85, [0.0, 0.0, 10.0, 10.0])]);
        d.decide(&mut f);
        assert!(f.verdict.ok, "{:?}", f.verdict);
    }

    #[test]
    fn a_threshold_for_an_unknown_class_is_refused() {
        let cfg = DecideConfig {
            thresholds: [("scratchez".to_string(), 0.5)].into_iter().collect(),
            default_threshold: 0.5,
            ..DecideConfig::default()
        };
        let err = Decider::new(&cfg, &labels()).err().unwrap();
        assert!(err.contains("decide.thresholds.scratchez"), "{err}");
    }

    #[test]
    fn snapping_shrinks_a_box_to_the_regions_centred_inside_it() {
        let regions = [
            Region {
                area: 50,
                bbox: [20, 20, 10, 10],
            },
            Region {
                area: 50,
                bbox: [35, 28, 20, 4], // centre (45, 30) inside, pokes out on the right
            },
            Region {
                area: 50,
                bbox: [90, 90, 5, 5], // centre outside
            },
        ];
        assert_eq!(
            snap_to_regions([10, 10, 50, 50], &regions),
            [20, 20, 50, 32]
        );
        assert_eq!(snap_to_regions([0, 0, 10, 10], &regions), [0, 0, 10, 10]);
        let mut d = decider(0.5, true);
        let mut f = frame(&[(0, 0.8, [10.0, 10.0, 50.0, 50.0])]);
        f.regions = regions.to_vec();
        d.decide(&mut f);
        assert_eq!(f.verdict.defects[0].bbox, [20, 20, 30, 12]);
    }
}
