//! Capture: frames from a V4L2 camera or from a folder of images, as 8-bit gray.
//!
//! The `dir` source replays PNG, JPEG and BMP files in file-name order (colour becomes
//! gray); a file that cannot be decoded is logged, counted and skipped. Decoded images are
//! kept in memory up to a budget, so a looping replay does not decode every frame again.
//!
//! The `v4l2` source ([`crate::camera`]) negotiates GREY, YUYV or MJPG and converts to
//! gray. When the camera disappears it is closed and reopened with backoff (1 s doubling
//! to 30 s); the daemon keeps running and `stats` says the camera's state. The pixel
//! conversions are plain functions here, tested on real images.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, SendTimeoutError, Sender, TrySendError};
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::camera::{CameraSource, Format, V4l2Device};
use crate::config::{CaptureConfig, SourceKind};
use crate::frame::{Frame, FramePool, PooledFrame};
use crate::stage::{Stage, StageContext};
use crate::telemetry::Stats;

#[derive(Debug, Error)]
pub enum CaptureError {
    #[error("capture.path {path}: {reason}")]
    Folder { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Image { path: PathBuf, reason: String },
}

/// What a read produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// The frame was filled.
    Frame,
    /// Nothing this time (a skipped file, a camera being reopened): ask again.
    Nothing,
    /// A non-looping folder is done.
    End,
}

pub enum Source {
    Dir(DirSource),
    Camera(CameraSource),
}

impl Source {
    /// True for a replayed folder: the world does not move on while it waits, so it waits
    /// for room in the queue instead of dropping frames (a live camera, or a folder
    /// replayed with `capture.live`, drops the oldest).
    pub fn waits_for_room(&self) -> bool {
        matches!(self, Source::Dir(d) if !d.live)
    }

    pub fn open(cfg: &CaptureConfig) -> Result<Source, CaptureError> {
        match cfg.source {
            SourceKind::Dir => {
                let path = cfg.path.clone().ok_or_else(|| CaptureError::Folder {
                    path: PathBuf::new(),
                    reason: "capture.path is not set".into(),
                })?;
                let mut dir = DirSource::open(&path, cfg.r#loop, cfg.fps)?;
                dir.live = cfg.live;
                Ok(Source::Dir(dir))
            }
            SourceKind::V4l2 => {
                let mut fourcc = [b' '; 4];
                for (d, s) in fourcc.iter_mut().zip(cfg.pixel_format.bytes()) {
                    *d = s;
                }
                let want = Format {
                    width: cfg.width,
                    height: cfg.height,
                    fourcc,
                };
                let device = Box::new(V4l2Device::new(cfg.device.clone()));
                Ok(Source::Camera(CameraSource::new(
                    cfg.device.clone(),
                    device,
                    want,
                    cfg.fps,
                )))
            }
        }
    }

    /// Fills `frame` (already reset with its sequence number) with the next frame.
    pub fn read(&mut self, frame: &mut Frame, stats: &Stats, stop: &AtomicBool) -> Read {
        match self {
            Source::Dir(d) => d.read(frame, stats, stop),
            Source::Camera(c) => c.read(frame, stats, stop),
        }
    }
}

/// Sleeps up to `d`, waking early when `stop` is set.
pub(crate) fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) {
    let end = Instant::now() + d;
    while !stop.load(Relaxed) {
        let now = Instant::now();
        if now >= end {
            break;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

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

pub fn is_image_file(p: &Path) -> bool {
    matches!(
        p.extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref(),
        Some("png" | "jpg" | "jpeg" | "bmp")
    )
}

/// Decodes an image file to 8-bit gray: (width, height, pixels).
/// The capture stage: reads frames from the source into pooled buffers and queues them.
pub struct CaptureStage {
    pub source: Source,
    pub pool: FramePool,
}

impl CaptureStage {
    /// Runs until the source ends or the pipeline stops. A camera never waits for the
    /// stages behind it: when `output` is full the oldest queued frame (taken back through
    /// `oldest`, the queue's receiving end) is dropped and counted. A replayed folder
    /// waits for room instead, so every file is inspected.
    pub fn run(
        mut self,
        output: Sender<PooledFrame>,
        oldest: Receiver<PooledFrame>,
        ctx: StageContext,
    ) {
        let stats = &ctx.stats;
        let replay = self.source.waits_for_room();
        let mut seq = 0u64;
        while !ctx.stopping() {
            ctx.beat(Stage::Capture);
            let mut frame = self.pool.take();
            frame.reset(seq + 1, 0, 0);
            match self.source.read(&mut frame, stats, &ctx.stop) {
                Read::Frame => {}
                Read::Nothing => continue,
                Read::End => {
                    info!(frames = seq, "Source finished; draining the pipeline.");
                    stats.source_finished.store(1, Relaxed);
                    return;
                }
            }
            seq += 1;
            // Stamp the frame when it arrived, not when the read began (the replay pacer
            // or the camera may have kept us waiting).
            frame.ts_ms = crate::frame::unix_ms();
            frame.captured_at = Some(Instant::now());
            stats.frames_captured.fetch_add(1, Relaxed);
            stats
                .last_frame_ms
                .store(stats.heartbeats.now_ms().max(1), Relaxed);
            let mut pending = frame;
            if replay {
                loop {
                    match output.send_timeout(pending, Duration::from_millis(200)) {
                        Ok(()) => break,
                        Err(SendTimeoutError::Timeout(f)) => {
                            ctx.beat(Stage::Capture);
                            if ctx.stopping() {
                                return;
                            }
                            pending = f;
                        }
                        Err(SendTimeoutError::Disconnected(_)) => return,
                    }
                }
                continue;
            }
            loop {
                match output.try_send(pending) {
                    Ok(()) => break,
                    Err(TrySendError::Full(f)) => {
                        if let Ok(old) = oldest.try_recv() {
                            stats.dropped_capture_queue.fetch_add(1, Relaxed);
                            debug!(seq = old.seq, "Frame queue full; dropped the oldest frame.");
                        }
                        pending = f;
                    }
                    Err(TrySendError::Disconnected(_)) => return,
                }
            }
        }
    }
}

pub fn load_gray(path: &Path) -> Result<(u32, u32, Vec<u8>), CaptureError> {
    let bytes = std::fs::read(path).map_err(|e| CaptureError::Image {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    gray_from_bytes(&bytes, path)
}

/// Decodes an image file's bytes to 8-bit gray; `path` names it in the error. The
/// decoder's memory limit refuses decompression bombs.
pub fn gray_from_bytes(bytes: &[u8], path: &Path) -> Result<(u32, u32, Vec<u8>), CaptureError> {
    let err = |reason: String| CaptureError::Image {
        path: path.to_path_buf(),
        reason,
    };
    let img = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| err(e.to_string()))?
        .decode()
        .map_err(|e| err(format!("cannot decode: {e}")))?;
    let gray = img.into_luma8();
    let (w, h) = gray.dimensions();
    if w == 0 || h == 0 {
        return Err(err("empty image".into()));
    }
    Ok((w, h, gray.into_raw()))
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

    fn read(&mut self, frame: &mut Frame, stats: &Stats, stop: &AtomicBool) -> Read {
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

/// 8-bit gray from packed YUYV (4:2:2): the Y bytes are the gray image.
pub fn gray_from_yuyv(
    src: &[u8],
    width: u32,
    height: u32,
    dst: &mut Vec<u8>,
) -> Result<(), String> {
    let n = (width * height) as usize;
    if src.len() < n * 2 {
        return Err(format!(
            "YUYV buffer of {} bytes is short for {width}x{height}",
            src.len()
        ));
    }
    dst.clear();
    dst.extend(src[..n * 2].iter().step_by(2));
    Ok(())
}

/// 8-bit gray from one MJPEG frame. A frame cut short (USB cameras deliver those) is
/// refused: it must end with the JPEG end-of-image marker, which the decoder does not check.
pub fn gray_from_mjpeg(
    src: &[u8],
    width: u32,
    height: u32,
    dst: &mut Vec<u8>,
) -> Result<(), String> {
    let end = src.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    if end < 2 || src[end - 2..end] != [0xFF, 0xD9] {
        return Err("MJPEG frame is cut short (no end-of-image marker)".into());
    }
    let img = image::load_from_memory_with_format(src, image::ImageFormat::Jpeg)
        .map_err(|e| format!("MJPEG frame cannot be decoded: {e}"))?
        .into_luma8();
    if img.dimensions() != (width, height) {
        return Err(format!(
            "MJPEG frame is {:?}, expected {width}x{height}",
            img.dimensions()
        ));
    }
    dst.clear();
    dst.extend_from_slice(img.as_raw());
    Ok(())
}

/// 8-bit gray from GREY: a copy, checking the size.
pub fn gray_from_grey(
    src: &[u8],
    width: u32,
    height: u32,
    dst: &mut Vec<u8>,
) -> Result<(), String> {
    let n = (width * height) as usize;
    if src.len() < n {
        return Err(format!(
            "GREY buffer of {} bytes is short for {width}x{height}",
            src.len()
        ));
    }
    dst.clear();
    dst.extend_from_slice(&src[..n]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neu_image() -> (u32, u32, Vec<u8>) {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/samples");
        let first = std::fs::read_dir(&p)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| is_image_file(p))
            .unwrap();
        load_gray(&first).unwrap()
    }

    #[test]
    fn yuyv_made_from_a_real_image_converts_back_exactly() {
        let (w, h, gray) = neu_image();
        // Encode: Y from the image, U and V a neutral 128.
        let yuyv: Vec<u8> = gray.iter().flat_map(|&y| [y, 128]).collect();
        let mut back = Vec::new();
        gray_from_yuyv(&yuyv, w, h, &mut back).unwrap();
        assert_eq!(back, gray);
        assert!(gray_from_yuyv(&yuyv[..10], w, h, &mut back).is_err());
    }

    #[test]
    fn mjpeg_made_from_a_real_image_converts_back_closely() {
        let (w, h, gray) = neu_image();
        let mut jpeg = Vec::new();
        let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95);
        image::ImageEncoder::write_image(enc, &gray, w, h, image::ExtendedColorType::L8).unwrap();
        let mut back = Vec::new();
        gray_from_mjpeg(&jpeg, w, h, &mut back).unwrap();
        let mean_abs: f64 = gray
            .iter()
            .zip(&back)
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .sum::<f64>()
            / gray.len() as f64;
        assert!(mean_abs < 2.0, "mean abs difference {mean_abs}");
        assert!(
            gray_from_mjpeg(&jpeg, w + 1, h, &mut back).is_err(),
            "a size mismatch is refused"
        );
        assert!(
            gray_from_mjpeg(&jpeg[..jpeg.len() / 3], w, h, &mut back).is_err(),
            "a cut frame is refused"
        );
    }

    #[test]
    fn a_colour_image_becomes_gray() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.png");
        image::RgbImage::from_pixel(4, 3, image::Rgb([200, 100, 50]))
            .save(&path)
            .unwrap();
        let (w, h, px) = load_gray(&path).unwrap();
        assert_eq!((w, h, px.len()), (4, 3, 12));
        assert!(
            px.iter().all(|&p| p == px[0] && (110..=140).contains(&p)),
            "{px:?}"
        );
    }

    #[test]
    fn a_missing_or_empty_folder_is_an_error_naming_it() {
        let err = DirSource::open(Path::new("/no/such/folder"), false, 0.0)
            .err()
            .unwrap();
        assert!(err.to_string().contains("/no/such/folder"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let err = DirSource::open(dir.path(), false, 0.0).err().unwrap();
        assert!(err.to_string().contains("no PNG"), "{err}");
    }

    #[test]
    fn the_folder_replays_in_name_order_skipping_a_corrupt_file() {
        let dir = tempfile::tempdir().unwrap();
        for (name, v) in [("b.png", 2u8), ("a.png", 1), ("c.bmp", 3)] {
            image::GrayImage::from_pixel(2, 2, image::Luma([v]))
                .save(dir.path().join(name))
                .unwrap();
        }
        std::fs::write(dir.path().join("b2.png"), b"not a png").unwrap();
        let mut src = DirSource::open(dir.path(), false, 0.0).unwrap();
        let stats = Stats::default();
        let stop = AtomicBool::new(false);
        let mut frame = Frame::default();
        let mut seen = Vec::new();
        loop {
            match src.read(&mut frame, &stats, &stop) {
                Read::Frame => seen.push(frame.pixels[0]),
                Read::Nothing => {}
                Read::End => break,
            }
        }
        assert_eq!(seen, vec![1, 2, 3]);
        assert_eq!(stats.corrupt_files.load(Relaxed), 1);
    }
}
