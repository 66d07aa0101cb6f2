//! One frame through preprocess, classify and decide on the calling thread: the path the
//! `classify` and `eval` commands take. The stages are the daemon's own, built from the
//! same config, so a verdict here is the verdict the line would publish.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::config::{DecideConfig, ModelConfig, PreprocessConfig};
use crate::frame::Frame;
use crate::stages::capture::{load_gray, CaptureError};
use crate::stages::classify::{Classifier, ClassifyError};
use crate::stages::decide::Decider;
use crate::stages::preprocess::Preprocessor;

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
        let classifier = Classifier::new(model, None)?;
        let decider =
            Decider::new(decide, &classifier.meta().labels).map_err(InspectError::Config)?;
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

    /// Each class's `[decide]` threshold, in label order.
    pub fn thresholds(&self) -> &[f32] {
        self.decider.thresholds()
    }

    /// The first-look model's id, when the first look is on.
    pub fn first_look(&self) -> Option<&str> {
        self.classifier.first_look()
    }

    pub fn model_id(&self) -> &str {
        &self.classifier.meta().id
    }

    /// Inspects gray pixels; the returned frame holds the regions, detections, verdict and
    /// each stage's time.
    pub fn inspect_pixels(
        &mut self,
        width: u32,
        height: u32,
        pixels: &[u8],
    ) -> Result<&Frame, InspectError> {
        self.frame.reset(0, width, height);
        self.frame.pixels.copy_from_slice(pixels);
        let t = Instant::now();
        self.pre.process(&mut self.frame);
        let t1 = Instant::now();
        self.classifier.classify(&mut self.frame)?;
        let t2 = Instant::now();
        self.decider.decide(&mut self.frame);
        let f = &mut self.frame;
        f.times.preprocess_us = (t1 - t).as_micros() as u32;
        f.times.classify_us = (t2 - t1).as_micros() as u32;
        f.times.decide_us = t2.elapsed().as_micros() as u32;
        Ok(&self.frame)
    }

    pub fn inspect_file(&mut self, path: &Path) -> Result<&Frame, InspectError> {
        let (w, h, px) = load_gray(path)?;
        self.inspect_pixels(w, h, &px)
    }
}

/// The defect class the model is surest the frame holds (a label index): the one with
/// the highest heat anywhere in the frame, whether or not it passed its threshold.
pub fn top_class(frame: &Frame) -> usize {
    frame
        .class_scores
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// Where `classify` and `eval` look for the model when given neither `--model` nor
/// `--config`: a checkout's `models/` under the working directory, then where the .deb
/// installs it.
pub const DEFAULT_MODELS: [&str; 2] = [
    "models/neu_det.onnx",
    "/usr/share/inspectd/models/neu_det.onnx",
];

/// The first of [`DEFAULT_MODELS`] that exists, or an error saying which option to give.
pub fn default_model() -> Result<PathBuf, String> {
    DEFAULT_MODELS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "no model given and none at {}: give --model FILE.onnx or --config FILE",
                DEFAULT_MODELS.join(" or ")
            )
        })
}
