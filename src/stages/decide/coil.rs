//! The coil: when a coil ends, its defects become a report (`state.dir/coils/<coil>.json`
//! and `.csv`) and a summary (the `coil` event): counts per class, the surest defect,
//! the periodic defects, and whether a `[strip.block]` rule holds.
//!
//! Reports are written under a temporary name and renamed; when more than
//! `strip.keep_coils` are there, the oldest go. `inspectd report COIL` reads one back.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use crate::config::{BlockRules, StripConfig};
use crate::contract::{round_to, CoilReport, CoilSummary, PeriodicChain, TrackMsg, WorstMsg};
use crate::stages::decide::strip::{CoilLog, Track};

/// The folder under `state.dir`.
pub const FOLDER: &str = "coils";

/// A track as the contract has it (mm rounded to 0.1, the score to 4 places).
pub fn track_msg(t: &Track, labels: &[String]) -> TrackMsg {
    TrackMsg {
        track: t.id,
        class: labels.get(t.label).cloned().unwrap_or_default(),
        score: round_to(t.best_score as f64, 1e4),
        md_mm: round_to(t.md[0], 10.0),
        cd_mm: round_to(t.cd[0], 10.0),
        length_mm: round_to(t.md[1] - t.md[0], 10.0),
        width_mm: round_to(t.cd[1] - t.cd[0], 10.0),
        frames: t.frames,
        evidence: t.evidence.clone(),
        periodic: t.periodic.clone(),
    }
}

/// Checks that every class a `[strip.block]` rule names is one of the model's.
pub fn check_rules(rules: &BlockRules, labels: &[String]) -> Result<(), String> {
    let problems: Vec<String> = [
        (
            "longer_than_mm",
            rules.longer_than_mm.keys().collect::<Vec<_>>(),
        ),
        ("per_100m", rules.per_100m.keys().collect()),
    ]
    .into_iter()
    .flat_map(|(key, names)| {
        names
            .into_iter()
            .filter(|n| !labels.contains(n))
            .map(move |n| {
                format!(
                    "strip.block.{key}.{n}: the model has no defect class {n:?} (it has: {})",
                    labels.join(", ")
                )
            })
    })
    .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// The report of a finished coil: its defects in MD order and its summary.
pub fn report(log: &CoilLog, cfg: &StripConfig, labels: &[String], ended_by: &str) -> CoilReport {
    let mut defects: Vec<TrackMsg> = log.tracks.iter().map(|t| track_msg(t, labels)).collect();
    defects.sort_by(|a, b| a.md_mm.total_cmp(&b.md_mm).then(a.track.cmp(&b.track)));
    let mut counts: BTreeMap<String, u32> = labels.iter().map(|l| (l.clone(), 0)).collect();
    for d in &defects {
        *counts.entry(d.class.clone()).or_default() += 1;
    }
    let worst = defects
        .iter()
        .max_by(|a, b| a.score.total_cmp(&b.score))
        .map(|d| WorstMsg {
            track: d.track,
            class: d.class.clone(),
            score: d.score,
            md_mm: d.md_mm,
        });
    let periodic = chains(&log.tracks, labels);
    let block_reasons = block_reasons(&defects, &periodic, &cfg.block);
    CoilReport {
        v: 1,
        summary: CoilSummary {
            coil: log.coil.as_deref().unwrap_or("").to_string(),
            started_ts: log.first_ts.unwrap_or(log.last_ts),
            ended_ts: log.last_ts,
            ended_by: ended_by.to_string(),
            frames: log.frames,
            length_mm: round_to(log.length_mm, 10.0),
            counts,
            worst,
            block: !block_reasons.is_empty(),
            block_reasons,
            periodic,
            report: None,
        },
        defects,
    }
}

/// The periodic defects: per run (named by its first track), the longest it grew to.
fn chains(tracks: &[Track], labels: &[String]) -> Vec<PeriodicChain> {
    let mut longest: BTreeMap<u64, &Track> = BTreeMap::new();
    for t in tracks {
        let Some(p) = &t.periodic else { continue };
        if longest
            .get(&p.first_track)
            .is_none_or(|e| e.run.len() < t.run.len())
        {
            longest.insert(p.first_track, t);
        }
    }
    longest
        .values()
        .map(|last| {
            let p = last.periodic.as_ref().expect("kept for its run");
            let md = last
                .run
                .iter()
                .filter_map(|id| tracks.iter().find(|t| t.id == *id))
                .map(|t| round_to(t.md[0], 10.0))
                .collect();
            PeriodicChain {
                class: labels.get(last.label).cloned().unwrap_or_default(),
                pitch_mm: p.pitch_mm,
                roll_diameter_mm: p.roll_diameter_mm,
                repeats: p.repeats,
                tracks: last.run.clone(),
                md_mm: md,
            }
        })
        .collect()
}

/// Every `[strip.block]` rule that holds, in words.
fn block_reasons(
    defects: &[TrackMsg],
    periodic: &[PeriodicChain],
    rules: &BlockRules,
) -> Vec<String> {
    let mut out = Vec::new();
    for (class, limit) in &rules.longer_than_mm {
        for d in defects
            .iter()
            .filter(|d| &d.class == class && d.length_mm > *limit)
        {
            out.push(format!(
                "{class} track {} is {} mm long at MD {} mm (limit {limit} mm)",
                d.track, d.length_mm, d.md_mm
            ));
        }
    }
    for (class, limit) in &rules.per_100m {
        let md: Vec<f64> = defects
            .iter()
            .filter(|d| &d.class == class)
            .map(|d| d.md_mm)
            .collect();
        // The most defects of the class within 100 m, from each one on.
        let most = (0..md.len())
            .map(|i| {
                (
                    md[i],
                    md[i..]
                        .iter()
                        .take_while(|&&m| m < md[i] + 100_000.0)
                        .count(),
                )
            })
            .max_by_key(|&(_, n)| n);
        if let Some((from, n)) = most {
            if n as u32 > *limit {
                out.push(format!(
                    "{n} {class} defects within 100 m from MD {from} mm (limit {limit})"
                ));
            }
        }
    }
    if rules.periodic {
        for p in periodic {
            out.push(format!(
                "periodic {}: {} repeats every {} mm (roll diameter {} mm)",
                p.class, p.repeats, p.pitch_mm, p.roll_diameter_mm
            ));
        }
    }
    out
}

/// A coil id as a file name: `/` and `:` and `%` percent-encoded, the rest as it is
/// (ids are letters, digits and `-_.:/`).
pub fn file_stem(coil: &str) -> String {
    let mut s = String::with_capacity(coil.len());
    for c in coil.chars() {
        match c {
            '/' | ':' | '%' => {
                let _ = write!(s, "%{:02X}", c as u32);
            }
            c => s.push(c),
        }
    }
    s
}

/// Each periodic defect's tracks, with its pitch.
fn periodic_pitch(report: &CoilReport) -> BTreeMap<u64, f64> {
    report
        .summary
        .periodic
        .iter()
        .flat_map(|p| p.tracks.iter().map(|&t| (t, p.pitch_mm)))
        .collect()
}

/// The report's CSV: one row per defect, MD order; `periodic_pitch_mm` on every track of
/// a periodic defect.
pub fn csv(report: &CoilReport) -> String {
    let pitch = periodic_pitch(report);
    let mut s = String::from(
        "track,class,score,md_mm,cd_mm,length_mm,width_mm,frames,periodic_pitch_mm,evidence\n",
    );
    for d in &report.defects {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{},{},{},{}",
            d.track,
            d.class,
            d.score,
            d.md_mm,
            d.cd_mm,
            d.length_mm,
            d.width_mm,
            d.frames,
            pitch.get(&d.track).map(f64::to_string).unwrap_or_default(),
            d.evidence.as_deref().unwrap_or("")
        );
    }
    s
}

/// Where coil reports are written.
pub struct Reports {
    /// `state.dir`.
    pub state_dir: PathBuf,
    pub keep: usize,
}

impl Reports {
    /// Writes `report` as JSON and CSV; returns the JSON's path relative to `state.dir`.
    /// A coil that already has a report (inspectd restarted mid-coil, and the retained
    /// `cmd/coil` named it again) gets its next part, `<coil>~2.json` and on: nothing is
    /// overwritten. Then removes the oldest reports beyond `keep`.
    pub fn write(&self, report: &mut CoilReport) -> io::Result<String> {
        let dir = self.state_dir.join(FOLDER);
        std::fs::create_dir_all(&dir)?;
        let base = file_stem(&report.summary.coil);
        let stem = (1..)
            .map(|n| {
                if n == 1 {
                    base.clone()
                } else {
                    format!("{base}~{n}")
                }
            })
            .find(|s| !dir.join(format!("{s}.json")).exists())
            .expect("some part is free");
        let rel = format!("{FOLDER}/{stem}.json");
        report.summary.report = Some(rel.clone());
        let json = serde_json::to_vec_pretty(report).expect("a report serialises");
        write_atomic(&dir.join(format!("{stem}.json")), &json)?;
        write_atomic(&dir.join(format!("{stem}.csv")), csv(report).as_bytes())?;
        self.retain(&dir)?;
        Ok(rel)
    }

    /// Keeps the newest `keep` reports (by modification time).
    fn retain(&self, dir: &Path) -> io::Result<()> {
        let mut reports: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
            .collect();
        if reports.len() <= self.keep {
            return Ok(());
        }
        reports.sort();
        for (_, p) in &reports[..reports.len() - self.keep] {
            std::fs::remove_file(p)?;
            let _ = std::fs::remove_file(p.with_extension("csv"));
        }
        Ok(())
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Reads the reports of `coil` under `state_dir`: the first part and every later one
/// (`~2`, `~3`, ...: the coil was inspected across restarts).
pub fn read(state_dir: &Path, coil: &str) -> Result<Vec<CoilReport>, String> {
    let base = file_stem(coil);
    let mut parts = vec![read_part(state_dir, coil, &base)?];
    for n in 2.. {
        let stem = format!("{base}~{n}");
        if !state_dir.join(FOLDER).join(format!("{stem}.json")).exists() {
            break;
        }
        parts.push(read_part(state_dir, coil, &stem)?);
    }
    Ok(parts)
}

fn read_part(state_dir: &Path, coil: &str, stem: &str) -> Result<CoilReport, String> {
    let path = state_dir.join(FOLDER).join(format!("{stem}.json"));
    let bytes = std::fs::read(&path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            format!(
                "{}: no report for coil {coil:?} (a coil's report is written when the next coil starts or inspectd stops)",
                path.display()
            )
        } else {
            format!("{}: {e}", path.display())
        }
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: not a coil report: {e}", path.display()))
}

/// A report as a person reads it.
pub fn render(r: &CoilReport) -> String {
    let s = &r.summary;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "coil {}: {:.1} m inspected in {} frames, ended by {}",
        s.coil,
        s.length_mm / 1000.0,
        s.frames,
        s.ended_by
    );
    let _ = writeln!(out, "block: {}", if s.block { "YES" } else { "no" });
    for why in &s.block_reasons {
        let _ = writeln!(out, "  - {why}");
    }
    let counts: Vec<String> = s.counts.iter().map(|(c, n)| format!("{c} {n}")).collect();
    let _ = writeln!(out, "defects: {} ({})", r.defects.len(), counts.join(", "));
    for p in &s.periodic {
        let _ = writeln!(
            out,
            "periodic {}: {} repeats every {} mm (roll diameter {} mm), tracks {:?}",
            p.class, p.repeats, p.pitch_mm, p.roll_diameter_mm, p.tracks
        );
    }
    let _ = writeln!(
        out,
        "{:>6}  {:<16} {:>6}  {:>10}  {:>8}  {:>8}  {:>8}  {:>6}",
        "track", "class", "score", "MD mm", "CD mm", "length", "width", "frames"
    );
    let pitch = periodic_pitch(r);
    for d in &r.defects {
        let _ = writeln!(
            out,
            "{:>6}  {:<16} {:>6.3}  {:>10.1}  {:>8.1}  {:>8.1}  {:>8.1}  {:>6}{}",
            d.track,
            d.class,
            d.score,
            d.md_mm,
            d.cd_mm,
            d.length_mm,
            d.width_mm,
            d.frames,
            if pitch.contains_key(&d.track) {
                "  periodic"
            } else {
                ""
            }
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(track: u64, class: &str, md: f64, length: f64) -> TrackMsg {
        TrackMsg {
            track,
            class: class.into(),
            score: 0.5,
            md_mm: md,
            cd_mm: 0.0,
            length_mm: length,
            width_mm: 5.0,
            frames: 2,
            evidence: None,
            periodic: None,
        }
    }

    #[test]
    fn each_block_rule_is_named_when_it_holds_and_only_then() {
        let mut defects = vec![
            row(1, "scratches", 1000.0, 620.0),
            row(2, "scratches", 5000.0, 400.0),
            row(3, "inclusion", 10_000.0, 5.0),
            row(4, "inclusion", 60_000.0, 5.0),
            row(5, "inclusion", 109_000.0, 5.0),
            row(6, "inclusion", 300_000.0, 5.0),
        ];
        let rules = BlockRules {
            longer_than_mm: [("scratches".to_string(), 500.0)].into(),
            per_100m: [("inclusion".to_string(), 2)].into(),
            periodic: false,
        };
        let why = block_reasons(&defects, &[], &rules);
        assert_eq!(
            why,
            vec![
                "scratches track 1 is 620 mm long at MD 1000 mm (limit 500 mm)".to_string(),
                "3 inclusion defects within 100 m from MD 10000 mm (limit 2)".to_string(),
            ]
        );
        // Spread out, the inclusions are within the limit.
        defects[4].md_mm = 200_000.0;
        defects[0].length_mm = 500.0;
        assert!(block_reasons(&defects, &[], &rules).is_empty());
    }

    fn summary(coil: &str) -> CoilReport {
        let log = CoilLog {
            coil: Some(coil.into()),
            first_ts: Some(1),
            last_ts: 2,
            frames: 3,
            length_mm: 1200.0,
            tracks: Vec::new(),
        };
        let cfg: StripConfig =
            toml::from_str("mm_per_px_cd = 1.0\nmm_per_px_md = 1.0\nadvance_px = 10\n").unwrap();
        report(&log, &cfg, &["patches".to_string()], "cmd/coil")
    }

    #[test]
    fn a_coil_reported_twice_keeps_both_parts_and_old_coils_go() {
        let dir = tempfile::tempdir().unwrap();
        let reports = Reports {
            state_dir: dir.path().to_path_buf(),
            keep: 3,
        };
        let mut r = summary("L1/C:7");
        assert_eq!(reports.write(&mut r).unwrap(), "coils/L1%2FC%3A7.json");
        let mut again = summary("L1/C:7");
        again.summary.frames = 9;
        assert_eq!(
            reports.write(&mut again).unwrap(),
            "coils/L1%2FC%3A7~2.json"
        );
        let parts = read(dir.path(), "L1/C:7").unwrap();
        assert_eq!(
            parts.iter().map(|p| p.summary.frames).collect::<Vec<_>>(),
            vec![3, 9]
        );
        assert_eq!(parts[0].summary.counts["patches"], 0);
        assert!(read(dir.path(), "L1/C:8")
            .unwrap_err()
            .contains("no report for coil \"L1/C:8\""));
        // Past `keep` reports, the oldest go, JSON and CSV.
        for c in ["A", "B"] {
            std::thread::sleep(std::time::Duration::from_millis(20));
            reports.write(&mut summary(c)).unwrap();
        }
        let left: Vec<String> = std::fs::read_dir(dir.path().join(FOLDER))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left.len(), 6, "{left:?}");
        assert!(!left.contains(&"L1%2FC%3A7.json".to_string()), "{left:?}");
        assert!(!left.contains(&"L1%2FC%3A7.csv".to_string()), "{left:?}");
    }

    #[test]
    fn a_block_rule_for_a_class_the_model_lacks_is_named() {
        let rules = BlockRules {
            longer_than_mm: [("scratch".to_string(), 500.0)].into(),
            per_100m: [("patches".to_string(), 3)].into(),
            periodic: false,
        };
        let labels = ["patches".to_string(), "scratches".to_string()];
        let err = check_rules(&rules, &labels).unwrap_err();
        assert_eq!(
            err,
            "strip.block.longer_than_mm.scratch: the model has no defect class \"scratch\" (it has: patches, scratches)"
        );
        assert!(check_rules(&BlockRules::default(), &labels).is_ok());
    }

    #[test]
    fn coil_ids_become_file_names_that_tell_them_apart() {
        assert_eq!(file_stem("C-17.a_b"), "C-17.a_b");
        assert_eq!(file_stem("L2/C:17"), "L2%2FC%3A17");
        assert_ne!(file_stem("a/b"), file_stem("a_b"));
    }
}
