//! `[strip]` end to end: a replay of overlapping frames cut from one long strip (NEU
//! defect images laid into defect-free surface) gives each defect one track, at its
//! place on the coil, and the coil announced on `cmd/coil`; each finished track is one
//! `defect` event, the coil's end a `coil` event and a report `inspectd report` prints;
//! a defect image recurring at a constant pitch is found periodic.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(60);
/// Frames are 400 x 400, the strip moves 200 rows a frame, 1 mm a pixel.
const SIDE: u32 = STRIP_SIDE;
const ADVANCE: u32 = STRIP_ADVANCE;
const FRAMES: u32 = 8;

/// Runs the station's replay to its end with a subscriber on its topics, `retained`
/// commands (topic under the root, payload) published first; waits for every frame's
/// result. Returns the subscriber, the exited daemon and the results in order.
fn replay(
    port: u16,
    st: &Station,
    retained: &[(&str, &str)],
    frames: u32,
) -> (Subscriber, Daemon, Vec<serde_json::Value>) {
    let sub = Subscriber::start(port, &format!("{}/#", st.root), false);
    for (topic, payload) in retained {
        sub.publish_retained(&format!("{}/{topic}", st.root), payload);
    }
    let mut daemon = Daemon::start(&st.config);
    assert_eq!(daemon.wait(LONG), Some(0), "{}", daemon.log_text());
    let topic = format!("{}/result", st.root);
    assert!(sub.wait_for(Duration::from_secs(10), |m| m
        .iter()
        .filter(|m| m.topic == topic)
        .count()
        >= frames as usize));
    let results = sub.on(&topic).iter().map(Msg::json).collect();
    (sub, daemon, results)
}

/// The station's state folder.
fn state_dir(st: &Station) -> std::path::PathBuf {
    st.dir.path().join("state")
}

/// `inspectd report COIL --config FILE [args]`: (exit code, stdout, stderr).
fn report(config: &Path, coil: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(["report", coil, "--config"])
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn overlapping_frames_give_one_track_per_defect_at_its_place_on_the_coil() {
    // The strip: 1800 rows, a patches image on the left and a scratches image on the
    // right, their boxes centred on rows 700 and 1300: wholly inside two frames each.
    let (images, truth) = strip_frames(FRAMES, &[("patches", 0, 700), ("scratches", 200, 1300)]);

    let broker = Mosquitto::start();
    // Two frames a second: the coil announced before the start reaches the daemon first.
    let st = station(
        images.path(),
        broker.port,
        false,
        2.0,
        (5, 3, 1, false),
        &format!(
            "[strip]\nmm_per_px_cd = 1.0\nmm_per_px_md = 1.0\nadvance_px = {ADVANCE}\n{}",
            shipped_decide()
        ),
    );
    let (sub, daemon, results) = replay(broker.port, &st, &[("cmd/coil", "C-20261202-1")], FRAMES);

    // Every frame is on the announced coil, 200 mm further than the one before.
    for (k, r) in results.iter().enumerate() {
        assert_eq!(r["coil"], "C-20261202-1", "{r}");
        assert_eq!(
            r["md_mm"].as_f64(),
            Some((k as u32 * ADVANCE) as f64),
            "{r}"
        );
    }
    // Each defect reported on a labelled one's spot: its MD/CD is where it lies on the
    // strip (its box, shifted by the frame's MD), and all reports of it are one track.
    let mut tracks: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    let mut frames_seen: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &results {
        let md0 = r["md_mm"].as_f64().unwrap();
        for d in r["defects"].as_array().unwrap() {
            let b: Vec<f64> = d["bbox"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(d["md_mm"].as_f64(), Some(md0 + b[1]), "{d}");
            assert_eq!(d["cd_mm"].as_f64(), Some(b[0]), "{d}");
            assert_eq!(d["length_mm"].as_f64(), Some(b[3]), "{d}");
            let on_strip = [b[0], md0 + b[1], b[0] + b[2], md0 + b[1] + b[3]];
            for (class, t) in &truth {
                if d["class"] == *class && overlaps(on_strip, *t) {
                    tracks
                        .entry(class)
                        .or_default()
                        .insert(d["track"].as_u64().unwrap());
                    *frames_seen.entry(class).or_default() += 1;
                }
            }
        }
    }
    for (class, _) in &truth {
        assert_eq!(
            tracks.get(class).map(|t| t.len()),
            Some(1),
            "{class}: one defect, one track: {tracks:?}\n{results:#?}"
        );
        assert!(
            frames_seen[class] >= 2,
            "{class} seen in overlapping frames: {frames_seen:?}"
        );
    }
    assert_ne!(tracks["patches"], tracks["scratches"]);
    let log = daemon.log_text();
    assert!(log.contains("Defect track ended."), "{log}");

    // Every track reported is one `defect` event, with the extent and frame count of
    // its reports, and the image of the frame that first showed it.
    let mut reported: BTreeMap<u64, (String, f64, u32)> = BTreeMap::new();
    for r in &results {
        for d in r["defects"].as_array().unwrap() {
            let e = reported.entry(d["track"].as_u64().unwrap()).or_insert((
                d["class"].as_str().unwrap().to_string(),
                f64::MAX,
                0,
            ));
            e.1 = e.1.min(d["md_mm"].as_f64().unwrap());
            e.2 += 1;
        }
    }
    let defect_topic = format!("{}/defect", st.root);
    assert!(
        sub.wait_for(Duration::from_secs(10), |m| m
            .iter()
            .filter(|m| m.topic == defect_topic)
            .count()
            >= reported.len()),
        "{}",
        daemon.log_text()
    );
    let events: Vec<serde_json::Value> = sub.on(&defect_topic).iter().map(Msg::json).collect();
    assert_eq!(
        events.len(),
        reported.len(),
        "one event per track: {events:#?}"
    );
    for e in &events {
        let (class, md, frames) = &reported[&e["track"].as_u64().unwrap()];
        assert_eq!(
            (e["v"].as_u64(), e["coil"].as_str()),
            (Some(1), Some("C-20261202-1"))
        );
        assert_eq!(e["class"].as_str(), Some(class.as_str()), "{e}");
        assert_eq!(e["md_mm"].as_f64(), Some(*md), "{e}");
        assert_eq!(e["frames"].as_u64(), Some(*frames as u64), "{e}");
        let image = e["evidence"].as_str().expect("a track's evidence image");
        assert!(
            wait_until(Duration::from_secs(5), || state_dir(&st)
                .join(image)
                .is_file()),
            "{image}"
        );
    }

    // The coil ends with the replay: its summary event and its report.
    let coil_topic = format!("{}/coil", st.root);
    assert!(sub.wait_for(Duration::from_secs(10), |m| m
        .iter()
        .any(|m| m.topic == coil_topic)));
    let coil = sub.on(&coil_topic)[0].json();
    assert_eq!(coil["coil"], "C-20261202-1");
    assert_eq!(coil["ended_by"], "shutdown");
    assert_eq!(coil["frames"].as_u64(), Some(FRAMES as u64));
    assert_eq!(
        coil["length_mm"].as_f64(),
        Some((SIDE + (FRAMES - 1) * ADVANCE) as f64)
    );
    let mut per_class: BTreeMap<String, u64> = BTreeMap::new();
    for (class, _, _) in reported.values() {
        *per_class.entry(class.clone()).or_default() += 1;
    }
    for (class, n) in coil["counts"].as_object().unwrap() {
        assert_eq!(
            n.as_u64(),
            Some(per_class.get(class).copied().unwrap_or(0)),
            "{class}"
        );
    }
    assert_eq!(coil["block"], false);
    assert_eq!(coil["report"], "coils/C-20261202-1.json");
    let (code, text, err) = report(&st.config, "C-20261202-1", &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        text.starts_with("coil C-20261202-1: 1.8 m inspected in 8 frames"),
        "{text}"
    );
    assert!(
        text.contains(&format!("defects: {} (", reported.len())),
        "{text}"
    );
    let (code, csv, _) = report(&st.config, "C-20261202-1", &["--csv"]);
    assert_eq!(code, 0);
    assert_eq!(csv.lines().count(), 1 + reported.len(), "{csv}");
    assert!(
        csv.lines().skip(1).any(|l| l.contains(",patches,")),
        "{csv}"
    );
    // A coil that has no report is named in the error.
    let (code, _, err) = report(&st.config, "C-none", &[]);
    assert_eq!(code, 1);
    assert!(err.contains("no report for coil \"C-none\""), "{err}");
}

#[test]
fn a_defect_recurring_every_roll_turn_is_found_periodic_and_blocks_the_coil() {
    // A patch every 600 mm (three frames), four times; a scratch once between them. The
    // default thresholds (0.5): at the shipped ones (scratches 0.22) the border of the laid
    // patches image, repeated with it, is itself found as a periodic scratch.
    let (images, _) = strip_frames(PERIODIC_FRAMES, &PERIODIC_STRIP);
    let broker = Mosquitto::start();
    let st = station(
        images.path(),
        broker.port,
        false,
        4.0,
        (5, 3, 1, false),
        &format!(
            "[strip]\nmm_per_px_cd = 1.0\nmm_per_px_md = 1.0\nadvance_px = {ADVANCE}\n\
             periodic_min_pitch_mm = 300\n[strip.block]\nperiodic = true\n"
        ),
    );
    let (sub, _daemon, _) = replay(
        broker.port,
        &st,
        &[("cmd/coil", "L1/C:0042")],
        PERIODIC_FRAMES,
    );
    let coil_topic = format!("{}/coil", st.root);
    assert!(sub.wait_for(Duration::from_secs(10), |m| m
        .iter()
        .any(|m| m.topic == coil_topic)));
    let coil = sub.on(&coil_topic)[0].json();
    let periodic = coil["periodic"].as_array().unwrap();
    // One run per patch the model sees in the image (one, unless it splits the patch),
    // each of four repeats at the pitch the image was laid at.
    let patches: Vec<&serde_json::Value> = periodic
        .iter()
        .filter(|p| p["class"] == "patches")
        .collect();
    assert!(!patches.is_empty(), "{coil:#}");
    for p in &patches {
        assert_eq!(p["repeats"].as_u64(), Some(4), "{p}");
        let pitch = p["pitch_mm"].as_f64().unwrap();
        assert!(
            (pitch - 600.0).abs() <= 5.0,
            "pitch {pitch} mm, laid at 600 mm"
        );
    }
    let p = patches[0];
    let pitch = p["pitch_mm"].as_f64().unwrap();
    let diameter = p["roll_diameter_mm"].as_f64().unwrap();
    assert!((diameter - pitch / std::f64::consts::PI).abs() < 0.1, "{p}");
    assert!(
        periodic.iter().all(|p| p["class"] != "scratches"),
        "{coil:#}"
    );
    assert_eq!(coil["block"], true);
    assert!(
        coil["block_reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("periodic patches: 4 repeats every"),
        "{coil}"
    );
    // The third repeat's defect event says so; the first two's do not.
    let events: Vec<serde_json::Value> = sub
        .on(&format!("{}/defect", st.root))
        .iter()
        .map(Msg::json)
        .filter(|e| e["class"] == "patches")
        .filter(|e| p["tracks"].as_array().unwrap().contains(&e["track"]))
        .collect();
    assert_eq!(events.len(), 4, "{events:#?}");
    let repeats: Vec<Option<u64>> = events
        .iter()
        .map(|e| e["periodic"]["repeats"].as_u64())
        .collect();
    assert_eq!(repeats, vec![None, None, Some(3), Some(4)]);
    // The coil id holds `/` and `:`; its report is found by that id.
    assert_eq!(coil["report"], "coils/L1%2FC%3A0042.json");
    let (code, text, err) = report(&st.config, "L1/C:0042", &[]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("block: YES"), "{text}");
    assert!(text.contains("periodic patches: 4 repeats every"), "{text}");
    let (_, json, _) = report(&st.config, "L1/C:0042", &["--json"]);
    let back: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(back["periodic"], coil["periodic"]);
}

fn overlaps(a: [f64; 4], b: [f64; 4]) -> bool {
    a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3]
}

/// N of the last M frames, per the contract: raised when a window holds N.
fn raises(present: &[bool], window: usize, n: usize) -> usize {
    let (mut active, mut raised) = (false, 0);
    for k in 0..present.len() {
        let count = present[k.saturating_sub(window - 1)..=k]
            .iter()
            .filter(|&&p| p)
            .count();
        if !active && count >= n {
            active = true;
            raised += 1;
        } else if active && count == 0 {
            active = false;
        }
    }
    raised
}

#[test]
fn alarms_counting_tracks_count_a_defect_seen_in_two_frames_once() {
    let (images, _) = strip_frames(FRAMES, &[("patches", 0, 700)]);
    let broker = Mosquitto::start();
    let st = station(
        images.path(),
        broker.port,
        false,
        4.0,
        (5, 2, 0, false),
        &format!(
            "[strip]\nmm_per_px_cd = 1.0\nmm_per_px_md = 1.0\nadvance_px = {ADVANCE}\n{}",
            shipped_decide()
        ),
    );
    // `[alarm]` is written by `station`: count tracks there.
    let text = std::fs::read_to_string(&st.config).unwrap();
    std::fs::write(
        &st.config,
        text.replace("[alarm]\n", "[alarm]\ncount = \"tracks\"\n"),
    )
    .unwrap();
    let (sub, _daemon, results) = replay(broker.port, &st, &[], FRAMES);
    // Per frame: did it show patches, and did it show a patches track first seen there?
    let mut seen = BTreeSet::new();
    let (mut shows, mut starts) = (Vec::new(), Vec::new());
    for r in &results {
        let tracks: Vec<u64> = r["defects"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["class"] == "patches")
            .map(|d| d["track"].as_u64().unwrap())
            .collect();
        shows.push(!tracks.is_empty());
        starts.push(tracks.iter().any(|t| seen.insert(*t)));
    }
    let raised = sub
        .on(&format!("{}/alarm", st.root))
        .iter()
        .map(Msg::json)
        .filter(|a| a["event"] == "raised" && a["class"] == "patches")
        .count();
    assert_eq!(raised, raises(&starts, 5, 2), "{starts:?}");
    // Counting frames, the one laid patch (seen in two frames) would have raised it.
    assert!(
        raises(&shows, 5, 2) > raises(&starts, 5, 2),
        "{shows:?} {starts:?}"
    );
}

#[test]
fn a_speed_told_over_mqtt_moves_the_strip_and_its_silence_is_reported_in_health() {
    let (images, _) = strip_frames(FRAMES, &[]);
    let broker = Mosquitto::start();
    // Two frames a second for four seconds; one speed reading, stale after a second.
    let st = station(
        images.path(),
        broker.port,
        false,
        2.0,
        (5, 3, 1, false),
        "[strip]\nmm_per_px_cd = 1.0\nmm_per_px_md = 1.0\nspeed_source = \"cmd/speed\"\nspeed_stale_s = 1.0\n",
    );
    let root = st.root.clone();
    let (sub, daemon, results) = replay(broker.port, &st, &[("cmd/speed", "400")], FRAMES);
    // MD moves by the told speed times the time between captures, before and after the
    // reading went stale (it carries on from the last one).
    for w in results.windows(2) {
        let dt = (w[1]["ts"].as_u64().unwrap() - w[0]["ts"].as_u64().unwrap()) as f64 / 1e3;
        let dmd = w[1]["md_mm"].as_f64().unwrap() - w[0]["md_mm"].as_f64().unwrap();
        assert!(
            (dmd - 400.0 * dt).abs() <= 0.11,
            "{dmd} mm in {dt} s: {w:?}"
        );
    }
    assert!(results.last().unwrap()["md_mm"].as_f64().unwrap() > 1000.0);
    // Health said the speed was fresh, then stale (and so not ok).
    let health: Vec<serde_json::Value> = sub
        .on(&format!("{root}/health"))
        .iter()
        .map(Msg::json)
        .collect();
    let fresh = health.iter().position(|h| h["speed"] == "ok");
    let stale = health.iter().rposition(|h| h["speed"] == "stale");
    assert!(
        matches!((fresh, stale), (Some(f), Some(s)) if f < s),
        "{health:#?}"
    );
    assert_eq!(health[stale.unwrap()]["ok"], false);
    assert!(daemon
        .log_text()
        .contains("Line speed: nothing on cmd/speed"));
}
