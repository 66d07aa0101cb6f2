//! Preprocess: Gaussian blur, the Otsu level of the blurred frame, and the connected
//! regions of the Otsu mask.
//!
//! The blur is separable and fixed-point (8.8 per pass, like OpenCV's 8-bit path) with
//! OpenCV's default border (reflect-101). The histogram for Otsu is gathered while the
//! blurred rows are written, so blur + Otsu read the frame once. On x86-64 the row
//! kernels are compiled twice, for the baseline and for AVX2, and picked at run time, so
//! one binary runs on any line PC and uses the wide registers where they exist.
//!
//! The mask's foreground is the minority side of the Otsu split: on steel the defect is
//! the exception, dark or bright. Regions are 8-connected, labelled run by run.

use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use crate::config::PreprocessConfig;
use crate::frame::{Frame, PooledFrame, Region};
use crate::stages::health::{FrameMeasure, HealthMonitor};
use crate::stages::StageContext;
use crate::telemetry::Stage;

/// Fixed-point weights of a 1-D Gaussian kernel that sum to exactly 256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    pub weights: Vec<u16>,
    /// The same weights summing to 16, when they are exact at that precision (OpenCV's
    /// 3- and 5-tap tables): then both passes fit 16-bit lanes, twice as many per
    /// instruction, with the same result.
    four_bit: Option<Vec<u16>>,
}

impl Kernel {
    /// `sigma <= 0` derives the kernel from its size as OpenCV's `getGaussianKernel` does:
    /// its fixed binomial tables for sizes 3, 5 and 7, else sigma = 0.3((size-1)/2 - 1) + 0.8.
    pub fn gaussian(size: u32, sigma: f64) -> Kernel {
        assert!(
            size % 2 == 1 && size >= 3,
            "kernel size must be odd and at least 3"
        );
        if sigma <= 0.0 {
            let table: &[u16] = match size {
                3 => &[64, 128, 64],
                5 => &[16, 64, 96, 64, 16],
                7 => &[8, 28, 56, 72, 56, 28, 8],
                _ => &[],
            };
            if !table.is_empty() {
                return Kernel::from_weights(table.to_vec());
            }
        }
        let sigma = if sigma > 0.0 {
            sigma
        } else {
            0.3 * ((size as f64 - 1.0) * 0.5 - 1.0) + 0.8
        };
        let r = (size / 2) as i64;
        let raw: Vec<f64> = (-r..=r)
            .map(|i| (-((i * i) as f64) / (2.0 * sigma * sigma)).exp())
            .collect();
        let total: f64 = raw.iter().sum();
        let mut weights: Vec<u16> = raw
            .iter()
            .map(|w| (w / total * 256.0).round() as u16)
            .collect();
        // Rounding can leave the sum a little off 256: settle the difference at the centre
        // so a constant image stays exactly constant.
        let sum: i32 = weights.iter().map(|&w| w as i32).sum();
        let centre = r as usize;
        weights[centre] = (weights[centre] as i32 + 256 - sum) as u16;
        Kernel::from_weights(weights)
    }

    fn from_weights(weights: Vec<u16>) -> Kernel {
        let four_bit = weights
            .iter()
            .all(|w| w % 16 == 0)
            .then(|| weights.iter().map(|w| w / 16).collect());
        Kernel { weights, four_bit }
    }

    pub fn radius(&self) -> usize {
        self.weights.len() / 2
    }
}

/// Otsu's level for a 256-bin histogram: pixels `> level` form one class, the rest the
/// other, chosen to maximise the between-class variance.
pub fn otsu_level(hist: &[u32; 256]) -> u8 {
    let total: f64 = hist.iter().map(|&c| c as f64).sum();
    if total == 0.0 {
        return 0;
    }
    let sum_all: f64 = hist
        .iter()
        .enumerate()
        .map(|(i, &c)| i as f64 * c as f64)
        .sum();
    let (mut w0, mut sum0) = (0.0f64, 0.0f64);
    let (mut best, mut best_var) = (0u8, -1.0f64);
    for (t, &c) in hist.iter().enumerate() {
        w0 += c as f64;
        sum0 += t as f64 * c as f64;
        let w1 = total - w0;
        if w0 == 0.0 {
            continue;
        }
        if w1 == 0.0 {
            break;
        }
        let m0 = sum0 / w0;
        let m1 = (sum_all - sum0) / w1;
        let var = w0 * w1 * (m0 - m1) * (m0 - m1);
        if var > best_var {
            best_var = var;
            best = t as u8;
        }
    }
    best
}

/// Blur and Otsu for frames of any size, with the buffers kept between frames.
pub struct Preprocessor {
    kernel: Kernel,
    min_area: u32,
    max_area: u32,
    /// Blurred frame.
    blurred: Vec<u8>,
    hist: [u32; 256],
    scratch: BlurScratch,
    labeller: RegionLabeller,
}

#[derive(Default)]
struct BlurScratch {
    padded: Vec<u8>,
    /// `ksize` horizontally blurred rows, used as a ring.
    rows: Vec<u16>,
    acc: Vec<u32>,
    acc16: Vec<u16>,
}

impl Preprocessor {
    pub fn new(cfg: &PreprocessConfig) -> Self {
        Self {
            kernel: Kernel::gaussian(cfg.blur_kernel, cfg.blur_sigma),
            min_area: cfg.min_region_area,
            max_area: cfg.max_region_area,
            blurred: Vec::new(),
            hist: [0; 256],
            scratch: BlurScratch::default(),
            labeller: RegionLabeller::default(),
        }
    }

    /// The histogram of the last blurred frame.
    pub fn histogram(&self) -> &[u32; 256] {
        &self.hist
    }

    /// The blurred pixels of the last frame processed.
    pub fn blurred(&self) -> &[u8] {
        &self.blurred
    }

    /// Blurs `src` and returns its Otsu level (of the blurred pixels).
    pub fn blur_otsu(&mut self, src: &[u8], width: usize, height: usize) -> u8 {
        self.blurred.resize(src.len(), 0);
        self.hist = [0; 256];
        blur_into(
            &self.kernel,
            src,
            width,
            height,
            &mut self.blurred,
            &mut self.hist,
            &mut self.scratch,
        );
        otsu_level(&self.hist)
    }

    /// The stage's loop: numbers each frame in the order it arrived (`Frame::order`, for
    /// the classify workers' reorder), preprocesses it and passes it on. With `credits`
    /// (a live source) it takes a frame only when a classify worker is free, so a camera
    /// that outruns the model loses its oldest frames in the capture queue rather than
    /// having every frame wait in the queues behind it.
    ///
    /// Each frame is also measured for `health` (brightness, contrast, saturation, its
    /// difference hash); a frame that repeats the previous one is marked for decide.
    pub fn run(
        mut self,
        input: Receiver<PooledFrame>,
        output: Sender<PooledFrame>,
        credits: Option<Receiver<()>>,
        mut health: HealthMonitor,
        ctx: StageContext,
    ) {
        let mut order = 0u64;
        ctx.for_each_when(Stage::Preprocess, credits.as_ref(), &input, |mut frame| {
            frame.order = order;
            order += 1;
            let t = Instant::now();
            self.process(&mut frame);
            let (w, h) = (frame.width as usize, frame.height as usize);
            let measure = FrameMeasure::of(self.histogram(), &frame.pixels, w, h);
            frame.repeat = health.observe(&measure, Instant::now(), &ctx.stats);
            let us = t.elapsed().as_micros() as u64;
            frame.times.preprocess_us = us as u32;
            ctx.stats.preprocess.record_us(us);
            output.send(frame).is_ok()
        });
    }

    /// The whole stage: Otsu level and candidate regions written into the frame.
    pub fn process(&mut self, frame: &mut Frame) {
        let (w, h) = (frame.width as usize, frame.height as usize);
        let level = self.blur_otsu(&frame.pixels, w, h);
        frame.otsu_level = level;
        // Foreground = the minority side of the split.
        let above: u32 = self.hist[level as usize + 1..].iter().sum();
        let bright = (above as usize) * 2 <= w * h;
        self.labeller.label(
            &self.blurred,
            w,
            h,
            level,
            bright,
            self.min_area,
            self.max_area,
            &mut frame.regions,
        );
    }
}

fn blur_into(
    k: &Kernel,
    src: &[u8],
    width: usize,
    height: usize,
    dst: &mut [u8],
    hist: &mut [u32; 256],
    s: &mut BlurScratch,
) {
    assert_eq!(src.len(), width * height);
    if width == 0 || height == 0 {
        return;
    }
    let r = k.radius();
    let ks = k.weights.len();
    let narrow = k.four_bit.as_deref();
    let weights = narrow.unwrap_or(&k.weights);
    s.padded.resize(width + 2 * r, 0);
    s.rows.resize(ks * width, 0);
    s.acc.resize(width, 0);
    // Horizontally blurred source row `y` (reflect-101 beyond the edges) lives in ring slot
    // `y mod ks`; fill the first window.
    let reflect = |i: isize, n: usize| -> usize {
        if n == 1 {
            return 0;
        }
        let n = n as isize;
        let mut i = i;
        while i < 0 || i >= n {
            i = if i < 0 { -i } else { 2 * (n - 1) - i };
        }
        i as usize
    };
    let mut hist4 = [[0u32; 256]; 4];
    let mut filled_up_to: isize = -(r as isize) - 1;
    for y in 0..height {
        // Make rows y-r ..= y+r available.
        while filled_up_to < (y + r) as isize {
            filled_up_to += 1;
            let sy = reflect(filled_up_to, height);
            let slot = (filled_up_to.rem_euclid(ks as isize)) as usize;
            let row = &src[sy * width..(sy + 1) * width];
            pad_row(row, r, &mut s.padded, width);
            row_pass(
                weights,
                &s.padded,
                &mut s.rows[slot * width..(slot + 1) * width],
            );
        }
        let out = &mut dst[y * width..(y + 1) * width];
        let first = y as isize - r as isize;
        if narrow.is_some() {
            s.acc16.resize(width, 0);
            column_pass(weights, &s.rows, width, first, &mut s.acc16, out);
        } else {
            column_pass(weights, &s.rows, width, first, &mut s.acc, out);
        }
        count(out, &mut hist4);
    }
    for (i, h) in hist.iter_mut().enumerate() {
        *h = hist4[0][i] + hist4[1][i] + hist4[2][i] + hist4[3][i];
    }
}

fn pad_row(row: &[u8], r: usize, padded: &mut [u8], width: usize) {
    padded[r..r + width].copy_from_slice(row);
    for i in 0..r {
        // reflect-101: index -1-i maps to 1+i, index width+i maps to width-2-i.
        padded[r - 1 - i] = row[(1 + i).min(width - 1)];
        padded[r + width + i] = row[width.saturating_sub(2 + i)];
    }
}

/// Histogram with four sub-histograms, so neighbouring equal pixels do not wait on each
/// other's increments.
#[inline]
fn count(row: &[u8], hist4: &mut [[u32; 256]; 4]) {
    let mut chunks = row.chunks_exact(4);
    for c in &mut chunks {
        hist4[0][c[0] as usize] += 1;
        hist4[1][c[1] as usize] += 1;
        hist4[2][c[2] as usize] += 1;
        hist4[3][c[3] as usize] += 1;
    }
    for &p in chunks.remainder() {
        hist4[0][p as usize] += 1;
    }
}

#[inline(always)]
fn row_pass_generic(w: &[u16], padded: &[u8], out: &mut [u16]) {
    let n = out.len();
    out.fill(0);
    for (k, &wk) in w.iter().enumerate() {
        let src = &padded[k..k + n];
        for (o, &p) in out.iter_mut().zip(src) {
            *o += wk * p as u16;
        }
    }
}

/// An accumulator lane of the column pass: u16 for 4-bit weights (rows hold at most
/// 255 * 16, sums at most 255 * 256), u32 for 8-bit weights.
trait Lane: Copy + std::ops::AddAssign + std::ops::Mul<Output = Self> + From<u16> {
    /// Half of the final divisor, for rounding.
    const HALF: Self;
    fn to_pixel(self) -> u8;
}

impl Lane for u16 {
    const HALF: u16 = 1 << 7;
    fn to_pixel(self) -> u8 {
        (self >> 8) as u8
    }
}

impl Lane for u32 {
    const HALF: u32 = 1 << 15;
    fn to_pixel(self) -> u8 {
        (self >> 16) as u8
    }
}

/// Vertical pass over the ring of horizontally blurred rows, writing one output row.
#[inline(always)]
fn column_pass_generic<A: Lane>(
    w: &[u16],
    rows: &[u16],
    width: usize,
    first: isize,
    acc: &mut [A],
    out: &mut [u8],
) {
    let ks = w.len() as isize;
    acc.fill(A::HALF);
    for (k, &wk) in w.iter().enumerate() {
        let slot = (first + k as isize).rem_euclid(ks) as usize;
        let row = &rows[slot * width..(slot + 1) * width];
        let wk = A::from(wk);
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += wk * A::from(v);
        }
    }
    for (o, &a) in out.iter_mut().zip(acc.iter()) {
        *o = a.to_pixel();
    }
}

#[cfg(target_arch = "x86_64")]
mod wide {
    #[target_feature(enable = "avx2")]
    pub unsafe fn row_pass(w: &[u16], padded: &[u8], out: &mut [u16]) {
        super::row_pass_generic(w, padded, out)
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn column_pass<A: super::Lane>(
        w: &[u16],
        rows: &[u16],
        width: usize,
        first: isize,
        acc: &mut [A],
        out: &mut [u8],
    ) {
        super::column_pass_generic(w, rows, width, first, acc, out)
    }
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *AVX2.get_or_init(|| std::is_x86_feature_detected!("avx2"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

fn row_pass(w: &[u16], padded: &[u8], out: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU was checked for AVX2 above.
        return unsafe { wide::row_pass(w, padded, out) };
    }
    row_pass_generic(w, padded, out)
}

fn column_pass<A: Lane>(
    w: &[u16],
    rows: &[u16],
    width: usize,
    first: isize,
    acc: &mut [A],
    out: &mut [u8],
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU was checked for AVX2 above.
        return unsafe { wide::column_pass(w, rows, width, first, acc, out) };
    }
    column_pass_generic(w, rows, width, first, acc, out)
}

/// Run-based 8-connected labelling of a thresholded image, with buffers kept between frames.
#[derive(Default)]
pub struct RegionLabeller {
    /// Runs of foreground: (row, x0, x1 exclusive).
    runs: Vec<(u32, u32, u32)>,
    parent: Vec<u32>,
    /// Per root: area and bbox (x0, y0, x1, y1 inclusive).
    acc: Vec<(u32, [u32; 4])>,
}

impl RegionLabeller {
    /// Labels pixels `> level` (when `bright`) or `<= level` (otherwise) and writes the
    /// regions whose area lies in `[min_area, max_area]` to `out`, largest first.
    #[allow(clippy::too_many_arguments)]
    pub fn label(
        &mut self,
        img: &[u8],
        width: usize,
        height: usize,
        level: u8,
        bright: bool,
        min_area: u32,
        max_area: u32,
        out: &mut Vec<Region>,
    ) {
        out.clear();
        self.runs.clear();
        self.parent.clear();
        let mut prev = 0..0;
        for y in 0..height {
            let row = &img[y * width..(y + 1) * width];
            let start = self.runs.len();
            push_runs(row, level, bright, y as u32, &mut self.runs);
            for id in start..self.runs.len() {
                let (_, x0, x) = self.runs[id];
                let (x0, x) = (x0 as usize, x as usize);
                self.parent.push(id as u32);
                // 8-connected: a run touches a previous-row run that overlaps [x0-1, x].
                // Both rows' runs go left to right, so the previous row is walked once
                // per row, not once per run (a textured frame has hundreds a row): skip
                // the runs that end left of this one; the last one touched may touch the
                // next run too, so the walk restarts there.
                while prev.start < prev.end && (self.runs[prev.start].2 as usize) < x0 {
                    prev.start += 1;
                }
                for j in prev.clone() {
                    let (_, px0, _) = self.runs[j];
                    if px0 as usize > x {
                        break;
                    }
                    union(&mut self.parent, id as u32, j as u32);
                }
            }
            prev = start..self.runs.len();
        }
        self.acc.clear();
        self.acc
            .resize(self.runs.len(), (0, [u32::MAX, u32::MAX, 0, 0]));
        for i in 0..self.runs.len() {
            let root = find(&mut self.parent, i as u32) as usize;
            let (y, x0, x1) = self.runs[i];
            let (area, b) = &mut self.acc[root];
            *area += x1 - x0;
            b[0] = b[0].min(x0);
            b[1] = b[1].min(y);
            b[2] = b[2].max(x1 - 1);
            b[3] = b[3].max(y);
        }
        for (area, b) in &self.acc {
            if *area > 0 && (min_area..=max_area).contains(area) {
                out.push(Region {
                    area: *area,
                    bbox: [b[0], b[1], b[2] - b[0] + 1, b[3] - b[1] + 1],
                });
            }
        }
        out.sort_unstable_by(|a, b| b.area.cmp(&a.area).then(a.bbox.cmp(&b.bbox)));
    }
}

/// Appends the runs of `row`'s pixels `> level` (when `bright`, else `<= level`) as
/// (y, x0, x1 exclusive), left to right. The row is read 64 pixels at a time into a bit
/// mask ([`above`]), and the runs are read off the mask's bit changes, not pixel by
/// pixel.
fn push_runs(row: &[u8], level: u8, bright: bool, y: u32, runs: &mut Vec<(u32, u32, u32)>) {
    let mut start: Option<u32> = None;
    let (chunks, rest) = row.as_chunks::<64>();
    for (c, chunk) in chunks.iter().enumerate() {
        let bits = above(chunk, level);
        runs_of_bits(
            if bright { bits } else { !bits },
            (c * 64) as u32,
            y,
            &mut start,
            runs,
        );
    }
    if !rest.is_empty() {
        // The row's last, partial word: read as a whole one, the bits past the row cleared.
        let mut word = [0u8; 64];
        word[..rest.len()].copy_from_slice(rest);
        let bits = above(&word, level);
        let bits = if bright { bits } else { !bits } & ((1u64 << rest.len()) - 1);
        runs_of_bits(bits, (chunks.len() * 64) as u32, y, &mut start, runs);
    }
    if let Some(x0) = start {
        runs.push((y, x0, row.len() as u32));
    }
}

/// Bit `i` set when `chunk[i] > level`: four 16-byte comparisons (SSE2, which every
/// x86-64 has), each pixel's sign flipped so that a signed comparison orders bytes as
/// unsigned ones.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn above(chunk: &[u8; 64], level: u8) -> u64 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpgt_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8, _mm_xor_si128,
    };
    // SAFETY: SSE2 is part of every x86-64 target, so these instructions exist; each
    // load reads bytes 16k..16k+16 of the 64-byte chunk (unaligned loads are allowed).
    unsafe {
        let flip = _mm_set1_epi8(i8::MIN);
        let lv = _mm_set1_epi8((level ^ 0x80) as i8);
        let mut bits = 0u64;
        for k in 0..4 {
            let v = _mm_loadu_si128(chunk.as_ptr().add(16 * k).cast::<__m128i>());
            let gt = _mm_cmpgt_epi8(_mm_xor_si128(v, flip), lv);
            bits |= u64::from(_mm_movemask_epi8(gt) as u16) << (16 * k);
        }
        bits
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn above(chunk: &[u8; 64], level: u8) -> u64 {
    let mut bits = 0u64;
    for (i, &v) in chunk.iter().enumerate() {
        bits |= ((v > level) as u64) << i;
    }
    bits
}

/// The runs of set bits of a 64-pixel mask starting at pixel `base`: `start` carries a run
/// that began in an earlier mask (and one that goes on past this one).
#[inline(always)]
fn runs_of_bits(
    bits: u64,
    base: u32,
    y: u32,
    start: &mut Option<u32>,
    runs: &mut Vec<(u32, u32, u32)>,
) {
    let mut pos = 0u32;
    while pos < 64 {
        match *start {
            // In a run: it ends at the next clear bit, or goes on into the next mask.
            Some(x0) => {
                let len = (!bits >> pos).trailing_zeros();
                if pos + len >= 64 {
                    return;
                }
                pos += len;
                runs.push((y, x0, base + pos));
                *start = None;
            }
            None => {
                let gap = (bits >> pos).trailing_zeros();
                if pos + gap >= 64 {
                    return;
                }
                pos += gap;
                *start = Some(base + pos);
            }
        }
    }
}

fn find(parent: &mut [u32], mut i: u32) -> u32 {
    while parent[i as usize] != i {
        let grand = parent[parent[i as usize] as usize];
        parent[i as usize] = grand;
        i = grand;
    }
    i
}

fn union(parent: &mut [u32], a: u32, b: u32) {
    let (ra, rb) = (find(parent, a), find(parent, b));
    if ra != rb {
        let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
        parent[hi as usize] = lo;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(kernel: u32) -> PreprocessConfig {
        PreprocessConfig {
            blur_kernel: kernel,
            blur_sigma: 0.0,
            min_region_area: 1,
            max_region_area: u32::MAX,
        }
    }

    #[test]
    fn kernels_sum_to_one_and_are_symmetric() {
        for size in [3, 5, 7, 9, 15] {
            for sigma in [0.0, 0.5, 1.0, 3.0] {
                let k = Kernel::gaussian(size, sigma);
                assert_eq!(
                    k.weights.iter().map(|&w| w as u32).sum::<u32>(),
                    256,
                    "size {size} sigma {sigma}"
                );
                let rev: Vec<u16> = k.weights.iter().rev().copied().collect();
                assert_eq!(k.weights, rev);
            }
        }
        // OpenCV's 5x5 default is the binomial [1 4 6 4 1] / 16.
        assert_eq!(Kernel::gaussian(5, 0.0).weights, vec![16, 64, 96, 64, 16]);
    }

    #[test]
    fn a_blurred_constant_image_stays_constant() {
        let mut p = Preprocessor::new(&cfg(5));
        let mut p7 = Preprocessor::new(&cfg(7));
        for value in [0u8, 1, 77, 254, 255] {
            let img = vec![value; 37 * 23];
            p.blur_otsu(&img, 37, 23);
            assert!(p.blurred().iter().all(|&v| v == value), "value {value}");
            p7.blur_otsu(&img, 37, 23);
            assert!(
                p7.blurred().iter().all(|&v| v == value),
                "7x7, value {value}"
            );
        }
    }

    #[test]
    fn blur_matches_a_plain_floating_point_convolution() {
        // Sizes 3 and 5 take the 16-bit path, 7 and 9 the 32-bit one.
        let (w, h) = (41usize, 17usize);
        let img: Vec<u8> = (0..w * h).map(|i| ((i * 7919) % 251) as u8).collect();
        let refl = |i: isize, n: usize| -> usize {
            let n = n as isize;
            (if i < 0 {
                -i
            } else if i >= n {
                2 * (n - 1) - i
            } else {
                i
            }) as usize
        };
        for size in [3u32, 5, 7, 9] {
            let mut p = Preprocessor::new(&cfg(size));
            p.blur_otsu(&img, w, h);
            let k = Kernel::gaussian(size, 0.0);
            let r = k.radius() as isize;
            let kf: Vec<f64> = k.weights.iter().map(|&v| v as f64 / 256.0).collect();
            for y in 0..h {
                for x in 0..w {
                    let mut acc = 0.0;
                    for (j, wy) in kf.iter().enumerate() {
                        for (i, wx) in kf.iter().enumerate() {
                            let sy = refl(y as isize + j as isize - r, h);
                            let sx = refl(x as isize + i as isize - r, w);
                            acc += wy * wx * img[sy * w + sx] as f64;
                        }
                    }
                    let got = p.blurred()[y * w + x] as f64;
                    assert!(
                        (got - acc).abs() <= 1.0,
                        "size {size} ({x},{y}): {got} vs {acc}"
                    );
                }
            }
        }
    }

    #[test]
    fn otsu_splits_two_peaks_between_them() {
        let mut hist = [0u32; 256];
        hist[40] = 1000;
        hist[200] = 500;
        let t = otsu_level(&hist);
        assert!((40..200).contains(&t), "{t}");
        // Two spread-out classes whose best split is known: 0..=99 and 150..=255 flat.
        let mut hist = [0u32; 256];
        for v in hist.iter_mut().take(100) {
            *v = 10;
        }
        for v in hist.iter_mut().skip(150) {
            *v = 10;
        }
        let t = otsu_level(&hist);
        assert!((99..150).contains(&t), "{t}");
        assert_eq!(otsu_level(&[0; 256]), 0);
    }

    #[test]
    fn otsu_of_a_blurred_two_level_image_separates_the_levels() {
        let (w, h) = (64, 64);
        let img: Vec<u8> = (0..w * h)
            .map(|i| if (i % w) < 20 { 30 } else { 180 })
            .collect();
        let mut p = Preprocessor::new(&cfg(5));
        let t = p.blur_otsu(&img, w, h);
        assert!((30..180).contains(&t), "{t}");
    }

    #[test]
    fn regions_are_eight_connected_with_areas_and_boxes() {
        // Two blobs: a diagonal chain (8-connected, one region) and a 2x3 block.
        #[rustfmt::skip]
        let mask: Vec<u8> = vec![
            1, 0, 0, 0, 0, 0, 0,
            0, 1, 0, 0, 0, 1, 1,
            0, 0, 1, 0, 0, 1, 1,
            0, 0, 0, 0, 0, 1, 1,
            0, 0, 0, 0, 0, 0, 0,
            1, 1, 0, 0, 0, 0, 0,
        ];
        let mut l = RegionLabeller::default();
        let mut out = Vec::new();
        l.label(&mask, 7, 6, 0, true, 1, 100, &mut out);
        assert_eq!(
            out,
            vec![
                Region {
                    area: 6,
                    bbox: [5, 1, 2, 3]
                },
                Region {
                    area: 3,
                    bbox: [0, 0, 3, 3]
                },
                Region {
                    area: 2,
                    bbox: [0, 5, 2, 1]
                },
            ]
        );
        // The area filter keeps only regions inside [3, 5].
        l.label(&mask, 7, 6, 0, true, 3, 5, &mut out);
        assert_eq!(
            out,
            vec![Region {
                area: 3,
                bbox: [0, 0, 3, 3]
            }]
        );
    }

    #[test]
    fn the_word_mask_orders_gray_levels_as_unsigned() {
        // Every gray level against levels on both sides of 128, where a signed byte
        // comparison would go wrong.
        for level in [0u8, 1, 100, 127, 128, 129, 200, 254, 255] {
            for offset in [0usize, 64, 128, 192] {
                let chunk: [u8; 64] = std::array::from_fn(|i| (offset + i * 7 % 64) as u8);
                let want = chunk
                    .iter()
                    .enumerate()
                    .fold(0u64, |m, (i, &v)| m | (((v > level) as u64) << i));
                assert_eq!(above(&chunk, level), want, "level {level}, offset {offset}");
            }
        }
    }

    #[test]
    fn a_textured_mask_gives_the_regions_a_flood_fill_finds() {
        // Many short runs a row, as on crazed or scaled strip: every region, its area
        // and box, the same as a plain 8-connected flood fill gives. Rows read 64 pixels
        // at a time: a width with a partial last word, and one of whole words.
        for (w, h) in [(97usize, 61usize), (128, 40)] {
            textured_mask_against_flood_fill(w, h);
        }
    }

    fn textured_mask_against_flood_fill(w: usize, h: usize) {
        let mut seed = 12345u32;
        let mask: Vec<u8> = (0..w * h)
            .map(|_| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                ((seed >> 16) % 100 < 45) as u8
            })
            .collect();
        let mut seen = vec![false; w * h];
        let mut want = Vec::new();
        for start in 0..w * h {
            if mask[start] == 0 || seen[start] {
                continue;
            }
            let (mut area, mut b) = (0u32, [u32::MAX, u32::MAX, 0u32, 0u32]);
            let mut stack = vec![start];
            seen[start] = true;
            while let Some(i) = stack.pop() {
                let (x, y) = ((i % w) as i64, (i / w) as i64);
                area += 1;
                b = [
                    b[0].min(x as u32),
                    b[1].min(y as u32),
                    b[2].max(x as u32),
                    b[3].max(y as u32),
                ];
                for (dx, dy) in [
                    (-1, -1),
                    (0, -1),
                    (1, -1),
                    (-1, 0),
                    (1, 0),
                    (-1, 1),
                    (0, 1),
                    (1, 1),
                ] {
                    let (nx, ny) = (x + dx, y + dy);
                    if nx < 0 || ny < 0 || nx >= w as i64 || ny >= h as i64 {
                        continue;
                    }
                    let j = ny as usize * w + nx as usize;
                    if mask[j] == 1 && !seen[j] {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
            want.push(Region {
                area,
                bbox: [b[0], b[1], b[2] - b[0] + 1, b[3] - b[1] + 1],
            });
        }
        want.sort_unstable_by(|a, b| b.area.cmp(&a.area).then(a.bbox.cmp(&b.bbox)));
        let mut out = Vec::new();
        RegionLabeller::default().label(&mask, w, h, 0, true, 1, u32::MAX, &mut out);
        assert!(want.len() > 50, "a textured mask has many regions");
        assert_eq!(out, want);
        // The same regions as the dark pixels of the inverted mask.
        let inverted: Vec<u8> = mask.iter().map(|&m| 1 - m).collect();
        RegionLabeller::default().label(&inverted, w, h, 0, false, 1, u32::MAX, &mut out);
        assert_eq!(out, want);
    }

    #[test]
    fn a_u_shape_merges_into_one_region() {
        #[rustfmt::skip]
        let mask: Vec<u8> = vec![
            1, 0, 1,
            1, 0, 1,
            1, 1, 1,
        ];
        let mut l = RegionLabeller::default();
        let mut out = Vec::new();
        l.label(&mask, 3, 3, 0, true, 1, 100, &mut out);
        assert_eq!(
            out,
            vec![Region {
                area: 7,
                bbox: [0, 0, 3, 3]
            }]
        );
    }

    #[test]
    fn the_minority_side_is_the_foreground() {
        // A dark spot on bright steel: the spot is the region, not the background.
        let (w, h) = (40usize, 40usize);
        let mut img = vec![200u8; w * h];
        for y in 10..16 {
            for x in 20..30 {
                img[y * w + x] = 20;
            }
        }
        let mut p = Preprocessor::new(&PreprocessConfig {
            blur_kernel: 3,
            ..cfg(3)
        });
        let mut frame = Frame::default();
        frame.reset(1, w as u32, h as u32);
        frame.pixels.copy_from_slice(&img);
        p.process(&mut frame);
        assert_eq!(frame.regions.len(), 1, "{:?}", frame.regions);
        let b = frame.regions[0].bbox;
        assert!(b[0] >= 19 && b[0] <= 21 && b[1] >= 9 && b[1] <= 11, "{b:?}");
    }
}
