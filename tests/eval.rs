//! `inspectd eval` as an ML engineer runs it: a labelled Pascal VOC folder in, a report
//! out; a broken folder is an error naming what is wrong.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const STEMS: [&str; 6] = [
    "crazing_12",
    "inclusion_104",
    "patches_12",
    "pitted_surface_101",
    "rolled-in_scale_10",
    "scratches_13",
];

/// A VOC folder in the standard layout (JPEGImages/ + Annotations/), from NEU files.
fn voc_folder(stems: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("JPEGImages")).unwrap();
    std::fs::create_dir(dir.path().join("Annotations")).unwrap();
    for stem in stems {
        std::fs::copy(
            neu_image(stem),
            dir.path().join("JPEGImages").join(format!("{stem}.png")),
        )
        .unwrap();
        std::fs::copy(
            neu().join("ANNOTATIONS").join(format!("{stem}.xml")),
            dir.path().join("Annotations").join(format!("{stem}.xml")),
        )
        .unwrap();
    }
    dir
}

fn eval(dataset: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(["eval", "--dataset"])
        .arg(dataset)
        .arg("--model")
        .arg(repo().join("models/neu_tiles.onnx"))
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn eval_reports_accuracy_per_class_metrics_confusion_location_and_speed() {
    let dir = voc_folder(&STEMS);
    let json = dir.path().join("report.json");
    let out = eval(dir.path(), &["--json", json.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("image-level accuracy") && table.contains("confusion matrix"),
        "{table}"
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["images"], 6);
    let cm: Vec<Vec<u64>> = serde_json::from_value(r["confusion_matrix"].clone()).unwrap();
    assert_eq!(cm.len(), 6);
    assert_eq!(cm.iter().flatten().sum::<u64>(), 6);
    let correct: u64 = (0..6).map(|i| cm[i][i]).sum();
    assert!((r["image_accuracy"].as_f64().unwrap() - correct as f64 / 6.0).abs() < 1e-12);
    // These six held-out images are all classified right by the shipped model.
    assert_eq!(correct, 6, "{table}");
    for class in [
        "crazing",
        "inclusion",
        "patches",
        "pitted_surface",
        "rolled-in_scale",
        "scratches",
    ] {
        let m = &r["per_class"][class];
        assert_eq!(m["support"], 1, "{class}");
        assert_eq!(m["f1"], 1.0, "{class}");
    }
    let covered = r["defect_area_covered"].as_f64().unwrap();
    let flagged = r["clean_area_flagged"].as_f64().unwrap();
    assert!((0.5..=1.0).contains(&covered), "{covered}");
    assert!((0.0..=1.0).contains(&flagged), "{flagged}");
    assert!(r["images_per_second"].as_f64().unwrap() > 0.0);
    assert!(r["latency_ms_p99"].as_f64().unwrap() >= r["latency_ms_mean"].as_f64().unwrap() * 0.5);
}

#[test]
fn the_holdout_list_selects_images() {
    let dir = voc_folder(&STEMS);
    let list = dir.path().join("only.txt");
    std::fs::write(&list, "crazing_12\nscratches_13\n").unwrap();
    let json = dir.path().join("r.json");
    let out = eval(
        dir.path(),
        &[
            "--holdout",
            list.to_str().unwrap(),
            "--json",
            json.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["images"], 2);
}

#[test]
fn a_broken_dataset_is_an_error_naming_what_is_wrong() {
    let out = eval(Path::new("/no/such/dataset"), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/dataset"));

    let dir = voc_folder(&STEMS[..2]);
    let xml = dir.path().join("Annotations/crazing_12.xml");
    std::fs::write(
        &xml,
        std::fs::read_to_string(&xml)
            .unwrap()
            .replace("<name>crazing</name>", "<name>rust</name>"),
    )
    .unwrap();
    let out = eval(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("crazing_12.xml") && err.contains("\"rust\""),
        "{err}"
    );

    let dir = voc_folder(&STEMS[..2]);
    std::fs::write(
        dir.path().join("JPEGImages/inclusion_104.png"),
        b"\x89PNG truncated",
    )
    .unwrap();
    let out = eval(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("inclusion_104.png"));

    let dir = voc_folder(&STEMS[..2]);
    std::fs::remove_file(dir.path().join("Annotations/inclusion_104.xml")).unwrap();
    let out = eval(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("inclusion_104.xml"));
}
