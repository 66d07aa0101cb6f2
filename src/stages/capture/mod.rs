//! Capture: frames from a V4L2 camera ([`camera`]) or from a folder of images
//! ([`folder`]), as 8-bit gray ([`source`] decodes files and camera formats).
//!
//! The `dir` source replays PNG, JPEG and BMP files in file-name order (colour becomes
//! gray); a file that cannot be decoded is logged, counted and skipped. The `v4l2` source
//! negotiates GREY, YUYV or MJPG and converts to gray; when the camera disappears it is
//! closed and reopened with backoff (1 s doubling to 30 s), the daemon keeps running and
//! `stats` says the camera's state.

pub mod camera;
pub mod folder;
pub mod source;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, SendTimeoutError, Sender, TrySendError};
use tracing::{debug, info};

use crate::config::{CaptureConfig, SourceKind};
use crate::frame::{Frame, FramePool, PooledFrame};
use crate::stages::StageContext;
use crate::telemetry::{Stage, Stats};
use camera::{CameraSource, Format, V4l2Device};
use folder::DirSource;
pub use source::{gray_from_bytes, is_image_file, load_gray, CaptureError, Read};

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

#[cfg(test)]
mod tests {
    use super::folder::DirSource;
    use super::source::*;
    use crate::frame::Frame;
    use crate::telemetry::Stats;
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

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
