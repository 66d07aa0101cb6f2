//! `[strip]` end to end: a replay of overlapping frames cut from one long strip (NEU
//! defect images laid into defect-free surface) gives each defect one track, at its
//! place on the coil, and the coil announced on `cmd/coil`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(60);
/// Frames are 400 x 400, the strip moves 200 rows a frame, 1 mm a pixel.
const SIDE: u32 = 400;
const ADVANCE: u32 = 200;
const FRAMES: u32 = 8;

/// Held-out NEU images of `class` with exactly one labelled box, at least 60 px long.
fn single_box_images(class: &str, n: usize) -> Vec<(image::GrayImage, [u32; 4])> {
    let repo = repo();
    let val =
        inspectd::cli::eval::read_holdout(&repo.join("models/neu_det.split.json"), "val").unwrap();
    let mut out = Vec::new();
    for s in inspectd::cli::eval::list_samples(&neu(), Some(&val)).unwrap() {
        let stem = s.image.file_stem().unwrap().to_string_lossy().to_string();
        if !stem.starts_with(class) {
            continue;
        }
        let boxes = inspectd::cli::eval::read_voc(&s.annotation).unwrap();
        if let [b] = boxes.as_slice() {
            let [x0, y0, x1, y1] = b.rect;
            let (w, h) = (x1 - x0, y1 - y0);
            if w.max(h) >= 60 && w.min(h) >= 8 {
                out.push((image::open(&s.image).unwrap().to_luma8(), b.rect));
                if out.len() == n {
                    break;
                }
            }
        }
    }
    assert_eq!(out.len(), n, "{class}: not enough single-box images");
    out
}

#[test]
fn overlapping_frames_give_one_track_per_defect_at_its_place_on_the_coil() {
    let repo = repo();
    let val =
        inspectd::cli::eval::read_holdout(&repo.join("models/neu_det.split.json"), "val").unwrap();
    let samples = inspectd::cli::eval::list_samples(&neu(), Some(&val)).unwrap();
    let crops = inspectd::cli::eval::box_free_crops(&samples, 96).unwrap();
    // The strip: defect-free surface, 400 px across and 1800 rows long, with a patches
    // image on the left and a scratches image on the right, each placed so that its box
    // is centred on rows 700 and 1300: wholly inside two overlapping frames each.
    let length = SIDE + (FRAMES - 1) * ADVANCE;
    let (_, clean) = inspectd::cli::clean::clean_frames(&crops, 1, (SIDE, length))
        .pop()
        .unwrap();
    let mut strip = image::GrayImage::from_raw(SIDE, length, clean).unwrap();
    let mut truth = Vec::new();
    for (class, x, centre) in [("patches", 0, 700), ("scratches", 200, 1300)] {
        let (img, b) = single_box_images(class, 1).pop().unwrap();
        let y = centre - (b[1] + b[3]) / 2;
        image::imageops::replace(&mut strip, &img, x as i64, y as i64);
        // Where the labelled defect is on the strip (x0, y0, x1, y1; 1 mm a pixel).
        truth.push((class, shift(b, x, y)));
    }
    let images = tempfile::tempdir().unwrap();
    for k in 0..FRAMES {
        image::imageops::crop_imm(&strip, 0, k * ADVANCE, SIDE, SIDE)
            .to_image()
            .save(images.path().join(format!("{k:02}.png")))
            .unwrap();
    }

    let broker = Mosquitto::start();
    // Two frames a second: the coil announced before the start reaches the daemon first.
    let st = station(
        images.path(),
        broker.port,
        false,
        2.0,
        (5, 3, 1, false),
        &format!("[strip]\nmm_per_px_cd = 1.0\nmm_per_px_md = 1.0\nadvance_px = {ADVANCE}\n"),
    );
    let sub = Subscriber::start(broker.port, &format!("{}/#", st.root), false);
    sub.publish_retained(&format!("{}/cmd/coil", st.root), "C-20261202-1");
    let mut daemon = Daemon::start(&st.config);
    assert_eq!(daemon.wait(LONG), Some(0), "{}", daemon.log_text());
    let topic = format!("{}/result", st.root);
    assert!(sub.wait_for(Duration::from_secs(10), |m| m
        .iter()
        .filter(|m| m.topic == topic)
        .count()
        >= FRAMES as usize));
    let results: Vec<serde_json::Value> = sub.on(&topic).iter().map(Msg::json).collect();

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
}

fn shift(r: [u32; 4], dx: u32, dy: u32) -> [f64; 4] {
    [
        (r[0] + dx) as f64,
        (r[1] + dy) as f64,
        (r[2] + dx) as f64,
        (r[3] + dy) as f64,
    ]
}

fn overlaps(a: [f64; 4], b: [f64; 4]) -> bool {
    a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3]
}
