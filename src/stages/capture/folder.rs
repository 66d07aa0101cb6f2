//! The `dir` source: a folder of images replayed in name order, once or forever, paced
//! at `capture.fps`, decoded images cached up to a budget.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::frame::Frame;
use crate::stages::capture::source::{
    is_image_file, load_gray, sleep_unless_stopped, CaptureError, Read,
};
use crate::telemetry::Stats;

/// Keeps frames at a steady rate; `fps == 0` does not pace.
struct Pacer {
    period: Option<Duration>,
    next: Option<Instant>,
}

impl Pacer {
    fn new(fps: f64) -> Self {
        Self {
            period: (fps > 0.0).then(|| Duration::from_secs_f64(1.0 / fps)),
            next: None,
        }
    }

    fn wait(&mut self, stop: &AtomicBool) {
        let Some(period) = self.period else { return };
        let now = Instant::now();
        let due = self.next.unwrap_or(now);
        if due > now {
            sleep_unless_stopped(due - now, stop);
        }
        // When far behind, start afresh rather than bursting to catch up.
        let base = if now > due + period { now } else { due };
        self.next = Some(base + period);
    }
}

/// Decoded images kept for replay, up to this many bytes.
const CACHE_BUDGET: usize = 256 << 20;

pub struct DirSource {
    files: Vec<PathBuf>,
    cache: Vec<Option<(u32, u32, Vec<u8>)>>,
    cached_bytes: usize,
    next: usize,
    looping: bool,
    pacer: Pacer,
    good_this_pass: usize,
    /// Delivered as a live camera would (`capture.live`): never waits for the pipeline.
    pub live: bool,
}

impl DirSource {
    pub fn open(path: &Path, looping: bool, fps: f64) -> Result<DirSource, CaptureError> {
        let folder_err = |reason: String| CaptureError::Folder {
            path: path.to_path_buf(),
            reason,
        };
        let entries = std::fs::read_dir(path).map_err(|e| folder_err(e.to_string()))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_image_file(p))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(folder_err("holds no PNG, JPEG or BMP image".into()));
        }
        info!(folder = %path.display(), images = files.len(), looping, "Replaying a folder of images.");
        Ok(DirSource {
            cache: vec![None; files.len()],
            files,
            cached_bytes: 0,
            next: 0,
            looping,
            pacer: Pacer::new(fps),
            good_this_pass: 0,
            live: false,
        })
    }

    pub fn read(&mut self, frame: &mut Frame, stats: &Stats, stop: &AtomicBool) -> Read {
        if self.next == self.files.len() {
            if !self.looping {
                return Read::End;
            }
            if self.good_this_pass == 0 {
                // Every file failed: do not spin on a folder of broken files.
                sleep_unless_stopped(Duration::from_secs(1), stop);
            }
            self.next = 0;
            self.good_this_pass = 0;
        }
        let i = self.next;
        self.next += 1;
        let path = &self.files[i];
        if self.cache[i].is_none() {
            match load_gray(path) {
                Ok(img) => {
                    if self.cached_bytes + img.2.len() <= CACHE_BUDGET {
                        self.cached_bytes += img.2.len();
                        self.cache[i] = Some(img);
                    } else {
                        self.pacer.wait(stop);
                        fill(frame, img.0, img.1, &img.2, path);
                        self.good_this_pass += 1;
                        return Read::Frame;
                    }
                }
                Err(e) => {
                    stats.corrupt_files.fetch_add(1, Relaxed);
                    warn!(error = %e, "Skipped an image that cannot be read.");
                    return Read::Nothing;
                }
            }
        }
        let (w, h, px) = self.cache[i].as_ref().expect("cached above");
        self.pacer.wait(stop);
        fill(frame, *w, *h, px, path);
        self.good_this_pass += 1;
        Read::Frame
    }
}

fn fill(frame: &mut Frame, w: u32, h: u32, px: &[u8], path: &Path) {
    frame.width = w;
    frame.height = h;
    frame.pixels.clear();
    frame.pixels.extend_from_slice(px);
    frame.origin.clear();
    if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
        frame.origin.push_str(name);
    }
}
