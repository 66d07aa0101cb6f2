//! Classify: cut the frame into tiles and run the ONNX model on each with tract.
//!
//! The model is a plain ONNX file plus a metadata file beside it (`<name>.json`: labels,
//! input size, normalisation, tiling). [`Classifier::new`] checks the two against each
//! other, optimises the model once for a fixed batch of tiles and keeps the runnable
//! state; per frame it only fills the input tensor and runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use thiserror::Error;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use crate::config::ModelConfig;
use crate::frame::Frame;

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
pub struct InputSpec {
    pub layout: String,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Normalize {
    pub scale: f32,
    pub mean: f32,
    pub std: f32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Tiling {
    pub tile: usize,
    pub stride: usize,
}

/// The metadata file that sits beside the ONNX file.
#[derive(Debug, Clone, Deserialize)]
pub struct ModelMeta {
    /// Identifies the model in every result (`"model"`).
    pub id: String,
    pub labels: Vec<String>,
    /// The label that means "no defect".
    pub ok_label: String,
    pub input: InputSpec,
    pub normalize: Normalize,
    pub tiling: Tiling,
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
        let err = |reason: String| ClassifyError::Metadata {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
        let meta: ModelMeta = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        if meta.input.layout != "NCHW" || meta.input.channels != 1 {
            return Err(err(format!(
                "input must be NCHW with 1 channel, got {} with {}",
                meta.input.layout, meta.input.channels
            )));
        }
        if meta.input.height != meta.tiling.tile || meta.input.width != meta.tiling.tile {
            return Err(err(format!(
                "tiling.tile {} differs from the input size {}x{}",
                meta.tiling.tile, meta.input.width, meta.input.height
            )));
        }
        if meta.tiling.stride == 0 || meta.tiling.stride > meta.tiling.tile {
            return Err(err(format!(
                "tiling.stride {} must be from 1 to the tile size",
                meta.tiling.stride
            )));
        }
        if meta.normalize.std <= 0.0 {
            return Err(err("normalize.std must be positive".into()));
        }
        if !meta.labels.contains(&meta.ok_label) {
            return Err(err(format!(
                "ok_label {:?} is not one of the labels",
                meta.ok_label
            )));
        }
        Ok(meta)
    }

    pub fn ok_index(&self) -> usize {
        self.labels
            .iter()
            .position(|l| *l == self.ok_label)
            .unwrap_or(0)
    }
}

/// Tile origins along one axis: every `stride`, with the last tile pushed back to end at
/// the edge, so the whole frame is covered. The training script computes the same.
pub fn tile_positions(length: usize, tile: usize, stride: usize) -> impl Iterator<Item = usize> {
    let last = length.saturating_sub(tile);
    let regular = (0..=last).step_by(stride.max(1));
    let extra = (length > tile && !last.is_multiple_of(stride.max(1))).then_some(last);
    regular.chain(extra)
}

type Plan = Arc<TypedRunnableModel>;

/// A loaded, optimised model with its runnable state: one per classify thread.
pub struct Classifier {
    meta: ModelMeta,
    stride: usize,
    batch: usize,
    state: TypedSimpleState,
    input: Tensor,
}

impl Classifier {
    pub fn new(cfg: &ModelConfig) -> Result<Classifier, ClassifyError> {
        let meta = ModelMeta::load(&cfg.path)?;
        let stride = if cfg.tile_stride > 0 {
            cfg.tile_stride as usize
        } else {
            meta.tiling.stride
        };
        let plan = build_plan(&cfg.path, &meta, cfg.batch)?;
        let state = TypedSimpleState::new(&plan).map_err(|e| ClassifyError::Model {
            path: cfg.path.clone(),
            reason: format!("cannot make a runnable state: {e}"),
        })?;
        let t = meta.tiling.tile;
        let input = Tensor::zero::<f32>(&[cfg.batch, 1, t, t])
            .map_err(|e| ClassifyError::Run(e.to_string()))?;
        Ok(Classifier {
            meta,
            stride,
            batch: cfg.batch,
            state,
            input,
        })
    }

    pub fn meta(&self) -> &ModelMeta {
        &self.meta
    }

    pub fn labels(&self) -> &[String] {
        &self.meta.labels
    }

    /// Classifies every tile of the frame: fills `frame.tiles` and `frame.probs`
    /// (`labels().len()` probabilities per tile, tile by tile).
    pub fn classify(&mut self, frame: &mut Frame) -> Result<(), ClassifyError> {
        let t = self.meta.tiling.tile;
        let (w, h) = (frame.width as usize, frame.height as usize);
        frame.tiles.clear();
        frame.probs.clear();
        for y in tile_positions(h, t, self.stride) {
            for x in tile_positions(w, t, self.stride) {
                frame.tiles.push([x as u32, y as u32]);
            }
        }
        let n_labels = self.meta.labels.len();
        let Normalize { scale, mean, std } = self.meta.normalize;
        // (p * scale - mean) / std as one multiply-add per pixel.
        let (a, b) = (scale / std, -mean / std);
        for chunk in frame.tiles.chunks(self.batch) {
            {
                let mut view = self
                    .input
                    .try_as_plain_ram_mut()
                    .map_err(|e| ClassifyError::Run(e.to_string()))?;
                let data = view
                    .as_slice_mut::<f32>()
                    .map_err(|e| ClassifyError::Run(e.to_string()))?;
                for (i, &[x, y]) in chunk.iter().enumerate() {
                    let dst = &mut data[i * t * t..(i + 1) * t * t];
                    fill_tile(&frame.pixels, w, h, x as usize, y as usize, t, a, b, dst);
                }
            }
            let outputs = self
                .state
                .run(tvec!(self.input.clone().into()))
                .map_err(|e| ClassifyError::Run(e.to_string()))?;
            let view = outputs[0]
                .try_as_plain_ram()
                .map_err(|e| ClassifyError::Run(e.to_string()))?;
            let probs = view
                .as_slice::<f32>()
                .map_err(|e| ClassifyError::Run(e.to_string()))?;
            frame
                .probs
                .extend_from_slice(&probs[..chunk.len() * n_labels]);
        }
        Ok(())
    }
}

/// Copies one tile into the model's input, normalised; pixels beyond a frame smaller than
/// the tile repeat the edge.
#[allow(clippy::too_many_arguments)]
#[inline]
fn fill_tile(
    px: &[u8],
    w: usize,
    h: usize,
    x: usize,
    y: usize,
    t: usize,
    a: f32,
    b: f32,
    dst: &mut [f32],
) {
    for ty in 0..t {
        let sy = (y + ty).min(h - 1);
        let row = &px[sy * w..(sy + 1) * w];
        let out = &mut dst[ty * t..(ty + 1) * t];
        if x + t <= w {
            for (o, &p) in out.iter_mut().zip(&row[x..x + t]) {
                *o = p as f32 * a + b;
            }
        } else {
            for (tx, o) in out.iter_mut().enumerate() {
                *o = row[(x + tx).min(w - 1)] as f32 * a + b;
            }
        }
    }
}

fn build_plan(path: &Path, meta: &ModelMeta, batch: usize) -> Result<Plan, ClassifyError> {
    let model_err = |reason: String| ClassifyError::Model {
        path: path.to_path_buf(),
        reason,
    };
    let mismatch = |reason: String| ClassifyError::Mismatch {
        path: path.to_path_buf(),
        reason,
    };
    if !path.is_file() {
        return Err(model_err("no such file".into()));
    }
    let model = tract_onnx::onnx()
        .model_for_path(path)
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
        let dims = declared.shape.dims().collect::<Vec<_>>();
        let wanted = [1, meta.input.channels, meta.input.height, meta.input.width];
        for (axis, (d, want)) in dims.iter().zip(wanted).enumerate().skip(1) {
            if let Some(v) = d.concretize().and_then(|v| v.to_i64().ok()) {
                if v as usize != want {
                    return Err(mismatch(format!(
                        "input dimension {axis} is {v}, the metadata says {want} (input {}x{}x{})",
                        meta.input.channels, meta.input.height, meta.input.width
                    )));
                }
            }
        }
    }
    let t = meta.tiling.tile;
    let typed = model
        .with_input_fact(0, f32::fact([batch, 1, t, t]).into())
        .and_then(|m| m.into_typed())
        .map_err(|e| mismatch(format!("cannot run with input [{batch}, 1, {t}, {t}]: {e}")))?;
    let out = typed.output_fact(0).map_err(|e| model_err(e.to_string()))?;
    let out_shape = out.shape.as_concrete().map(|s| s.to_vec());
    match out_shape.as_deref() {
        Some([b, n]) if *b == batch && *n == meta.labels.len() => {}
        Some(other) => {
            return Err(mismatch(format!(
                "output shape is {other:?}; {} labels in the metadata need [batch, {}]",
                meta.labels.len(),
                meta.labels.len()
            )))
        }
        None => return Err(mismatch("output shape is not fixed".into())),
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
    fn tiles_cover_the_frame_and_end_at_the_edge() {
        assert_eq!(
            tile_positions(200, 64, 32).collect::<Vec<_>>(),
            vec![0, 32, 64, 96, 128, 136]
        );
        assert_eq!(
            tile_positions(192, 64, 64).collect::<Vec<_>>(),
            vec![0, 64, 128]
        );
        assert_eq!(tile_positions(64, 64, 32).collect::<Vec<_>>(), vec![0]);
        assert_eq!(tile_positions(40, 64, 32).collect::<Vec<_>>(), vec![0]);
        assert_eq!(tile_positions(1280, 64, 64).count(), 20);
    }

    #[test]
    fn a_small_frame_repeats_its_edge_into_the_tile() {
        let px = [10u8, 20, 30, 40];
        let mut dst = [0f32; 9];
        fill_tile(&px, 2, 2, 0, 0, 3, 1.0, 0.0, &mut dst);
        assert_eq!(dst, [10., 20., 20., 30., 40., 40., 30., 40., 40.]);
    }
}
