//! Camera and frame health: a frame too dark, saturated or without contrast, and a camera
//! that keeps delivering the same image (a frozen driver, a stopped line).
//!
//! Each frame is measured in preprocess from what it computes anyway (the histogram of
//! the blurred frame) plus a 64-bit difference hash (dHash) of the raw pixels: the frame
//! shrunk to 9x8 block means, one bit per horizontal neighbour pair (left brighter than
//! right). Two images that look the same have hashes a few bits apart at most; the same
//! image has the same hash. [`HealthMonitor`] turns the measures into states, each
//! changing only after `health.confirm_frames` frames agree (so one odd frame does not
//! flap a PLC input), frozen after `health.frozen_after_s` of the same image.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::config::HealthConfig;
use crate::contract::{CameraState, Condition, HealthMsg};
use crate::telemetry::Stats;

/// What one frame measured.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FrameMeasure {
    /// Mean gray level (0 to 255).
    pub mean: f32,
    /// Standard deviation of the gray levels: the frame's contrast.
    pub stddev: f32,
    /// Fraction of the pixels at 250 or above.
    pub saturated: f32,
    /// Difference hash of the frame (see the module).
    pub dhash: u64,
}

impl FrameMeasure {
    /// Mean, spread and saturation from a 256-bin histogram; the hash from `pixels`.
    pub fn of(hist: &[u32; 256], pixels: &[u8], width: usize, height: usize) -> FrameMeasure {
        let n: f64 = hist.iter().map(|&c| c as f64).sum();
        if n == 0.0 {
            return FrameMeasure::default();
        }
        let sum: f64 = hist
            .iter()
            .enumerate()
            .map(|(i, &c)| i as f64 * c as f64)
            .sum();
        let mean = sum / n;
        let var: f64 = hist
            .iter()
            .enumerate()
            .map(|(i, &c)| (i as f64 - mean).powi(2) * c as f64)
            .sum::<f64>()
            / n;
        let bright: f64 = hist[250..].iter().map(|&c| c as f64).sum();
        FrameMeasure {
            mean: mean as f32,
            stddev: var.sqrt() as f32,
            saturated: (bright / n) as f32,
            dhash: dhash(pixels, width, height),
        }
    }
}

/// The 64-bit difference hash of a gray frame: 9x8 block means, bit `8 * row + col` set
/// when block `col` is brighter than block `col + 1`. Frames smaller than 9x8 hash to 0.
pub fn dhash(pixels: &[u8], width: usize, height: usize) -> u64 {
    dhash_rect(pixels, width, [0, 0, width, height])
}

/// [`dhash`] of the part `[x, y, w, h]` of a gray image `stride` pixels wide (a defect's
/// patch). A part smaller than 9x8 or outside the pixels hashes to 0.
pub fn dhash_rect(pixels: &[u8], stride: usize, rect: [usize; 4]) -> u64 {
    const COLS: usize = 9;
    const ROWS: usize = 8;
    let [x, top, width, height] = rect;
    if width < COLS || height < ROWS || x + width > stride || pixels.len() < (top + height) * stride
    {
        return 0;
    }
    let mut sums = [[0u64; COLS]; ROWS];
    let col_edge = |c: usize| c * width / COLS;
    for (r, row_sums) in sums.iter_mut().enumerate() {
        let (y0, y1) = (r * height / ROWS, (r + 1) * height / ROWS);
        for y in y0..y1 {
            let at = (top + y) * stride + x;
            let row = &pixels[at..at + width];
            for (c, s) in row_sums.iter_mut().enumerate() {
                let block = &row[col_edge(c)..col_edge(c + 1)];
                *s += block.iter().map(|&p| p as u32).sum::<u32>() as u64;
            }
        }
    }
    let mut hash = 0u64;
    for (r, row_sums) in sums.iter().enumerate() {
        let (y0, y1) = (r * height / ROWS, (r + 1) * height / ROWS);
        // Means compared as sums scaled by the other block's width (no division).
        let area = |c: usize| ((col_edge(c + 1) - col_edge(c)) * (y1 - y0)) as u64;
        for c in 0..COLS - 1 {
            if row_sums[c] * area(c + 1) > row_sums[c + 1] * area(c) {
                hash |= 1 << (r * 8 + c);
            }
        }
    }
    hash
}

/// Turns each frame's measure into health states; lives in the preprocess stage, which
/// sees every frame in order.
pub struct HealthMonitor {
    cfg: HealthConfig,
    state: u64,
    /// Frames in a row that disagreed with the state, per condition (dark, saturated, no
    /// contrast).
    streak: [u32; 3],
    previous: Option<u64>,
    /// When the frames started showing the image they show now.
    image_since: Option<Instant>,
    /// `health.frozen_after_s`; None when it is 0 (off).
    frozen_after: Option<Duration>,
}

impl HealthMonitor {
    pub fn new(cfg: &HealthConfig) -> Self {
        Self {
            cfg: cfg.clone(),
            state: 0,
            streak: [0; 3],
            previous: None,
            image_since: None,
            frozen_after: (cfg.frozen_after_s > 0.0)
                .then(|| Duration::from_secs_f64(cfg.frozen_after_s)),
        }
    }

    /// The conditions now in force, as bits.
    pub fn state(&self) -> u64 {
        self.state
    }

    /// Takes one frame's measure at `now`; returns whether the frame repeats the previous
    /// one exactly (same hash). State changes are logged once and stored in `stats`.
    pub fn observe(&mut self, m: &FrameMeasure, now: Instant, stats: &Stats) -> bool {
        let first = self.previous.is_none();
        let repeat = self.previous == Some(m.dhash);
        let same = self
            .previous
            .is_some_and(|p| (p ^ m.dhash).count_ones() <= self.cfg.frozen_distance);
        self.previous = Some(m.dhash);
        let mut next = self.state;
        let frame = [
            (Condition::Dark, (m.mean as f64) < self.cfg.dark_below),
            (
                Condition::Saturated,
                m.saturated as f64 > self.cfg.saturated_above,
            ),
            (
                Condition::NoContrast,
                (m.stddev as f64) < self.cfg.min_contrast,
            ),
        ];
        for (i, (cond, now_bad)) in frame.into_iter().enumerate() {
            let was_bad = self.state & cond.bit() != 0;
            if now_bad == was_bad {
                self.streak[i] = 0;
                continue;
            }
            self.streak[i] += 1;
            if self.streak[i] >= self.cfg.confirm_frames {
                self.streak[i] = 0;
                next ^= cond.bit();
            }
        }
        if !same {
            self.image_since = Some(now);
        }
        let frozen = self
            .frozen_after
            .zip(self.image_since)
            .is_some_and(|(after, since)| now.duration_since(since) >= after);
        next = (next & !Condition::Frozen.bit()) | if frozen { Condition::Frozen.bit() } else { 0 };
        stats
            .frame_mean_milli
            .store((m.mean * 1000.0) as u64, Relaxed);
        stats
            .frame_stddev_milli
            .store((m.stddev * 1000.0) as u64, Relaxed);
        stats
            .frame_saturated_milli
            .store((m.saturated * 1000.0) as u64, Relaxed);
        if next != self.state {
            for c in Condition::ALL {
                match (self.state & c.bit() != 0, next & c.bit() != 0) {
                    (false, true) => warn!(
                        condition = c.name(),
                        mean = m.mean,
                        contrast = m.stddev,
                        saturated = m.saturated,
                        "Frame health: {}.",
                        describe(c)
                    ),
                    (true, false) => {
                        info!(condition = c.name(), "Frame health: {} is over.", c.name())
                    }
                    _ => {}
                }
            }
            self.state = next;
            stats.health.store(next, Relaxed);
            stats.health_changes.fetch_add(1, Relaxed);
        } else if first {
            // The retained `health` gets the first frame's measures.
            stats.health_changes.fetch_add(1, Relaxed);
        }
        repeat
    }
}

fn describe(c: Condition) -> &'static str {
    match c {
        Condition::Dark => "the frames are too dark (lamp, exposure, lens cap?)",
        Condition::Saturated => "the frames are saturated (exposure, gain, glare?)",
        Condition::NoContrast => "the frames have no contrast (fogged lens, focus, lamp?)",
        Condition::Frozen => {
            "the camera keeps delivering the same image (frozen driver, stopped line?)"
        }
    }
}

/// The `health` JSON for the state in `stats` now.
pub fn health_json(stats: &Stats) -> Vec<u8> {
    let bits = stats.health.load(Relaxed);
    let camera = CameraState::from_code(stats.camera_state.load(Relaxed));
    let has = |c: Condition| bits & c.bit() != 0;
    let measures = stats.frame_measures();
    let speed =
        crate::stages::decide::strip::SpeedState::from_code(stats.strip_speed.load(Relaxed));
    serde_json::to_vec(&HealthMsg {
        v: 1,
        ts: crate::frame::unix_ms(),
        ok: bits == 0 && !stats.camera_down() && speed.is_fine(),
        camera: camera.map(|c| c.name()),
        dark: has(Condition::Dark),
        saturated: has(Condition::Saturated),
        no_contrast: has(Condition::NoContrast),
        frozen: has(Condition::Frozen),
        mean: measures.map(|m| m[0]),
        contrast: measures.map(|m| m[1]),
        saturated_fraction: measures.map(|m| m[2]),
        speed: speed.name(),
    })
    .expect("health serialises")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> HealthConfig {
        HealthConfig {
            frozen_after_s: 1.0,
            confirm_frames: 3,
            ..HealthConfig::default()
        }
    }

    fn measure(mean: f32, stddev: f32, saturated: f32, dhash: u64) -> FrameMeasure {
        FrameMeasure {
            mean,
            stddev,
            saturated,
            dhash,
        }
    }

    #[test]
    fn measures_a_two_level_frame() {
        let (w, h) = (90, 80);
        // Left half black, right half white.
        let px: Vec<u8> = (0..w * h)
            .map(|i| if i % w < w / 2 { 0 } else { 255 })
            .collect();
        let mut hist = [0u32; 256];
        for &p in &px {
            hist[p as usize] += 1;
        }
        let m = FrameMeasure::of(&hist, &px, w, h);
        assert!((m.mean - 127.5).abs() < 0.01, "{m:?}");
        assert!((m.stddev - 127.5).abs() < 0.01, "{m:?}");
        assert!((m.saturated - 0.5).abs() < 1e-6, "{m:?}");
        // Dark on the left, bright on the right: no block is brighter than its right
        // neighbour, so every bit is 0. Mirrored, the edge (x = 45) halves block 4 of
        // each row: pairs (3, 4) and (4, 5) are set, 2 bits a row.
        assert_eq!(m.dhash, 0);
        let mirrored: Vec<u8> = px.iter().map(|&p| 255 - p).collect();
        let hm = dhash(&mirrored, w, h);
        assert_eq!(hm.count_ones(), 16, "{hm:064b}");
    }

    #[test]
    fn the_hash_ignores_noise_and_sees_a_new_image() {
        let img = image::open(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/datasets/neu/IMAGES/scratches_1.png"
        ))
        .unwrap()
        .to_luma8();
        let other = image::open(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/datasets/neu/IMAGES/patches_1.png"
        ))
        .unwrap()
        .to_luma8();
        let (w, h) = (img.width() as usize, img.height() as usize);
        let a = dhash(img.as_raw(), w, h);
        // Sensor noise: +-2 gray levels, deterministic.
        let noisy: Vec<u8> = img
            .as_raw()
            .iter()
            .enumerate()
            .map(|(i, &p)| p.saturating_add((i * 7919 % 5) as u8).saturating_sub(2))
            .collect();
        let b = dhash(&noisy, w, h);
        let c = dhash(
            other.as_raw(),
            other.width() as usize,
            other.height() as usize,
        );
        // NEU's textures are low in contrast: noise flips a few bits (5 here), another
        // image about half of them (27).
        assert!(
            (a ^ b).count_ones() <= 8,
            "noise moved {} bits",
            (a ^ b).count_ones()
        );
        assert!(
            (a ^ c).count_ones() >= 16,
            "another image differs by {} bits",
            (a ^ c).count_ones()
        );
    }

    #[test]
    fn a_condition_changes_only_after_confirm_frames_agree() {
        let stats = Stats::default();
        let mut m = HealthMonitor::new(&cfg());
        let t = Instant::now();
        let dark = measure(5.0, 10.0, 0.0, 1);
        let fine = measure(100.0, 30.0, 0.0, 2);
        m.observe(&dark, t, &stats);
        m.observe(&fine, t, &stats);
        m.observe(&dark, t, &stats);
        m.observe(&dark, t, &stats);
        assert_eq!(m.state(), 0, "two dark frames in a row are not enough");
        m.observe(&dark, t, &stats);
        assert_eq!(m.state(), Condition::Dark.bit());
        assert_eq!(stats.health.load(Relaxed), Condition::Dark.bit());
        // The first frame counts as a change (its measures), then the dark one.
        assert_eq!(stats.health_changes.load(Relaxed), 2);
        for _ in 0..2 {
            m.observe(&fine, t, &stats);
        }
        assert_eq!(m.state(), Condition::Dark.bit());
        m.observe(&fine, t, &stats);
        assert_eq!(m.state(), 0);
        let bright = measure(240.0, 10.0, 0.6, 3);
        let flat = measure(120.0, 0.5, 0.0, 4);
        for _ in 0..3 {
            m.observe(&bright, t, &stats);
        }
        assert_eq!(m.state(), Condition::Saturated.bit());
        for _ in 0..3 {
            m.observe(&flat, t, &stats);
        }
        assert_eq!(m.state(), Condition::NoContrast.bit());
        assert_eq!(stats.health_changes.load(Relaxed), 5);
    }

    #[test]
    fn the_same_image_for_frozen_after_s_is_frozen_and_a_new_one_ends_it() {
        let stats = Stats::default();
        let before: serde_json::Value = serde_json::from_slice(&health_json(&stats)).unwrap();
        assert!(before["mean"].is_null(), "no frame yet: {before}");
        let mut m = HealthMonitor::new(&cfg());
        let t = Instant::now();
        let same = measure(100.0, 30.0, 0.0, 0xABCD);
        assert!(
            !m.observe(&same, t, &stats),
            "the first frame repeats nothing"
        );
        assert!(m.observe(&same, t + Duration::from_millis(500), &stats));
        assert_eq!(m.state(), 0, "not yet: half a second");
        m.observe(&same, t + Duration::from_millis(1100), &stats);
        assert_eq!(m.state(), Condition::Frozen.bit());
        let json: serde_json::Value = serde_json::from_slice(&health_json(&stats)).unwrap();
        assert_eq!(json["frozen"], true);
        assert_eq!(json["ok"], false);
        assert_eq!(json["v"], 1);
        assert_eq!(json["mean"], 100.0);
        let new = measure(100.0, 30.0, 0.0, 0xABCD ^ 0xFF00);
        assert!(!m.observe(&new, t + Duration::from_millis(1200), &stats));
        assert_eq!(m.state(), 0, "a new image ends it at once");
        let json: serde_json::Value = serde_json::from_slice(&health_json(&stats)).unwrap();
        assert_eq!(json["ok"], true);
    }

    #[test]
    fn frozen_distance_lets_near_repeats_count_as_the_same_image() {
        let stats = Stats::default();
        let mut m = HealthMonitor::new(&HealthConfig {
            frozen_distance: 2,
            ..cfg()
        });
        let t = Instant::now();
        m.observe(&measure(100.0, 30.0, 0.0, 0b1000), t, &stats);
        let near = measure(100.0, 30.0, 0.0, 0b1011);
        assert!(
            !m.observe(&near, t + Duration::from_millis(600), &stats),
            "not an exact repeat"
        );
        m.observe(&near, t + Duration::from_millis(1200), &stats);
        assert_eq!(m.state(), Condition::Frozen.bit());
    }
}
