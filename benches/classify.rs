//! Classify on one thread: one tile (the daemon's default batch, compared with ONNX
//! Runtime on the same model and input shape), a batch of 12 tiles (likewise), a 200 x 200
//! NEU image, and a 1280 x 1024 camera frame.

mod support;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use inspectd::classify::Classifier;
use inspectd::config::ModelConfig;
use inspectd::frame::Frame;

fn frame_from(path: &std::path::Path) -> Frame {
    let (w, h, px) = inspectd::capture::load_gray(path).unwrap();
    let mut f = Frame::default();
    f.reset(1, w, h);
    f.pixels.copy_from_slice(&px);
    f
}

fn bench(c: &mut Criterion) {
    let model = support::repo().join("models/neu_tiles.onnx");
    let batch = 12;
    let mut single = Classifier::new(&ModelConfig {
        path: model.clone(),
        tile_stride: 64,
        batch: 1,
    })
    .unwrap();
    let mut one_tile = Frame::default();
    one_tile.reset(1, 64, 64);
    let mut neu = frame_from(&support::repo().join("models/samples/scratches_13.png"));
    let mut line = frame_from(&support::line_frame());
    let mut dense = Classifier::new(&ModelConfig {
        path: model.clone(),
        tile_stride: 0,
        batch,
    })
    .unwrap();
    let mut coarse = Classifier::new(&ModelConfig {
        path: model.clone(),
        tile_stride: 64,
        batch,
    })
    .unwrap();
    // One batch of tiles: a 64 x 64 frame region repeated fills exactly `batch` tiles.
    let mut one_batch = Frame::default();
    one_batch.reset(1, 64 * batch as u32, 64);
    for (i, p) in one_batch.pixels.iter_mut().enumerate() {
        *p = neu.pixels[(i % 64) + 200 * ((i / (64 * batch)) % 64)];
    }
    let mut per_batch = Classifier::new(&ModelConfig {
        path: model.clone(),
        tile_stride: 64,
        batch,
    })
    .unwrap();

    let mut g = c.benchmark_group("classify");
    g.throughput(Throughput::Elements(1));
    g.bench_function("one_tile", |b| {
        b.iter(|| single.classify(&mut one_tile).unwrap())
    });
    g.bench_function("batch_of_12_tiles", |b| {
        b.iter(|| per_batch.classify(&mut one_batch).unwrap())
    });
    g.bench_function("neu_200x200_stride32", |b| {
        b.iter(|| dense.classify(&mut neu).unwrap())
    });
    g.sample_size(20);
    g.bench_function("frame_1280x1024_stride64", |b| {
        b.iter(|| coarse.classify(&mut line).unwrap())
    });
    g.finish();

    let tile_ms = support::median_ms(1000, || single.classify(&mut one_tile).unwrap());
    let ours = support::median_ms(300, || per_batch.classify(&mut one_batch).unwrap());
    let neu_ms = support::median_ms(100, || dense.classify(&mut neu).unwrap());
    let line_ms = support::median_ms(10, || coarse.classify(&mut line).unwrap());
    println!("tract, one thread: one tile {tile_ms:.4} ms; batch of {batch} tiles {ours:.3} ms; 200x200 image ({} tiles) {neu_ms:.2} ms; \
              1280x1024 frame ({} tiles) {line_ms:.1} ms", neu.tiles.len(), line.tiles.len());
    for (n, ours) in [(1usize, tile_ms), (batch, ours)] {
        let args = [
            model.display().to_string(),
            "--shape".into(),
            format!("{n},1,64,64"),
        ];
        match support::anchor("ort_infer.py", &args) {
            Some(ort) => {
                let theirs = ort["median_ms"].as_f64().unwrap_or(f64::NAN);
                println!(
                    "ONNX Runtime {}, one thread, input [{n},1,64,64]: {theirs:.4} ms; tract {ours:.4} ms; tract / ORT = {:.2}",
                    ort["version"],
                    ours / theirs
                );
            }
            None => println!(
                "ONNX Runtime anchor not run (set INSPECTD_PYTHON to a python with onnxruntime)"
            ),
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
