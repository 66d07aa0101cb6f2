//! The camera source: a device behind a small trait ([`CameraDevice`]; the V4L2 one is
//! [`V4l2Device`]) and the state machine the source runs over it:
//!
//! ```text
//!  opening ──granted the format──▶ streaming ──read fails──▶ lost ──▶ opening
//!     │ fails, or a format not asked for                                   ▲
//!     └──────────────▶ backoff (1 s, doubling to 30 s) ────────────────────┘
//! ```
//!
//! The state shows in `stats` (`camera.state`) and is logged once per change (a device
//! that keeps failing to open logs once, not on every retry). Frames that cannot be
//! converted are counted as frame errors and skipped; the camera stays open.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use tracing::{debug, info, warn};

use crate::contract::CameraState;
use crate::frame::Frame;
use crate::stages::capture::source::{
    gray_from_grey, gray_from_mjpeg, gray_from_yuyv, sleep_unless_stopped, Read,
};
use crate::telemetry::Stats;

/// A frame format: size and V4L2 pixel format (fourcc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    pub width: u32,
    pub height: u32,
    pub fourcc: [u8; 4],
}

/// What the source needs of a camera.
pub trait CameraDevice: Send {
    /// Opens the device and asks for `want` at `fps` (0: the camera's own rate); returns
    /// the format the device granted, which may differ from the one asked for.
    fn open(&mut self, want: &Format, fps: f64) -> Result<Format, String>;
    /// Waits for the next frame. An error means the device is lost.
    fn next_frame(&mut self) -> Result<&[u8], String>;
    /// Closes the device (after a loss, or a format that will not do).
    fn close(&mut self);
}

pub struct CameraSource {
    name: PathBuf,
    device: Box<dyn CameraDevice>,
    want: Format,
    fps: f64,
    granted: Option<Format>,
    state: CameraState,
    logged: Option<CameraState>,
    backoff: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    failures: u32,
}

impl CameraSource {
    /// `name` is what logs and errors call the device (its path).
    pub fn new(name: PathBuf, device: Box<dyn CameraDevice>, want: Format, fps: f64) -> Self {
        Self {
            name,
            device,
            want,
            fps,
            granted: None,
            state: CameraState::Opening,
            logged: None,
            backoff: Duration::from_secs(1),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            failures: 0,
        }
    }

    /// Retries after `min`, doubling up to `max` (1 s and 30 s unless set).
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Self {
        (self.backoff, self.backoff_min, self.backoff_max) = (min, min, max);
        self
    }

    pub fn state(&self) -> CameraState {
        self.state
    }

    /// The wait before the next attempt to open, should it fail.
    pub fn backoff(&self) -> Duration {
        self.backoff
    }

    fn enter(&mut self, state: CameraState, stats: &Stats, why: &str) {
        self.state = state;
        stats.camera_state.store(state as u64, Relaxed);
        // Opening is a step, not news; the others are logged when they change.
        if state == CameraState::Opening || self.logged == Some(state) {
            debug!(device = %self.name.display(), state = state.name(), why, "Camera state.");
            return;
        }
        self.logged = Some(state);
        let dev = self.name.display();
        match (state, self.granted) {
            (CameraState::Streaming, Some(g)) => info!(device = %dev, state = state.name(),
                width = g.width, height = g.height, format = %String::from_utf8_lossy(&g.fourcc), "Camera streaming."),
            (CameraState::Lost, _) => {
                warn!(device = %dev, state = state.name(), error = why, "Camera lost; reopening it.")
            }
            _ => warn!(device = %dev, state = state.name(), error = why,
                retry_in_ms = self.backoff.as_millis() as u64, "Camera unavailable; retrying with backoff."),
        }
    }

    pub fn read(&mut self, frame: &mut Frame, stats: &Stats, stop: &AtomicBool) -> Read {
        if self.granted.is_none() {
            self.enter(CameraState::Opening, stats, "");
            let opened = match self.device.open(&self.want, self.fps) {
                Ok(g) if g.fourcc != self.want.fourcc => {
                    self.device.close();
                    Err(format!(
                        "asked for {} but the camera offers {}",
                        String::from_utf8_lossy(&self.want.fourcc),
                        String::from_utf8_lossy(&g.fourcc)
                    ))
                }
                other => other,
            };
            match opened {
                Ok(g) => {
                    if self.failures > 0 {
                        stats.camera_reconnects.fetch_add(1, Relaxed);
                    }
                    self.granted = Some(g);
                    self.backoff = self.backoff_min;
                    self.failures = 0;
                    self.enter(CameraState::Streaming, stats, "");
                }
                Err(e) => {
                    self.failures += 1;
                    self.enter(CameraState::Backoff, stats, &e);
                    sleep_unless_stopped(self.backoff, stop);
                    self.backoff = (self.backoff * 2).min(self.backoff_max);
                    return Read::Nothing;
                }
            }
        }
        let g = self.granted.expect("opened above");
        let res = match self.device.next_frame() {
            Ok(buf) => {
                frame.width = g.width;
                frame.height = g.height;
                match &g.fourcc {
                    b"GREY" => gray_from_grey(buf, g.width, g.height, &mut frame.pixels),
                    b"YUYV" => gray_from_yuyv(buf, g.width, g.height, &mut frame.pixels),
                    _ => gray_from_mjpeg(buf, g.width, g.height, &mut frame.pixels),
                }
            }
            Err(e) => {
                self.device.close();
                self.granted = None;
                self.failures += 1;
                self.enter(CameraState::Lost, stats, &e);
                return Read::Nothing;
            }
        };
        match res {
            Ok(()) => Read::Frame,
            Err(e) => {
                stats.frame_errors.fetch_add(1, Relaxed);
                debug!(error = %e, "Dropped a camera frame that cannot be converted.");
                Read::Nothing
            }
        }
    }
}

struct OpenCamera {
    // The stream borrows the device's handle internally (an Arc); keep both.
    stream: v4l::io::mmap::Stream<'static>,
    _device: v4l::Device,
}

/// A V4L2 device node, streaming through four mmap'd buffers.
pub struct V4l2Device {
    path: PathBuf,
    open: Option<OpenCamera>,
}

impl V4l2Device {
    pub fn new(path: PathBuf) -> Self {
        Self { path, open: None }
    }
}

impl CameraDevice for V4l2Device {
    fn open(&mut self, want: &Format, fps: f64) -> Result<Format, String> {
        use v4l::video::Capture;
        self.open = None;
        let dev = v4l::Device::with_path(&self.path).map_err(|e| format!("cannot open: {e}"))?;
        let mut fmt = dev
            .format()
            .map_err(|e| format!("cannot read the format: {e}"))?;
        fmt.width = want.width;
        fmt.height = want.height;
        fmt.fourcc = v4l::FourCC::new(&want.fourcc);
        let got = dev
            .set_format(&fmt)
            .map_err(|e| format!("cannot set the format: {e}"))?;
        if fps > 0.0 {
            let params = v4l::video::capture::Parameters::with_fps(fps.round() as u32);
            if let Err(e) = dev.set_params(&params) {
                warn!(device = %self.path.display(), error = %e, "Camera refused the frame rate; using its own.");
            }
        }
        let stream = v4l::io::mmap::Stream::with_buffers(&dev, v4l::buffer::Type::VideoCapture, 4)
            .map_err(|e| format!("cannot start streaming: {e}"))?;
        self.open = Some(OpenCamera {
            stream,
            _device: dev,
        });
        Ok(Format {
            width: got.width,
            height: got.height,
            fourcc: got.fourcc.repr,
        })
    }

    fn next_frame(&mut self) -> Result<&[u8], String> {
        use v4l::io::traits::CaptureStream;
        let cam = self.open.as_mut().ok_or("not open")?;
        cam.stream
            .next()
            .map(|(buf, _meta)| buf)
            .map_err(|e| e.to_string())
    }

    fn close(&mut self) {
        self.open = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    /// What the scripted device does at each call, in order.
    enum Step {
        OpenFails(&'static str),
        Grants(Format),
        Frame(Vec<u8>),
        ReadFails(&'static str),
    }

    struct Scripted {
        steps: VecDeque<Step>,
        buf: Vec<u8>,
        calls: Arc<Mutex<Vec<String>>>,
    }

    impl CameraDevice for Scripted {
        fn open(&mut self, want: &Format, _fps: f64) -> Result<Format, String> {
            self.calls.lock().unwrap().push(format!(
                "open {}x{} {}",
                want.width,
                want.height,
                String::from_utf8_lossy(&want.fourcc)
            ));
            match self.steps.pop_front() {
                Some(Step::OpenFails(e)) => Err(e.into()),
                Some(Step::Grants(f)) => Ok(f),
                _ => panic!("the script expected no open here"),
            }
        }

        fn next_frame(&mut self) -> Result<&[u8], String> {
            self.calls.lock().unwrap().push("next".into());
            match self.steps.pop_front() {
                Some(Step::Frame(b)) => {
                    self.buf = b;
                    Ok(&self.buf)
                }
                Some(Step::ReadFails(e)) => Err(e.into()),
                _ => panic!("the script expected no read here"),
            }
        }

        fn close(&mut self) {
            self.calls.lock().unwrap().push("close".into());
        }
    }

    const GREY_4X2: Format = Format {
        width: 4,
        height: 2,
        fourcc: *b"GREY",
    };

    fn source(steps: Vec<Step>) -> (CameraSource, Arc<Mutex<Vec<String>>>) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let dev = Scripted {
            steps: steps.into(),
            buf: Vec::new(),
            calls: calls.clone(),
        };
        let src = CameraSource::new("/dev/video9".into(), Box::new(dev), GREY_4X2, 0.0)
            .with_backoff(Duration::from_millis(1), Duration::from_millis(4));
        (src, calls)
    }

    #[test]
    fn open_fail_back_off_stream_lose_and_recover() {
        let (mut src, calls) = source(vec![
            Step::OpenFails("no such device"),
            Step::OpenFails("device busy"),
            Step::OpenFails("device busy"),
            Step::OpenFails("device busy"),
            Step::Grants(GREY_4X2),
            Step::Frame(vec![1, 2, 3, 4, 5, 6, 7, 8]),
            Step::Frame(vec![1, 2, 3]),
            Step::ReadFails("EIO: unplugged"),
            Step::Grants(Format {
                fourcc: *b"MJPG",
                ..GREY_4X2
            }),
            Step::Grants(GREY_4X2),
            Step::Frame(vec![9; 8]),
        ]);
        let (stats, stop) = (Stats::default(), AtomicBool::new(false));
        let mut frame = Frame::default();
        let mut seen = Vec::new();
        let mut backoffs = Vec::new();
        for _ in 0..9 {
            let r = src.read(&mut frame, &stats, &stop);
            seen.push((r, src.state()));
            backoffs.push(src.backoff().as_millis());
        }
        use CameraState::*;
        assert_eq!(
            seen,
            vec![
                (Read::Nothing, Backoff),
                (Read::Nothing, Backoff),
                (Read::Nothing, Backoff),
                (Read::Nothing, Backoff),
                (Read::Frame, Streaming),
                (Read::Nothing, Streaming), // a short buffer: a frame error, still open
                (Read::Nothing, Lost),
                (Read::Nothing, Backoff), // granted MJPG when GREY was asked for
                (Read::Frame, Streaming),
            ]
        );
        assert_eq!(
            backoffs,
            vec![2, 4, 4, 4, 1, 1, 1, 2, 1],
            "doubles to the most, starts afresh once streaming"
        );
        assert_eq!(frame.pixels, vec![9; 8]);
        assert_eq!((frame.width, frame.height), (4, 2));
        assert_eq!(stats.frame_errors.load(Relaxed), 1);
        assert_eq!(stats.camera_reconnects.load(Relaxed), 2);
        assert_eq!(stats.camera_state.load(Relaxed), Streaming as u64);
        assert!(!stats.camera_down());
        let calls = calls.lock().unwrap();
        assert_eq!(calls.iter().filter(|c| *c == "close").count(), 2);
        assert!(calls
            .iter()
            .all(|c| !c.starts_with("open") || c == "open 4x2 GREY"));
    }

    #[test]
    fn a_camera_that_never_opens_stays_down_and_is_logged_once() {
        let (mut src, _) = source((0..5).map(|_| Step::OpenFails("gone")).collect());
        let (stats, stop) = (Stats::default(), AtomicBool::new(false));
        let mut frame = Frame::default();
        for _ in 0..5 {
            assert_eq!(src.read(&mut frame, &stats, &stop), Read::Nothing);
        }
        assert!(stats.camera_down());
        assert_eq!(
            CameraState::name_of(stats.camera_state.load(Relaxed)),
            "backoff"
        );
        assert_eq!(src.logged, Some(CameraState::Backoff));
        assert_eq!(stats.camera_reconnects.load(Relaxed), 0);
    }
}
