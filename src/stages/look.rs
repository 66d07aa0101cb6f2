//! The first look: a small net that says, per 32 x 32 cell of the frame, how likely a
//! defect touches it, and the windows the detector then runs on.
//!
//! A strip is clean almost everywhere. The first look reads the same 8 x 8 patches as the
//! detector at a few percent of its cost (`models/train_look.py`); the frame is divided
//! into square tiles, and the detector runs on each tile that holds a flagged cell or
//! touches one, with a margin of frame around it so that what it reports inside the tile
//! is what it would report on the whole frame. The outputs of the tiles are put back
//! together on the whole frame's grid, so decoding and deciding do not change. When the
//! tiles would cover most of the frame, the whole frame is cheaper and runs instead; a
//! frame no larger than one window runs whole or not at all.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use tract_onnx::prelude::*;

use crate::config::FirstLookConfig;
use crate::stages::classify::{fill_input, ClassifyError, InputSpec};
use crate::stages::rewrite;
use crate::stages::stem::{FrameWindow, Scratch, Stem};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookOutput {
    /// The output's name in the ONNX graph: `[1, 1, H/stride, W/stride]` probabilities.
    pub look: String,
    /// Pixels per cell.
    pub stride: usize,
}

/// The metadata beside the first-look ONNX file.
#[derive(Debug, Clone, Deserialize)]
pub struct LookMeta {
    pub id: String,
    pub input: InputSpec,
    pub output: LookOutput,
}

/// One place the detector runs: a `side` x `side` window of the padded frame at (x, y),
/// whose outputs are kept for the cells of `core` (x0, y0, x1, y1; pixels).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub x: usize,
    pub y: usize,
    pub core: [usize; 4],
}

/// What the first look decided for a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The detector runs on the whole frame.
    Whole,
    /// Every tile was flagged: the detector runs on the whole frame, and the look saved
    /// nothing (`whole_streak` counts these).
    Everywhere,
    /// The detector runs on these windows (none: the frame is clean).
    Windows,
}

struct Sized {
    width: usize,
    height: usize,
    plan: Arc<TypedRunnableModel>,
    state: TypedSimpleState,
    input: Arc<Tensor>,
    /// The stem's buffers.
    rows: Scratch,
}

/// The first-look model, optimised for the frame size last seen: one per classify worker.
pub struct FirstLook {
    path: PathBuf,
    meta: Arc<LookMeta>,
    model: Arc<InferenceModel>,
    /// The net's patch stem, run in our code ([`crate::stages::stem`]); tract runs the
    /// rest. None: tract runs the whole net.
    stem: Option<Arc<Stem>>,
    sized: Option<Sized>,
    pub cfg: FirstLookConfig,
    /// The last frame's cell probabilities (`cols x rows`).
    cells: Vec<f32>,
    pub windows: Vec<Window>,
    /// Frames in a row the look flagged every tile of, and frames skipped since it last
    /// looked.
    streak: Streak,
}

/// `whole_streak`: when the look keeps flagging every tile, it is not worth its cost.
#[derive(Debug, Default, Clone, Copy)]
struct Streak {
    whole: u32,
    skipped: u32,
}

impl FirstLook {
    /// Loads and checks the model at `path` against the detector's input spec (both read
    /// the same patches).
    pub fn new(
        path: &Path,
        cfg: &FirstLookConfig,
        detector: &InputSpec,
    ) -> Result<FirstLook, ClassifyError> {
        let meta_path = path.with_extension("json");
        let meta_err = |reason: String| ClassifyError::Metadata {
            path: meta_path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&meta_path).map_err(|e| meta_err(e.to_string()))?;
        let meta: LookMeta = serde_json::from_str(&text).map_err(|e| meta_err(e.to_string()))?;
        let (i, s) = (&meta.input, meta.output.stride);
        if i.patch != detector.patch || i.channels != 1 || i.layout != "NCHW" {
            return Err(meta_err(format!(
                "the first look must read the detector's input (NCHW, 1 channel, patch {}), not {} with {} channel(s), patch {}",
                detector.patch, i.layout, i.channels, i.patch
            )));
        }
        if s == 0 || s % i.patch != 0 || 32 % s != 0 {
            return Err(meta_err(format!(
                "output.stride {s} must be a multiple of input.patch {} dividing 32",
                i.patch
            )));
        }
        if !path.is_file() {
            return Err(ClassifyError::Model {
                path: path.to_path_buf(),
                reason: "no such file".into(),
            });
        }
        let unreadable = |e: TractError| ClassifyError::Model {
            path: path.to_path_buf(),
            reason: format!("not a readable ONNX model: {e}"),
        };
        let onnx = tract_onnx::onnx();
        let proto = onnx.proto_model_for_path(path).map_err(unreadable)?;
        let model = onnx.model_for_proto_model(&proto).map_err(unreadable)?;
        // Its average after the output's 1 x 1 convolution (exact; `rewrite`).
        let (model, _) = rewrite::conv_before_average(&proto, model).map_err(unreadable)?;
        let (model, stem) =
            Stem::cut(&proto, model, i.patch, 1.0, 0.0).map_err(|e| ClassifyError::Model {
                path: path.to_path_buf(),
                reason: format!("cannot run the net after its stem: {e}"),
            })?;
        let stem = stem.map(Arc::new);
        let mut look = FirstLook {
            path: path.to_path_buf(),
            meta: Arc::new(meta),
            model: Arc::new(model),
            stem,
            sized: None,
            cfg: cfg.clone(),
            cells: Vec::new(),
            windows: Vec::new(),
            streak: Streak::default(),
        };
        look.sized_for(32, 32)?;
        Ok(look)
    }

    pub fn id(&self) -> &str {
        &self.meta.id
    }

    /// The last frame's cell probabilities, row-major over the padded frame.
    pub fn cells(&self) -> &[f32] {
        &self.cells
    }

    /// Another worker's first look over the same model and optimised plan; only its
    /// runnable state and buffers are its own.
    pub fn worker(&self) -> Result<FirstLook, ClassifyError> {
        let sized = match &self.sized {
            Some(s) => Some(Sized {
                width: s.width,
                height: s.height,
                plan: s.plan.clone(),
                state: TypedSimpleState::new(&s.plan).map_err(|e| ClassifyError::Model {
                    path: self.path.clone(),
                    reason: format!("cannot make a runnable state: {e}"),
                })?,
                input: Arc::new(s.input.as_ref().clone()),
                rows: Scratch::default(),
            }),
            None => None,
        };
        Ok(FirstLook {
            path: self.path.clone(),
            meta: self.meta.clone(),
            model: self.model.clone(),
            stem: self.stem.clone(),
            sized,
            cfg: self.cfg.clone(),
            cells: Vec::new(),
            windows: Vec::new(),
            streak: Streak::default(),
        })
    }

    /// Runs the stem in tract too, as before the stem had its own code: for the bench
    /// that compares the two ([`crate::stages::stem`]).
    pub fn stem_in_tract(&mut self) -> Result<(), ClassifyError> {
        let model =
            tract_onnx::onnx()
                .model_for_path(&self.path)
                .map_err(|e| ClassifyError::Model {
                    path: self.path.clone(),
                    reason: format!("not a readable ONNX model: {e}"),
                })?;
        self.model = Arc::new(model);
        self.stem = None;
        self.sized = None;
        Ok(())
    }

    /// Whether the net's stem runs in inspectd's code.
    pub fn has_own_stem(&self) -> bool {
        self.stem.is_some()
    }

    /// Whether to skip the look for the next frame and run the detector whole: after
    /// `whole_streak` frames in a row it flagged all over, it looks at one frame in
    /// `whole_streak` only (see [`FirstLookConfig::whole_streak`]).
    pub fn skip(&mut self) -> bool {
        let n = self.cfg.whole_streak;
        if n == 0 || self.streak.whole < n {
            return false;
        }
        if self.streak.skipped + 1 < n {
            self.streak.skipped += 1;
            true
        } else {
            self.streak.skipped = 0;
            false
        }
    }

    /// Optimises the first look for a frame padded to `pw` x `ph` (start-up, so that the
    /// first frame does not pay for it).
    pub fn prepare(&mut self, pw: usize, ph: usize) -> Result<(), ClassifyError> {
        self.sized_for(pw, ph).map(|_| ())
    }

    fn sized_for(&mut self, pw: usize, ph: usize) -> Result<&mut Sized, ClassifyError> {
        if !matches!(&self.sized, Some(s) if s.width == pw && s.height == ph) {
            let p = self.meta.input.patch;
            let err = |e: TractError| ClassifyError::Model {
                path: self.path.clone(),
                reason: format!("cannot run the first look on {pw}x{ph}: {e}"),
            };
            // With the stem in our code, tract's net starts at the stem's ReLU.
            let channels = Stem::input_channels(self.stem.as_deref(), p);
            let shape = [1, channels, ph / p, pw / p];
            let plan = (*self.model)
                .clone()
                .with_input_fact(0, f32::fact(shape).into())
                .and_then(|m| m.into_optimized())
                .and_then(|m| m.into_runnable())
                .map_err(err)?;
            let s = self.meta.output.stride;
            let out = plan.model().output_fact(0).map_err(err)?;
            let want = [1, 1, ph / s, pw / s];
            if out.shape.as_concrete() != Some(&want[..]) {
                return Err(ClassifyError::Mismatch {
                    path: self.path.clone(),
                    reason: format!(
                        "output has shape {:?} for {pw}x{ph}, stride {s} needs {want:?}",
                        out.shape
                    ),
                });
            }
            let state = TypedSimpleState::new(&plan).map_err(err)?;
            let input = Arc::new(Tensor::zero::<f32>(&shape).map_err(err)?);
            self.sized = Some(Sized {
                width: pw,
                height: ph,
                plan,
                state,
                input,
                rows: Scratch::default(),
            });
        }
        Ok(self.sized.as_mut().expect("just made"))
    }

    /// Looks at a `w` x `h` frame padded to `pw` x `ph` and decides where the detector
    /// runs: [`Plan::Whole`], or [`Plan::Windows`] with `self.windows` (each
    /// `side` x `side`, `side` = tile + 2 margins).
    pub fn look(
        &mut self,
        pixels: &[u8],
        (w, h): (usize, usize),
        (pw, ph): (usize, usize),
    ) -> Result<Plan, ClassifyError> {
        let run_err = |e: TractError| ClassifyError::Run(format!("first look: {e}"));
        let patch = self.meta.input.patch;
        let stride = self.meta.output.stride;
        self.sized_for(pw, ph)?;
        let sized = self.sized.as_mut().expect("just made");
        {
            let mut view = Arc::make_mut(&mut sized.input)
                .try_as_plain_ram_mut()
                .map_err(run_err)?;
            let data = view.as_slice_mut::<f32>().map_err(run_err)?;
            let at = FrameWindow {
                pixels,
                frame: (w, h),
                origin: (0, 0),
                size: (pw, ph),
            };
            let stem = self.stem.as_deref();
            fill_input(stem, at, patch, (1.0, 0.0), &mut sized.rows, data);
        }
        let out = sized
            .state
            .run(tvec!(TValue::from_const(sized.input.clone())))
            .map_err(run_err)?;
        let view = out[0].try_as_plain_ram().map_err(run_err)?;
        self.cells.clear();
        self.cells
            .extend_from_slice(view.as_slice::<f32>().map_err(run_err)?);
        let (cols, rows) = (pw / stride, ph / stride);
        let live = (w.div_ceil(stride).min(cols), h.div_ceil(stride).min(rows));
        let plan = plan_windows(
            &self.cells,
            cols,
            live,
            stride,
            (pw, ph),
            &self.cfg,
            &mut self.windows,
        );
        self.streak.whole = match plan {
            Plan::Everywhere => self.streak.whole.saturating_add(1),
            Plan::Whole | Plan::Windows => 0,
        };
        Ok(plan)
    }
}

/// The windows holding every cell at or above the threshold (with a cell of frame around
/// it): the tiles of `cfg.tile` px those cells touch, each widened by `cfg.margin` and
/// kept inside the padded frame. [`Plan::Whole`] when the frame is no larger than one
/// window and something was flagged, or when the windows would cover more than
/// `cfg.max_share` of the frame ([`Plan::Everywhere`] when that is every tile).
pub fn plan_windows(
    cells: &[f32],
    cols: usize,
    (live_cols, live_rows): (usize, usize),
    stride: usize,
    (pw, ph): (usize, usize),
    cfg: &FirstLookConfig,
    out: &mut Vec<Window>,
) -> Plan {
    out.clear();
    let (tile, margin) = (cfg.tile as usize, cfg.margin as usize);
    let side = tile + 2 * margin;
    let threshold = cfg.threshold as f32;
    let (tiles_x, tiles_y) = (pw.div_ceil(tile), ph.div_ceil(tile));
    // Visit the tiles in order; a tile is taken when a flagged cell lies within one cell
    // of it. (No per-frame allocation: windows are pushed into `out` as found.)
    for ty in 0..tiles_y {
        for tx in 0..tiles_x {
            let (x0, y0) = (tx * tile, ty * tile);
            let (x1, y1) = ((x0 + tile).min(pw), (y0 + tile).min(ph));
            // Cells within one cell of the tile.
            let cx0 = (x0 / stride).saturating_sub(1);
            let cy0 = (y0 / stride).saturating_sub(1);
            let cx1 = (x1.div_ceil(stride) + 1).min(live_cols);
            let cy1 = (y1.div_ceil(stride) + 1).min(live_rows);
            let hit = (cy0..cy1).any(|cy| {
                cells[cy * cols + cx0.min(cx1)..cy * cols + cx1]
                    .iter()
                    .any(|&p| p >= threshold)
            });
            if !hit {
                continue;
            }
            if pw <= side && ph <= side {
                return Plan::Whole;
            }
            let place = |start: usize, full: usize| {
                if full <= side {
                    0
                } else {
                    start.saturating_sub(margin).min(full - side)
                }
            };
            out.push(Window {
                x: place(x0, pw),
                y: place(y0, ph),
                core: [x0, y0, x1, y1],
            });
        }
    }
    let covered = out.len() * side.min(pw) * side.min(ph);
    if covered as f64 > cfg.max_share * (pw * ph) as f64 {
        let everywhere = out.len() == tiles_x * tiles_y;
        out.clear();
        return if everywhere {
            Plan::Everywhere
        } else {
            Plan::Whole
        };
    }
    Plan::Windows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> FirstLookConfig {
        FirstLookConfig {
            enabled: true,
            threshold: 0.5,
            tile: 256,
            margin: 64,
            max_share: 0.6,
            ..FirstLookConfig::default()
        }
    }

    /// Cells of a 1280 x 1024 frame at stride 32 (40 x 32), all clean but `hot`.
    fn cells(hot: &[(usize, usize)]) -> Vec<f32> {
        let mut c = vec![0.01f32; 40 * 32];
        for &(x, y) in hot {
            c[y * 40 + x] = 0.9;
        }
        c
    }

    fn plan(c: &[f32], out: &mut Vec<Window>) -> Plan {
        plan_windows(c, 40, (40, 32), 32, (1280, 1024), &cfg(), out)
    }

    #[test]
    fn a_clean_frame_runs_no_window() {
        let mut out = Vec::new();
        assert_eq!(plan(&cells(&[]), &mut out), Plan::Windows);
        assert!(out.is_empty());
    }

    #[test]
    fn one_flagged_cell_runs_its_tile_with_a_margin_inside_the_frame() {
        let mut out = Vec::new();
        // Cell (12, 12): pixels 384..416, inside tile (1, 1) = 256..512, and more than a
        // cell away from every other tile.
        assert_eq!(plan(&cells(&[(12, 12)]), &mut out), Plan::Windows);
        assert_eq!(
            out,
            vec![Window {
                x: 192,
                y: 192,
                core: [256, 256, 512, 512]
            }]
        );
        // A cell in the frame's corner: the window starts at the frame's edge, and the
        // cell next to the tile border takes the neighbouring tiles too.
        plan(&cells(&[(0, 0)]), &mut out);
        assert_eq!(
            out[0],
            Window {
                x: 0,
                y: 0,
                core: [0, 0, 256, 256]
            }
        );
        plan(&cells(&[(7, 0)]), &mut out);
        assert_eq!(out.len(), 2, "cell 7 (224..256) touches tile 1: {out:?}");
        // The last tile: its window ends at the frame's edge.
        plan(&cells(&[(39, 31)]), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].x, out[0].y), (1280 - 384, 1024 - 384));
    }

    #[test]
    fn a_frame_flagged_all_over_runs_whole() {
        let hot: Vec<_> = (0..40).flat_map(|x| (0..32).map(move |y| (x, y))).collect();
        let mut out = Vec::new();
        assert_eq!(plan(&cells(&hot), &mut out), Plan::Everywhere);
        assert!(out.is_empty());
        // The middle of one tile in two (a checkerboard of 256 px tiles): more than
        // max_share in windows, so whole, but not everywhere.
        let half: Vec<_> = hot
            .iter()
            .copied()
            .filter(|&(x, y)| {
                (x / 8 + y / 8) % 2 == 0 && (2..6).contains(&(x % 8)) && (2..6).contains(&(y % 8))
            })
            .collect();
        assert_eq!(plan(&cells(&half), &mut out), Plan::Whole);
        assert!(out.is_empty());
        // A small frame (one NEU image): whole when anything is flagged, else nothing.
        let small = |c: &[f32], out: &mut Vec<Window>| {
            plan_windows(c, 7, (7, 7), 32, (224, 224), &cfg(), out)
        };
        let mut c = vec![0.0f32; 49];
        assert_eq!(small(&c, &mut out), Plan::Windows);
        assert!(out.is_empty());
        c[24] = 0.7;
        assert_eq!(small(&c, &mut out), Plan::Whole);
    }
}
