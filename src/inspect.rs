//! One frame through preprocess, classify and decide on the calling thread: the path the
//! `classify` and `eval` commands take. The stages are the daemon's own, built from the
//! same config, so a verdict here is the verdict the line would publish.

use std::path::Path;

use crate::capture::{load_gray, CaptureError};
use crate::classify::{Classifier, ClassifyError};
use crate::config::{DecideConfig, ModelConfig, PreprocessConfig};
use crate::decide::Decider;
use crate::frame::Frame;
use crate::preprocess::Preprocessor;

pub struct Inspector {
    pre: Preprocessor,
    classifier: Classifier,
    decider: Decider,
    frame: Frame,
}

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Classify(#[from] ClassifyError),
    #[error(transparent)]
    Image(#[from] CaptureError),
    #[error("{0}")]
    Config(String),
}

impl Inspector {
    pub fn new(
        pre: &PreprocessConfig,
        model: &ModelConfig,
        decide: &DecideConfig,
    ) -> Result<Inspector, InspectError> {
        let classifier = Classifier::new(model)?;
        let meta = classifier.meta();
        let decider = Decider::new(
            decide,
            &meta.labels,
            &meta.ok_label,
            meta.tiling.tile as u32,
        )
        .map_err(InspectError::Config)?;
        Ok(Inspector {
            pre: Preprocessor::new(pre),
            classifier,
            decider,
            frame: Frame::default(),
        })
    }

    pub fn labels(&self) -> &[String] {
        self.classifier.labels()
    }

    pub fn ok_index(&self) -> usize {
        self.decider.ok_index()
    }

    pub fn model_id(&self) -> &str {
        &self.classifier.meta().id
    }

    /// Inspects gray pixels; the returned frame holds the tiles, probabilities and verdict.
    pub fn inspect_pixels(
        &mut self,
        width: u32,
        height: u32,
        pixels: &[u8],
    ) -> Result<&Frame, InspectError> {
        self.frame.reset(0, width, height);
        self.frame.pixels.copy_from_slice(pixels);
        self.pre.process(&mut self.frame);
        self.classifier.classify(&mut self.frame)?;
        self.decider.decide(&mut self.frame);
        Ok(&self.frame)
    }

    pub fn inspect_file(&mut self, path: &Path) -> Result<&Frame, InspectError> {
        let (w, h, px) = load_gray(path)?;
        self.inspect_pixels(w, h, &px)
    }
}

/// The defect class the frame's evidence ranks highest (a label index); `ok` is the index
/// of the no-defect label, never a candidate.
pub fn top_class(frame: &Frame, ok: usize) -> usize {
    frame
        .verdict
        .evidence
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != ok)
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap_or(ok)
}
