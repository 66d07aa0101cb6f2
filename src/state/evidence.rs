//! Evidence: the frame of every raised alarm (PNG, lossless) and a JSON sidecar (the
//! result, the alarm id, the model id, a digest of the running settings), kept under
//! `state.dir/evidence/YYYY-MM-DD/` (UTC) for the quality engineer.
//!
//! Decide hands frames to the `evidence` thread through a bounded queue and never waits:
//! when the queue is full the frame is not kept and is counted, so a slow disk never
//! stalls the pipeline. The thread writes each file under a temporary name and renames
//! it, then applies retention: files older than `evidence.max_age_days` go, and while
//! the folder holds more than `evidence.max_bytes` the oldest files go. File names start
//! with the time, so name order is age order. A write that fails (a full disk) is an
//! ERROR and a counter, never a crash.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use image::ImageEncoder;
use tracing::{error, info, warn};

use crate::config::EvidenceConfig;
use crate::telemetry::Stats;

/// The folder under `state.dir`.
pub const FOLDER: &str = "evidence";

/// One frame to keep.
pub struct Item {
    /// Path relative to `state.dir`, without the extension:
    /// `evidence/2026-11-30/081502123-alarm-17-scratches`.
    pub stem: String,
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
    /// The sidecar's JSON.
    pub sidecar: Vec<u8>,
}

/// Where decide hands frames over.
#[derive(Clone)]
pub struct EvidenceSink {
    tx: Sender<Item>,
    stats: Arc<Stats>,
}

impl EvidenceSink {
    /// Queues `item` without waiting; false (and counted) when the writer is behind.
    pub fn offer(&self, item: Item) -> bool {
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(TrySendError::Full(item)) => {
                self.stats.evidence_dropped.fetch_add(1, Relaxed);
                warn!(file = %item.stem, "The evidence writer is behind; this frame is not kept.");
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

/// The stem (path under `state.dir`, no extension) for a frame captured at `ts_ms`:
/// `evidence/YYYY-MM-DD/HHMMSSmmm-<what>`, with `what` cut to safe file-name characters.
pub fn stem(ts_ms: u64, what: &str) -> String {
    let (date, time) = utc(ts_ms);
    let safe: String = what
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{FOLDER}/{date}/{time}-{safe}")
}

/// `("YYYY-MM-DD", "HHMMSSmmm")` in UTC for Unix milliseconds.
pub fn utc(ts_ms: u64) -> (String, String) {
    let t = crate::frame::Utc::from_unix_ms(ts_ms);
    (
        format!("{:04}-{:02}-{:02}", t.year, t.month, t.day),
        format!("{:02}{:02}{:02}{:03}", t.hour, t.minute, t.second, t.milli),
    )
}

/// Starts the `evidence` thread; it ends when every sink is dropped.
pub fn start(
    cfg: &EvidenceConfig,
    state_dir: &Path,
    stats: Arc<Stats>,
) -> std::io::Result<(EvidenceSink, std::thread::JoinHandle<()>)> {
    let (tx, rx) = bounded(cfg.queue);
    let mut writer = Writer {
        root: state_dir.to_path_buf(),
        cfg: cfg.clone(),
        files: BTreeMap::new(),
        bytes: 0,
        stats: stats.clone(),
        failing: false,
    };
    let handle = std::thread::Builder::new()
        .name("evidence".into())
        .spawn(move || writer.run(rx))?;
    Ok((EvidenceSink { tx, stats }, handle))
}

struct Writer {
    root: PathBuf,
    cfg: EvidenceConfig,
    /// Every evidence file, by path under `root` (so oldest first), and its size.
    files: BTreeMap<String, u64>,
    bytes: u64,
    stats: Arc<Stats>,
    /// The last write failed (logged once until one succeeds).
    failing: bool,
}

impl Writer {
    fn run(&mut self, input: Receiver<Item>) {
        self.scan();
        self.retain();
        let mut last_age_check = Instant::now();
        loop {
            match input.recv_timeout(Duration::from_secs(60)) {
                Ok(item) => {
                    self.write(&item);
                    self.retain();
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if last_age_check.elapsed() >= Duration::from_secs(3600) {
                last_age_check = Instant::now();
                self.retain();
            }
        }
    }

    /// Indexes what an earlier run left.
    fn scan(&mut self) {
        let dir = self.root.join(FOLDER);
        let Ok(days) = std::fs::read_dir(&dir) else {
            return;
        };
        for day in days.flatten() {
            let Ok(files) = std::fs::read_dir(day.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') {
                    // A temporary file of a write that never finished.
                    let _ = std::fs::remove_file(f.path());
                    continue;
                }
                let size = f.metadata().map(|m| m.len()).unwrap_or(0);
                let rel = format!("{FOLDER}/{}/{name}", day.file_name().to_string_lossy());
                self.bytes += size;
                self.files.insert(rel, size);
            }
        }
        self.stats.evidence_bytes.store(self.bytes, Relaxed);
        if !self.files.is_empty() {
            info!(
                files = self.files.len(),
                bytes = self.bytes,
                "Evidence folder indexed."
            );
        }
    }

    fn write(&mut self, item: &Item) {
        let png = format!("{}.png", item.stem);
        let json = format!("{}.json", item.stem);
        let res = self
            .write_file(&png, |f| {
                image::codecs::png::PngEncoder::new(std::io::BufWriter::new(f))
                    .write_image(
                        &item.pixels,
                        item.width,
                        item.height,
                        image::ExtendedColorType::L8,
                    )
                    .map_err(std::io::Error::other)
            })
            .and_then(|()| {
                self.write_file(&json, |f| {
                    use std::io::Write;
                    f.write_all(&item.sidecar)
                })
            });
        match res {
            Ok(()) => {
                self.stats.evidence_written.fetch_add(1, Relaxed);
                if self.failing {
                    info!("Evidence is being written again.");
                    self.failing = false;
                }
            }
            Err(e) => {
                self.stats.evidence_errors.fetch_add(1, Relaxed);
                if !self.failing {
                    error!(file = %self.root.join(&png).display(), error = %e,
                        "Could not write evidence (disk full?); the alarm itself is not affected. Logged once until a write succeeds.");
                }
                self.failing = true;
            }
        }
    }

    /// Writes `rel` under a temporary name, then renames it.
    fn write_file(
        &mut self,
        rel: &str,
        fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let path = self.root.join(rel);
        let dir = path.parent().expect("evidence paths have a folder");
        std::fs::create_dir_all(dir)?;
        let name = path.file_name().expect("a file name").to_string_lossy();
        let tmp = dir.join(format!(".{name}.tmp"));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            fill(&mut f)?;
            f.sync_data()?;
            std::fs::rename(&tmp, &path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
            return result;
        }
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if let Some(old) = self.files.insert(rel.to_string(), size) {
            self.bytes -= old;
        }
        self.bytes += size;
        self.stats.evidence_bytes.store(self.bytes, Relaxed);
        Ok(())
    }

    /// Removes files past the age limit, then the oldest while over the size limit.
    fn retain(&mut self) {
        let cutoff = (self.cfg.max_age_days > 0).then(|| {
            let now = crate::frame::unix_ms();
            let (date, _) = utc(now.saturating_sub(self.cfg.max_age_days as u64 * 86_400_000));
            format!("{FOLDER}/{date}/")
        });
        let mut removed = 0u64;
        while let Some((rel, &size)) = self.files.iter().next() {
            let too_old = cutoff.as_ref().is_some_and(|c| rel.as_str() < c.as_str());
            if !too_old && self.bytes <= self.cfg.max_bytes {
                break;
            }
            let rel = rel.clone();
            let path = self.root.join(&rel);
            match std::fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    error!(file = %path.display(), error = %e, "Could not remove old evidence.");
                }
            }
            self.files.remove(&rel);
            self.bytes -= size;
            if let Some(dir) = path.parent() {
                // Only succeeds once the day's folder is empty.
                let _ = std::fs::remove_dir(dir);
            }
        }
        if removed > 0 {
            self.stats.evidence_removed.fetch_add(removed, Relaxed);
            info!(
                files = removed,
                bytes_kept = self.bytes,
                "Old evidence removed."
            );
        }
        self.stats.evidence_bytes.store(self.bytes, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_and_times() {
        assert_eq!(utc(0), ("1970-01-01".into(), "000000000".into()));
        // 2026-11-30 08:10:20.123 UTC
        assert_eq!(
            utc(1_796_026_220_123),
            ("2026-11-30".into(), "081020123".into())
        );
        // A leap day.
        assert_eq!(utc(951_782_400_000).0, "2000-02-29");
        assert_eq!(
            utc(4_107_542_399_999),
            ("2100-02-28".into(), "235959999".into())
        );
    }

    #[test]
    fn stems_keep_to_safe_characters() {
        let s = stem(0, "alarm-3-rolled-in scale/../x");
        assert_eq!(
            s,
            "evidence/1970-01-01/000000000-alarm-3-rolled-in_scale_.._x"
        );
    }

    fn item(stem: &str, px: usize) -> Item {
        Item {
            stem: stem.into(),
            width: px as u32,
            height: px as u32,
            // Noise, so PNG cannot shrink it much.
            pixels: (0..px * px).map(|i| (i * 7919 % 251) as u8).collect(),
            sidecar: b"{\"v\":1}".to_vec(),
        }
    }

    #[test]
    fn writes_png_and_sidecar_and_keeps_to_max_bytes_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let cfg = EvidenceConfig {
            max_bytes: 300_000,
            ..EvidenceConfig::default()
        };
        let (sink, handle) = start(&cfg, dir.path(), stats.clone()).unwrap();
        let today = utc(crate::frame::unix_ms()).0;
        for i in 0..6 {
            // ~90 KB each: three fit, not four.
            assert!(sink.offer(item(
                &format!("evidence/{today}/00000000{i}-alarm-{i}-x"),
                300
            )));
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(sink);
        handle.join().unwrap();
        let day = dir.path().join("evidence").join(&today);
        let mut names: Vec<String> = std::fs::read_dir(&day)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert!(stats.evidence_removed.load(Relaxed) > 0, "{names:?}");
        assert!(stats.evidence_bytes.load(Relaxed) <= 300_000);
        assert!(
            names.iter().any(|n| n.contains("alarm-5-x.png")),
            "the newest stays: {names:?}"
        );
        assert!(
            !names.iter().any(|n| n.contains("alarm-0-x")),
            "the oldest went first: {names:?}"
        );
        let png = image::open(day.join("000000005-alarm-5-x.png"))
            .unwrap()
            .to_luma8();
        assert_eq!(png.as_raw(), &item("x", 300).pixels, "lossless");
        assert_eq!(
            std::fs::read(day.join("000000005-alarm-5-x.json")).unwrap(),
            b"{\"v\":1}"
        );
    }

    #[test]
    fn files_past_max_age_are_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("evidence/2001-01-01");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join("000000000-alarm-1-x.png"), b"old").unwrap();
        std::fs::write(old.join(".half-written.png.tmp"), b"x").unwrap();
        let stats = Arc::new(Stats::default());
        let (sink, handle) = start(&EvidenceConfig::default(), dir.path(), stats.clone()).unwrap();
        drop(sink);
        handle.join().unwrap();
        assert!(!old.exists(), "the old day's folder is gone");
        assert_eq!(stats.evidence_removed.load(Relaxed), 1);
    }

    #[test]
    fn a_write_that_fails_is_counted_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the day's folder should be: every write under it fails.
        std::fs::create_dir_all(dir.path().join("evidence")).unwrap();
        std::fs::write(dir.path().join("evidence/2099-01-01"), b"not a folder").unwrap();
        let stats = Arc::new(Stats::default());
        let (sink, handle) = start(&EvidenceConfig::default(), dir.path(), stats.clone()).unwrap();
        assert!(sink.offer(item("evidence/2099-01-01/000000000-alarm-1-x", 20)));
        let today = utc(crate::frame::unix_ms()).0;
        assert!(sink.offer(item(&format!("evidence/{today}/000000000-alarm-2-x"), 20)));
        drop(sink);
        handle.join().unwrap();
        assert_eq!(stats.evidence_errors.load(Relaxed), 1);
        assert_eq!(stats.evidence_written.load(Relaxed), 1);
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let stats = Arc::new(Stats::default());
        let (tx, _rx) = bounded(1);
        let sink = EvidenceSink {
            tx,
            stats: stats.clone(),
        };
        assert!(sink.offer(item("evidence/x/1", 2)));
        let t = Instant::now();
        assert!(!sink.offer(item("evidence/x/2", 2)));
        assert!(t.elapsed() < Duration::from_secs(1));
        assert_eq!(stats.evidence_dropped.load(Relaxed), 1);
    }
}
