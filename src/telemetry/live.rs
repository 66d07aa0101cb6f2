//! What the live page shows: the newest inspected frames with their defects, the alarm
//! state per class, the labels and the model id.
//!
//! Publish offers every decided frame; a copy is kept only while someone has looked at
//! the page in the last [`WATCH_FOR`] and at most every [`EVERY`] (so an unwatched daemon
//! copies nothing and a watched one at most 5 frames a second). The HTTP thread encodes a
//! kept frame to JPEG when it is first asked for.
//!
//! With `[strip]`, decide also keeps the coil map: the coil being inspected, how far the
//! strip has gone, and a mark for each finished defect (at most [`MAP_MARKS`]; the
//! count of the rest is kept).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};

use crate::frame::{Defect, Frame};

/// How long a look at the page keeps frames coming.
pub const WATCH_FOR: u64 = 10_000;
/// Least time between two kept frames, in ms.
pub const EVERY: u64 = 200;
/// Frames kept (the page asks for the one its event named).
const KEEP: usize = 4;
/// Defect marks a coil map holds.
pub const MAP_MARKS: usize = 5000;

/// One finished defect on the coil map.
#[derive(Debug, Clone, PartialEq)]
pub struct MapMark {
    pub track: u64,
    pub label: usize,
    pub score: f32,
    pub md_mm: f64,
    pub cd_mm: f64,
    pub length_mm: f64,
    pub width_mm: f64,
    /// The first track of the periodic defect it belongs to.
    pub periodic: Option<u64>,
    pub evidence: Option<String>,
}

/// The coil being inspected, as the map shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CoilMap {
    pub coil: Option<String>,
    /// The last row seen, mm from the head.
    pub position_mm: f64,
    /// The view's width across the strip, mm from the edge.
    pub width_mm: f64,
    pub marks: Vec<MapMark>,
    /// Marks beyond [`MAP_MARKS`], not kept.
    pub more: u64,
    /// Changes whenever a mark is added or a coil starts.
    pub version: u64,
}

/// One inspected frame, as the page shows it.
pub struct Snapshot {
    pub seq: u64,
    pub ts_ms: u64,
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
    pub defects: Vec<Defect>,
    pub ok: bool,
    jpeg: OnceLock<Vec<u8>>,
}

impl Snapshot {
    /// The frame as a JPEG (quality 85), encoded once.
    pub fn jpeg(&self) -> &[u8] {
        self.jpeg.get_or_init(|| {
            let mut out = Vec::new();
            let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85);
            if let Err(e) = enc.encode(
                &self.pixels,
                self.width,
                self.height,
                image::ExtendedColorType::L8,
            ) {
                tracing::warn!(error = %e, "Could not encode a frame for the live page.");
                out.clear();
            }
            out
        })
    }
}

#[derive(Default)]
pub struct LiveView {
    labels: OnceLock<Vec<String>>,
    model_id: OnceLock<String>,
    config_digest: Mutex<String>,
    /// Unix ms until which frames are kept.
    watched_until: AtomicU64,
    last_kept: AtomicU64,
    active: AtomicU64,
    frames: Mutex<VecDeque<Arc<Snapshot>>>,
    map: Mutex<Option<CoilMap>>,
}

impl LiveView {
    /// The model's labels and id, once it is loaded.
    pub fn set_model(&self, labels: &[String], id: &str) {
        let _ = self.labels.set(labels.to_vec());
        let _ = self.model_id.set(id.to_string());
    }

    pub fn labels(&self) -> &[String] {
        self.labels.get().map_or(&[], |l| l.as_slice())
    }

    pub fn model_id(&self) -> &str {
        self.model_id.get().map_or("", |s| s.as_str())
    }

    /// A digest of the running settings (evidence sidecars name it).
    pub fn set_config_digest(&self, digest: String) {
        *self.config_digest.lock().expect("digest lock") = digest;
    }

    pub fn config_digest(&self) -> String {
        self.config_digest.lock().expect("digest lock").clone()
    }

    /// Active alarms after the newest frame, bit i = class i.
    pub fn active_bits(&self) -> u64 {
        self.active.load(Relaxed)
    }

    pub fn set_active_bits(&self, bits: u64) {
        self.active.store(bits, Relaxed);
    }

    /// Someone looks at the page: keep frames for the next [`WATCH_FOR`] ms.
    pub fn watch(&self) {
        self.watched_until
            .store(crate::frame::unix_ms() + WATCH_FOR, Relaxed);
    }

    /// Keeps a copy of `frame` when the page is watched and the last copy is old enough.
    pub fn offer(&self, frame: &Frame) {
        let now = crate::frame::unix_ms();
        if now > self.watched_until.load(Relaxed) || now < self.last_kept.load(Relaxed) + EVERY {
            return;
        }
        self.last_kept.store(now, Relaxed);
        let snap = Arc::new(Snapshot {
            seq: frame.seq,
            ts_ms: frame.ts_ms,
            width: frame.width,
            height: frame.height,
            pixels: frame.pixels.clone(),
            defects: frame.verdict.defects.clone(),
            ok: frame.verdict.ok,
            jpeg: OnceLock::new(),
        });
        let mut frames = self.frames.lock().expect("live frames lock");
        if frames.len() == KEEP {
            frames.pop_front();
        }
        frames.push_back(snap);
    }

    /// The strip has reached `position_mm` on `coil`, its view `width_mm` across. A new
    /// coil id starts an empty map.
    pub fn map_position(&self, coil: Option<&str>, position_mm: f64, width_mm: f64) {
        let mut map = self.map.lock().expect("map lock");
        let m = map.get_or_insert_with(CoilMap::default);
        if m.coil.as_deref() != coil {
            let version = m.version + 1;
            *m = CoilMap {
                coil: coil.map(str::to_string),
                version,
                ..CoilMap::default()
            };
        }
        m.position_mm = position_mm;
        m.width_mm = width_mm;
    }

    /// A defect finished: its mark goes on the map.
    pub fn map_mark(&self, mark: MapMark) {
        let mut map = self.map.lock().expect("map lock");
        let m = map.get_or_insert_with(CoilMap::default);
        if m.marks.len() < MAP_MARKS {
            m.marks.push(mark);
        } else {
            m.more += 1;
        }
        m.version += 1;
    }

    /// A copy of the coil map (None without `[strip]`).
    pub fn map(&self) -> Option<CoilMap> {
        self.map.lock().expect("map lock").clone()
    }

    /// The map's coil, position, width, mark count and version, without the marks.
    pub fn map_head(&self) -> Option<(Option<String>, f64, f64, usize, u64)> {
        let map = self.map.lock().expect("map lock");
        map.as_ref().map(|m| {
            (
                m.coil.clone(),
                m.position_mm,
                m.width_mm,
                m.marks.len(),
                m.version,
            )
        })
    }

    /// The newest kept frame.
    pub fn latest(&self) -> Option<Arc<Snapshot>> {
        self.frames
            .lock()
            .expect("live frames lock")
            .back()
            .cloned()
    }

    /// The kept frame with this sequence number.
    pub fn get(&self, seq: u64) -> Option<Arc<Snapshot>> {
        let frames = self.frames.lock().expect("live frames lock");
        frames.iter().find(|s| s.seq == seq).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64) -> Frame {
        let mut f = Frame::default();
        f.reset(seq, 16, 8);
        f.pixels
            .iter_mut()
            .enumerate()
            .for_each(|(i, p)| *p = i as u8);
        f
    }

    #[test]
    fn frames_are_kept_only_while_watched_and_at_most_every_200_ms() {
        let live = LiveView::default();
        live.offer(&frame(1));
        assert!(live.latest().is_none(), "nobody watches: nothing copied");
        live.watch();
        live.offer(&frame(2));
        live.offer(&frame(3));
        assert_eq!(live.latest().unwrap().seq, 2, "the second came too soon");
        std::thread::sleep(std::time::Duration::from_millis(EVERY + 20));
        live.offer(&frame(4));
        assert_eq!(live.latest().unwrap().seq, 4);
        assert_eq!(live.get(2).unwrap().seq, 2);
        let jpeg = live.get(4).unwrap().jpeg().to_vec();
        let decoded = image::load_from_memory(&jpeg).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (16, 8));
    }
}
