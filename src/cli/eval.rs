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

use crate::cli::clean::{clean_frames, cut_crops, lay_in, Rng};
use crate::cli::inspect::{InspectError, Inspector};
use crate::frame::{iou, Frame};
use crate::stages::capture::{is_image_file, load_gray};
use crate::stages::decide::{overlap, snap_to_regions, whole_pixels};

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
        .filter(|p| is_image_file(p))
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

/// A sample's surface: its file name's prefix (NEU's class).
fn surface_of(s: &Sample) -> String {
    let stem = s
        .image
        .file_stem()
        .and_then(|x| x.to_str())
        .unwrap_or_default();
    stem.rsplit_once('_')
        .map(|(p, _)| p)
        .unwrap_or(stem)
        .to_string()
}

/// The surfaces of `samples`, in the order [`box_free_crops`] numbers its groups.
pub fn surfaces(samples: &[Sample]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in samples {
        let p = surface_of(s);
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// Defect-free `side` x `side` crops of the box-free area of `samples`, grouped by the
/// images' file-name prefix (NEU's class: one surface per group, named by [`surfaces`]),
/// in the order eval cuts them: for building defect-free frames outside eval (the
/// pipeline bench).
pub fn box_free_crops(
    samples: &[Sample],
    side: u32,
) -> Result<Vec<crate::cli::clean::Crop>, EvalError> {
    let names = surfaces(samples);
    let mut out = Vec::new();
    for s in samples {
        let surface = surface_of(s);
        let group = names
            .iter()
            .position(|p| *p == surface)
            .expect("every sample's surface is named");
        let rects: Vec<[u32; 4]> = read_voc(&s.annotation)?.iter().map(|b| b.rect).collect();
        let (w, h, px) = load_gray(&s.image).map_err(|e| EvalError::Image {
            path: s.image.clone(),
            source: e.into(),
        })?;
        out.extend(cut_crops(&px, w, h, &rects, side, group));
    }
    Ok(out)
}

/// Reads a hold-out list: the list named `list` (`"val"`, `"train"`) of a JSON split file
/// (the training script writes one), or plain text with one image stem per line.
pub fn read_holdout(path: &Path, list: &str) -> Result<BTreeSet<String>, EvalError> {
    let err = |reason: String| EvalError::Dataset {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    if path.extension().is_some_and(|e| e == "json") {
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        let list = v[list]
            .as_array()
            .ok_or_else(|| err(format!("no {list:?} list")))?;
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

/// One scored box of one class in one image, for detection metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub image: usize,
    pub score: f32,
    /// x0, y0, x1, y1 in pixels.
    pub rect: [f32; 4],
}

/// Greedy matching as detectors are scored (PASCAL VOC, COCO): detections of one class
/// taken best first, each matched to the unmatched ground-truth box of its image it
/// overlaps most, if that IoU reaches `threshold`. Returns, per detection in score order,
/// the IoU of its match (None: a false positive, which includes a duplicate).
pub fn match_class(dets: &[Scored], truth: &[Vec<[f32; 4]>], threshold: f32) -> Vec<Option<f32>> {
    let mut order: Vec<usize> = (0..dets.len()).collect();
    order.sort_by(|&a, &b| dets[b].score.total_cmp(&dets[a].score));
    let mut used: Vec<Vec<bool>> = truth.iter().map(|t| vec![false; t.len()]).collect();
    order
        .into_iter()
        .map(|i| {
            let d = dets[i];
            let mut best: Option<(usize, f32)> = None;
            for (j, g) in truth[d.image].iter().enumerate() {
                let o = iou(d.rect, *g);
                if !used[d.image][j] && o >= threshold && best.is_none_or(|(_, b)| o > b) {
                    best = Some((j, o));
                }
            }
            best.map(|(j, o)| {
                used[d.image][j] = true;
                o
            })
        })
        .collect()
}

/// Average precision from matches in score order and the number of ground-truth boxes:
/// the area under the precision/recall curve with precision made monotone (VOC 2010+,
/// all points). None when the class has no ground truth (it is left out of the mean).
pub fn average_precision(matches: &[Option<f32>], n_truth: usize) -> Option<f64> {
    if n_truth == 0 {
        return None;
    }
    let mut tp = 0usize;
    let points: Vec<(f64, f64)> = matches
        .iter()
        .enumerate()
        .map(|(k, m)| {
            tp += m.is_some() as usize;
            (tp as f64 / n_truth as f64, tp as f64 / (k + 1) as f64)
        })
        .collect();
    let mut ap = 0.0;
    let mut prev_recall = 0.0;
    for (k, &(recall, _)) in points.iter().enumerate() {
        if recall > prev_recall {
            let best_after = points[k..].iter().map(|p| p.1).fold(0.0, f64::max);
            ap += (recall - prev_recall) * best_after;
            prev_recall = recall;
        }
    }
    Some(ap)
}

/// Detection metrics over a dataset, per class and overall.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DetectionReport {
    /// Mean over classes of AP at IoU 0.5.
    pub map50: f64,
    /// Mean over classes of AP averaged over IoU 0.50, 0.55, ..., 0.95 (COCO's).
    pub map50_95: f64,
    pub ap50: std::collections::BTreeMap<String, f64>,
    /// Mean IoU of the reported defects (at the `[decide]` thresholds) that match a box.
    pub mean_iou: f64,
    /// Share of box-free pixels inside reported defect boxes (area defects not counted:
    /// see `Report::boxfree_flagged_with_areas`).
    pub boxfree_flagged: f64,
    /// Share of boxed pixels inside reported defect boxes.
    pub boxed_covered: f64,
    /// Reported defects: matched to a box of their class at IoU 0.5, and not.
    pub reported_matched: u64,
    pub reported_unmatched: u64,
}

/// One image's truth and what was found, kept for scoring.
struct Scoring {
    classes: usize,
    truth: Vec<Vec<Vec<[f32; 4]>>>,
    /// All detections above the model's floor, per class.
    dets: Vec<Vec<Scored>>,
    /// The defects decide reported, per class.
    reported: Vec<Vec<Scored>>,
    boxed: u64,
    boxed_hit: u64,
    clean: u64,
    clean_hit: u64,
}

impl Scoring {
    fn new(classes: usize) -> Scoring {
        Scoring {
            classes,
            truth: vec![Vec::new(); classes],
            dets: vec![Vec::new(); classes],
            reported: vec![Vec::new(); classes],
            boxed: 0,
            boxed_hit: 0,
            clean: 0,
            clean_hit: 0,
        }
    }

    /// Adds one image: its truth boxes (class, rect), the detections and the reported
    /// boxes (class, score, rect), and the pixel counts of the box-free share.
    fn add(
        &mut self,
        size: (usize, usize),
        truth: &[(usize, [u32; 4])],
        dets: impl Iterator<Item = (usize, f32, [f32; 4])>,
        reported: &[(usize, f32, [u32; 4])],
        in_box: &mut Vec<bool>,
        flagged: &mut Vec<bool>,
    ) {
        let image = self.truth[0].len();
        for t in self.truth.iter_mut() {
            t.push(Vec::new());
        }
        for &(c, r) in truth {
            self.truth[c][image].push(r.map(|v| v as f32));
        }
        for (c, score, rect) in dets {
            self.dets[c].push(Scored { image, score, rect });
        }
        let (w, h) = size;
        in_box.clear();
        in_box.resize(w * h, false);
        flagged.clear();
        flagged.resize(w * h, false);
        let fill = |mask: &mut Vec<bool>, [x0, y0, x1, y1]: [u32; 4]| {
            let (x0, x1) = ((x0 as usize).min(w), (x1 as usize).min(w));
            for y in (y0 as usize).min(h)..(y1 as usize).min(h) {
                mask[y * w + x0..y * w + x1.max(x0)].fill(true);
            }
        };
        for &(_, r) in truth {
            fill(in_box, r);
        }
        for &(c, score, r) in reported {
            fill(flagged, r);
            self.reported[c].push(Scored {
                image,
                score,
                rect: r.map(|v| v as f32),
            });
        }
        for (b, f) in in_box.iter().zip(flagged.iter()) {
            if *b {
                self.boxed += 1;
                self.boxed_hit += *f as u64;
            } else {
                self.clean += 1;
                self.clean_hit += *f as u64;
            }
        }
    }

    fn report(&self, classes: &[String]) -> DetectionReport {
        let mut ap50 = std::collections::BTreeMap::new();
        let mut map50_95 = Vec::new();
        let (mut iou_sum, mut matched, mut unmatched) = (0.0f64, 0u64, 0u64);
        for (c, class) in classes.iter().enumerate().take(self.classes) {
            let n_truth = self.truth[c].iter().map(Vec::len).sum();
            let at =
                |t: f32| average_precision(&match_class(&self.dets[c], &self.truth[c], t), n_truth);
            if let Some(a) = at(0.5) {
                ap50.insert(class.clone(), a);
                let aps: Vec<f64> = (0..10).filter_map(|k| at(0.5 + 0.05 * k as f32)).collect();
                map50_95.push(aps.iter().sum::<f64>() / aps.len() as f64);
            }
            for m in match_class(&self.reported[c], &self.truth[c], 0.5) {
                match m {
                    Some(o) => {
                        iou_sum += o as f64;
                        matched += 1;
                    }
                    None => unmatched += 1,
                }
            }
        }
        let mean = |v: &[f64]| {
            if v.is_empty() {
                0.0
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        DetectionReport {
            map50: mean(&ap50.values().copied().collect::<Vec<_>>()),
            map50_95: mean(&map50_95),
            ap50,
            mean_iou: if matched > 0 {
                iou_sum / matched as f64
            } else {
                0.0
            },
            boxfree_flagged: self.clean_hit as f64 / self.clean.max(1) as f64,
            boxed_covered: self.boxed_hit as f64 / self.boxed.max(1) as f64,
            reported_matched: matched,
            reported_unmatched: unmatched,
        }
    }

    /// Per class: the lowest threshold at which the reported defects' precision (IoU 0.5)
    /// reaches `target`, and the recall kept there. None where it never does.
    fn thresholds_for(&self, target: f64) -> Vec<Option<(f32, f64, f64)>> {
        (0..self.classes)
            .map(|c| {
                let n_truth: usize = self.truth[c].iter().map(Vec::len).sum();
                if n_truth == 0 {
                    return None;
                }
                let mut dets = self.dets[c].clone();
                dets.sort_by(|a, b| b.score.total_cmp(&a.score));
                let matches = match_class(&dets, &self.truth[c], 0.5);
                let mut tp = 0usize;
                let mut best = None;
                for (k, m) in matches.iter().enumerate() {
                    tp += m.is_some() as usize;
                    // Only cut between distinct scores: every detection at a score is in.
                    if dets.get(k + 1).is_some_and(|n| n.score == dets[k].score) {
                        continue;
                    }
                    let precision = tp as f64 / (k + 1) as f64;
                    if precision >= target {
                        best = Some((dets[k].score, precision, tp as f64 / n_truth as f64));
                    }
                }
                best
            })
            .collect()
    }
}

/// How one use of the preprocess regions changes the scores.
#[derive(Debug, Serialize)]
pub struct PreprocessUse {
    pub off: DetectionReport,
    pub on: DetectionReport,
}

/// A threshold that reaches the asked precision for one class.
#[derive(Debug, Serialize)]
pub struct TunedThreshold {
    pub class: String,
    /// None where no threshold reaches the precision.
    pub threshold: Option<f32>,
    pub precision: Option<f64>,
    pub recall: Option<f64>,
}

/// The line's first error, per image: a defective image reported `ok`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct FrameErrors {
    /// Images holding at least one box for which no defect at all was reported.
    pub escape_rate: f64,
    /// Per class: of the images holding a box of that class, the share with no defect
    /// at all reported (it would ship).
    pub escapes: std::collections::BTreeMap<String, f64>,
    /// Per class: of the same images, the share with no defect of that class reported
    /// (caught, but named as something else).
    pub class_misses: std::collections::BTreeMap<String, f64>,
    /// Per class: how many images hold a box of it.
    pub images_with: std::collections::BTreeMap<String, u64>,
}

/// The first error where a line meets it: each labelled image laid into an assembled
/// defect-free frame (its gray moved to the surface's, its border faded in), so the
/// defect is a small part of a camera-sized frame of surface unlike its own image's.
/// A laid image escapes when no reported defect (box or area) touches any of its boxes.
#[derive(Debug, Clone, Serialize, Default)]
pub struct LaidErrors {
    pub frames: usize,
    pub width: u32,
    pub height: u32,
    /// Laid images holding at least one box that no reported defect touches.
    pub escape_rate: f64,
    /// Per class: of the laid images holding a box of it, the share none of whose boxes
    /// a reported defect touches.
    pub escapes: std::collections::BTreeMap<String, f64>,
    /// Per class: the share none of whose boxes a defect of that class touches.
    pub class_misses: std::collections::BTreeMap<String, f64>,
    /// Escapes of the images laid into a frame of their own class's surface (a defect
    /// lost in surface that may look like it: NEU's box-free surface around a crazed
    /// image can be crazed too, unlabelled) ...
    pub own_surface_escape_rate: f64,
    /// ... and of those laid into another class's surface.
    pub other_surface_escape_rate: f64,
    /// Per surface (the class of the images its crops were cut from), per class of the
    /// laid image: the share that escapes.
    pub by_surface: std::collections::BTreeMap<String, std::collections::BTreeMap<String, f64>>,
}

/// The line's second error on one set of defect-free images.
#[derive(Debug, Clone, Serialize, Default)]
pub struct CleanSet {
    pub images: usize,
    pub megapixels: f64,
    /// Share of their area inside reported defect boxes.
    pub flagged_area: f64,
    /// Share of images with at least one defect reported.
    pub flagged_rate: f64,
    pub defects_per_mpx: f64,
    /// Defects reported, per class: what the false alarms call themselves.
    pub defects: std::collections::BTreeMap<String, u64>,
    /// Mean share of each image the detector ran on (1 without a first look).
    pub detector_share: f64,
}

/// False alarms on defect-free surface: crops of the box-free area of the evaluated
/// images (this object's own fields), camera-sized frames assembled from those crops, and
/// the images of `--clean DIR`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct CleanReport {
    /// Side of the crops, px.
    pub crop_side: u32,
    #[serde(flatten)]
    pub crops: CleanSet,
    pub frames: CleanSet,
    /// The assembled frames again, per surface (the class whose images their crops were
    /// cut from): which strip the false alarms and the detector's work come from.
    pub frames_by_surface: std::collections::BTreeMap<String, CleanSet>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<CleanSet>,
}

/// Thresholds for a maximum escape rate, per class: the highest box and area thresholds
/// at which no more than that share of the class's images lose every defect of the
/// class, with the fewest clean crops and frames flagged by it.
#[derive(Debug, Serialize)]
pub struct EscapeThreshold {
    pub class: String,
    pub threshold: f32,
    /// None: no area defects for the class.
    pub area_threshold: Option<f32>,
    /// The class's images with none of its defects reported, at these thresholds.
    pub class_miss: f64,
    /// Clean crops and frames the class flags at these thresholds.
    pub clean_flagged: u64,
    pub clean_images: u64,
}

/// What `inspectd eval` does beside scoring the labelled images.
#[derive(Debug, Clone, Default)]
pub struct EvalOptions {
    /// Print, per class, the lowest threshold reaching this precision.
    pub target_precision: Option<f64>,
    /// Print, per class, thresholds keeping its images' misses at or under this share.
    pub max_escape: Option<f64>,
    /// Side of the clean crops cut from the box-free area (0: none).
    pub crop_side: u32,
    /// Camera-sized clean frames to assemble from those crops, and their size.
    pub clean_frames: usize,
    pub frame_size: (u32, u32),
    /// A folder of defect-free images, each inspected whole.
    pub clean_dir: Option<PathBuf>,
    /// `--max-escape`'s budget holds on the images laid into clean frames too.
    pub max_escape_laid: bool,
    /// The budget is held by the area thresholds alone: box thresholds stay where
    /// precision (or the config) puts them.
    pub areas_only: bool,
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
    /// Boxes scored as a detector is: AP, mAP, IoU, box-free area flagged.
    pub detection: DetectionReport,
    /// Each use of the preprocess regions, on and off, on the same model outputs.
    pub preprocess: std::collections::BTreeMap<String, PreprocessUse>,
    /// Share of images with no defect reported at all (every NEU image has one).
    pub images_reported_ok: f64,
    /// Share of box-free pixels inside reported boxes or area defects.
    pub boxfree_flagged_with_areas: f64,
    /// Escapes: defective images reported `ok`.
    pub frames: FrameErrors,
    /// False alarms on defect-free surface.
    pub clean: CleanReport,
    /// Escapes with each image laid into an assembled clean frame (none without clean
    /// frames).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub laid: Option<LaidErrors>,
    /// With `--max-escape`: per class, thresholds that hold it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_escape: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub escape_thresholds: Vec<EscapeThreshold>,
    /// With `--target-precision`: per class, the threshold that reaches it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_precision: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tuned_thresholds: Vec<TunedThreshold>,
    pub images_per_second: f64,
    pub latency_ms_mean: f64,
    pub latency_ms_p99: f64,
    /// The first-look model, when the first look was on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_look: Option<String>,
    /// Mean share of each labelled image the detector ran on (1 without a first look).
    pub detector_share: f64,
    /// Mean time of each stage per image, milliseconds (the first look's is part of
    /// classify's).
    pub preprocess_ms_mean: f64,
    pub classify_ms_mean: f64,
    pub first_look_ms_mean: f64,
    pub decide_ms_mean: f64,
}

/// Per class: the surest box (heat peak) and the surest area cell inside the frame.
fn class_peaks(frame: &Frame, n: usize) -> Vec<[f32; 2]> {
    peaks_where(frame, n, |_| true)
}

/// Per class: the surest box and the surest area cell inside the frame whose rectangles
/// (x0, y0, x1, y1 in frame pixels; a cell's is its square, the last live one stretched
/// to the frame's edge) `keep` accepts.
fn peaks_where(frame: &Frame, n: usize, keep: impl Fn([f32; 4]) -> bool) -> Vec<[f32; 2]> {
    let mut out = vec![[0f32; 2]; n];
    for d in frame.detections.iter().filter(|d| keep(d.rect)) {
        out[d.label][0] = out[d.label][0].max(d.score);
    }
    let g = frame.area_grid;
    let cells = g.cols * g.rows;
    if cells > 0 && frame.area.len() >= cells * n {
        let (live_cols, live_rows) = g.live(frame.width, frame.height);
        for (c, o) in out.iter_mut().enumerate() {
            let map = &frame.area[c * cells..(c + 1) * cells];
            for y in 0..live_rows {
                let (y0, y1) = g.cell_span(y, y, live_rows, frame.height);
                for x in 0..live_cols {
                    let (x0, x1) = g.cell_span(x, x, live_cols, frame.width);
                    if keep([x0 as f32, y0 as f32, x1 as f32, y1 as f32]) {
                        o[1] = o[1].max(map[y * g.cols + x]);
                    }
                }
            }
        }
    }
    out
}

/// Counts what is reported on defect-free images.
struct CleanTally {
    images: usize,
    pixels: u64,
    flagged_pixels: u64,
    flagged_images: usize,
    defects: Vec<u64>,
    looked: f64,
}

impl CleanTally {
    fn new(n: usize) -> CleanTally {
        CleanTally {
            images: 0,
            pixels: 0,
            flagged_pixels: 0,
            flagged_images: 0,
            defects: vec![0; n],
            looked: 0.0,
        }
    }

    fn add(&mut self, frame: &Frame, mask: &mut Vec<bool>) {
        let (w, h) = (frame.width as usize, frame.height as usize);
        mask.clear();
        mask.resize(w * h, false);
        for d in &frame.verdict.defects {
            let [x, y, bw, bh] = d.bbox.map(|v| v as usize);
            for row in y.min(h)..(y + bh).min(h) {
                mask[row * w + x.min(w)..row * w + (x + bw).min(w)].fill(true);
            }
            self.defects[d.label] += 1;
        }
        self.images += 1;
        self.pixels += (w * h) as u64;
        self.flagged_pixels += mask.iter().filter(|&&m| m).count() as u64;
        self.flagged_images += !frame.verdict.ok as usize;
        self.looked += frame.looked as f64;
    }

    /// Adds another tally's counts to this one.
    fn absorb(&mut self, other: &CleanTally) {
        self.images += other.images;
        self.pixels += other.pixels;
        self.flagged_pixels += other.flagged_pixels;
        self.flagged_images += other.flagged_images;
        for (d, o) in self.defects.iter_mut().zip(&other.defects) {
            *d += o;
        }
        self.looked += other.looked;
    }

    fn report(&self, classes: &[String]) -> CleanSet {
        let mpx = self.pixels as f64 / 1e6;
        CleanSet {
            images: self.images,
            megapixels: mpx,
            flagged_area: self.flagged_pixels as f64 / self.pixels.max(1) as f64,
            flagged_rate: self.flagged_images as f64 / self.images.max(1) as f64,
            defects_per_mpx: if mpx > 0.0 {
                self.defects.iter().sum::<u64>() as f64 / mpx
            } else {
                0.0
            },
            defects: classes
                .iter()
                .zip(&self.defects)
                .filter(|(_, &d)| d > 0)
                .map(|(c, &d)| (c.clone(), d))
                .collect(),
            detector_share: self.looked / self.images.max(1) as f64,
        }
    }
}

/// The image files of a `--clean` folder, in name order.
fn clean_images(dir: &Path) -> Result<Vec<PathBuf>, EvalError> {
    let err = |reason: String| EvalError::Dataset {
        path: dir.to_path_buf(),
        reason,
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| err(format!("--clean: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_image_file(p))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(err("--clean: holds no PNG, JPEG or BMP image".into()));
    }
    Ok(files)
}

/// Box and area thresholds for one class. Boxes say where: their threshold `box_t` comes
/// from precision. Areas say whether: among the area thresholds at which at most `budget`
/// of the class's images (`mine`: per image the surest box and area score of the class)
/// would have none of its defects, the one flagging the fewest `clean` images, the
/// highest between equals (none at all when boxes alone hold the budget). When no area
/// threshold holds it, the box threshold is lowered until one does, unless `boxes_stay`:
/// then the box threshold stays and, of the area thresholds that miss least, the one
/// flagging the fewest clean images (none at all when no area saves an image).
fn escape_threshold(
    class: &str,
    mine: &[[f32; 2]],
    clean: &[[f32; 2]],
    budget: f64,
    box_t: f32,
    boxes_stay: bool,
) -> EscapeThreshold {
    let caught = |p: &[f32; 2], t: f32, a: Option<f32>| p[0] >= t || a.is_some_and(|a| p[1] >= a);
    let miss = |t: f32, a: Option<f32>| {
        mine.iter().filter(|p| !caught(p, t, a)).count() as f64 / mine.len().max(1) as f64
    };
    let flagged = |t: f32, a: Option<f32>| clean.iter().filter(|p| caught(p, t, a)).count() as u64;
    let areas: Vec<Option<f32>> = std::iter::once(None)
        .chain((30..=99).rev().map(|k| Some(k as f32 / 100.0)))
        .collect();
    let result = |t: f32, a: Option<f32>| EscapeThreshold {
        class: class.to_string(),
        threshold: t,
        area_threshold: a,
        class_miss: miss(t, a),
        clean_flagged: flagged(t, a),
        clean_images: clean.len() as u64,
    };
    // The box threshold, then (unless boxes stay) lower ones in steps of 0.01 (counted in
    // whole hundredths, so no rounding creeps in), down to 0.05.
    let start = (box_t * 100.0).round() as i32;
    let floor = if boxes_stay { start } else { 5 };
    let steps = std::iter::once(box_t).chain((floor..start).rev().map(|k| k as f32 / 100.0));
    // Of the area thresholds that let at most `limit` of the class's images pass at box
    // threshold t, the one flagging the fewest clean images (none, then the highest,
    // between equals: `areas` is in that order and `min_by_key` keeps the first).
    let fewest_alarms = |t: f32, limit: f64| {
        areas
            .iter()
            .copied()
            .filter(|&a| miss(t, a) <= limit)
            .min_by_key(|&a| flagged(t, a))
    };
    for t in steps {
        if let Some(a) = fewest_alarms(t, budget) {
            return result(t, a);
        }
    }
    // Nothing holds the budget: the lowest box threshold allowed and, of the area
    // thresholds that miss least there, the one flagging the fewest clean images: an area
    // that saves no image adds only alarms.
    let lowest_box = if boxes_stay { box_t } else { box_t.min(0.05) };
    let least = areas
        .iter()
        .map(|&a| miss(lowest_box, a))
        .fold(f64::INFINITY, f64::min);
    result(lowest_box, fewest_alarms(lowest_box, least).flatten())
}

/// A labelled image kept to be laid into clean frames: its size, pixels and boxes
/// (class, rect).
struct Labelled {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
    boxes: Vec<(usize, [u32; 4])>,
}

/// Lays image k into clean frame k mod their count, at a
/// place drawn at random (the same on every run), and counts the laid images none of
/// whose boxes a reported defect touches.
fn laid_escapes(
    inspector: &mut Inspector,
    images: &[Labelled],
    surfaces: &[(usize, Vec<u8>)],
    (fw, fh): (u32, u32),
    classes: &[String],
) -> Result<(LaidErrors, Vec<LaidPeaks>), EvalError> {
    let n = classes.len();
    let mut all_peaks = Vec::with_capacity(images.len());
    let mut rng = Rng::new(20261204);
    let (mut with, mut escaped, mut missed) = (vec![0u64; n], vec![0u64; n], vec![0u64; n]);
    let (mut frames, mut escaped_any) = (0usize, 0u64);
    let mut by_surface = SurfaceTally::new(n);
    let mut canvas = Vec::new();
    for (k, im) in images.iter().enumerate() {
        let (w, h, px, truth) = (im.width, im.height, &im.pixels, &im.boxes);
        if w > fw || h > fh {
            continue;
        }
        let (surface, pixels) = &surfaces[k % surfaces.len()];
        canvas.clear();
        canvas.extend_from_slice(pixels);
        let x = rng.below((fw - w + 1) as usize) as u32;
        let y = rng.below((fh - h + 1) as usize) as u32;
        lay_in(&mut canvas, fw, px, w, h, x, y);
        let frame = inspector
            .inspect_pixels(fw, fh, &canvas)
            .map_err(|e| EvalError::Image {
                path: PathBuf::from(format!("labelled image {k} laid into a clean frame")),
                source: e,
            })?;
        // A reported defect (of `class`, or of any) shares pixels with one of the boxes.
        let touches = |class: Option<usize>| {
            truth.iter().any(|&(_, [x0, y0, x1, y1])| {
                let laid = [x0 + x, y0 + y, x1 - x0, y1 - y0];
                frame
                    .verdict
                    .defects
                    .iter()
                    .any(|d| class.is_none_or(|c| d.label == c) && overlap(d.bbox, laid) > 0)
            })
        };
        let caught = touches(None);
        frames += 1;
        escaped_any += !caught as u64;
        let held: Vec<bool> = (0..n).map(|c| truth.iter().any(|t| t.0 == c)).collect();
        for c in (0..n).filter(|&c| held[c]) {
            with[c] += 1;
            escaped[c] += !caught as u64;
            missed[c] += !touches(Some(c)) as u64;
        }
        by_surface.add(*surface, &held, caught);
        all_peaks.push(LaidPeaks {
            held,
            peaks: peaks_on(frame, truth, (x, y), n),
        });
    }
    let by_class = |v: &[u64]| -> std::collections::BTreeMap<String, f64> {
        (0..n)
            .filter(|&c| with[c] > 0)
            .map(|c| (classes[c].clone(), v[c] as f64 / with[c] as f64))
            .collect()
    };
    let mut errors = LaidErrors {
        frames,
        width: fw,
        height: fh,
        escape_rate: escaped_any as f64 / frames.max(1) as f64,
        escapes: by_class(&escaped),
        class_misses: by_class(&missed),
        ..LaidErrors::default()
    };
    by_surface.report(classes, &mut errors);
    Ok((errors, all_peaks))
}

/// Laid images counted by the surface they lie on (the class whose images the frame's
/// crops were cut from): on their own class's surface or another's, and per surface and
/// class of the laid image.
struct SurfaceTally {
    n: usize,
    /// [own surface, another's]: (laid, escaped).
    own_other: [(u64, u64); 2],
    /// Per (surface, class): (laid, escaped).
    cells: Vec<(u64, u64)>,
}

impl SurfaceTally {
    fn new(n: usize) -> SurfaceTally {
        SurfaceTally {
            n,
            own_other: [(0, 0); 2],
            cells: vec![(0, 0); n * n],
        }
    }

    /// One laid image: the frame's surface, the classes it holds, whether it was caught.
    fn add(&mut self, surface: usize, held: &[bool], caught: bool) {
        let escaped = !caught as u64;
        if surface < self.n {
            for c in (0..self.n).filter(|&c| held[c]) {
                let cell = &mut self.cells[surface * self.n + c];
                *cell = (cell.0 + 1, cell.1 + escaped);
            }
        }
        let own = &mut self.own_other[!held.get(surface).copied().unwrap_or(false) as usize];
        *own = (own.0 + 1, own.1 + escaped);
    }

    fn report(&self, classes: &[String], out: &mut LaidErrors) {
        let n = self.n;
        let rate = |(laid, esc): (u64, u64)| esc as f64 / laid.max(1) as f64;
        out.own_surface_escape_rate = rate(self.own_other[0]);
        out.other_surface_escape_rate = rate(self.own_other[1]);
        out.by_surface = (0..n)
            .filter(|&g| self.cells[g * n..(g + 1) * n].iter().any(|c| c.0 > 0))
            .map(|g| {
                let row = (0..n)
                    .filter(|&c| self.cells[g * n + c].0 > 0)
                    .map(|c| (classes[c].clone(), rate(self.cells[g * n + c])))
                    .collect();
                (classes[g].clone(), row)
            })
            .collect();
    }
}

/// A laid image's classes and, per class, the surest box touching one of its boxes and
/// the surest area cell over one (for `--max-escape-laid`).
struct LaidPeaks {
    held: Vec<bool>,
    peaks: Vec<[f32; 2]>,
}

/// Per class: the surest detection whose box touches one of `truth`'s boxes (moved by
/// `at`), and the surest area cell whose square touches one.
fn peaks_on(frame: &Frame, truth: &[(usize, [u32; 4])], at: (u32, u32), n: usize) -> Vec<[f32; 2]> {
    let boxes: Vec<[f32; 4]> = truth
        .iter()
        .map(|&(_, [x0, y0, x1, y1])| {
            [x0 + at.0, y0 + at.1, x1 + at.0, y1 + at.1].map(|v| v as f32)
        })
        .collect();
    peaks_where(frame, n, |r| {
        boxes
            .iter()
            .any(|b| r[0] < b[2] && b[0] < r[2] && r[1] < b[3] && b[1] < r[3])
    })
}

/// Runs the evaluation. `progress` is called after each image.
pub fn evaluate(
    inspector: &mut Inspector,
    dataset: &Path,
    samples: &[Sample],
    opts: &EvalOptions,
    mut progress: impl FnMut(usize),
) -> Result<Report, EvalError> {
    let target_precision = opts.target_precision;
    let classes = inspector.labels().to_vec();
    let class_index = |name: &str| classes.iter().position(|c| c == name);
    let n = classes.len();
    let mut confusion = vec![vec![0u64; n]; n];
    let mut reported_ok = 0usize;
    let mut latencies = Vec::with_capacity(samples.len());
    let mut stage_us = [0u64; 4];
    let mut looked = 0f64;
    let started = Instant::now();
    let (mut in_box, mut flagged) = (Vec::new(), Vec::new());
    let mut plain = Scoring::new(n);
    let mut snapped = Scoring::new(n);
    // Boxes and area defects together, for the area they flag.
    let mut with_areas = Scoring::new(n);
    let mut areas = Vec::new();
    let (mut truth, mut reported, mut reported_snapped) = (Vec::new(), Vec::new(), Vec::new());
    let thresholds = inspector.thresholds().to_vec();
    let mut snapped_dets = Vec::new();
    // Per image: which classes it holds boxes of, and per class the surest box and area
    // score the model gave (for escapes and the escape-budget thresholds).
    let mut holds: Vec<Vec<bool>> = Vec::with_capacity(samples.len());
    let mut peaks: Vec<Vec<[f32; 2]>> = Vec::with_capacity(samples.len());
    let (mut escaped, mut missed) = (vec![0u64; n], vec![0u64; n]);
    let (mut with_boxes, mut escaped_any) = (0u64, 0u64);
    let mut crops = Vec::new();
    // Each image with its boxes (class, rect), to lay into clean frames afterwards.
    let mut kept: Vec<Labelled> = Vec::new();
    for (k, s) in samples.iter().enumerate() {
        let boxes = read_voc(&s.annotation)?;
        truth.clear();
        for b in &boxes {
            let Some(c) = class_index(&b.class) else {
                return Err(EvalError::Annotation {
                    path: s.annotation.clone(),
                    reason: format!(
                        "class {:?} is not one the model knows ({})",
                        b.class,
                        classes.join(", ")
                    ),
                });
            };
            truth.push((c, b.rect));
        }
        let prefix = surface_of(s);
        let label = match class_index(&prefix) {
            Some(c) => c,
            None => {
                if boxes.is_empty() {
                    return Err(EvalError::Annotation {
                        path: s.annotation.clone(),
                        reason: format!(
                            "neither the file-name prefix {prefix:?} nor any box names a class"
                        ),
                    });
                }
                let mut area = vec![0u64; n];
                for &(c, [x0, y0, x1, y1]) in &truth {
                    area[c] += (x1 - x0) as u64 * (y1 - y0) as u64;
                }
                (0..n).max_by_key(|&i| area[i]).expect("n > 0")
            }
        };
        let image_err = |e: InspectError| EvalError::Image {
            path: s.image.clone(),
            source: e,
        };
        let (w, h, px) = load_gray(&s.image).map_err(|e| image_err(e.into()))?;
        if opts.crop_side > 0 {
            let rects: Vec<[u32; 4]> = truth.iter().map(|t| t.1).collect();
            crops.extend(cut_crops(&px, w, h, &rects, opts.crop_side, label));
        }
        let t = Instant::now();
        let frame = inspector.inspect_pixels(w, h, &px).map_err(image_err)?;
        if opts.clean_frames > 0 && !truth.is_empty() {
            kept.push(Labelled {
                width: w,
                height: h,
                pixels: px,
                boxes: truth.clone(),
            });
        }
        latencies.push(t.elapsed().as_secs_f64() * 1e3);
        stage_us[0] += frame.times.preprocess_us as u64;
        stage_us[1] += frame.times.classify_us as u64;
        stage_us[2] += frame.times.decide_us as u64;
        stage_us[3] += frame.times.look_us as u64;
        looked += frame.looked as f64;
        confusion[label][crate::cli::inspect::top_class(frame)] += 1;
        reported_ok += frame.verdict.ok as usize;
        let mut held = vec![false; n];
        for &(c, _) in &truth {
            held[c] = true;
        }
        if !truth.is_empty() {
            with_boxes += 1;
            escaped_any += frame.verdict.ok as u64;
        }
        for c in (0..n).filter(|&c| held[c]) {
            escaped[c] += frame.verdict.ok as u64;
            missed[c] += !frame.verdict.defects.iter().any(|d| d.label == c) as u64;
        }
        peaks.push(class_peaks(frame, n));
        holds.push(held);
        let size = (frame.width as usize, frame.height as usize);
        reported.clear();
        reported_snapped.clear();
        areas.clear();
        for d in &frame.verdict.defects {
            let [x, y, w, h] = d.bbox;
            let r = (d.label, d.score, [x, y, x + w, y + h]);
            if d.area {
                areas.push(r);
            } else {
                reported.push(r);
            }
        }
        // Each detection's box snapped to the regions, once: scored as a detection, and
        // as a reported defect where it passes its threshold.
        snapped_dets.clear();
        snapped_dets.extend(frame.detections.iter().map(|d| {
            let r = snap_to_regions(
                whole_pixels(d.rect, frame.width, frame.height),
                &frame.regions,
            );
            (d.label, d.score, r)
        }));
        reported_snapped.extend(
            snapped_dets
                .iter()
                .filter(|&&(label, score, _)| score >= thresholds[label]),
        );
        let dets = frame.detections.iter().map(|d| (d.label, d.score, d.rect));
        plain.add(size, &truth, dets, &reported, &mut in_box, &mut flagged);
        areas.extend_from_slice(&reported);
        with_areas.add(
            size,
            &truth,
            std::iter::empty(),
            &areas,
            &mut in_box,
            &mut flagged,
        );
        let dets = snapped_dets
            .iter()
            .map(|&(label, score, r)| (label, score, r.map(|v| v as f32)));
        snapped.add(
            size,
            &truth,
            dets,
            &reported_snapped,
            &mut in_box,
            &mut flagged,
        );
        progress(k + 1);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let share = |a: u64, b: u64| a as f64 / b.max(1) as f64;
    let images_with: Vec<u64> = (0..n)
        .map(|c| holds.iter().filter(|h| h[c]).count() as u64)
        .collect();
    let by_class = |v: &[u64]| -> std::collections::BTreeMap<String, f64> {
        (0..n)
            .filter(|&c| images_with[c] > 0)
            .map(|c| (classes[c].clone(), share(v[c], images_with[c])))
            .collect()
    };
    let frames = FrameErrors {
        escape_rate: share(escaped_any, with_boxes),
        escapes: by_class(&escaped),
        class_misses: by_class(&missed),
        images_with: (0..n)
            .filter(|&c| images_with[c] > 0)
            .map(|c| (classes[c].clone(), images_with[c]))
            .collect(),
    };
    // The second error: clean crops, frames assembled from them, and --clean DIR.
    let mut clean_peaks = Vec::new();
    let mut measure = |name: &Path, w: u32, h: u32, px: &[u8], set: &mut CleanTally| {
        let frame = inspector
            .inspect_pixels(w, h, px)
            .map_err(|e| EvalError::Image {
                path: name.to_path_buf(),
                source: e,
            })?;
        set.add(frame, &mut flagged);
        clean_peaks.push(class_peaks(frame, n));
        Ok::<(), EvalError>(())
    };
    let mut crop_tally = CleanTally::new(n);
    for c in &crops {
        let side = c.side;
        measure(
            Path::new("clean crop"),
            side,
            side,
            &c.pixels,
            &mut crop_tally,
        )?;
    }
    // Each frame is tallied under its surface (a crop's group is its image's class);
    // the frames' own figures are the surfaces' together.
    let (fw, fh) = opts.frame_size;
    let surfaces = clean_frames(&crops, opts.clean_frames, opts.frame_size);
    let mut surface_tallies: Vec<CleanTally> = (0..n).map(|_| CleanTally::new(n)).collect();
    for (g, px) in &surfaces {
        measure(
            Path::new("assembled clean frame"),
            fw,
            fh,
            px,
            &mut surface_tallies[*g],
        )?;
    }
    let mut frame_tally = CleanTally::new(n);
    for t in &surface_tallies {
        frame_tally.absorb(t);
    }
    let dir = match &opts.clean_dir {
        Some(d) => {
            let mut tally = CleanTally::new(n);
            for path in clean_images(d)? {
                let (w, h, px) = load_gray(&path).map_err(|e| EvalError::Image {
                    path: path.clone(),
                    source: e.into(),
                })?;
                measure(&path, w, h, &px, &mut tally)?;
            }
            Some(tally.report(&classes))
        }
        None => None,
    };
    let (laid, laid_peaks) = if surfaces.is_empty() || kept.is_empty() {
        (None, Vec::new())
    } else {
        let (errors, peaks) = laid_escapes(inspector, &kept, &surfaces, opts.frame_size, &classes)?;
        (Some(errors), peaks)
    };
    let clean = CleanReport {
        crop_side: opts.crop_side,
        crops: crop_tally.report(&classes),
        frames: frame_tally.report(&classes),
        frames_by_surface: classes
            .iter()
            .zip(&surface_tallies)
            .filter(|(_, t)| t.images > 0)
            .map(|(c, t)| (c.clone(), t.report(&classes)))
            .collect(),
        dir,
    };
    // Box thresholds for --max-escape: from --target-precision, else the config's.
    let precise = target_precision.map_or(Vec::new(), |p| plain.thresholds_for(p));
    let escape_thresholds = match opts.max_escape {
        Some(r) => (0..n)
            .filter(|&c| images_with[c] > 0)
            .map(|c| {
                let mut mine: Vec<[f32; 2]> = holds
                    .iter()
                    .zip(&peaks)
                    .filter(|(h, _)| h[c])
                    .map(|(_, p)| p[c])
                    .collect();
                if opts.max_escape_laid {
                    mine.extend(laid_peaks.iter().filter(|l| l.held[c]).map(|l| l.peaks[c]));
                }
                let clean: Vec<[f32; 2]> = clean_peaks.iter().map(|p| p[c]).collect();
                let box_t = precise
                    .get(c)
                    .copied()
                    .flatten()
                    .map_or(thresholds[c], |t| t.0);
                escape_threshold(&classes[c], &mine, &clean, r, box_t, opts.areas_only)
            })
            .collect(),
        None => Vec::new(),
    };
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
    let tuned_thresholds = match target_precision {
        Some(p) => plain
            .thresholds_for(p)
            .into_iter()
            .zip(&classes)
            .map(|(t, c)| TunedThreshold {
                class: c.clone(),
                threshold: t.map(|t| t.0),
                precision: t.map(|t| t.1),
                recall: t.map(|t| t.2),
            })
            .collect(),
        None => Vec::new(),
    };
    latencies.sort_by(f64::total_cmp);
    let p99 =
        latencies[((latencies.len() as f64 * 0.99).ceil() as usize).clamp(1, latencies.len()) - 1];
    let per_image_ms = |us: u64| us as f64 / 1e3 / samples.len().max(1) as f64;
    let detection = plain.report(&classes);
    let mut preprocess = std::collections::BTreeMap::new();
    preprocess.insert(
        "snap_to_regions".to_string(),
        PreprocessUse {
            off: detection.clone(),
            on: snapped.report(&classes),
        },
    );
    let boxfree_flagged_with_areas = with_areas.report(&classes).boxfree_flagged;
    Ok(Report {
        dataset: dataset.display().to_string(),
        model: inspector.model_id().to_string(),
        images: samples.len(),
        image_accuracy: correct as f64 / total.max(1) as f64,
        classes,
        per_class,
        confusion_matrix: confusion,
        detection,
        preprocess,
        images_reported_ok: reported_ok as f64 / samples.len().max(1) as f64,
        boxfree_flagged_with_areas,
        frames,
        clean,
        laid,
        max_escape: opts.max_escape,
        escape_thresholds,
        target_precision,
        tuned_thresholds,
        images_per_second: samples.len() as f64 / elapsed.max(1e-9),
        latency_ms_mean: latencies.iter().sum::<f64>() / latencies.len() as f64,
        latency_ms_p99: p99,
        preprocess_ms_mean: per_image_ms(stage_us[0]),
        classify_ms_mean: per_image_ms(stage_us[1]),
        first_look_ms_mean: per_image_ms(stage_us[3]),
        first_look: inspector.first_look().map(str::to_string),
        detector_share: looked / samples.len().max(1) as f64,
        decide_ms_mean: per_image_ms(stage_us[2]),
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
        if let Some(look) = &self.first_look {
            let _ = writeln!(
                s,
                "first look {look}: the detector ran on {} of the pixels",
                self.shares()
            );
        }
        let _ = writeln!(
            s,
            "image-level accuracy  {:.2}%",
            self.image_accuracy * 100.0
        );
        let d = &self.detection;
        let _ = writeln!(
            s,
            "detection  mAP@0.5 {:.3}  mAP@0.5:0.95 {:.3}  mean IoU of matched defects {:.3}",
            d.map50, d.map50_95, d.mean_iou
        );
        let _ = writeln!(
            s,
            "reported defects  {} matching a box (IoU 0.5), {} not",
            d.reported_matched, d.reported_unmatched
        );
        let _ = writeln!(
            s,
            "box-free area inside reported boxes  {:.1}%  (boxed area inside them {:.1}%; \
             box-free area inside boxes or area defects {:.1}%)",
            d.boxfree_flagged * 100.0,
            d.boxed_covered * 100.0,
            self.boxfree_flagged_with_areas * 100.0
        );
        let _ = writeln!(
            s,
            "images with no defect reported       {:.1}%",
            self.images_reported_ok * 100.0
        );
        let f = &self.frames;
        let rates = |m: &std::collections::BTreeMap<String, f64>| {
            m.iter()
                .map(|(c, r)| format!("{c} {:.1}%", r * 100.0))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            s,
            "escapes (defective images reported ok)  {:.1}%: {}",
            f.escape_rate * 100.0,
            rates(&f.escapes)
        );
        let _ = writeln!(
            s,
            "  no defect of the image's own class    {}",
            rates(&f.class_misses)
        );
        if let Some(l) = &self.laid {
            let _ = writeln!(
                s,
                "escapes, each image laid into a {}x{} clean frame ({})  {:.1}%: {}",
                l.width,
                l.height,
                l.frames,
                l.escape_rate * 100.0,
                rates(&l.escapes)
            );
            let _ = writeln!(
                s,
                "  no defect of the image's own class on its boxes    {}",
                rates(&l.class_misses)
            );
            let _ = writeln!(
                s,
                "  laid into its own class's surface / another's    {:.1}% / {:.1}%",
                l.own_surface_escape_rate * 100.0,
                l.other_surface_escape_rate * 100.0
            );
            for (surface, row) in &l.by_surface {
                let _ = writeln!(s, "  on {surface} surface    {}", rates(row));
            }
        }
        let c = &self.clean;
        let line = |s: &mut String, what: String, set: &CleanSet| {
            let named: Vec<String> = set
                .defects
                .iter()
                .map(|(c, n)| format!("{c} {n}"))
                .collect();
            let _ = writeln!(
                s,
                "false alarms on {what}: {:.2}% of the area inside reported boxes, {:.1}% flagged, \
                 {:.1} defects/Mpx{}",
                set.flagged_area * 100.0,
                set.flagged_rate * 100.0,
                set.defects_per_mpx,
                if named.is_empty() { String::new() } else { format!(" ({})", named.join(", ")) }
            );
        };
        line(
            &mut s,
            format!(
                "{} box-free {}x{} crops",
                c.crops.images, c.crop_side, c.crop_side
            ),
            &c.crops,
        );
        line(
            &mut s,
            format!("{} assembled clean frames", c.frames.images),
            &c.frames,
        );
        for (surface, set) in &c.frames_by_surface {
            let _ = writeln!(
                s,
                "  {} of {surface} surface: {:.2}% of the area, {:.1}% flagged, the detector on \
                 {:.1}% of the pixels",
                set.images,
                set.flagged_area * 100.0,
                set.flagged_rate * 100.0,
                set.detector_share * 100.0
            );
        }
        if let Some(d) = &c.dir {
            line(&mut s, format!("{} --clean images", d.images), d);
        }
        for (name, u) in &self.preprocess {
            let _ = writeln!(
                s,
                "preprocess {name}: off mAP@0.5 {:.3}, box-free flagged {:.1}%, mean IoU {:.3}; \
                 on mAP@0.5 {:.3}, box-free flagged {:.1}%, mean IoU {:.3}",
                u.off.map50,
                u.off.boxfree_flagged * 100.0,
                u.off.mean_iou,
                u.on.map50,
                u.on.boxfree_flagged * 100.0,
                u.on.mean_iou
            );
        }
        let _ = writeln!(
            s,
            "speed     {:.1} images/s, latency mean {:.2} ms, p99 {:.2} ms \
             (preprocess {:.2}, classify {:.2}, decide {:.3} ms)",
            self.images_per_second,
            self.latency_ms_mean,
            self.latency_ms_p99,
            self.preprocess_ms_mean,
            self.classify_ms_mean,
            self.decide_ms_mean
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
            "\n{:<width$}  image precision  recall     f1  support   AP@0.5",
            "class"
        );
        for c in &self.classes {
            let m = &self.per_class[c];
            let ap = self
                .detection
                .ap50
                .get(c)
                .map_or("-".to_string(), |a| format!("{a:.3}"));
            let _ = writeln!(
                s,
                "{c:<width$}  {:>15.4}  {:>6.4}  {:>5.4}  {:>7}  {ap:>7}",
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
        if let Some(p) = self.target_precision {
            let _ = writeln!(
                s,
                "\nThresholds that reach precision {p} (IoU 0.5); paste into the config:\n"
            );
            let _ = write!(s, "{}", self.decide_block());
        }
        if let Some(r) = self.max_escape {
            let _ = writeln!(
                s,
                "\nThresholds that keep each class's images without a defect of the class at or \
                 under {:.1}%, flagging the fewest clean crops and frames; paste into the config:\n",
                r * 100.0
            );
            let _ = write!(s, "{}", self.escape_block());
        }
        s
    }

    /// The `[decide]` block for `--max-escape`, with what each class costs beside it.
    /// The labelled images' and each clean set's share of pixels the detector ran on.
    fn shares(&self) -> String {
        let mut out = format!("images {:.1} %", 100.0 * self.detector_share);
        for (name, set) in [
            ("clean crops", Some(&self.clean.crops)),
            ("clean frames", Some(&self.clean.frames)),
            ("--clean", self.clean.dir.as_ref()),
        ] {
            if let Some(set) = set.filter(|s| s.images > 0) {
                out += &format!(", {name} {:.1} %", 100.0 * set.detector_share);
            }
        }
        out
    }

    pub fn escape_block(&self) -> String {
        use std::fmt::Write;
        let key = |c: &str| {
            if c.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                c.to_string()
            } else {
                format!("{c:?}")
            }
        };
        let boxes: Vec<String> = self
            .escape_thresholds
            .iter()
            .map(|t| format!("{} = {:.2}", key(&t.class), t.threshold))
            .collect();
        let areas: Vec<String> = self
            .escape_thresholds
            .iter()
            .filter_map(|t| {
                t.area_threshold
                    .map(|a| format!("{} = {a:.2}", key(&t.class)))
            })
            .collect();
        let mut s = format!(
            "[decide]\nthresholds = {{ {} }}\narea_thresholds = {{ {} }}\n",
            boxes.join(", "),
            areas.join(", ")
        );
        for t in &self.escape_thresholds {
            let _ = writeln!(
                s,
                "# {}: {:.1}% of its images without one of its defects; flags {} of {} clean crops and frames",
                t.class,
                t.class_miss * 100.0,
                t.clean_flagged,
                t.clean_images
            );
        }
        s
    }

    /// The `[decide]` block for `--target-precision`, with each class's recall beside it.
    pub fn decide_block(&self) -> String {
        use std::fmt::Write;
        let mut s = String::from("[decide]\nthresholds = { ");
        let set: Vec<String> = self
            .tuned_thresholds
            .iter()
            .filter_map(|t| {
                let name = if t
                    .class
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    t.class.clone()
                } else {
                    format!("{:?}", t.class)
                };
                t.threshold.map(|v| format!("{name} = {:.3}", v.min(1.0)))
            })
            .collect();
        let _ = writeln!(s, "{} }}", set.join(", "));
        for t in &self.tuned_thresholds {
            match (t.threshold, t.precision, t.recall) {
                (Some(v), Some(p), Some(r)) => {
                    let _ = writeln!(
                        s,
                        "# {}: threshold {v:.3} keeps recall {:.1}% at precision {:.1}%",
                        t.class,
                        r * 100.0,
                        p * 100.0
                    );
                }
                _ => {
                    let _ = writeln!(
                        s,
                        "# {}: no threshold reaches the precision; it keeps default_threshold",
                        t.class
                    );
                }
            }
        }
        s
    }
}

/// The line's figures without and with the first look, side by side: what gating costs
/// in escapes and accuracy, what it saves in pixels the detector runs on.
pub fn first_look_comparison(off: &Report, on: &Report) -> String {
    let pct = |v: f64| format!("{:.2} %", 100.0 * v);
    let mut rows = vec![
        (
            "escapes (images with no defect)",
            pct(off.frames.escape_rate),
            pct(on.frames.escape_rate),
        ),
        (
            "mAP@0.5",
            format!("{:.3}", off.detection.map50),
            format!("{:.3}", on.detection.map50),
        ),
        (
            "clean crops, area flagged",
            pct(off.clean.crops.flagged_area),
            pct(on.clean.crops.flagged_area),
        ),
        (
            "clean frames, area flagged",
            pct(off.clean.frames.flagged_area),
            pct(on.clean.frames.flagged_area),
        ),
        (
            "clean frames with a defect",
            pct(off.clean.frames.flagged_rate),
            pct(on.clean.frames.flagged_rate),
        ),
    ];
    if let (Some(a), Some(b)) = (&off.clean.dir, &on.clean.dir) {
        rows.push((
            "--clean images, area flagged",
            pct(a.flagged_area),
            pct(b.flagged_area),
        ));
    }
    rows.push((
        "classify ms per image",
        format!("{:.1}", off.classify_ms_mean),
        format!("{:.1}", on.classify_ms_mean),
    ));
    let mut out = String::from("\nfirst look            off            on\n");
    for (name, a, b) in rows {
        out += &format!("  {name:<32} {a:>10} {b:>10}\n");
    }
    out += &format!(
        "  share of pixels the detector ran on, with the first look: {}\n  first look {:.1} ms per image\n",
        on.shares(),
        on.first_look_ms_mean
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(image: usize, score: f32, rect: [f32; 4]) -> Scored {
        Scored { image, score, rect }
    }

    #[test]
    fn laid_escapes_are_split_by_the_surface_each_image_lies_on() {
        let classes: Vec<String> = ["crazing", "inclusion", "pitted_surface"]
            .map(String::from)
            .to_vec();
        let mut t = SurfaceTally::new(3);
        // On crazing surface: a crazed image caught, one escaped, an inclusion escaped.
        t.add(0, &[true, false, false], true);
        t.add(0, &[true, false, false], false);
        t.add(0, &[false, true, false], false);
        // On pitted surface: an inclusion image escaped, one caught; an image holding
        // both inclusion and pitted surface (its own class's surface) caught.
        t.add(2, &[false, true, false], false);
        t.add(2, &[false, true, false], true);
        t.add(2, &[false, true, true], true);
        let mut out = LaidErrors::default();
        t.report(&classes, &mut out);
        // Own surface: 3 images, 1 escaped; another's: 3 images, 2 escaped.
        assert_eq!(out.own_surface_escape_rate, 1.0 / 3.0);
        assert_eq!(out.other_surface_escape_rate, 2.0 / 3.0);
        let crazing = &out.by_surface["crazing"];
        assert_eq!(crazing["crazing"], 0.5);
        assert_eq!(crazing["inclusion"], 1.0);
        assert!(!crazing.contains_key("pitted_surface"), "none laid there");
        let pitted = &out.by_surface["pitted_surface"];
        assert_eq!(pitted["inclusion"], 1.0 / 3.0);
        assert_eq!(pitted["pitted_surface"], 0.0);
        assert!(!out.by_surface.contains_key("inclusion"), "no frame of it");
    }

    #[test]
    fn a_perfect_box_gives_ap_one() {
        let truth = vec![vec![[10.0, 10.0, 50.0, 50.0]], vec![[0.0, 0.0, 20.0, 30.0]]];
        let dets = [
            det(0, 0.9, [10.0, 10.0, 50.0, 50.0]),
            det(1, 0.8, [0.0, 0.0, 20.0, 30.0]),
        ];
        let m = match_class(&dets, &truth, 0.5);
        assert_eq!(m, vec![Some(1.0), Some(1.0)]);
        assert_eq!(average_precision(&m, 2), Some(1.0));
    }

    #[test]
    fn a_box_at_iou_0_4_misses_at_0_5_and_counts_at_0_3() {
        // Truth 0..10 x 0..10 (100 px); detection 0..10 x 0..4 overlaps 40: IoU 0.4.
        let truth = vec![vec![[0.0, 0.0, 10.0, 10.0]]];
        let dets = [det(0, 0.9, [0.0, 0.0, 10.0, 4.0])];
        assert!((iou(dets[0].rect, truth[0][0]) - 0.4).abs() < 1e-6);
        assert_eq!(
            average_precision(&match_class(&dets, &truth, 0.5), 1),
            Some(0.0)
        );
        assert_eq!(
            average_precision(&match_class(&dets, &truth, 0.3), 1),
            Some(1.0)
        );
    }

    #[test]
    fn a_duplicate_is_a_false_positive() {
        let truth = vec![vec![[0.0, 0.0, 10.0, 10.0]], vec![[0.0, 0.0, 10.0, 10.0]]];
        // Ranked: hit (image 0), duplicate (image 0), hit (image 1).
        let dets = [
            det(0, 0.9, [0.0, 0.0, 10.0, 10.0]),
            det(0, 0.8, [0.0, 0.0, 10.0, 9.0]),
            det(1, 0.7, [0.0, 0.0, 10.0, 10.0]),
        ];
        let m = match_class(&dets, &truth, 0.5);
        assert_eq!(
            m.iter().map(Option::is_some).collect::<Vec<_>>(),
            [true, false, true]
        );
        // Recall 0.5 at precision 1, then recall 1 at precision 2/3.
        let ap = average_precision(&m, 2).unwrap();
        assert!((ap - (0.5 * 1.0 + 0.5 * 2.0 / 3.0)).abs() < 1e-9, "{ap}");
    }

    #[test]
    fn a_class_with_no_ground_truth_is_left_out_of_the_mean() {
        let classes = vec!["a".to_string(), "b".to_string()];
        let mut sc = Scoring::new(2);
        let (mut m1, mut m2) = (Vec::new(), Vec::new());
        // Class a: one box found exactly; class b: no truth, one detection.
        sc.add(
            (20, 20),
            &[(0, [0, 0, 10, 10])],
            [
                (0, 0.9, [0.0, 0.0, 10.0, 10.0]),
                (1, 0.8, [10.0, 10.0, 20.0, 20.0]),
            ]
            .into_iter(),
            &[(0, 0.9, [0, 0, 10, 10])],
            &mut m1,
            &mut m2,
        );
        let r = sc.report(&classes);
        assert_eq!(r.map50, 1.0);
        assert_eq!(r.map50_95, 1.0);
        assert!(!r.ap50.contains_key("b"));
        assert_eq!(r.mean_iou, 1.0);
        assert_eq!(r.boxfree_flagged, 0.0);
        assert_eq!(r.boxed_covered, 1.0);
    }

    #[test]
    fn an_escape_budget_is_held_by_the_area_threshold_that_flags_least_clean_surface() {
        // Four images of the class: boxes at 0.5 find three; the fourth's area is 0.8.
        let mine = [[0.9, 0.2], [0.7, 0.9], [0.6, 0.3], [0.1, 0.8]];
        // Clean surface: one area cell at 0.75, nothing above.
        let clean = [[0.0, 0.75], [0.2, 0.1]];
        let t = escape_threshold("c", &mine, &clean, 0.0, 0.5, false);
        assert_eq!((t.threshold, t.area_threshold), (0.5, Some(0.8)));
        assert_eq!((t.class_miss, t.clean_flagged, t.clean_images), (0.0, 0, 2));
        // A budget of one image in four: boxes alone do.
        let t = escape_threshold("c", &mine, &clean, 0.25, 0.5, false);
        assert_eq!(
            (t.threshold, t.area_threshold, t.class_miss),
            (0.5, None, 0.25)
        );
        // No area threshold saves the fourth image: the box threshold comes down to it.
        let mine = [[0.9, 0.0], [0.12, 0.0]];
        let t = escape_threshold("c", &mine, &clean, 0.0, 0.5, false);
        assert_eq!((t.area_threshold, t.class_miss), (None, 0.0));
        assert!((t.threshold - 0.12).abs() < 1e-6, "{}", t.threshold);
        // Boxes kept where precision put them: the area threshold alone answers. When
        // none holds the budget and no area saves an image, no area threshold is set
        // (it would only add alarms), boxes unmoved.
        let t = escape_threshold("c", &mine, &clean, 0.0, 0.5, true);
        assert_eq!((t.threshold, t.area_threshold), (0.5, None));
        assert_eq!(t.class_miss, 0.5);
        // When an area saves some but not all: the highest area threshold that misses
        // least, and no lower (0.65 saves the same image as 0.30 but flags no clean cell).
        let some = [[0.9, 0.0], [0.1, 0.65], [0.1, 0.2]];
        let clean = [[0.0, 0.5], [0.0, 0.1]];
        let t = escape_threshold("c", &some, &clean, 0.0, 0.5, true);
        assert_eq!((t.threshold, t.area_threshold), (0.5, Some(0.65)));
        assert_eq!((t.clean_flagged, t.class_miss), (0, 1.0 / 3.0));
        let mine = [[0.9, 0.2], [0.7, 0.9], [0.6, 0.3], [0.1, 0.8]];
        let t = escape_threshold("c", &mine, &clean, 0.0, 0.5, true);
        assert_eq!((t.threshold, t.area_threshold), (0.5, Some(0.8)));
    }

    #[test]
    fn target_precision_picks_the_lowest_threshold_that_reaches_it() {
        let mut sc = Scoring::new(1);
        let (mut m1, mut m2) = (Vec::new(), Vec::new());
        let truth: Vec<(usize, [u32; 4])> =
            (0..4).map(|i| (0, [i * 20, 0, i * 20 + 10, 10])).collect();
        // Scores 0.9 hit, 0.8 hit, 0.7 miss, 0.6 hit, 0.5 miss, 0.4 miss.
        let dets = [
            (0, 0.9, [0.0, 0.0, 10.0, 10.0]),
            (0, 0.8, [20.0, 0.0, 30.0, 10.0]),
            (0, 0.7, [100.0, 50.0, 110.0, 60.0]),
            (0, 0.6, [40.0, 0.0, 50.0, 10.0]),
            (0, 0.5, [100.0, 70.0, 110.0, 80.0]),
            (0, 0.4, [100.0, 90.0, 110.0, 99.0]),
        ];
        sc.add((200, 100), &truth, dets.into_iter(), &[], &mut m1, &mut m2);
        // Precision at each cut: 1, 1, 2/3, 3/4, 3/5, 1/2.
        let t = sc.thresholds_for(0.75)[0].unwrap();
        assert_eq!(t.0, 0.6);
        assert!((t.1 - 0.75).abs() < 1e-9 && (t.2 - 0.75).abs() < 1e-9);
        assert_eq!(sc.thresholds_for(1.0)[0].unwrap().0, 0.8);
    }

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
