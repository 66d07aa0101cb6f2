//! `inspectd eval`: how good a model is on a labelled Pascal VOC folder, through exactly
//! the daemon's preprocess, classify and decide code.
//!
//! Image-level: each image's class is its file-name prefix (NEU's convention) when that
//! prefix is a class the model knows, else the class covering most box area in its XML;
//! the predicted class is the defect class the frame's evidence ranks highest.
//! Location: the share of boxed pixels inside reported defect boxes, and the share of
//! box-free pixels wrongly inside them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use thiserror::Error;

use crate::inspect::{InspectError, Inspector};

#[derive(Debug, Error)]
pub enum EvalError {
    #[error("dataset {path}: {reason}")]
    Dataset { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Annotation { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Image { path: PathBuf, source: InspectError },
}

/// One annotated box: class and (x0, y0, x1, y1) in 0-based pixels, x1/y1 exclusive.
#[derive(Debug, Clone, PartialEq)]
pub struct BoxLabel {
    pub class: String,
    pub rect: [u32; 4],
}

/// Reads a Pascal VOC annotation: the boxes (1-based inclusive coordinates in the file).
pub fn read_voc(path: &Path) -> Result<Vec<BoxLabel>, EvalError> {
    let err = |reason: String| EvalError::Annotation {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let mut reader = quick_xml::Reader::from_str(&text);
    let mut boxes = Vec::new();
    let mut stack: Vec<String> = Vec::new();
    let mut name = String::new();
    let mut coords = [None::<f64>; 4];
    let mut saw_annotation = false;
    loop {
        match reader
            .read_event()
            .map_err(|e| err(format!("not valid XML: {e}")))?
        {
            quick_xml::events::Event::Start(e) => {
                let tag = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                if tag == "annotation" {
                    saw_annotation = true;
                }
                if tag == "object" {
                    name.clear();
                    coords = [None; 4];
                }
                stack.push(tag);
            }
            quick_xml::events::Event::End(e) => {
                let tag = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                stack.pop();
                if tag == "object" {
                    let [Some(x0), Some(y0), Some(x1), Some(y1)] = coords else {
                        return Err(err("an <object> lacks a complete <bndbox>".into()));
                    };
                    if name.is_empty() {
                        return Err(err("an <object> has no <name>".into()));
                    }
                    let x0 = (x0 - 1.0).max(0.0) as u32;
                    let y0 = (y0 - 1.0).max(0.0) as u32;
                    boxes.push(BoxLabel {
                        class: name.clone(),
                        rect: [x0, y0, (x1 as u32).max(x0), (y1 as u32).max(y0)],
                    });
                }
            }
            quick_xml::events::Event::Text(t) => {
                let value = t
                    .unescape()
                    .map_err(|e| err(e.to_string()))?
                    .trim()
                    .to_string();
                let in_object = stack.iter().any(|s| s == "object");
                match (stack.last().map(String::as_str), in_object) {
                    (Some("name"), true)
                        if stack.len() >= 2 && stack[stack.len() - 2] == "object" =>
                    {
                        name = value
                    }
                    (Some(tag @ ("xmin" | "ymin" | "xmax" | "ymax")), true) => {
                        let v: f64 = value
                            .parse()
                            .map_err(|_| err(format!("<{tag}> is not a number: {value:?}")))?;
                        let i = ["xmin", "ymin", "xmax", "ymax"]
                            .iter()
                            .position(|t| *t == tag)
                            .expect("listed");
                        coords[i] = Some(v);
                    }
                    _ => {}
                }
            }
            quick_xml::events::Event::Eof => break,
            _ => {}
        }
    }
    if !saw_annotation {
        return Err(err("no <annotation> element: not a Pascal VOC file".into()));
    }
    Ok(boxes)
}

/// An image of the dataset with its annotation.
#[derive(Debug, Clone)]
pub struct Sample {
    pub image: PathBuf,
    pub annotation: PathBuf,
}

/// Lists the images of a VOC folder (`IMAGES/`+`ANNOTATIONS/` or `JPEGImages/`+`Annotations/`),
/// keeping only the stems in `only` when given.
pub fn list_samples(dir: &Path, only: Option<&BTreeSet<String>>) -> Result<Vec<Sample>, EvalError> {
    let derr = |reason: String| EvalError::Dataset {
        path: dir.to_path_buf(),
        reason,
    };
    if !dir.is_dir() {
        return Err(derr("no such folder".into()));
    }
    let (images, annotations) = [("IMAGES", "ANNOTATIONS"), ("JPEGImages", "Annotations")]
        .iter()
        .map(|(i, a)| (dir.join(i), dir.join(a)))
        .find(|(i, a)| i.is_dir() && a.is_dir())
        .ok_or_else(|| {
            derr("holds neither IMAGES/ + ANNOTATIONS/ nor JPEGImages/ + Annotations/".into())
        })?;
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&images)
        .map_err(|e| derr(e.to_string()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| crate::capture::is_image_file(p))
        .collect();
    entries.sort();
    for image in entries {
        let stem = image
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        if only.is_some_and(|o| !o.contains(&stem)) {
            continue;
        }
        let annotation = annotations.join(format!("{stem}.xml"));
        if !annotation.is_file() {
            return Err(EvalError::Annotation {
                path: annotation,
                reason: "missing: every image needs its XML".into(),
            });
        }
        out.push(Sample { image, annotation });
    }
    if out.is_empty() {
        return Err(derr("no annotated images found".into()));
    }
    Ok(out)
}

/// Reads a hold-out list: a JSON split file with a `"val"` list (the training script
/// writes one), or plain text with one image stem per line.
pub fn read_holdout(path: &Path) -> Result<BTreeSet<String>, EvalError> {
    let err = |reason: String| EvalError::Dataset {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    if path.extension().is_some_and(|e| e == "json") {
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        let list = v["val"]
            .as_array()
            .ok_or_else(|| err("no \"val\" list".into()))?;
        return Ok(list
            .iter()
            .filter_map(|s| s.as_str().map(String::from))
            .collect());
    }
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

#[derive(Debug, Serialize)]
pub struct ClassMetrics {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: u64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub dataset: String,
    pub model: String,
    pub images: usize,
    pub image_accuracy: f64,
    pub classes: Vec<String>,
    pub per_class: std::collections::BTreeMap<String, ClassMetrics>,
    /// Rows: true class; columns: predicted class (order of `classes`).
    pub confusion_matrix: Vec<Vec<u64>>,
    /// Share of annotated defect pixels inside a reported defect box.
    pub defect_area_covered: f64,
    /// Share of box-free pixels wrongly inside a reported defect box.
    pub clean_area_flagged: f64,
    /// Share of images with no defect reported at all (every NEU image has one).
    pub images_reported_ok: f64,
    pub images_per_second: f64,
    pub latency_ms_mean: f64,
    pub latency_ms_p99: f64,
}

/// Runs the evaluation. `progress` is called after each image.
pub fn evaluate(
    inspector: &mut Inspector,
    dataset: &Path,
    samples: &[Sample],
    mut progress: impl FnMut(usize),
) -> Result<Report, EvalError> {
    let labels = inspector.labels().to_vec();
    let ok = inspector.ok_index();
    let classes: Vec<String> = labels
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != ok)
        .map(|(_, l)| l.clone())
        .collect();
    let class_index = |name: &str| classes.iter().position(|c| c == name);
    let n = classes.len();
    let mut confusion = vec![vec![0u64; n]; n];
    let (mut boxed, mut boxed_hit, mut clean, mut clean_hit, mut reported_ok) =
        (0u64, 0u64, 0u64, 0u64, 0usize);
    let mut latencies = Vec::with_capacity(samples.len());
    let started = Instant::now();
    let mut in_box = Vec::new();
    let mut flagged = Vec::new();
    for (k, s) in samples.iter().enumerate() {
        let boxes = read_voc(&s.annotation)?;
        for b in &boxes {
            if class_index(&b.class).is_none() {
                return Err(EvalError::Annotation {
                    path: s.annotation.clone(),
                    reason: format!(
                        "class {:?} is not one the model knows ({})",
                        b.class,
                        classes.join(", ")
                    ),
                });
            }
        }
        let stem = s
            .image
            .file_stem()
            .and_then(|x| x.to_str())
            .unwrap_or_default();
        let prefix = stem.rsplit_once('_').map(|(p, _)| p).unwrap_or(stem);
        let truth = match class_index(prefix) {
            Some(c) => c,
            None => {
                let mut area = vec![0u64; n];
                for b in &boxes {
                    let [x0, y0, x1, y1] = b.rect;
                    area[class_index(&b.class).expect("checked")] +=
                        (x1 - x0) as u64 * (y1 - y0) as u64;
                }
                if boxes.is_empty() {
                    return Err(EvalError::Annotation {
                        path: s.annotation.clone(),
                        reason: format!(
                            "neither the file-name prefix {prefix:?} nor any box names a class"
                        ),
                    });
                }
                (0..n).max_by_key(|&i| area[i]).expect("n > 0")
            }
        };
        let t = Instant::now();
        let frame = inspector
            .inspect_file(&s.image)
            .map_err(|e| EvalError::Image {
                path: s.image.clone(),
                source: e,
            })?;
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
        let top = crate::inspect::top_class(frame, ok);
        let predicted = classes.iter().position(|c| *c == labels[top]).unwrap_or(0);
        confusion[truth][predicted] += 1;
        if frame.verdict.ok {
            reported_ok += 1;
        }
        let (w, h) = (frame.width as usize, frame.height as usize);
        in_box.clear();
        in_box.resize(w * h, false);
        flagged.clear();
        flagged.resize(w * h, false);
        for b in &boxes {
            let [x0, y0, x1, y1] = b.rect;
            for y in (y0 as usize).min(h)..(y1 as usize).min(h) {
                in_box[y * w + (x0 as usize).min(w)..y * w + (x1 as usize).min(w)].fill(true);
            }
        }
        for d in &frame.verdict.defects {
            let [x, y, bw, bh] = d.bbox;
            for yy in y as usize..((y + bh) as usize).min(h) {
                flagged[yy * w + x as usize..yy * w + ((x + bw) as usize).min(w)].fill(true);
            }
        }
        for (b, f) in in_box.iter().zip(&flagged) {
            if *b {
                boxed += 1;
                boxed_hit += *f as u64;
            } else {
                clean += 1;
                clean_hit += *f as u64;
            }
        }
        progress(k + 1);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total: u64 = confusion.iter().flatten().sum();
    let correct: u64 = (0..n).map(|i| confusion[i][i]).sum();
    let mut per_class = std::collections::BTreeMap::new();
    for (i, c) in classes.iter().enumerate() {
        let tp = confusion[i][i] as f64;
        let predicted: f64 = (0..n).map(|r| confusion[r][i] as f64).sum();
        let support: u64 = confusion[i].iter().sum();
        let precision = if predicted > 0.0 { tp / predicted } else { 0.0 };
        let recall = if support > 0 {
            tp / support as f64
        } else {
            0.0
        };
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        per_class.insert(
            c.clone(),
            ClassMetrics {
                precision,
                recall,
                f1,
                support,
            },
        );
    }
    latencies.sort_by(f64::total_cmp);
    let p99 =
        latencies[((latencies.len() as f64 * 0.99).ceil() as usize).clamp(1, latencies.len()) - 1];
    Ok(Report {
        dataset: dataset.display().to_string(),
        model: inspector.model_id().to_string(),
        images: samples.len(),
        image_accuracy: correct as f64 / total.max(1) as f64,
        classes,
        per_class,
        confusion_matrix: confusion,
        defect_area_covered: boxed_hit as f64 / boxed.max(1) as f64,
        clean_area_flagged: clean_hit as f64 / clean.max(1) as f64,
        images_reported_ok: reported_ok as f64 / samples.len().max(1) as f64,
        images_per_second: samples.len() as f64 / elapsed.max(1e-9),
        latency_ms_mean: latencies.iter().sum::<f64>() / latencies.len() as f64,
        latency_ms_p99: p99,
    })
}

impl Report {
    /// The report for people: a summary, per-class metrics and the confusion matrix.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "dataset   {}", self.dataset);
        let _ = writeln!(s, "model     {}", self.model);
        let _ = writeln!(s, "images    {}", self.images);
        let _ = writeln!(
            s,
            "image-level accuracy  {:.2}%",
            self.image_accuracy * 100.0
        );
        let _ = writeln!(
            s,
            "defect area inside reported boxes  {:.1}%",
            self.defect_area_covered * 100.0
        );
        let _ = writeln!(
            s,
            "box-free area reported as defect   {:.1}%",
            self.clean_area_flagged * 100.0
        );
        let _ = writeln!(
            s,
            "images with no defect reported     {:.1}%",
            self.images_reported_ok * 100.0
        );
        let _ = writeln!(
            s,
            "speed     {:.1} images/s, latency mean {:.2} ms, p99 {:.2} ms",
            self.images_per_second, self.latency_ms_mean, self.latency_ms_p99
        );
        let width = self
            .classes
            .iter()
            .map(|c| c.len() + 4)
            .max()
            .unwrap_or(9)
            .max(9);
        let _ = writeln!(
            s,
            "\n{:<width$}  precision  recall     f1  support",
            "class"
        );
        for c in &self.classes {
            let m = &self.per_class[c];
            let _ = writeln!(
                s,
                "{c:<width$}  {:>9.4}  {:>6.4}  {:>5.4}  {:>7}",
                m.precision, m.recall, m.f1, m.support
            );
        }
        let _ = writeln!(
            s,
            "\nconfusion matrix (rows: true class, columns: predicted)"
        );
        let _ = write!(s, "{:<width$}", "");
        for i in 0..self.classes.len() {
            let _ = write!(s, " {:>6}", format!("[{i}]"));
        }
        s.push('\n');
        for (i, c) in self.classes.iter().enumerate() {
            let _ = write!(s, "{:<width$}", format!("[{i}] {c}"));
            for v in &self.confusion_matrix[i] {
                let _ = write!(s, " {v:>6}");
            }
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voc_boxes_are_read_zero_based() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.xml");
        std::fs::write(
            &p,
            "<annotation><size><width>200</width></size><object><name>scratches</name><bndbox>\
             <xmin>26</xmin><ymin>12</ymin><xmax>43</xmax><ymax>171</ymax></bndbox></object></annotation>",
        )
        .unwrap();
        assert_eq!(
            read_voc(&p).unwrap(),
            vec![BoxLabel {
                class: "scratches".into(),
                rect: [25, 11, 43, 171]
            }]
        );
    }

    #[test]
    fn broken_annotations_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.xml");
        std::fs::write(
            &p,
            "<annotation><object><name>x</name><bndbox><xmin>a</xmin></bndbox></object>",
        )
        .unwrap();
        let e = read_voc(&p).unwrap_err().to_string();
        assert!(e.contains("bad.xml") && e.contains("xmin"), "{e}");
        std::fs::write(&p, "<html></html>").unwrap();
        assert!(read_voc(&p)
            .unwrap_err()
            .to_string()
            .contains("not a Pascal VOC"));
    }
}
