//! The strip: where each frame and each defect lies on the coil (MD along it from the
//! head, CD across it from the reference edge), and one track per physical defect.
//!
//! Frames overlap on a moving strip, so one defect shows in several of them. A defect of
//! a class joins the open track of that class whose extent on the strip its own box
//! overlaps (or comes within `strip.join_mm` of); otherwise it starts a new track. Because
//! boxes are compared in strip coordinates, the strip's motion between the frames is
//! already accounted for. A track ends once the strip has carried its whole extent out of
//! the view.
//!
//! Every ended track is kept in the coil's log. When a track ends, the ended tracks of its
//! class on the coil are searched for a run at a constant MD pitch that ends with it:
//! `strip.periodic_min_repeats` or more in a row make it periodic (a roll marking the
//! strip once a turn).

use std::sync::Arc;

use tracing::warn;

use crate::config::{SpeedSource, StripConfig};
use crate::contract::PeriodicMsg;
use crate::frame::{Frame, FramePlace, Place};

/// How far the strip moves between frames.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Advance {
    /// A fixed speed, mm/s, applied to the frames' capture timestamps.
    Speed(f64),
    /// A fixed number of rows per frame.
    Rows(u32),
    /// The last speed told on `cmd/speed`, mm/s.
    Told,
    /// Encoder counts on `cmd/encoder`, this many mm a count.
    Encoder(f64),
}

/// Where the speed comes from, and whether it is fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpeedState {
    /// From the config (`speed_mm_s`, `advance_px`): nothing to go stale.
    Fixed,
    /// Told over MQTT, but nothing has arrived yet.
    Missing,
    /// Told over MQTT, nothing for `strip.speed_stale_s`.
    Stale,
    Fresh,
}

impl SpeedState {
    /// As the `health` payload has it (`speed`); None for a fixed speed.
    pub fn name(self) -> Option<&'static str> {
        match self {
            SpeedState::Fixed => None,
            SpeedState::Missing => Some("missing"),
            SpeedState::Stale => Some("stale"),
            SpeedState::Fresh => Some("ok"),
        }
    }

    /// Fixed, or told and fresh: nothing for health to report.
    pub fn is_fine(self) -> bool {
        matches!(self, SpeedState::Fixed | SpeedState::Fresh)
    }

    pub fn code(self) -> u64 {
        self as u64
    }

    pub fn from_code(code: u64) -> SpeedState {
        match code {
            1 => SpeedState::Missing,
            2 => SpeedState::Stale,
            3 => SpeedState::Fresh,
            _ => SpeedState::Fixed,
        }
    }
}

/// A defect of the frame being placed: its MD and CD extents, its patch's difference
/// hash, and the open track it joins (index).
#[derive(Debug, Clone, Copy)]
struct Joining {
    md: [f64; 2],
    cd: [f64; 2],
    hash: u64,
    track: Option<usize>,
}

/// One physical defect followed over the frames that saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Track {
    pub id: u64,
    pub label: usize,
    /// Extent along the strip, mm from the coil's head: [head side, tail side].
    pub md: [f64; 2],
    /// Extent across the strip, mm from the edge.
    pub cd: [f64; 2],
    /// Frames it was reported in.
    pub frames: u32,
    pub best_score: f32,
    /// The coil it is on.
    pub coil: Option<Arc<str>>,
    /// The image of the frame that first showed it, relative to `state.dir`.
    pub evidence: Option<String>,
    /// Set when it ends: the periodic defect it completes, if any, and that run's
    /// tracks, head first, this one last.
    pub periodic: Option<PeriodicMsg>,
    pub run: Vec<u64>,
    /// The difference hash of its patch in the last frame that showed it.
    pub hash: u64,
}

/// What one coil has shown: its frames, the strip length seen, its ended tracks.
#[derive(Debug, Clone, Default)]
pub struct CoilLog {
    /// None: the strip seen before the first `cmd/coil`.
    pub coil: Option<Arc<str>>,
    pub first_ts: Option<u64>,
    pub last_ts: u64,
    pub frames: u64,
    /// From the head to the last row seen, mm.
    pub length_mm: f64,
    /// Ended tracks, in the order they ended.
    pub tracks: Vec<Track>,
}

/// The strip's state: the coil, how far it has moved, the open tracks.
pub struct Strip {
    cfg: StripConfig,
    advance: Advance,
    coil: Option<Arc<str>>,
    /// MD of the last frame's first row, and that frame's capture time.
    last: Option<(f64, u64)>,
    /// The last speed told (mm/s) and when it arrived (Unix ms).
    told: Option<(f64, u64)>,
    /// The last two encoder counts and when they arrived, newest first.
    counts: [Option<(i64, u64)>; 2],
    /// Encoder: the strip position (mm of counts) at the coil's head.
    head: Option<f64>,
    next_track: u64,
    open: Vec<Track>,
    log: CoilLog,
    /// Per defect of the frame being placed, in order.
    joined: Vec<Joining>,
}

impl Strip {
    /// `cfg` is validated ([`Settings::validate`](crate::config::Settings::validate)):
    /// exactly one of `speed_mm_s` and `advance_px` is set.
    pub fn new(cfg: &StripConfig) -> Strip {
        let advance = match (cfg.speed_mm_s, cfg.advance_px, cfg.speed_source) {
            (_, Some(rows), _) => Advance::Rows(rows),
            (Some(v), None, _) => Advance::Speed(v),
            (None, None, Some(SpeedSource::Speed)) => Advance::Told,
            (None, None, Some(SpeedSource::Encoder)) => {
                Advance::Encoder(cfg.mm_per_count.unwrap_or(1.0))
            }
            (None, None, None) => Advance::Rows(0),
        };
        Strip {
            cfg: cfg.clone(),
            advance,
            coil: None,
            last: None,
            told: None,
            counts: [None, None],
            head: None,
            next_track: 1,
            open: Vec::new(),
            log: CoilLog::default(),
            joined: Vec::new(),
        }
    }

    pub fn config(&self) -> &StripConfig {
        &self.cfg
    }

    /// A new coil starts (`cmd/coil`): its head is at the next frame's first row (MD 0),
    /// and every open track ends. Returns the tracks that ended and the log of the coil
    /// that ended with them.
    pub fn new_coil(&mut self, id: &str) -> (Vec<Track>, CoilLog) {
        let ended = self.finish();
        self.coil = Some(Arc::from(id));
        self.log.coil = self.coil.clone();
        self.last = None;
        ended
    }

    /// Ends the coil being inspected (a new one starts, or inspectd stops): every open
    /// track ends. Returns those tracks and the coil's log; the log starts afresh.
    pub fn finish(&mut self) -> (Vec<Track>, CoilLog) {
        let open = std::mem::take(&mut self.open);
        let ended: Vec<Track> = open.into_iter().map(|t| self.end_track(t)).collect();
        let log = std::mem::take(&mut self.log);
        self.log.coil = self.coil.clone();
        (ended, log)
    }

    /// Names the evidence image of the open track `id`.
    pub fn set_evidence(&mut self, id: u64, path: &str) {
        if let Some(t) = self.open.iter_mut().find(|t| t.id == id) {
            t.evidence = Some(path.to_string());
        }
    }

    /// A track ends: it is checked for a periodic run and kept in the coil's log.
    fn end_track(&mut self, mut t: Track) -> Track {
        if let Some((p, run)) = self.periodic_run(&t) {
            t.periodic = Some(p);
            t.run = run;
        }
        self.log.tracks.push(t.clone());
        t
    }

    /// The run of ended tracks of `t`'s class and place across the strip, at one MD
    /// pitch, that `t` completes: the
    /// longest (then the shortest pitch) of at least `periodic_min_repeats` tracks, each
    /// within `periodic_tolerance_mm` of where the pitch from the one after it puts it.
    fn periodic_run(&self, t: &Track) -> Option<(PeriodicMsg, Vec<u64>)> {
        let cfg = &self.cfg;
        let tol = cfg.periodic_tolerance_mm;
        // A roll marks the strip at one place across it: only tracks of the class at the
        // same CD (within the tolerance) can repeat this one.
        let same: Vec<&Track> = self
            .log
            .tracks
            .iter()
            .filter(|o| o.label == t.label && distance(o.cd, t.cd) <= tol)
            .collect();
        let mut best: Option<(f64, Vec<&Track>)> = None;
        for j in &same {
            let pitch = t.md[0] - j.md[0];
            if pitch < cfg.periodic_min_pitch_mm || pitch > cfg.periodic_max_pitch_mm {
                continue;
            }
            let mut run = vec![t, *j];
            let mut at = j.md[0];
            loop {
                let want = at - pitch;
                let next = same
                    .iter()
                    .filter(|o| o.md[0] < at && (o.md[0] - want).abs() <= tol)
                    .min_by(|a, b| (a.md[0] - want).abs().total_cmp(&(b.md[0] - want).abs()));
                match next {
                    Some(o) => {
                        run.push(o);
                        at = o.md[0];
                    }
                    None => break,
                }
            }
            let better = match &best {
                None => true,
                Some((bp, b)) => run.len() > b.len() || (run.len() == b.len() && pitch < *bp),
            };
            if better {
                best = Some((pitch, run));
            }
        }
        let (_, run) = best?;
        let n = run.len();
        if (n as u32) < cfg.periodic_min_repeats {
            return None;
        }
        let first = run[n - 1];
        let pitch = (t.md[0] - first.md[0]) / (n - 1) as f64;
        let msg = PeriodicMsg {
            pitch_mm: crate::contract::round_to(pitch, 10.0),
            roll_diameter_mm: crate::contract::round_to(pitch / std::f64::consts::PI, 10.0),
            repeats: n as u32,
            first_track: first.id,
        };
        Some((msg, run.iter().rev().map(|r| r.id).collect()))
    }

    /// The line told its speed (`cmd/speed`, mm/s), at `at_ms` (Unix ms).
    pub fn set_speed(&mut self, mm_s: f64, at_ms: u64) {
        self.told = Some((mm_s, at_ms));
    }

    /// The line's encoder read `count` at `at_ms`. A count below the last one (the
    /// encoder was reset) is taken as the new reference: MD carries on from where it was.
    pub fn set_count(&mut self, count: i64, at_ms: u64) {
        if let (Some((last, _)), Advance::Encoder(mm)) = (self.counts[0], self.advance) {
            if count < last {
                warn!(
                    count,
                    last, "The encoder count went back (reset?): MD carries on from here."
                );
                self.head = self.head.map(|h| h - (last - count) as f64 * mm);
                self.counts = [Some((count, at_ms)), None];
                return;
            }
        }
        self.counts = [Some((count, at_ms)), self.counts[0]];
    }

    /// Whether the speed the strip moves by is fresh at `now_ms`.
    pub fn speed_state(&self, now_ms: u64) -> SpeedState {
        let at = match self.advance {
            Advance::Speed(_) | Advance::Rows(_) => return SpeedState::Fixed,
            Advance::Told => self.told.map(|t| t.1),
            Advance::Encoder(_) => self.counts[0].map(|c| c.1),
        };
        match at {
            None => SpeedState::Missing,
            Some(at) if now_ms.saturating_sub(at) as f64 > self.cfg.speed_stale_s * 1000.0 => {
                SpeedState::Stale
            }
            Some(_) => SpeedState::Fresh,
        }
    }

    /// Encoder: the strip position at `ts_ms`, mm of counts: the last count, carried on
    /// at the speed of the last two (for at most `speed_stale_s`). None before a count.
    fn encoder_mm(&self, ts_ms: u64, mm: f64) -> Option<f64> {
        let (c1, t1) = self.counts[0]?;
        let rate = match self.counts[1] {
            Some((c0, t0)) if t1 > t0 => (c1 - c0) as f64 / (t1 - t0) as f64,
            _ => 0.0,
        };
        let dt = (ts_ms as f64 - t1 as f64).min(self.cfg.speed_stale_s * 1000.0);
        Some((c1 as f64 + rate * dt) * mm)
    }

    /// The MD of `frame`'s first row, advancing the strip from the previous frame.
    fn frame_md(&mut self, frame: &Frame, moved: bool) -> f64 {
        if let Advance::Encoder(mm) = self.advance {
            let at = self.encoder_mm(frame.ts_ms, mm);
            if self.last.is_none() {
                // The coil's head is here.
                self.head = at;
            }
            let md = match (self.last, at, self.head) {
                (Some((md, _)), _, _) if !moved => md,
                (_, Some(p), Some(h)) => p - h,
                (_, Some(p), None) => {
                    self.head = Some(p);
                    0.0
                }
                (_, None, _) => 0.0,
            };
            self.last = Some((md, frame.ts_ms));
            return md;
        }
        let md = match (self.last, self.advance) {
            (None, _) => 0.0,
            (Some((md, _)), _) if !moved => md,
            (Some((md, _)), Advance::Rows(rows)) => md + rows as f64 * self.cfg.mm_per_px_md,
            (Some((md, ts)), Advance::Speed(v)) => {
                md + v * frame.ts_ms.saturating_sub(ts) as f64 / 1000.0
            }
            (Some((md, ts)), Advance::Told) => {
                let v = self.told.map_or(0.0, |t| t.0);
                md + v * frame.ts_ms.saturating_sub(ts) as f64 / 1000.0
            }
            (Some((md, _)), Advance::Encoder(_)) => md,
        };
        self.last = Some((md, frame.ts_ms));
        md
    }

    /// Places `frame` and its defects on the strip and joins each defect to its track.
    /// `moved`: false for a repeated image (a stopped line), which neither advances the
    /// strip nor adds to tracks. Tracks that have left the view are appended to `ended`.
    pub fn place(&mut self, frame: &mut Frame, moved: bool, ended: &mut Vec<Track>) {
        let md0 = self.frame_md(frame, moved);
        let (mm_md, mm_cd) = (self.cfg.mm_per_px_md, self.cfg.mm_per_px_cd);
        let log = &mut self.log;
        log.first_ts.get_or_insert(frame.ts_ms);
        log.last_ts = frame.ts_ms;
        log.frames += 1;
        log.length_mm = log.length_mm.max(md0 + frame.height as f64 * mm_md);
        let edge = self.cfg.edge_px as f64;
        self.joined.clear();
        for d in &frame.verdict.defects {
            let [x, y, w, h] = d.bbox.map(|v| v as f64);
            let md = [md0 + y * mm_md, md0 + (y + h) * mm_md];
            let cd = [(x - edge) * mm_cd, (x + w - edge) * mm_cd];
            let [bx, by, bw, bh] = d.bbox.map(|v| v as usize);
            let hash = crate::stages::health::dhash_rect(
                &frame.pixels,
                frame.width as usize,
                [bx, by, bw, bh],
            );
            let gap = self.cfg.join_mm;
            // The open track of the class nearest this box on the strip, within reach, not
            // already taken by a better defect of this frame; between tracks as near (two
            // that both overlap it), the one whose patch looks most like this one.
            let best = self
                .open
                .iter()
                .enumerate()
                .filter(|(i, t)| {
                    t.label == d.label && !self.joined.iter().any(|j| j.track == Some(*i))
                })
                .map(|(i, t)| {
                    let dist = distance(t.md, md).max(distance(t.cd, cd));
                    (i, dist, (t.hash ^ hash).count_ones())
                })
                .filter(|&(_, dist, _)| dist <= gap)
                .min_by(|a, b| a.1.total_cmp(&b.1).then(a.2.cmp(&b.2)))
                .map(|(i, _, _)| i);
            self.joined.push(Joining {
                md,
                cd,
                hash,
                track: best,
            });
        }
        for (k, d) in frame.verdict.defects.iter_mut().enumerate() {
            let Joining {
                md,
                cd,
                hash,
                track: joined,
            } = self.joined[k];
            let first = joined.is_none();
            let i = match joined {
                Some(i) if moved => {
                    let t = &mut self.open[i];
                    t.md = [t.md[0].min(md[0]), t.md[1].max(md[1])];
                    t.cd = [t.cd[0].min(cd[0]), t.cd[1].max(cd[1])];
                    t.frames += 1;
                    t.best_score = t.best_score.max(d.score);
                    t.hash = hash;
                    i
                }
                Some(i) => i,
                None => {
                    self.open.push(Track {
                        id: self.next_track,
                        label: d.label,
                        md,
                        cd,
                        frames: 1,
                        best_score: d.score,
                        coil: self.coil.clone(),
                        evidence: None,
                        periodic: None,
                        run: Vec::new(),
                        hash,
                    });
                    self.next_track += 1;
                    self.open.len() - 1
                }
            };
            d.place = Some(Place {
                track: self.open[i].id,
                md_mm: md[0],
                cd_mm: cd[0],
                length_mm: md[1] - md[0],
                width_mm: cd[1] - cd[0],
                first,
            });
        }
        // What lies wholly before this frame's first row has left the view.
        let mut k = 0;
        while k < self.open.len() {
            if self.open[k].md[1] < md0 {
                let t = self.open.remove(k);
                let t = self.end_track(t);
                ended.push(t);
            } else {
                k += 1;
            }
        }
        frame.verdict.strip = Some(FramePlace {
            coil: self.coil.clone(),
            md_mm: md0,
        });
    }
}

/// How far apart two intervals are (0 when they overlap).
fn distance(a: [f64; 2], b: [f64; 2]) -> f64 {
    (b[0] - a[1]).max(a[0] - b[1]).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Defect;

    fn cfg(advance_px: Option<u32>, speed: Option<f64>) -> StripConfig {
        StripConfig {
            mm_per_px_cd: 0.5,
            mm_per_px_md: 0.25,
            edge_px: 100,
            speed_mm_s: speed,
            advance_px,
            speed_source: None,
            mm_per_count: None,
            speed_stale_s: 2.0,
            join_mm: 10.0,
            periodic_min_repeats: 3,
            periodic_tolerance_mm: 20.0,
            periodic_min_pitch_mm: 100.0,
            periodic_max_pitch_mm: 6000.0,
            keep_coils: 10,
            block: Default::default(),
        }
    }

    fn frame(ts_ms: u64, defects: &[(usize, [u32; 4])]) -> Frame {
        let mut f = Frame {
            ts_ms,
            width: 1000,
            height: 800,
            ..Frame::default()
        };
        f.verdict.defects = defects
            .iter()
            .map(|&(label, bbox)| Defect {
                label,
                score: 0.9,
                bbox,
                area: false,
                place: None,
            })
            .collect();
        f.verdict.ok = f.verdict.defects.is_empty();
        f
    }

    fn places(f: &Frame) -> Vec<Place> {
        f.verdict.defects.iter().map(|d| d.place.unwrap()).collect()
    }

    #[test]
    fn a_defect_carried_up_the_view_is_one_track_at_one_place_until_it_leaves() {
        // 400 rows a frame: a mark at row 600 in frame 1 is at row 200 in frame 2.
        let mut s = Strip::new(&cfg(Some(400), None));
        s.new_coil("C1");
        let mut ended = Vec::new();
        let mut f1 = frame(0, &[(2, [300, 600, 40, 80])]);
        s.place(&mut f1, true, &mut ended);
        let mut f2 = frame(0, &[(2, [302, 198, 40, 84]), (5, [700, 700, 10, 60])]);
        s.place(&mut f2, true, &mut ended);
        let (p1, p2) = (places(&f1)[0], places(&f2));
        assert_eq!(p1.track, p2[0].track, "the same patch in two frames");
        assert_ne!(p2[0].track, p2[1].track, "a scratch is another defect");
        // MD: frame 2's first row is 400 rows = 100 mm down the coil.
        assert_eq!(f2.verdict.strip.as_ref().unwrap().md_mm, 100.0);
        assert_eq!(p1.md_mm, 150.0);
        assert_eq!(p2[0].md_mm, 100.0 + 198.0 * 0.25);
        // CD from the edge at column 100, 0.5 mm a pixel.
        assert_eq!((p1.cd_mm, p1.width_mm, p1.length_mm), (100.0, 20.0, 20.0));
        assert!(ended.is_empty());
        // Two frames on, the patch (MD 149.5-171) is behind the first row (MD 300).
        let mut f3 = frame(0, &[]);
        s.place(&mut f3, true, &mut ended);
        let mut f4 = frame(0, &[]);
        s.place(&mut f4, true, &mut ended);
        let patch = ended
            .iter()
            .find(|t| t.label == 2)
            .expect("the patch ended");
        assert_eq!(patch.frames, 2);
        assert_eq!(patch.md, [149.5, 170.5]);
        assert_eq!(patch.coil.as_deref(), Some("C1"));
    }

    /// Frames of 800 rows, 400 apart, over marks at strip rows `marks` (class, row, col).
    fn replay(s: &mut Strip, marks: &[(usize, u32, u32)], frames: u32) -> Vec<Track> {
        let mut ended = Vec::new();
        for n in 0..frames {
            let top = n * 400;
            let seen: Vec<(usize, [u32; 4])> = marks
                .iter()
                .filter(|m| m.1 >= top && m.1 + 40 <= top + 800)
                .map(|&(label, row, col)| (label, [col, row - top, 30, 40]))
                .collect();
            s.place(&mut frame(0, &seen), true, &mut ended);
        }
        ended
    }

    #[test]
    fn a_mark_every_roll_turn_is_periodic_with_its_pitch_and_diameter() {
        let mut s = Strip::new(&cfg(Some(400), None));
        s.new_coil("C1");
        // A patch every 1600 rows (400 mm), one off-pitch patch and a scratch among them.
        let marks = [
            (2, 1000, 300),
            (2, 2600, 310),
            (2, 3000, 600),
            (5, 3300, 300),
            (2, 4204, 305),
            (2, 5800, 300),
        ];
        let ended = replay(&mut s, &marks, 18);
        assert_eq!(ended.len(), 6, "one track per mark");
        let patches: Vec<&Track> = ended.iter().filter(|t| t.label == 2).collect();
        assert!(patches[0].periodic.is_none() && patches[1].periodic.is_none());
        // The third at the pitch makes it periodic; the off-pitch one is not part of it.
        let third = patches.iter().find(|t| t.md[0] == 4204.0 * 0.25).unwrap();
        let p = third
            .periodic
            .as_ref()
            .expect("periodic at the third repeat");
        assert_eq!((p.repeats, p.first_track), (3, patches[0].id));
        assert_eq!(p.pitch_mm, 400.5);
        assert_eq!(p.roll_diameter_mm, 127.5);
        let last = patches.last().unwrap();
        assert_eq!(last.periodic.as_ref().unwrap().repeats, 4);
        assert_eq!(last.run.len(), 4);
        assert!(ended
            .iter()
            .filter(|t| t.md[0] == 750.0)
            .all(|t| t.periodic.is_none()));
        // The coil's log holds them all, with the length seen.
        let (_, log) = s.finish();
        assert_eq!(log.tracks.len(), 6);
        assert_eq!(log.length_mm, (17 * 400 + 800) as f64 * 0.25);
    }

    #[test]
    fn marks_too_far_apart_or_off_the_pitch_are_not_periodic() {
        let mut s = Strip::new(&cfg(Some(400), None));
        // 400 mm, then 500 mm, then 400 mm: no three in a row at one pitch (tolerance 20).
        let marks = [
            (2, 1000, 300),
            (2, 2600, 300),
            (2, 4600, 300),
            (2, 6200, 300),
        ];
        let ended = replay(&mut s, &marks, 18);
        assert_eq!(ended.len(), 4);
        assert!(ended.iter().all(|t| t.periodic.is_none()));
        // At the pitch, but the third 100 mm further across (200 columns): not a roll's.
        let mut s = Strip::new(&cfg(Some(400), None));
        let marks = [(2, 1000, 300), (2, 2600, 300), (2, 4200, 500)];
        let ended = replay(&mut s, &marks, 14);
        assert_eq!(ended.len(), 3);
        assert!(ended.iter().all(|t| t.periodic.is_none()));
    }

    #[test]
    fn between_two_tracks_a_box_overlaps_the_one_whose_patch_it_looks_like_wins() {
        let mut s = Strip::new(&cfg(Some(400), None));
        let mut ended = Vec::new();
        // Two patches side by side, overlapping across: one darkening to the right, one
        // brightening. Next frame (400 rows on) one box overlaps both tracks' extents;
        // its pixels are the brightening one's.
        let paint = |f: &mut Frame, [x, y, w, h]: [u32; 4], up: bool| {
            for row in y..y + h {
                for col in x..x + w {
                    let v = ((col - x) * 200 / w) as u8;
                    f.pixels[(row * f.width + col) as usize] = if up { v } else { 200 - v };
                }
            }
        };
        let (a, b) = ([100, 600, 60, 80], [140, 600, 60, 80]);
        let mut f1 = frame(0, &[(2, a), (2, b)]);
        f1.pixels = vec![128; 1000 * 800];
        paint(&mut f1, a, false);
        paint(&mut f1, b, true);
        s.place(&mut f1, true, &mut ended);
        let ids = places(&f1);
        let seen = [120, 200, 50, 80];
        for up in [true, false] {
            let mut s2 = Strip::new(&cfg(Some(400), None));
            let mut f = frame(0, &[(2, a), (2, b)]);
            f.pixels = f1.pixels.clone();
            s2.place(&mut f, true, &mut ended);
            let mut f2 = frame(0, &[(2, seen)]);
            f2.pixels = vec![128; 1000 * 800];
            paint(&mut f2, seen, up);
            s2.place(&mut f2, true, &mut ended);
            let want = if up { ids[1].track } else { ids[0].track };
            assert_eq!(places(&f2)[0].track, want, "brightening: {up}");
        }
    }

    #[test]
    fn defects_apart_on_the_strip_or_of_another_class_are_other_tracks() {
        let mut s = Strip::new(&cfg(Some(400), None));
        let mut ended = Vec::new();
        let mut f1 = frame(0, &[(2, [300, 600, 40, 80]), (2, [800, 600, 40, 80])]);
        s.place(&mut f1, true, &mut ended);
        // Frame 2: the right one again, the left one's place holds a crazing, and a
        // patch 60 mm further down the coil than the left one is new.
        let mut f2 = frame(
            0,
            &[
                (2, [800, 200, 40, 80]),
                (0, [300, 200, 40, 80]),
                (2, [300, 560, 40, 80]),
            ],
        );
        s.place(&mut f2, true, &mut ended);
        let (a, b) = (places(&f1), places(&f2));
        assert_eq!(b[0].track, a[1].track);
        let ids: Vec<u64> = b.iter().map(|p| p.track).collect();
        assert_eq!(ids, vec![a[1].track, 3, 4]);
        assert_eq!(f1.verdict.strip.as_ref().unwrap().coil, None);
    }

    #[test]
    fn a_told_speed_moves_the_strip_and_goes_stale_when_nothing_comes() {
        let mut c = cfg(None, None);
        c.speed_source = Some(SpeedSource::Speed);
        let mut s = Strip::new(&c);
        let mut ended = Vec::new();
        assert_eq!(s.speed_state(1_000), SpeedState::Missing);
        s.set_speed(400.0, 1_000);
        let mut f = frame(1_000, &[]);
        s.place(&mut f, true, &mut ended);
        let mut f = frame(1_500, &[]);
        s.place(&mut f, true, &mut ended);
        assert_eq!(f.verdict.strip.as_ref().unwrap().md_mm, 200.0);
        s.set_speed(1000.0, 1_600);
        let mut f = frame(2_000, &[]);
        s.place(&mut f, true, &mut ended);
        assert_eq!(f.verdict.strip.as_ref().unwrap().md_mm, 700.0);
        assert_eq!(s.speed_state(3_600), SpeedState::Fresh);
        assert_eq!(s.speed_state(3_601), SpeedState::Stale);
        assert_eq!(
            SpeedState::from_code(SpeedState::Stale.code()),
            SpeedState::Stale
        );
    }

    #[test]
    fn encoder_counts_place_the_strip_from_the_coils_head_and_survive_a_reset() {
        let mut c = cfg(None, None);
        c.speed_source = Some(SpeedSource::Encoder);
        c.mm_per_count = Some(0.5);
        let mut s = Strip::new(&c);
        let mut ended = Vec::new();
        s.set_count(10_000, 1_000);
        s.set_count(10_400, 1_100);
        s.new_coil("C1");
        // The head: the count carried on to the frame's time (4 counts a ms).
        let mut f = frame(1_150, &[]);
        s.place(&mut f, true, &mut ended);
        assert_eq!(f.verdict.strip.as_ref().unwrap().md_mm, 0.0);
        s.set_count(11_000, 1_250);
        let mut f = frame(1_250, &[]);
        s.place(&mut f, true, &mut ended);
        // 11000 - 10600 counts at 0.5 mm.
        assert_eq!(f.verdict.strip.as_ref().unwrap().md_mm, 200.0);
        // A reset: counts start again at 0; MD carries on.
        s.set_count(0, 1_300);
        let mut f = frame(1_300, &[]);
        s.place(&mut f, true, &mut ended);
        assert_eq!(f.verdict.strip.as_ref().unwrap().md_mm, 200.0);
        s.set_count(100, 1_400);
        let mut f = frame(1_400, &[]);
        s.place(&mut f, true, &mut ended);
        assert_eq!(f.verdict.strip.as_ref().unwrap().md_mm, 250.0);
        assert_eq!(s.speed_state(1_500), SpeedState::Fresh);
        assert_eq!(s.speed_state(3_401), SpeedState::Stale);
    }

    #[test]
    fn a_fixed_speed_moves_the_strip_by_the_time_between_frames_and_a_repeat_does_not() {
        let mut s = Strip::new(&cfg(None, Some(1000.0)));
        let mut ended = Vec::new();
        let mut f = frame(10_000, &[]);
        s.place(&mut f, true, &mut ended);
        let mut f = frame(10_250, &[]);
        s.place(&mut f, true, &mut ended);
        assert_eq!(f.verdict.strip.as_ref().unwrap().md_mm, 250.0);
        let mut f = frame(10_500, &[]);
        s.place(&mut f, false, &mut ended);
        assert_eq!(f.verdict.strip.as_ref().unwrap().md_mm, 250.0);
        // A new coil: its head is the next frame, the open tracks end.
        let mut f = frame(10_750, &[(1, [0, 0, 8, 8])]);
        s.place(&mut f, true, &mut ended);
        let (closed, log) = s.new_coil("C2");
        assert_eq!(closed.len(), 1);
        assert_eq!((log.coil, log.frames, log.tracks.len()), (None, 4, 1));
        let mut f = frame(11_000, &[]);
        s.place(&mut f, true, &mut ended);
        let at = f.verdict.strip.unwrap();
        assert_eq!((at.coil.as_deref(), at.md_mm), (Some("C2"), 0.0));
    }
}
