//! Preprocess on the camera-sized frame: blur + Otsu (the target compares this with
//! OpenCV's GaussianBlur 5x5 + threshold(OTSU)), and the whole stage with regions.

mod support;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use inspectd::config::PreprocessConfig;
use inspectd::frame::Frame;
use inspectd::stages::health::FrameMeasure;
use inspectd::stages::preprocess::Preprocessor;

fn bench(c: &mut Criterion) {
    let (w, h, px) =
        inspectd::stages::capture::load_gray(&support::line_frame()).expect("line_1280x1024.png");
    let mut pre = Preprocessor::new(&PreprocessConfig::default());
    let mut frame = Frame::default();
    frame.reset(1, w, h);
    frame.pixels.copy_from_slice(&px);

    let mut g = c.benchmark_group("preprocess_1280x1024");
    g.throughput(Throughput::Elements(1));
    g.bench_function("blur5_otsu", |b| {
        b.iter(|| pre.blur_otsu(&px, w as usize, h as usize))
    });
    g.bench_function("blur5_otsu_regions", |b| b.iter(|| pre.process(&mut frame)));
    g.finish();

    // What the stage adds for `health`: mean, contrast, saturation and the dHash.
    pre.process(&mut frame);
    let health = support::median_ms(200, || {
        std::hint::black_box(FrameMeasure::of(
            pre.histogram(),
            &px,
            w as usize,
            h as usize,
        ));
    });
    println!("inspectd frame health measure (histogram stats + dHash): median {health:.3} ms");

    let ours = support::median_ms(200, || {
        pre.blur_otsu(&px, w as usize, h as usize);
    });
    let level = pre.blur_otsu(&px, w as usize, h as usize);
    println!("inspectd blur 5x5 + Otsu: median {ours:.3} ms, level {level}");
    let frame_path = support::line_frame().display().to_string();
    match support::anchor("opencv_preprocess.py", &[frame_path]) {
        Some(cv) => {
            let theirs = cv["blur_otsu"]["median_ms"].as_f64().unwrap_or(f64::NAN);
            println!(
                "OpenCV {} blur 5x5 + Otsu: median {theirs:.3} ms, level {}; inspectd / OpenCV = {:.2}",
                cv["version"], cv["otsu_level"], ours / theirs
            );
        }
        None => println!(
            "OpenCV anchor not run (set INSPECTD_PYTHON to a python with opencv-python-headless)"
        ),
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
