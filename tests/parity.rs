//! Parity: inspectd's tract path reproduces the training script's PyTorch outputs on the
//! committed sample images, tile by tile, within the tolerance the references state.
//! A tract upgrade or a preprocessing change that alters scores fails here.

mod common;

use inspectd::classify::Classifier;
use inspectd::config::ModelConfig;
use inspectd::frame::Frame;

#[test]
fn tract_reproduces_the_reference_tile_probabilities() {
    let repo = common::repo();
    let refs: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo.join("models/neu_tiles.reference.json")).unwrap(),
    )
    .unwrap();
    let tolerance = refs["tolerance"].as_f64().unwrap();
    assert!(tolerance <= 1e-4);
    let mut classifier = Classifier::new(&ModelConfig {
        path: repo.join("models/neu_tiles.onnx"),
        tile_stride: 0,
        batch: 12,
    })
    .unwrap();
    assert_eq!(refs["model"].as_str().unwrap(), classifier.meta().id);
    let images = refs["images"].as_array().unwrap();
    assert!(images.len() >= 6);
    let mut worst = 0f64;
    for img in images {
        let (w, h, px) =
            inspectd::capture::load_gray(&repo.join("models").join(img["image"].as_str().unwrap()))
                .unwrap();
        let mut frame = Frame::default();
        frame.reset(1, w, h);
        frame.pixels.copy_from_slice(&px);
        classifier.classify(&mut frame).unwrap();
        let tiles: Vec<[u32; 2]> = serde_json::from_value(img["tiles"].clone()).unwrap();
        assert_eq!(frame.tiles, tiles, "{}: same tiling", img["image"]);
        let want: Vec<f64> = img["probs"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().clone())
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(frame.probs.len(), want.len());
        for (got, want) in frame.probs.iter().zip(&want) {
            let d = (*got as f64 - want).abs();
            worst = worst.max(d);
            assert!(d <= tolerance, "{}: {got} vs {want}", img["image"]);
        }
    }
    eprintln!(
        "parity: {} images, max abs difference {worst:.2e}",
        images.len()
    );
}
