//! The unit of work that travels the pipeline, and the pool that recycles it.
//!
//! A [`Frame`] carries the pixels and everything the stages learn about them. Frames are
//! taken from a [`FramePool`] by capture and go back to it when the last stage drops them,
//! so in the steady state no stage allocates per frame: buffers keep their capacity.

use std::ops::{Deref, DerefMut};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

/// A candidate region: a connected blob of the Otsu mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub area: u32,
    /// x, y, w, h in frame pixels.
    pub bbox: [u32; 4],
}

/// A defect the model found, before any threshold: a peak of its class's heat map and
/// the box read at that peak.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// Index into the model's labels.
    pub label: usize,
    pub score: f32,
    /// x0, y0, x1, y1 in frame pixels (x1, y1 exclusive), clipped to the frame.
    pub rect: [f32; 4],
}

/// Intersection over union of two boxes (x0, y0, x1, y1); 0 when both are empty.
pub fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// One defect reported for a frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Defect {
    /// Index into the model's labels.
    pub label: usize,
    pub score: f32,
    /// x, y, w, h in frame pixels.
    pub bbox: [u32; 4],
    /// An area defect (a region of texture the area output is sure of), not a box.
    pub area: bool,
    /// Where it is on the strip, and its track (None unless `[strip]` is configured).
    pub place: Option<Place>,
}

/// A defect's place on the strip: millimetres along the coil from its head (MD) and
/// across from the configured edge (CD), its extent, and the track (one physical defect
/// seen in several frames) it belongs to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Place {
    pub track: u64,
    /// The head-side end of its box, mm from the coil's head.
    pub md_mm: f64,
    /// The edge-side end of its box, mm from the strip's edge.
    pub cd_mm: f64,
    /// Along the strip, mm.
    pub length_mm: f64,
    /// Across the strip, mm.
    pub width_mm: f64,
    /// This frame is the first to show the defect (its track started here).
    pub first: bool,
}

/// Where a frame lies on the strip (`[strip]`): the coil, and the MD of its first row.
#[derive(Debug, Clone, PartialEq)]
pub struct FramePlace {
    /// The id `cmd/coil` gave; None before the first one.
    pub coil: Option<std::sync::Arc<str>>,
    pub md_mm: f64,
}

impl Defect {
    /// The box's area in pixels.
    pub fn area(&self) -> u64 {
        self.bbox[2] as u64 * self.bbox[3] as u64
    }
}

/// The cells of a model's area output: `cols x rows` cells of `stride` pixels, over the
/// padded frame (cells past the frame's edge see padding).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AreaGrid {
    pub cols: usize,
    pub rows: usize,
    pub stride: u32,
}

impl AreaGrid {
    /// The columns and rows of cells that lie at least half inside a `width` x `height`
    /// frame (at least one of each, if the frame has pixels). A cell mostly past the edge
    /// sees mostly padding (the frame's last row and column repeated, streaks to the
    /// model): on a 200 x 200 image its last 32 px column holds 8 real pixels. The last
    /// live cell's window (it reaches past the cell) sees those pixels, and `cell_span`
    /// stretches that cell to the edge.
    pub fn live(&self, width: u32, height: u32) -> (usize, usize) {
        let s = self.stride.max(1) as usize;
        let half_in = |n: u32| ((n as usize + s / 2) / s).max(usize::from(n > 0));
        (
            half_in(width).min(self.cols),
            half_in(height).min(self.rows),
        )
    }

    /// The pixels `[start, end)` that cells `lo..=hi` of one axis cover in a frame `n`
    /// pixels long: the last live cell reaches the frame's edge, whatever part of a
    /// cell lies past it.
    pub fn cell_span(&self, lo: usize, hi: usize, live: usize, n: u32) -> (u32, u32) {
        let s = self.stride as usize;
        let end = if hi + 1 >= live {
            n
        } else {
            ((hi + 1) * s) as u32
        };
        (((lo * s) as u32).min(n), end.min(n))
    }
}

/// What decide concluded about a frame.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verdict {
    pub ok: bool,
    pub defects: Vec<Defect>,
    /// Where on the strip the frame is (None unless `[strip]` is configured).
    pub strip: Option<FramePlace>,
}

/// Per-stage time spent on a frame, in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct StageTimes {
    pub preprocess_us: u32,
    pub classify_us: u32,
    /// The first look's part of `classify_us` (0 when it is off).
    pub look_us: u32,
    pub decide_us: u32,
}

#[derive(Debug, Default)]
pub struct Frame {
    /// Capture sequence number, increasing from 1 for each run of the daemon.
    pub seq: u64,
    /// Position among the frames that entered preprocess (no gaps, unlike `seq` after a
    /// dropped frame): decide puts the classify workers' output back in this order.
    pub order: u64,
    /// Classify failed on this frame: decide skips it (it still passes, to keep order).
    pub failed: bool,
    /// Capture time, Unix milliseconds.
    pub ts_ms: u64,
    /// Capture time, for latency.
    pub captured_at: Option<Instant>,
    pub width: u32,
    pub height: u32,
    /// 8-bit gray, row-major, `width * height` bytes.
    pub pixels: Vec<u8>,
    /// Where the frame came from (file name for the `dir` source), for logs.
    pub origin: String,
    /// Otsu level of the blurred frame.
    pub otsu_level: u8,
    /// Its difference hash equals the previous frame's (preprocess; see `health`).
    pub repeat: bool,
    pub regions: Vec<Region>,
    /// Every peak the model found above its floor, best first (classify).
    pub detections: Vec<Detection>,
    /// Per label, how sure the model is that the frame as a whole shows that class: its
    /// whole-image output, or (a model without one) the class's highest heat in the
    /// frame. Eval's predicted class is the top one; it never decides a defect.
    pub class_scores: Vec<f32>,
    /// Per label, per cell of `area_grid` (row-major): how sure the model is that the
    /// window centred on the cell shows that class over its surface (a model with an
    /// area output; empty otherwise). Decide turns sure regions into area defects.
    pub area: Vec<f32>,
    pub area_grid: AreaGrid,
    /// Share of the (padded) frame the detector ran on: 1 without a first look, 0 when
    /// the first look saw nothing (classify).
    pub looked: f32,
    pub verdict: Verdict,
    pub times: StageTimes,
}

impl Frame {
    /// Resets the frame for new pixels, keeping every buffer's capacity.
    pub fn reset(&mut self, seq: u64, width: u32, height: u32) {
        self.seq = seq;
        self.order = 0;
        self.failed = false;
        self.ts_ms = unix_ms();
        self.captured_at = Some(Instant::now());
        self.width = width;
        self.height = height;
        self.pixels.clear();
        self.pixels.resize((width * height) as usize, 0);
        self.origin.clear();
        self.otsu_level = 0;
        self.repeat = false;
        self.regions.clear();
        self.detections.clear();
        self.class_scores.clear();
        self.area.clear();
        self.area_grid = AreaGrid::default();
        self.looked = 1.0;
        self.verdict.ok = true;
        self.verdict.defects.clear();
        self.verdict.strip = None;
        self.times = StageTimes::default();
    }
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A Unix time in milliseconds as UTC calendar parts (proleptic Gregorian): for
/// evidence file names and printed times, without a date library.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utc {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u64,
    pub minute: u64,
    pub second: u64,
    pub milli: u64,
}

impl Utc {
    pub fn from_unix_ms(ms: u64) -> Utc {
        let days = (ms / 86_400_000) as i64;
        let in_day = ms % 86_400_000;
        // Days since 1970-01-01 to a civil date, by 400-year eras.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        Utc {
            year: yoe + era * 400 + (month <= 2) as i64,
            month,
            day,
            hour: in_day / 3_600_000,
            minute: in_day / 60_000 % 60,
            second: in_day / 1000 % 60,
            milli: in_day % 1000,
        }
    }
}

/// A bounded set of reusable frames. Taking blocks never: when every frame is in use a
/// new one is allocated (and kept afterwards, up to the pool's capacity).
#[derive(Clone)]
pub struct FramePool {
    free_tx: Sender<Box<Frame>>,
    free_rx: Receiver<Box<Frame>>,
}

impl FramePool {
    pub fn new(capacity: usize) -> Self {
        let (free_tx, free_rx) = crossbeam_channel::bounded(capacity);
        Self { free_tx, free_rx }
    }

    pub fn take(&self) -> PooledFrame {
        let frame = self.free_rx.try_recv().unwrap_or_default();
        PooledFrame {
            frame: Some(frame),
            home: self.free_tx.clone(),
        }
    }

    /// Frames waiting in the pool (for tests and stats).
    pub fn idle(&self) -> usize {
        self.free_rx.len()
    }
}

/// A frame on loan from a [`FramePool`]; dropping it returns it.
pub struct PooledFrame {
    frame: Option<Box<Frame>>,
    home: Sender<Box<Frame>>,
}

impl Deref for PooledFrame {
    type Target = Frame;
    fn deref(&self) -> &Frame {
        self.frame.as_ref().expect("frame present until drop")
    }
}

impl DerefMut for PooledFrame {
    fn deref_mut(&mut self) -> &mut Frame {
        self.frame.as_mut().expect("frame present until drop")
    }
}

impl Drop for PooledFrame {
    fn drop(&mut self) {
        if let Some(f) = self.frame.take() {
            // A full pool means more frames were in flight than it keeps: let this one go.
            let _ = self.home.try_send(f);
        }
    }
}

impl std::fmt::Debug for PooledFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledFrame")
            .field("seq", &self.seq)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_frame_returns_to_the_pool_with_its_buffers() {
        let pool = FramePool::new(2);
        let mut f = pool.take();
        f.reset(1, 64, 32);
        let ptr = f.pixels.as_ptr();
        drop(f);
        assert_eq!(pool.idle(), 1);
        let mut g = pool.take();
        g.reset(2, 64, 32);
        assert_eq!(
            g.pixels.as_ptr(),
            ptr,
            "the pixel buffer is reused, not reallocated"
        );
        assert_eq!(g.seq, 2);
    }
}
