//! Decide: per-class thresholds turn tile probabilities into a frame verdict, and N-of-M
//! counters with hysteresis turn verdicts into alarm events.
//!
//! A tile is a defect of class `c` when `c`'s probability reaches `c`'s threshold (the
//! highest such class wins). Neighbouring defect tiles of one class merge into one defect,
//! whose box is the union of the tiles and whose score is the best tile's. The frame's
//! evidence for each label is its mean tile probability; eval ranks classes by it.

use crate::config::{AlarmConfig, DecideConfig};
use crate::frame::{Defect, Frame};

/// What an alarm did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlarmKind {
    Raised,
    Cleared,
    Acked,
}

impl AlarmKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmKind::Raised => "raised",
            AlarmKind::Cleared => "cleared",
            AlarmKind::Acked => "acked",
        }
    }
}

/// An alarm transition, before it gets its id from the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlarmChange {
    pub kind: AlarmKind,
    pub class: String,
    /// Frames in the window that had the class.
    pub frames: u32,
    pub window: u32,
    /// The frame that caused it (0 for an acknowledgement).
    pub seq: u64,
    /// For cleared and acked: the id of the raised event they close.
    pub raised_id: Option<u64>,
}

/// Turns tile probabilities into a verdict.
pub struct Decider {
    labels: Vec<String>,
    ok: usize,
    thresholds: Vec<f32>,
    tile: u32,
    /// Per tile: the defect label it was assigned, or usize::MAX. Kept between frames.
    assigned: Vec<usize>,
    group: Vec<u32>,
    bounds: Vec<Option<(usize, f32, [u32; 4])>>,
}

impl Decider {
    pub fn new(
        cfg: &DecideConfig,
        labels: &[String],
        ok_label: &str,
        tile: u32,
    ) -> Result<Decider, String> {
        let mut problems = Vec::new();
        for name in cfg.thresholds.keys() {
            if !labels.contains(name) || name == ok_label {
                problems.push(format!(
                    "decide.thresholds.{name}: the model has no defect class {name:?} (it has: {})",
                    labels
                        .iter()
                        .filter(|l| *l != ok_label)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let thresholds = labels
            .iter()
            .map(|l| {
                cfg.thresholds
                    .get(l)
                    .copied()
                    .unwrap_or(cfg.default_threshold) as f32
            })
            .collect();
        let ok = labels.iter().position(|l| l == ok_label).unwrap_or(0);
        Ok(Decider {
            labels: labels.to_vec(),
            ok,
            thresholds,
            tile,
            assigned: Vec::new(),
            group: Vec::new(),
            bounds: Vec::new(),
        })
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    pub fn ok_index(&self) -> usize {
        self.ok
    }

    /// Fills `frame.verdict` from `frame.tiles` and `frame.probs`.
    pub fn decide(&mut self, frame: &mut Frame) {
        let n = self.labels.len();
        let tiles = frame.tiles.len();
        let v = &mut frame.verdict;
        v.defects.clear();
        v.evidence.clear();
        v.evidence.resize(n, 0.0);
        self.assigned.clear();
        for probs in frame.probs.chunks_exact(n) {
            let mut best = usize::MAX;
            for (c, &p) in probs.iter().enumerate() {
                v.evidence[c] += p;
                if c != self.ok
                    && p >= self.thresholds[c]
                    && (best == usize::MAX || p > probs[best])
                {
                    best = c;
                }
            }
            self.assigned.push(best);
        }
        if tiles > 0 {
            for e in v.evidence.iter_mut() {
                *e /= tiles as f32;
            }
        }
        // Merge touching tiles of one class (tiles overlap or abut when their origins are
        // at most one tile apart on both axes).
        self.group.clear();
        self.group.extend(0..tiles as u32);
        for i in 0..tiles {
            if self.assigned[i] == usize::MAX {
                continue;
            }
            for j in 0..i {
                if self.assigned[j] == self.assigned[i]
                    && touches(frame.tiles[i], frame.tiles[j], self.tile)
                {
                    let (ri, rj) = (
                        root(&mut self.group, i as u32),
                        root(&mut self.group, j as u32),
                    );
                    if ri != rj {
                        self.group[ri.max(rj) as usize] = ri.min(rj);
                    }
                }
            }
        }
        // Per group root: label, best score, x0, y0, x1, y1.
        self.bounds.clear();
        self.bounds.resize(tiles, None);
        for i in 0..tiles {
            let c = self.assigned[i];
            if c == usize::MAX {
                continue;
            }
            let r = root(&mut self.group, i as u32) as usize;
            let [x, y] = frame.tiles[i];
            let (x1, y1) = (
                (x + self.tile).min(frame.width),
                (y + self.tile).min(frame.height),
            );
            let score = frame.probs[i * n + c];
            let b = self.bounds[r].get_or_insert((c, score, [x, y, x1, y1]));
            b.1 = b.1.max(score);
            b.2 = [b.2[0].min(x), b.2[1].min(y), b.2[2].max(x1), b.2[3].max(y1)];
        }
        for &(label, score, [x0, y0, x1, y1]) in self.bounds.iter().flatten() {
            v.defects.push(Defect {
                label,
                score,
                bbox: [x0, y0, x1 - x0, y1 - y0],
            });
        }
        v.defects.sort_by(|a, b| b.score.total_cmp(&a.score));
        v.ok = v.defects.is_empty();
    }
}

fn touches(a: [u32; 2], b: [u32; 2], tile: u32) -> bool {
    a[0].abs_diff(b[0]) <= tile && a[1].abs_diff(b[1]) <= tile
}

fn root(g: &mut [u32], mut i: u32) -> u32 {
    while g[i as usize] != i {
        g[i as usize] = g[g[i as usize] as usize];
        i = g[i as usize];
    }
    i
}

/// The state of one class's alarm.
#[derive(Debug, Clone)]
struct ClassAlarm {
    /// The last `window` frames: did they have this class?
    history: Vec<bool>,
    next: usize,
    filled: usize,
    count: u32,
    active: bool,
    raised_id: Option<u64>,
}

/// N-of-M alarms with hysteresis and optional latch, one per defect class.
pub struct AlarmTracker {
    cfg: AlarmConfig,
    classes: Vec<String>,
    alarms: Vec<ClassAlarm>,
}

impl AlarmTracker {
    /// `classes`: the defect classes, in label order (without the ok label).
    pub fn new(cfg: &AlarmConfig, classes: Vec<String>) -> Self {
        let alarm = ClassAlarm {
            history: vec![false; cfg.window as usize],
            next: 0,
            filled: 0,
            count: 0,
            active: false,
            raised_id: None,
        };
        Self {
            cfg: cfg.clone(),
            alarms: vec![alarm; classes.len()],
            classes,
        }
    }

    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Applies a new alarm config, keeping each class's state when the window is unchanged
    /// and restarting the counts (not the active flags) when it changed.
    pub fn reconfigure(&mut self, cfg: &AlarmConfig) {
        if cfg.window != self.cfg.window {
            for a in &mut self.alarms {
                a.history = vec![false; cfg.window as usize];
                a.next = 0;
                a.filled = 0;
                a.count = 0;
            }
        }
        self.cfg = cfg.clone();
    }

    /// Is the alarm of class index `i` active?
    pub fn active(&self, i: usize) -> bool {
        self.alarms[i].active
    }

    pub fn any_active(&self) -> bool {
        self.alarms.iter().any(|a| a.active)
    }

    /// Records one frame: `present[i]` says whether class `i` was in it. Changes are
    /// appended to `out`.
    pub fn observe(
        &mut self,
        seq: u64,
        present: impl Fn(usize) -> bool,
        out: &mut Vec<AlarmChange>,
    ) {
        let window = self.cfg.window;
        for (i, a) in self.alarms.iter_mut().enumerate() {
            let now = present(i);
            if a.filled == a.history.len() && a.history[a.next] {
                a.count -= 1;
            }
            a.history[a.next] = now;
            a.next = (a.next + 1) % a.history.len();
            a.filled = (a.filled + 1).min(a.history.len());
            if now {
                a.count += 1;
            }
            let change = if !a.active && a.count >= self.cfg.raise {
                a.active = true;
                Some(AlarmKind::Raised)
            } else if a.active && !self.cfg.latch && a.count <= self.cfg.clear {
                a.active = false;
                Some(AlarmKind::Cleared)
            } else {
                None
            };
            if let Some(kind) = change {
                out.push(AlarmChange {
                    kind,
                    class: self.classes[i].clone(),
                    frames: a.count,
                    window,
                    seq,
                    raised_id: if kind == AlarmKind::Cleared {
                        a.raised_id
                    } else {
                        None
                    },
                });
            }
        }
    }

    /// Tells the tracker which id the outbox gave the raised event of class `i`, so that
    /// acknowledgements can name it.
    pub fn set_raised_id(&mut self, class: &str, id: u64) {
        if let Some(i) = self.classes.iter().position(|c| c == class) {
            self.alarms[i].raised_id = Some(id);
        }
    }

    /// Acknowledges the alarm raised with `id`, or every active alarm (`None`). Latched
    /// alarms clear on acknowledgement. Returns false when no active alarm has that id.
    pub fn ack(&mut self, id: Option<u64>, out: &mut Vec<AlarmChange>) -> bool {
        let mut any = false;
        for (i, a) in self.alarms.iter_mut().enumerate() {
            if !a.active || (id.is_some() && a.raised_id != id) {
                continue;
            }
            any = true;
            out.push(AlarmChange {
                kind: AlarmKind::Acked,
                class: self.classes[i].clone(),
                frames: a.count,
                window: self.cfg.window,
                seq: 0,
                raised_id: a.raised_id,
            });
            if self.cfg.latch {
                a.active = false;
                // Start counting afresh, so a defect still in view raises a new alarm only
                // after N more frames.
                a.history.iter_mut().for_each(|h| *h = false);
                a.count = 0;
                a.filled = 0;
            }
        }
        any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(window: u32, raise: u32, clear: u32, latch: bool) -> AlarmTracker {
        AlarmTracker::new(
            &AlarmConfig {
                window,
                raise,
                clear,
                latch,
            },
            vec!["scratches".into()],
        )
    }

    /// Feeds a pattern of frames ('x' = class present) and returns (frame index, kind).
    fn run(t: &mut AlarmTracker, pattern: &str) -> Vec<(usize, AlarmKind)> {
        let mut out = Vec::new();
        let mut events = Vec::new();
        for (i, ch) in pattern.chars().enumerate() {
            out.clear();
            t.observe(i as u64, |_| ch == 'x', &mut out);
            events.extend(out.iter().map(|c| (i, c.kind)));
        }
        events
    }

    #[test]
    fn raises_at_n_of_m_and_clears_with_hysteresis() {
        // M=5, N=3, N_clear=1.
        let mut t = tracker(5, 3, 1, false);
        let ev = run(&mut t, "x.x.x.x...x....");
        // Frame 4 is the third 'x' within the last five: raised. It stays raised while 2
        // of the last 5 have it (up to frame 8: frames 4 and 6), and clears at frame 9,
        // when only frame 6 is left. Frame 10 alone does not raise it again.
        assert_eq!(ev, vec![(4, AlarmKind::Raised), (9, AlarmKind::Cleared)]);
    }

    #[test]
    fn does_not_raise_below_n() {
        let mut t = tracker(5, 3, 1, false);
        assert!(run(&mut t, "xx...xx...xx...").is_empty());
    }

    #[test]
    fn a_latched_alarm_holds_until_acknowledged() {
        let mut t = tracker(3, 2, 0, true);
        assert_eq!(run(&mut t, "xx......"), vec![(1, AlarmKind::Raised)]);
        assert!(t.active(0));
        t.set_raised_id("scratches", 41);
        let mut out = Vec::new();
        assert!(!t.ack(Some(7), &mut out), "a wrong id acknowledges nothing");
        assert!(out.is_empty());
        assert!(t.ack(Some(41), &mut out));
        assert_eq!(out[0].kind, AlarmKind::Acked);
        assert_eq!(out[0].raised_id, Some(41));
        assert!(!t.active(0));
    }

    #[test]
    fn acknowledging_an_unlatched_alarm_keeps_it_active() {
        let mut t = tracker(3, 2, 0, false);
        run(&mut t, "xx");
        let mut out = Vec::new();
        assert!(t.ack(None, &mut out));
        assert!(t.active(0));
    }

    fn frame(tiles: &[[u32; 2]], probs: &[[f32; 3]]) -> Frame {
        let mut f = Frame::default();
        f.reset(1, 128, 64);
        f.tiles = tiles.to_vec();
        f.probs = probs.iter().flatten().copied().collect();
        f
    }

    fn decider(threshold: f64) -> Decider {
        let labels = vec![
            "ok".to_string(),
            "crazing".to_string(),
            "scratches".to_string(),
        ];
        let cfg = DecideConfig {
            thresholds: [("scratches".to_string(), 0.9)].into_iter().collect(),
            default_threshold: threshold,
        };
        Decider::new(&cfg, &labels, "ok", 64).unwrap()
    }

    #[test]
    fn touching_tiles_of_one_class_merge_into_one_box() {
        let mut d = decider(0.5);
        let mut f = frame(
            &[[0, 0], [32, 0], [64, 0]],
            &[[0.1, 0.8, 0.1], [0.2, 0.7, 0.1], [0.9, 0.05, 0.05]],
        );
        d.decide(&mut f);
        assert!(!f.verdict.ok);
        assert_eq!(
            f.verdict.defects,
            vec![Defect {
                label: 1,
                score: 0.8,
                bbox: [0, 0, 96, 64]
            }]
        );
        let e = &f.verdict.evidence;
        assert!((e[1] - (0.8 + 0.7 + 0.05) / 3.0).abs() < 1e-6);
    }

    #[test]
    fn per_class_thresholds_apply() {
        let mut d = decider(0.5);
        // scratches at 0.85 is under its 0.9 threshold: the frame is ok.
        let mut f = frame(&[[0, 0]], &[[0.1, 0.05, 0.85]]);
        d.decide(&mut f);
        assert!(f.verdict.ok, "{:?}", f.verdict);
        let mut f = frame(&[[0, 0]], &[[0.02, 0.03, 0.95]]);
        d.decide(&mut f);
        assert_eq!(f.verdict.defects[0].label, 2);
    }

    #[test]
    fn a_threshold_for_an_unknown_class_is_refused() {
        let labels = vec!["ok".to_string(), "crazing".to_string()];
        let cfg = DecideConfig {
            thresholds: [("scratchez".to_string(), 0.5)].into_iter().collect(),
            default_threshold: 0.5,
        };
        let err = Decider::new(&cfg, &labels, "ok", 64).err().unwrap();
        assert!(err.contains("decide.thresholds.scratchez"), "{err}");
    }

    #[test]
    fn distant_tiles_of_one_class_are_two_defects() {
        let mut d = decider(0.5);
        let mut f = frame(&[[0, 0], [200, 0]], &[[0.1, 0.8, 0.1], [0.1, 0.6, 0.3]]);
        f.width = 300;
        d.decide(&mut f);
        assert_eq!(f.verdict.defects.len(), 2);
        assert_eq!(f.verdict.defects[1].bbox, [200, 0, 64, 64]);
    }
}
