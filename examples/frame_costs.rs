//! Where a defect-free frame's CPU goes: the pipeline bench's clean frames (96 px crops of
//! the held-out NEU images' box-free area, one surface a frame), each decoded from PNG,
//! preprocessed and classified through the daemon's own stages with `config/inspectd.toml`
//! (first look as configured; `INSPECTD__...` overrides apply, e.g.
//! `INSPECTD__MODEL__FIRST_LOOK__PATH`). Prints, per surface, the median CPU time of this
//! thread per frame for each step (blur + Otsu timed alone too), the first look's
//! wall-clock time within classify, the share of pixels the detector ran on, and classify
//! again with the nets' patch stems run in tract (as before `src/stages/stem.rs`).
//!
//! With a DIR, also writes each surface's frames there as PNG (`DIR/<surface>/NNN.png`),
//! for a daemon to replay the same frames (under `perf`, say).
//!
//! usage: cargo run --release --example frame_costs [-- FRAMES_PER_SURFACE [DIR]]

use std::path::Path;

use inspectd::cli::clean::clean_frames;
use inspectd::cli::eval::{box_free_crops, list_samples, read_holdout, surfaces};
use inspectd::config::Settings;
use inspectd::frame::Frame;
use inspectd::stages::capture::gray_from_bytes;
use inspectd::stages::classify::Classifier;
use inspectd::stages::preprocess::Preprocessor;

// The benches' helpers: this thread's CPU clock and the median.
#[path = "../benches/support/mod.rs"]
mod support;
use support::thread_cpu_ms as cpu_ms;

fn median(mut v: Vec<f64>) -> f64 {
    support::median(&mut v)
}

fn main() {
    let per: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("FRAMES_PER_SURFACE is a number"))
        .unwrap_or(6);
    let out_dir = std::env::args().nth(2).map(std::path::PathBuf::from);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let settings = Settings::load_with_env(
        &repo.join("config/inspectd.toml"),
        std::iter::once((
            "INSPECTD__MODEL__PATH".to_string(),
            repo.join("models/neu_det.onnx").display().to_string(),
        ))
        .chain(std::env::vars().filter(|(k, _)| k.starts_with("INSPECTD__"))),
    )
    .unwrap_or_else(|e| panic!("config/inspectd.toml: {e}"));
    let neu = repo.join("../shared/datasets/neu");
    let held = read_holdout(&repo.join("models/neu_det.split.json"), "val").unwrap();
    let samples = list_samples(&neu, Some(&held)).unwrap();
    let names = surfaces(&samples);
    let crops = box_free_crops(&samples, 96).unwrap();
    let frames = clean_frames(&crops, per * names.len(), (1280, 1024));
    let mut pre = Preprocessor::new(&settings.preprocess);
    let mut det = Classifier::new(&settings.model, Some((1280, 1024))).unwrap();
    // The same classify with the nets' stems run in tract, as before they had their own
    // code: timed on each frame right after the shipped one.
    let mut det_tract = Classifier::new(&settings.model, Some((1280, 1024))).unwrap();
    det_tract.stem_in_tract().unwrap();
    println!(
        "first look {} (threshold {}); medians of this thread's CPU time per frame, ms",
        if settings.model.first_look.enabled {
            match &settings.model.first_look.path {
                Some(p) => p.display().to_string(),
                None => "neu_look.onnx beside the detector".into(),
            }
        } else {
            "off".into()
        },
        settings.model.first_look.threshold
    );
    println!("surface | frames | PNG decode | preprocess | of which blur + Otsu | classify | of which first look | detector's share | classify, stems in tract");
    for (g, name) in names.iter().enumerate() {
        let mine: Vec<&Vec<u8>> = frames
            .iter()
            .filter(|(k, _)| *k == g)
            .map(|(_, px)| px)
            .collect();
        if mine.is_empty() {
            println!("{name} | 0 | | | | |");
            continue;
        }
        let (mut dec, mut blur, mut prep, mut cls, mut look, mut cls_tract, mut share) = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            0.0,
        );
        for (i, px) in mine.iter().enumerate() {
            let mut png = Vec::new();
            image::GrayImage::from_raw(1280, 1024, px.to_vec())
                .unwrap()
                .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
                .unwrap();
            if let Some(dir) = &out_dir {
                let dir = dir.join(name);
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(dir.join(format!("{i:03}.png")), &png).unwrap();
            }
            for _ in 0..3 {
                let t = cpu_ms();
                let (w, h, gray) = gray_from_bytes(&png, Path::new("frame.png")).unwrap();
                dec.push(cpu_ms() - t);
                let mut f = Frame::default();
                f.reset(1, w, h);
                f.pixels.copy_from_slice(&gray);
                let t = cpu_ms();
                pre.blur_otsu(&f.pixels, w as usize, h as usize);
                blur.push(cpu_ms() - t);
                let t = cpu_ms();
                pre.process(&mut f);
                prep.push(cpu_ms() - t);
                let t = cpu_ms();
                det.classify(&mut f).unwrap();
                cls.push(cpu_ms() - t);
                look.push(f.times.look_us as f64 / 1e3);
                share += f.looked as f64;
                let t = cpu_ms();
                det_tract.classify(&mut f).unwrap();
                cls_tract.push(cpu_ms() - t);
            }
        }
        println!(
            "{name} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} % | {:.1}",
            mine.len(),
            median(dec),
            median(prep),
            median(blur),
            median(cls),
            median(look),
            100.0 * share / (3 * mine.len()) as f64,
            median(cls_tract)
        );
    }
}
