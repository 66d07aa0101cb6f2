//! Parity: inspectd's tract path reproduces the training script's PyTorch outputs on the
//! committed sample images, cell by cell, within the tolerances the references state.
//! A tract upgrade or a change in how frames are padded or normalised fails here.

mod common;

use inspectd::config::{FirstLookConfig, ModelConfig};
use inspectd::stages::classify::{Classifier, ModelMeta};
use inspectd::stages::look::FirstLook;

#[test]
fn tract_reproduces_the_pytorch_heat_maps_and_boxes() {
    parity("neu_det");
}

#[test]
fn the_lite_model_too() {
    parity("neu_det_lite");
}

#[test]
fn the_first_look_too() {
    let repo = common::repo();
    let refs: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo.join("models/neu_look.reference.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(refs["source"], "PyTorch");
    let tol = refs["tolerance"].as_f64().unwrap();
    assert!(tol <= 1e-4);
    let detector = ModelMeta::load(&repo.join("models/neu_det.onnx")).unwrap();
    let mut look = FirstLook::new(
        &repo.join("models/neu_look.onnx"),
        &FirstLookConfig::default(),
        &detector.input,
    )
    .unwrap();
    assert_eq!(refs["model"].as_str().unwrap(), look.id());
    let images = refs["images"].as_array().unwrap();
    assert!(images.len() >= 6);
    let mut worst = 0f32;
    for img in images {
        let name = img["image"].as_str().unwrap();
        let (w, h, px) =
            inspectd::stages::capture::load_gray(&repo.join("models").join(name)).unwrap();
        let padded = inspectd::stages::classify::padded(&detector, w as usize, h as usize);
        look.look(&px, (w as usize, h as usize), padded).unwrap();
        let want: Vec<f32> = img["look"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(look.cells().len(), want.len(), "{name}");
        for (got, want) in look.cells().iter().zip(&want) {
            worst = worst.max((got - want).abs());
        }
    }
    eprintln!(
        "parity neu_look: {} images, max abs difference {worst:.2e}",
        images.len()
    );
    assert!(worst as f64 <= tol, "first look differs by {worst}");
}

/// `models/<name>.onnx` against `models/<name>.reference.json`.
fn parity(name: &str) {
    let repo = common::repo();
    let refs: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo.join(format!("models/{name}.reference.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(refs["source"], "PyTorch");
    let (heat_tol, box_tol) = (
        refs["heat_tolerance"].as_f64().unwrap(),
        refs["box_tolerance"].as_f64().unwrap(),
    );
    assert!(heat_tol <= 1e-4 && box_tol <= 1e-2);
    let mut classifier = Classifier::new(
        &ModelConfig::with_path(repo.join(format!("models/{name}.onnx"))),
        None,
    )
    .unwrap();
    assert_eq!(refs["model"].as_str().unwrap(), classifier.meta().id);
    let images = refs["images"].as_array().unwrap();
    assert!(images.len() >= 6);
    let floats = |v: &serde_json::Value| -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    let (mut worst_heat, mut worst_box) = (0f32, 0f32);
    for img in images {
        let image_name = img["image"].as_str().unwrap();
        let (w, h, px) =
            inspectd::stages::capture::load_gray(&repo.join("models").join(image_name)).unwrap();
        let (want_heat, want_box) = (floats(&img["heat"]), floats(&img["box"]));
        let want_image = floats(&img["image_probs"]);
        let grid: Vec<usize> = serde_json::from_value(img["grid"].clone()).unwrap();
        classifier
            .infer(
                &px,
                w as usize,
                h as usize,
                |heat, boxes, image, area, g| {
                    assert_eq!(
                        [g.rows, g.cols],
                        [grid[0], grid[1]],
                        "{image_name}: same grid"
                    );
                    assert_eq!(heat.len(), want_heat.len(), "{image_name}");
                    assert_eq!(boxes.len(), want_box.len(), "{image_name}");
                    for (got, want) in heat.iter().zip(&want_heat) {
                        worst_heat = worst_heat.max((got - want).abs());
                    }
                    for (got, want) in boxes.iter().zip(&want_box) {
                        worst_box = worst_box.max((got - want).abs());
                    }
                    let image = image.expect("the shipped model has an image output");
                    assert_eq!(image.len(), want_image.len(), "{image_name}");
                    for (got, want) in image.iter().zip(&want_image) {
                        worst_heat = worst_heat.max((got - want).abs());
                    }
                    // A model with an area output has its reference too.
                    match (area, img.get("area")) {
                        (Some(area), Some(want)) => {
                            let want = floats(want);
                            assert_eq!(area.len(), want.len(), "{image_name}: area");
                            for (got, want) in area.iter().zip(&want) {
                                worst_heat = worst_heat.max((got - want).abs());
                            }
                        }
                        (None, None) => {}
                        (got, want) => panic!(
                            "{image_name}: area output {} but reference {}",
                            got.is_some(),
                            want.is_some()
                        ),
                    }
                },
            )
            .unwrap();
    }
    eprintln!(
        "parity {name}: {} images, max abs difference heat and image probabilities {worst_heat:.2e}, box {worst_box:.2e} px",
        images.len()
    );
    assert!(
        worst_heat as f64 <= heat_tol,
        "{name}: heat differs by {worst_heat}"
    );
    assert!(
        worst_box as f64 <= box_tol,
        "{name}: box differs by {worst_box} px"
    );
}
