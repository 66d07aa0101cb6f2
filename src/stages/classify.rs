//! Classify: run the ONNX detector on the whole frame with tract and read its defects.
//!
//! The model is a plain ONNX file plus a metadata file beside it (`<name>.json`: labels,
//! input, normalisation, outputs). It is fully convolutional: one run per frame gives, on
//! a grid of `stride`-pixel cells, a heat map per class (the probability that a defect's
//! centre lies in the cell) and four distances from the cell's centre to the edges of
//! that defect's box. A candidate defect is every cell at or above `model.min_score`
//! with the box it reads (`model.candidates = "cells"`; `"peaks"`: only a cell whose heat
//! is the largest of its 3x3 neighbourhood); of a class's candidates whose boxes overlap
//! by more than `model.nms_iou`, the surest is kept (a texture's heat can peak several
//! times over one defect), while a cell that reads the defect at another extent stays as
//! a second, weaker box.
//!
//! [`Classifier::new`] checks the model against its metadata and optimises it once for
//! the frame size it is given; a frame of another size (a replayed folder of mixed
//! images) gets its own optimised plan, kept for the next frame of that size.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};
use serde::Deserialize;
use thiserror::Error;
use tracing::{info, warn};
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use crate::config::{Candidates, ModelConfig};
use crate::frame::{iou, AreaGrid, Detection, Frame, PooledFrame};
use crate::stages::look::{FirstLook, Plan, Window};
use crate::stages::rewrite;
use crate::stages::stem::{FrameWindow, Scratch, Stem};
use crate::stages::StageContext;
use crate::telemetry::Stage;

#[derive(Debug, Error)]
pub enum ClassifyError {
    #[error("model file {path}: {reason}")]
    Model { path: PathBuf, reason: String },
    #[error("model metadata {path}: {reason}")]
    Metadata { path: PathBuf, reason: String },
    #[error("model {path} does not match its metadata: {reason}")]
    Mismatch { path: PathBuf, reason: String },
    #[error("inference failed: {0}")]
    Run(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub layout: String,
    pub channels: usize,
    /// The input's name in the ONNX graph (informative).
    #[serde(default)]
    pub name: Option<String>,
    /// Frames are padded (edge pixels repeated) to a multiple of this on both axes.
    pub multiple: usize,
    /// The model takes the frame as `patch` x `patch` pixel patches laid out as channels
    /// (space-to-depth: channel `dy * patch + dx` of cell (x, y) holds pixel
    /// (x * patch + dx, y * patch + dy)), so its first layer is a matrix product; 1 = plain.
    #[serde(default = "one")]
    pub patch: usize,
}

fn one() -> usize {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalize {
    pub scale: f32,
    pub mean: f32,
    pub std: f32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// `centernet`: a heat map per class and a box (left, top, right, bottom) per cell.
    pub kind: String,
    /// Pixels per output cell.
    pub stride: usize,
    /// Names of the heat-map and box outputs in the ONNX graph.
    pub heat: String,
    #[serde(rename = "box")]
    pub boxes: String,
    /// Name of the optional whole-image output: class probabilities of the frame as a
    /// whole. Without it a class's score is its highest heat.
    #[serde(default)]
    pub image: Option<String>,
    /// Name of the optional area output: the whole-image head applied to every window of
    /// a coarser grid (`[1, labels (+1), H/area_stride, W/area_stride]`), where a texture
    /// defect covers the surface.
    #[serde(default)]
    pub area: Option<String>,
    /// Pixels per cell of the area output.
    #[serde(default)]
    pub area_stride: Option<usize>,
    /// The image and area outputs carry one more class after the labels: no defect.
    #[serde(default)]
    pub none: bool,
}

/// The metadata file that sits beside the ONNX file.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelMeta {
    /// Identifies the model in every result (`"model"`).
    pub id: String,
    /// The defect classes, in the order of the heat map's channels.
    pub labels: Vec<String>,
    pub input: InputSpec,
    pub normalize: Normalize,
    pub output: OutputSpec,
    #[serde(default)]
    pub sha256: Option<String>,
}

impl ModelMeta {
    /// `<model>.json` beside `<model>.onnx`.
    pub fn path_for(model: &Path) -> PathBuf {
        model.with_extension("json")
    }

    pub fn load(model: &Path) -> Result<ModelMeta, ClassifyError> {
        let path = Self::path_for(model);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::from_json(&text, &path),
            Err(e) => Err(ClassifyError::Metadata {
                reason: e.to_string(),
                path,
            }),
        }
    }

    /// Parses and checks metadata text; `path` names it in the error, with every
    /// problem found.
    pub fn from_json(text: &str, path: &Path) -> Result<ModelMeta, ClassifyError> {
        let err = |reason: String| ClassifyError::Metadata {
            path: path.to_path_buf(),
            reason,
        };
        let meta: ModelMeta = serde_json::from_str(text).map_err(|e| err(e.to_string()))?;
        let mut problems = Vec::new();
        if meta.input.layout != "NCHW" || meta.input.channels != 1 {
            problems.push(format!(
                "input must be NCHW with 1 channel, got {} with {}",
                meta.input.layout, meta.input.channels
            ));
        }
        if meta.output.kind != "centernet" {
            problems.push(format!(
                "output.kind {:?} is not one inspectd decodes (centernet)",
                meta.output.kind
            ));
        }
        let (m, s, p) = (meta.input.multiple, meta.output.stride, meta.input.patch);
        if s == 0 || m == 0 || p == 0 || m % s != 0 || m % p != 0 || m > 1024 {
            problems.push(format!(
                "input.multiple {m} must be a multiple of output.stride {s} and of input.patch {p}, \
                 all positive, at most 1024"
            ));
        }
        let n = &meta.normalize;
        let finite = n.std.is_finite() && n.scale.is_finite() && n.mean.is_finite();
        if !(finite && n.std > 0.0) {
            problems.push("normalize: scale, mean and std must be finite, std positive".into());
        }
        // The id goes into every result as a JSON string and into logs.
        if meta.id.is_empty()
            || meta.id.len() > 128
            || meta
                .id
                .chars()
                .any(|c| matches!(c, '"' | '\\') || c.is_control())
        {
            problems.push(format!(
                "id {:?} cannot identify a model (1 to 128 characters, no \" \\ or control characters)",
                meta.id
            ));
        }
        if meta.labels.is_empty() {
            problems.push("labels: the model needs at least one class".into());
        }
        match (&meta.output.area, meta.output.area_stride) {
            (Some(_), Some(a)) if a == 0 || m % a != 0 => problems.push(format!(
                "output.area_stride {a} must be positive and divide input.multiple {m}"
            )),
            (Some(_), None) => {
                problems.push("output.area needs output.area_stride (pixels per cell)".into())
            }
            _ => {}
        }
        for (i, l) in meta.labels.iter().enumerate() {
            if meta.labels[..i].contains(l) {
                problems.push(format!("labels: {l:?} appears twice"));
            }
            // A label becomes an MQTT topic level (alarm/<class>/active) and a JSON string.
            let unsafe_char = |c: char| matches!(c, '/' | '+' | '#' | '"' | '\\') || c.is_control();
            if l.is_empty() || l.len() > 64 || l.chars().any(unsafe_char) {
                problems.push(format!(
                    "labels: {l:?} cannot name a class (1 to 64 characters, none of / + # \" \\ or control characters)"
                ));
            }
        }
        if problems.is_empty() {
            Ok(meta)
        } else {
            Err(err(problems.join("; ")))
        }
    }
}

/// Where the model's outputs are among its output outlets.
#[derive(Debug, Clone, Copy)]
struct Outputs {
    heat: usize,
    boxes: usize,
    image: Option<usize>,
    area: Option<usize>,
}

/// The model optimised for one padded frame size, with its runnable state.
struct SizedPlan {
    width: usize,
    height: usize,
    /// The optimised model, shared by every classify worker.
    plan: Arc<TypedRunnableModel>,
    state: TypedSimpleState,
    /// Shared with tract only during a run (tract lets go of its inputs when the run
    /// ends), so the next frame refills it in place: no 5 MB copy per camera frame.
    input: Arc<Tensor>,
    /// The stem's buffers.
    rows: Scratch,
    /// The area output after the softmax that runs here.
    area: Vec<f32>,
}

/// Plans kept for frame sizes seen; a replayed folder rarely holds more sizes than this.
const PLANS_KEPT: usize = 4;

/// The model as read from its file, ready to be optimised for a frame size.
struct Loaded {
    path: PathBuf,
    meta: ModelMeta,
    /// The net after its stem when `stem` is set, else the whole net.
    model: InferenceModel,
    outputs: Outputs,
    /// The net's patch stem, run in our code ([`crate::stages::stem`]).
    stem: Option<Stem>,
    /// The area output is read before the net's final softmax, which runs here
    /// ([`softmax_channels`]): tract's took 3 ms of a camera frame for 7 x 1280 values.
    area_logits: bool,
}

/// A loaded model, optimised per frame size: one per classify thread.
pub struct Classifier {
    loaded: Arc<Loaded>,
    plans: Vec<SizedPlan>,
    min_score: f32,
    /// `model.nms_iou`: above this overlap, two detections of one class are one defect.
    nms_iou: f32,
    /// `model.candidates = "peaks"`: only a 3 x 3 peak of the heat is a candidate.
    peaks_only: bool,
    max_detections: usize,
    /// `model.threads` > 1: the thread pool one frame's matrix products are split over.
    executor: Option<Executor>,
    /// `model.first_look.enabled`: where the detector runs.
    look: Option<FirstLook>,
    /// The windows' outputs put back together on the whole frame's grid.
    stitched: Stitched,
}

/// The detector's outputs over a whole frame, assembled from the windows it ran on
/// (zero where it did not run: no heat, no area).
#[derive(Default)]
struct Stitched {
    heat: Vec<f32>,
    boxes: Vec<f32>,
    area: Vec<f32>,
    image: Vec<f32>,
}

impl Classifier {
    /// Loads and checks the model; optimises it for `frame` (width, height) when given,
    /// so the first frame does not pay for it.
    pub fn new(cfg: &ModelConfig, frame: Option<(u32, u32)>) -> Result<Classifier, ClassifyError> {
        let meta = ModelMeta::load(&cfg.path)?;
        let (model, outputs, stem, area_logits) = load_model(&cfg.path, &meta, true)?;
        let look = if cfg.first_look.enabled {
            let path = cfg.first_look.model_path(&cfg.path);
            Some(FirstLook::new(&path, &cfg.first_look, &meta.input)?)
        } else {
            None
        };
        let mut c = Classifier {
            loaded: Arc::new(Loaded {
                path: cfg.path.clone(),
                meta,
                model,
                outputs,
                stem,
                area_logits,
            }),
            plans: Vec::new(),
            min_score: cfg.min_score as f32,
            nms_iou: cfg.nms_iou as f32,
            peaks_only: cfg.candidates == Candidates::Peaks,
            max_detections: cfg.max_detections,
            executor: (cfg.threads > 1)
                .then(|| Executor::multithread_with_name(cfg.threads, "classify-mm")),
            look,
            stitched: Stitched::default(),
        };
        // Always prove the model runs at start: a model that cannot be optimised is a
        // start-up error, not a per-frame one.
        let m = c.loaded.meta.input.multiple as u32;
        let (w, h) = frame.unwrap_or((m, m));
        plan_for(&mut c.plans, &c.loaded, w as usize, h as usize)?;
        if let Some(look) = &mut c.look {
            let (pw, ph) = padded(&c.loaded.meta, w as usize, h as usize);
            look.prepare(pw, ph)?;
            let (ww, wh) = window_size(&look.cfg, pw, ph);
            if (ww, wh) != (pw, ph) {
                plan_for(&mut c.plans, &c.loaded, ww, wh)?;
            }
        }
        Ok(c)
    }

    pub fn meta(&self) -> &ModelMeta {
        &self.loaded.meta
    }

    /// Runs the nets' stems in tract too, as before they had their own code: for the
    /// bench that compares the two ([`crate::stages::stem`]). Plans are made again as
    /// frames come.
    pub fn stem_in_tract(&mut self) -> Result<(), ClassifyError> {
        let l = &self.loaded;
        let (model, outputs, stem, area_logits) = load_model(&l.path, &l.meta, false)?;
        self.loaded = Arc::new(Loaded {
            path: l.path.clone(),
            meta: l.meta.clone(),
            model,
            outputs,
            stem,
            area_logits,
        });
        self.plans.clear();
        if let Some(look) = &mut self.look {
            look.stem_in_tract()?;
        }
        Ok(())
    }

    pub fn labels(&self) -> &[String] {
        &self.loaded.meta.labels
    }

    /// Another classify worker over the same loaded model and optimised plans: only its
    /// runnable states and input buffers are its own. (A frame size first seen later is
    /// optimised by each worker that meets it.)
    pub fn worker(&self) -> Result<Classifier, ClassifyError> {
        let plans = self
            .plans
            .iter()
            .map(|p| sized_plan(&self.loaded, p.plan.clone(), p.width, p.height))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Classifier {
            loaded: self.loaded.clone(),
            plans,
            min_score: self.min_score,
            nms_iou: self.nms_iou,
            peaks_only: self.peaks_only,
            max_detections: self.max_detections,
            // Each worker its own pool, so two workers never wait on each other's.
            executor: self
                .executor
                .as_ref()
                .map(|_| Executor::multithread_with_name(self.threads(), "classify-mm")),
            look: self.look.as_ref().map(|l| l.worker()).transpose()?,
            stitched: Stitched::default(),
        })
    }

    /// The first-look model's id, when the first look is on.
    pub fn first_look(&self) -> Option<&str> {
        self.look.as_ref().map(|l| l.id())
    }

    /// Threads one model run may use.
    pub fn threads(&self) -> usize {
        match &self.executor {
            Some(Executor::MultiThread(pool)) => pool.current_num_threads(),
            _ => 1,
        }
    }

    /// The stage's loop (one per worker, numbered `worker`; the workers share `input`):
    /// classifies each frame and passes it on, then hands back a credit (see
    /// [`StageContext::for_each_when`]). A frame the model fails on is counted and passed
    /// on marked `failed`, so decide can keep the order and skip it.
    pub fn run(
        mut self,
        worker: usize,
        input: Receiver<PooledFrame>,
        output: Sender<PooledFrame>,
        credits: Option<Sender<()>>,
        ctx: StageContext,
    ) {
        let mine = ctx.stats.classify_workers.get(worker);
        ctx.for_each(Stage::Classify, &input, |mut frame| {
            let t = Instant::now();
            if let Err(e) = self.classify(&mut frame) {
                ctx.stats.frame_errors.fetch_add(1, Relaxed);
                warn!(seq = frame.seq, error = %e, "Could not classify a frame; skipped it.");
                frame.failed = true;
            }
            let us = t.elapsed().as_micros() as u64;
            frame.times.classify_us = us as u32;
            ctx.stats.classify.record_us(us);
            let pixels = frame.width as u64 * frame.height as u64;
            ctx.stats.frame_pixels.fetch_add(pixels, Relaxed);
            let looked = (frame.looked as f64 * pixels as f64).round() as u64;
            ctx.stats.detector_pixels.fetch_add(looked, Relaxed);
            // Frames the first look skipped (`whole_streak`) carry no look time.
            if self.look.is_some() && frame.times.look_us > 0 {
                ctx.stats.first_look.record_us(frame.times.look_us as u64);
            }
            if let Some(w) = mine {
                w.record_us(us);
            }
            let sent = output.send(frame).is_ok();
            if let Some(credits) = &credits {
                // Preprocess may have ended first (the source finished): nothing to hand.
                let _ = credits.try_send(());
            }
            sent
        });
    }

    /// Runs the model on the frame: fills `frame.detections` (every candidate, cell or
    /// peak by `model.candidates`, at or above `model.min_score` that no surer one of its
    /// class overlaps by more than `model.nms_iou`, best first, at most
    /// `model.max_detections`) and
    /// `frame.class_scores` (each class's highest heat inside the frame).
    pub fn classify(&mut self, frame: &mut Frame) -> Result<(), ClassifyError> {
        match self.executor.clone() {
            Some(pool) => multithread_tract_scope(pool, || self.classify_here(frame)),
            None => self.classify_here(frame),
        }
    }

    fn classify_here(&mut self, frame: &mut Frame) -> Result<(), ClassifyError> {
        frame.looked = 1.0;
        if self.look.is_some() {
            self.classify_looked(frame)?;
        } else {
            self.classify_whole(frame)?;
        }
        keep_distinct(&mut frame.detections, self.nms_iou, self.max_detections);
        Ok(())
    }

    /// The first look, then the detector where it saw something.
    fn classify_looked(&mut self, frame: &mut Frame) -> Result<(), ClassifyError> {
        let (w, h) = (frame.width as usize, frame.height as usize);
        let meta = &self.loaded.meta;
        let (pw, ph) = padded(meta, w, h);
        let look = self.look.as_mut().expect("checked by the caller");
        frame.times.look_us = 0;
        if look.skip() {
            return self.classify_whole(frame);
        }
        let t = Instant::now();
        let plan = look.look(&frame.pixels, (w, h), (pw, ph))?;
        frame.times.look_us = t.elapsed().as_micros() as u32;
        if plan != Plan::Windows {
            return self.classify_whole(frame);
        }
        let classes = meta.labels.len();
        let (s, a) = (meta.output.stride, meta.output.area_stride.unwrap_or(0));
        let (cols, rows) = (pw / s, ph / s);
        let st = &mut self.stitched;
        // Nothing flagged: no window runs, and there is nothing to decode.
        let clean = look.windows.is_empty();
        for (v, n) in [(&mut st.heat, classes), (&mut st.boxes, 4)] {
            v.clear();
            if !clean {
                v.resize(n * cols * rows, 0.0);
            }
        }
        st.image.clear();
        st.image.resize(classes, 0.0);
        st.area.clear();
        if self.loaded.outputs.area.is_some() && a > 0 {
            st.area.resize(classes * (pw / a) * (ph / a), 0.0);
        }
        let (ww, wh) = window_size(&look.cfg, pw, ph);
        for win in &look.windows {
            infer(
                &mut self.plans,
                &self.loaded,
                &frame.pixels,
                (w, h),
                (win.x, win.y),
                (ww, wh),
                |heat, boxes, image, area, _| {
                    let sizes = ((ww, wh), (pw, ph));
                    keep_core(heat, &mut st.heat, classes, s, sizes, win);
                    keep_core(boxes, &mut st.boxes, 4, s, sizes, win);
                    if let (Some(area), false) = (area, st.area.is_empty()) {
                        keep_core(area, &mut st.area, classes, a, sizes, win);
                    }
                    if let Some(image) = image {
                        for (best, &p) in st.image.iter_mut().zip(image) {
                            *best = best.max(p);
                        }
                    }
                },
            )?;
        }
        let grid = Grid {
            cols,
            rows,
            stride: s as f32,
            frame_w: w,
            frame_h: h,
        };
        let min_score = self.min_score;
        if clean {
            frame.detections.clear();
        } else {
            decode(
                &st.heat,
                &st.boxes,
                &grid,
                classes,
                min_score,
                self.peaks_only,
                &mut frame.detections,
                &mut frame.class_scores,
            );
        }
        if clean || self.loaded.outputs.image.is_some() {
            frame.class_scores.clear();
            frame.class_scores.extend_from_slice(&st.image);
        }
        frame.area.clear();
        frame.area.extend_from_slice(&st.area);
        frame.area_grid = if st.area.is_empty() {
            AreaGrid::default()
        } else {
            AreaGrid {
                cols: pw / a,
                rows: ph / a,
                stride: a as u32,
            }
        };
        frame.looked = (look.windows.len() * ww * wh) as f32 / (pw * ph) as f32;
        Ok(())
    }

    /// The detector on the whole frame.
    fn classify_whole(&mut self, frame: &mut Frame) -> Result<(), ClassifyError> {
        let (classes, min_score) = (self.loaded.meta.labels.len(), self.min_score);
        let peaks_only = self.peaks_only;
        let area_stride = self.loaded.meta.output.area_stride.unwrap_or(0);
        let (detections, class_scores) = (&mut frame.detections, &mut frame.class_scores);
        let (area_map, area_grid) = (&mut frame.area, &mut frame.area_grid);
        let (w, h) = (frame.width as usize, frame.height as usize);
        infer(
            &mut self.plans,
            &self.loaded,
            &frame.pixels,
            (w, h),
            (0, 0),
            padded(&self.loaded.meta, w, h),
            |heat, boxes, image, area, grid| {
                decode(
                    heat,
                    boxes,
                    grid,
                    classes,
                    min_score,
                    peaks_only,
                    detections,
                    class_scores,
                );
                if let Some(image) = image {
                    class_scores.clear();
                    class_scores.extend_from_slice(&image[..classes]);
                }
                if let Some(area) = area {
                    // The defect classes' maps only: the "no defect" map follows them.
                    let s = area_stride;
                    let (cols, rows) = (
                        grid.cols * grid.stride as usize / s,
                        grid.rows * grid.stride as usize / s,
                    );
                    area_map.clear();
                    area_map.extend_from_slice(&area[..classes * cols * rows]);
                    *area_grid = AreaGrid {
                        cols,
                        rows,
                        stride: s as u32,
                    };
                }
            },
        )?;
        Ok(())
    }

    /// Runs the model on gray pixels and hands its raw outputs (heat maps, box maps, in
    /// the ONNX layout; the image output if the model has one) and their grid to `read`:
    /// for parity checks against PyTorch.
    pub fn infer(
        &mut self,
        pixels: &[u8],
        width: usize,
        height: usize,
        read: impl FnOnce(&[f32], &[f32], Option<&[f32]>, Option<&[f32]>, &Grid),
    ) -> Result<(), ClassifyError> {
        let size = padded(&self.loaded.meta, width, height);
        infer(
            &mut self.plans,
            &self.loaded,
            pixels,
            (width, height),
            (0, 0),
            size,
            read,
        )
    }
}

/// Copies the cells of `win`'s core from a window's output maps (`maps` maps of
/// `cell`-pixel cells over the `ww` x `wh` window) into the same maps over the whole
/// `pw` x `ph` frame.
pub fn keep_core(
    from: &[f32],
    to: &mut [f32],
    maps: usize,
    cell: usize,
    ((ww, wh), (pw, ph)): ((usize, usize), (usize, usize)),
    win: &Window,
) {
    let [x0, y0, x1, y1] = win.core;
    let (wc, wr) = (ww / cell, wh / cell);
    let (fc, fr) = (pw / cell, ph / cell);
    let (c0, c1) = (x0 / cell, x1.div_ceil(cell).min(fc));
    for m in 0..maps {
        for cy in y0 / cell..y1.div_ceil(cell).min(fr) {
            let iy = cy - win.y / cell;
            let i0 = m * wc * wr + iy * wc + (c0 - win.x / cell);
            to[m * fc * fr + cy * fc + c0..][..c1 - c0].copy_from_slice(&from[i0..][..c1 - c0]);
        }
    }
}

/// The size of the windows the detector runs on behind a first look, for a frame padded
/// to `pw` x `ph`: a tile and its margins, no larger than the frame.
fn window_size(cfg: &crate::config::FirstLookConfig, pw: usize, ph: usize) -> (usize, usize) {
    let side = (cfg.tile + 2 * cfg.margin) as usize;
    (side.min(pw), side.min(ph))
}

/// Fills the plan's input from the `size` window at `origin` of the pixels (a `w` x `h`
/// frame; past its edges its last column and row repeat), runs it and hands the outputs to
/// `read`, with the grid of the window.
fn infer(
    plans: &mut Vec<SizedPlan>,
    loaded: &Loaded,
    pixels: &[u8],
    (w, h): (usize, usize),
    origin: (usize, usize),
    size: (usize, usize),
    read: impl FnOnce(&[f32], &[f32], Option<&[f32]>, Option<&[f32]>, &Grid),
) -> Result<(), ClassifyError> {
    let (meta, outputs) = (&loaded.meta, loaded.outputs);
    if w == 0 || h == 0 || pixels.len() < w * h {
        return Err(ClassifyError::Run(format!(
            "frame {w}x{h} holds {} pixels",
            pixels.len()
        )));
    }
    let i = plan_for(plans, loaded, size.0, size.1)?;
    let Normalize { scale, mean, std } = meta.normalize;
    // (p * scale - mean) / std as one multiply-add per pixel.
    let (a, b) = (scale / std, -mean / std);
    let plan = &mut plans[i];
    {
        // Exclusive again once the previous run's outputs are gone; make_mut copies only
        // if tract ever kept a reference.
        let mut view = Arc::make_mut(&mut plan.input)
            .try_as_plain_ram_mut()
            .map_err(|e| ClassifyError::Run(e.to_string()))?;
        let data = view
            .as_slice_mut::<f32>()
            .map_err(|e| ClassifyError::Run(e.to_string()))?;
        let at = FrameWindow {
            pixels,
            frame: (w, h),
            origin,
            size: (plan.width, plan.height),
        };
        fill_input(
            loaded.stem.as_ref(),
            at,
            meta.input.patch,
            (a, b),
            &mut plan.rows,
            data,
        );
    }
    let out = plan
        .state
        .run(tvec!(TValue::from_const(plan.input.clone())))
        .map_err(|e| ClassifyError::Run(e.to_string()))?;
    let run_err = |e: TractError| ClassifyError::Run(e.to_string());
    let heat_view = out[outputs.heat].try_as_plain_ram().map_err(run_err)?;
    let box_view = out[outputs.boxes].try_as_plain_ram().map_err(run_err)?;
    // The optional outputs (image, area), when the model has them.
    let view = |k: Option<usize>| k.map(|k| out[k].try_as_plain_ram()).transpose();
    let (image_view, area_view) = (
        view(outputs.image).map_err(run_err)?,
        view(outputs.area).map_err(run_err)?,
    );
    let image = image_view.as_ref().map(|v| v.as_slice::<f32>()).transpose();
    let area = area_view.as_ref().map(|v| v.as_slice::<f32>()).transpose();
    let (image, mut area) = (image.map_err(run_err)?, area.map_err(run_err)?);
    if let (Some(logits), true) = (area, loaded.area_logits) {
        let channels = meta.labels.len() + meta.output.none as usize;
        softmax_channels(logits, channels, &mut plan.area);
        area = Some(&plan.area);
    }
    let s = meta.output.stride;
    let grid = Grid {
        cols: plan.width / s,
        rows: plan.height / s,
        stride: s as f32,
        frame_w: (w - origin.0.min(w)).min(plan.width),
        frame_h: (h - origin.1.min(h)).min(plan.height),
    };
    read(
        heat_view.as_slice::<f32>().map_err(run_err)?,
        box_view.as_slice::<f32>().map_err(run_err)?,
        image,
        area,
        &grid,
    );
    Ok(())
}

/// The index of the plan for a frame size, optimising the model for it the first time.
fn plan_for(
    plans: &mut Vec<SizedPlan>,
    loaded: &Loaded,
    width: usize,
    height: usize,
) -> Result<usize, ClassifyError> {
    let Loaded {
        path,
        meta,
        model,
        outputs,
        stem,
        ..
    } = loaded;
    let (pw, ph) = padded(meta, width, height);
    if let Some(i) = plans.iter().position(|p| p.width == pw && p.height == ph) {
        return Ok(i);
    }
    let channels = Stem::input_channels(stem.as_ref(), meta.input.patch);
    let plan = build_plan(path, model, meta, *outputs, channels, pw, ph)?;
    let sized = sized_plan(loaded, plan, pw, ph)?;
    info!(width = pw, height = ph, model = %meta.id, "Optimised the model for this frame size.");
    if plans.len() == PLANS_KEPT {
        plans.remove(0);
    }
    plans.push(sized);
    Ok(plans.len() - 1)
}

/// A runnable state and an input buffer over an optimised plan.
fn sized_plan(
    loaded: &Loaded,
    plan: Arc<TypedRunnableModel>,
    width: usize,
    height: usize,
) -> Result<SizedPlan, ClassifyError> {
    let state = TypedSimpleState::new(&plan).map_err(|e| ClassifyError::Model {
        path: loaded.path.clone(),
        reason: format!("cannot make a runnable state: {e}"),
    })?;
    let p = loaded.meta.input.patch;
    let channels = Stem::input_channels(loaded.stem.as_ref(), p);
    let input = Arc::new(
        Tensor::zero::<f32>(&[1, channels, height / p, width / p])
            .map_err(|e| ClassifyError::Run(e.to_string()))?,
    );
    Ok(SizedPlan {
        width,
        height,
        plan,
        state,
        input,
        rows: Scratch::default(),
        area: Vec::new(),
    })
}

/// The size the model runs at for a frame: each side padded up to `input.multiple`.
pub fn padded(meta: &ModelMeta, width: usize, height: usize) -> (usize, usize) {
    let m = meta.input.multiple;
    (width.max(1).div_ceil(m) * m, height.max(1).div_ceil(m) * m)
}

/// The output grid and the frame it covers.
#[derive(Debug, Clone, Copy)]
pub struct Grid {
    pub cols: usize,
    pub rows: usize,
    pub stride: f32,
    pub frame_w: usize,
    pub frame_h: usize,
}

/// Reads candidate defects out of `heat` (`classes` maps of `rows x cols`) and their boxes
/// out of `boxes` (4 maps: distances to the left, top, right, bottom edge, in pixels):
/// every cell at or above `min_score` (`model.candidates = "cells"`), or with
/// `peaks_only` only the 3x3 peaks among them (`"peaks"`).
/// Only cells whose centre lies inside the frame count (the rest is padding).
#[allow(clippy::too_many_arguments)]
pub fn decode(
    heat: &[f32],
    boxes: &[f32],
    g: &Grid,
    classes: usize,
    min_score: f32,
    peaks_only: bool,
    out: &mut Vec<Detection>,
    class_scores: &mut Vec<f32>,
) {
    let (cols, rows) = (g.cols, g.rows);
    let cells = cols * rows;
    out.clear();
    class_scores.clear();
    class_scores.resize(classes, 0.0);
    // Cells whose centre lies inside the frame.
    let live_cols = ((g.frame_w as f32 / g.stride).ceil() as usize).min(cols);
    let live_rows = ((g.frame_h as f32 / g.stride).ceil() as usize).min(rows);
    let (fw, fh) = (g.frame_w as f32, g.frame_h as f32);
    for c in 0..classes {
        let map = &heat[c * cells..(c + 1) * cells];
        let mut best = 0f32;
        for y in 0..live_rows {
            for x in 0..live_cols {
                let v = map[y * cols + x];
                best = best.max(v);
                if v < min_score
                    || (peaks_only && !is_peak(map, cols, live_cols, live_rows, x, y, v))
                {
                    continue;
                }
                let at = |k: usize| boxes[k * cells + y * cols + x];
                let (cx, cy) = ((x as f32 + 0.5) * g.stride, (y as f32 + 0.5) * g.stride);
                out.push(Detection {
                    label: c,
                    score: v,
                    rect: [
                        (cx - at(0)).clamp(0.0, fw),
                        (cy - at(1)).clamp(0.0, fh),
                        (cx + at(2)).clamp(0.0, fw),
                        (cy + at(3)).clamp(0.0, fh),
                    ],
                });
            }
        }
        class_scores[c] = best;
    }
    // In place: a stable sort would allocate a buffer every frame.
    out.sort_unstable_by(|a, b| b.score.total_cmp(&a.score));
}

/// Keeps, in place, the best `limit` detections that no surer one of the same class
/// overlaps by more than `max_iou` (intersection over union); `detections` is sorted
/// best first, as [`decode`] leaves it, so the scan stops once `limit` are kept. A
/// texture defect's heat often has several peaks and many cells reading nearly the same
/// box: one defect, one box. `max_iou` of 1 keeps every candidate (the config allows it
/// only with `model.candidates = "peaks"`).
pub fn keep_distinct(detections: &mut Vec<Detection>, max_iou: f32, limit: usize) {
    if max_iou >= 1.0 {
        detections.truncate(limit);
        return;
    }
    let mut kept = 0;
    for i in 0..detections.len() {
        if kept == limit {
            break;
        }
        let d = detections[i];
        let covered = detections[..kept]
            .iter()
            .any(|k| k.label == d.label && iou(k.rect, d.rect) > max_iou);
        if !covered {
            detections[kept] = d;
            kept += 1;
        }
    }
    detections.truncate(kept);
}

/// True when no 8-neighbour inside the frame has more heat than `v` (a 3x3 max filter
/// keeps the cell). Padding cells do not count: they repeat the frame's edge.
#[inline]
fn is_peak(
    map: &[f32],
    cols: usize,
    live_cols: usize,
    live_rows: usize,
    x: usize,
    y: usize,
    v: f32,
) -> bool {
    let (x0, x1) = (x.saturating_sub(1), (x + 1).min(live_cols - 1));
    let (y0, y1) = (y.saturating_sub(1), (y + 1).min(live_rows - 1));
    (y0..=y1).all(|yy| map[yy * cols + x0..=yy * cols + x1].iter().all(|&n| n <= v))
}

/// Copies the `pw` x `ph` window at `(ox, oy)` of a `w` x `h` frame into a model's input,
/// as `p * a + b`, in `patch` x `patch` patches laid out as channels (see
/// [`InputSpec::patch`]), repeating the frame's last column and row past its edges.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fill_window(
    px: &[u8],
    w: usize,
    h: usize,
    (ox, oy): (usize, usize),
    pw: usize,
    ph: usize,
    patch: usize,
    a: f32,
    b: f32,
    dst: &mut [f32],
) {
    let (gw, gh) = (pw / patch, ph / patch);
    // Patches that lie wholly inside the frame's columns are read with a stride and no
    // clamp, a plane at a time; the rest repeat the last column, as the padding does.
    let inside = (w.saturating_sub(ox) / patch).min(gw);
    for py in 0..ph {
        let row = &px[(oy + py).min(h - 1) * w..][..w];
        let (y, dy) = (py / patch, py % patch);
        let planes = &mut dst[dy * patch * gh * gw..][..patch * gh * gw];
        let straight = if inside > 0 {
            &row[ox..ox + inside * patch]
        } else {
            &[][..]
        };
        for dx in 0..patch {
            let plane = &mut planes[(dx * gh + y) * gw..][..gw];
            let column = straight.iter().skip(dx).step_by(patch);
            for (o, &v) in plane.iter_mut().zip(column) {
                *o = v as f32 * a + b;
            }
            for (x, o) in plane.iter_mut().enumerate().skip(inside) {
                *o = row[(ox + x * patch + dx).min(w - 1)] as f32 * a + b;
            }
        }
    }
}

/// A net's input for the window `at`: the stem's output when the stem runs in inspectd
/// ([`crate::stages::stem`]), else the window's patches as channels ([`fill_window`]),
/// each pixel `p * a + b`.
pub(crate) fn fill_input(
    stem: Option<&Stem>,
    at: FrameWindow,
    patch: usize,
    (a, b): (f32, f32),
    scratch: &mut Scratch,
    dst: &mut [f32],
) {
    match stem {
        Some(s) => s.run(at, scratch, dst),
        None => {
            let ((w, h), (pw, ph)) = (at.frame, at.size);
            fill_window(at.pixels, w, h, at.origin, pw, ph, patch, a, b, dst)
        }
    }
}

/// Errors about the model file at `path`, from a reason.
fn model_error(path: &Path) -> impl Fn(String) -> ClassifyError + '_ {
    move |reason| ClassifyError::Model {
        path: path.to_path_buf(),
        reason,
    }
}

/// Errors about the model disagreeing with its metadata, from a reason.
fn mismatch_error(path: &Path) -> impl Fn(String) -> ClassifyError + '_ {
    move |reason| ClassifyError::Mismatch {
        path: path.to_path_buf(),
        reason,
    }
}

/// Reads the ONNX file, finds the heat and box outputs by name and cuts off what inspectd
/// runs itself (when `own`): the net's patch stem when it has one (then the model returned
/// is the rest of the net), and the softmax over the area output's channels (then the
/// area output is its input, and the last flag is true).
fn load_model(
    path: &Path,
    meta: &ModelMeta,
    own: bool,
) -> Result<(InferenceModel, Outputs, Option<Stem>, bool), ClassifyError> {
    let (model_err, mismatch) = (model_error(path), mismatch_error(path));
    if !path.is_file() {
        return Err(model_err("no such file".into()));
    }
    let onnx = tract_onnx::onnx();
    let proto = onnx
        .proto_model_for_path(path)
        .map_err(|e| model_err(format!("not a readable ONNX model: {e}")))?;
    let mut model = onnx
        .model_for_proto_model(&proto)
        .map_err(|e| model_err(format!("not a readable ONNX model: {e}")))?;
    let inputs = model
        .input_outlets()
        .map_err(|e| model_err(e.to_string()))?;
    if inputs.len() != 1 {
        return Err(mismatch(format!(
            "the model has {} inputs, inspectd feeds one",
            inputs.len()
        )));
    }
    let declared = model.input_fact(0).map_err(|e| model_err(e.to_string()))?;
    if let Some(rank) = declared.shape.rank().concretize() {
        if rank != 4 {
            return Err(mismatch(format!(
                "input rank is {rank}, the metadata says NCHW (rank 4)"
            )));
        }
    }
    let names: Vec<String> = model
        .output_outlets()
        .map_err(|e| model_err(e.to_string()))?
        .iter()
        .map(|o| {
            model
                .outlet_label(*o)
                .unwrap_or(&model.node(o.node).name)
                .to_string()
        })
        .collect();
    let find = |want: &str| -> Result<usize, ClassifyError> {
        names.iter().position(|n| n == want).ok_or_else(|| {
            mismatch(format!(
                "no output named {want:?} (the model's outputs: {})",
                names.join(", ")
            ))
        })
    };
    // The area head's average after its 1 x 1 convolution (exact; `rewrite`), with the
    // rest of what inspectd runs itself.
    if own {
        model = rewrite::conv_before_average(&proto, model)
            .map_err(|e| {
                model_err(format!(
                    "cannot move the average after its convolution: {e}"
                ))
            })?
            .0;
    }
    let outputs = Outputs {
        heat: find(&meta.output.heat)?,
        boxes: find(&meta.output.boxes)?,
        image: meta.output.image.as_deref().map(find).transpose()?,
        area: meta.output.area.as_deref().map(find).transpose()?,
    };
    let area_logits = match (own, outputs.area, meta.output.area.as_deref()) {
        (true, Some(k), Some(name)) => match channel_softmax_input(&proto, &model, name) {
            Some(logits) => {
                let mut outs = model
                    .output_outlets()
                    .map_err(|e| model_err(e.to_string()))?
                    .to_vec();
                outs[k] = logits;
                model
                    .select_output_outlets(&outs)
                    .map_err(|e| model_err(e.to_string()))?;
                true
            }
            None => false,
        },
        _ => false,
    };
    let Normalize { scale, mean, std } = meta.normalize;
    let (model, stem) = if own && meta.input.patch > 1 {
        Stem::cut(&proto, model, meta.input.patch, scale / std, -mean / std)
            .map_err(|e| model_err(format!("cannot run the net after its stem: {e}")))?
    } else {
        (model, None)
    };
    Ok((model, outputs, stem, area_logits))
}

/// The outlet of `model` feeding the softmax that makes the graph output `output`, when
/// that softmax runs over axis 1 (the channels of NCHW) and nothing else reads its input.
fn channel_softmax_input(
    proto: &tract_onnx::pb::ModelProto,
    model: &InferenceModel,
    output: &str,
) -> Option<OutletId> {
    let graph = proto.graph.as_ref()?;
    let node = graph
        .node
        .iter()
        .find(|n| n.output.iter().any(|o| o == output))?;
    let axis = rewrite::int(node, "axis");
    if node.op_type != "Softmax" || !matches!(axis, Some(1) | Some(-3)) || node.name.is_empty() {
        return None;
    }
    let input = node.input.first()?;
    if rewrite::readers(graph, input).len() != 1 || graph.output.iter().any(|o| &o.name == input) {
        return None;
    }
    let id = model.node_id_by_name(&node.name).ok()?;
    model.node(id).inputs.first().copied()
}

/// Softmax over the channels of an NCHW map of `channels` planes, into `out`.
fn softmax_channels(logits: &[f32], channels: usize, out: &mut Vec<f32>) {
    out.clear();
    out.extend_from_slice(logits);
    let n = logits.len() / channels.max(1);
    for j in 0..n {
        let mut m = f32::NEG_INFINITY;
        for c in 0..channels {
            m = m.max(out[c * n + j]);
        }
        let mut sum = 0.0;
        for c in 0..channels {
            let e = (out[c * n + j] - m).exp();
            out[c * n + j] = e;
            sum += e;
        }
        for c in 0..channels {
            out[c * n + j] /= sum;
        }
    }
}

fn build_plan(
    path: &Path,
    model: &InferenceModel,
    meta: &ModelMeta,
    outputs: Outputs,
    channels: usize,
    width: usize,
    height: usize,
) -> Result<Arc<TypedRunnableModel>, ClassifyError> {
    let (model_err, mismatch) = (model_error(path), mismatch_error(path));
    let p = meta.input.patch;
    let input = [1, channels, height / p, width / p];
    let typed = model
        .clone()
        .with_input_fact(0, f32::fact(input).into())
        .and_then(|m| m.into_typed())
        .map_err(|e| {
            mismatch(format!(
                "cannot run with input {input:?} ({width}x{height} frame): {e}"
            ))
        })?;
    let s = meta.output.stride;
    let n = meta.labels.len();
    let mut wanted = vec![
        (outputs.heat, vec![1, n, height / s, width / s], "heat"),
        (outputs.boxes, vec![1, 4, height / s, width / s], "box"),
    ];
    let outcomes = n + meta.output.none as usize;
    if let Some(k) = outputs.image {
        wanted.push((k, vec![1, outcomes], "image"));
    }
    if let (Some(k), Some(a)) = (outputs.area, meta.output.area_stride) {
        wanted.push((k, vec![1, outcomes, height / a, width / a], "area"));
    }
    for (k, want, what) in wanted {
        let fact = typed.output_fact(k).map_err(|e| model_err(e.to_string()))?;
        let shape = fact.shape.as_concrete().map(|s| s.to_vec());
        if shape.as_deref() != Some(&want[..]) {
            return Err(mismatch(format!(
                "output {what} has shape {shape:?} for a {width}x{height} frame; {} labels and stride {s} need {want:?}",
                meta.labels.len()
            )));
        }
    }
    typed
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .map_err(|e| model_err(format!("cannot optimise: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_split_over_threads_finds_what_one_thread_finds() {
        let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/neu_det.onnx");
        let (w, h, px) = crate::stages::capture::load_gray(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("models/samples/scratches_13.png"),
        )
        .unwrap();
        let run = |threads: usize| {
            let cfg = ModelConfig {
                threads,
                ..ModelConfig::with_path(model.clone())
            };
            let mut c = Classifier::new(&cfg, None).unwrap();
            assert_eq!(c.threads(), threads);
            let mut f = Frame::default();
            f.reset(1, w, h);
            f.pixels.copy_from_slice(&px);
            c.classify(&mut f).unwrap();
            let worker = c.worker().unwrap();
            assert_eq!(worker.threads(), threads, "each worker gets its own pool");
            (f.detections, f.class_scores)
        };
        let (one, one_scores) = run(1);
        let (two, two_scores) = run(2);
        assert!(!one.is_empty());
        assert_eq!(one.len(), two.len());
        for (a, b) in one.iter().zip(&two) {
            assert_eq!(a.label, b.label);
            assert!((a.score - b.score).abs() < 1e-5, "{a:?} {b:?}");
            for k in 0..4 {
                assert!((a.rect[k] - b.rect[k]).abs() < 1e-3, "{a:?} {b:?}");
            }
        }
        for (a, b) in one_scores.iter().zip(&two_scores) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    /// The bench frame (every 200 x 200 block a NEU defect) and a classifier of the
    /// shipped model with the first look set by `look`.
    fn line_frame_and(look: Option<crate::config::FirstLookConfig>) -> (Frame, Classifier) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let (w, h, px) = crate::stages::capture::load_gray(
            &root.join("../shared/datasets/frames/line_1280x1024.png"),
        )
        .unwrap();
        let cfg = ModelConfig {
            first_look: look.unwrap_or_default(),
            ..ModelConfig::with_path(root.join("models/neu_det.onnx"))
        };
        let c = Classifier::new(&cfg, Some((w, h))).unwrap();
        let mut f = Frame::default();
        f.reset(1, w, h);
        f.pixels.copy_from_slice(&px);
        (f, c)
    }

    fn look(
        threshold: f64,
        tile: u32,
        margin: u32,
        max_share: f64,
    ) -> crate::config::FirstLookConfig {
        crate::config::FirstLookConfig {
            enabled: true,
            threshold,
            tile,
            margin,
            max_share,
            whole_streak: 0,
            path: None,
        }
    }

    #[test]
    fn windows_put_back_together_give_the_whole_frames_defects() {
        let (mut whole, mut c) = line_frame_and(None);
        c.classify(&mut whole).unwrap();
        assert!(whole.detections.len() > 10, "{}", whole.detections.len());
        // Every cell flagged; each 256 px tile runs in a 1152 x 1024 window, 448 px of
        // frame (more than the net's receptive field) around it wherever the frame goes
        // on: what each tile's cells see is what they see in the whole frame, so only the
        // stitching is tested.
        let (mut tiled, mut c) = line_frame_and(Some(look(0.0, 256, 448, 20.0)));
        c.classify(&mut tiled).unwrap();
        assert_eq!(c.look.as_ref().unwrap().windows.len(), 20);
        assert_eq!(tiled.detections.len(), whole.detections.len());
        for (a, b) in tiled.detections.iter().zip(&whole.detections) {
            assert_eq!(a.label, b.label);
            assert!((a.score - b.score).abs() < 1e-4, "{a:?} {b:?}");
            for k in 0..4 {
                assert!((a.rect[k] - b.rect[k]).abs() < 1e-2, "{a:?} {b:?}");
            }
        }
        assert_eq!(tiled.area_grid, whole.area_grid);
        for (a, b) in tiled.area.iter().zip(&whole.area) {
            assert!((a - b).abs() < 1e-4);
        }
        // The default windows (256 px tiles, 64 px margins) see less around each tile:
        // most defects are still found where the whole frame finds them.
        let (mut gated, mut c) = line_frame_and(Some(look(0.0, 256, 64, 20.0)));
        c.classify(&mut gated).unwrap();
        assert!(
            gated.looked > 1.0,
            "20 windows of 384 px cover more than the frame"
        );
        let strong: Vec<_> = whole.detections.iter().filter(|d| d.score >= 0.3).collect();
        let kept = strong
            .iter()
            .filter(|d| {
                gated
                    .detections
                    .iter()
                    .any(|g| g.label == d.label && iou(g.rect, d.rect) >= 0.5)
            })
            .count();
        assert!(kept * 10 >= strong.len() * 9, "{kept} of {}", strong.len());
    }

    #[test]
    fn the_area_softmax_runs_over_each_cells_channels() {
        // Two cells, three channels (planes): cell 0 logits (0, ln 3, 0), cell 1 (1000,
        // 0, 1000): one far past where exp overflows.
        let logits = [0.0, 1000.0, 3f32.ln(), 0.0, 0.0, 1000.0];
        let mut out = Vec::new();
        softmax_channels(&logits, 3, &mut out);
        let want = [0.2, 0.5, 0.6, 0.0, 0.2, 0.5];
        for (g, w) in out.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{out:?}");
        }
        // The shipped detector's area output is read before its softmax, which runs here.
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        let model = repo.join("models/neu_det.onnx");
        let meta = ModelMeta::load(&model).unwrap();
        assert!(load_model(&model, &meta, true).unwrap().3);
        assert!(!load_model(&model, &meta, false).unwrap().3);
    }

    #[test]
    fn nothing_flagged_runs_no_detector_and_too_much_runs_the_whole_frame() {
        // A probability is never above 1: nothing is flagged.
        // The frame comes from the pool holding the last frame's findings: none stay.
        let (mut f, mut whole) = line_frame_and(None);
        whole.classify(&mut f).unwrap();
        assert!(!f.detections.is_empty() && f.class_scores.iter().any(|&p| p > 0.1));
        let (_, mut c) = line_frame_and(Some(look(1.0, 256, 64, 0.6)));
        c.classify(&mut f).unwrap();
        assert!(f.detections.is_empty());
        assert_eq!(f.looked, 0.0);
        assert_eq!(f.class_scores, vec![0.0; c.labels().len()]);
        assert!(f.area_grid.cols * f.area_grid.rows > 0);
        assert_eq!(
            f.area.len(),
            c.labels().len() * f.area_grid.cols * f.area_grid.rows
        );
        assert!(f.area.iter().all(|&v| v == 0.0));
        assert!(f.times.look_us > 0);
        // Everything flagged, at most 60 % of the frame in windows: the whole frame runs.
        let (mut f, mut c) = line_frame_and(Some(look(0.0, 256, 64, 0.6)));
        c.classify(&mut f).unwrap();
        assert_eq!(f.looked, 1.0);
        assert!(c.look.as_ref().unwrap().windows.is_empty());
        assert!(!f.detections.is_empty());
    }

    #[test]
    fn a_stretch_the_look_sends_whole_is_looked_at_one_frame_in_n() {
        // Everything flagged: each look sends the frame whole, having saved nothing.
        // After three of those, the look runs on one frame in three; the detector finds
        // the same every time.
        let (mut f, mut c) = line_frame_and(Some(crate::config::FirstLookConfig {
            whole_streak: 3,
            ..look(0.0, 256, 64, 0.6)
        }));
        let mut looked = Vec::new();
        let mut first = None;
        for _ in 0..9 {
            c.classify(&mut f).unwrap();
            looked.push(f.times.look_us > 0);
            assert_eq!(f.looked, 1.0);
            let found: Vec<_> = f.detections.iter().map(|d| (d.label, d.rect)).collect();
            assert_eq!(first.get_or_insert_with(|| found.clone()), &found);
        }
        let t = true;
        assert_eq!(looked, [t, t, t, false, false, t, false, false, t]);
        // A frame the look can spare ends the stretch: with nothing flagged it looks at
        // every frame.
        let (mut f, mut c) = line_frame_and(Some(crate::config::FirstLookConfig {
            whole_streak: 1,
            ..look(1.0, 256, 64, 0.6)
        }));
        for _ in 0..3 {
            c.classify(&mut f).unwrap();
            assert!(f.times.look_us > 0);
            assert_eq!(f.looked, 0.0);
        }
    }

    #[test]
    fn labels_that_would_break_topics_or_json_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.onnx");
        let meta = |labels: &str| {
            format!(
                r#"{{"id":"m","labels":{labels},"input":{{"layout":"NCHW","channels":1,"multiple":32,"patch":8}},
                "normalize":{{"scale":1,"mean":0,"std":1}},"output":{{"kind":"centernet","stride":8,"heat":"heat","box":"box"}}}}"#
            )
        };
        for (labels, named) in [
            (r#"["ok_class", "a/b"]"#, "a/b"),
            (r#"["x+", "y"]"#, "x+"),
            (r##"["#"]"##, "#"),
            (r#"["say \"hi\""]"#, "say"),
            (r#"["back\\slash"]"#, "back"),
            (r#"["dup", "dup"]"#, "appears twice"),
            (r#"[""]"#, "cannot name a class"),
        ] {
            std::fs::write(dir.path().join("m.json"), meta(labels)).unwrap();
            let e = ModelMeta::load(&model).unwrap_err().to_string();
            assert!(e.contains("m.json") && e.contains(named), "{labels}: {e}");
        }
        let bad_id = meta(r#"["a"]"#).replace(r#""id":"m""#, r#""id":"m\"x""#);
        std::fs::write(dir.path().join("m.json"), bad_id).unwrap();
        let e = ModelMeta::load(&model).unwrap_err().to_string();
        assert!(e.contains("cannot identify a model"), "{e}");
        std::fs::write(
            dir.path().join("m.json"),
            meta(r#"["rolled-in_scale", "Kratzer äöü"]"#),
        )
        .unwrap();
        assert!(ModelMeta::load(&model).is_ok());
    }

    #[test]
    fn padding_repeats_the_last_column_and_row() {
        let px = [10u8, 20, 30, 40];
        let mut dst = [0f32; 9];
        fill_window(&px, 2, 2, (0, 0), 3, 3, 1, 1.0, 0.0, &mut dst);
        assert_eq!(dst, [10., 20., 20., 30., 40., 40., 30., 40., 40.]);
    }

    #[test]
    fn patches_are_laid_out_as_pixel_unshuffle_does() {
        // A 3 x 3 frame padded to 4 x 4, in 2 x 2 patches: 4 channels of 2 x 2 cells.
        #[rustfmt::skip]
        let px = [
            1u8, 2, 3,
            4, 5, 6,
            7, 8, 9,
        ];
        let mut dst = [0f32; 16];
        fill_window(&px, 3, 3, (0, 0), 4, 4, 2, 1.0, 0.0, &mut dst);
        // Padded:  1 2 3 3 / 4 5 6 6 / 7 8 9 9 / 7 8 9 9.
        // Channel (dy, dx) = (0, 0): pixels (0,0) (2,0) (0,2) (2,2) = 1 3 7 9.
        assert_eq!(&dst[0..4], &[1., 3., 7., 9.]);
        // (0, 1): 2 3 8 9; (1, 0): 4 6 7 9; (1, 1): 5 6 8 9.
        assert_eq!(&dst[4..8], &[2., 3., 8., 9.]);
        assert_eq!(&dst[8..12], &[4., 6., 7., 9.]);
        assert_eq!(&dst[12..16], &[5., 6., 8., 9.]);
    }

    #[test]
    fn a_window_anywhere_is_filled_as_the_padded_frame_reads_there() {
        // Windows inside the frame, across its right and bottom edges and wholly in the
        // padding: each patch channel reads the frame with the last row and column
        // repeated, as the plain per-pixel formula does.
        let (w, h) = (45usize, 37usize);
        let px: Vec<u8> = (0..w * h).map(|i| (i * 7 % 251) as u8).collect();
        for (ox, oy, side, patch) in [
            (0, 0, 16, 8),
            (8, 16, 24, 8),
            (32, 24, 16, 8),
            (40, 32, 16, 8),
            (48, 40, 16, 8),
            (3, 5, 12, 4),
        ] {
            let (g, a, b) = (side / patch, 0.5f32, -3.0f32);
            let mut got = vec![0f32; side * side];
            fill_window(&px, w, h, (ox, oy), side, side, patch, a, b, &mut got);
            for py in 0..side {
                for qx in 0..side {
                    let v = px[(oy + py).min(h - 1) * w + (ox + qx).min(w - 1)] as f32 * a + b;
                    let c = (py % patch) * patch + qx % patch;
                    let at = (c * g + py / patch) * g + qx / patch;
                    assert_eq!(
                        got[at], v,
                        "window ({ox}, {oy}) side {side}: pixel ({qx}, {py})"
                    );
                }
            }
        }
    }

    fn grid(cols: usize, rows: usize) -> Grid {
        Grid {
            cols,
            rows,
            stride: 8.0,
            frame_w: cols * 8,
            frame_h: rows * 8,
        }
    }

    #[test]
    fn one_peak_per_defect_with_its_box() {
        // 1 class, 4 x 4 cells: a blob around (1, 1) and a separate peak at (3, 3).
        #[rustfmt::skip]
        let heat = [
            0.2, 0.5, 0.3, 0.0,
            0.4, 0.9, 0.6, 0.0,
            0.1, 0.3, 0.2, 0.1,
            0.0, 0.0, 0.1, 0.7,
        ];
        let mut boxes = vec![0f32; 4 * 16];
        for k in 0..4 {
            boxes[k * 16 + 5] = 4.0 + k as f32; // cell (1, 1): l 4, t 5, r 6, b 7
        }
        let (mut out, mut scores) = (Vec::new(), Vec::new());
        decode(
            &heat,
            &boxes,
            &grid(4, 4),
            1,
            0.3,
            true,
            &mut out,
            &mut scores,
        );
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0].score, 0.9);
        assert_eq!(
            out[0].rect,
            [12.0 - 4.0, 12.0 - 5.0, 12.0 + 6.0, 12.0 + 7.0]
        );
        assert_eq!(out[1].score, 0.7);
        assert_eq!(scores, vec![0.9]);
    }

    #[test]
    fn of_overlapping_boxes_of_one_class_the_surest_stays() {
        let d = |label, score, rect| Detection { label, score, rect };
        let sorted = vec![
            d(0, 0.9, [0.0, 0.0, 100.0, 100.0]),
            // IoU 0.81 with the first: the same crazed area, peaking twice.
            d(0, 0.8, [0.0, 0.0, 90.0, 90.0]),
            // Another class on the same spot is another defect.
            d(1, 0.7, [0.0, 0.0, 90.0, 90.0]),
            // IoU 1/3 with the first: a neighbour, not the same defect.
            d(0, 0.6, [50.0, 0.0, 150.0, 100.0]),
            // Overlaps the dropped 0.8 box only: dropped boxes suppress nothing.
            d(0, 0.5, [0.0, 80.0, 90.0, 170.0]),
        ];
        let mut out = sorted.clone();
        keep_distinct(&mut out, 0.5, usize::MAX);
        let scores: Vec<f32> = out.iter().map(|d| d.score).collect();
        assert_eq!(scores, vec![0.9, 0.7, 0.6, 0.5]);
        let mut out = sorted.clone();
        keep_distinct(&mut out, 0.9, usize::MAX);
        assert_eq!(out.len(), 5, "0.81 is not above 0.9");
        let mut out = sorted.clone();
        keep_distinct(&mut out, 1.0, usize::MAX);
        assert_eq!(out, sorted, "1 keeps every peak");
    }

    #[test]
    fn the_classifier_keeps_one_box_where_a_texture_peaks_twice() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let overlapping = |dets: &[Detection]| {
            let mut n = 0;
            for (i, a) in dets.iter().enumerate() {
                n += dets[i + 1..]
                    .iter()
                    .filter(|b| b.label == a.label && iou(a.rect, b.rect) > 0.5)
                    .count();
            }
            n
        };
        let classifier = |nms_iou, candidates| {
            let cfg = ModelConfig {
                nms_iou,
                candidates,
                ..ModelConfig::with_path(root.join("models/neu_det.onnx"))
            };
            Classifier::new(&cfg, Some((200, 200))).unwrap()
        };
        let mut every_peak = classifier(1.0, Candidates::Peaks);
        let mut distinct = classifier(0.5, Candidates::Peaks);
        let mut cells = classifier(0.5, Candidates::Cells);
        let (mut every, mut kept, mut kept_cells) = (0, 0, 0);
        let (mut peaks_found, mut cells_found) = (0, 0);
        for name in [
            "crazing_1",
            "crazing_12",
            "rolled-in_scale_10",
            "patches_12",
        ] {
            let (w, h, px) =
                crate::stages::capture::load_gray(&root.join(format!("models/samples/{name}.png")))
                    .unwrap();
            for (c, pairs, found) in [
                (&mut every_peak, &mut every, &mut 0),
                (&mut distinct, &mut kept, &mut peaks_found),
                (&mut cells, &mut kept_cells, &mut cells_found),
            ] {
                let mut f = Frame::default();
                f.reset(1, w, h);
                f.pixels.copy_from_slice(&px);
                c.classify(&mut f).unwrap();
                assert!(!f.detections.is_empty(), "{name}");
                *pairs += overlapping(&f.detections);
                *found += f.detections.len();
            }
        }
        assert!(
            every > 0,
            "these textures peak more than once on one defect"
        );
        assert_eq!(kept, 0, "model.nms_iou = 0.5 leaves no such pair");
        assert_eq!(kept_cells, 0, "nor among every cell's boxes");
        assert!(
            cells_found > peaks_found,
            "every cell adds boxes of other extents: {cells_found} against {peaks_found}"
        );
    }

    #[test]
    fn every_cell_is_a_candidate_when_asked_each_with_its_own_box() {
        // One class on a 3 x 1 grid: a peak in the middle reading a small box, its left
        // neighbour (not a peak) reading a band three times as wide.
        let heat = [0.6, 0.9, 0.02];
        let mut boxes = vec![4f32; 4 * 3];
        for k in [0, 2] {
            boxes[k * 3] = 12.0; // the left cell's left and right distances
        }
        let g = Grid {
            cols: 3,
            rows: 1,
            stride: 8.0,
            frame_w: 24,
            frame_h: 8,
        };
        let (mut out, mut scores) = (Vec::new(), Vec::new());
        decode(&heat, &boxes, &g, 1, 0.05, true, &mut out, &mut scores);
        assert_eq!(out.len(), 1, "peaks: the middle cell only");
        assert_eq!(out[0].rect, [8.0, 0.0, 16.0, 8.0]);
        decode(&heat, &boxes, &g, 1, 0.05, false, &mut out, &mut scores);
        let found: Vec<_> = out.iter().map(|d| (d.score, d.rect)).collect();
        assert_eq!(
            found,
            vec![(0.9, [8.0, 0.0, 16.0, 8.0]), (0.6, [0.0, 0.0, 16.0, 8.0])],
            "cells: the neighbour's wider box too, best first; 0.02 is under min_score"
        );
        keep_distinct(&mut out, 0.5, 100);
        assert_eq!(out.len(), 2, "IoU 0.5 is not above 0.5: two extents kept");
        decode(&heat, &boxes, &g, 1, 0.05, false, &mut out, &mut scores);
        keep_distinct(&mut out, 0.4, 100);
        assert_eq!(out.len(), 1, "above 0.4: one defect, the surer box");
        assert_eq!(scores, vec![0.9]);
    }

    #[test]
    fn padding_cells_and_low_scores_are_not_defects_and_boxes_stay_in_the_frame() {
        let heat = [0.1, 0.95, 0.0, 0.0];
        let boxes = vec![100f32; 4 * 4];
        let g = Grid {
            cols: 2,
            rows: 2,
            stride: 8.0,
            frame_w: 6, // only the first column's centre lies in the frame
            frame_h: 16,
        };
        let (mut out, mut scores) = (Vec::new(), Vec::new());
        decode(&heat, &boxes, &g, 1, 0.05, true, &mut out, &mut scores);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].score, 0.1, "the 0.95 peak lies in the padding");
        assert_eq!(out[0].rect, [0.0, 0.0, 6.0, 16.0]);
        decode(&heat, &boxes, &g, 1, 0.2, true, &mut out, &mut scores);
        assert!(out.is_empty());
    }
}
