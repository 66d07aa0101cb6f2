//! Classify on one thread: the shipped detector on a 200 x 200 NEU image and on a
//! 1280 x 1024 camera frame (the whole stage: fill, run, decode), beside
//!  - the detector shipped before the clean-surface model (`benches/baseline/neu_det_prev.onnx`,
//!    the same design without the area output), measured in the same run;
//!  - the faster alternative detector (`models/neu_det_lite.onnx`, the "lite" design: 1.14 G
//!    multiply-adds per frame against the shipped "deep" design's 2.91 G);
//!  - ONNX Runtime on the same models and input shapes (`../shared/anchors/ort_infer.py`).

mod support;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use inspectd::config::{Candidates, ModelConfig};
use inspectd::frame::Frame;
use inspectd::stages::classify::Classifier;
use inspectd::stages::look::FirstLook;

fn frame_from(path: &std::path::Path) -> Frame {
    let (w, h, px) = inspectd::stages::capture::load_gray(path).unwrap();
    let mut f = Frame::default();
    f.reset(1, w, h);
    f.pixels.copy_from_slice(&px);
    f
}

fn bench(c: &mut Criterion) {
    let model = support::repo().join("models/neu_det.onnx");
    let mut neu = frame_from(&support::repo().join("models/samples/scratches_13.png"));
    let mut line = frame_from(&support::line_frame());
    let mut det =
        Classifier::new(&ModelConfig::with_path(model.clone()), Some((200, 200))).unwrap();
    det.classify(&mut line).unwrap();
    // The detector shipped before the clean-surface model, on the same frame.
    let prev = support::repo().join("benches/baseline/neu_det_prev.onnx");
    let mut before = Classifier::new(
        &ModelConfig::with_path(prev.clone()),
        Some((line.width, line.height)),
    )
    .unwrap();
    before.classify(&mut line).unwrap();

    let mut g = c.benchmark_group("classify");
    g.throughput(Throughput::Elements(1));
    g.bench_function("detector_neu_200x200", |b| {
        b.iter(|| det.classify(&mut neu).unwrap())
    });
    g.sample_size(20);
    g.bench_function("detector_frame_1280x1024", |b| {
        b.iter(|| det.classify(&mut line).unwrap())
    });
    g.bench_function("previous_detector_frame_1280x1024", |b| {
        b.iter(|| before.classify(&mut line).unwrap())
    });
    g.finish();

    let neu_ms = support::median_ms(200, || det.classify(&mut neu).unwrap());
    let line_ms = support::median_ms(20, || det.classify(&mut line).unwrap());
    let base_ms = support::median_ms(20, || before.classify(&mut line).unwrap());
    det.classify(&mut line).unwrap();
    let lite = support::repo().join("models/neu_det_lite.onnx");
    let mut alt = Classifier::new(
        &ModelConfig::with_path(lite.clone()),
        Some((line.width, line.height)),
    )
    .unwrap();
    alt.classify(&mut line).unwrap();
    let lite_ms = support::median_ms(20, || alt.classify(&mut line).unwrap());
    let cpu = support::cpu_model();
    println!("CPU: {cpu}");
    // The first look and the detector on the camera frame as shipped (their patch stem in
    // inspectd's code, src/stages/stem.rs; their last average moved after its
    // convolution, src/stages/rewrite.rs) against the whole net as the file has it in
    // tract, alternated in one run, this thread's CPU time.
    let look_path = support::repo().join("models/neu_look.onnx");
    let look_ms = {
        let detector = inspectd::stages::classify::ModelMeta::load(&model).unwrap();
        let cfg = inspectd::config::FirstLookConfig::default();
        let mut own = FirstLook::new(&look_path, &cfg, &detector.input).unwrap();
        let mut tract_stem = FirstLook::new(&look_path, &cfg, &detector.input).unwrap();
        tract_stem.stem_in_tract().unwrap();
        assert!(own.has_own_stem() && !tract_stem.has_own_stem());
        let (w, h) = (line.width as usize, line.height as usize);
        let padded = (w.div_ceil(32) * 32, h.div_ceil(32) * 32);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            a.push(support::median_thread_cpu_ms(20, || {
                own.look(&line.pixels, (w, h), padded).unwrap();
            }));
            b.push(support::median_thread_cpu_ms(20, || {
                tract_stem.look(&line.pixels, (w, h), padded).unwrap();
            }));
        }
        let (a, b) = (support::median(&mut a), support::median(&mut b));
        let mut tract_det = Classifier::new(
            &ModelConfig::with_path(model.clone()),
            Some((line.width, line.height)),
        )
        .unwrap();
        tract_det.stem_in_tract().unwrap();
        tract_det.classify(&mut line).unwrap();
        let (mut c, mut d) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            c.push(support::median_thread_cpu_ms(10, || {
                det.classify(&mut line).unwrap();
            }));
            d.push(support::median_thread_cpu_ms(10, || {
                tract_det.classify(&mut line).unwrap();
            }));
        }
        let (c, d) = (support::median(&mut c), support::median(&mut d));
        println!(
            "detector, 1280x1024 frame, one thread: first layer and last average in inspectd's code {c:.1} ms, \
             whole net in tract {d:.1} ms CPU (medians of 3 alternated rounds); own / tract = {:.2}",
            c / d
        );
        println!(
            "first look, 1280x1024 frame, one thread: first layer and last average in inspectd's code {a:.2} ms, \
             whole net in tract {b:.2} ms CPU (medians of 5 alternated rounds); own / tract = {:.2}",
            a / b
        );
        a
    };
    // model.threads: one frame's run split over a thread pool. Wall time per frame
    // (median) and CPU time per frame (getrusage over the same runs).
    for threads in [1, 2] {
        let cfg = ModelConfig {
            threads,
            ..ModelConfig::with_path(model.clone())
        };
        let mut c = Classifier::new(&cfg, Some((line.width, line.height))).unwrap();
        c.classify(&mut line).unwrap();
        let cpu0 = support::cpu_seconds();
        let wall = support::median_ms(20, || c.classify(&mut line).unwrap());
        // median_ms runs 10 warm-up runs and 20 timed ones.
        let cpu_ms = (support::cpu_seconds() - cpu0) * 1e3 / 30.0;
        println!(
            "model.threads = {threads}: 1280x1024 frame {wall:.1} ms wall (median), {cpu_ms:.1} ms CPU per frame"
        );
    }
    // The decode's settings, each timed on the same frame: model.nms_iou (what
    // suppressing a class's overlapping boxes costs) and model.candidates (every cell,
    // shipped, against the 3 x 3 peaks only).
    let mut timed = |cfg: ModelConfig| {
        let mut c = Classifier::new(&cfg, Some((line.width, line.height))).unwrap();
        c.classify(&mut line).unwrap();
        let found = line.detections.len();
        (
            support::median_ms(20, || c.classify(&mut line).unwrap()),
            found,
        )
    };
    let shipped = || ModelConfig::with_path(model.clone());
    let (all_ms, all_peaks) = timed(ModelConfig {
        nms_iou: 1.0,
        candidates: Candidates::Peaks,
        ..shipped()
    });
    let (peaks_ms, peaks_found) = timed(ModelConfig {
        candidates: Candidates::Peaks,
        ..shipped()
    });
    let (cells_ms, cells_found) = timed(shipped());
    println!(
        "model.nms_iou = 1 with the peaks (every peak kept): {all_ms:.1} ms per 1280x1024 frame, \
         {all_peaks} detections; model.candidates = \"peaks\": {peaks_ms:.1} ms, {peaks_found} \
         detections; \"cells\" (shipped): {cells_ms:.1} ms, {cells_found} detections"
    );
    det.classify(&mut line).unwrap();
    println!(
        "tract, one thread, detector: 200x200 image {neu_ms:.2} ms; 1280x1024 frame {line_ms:.1} ms \
         ({} detections)",
        line.detections.len()
    );
    println!(
        "previous shipped detector (benches/baseline/neu_det_prev.onnx): {base_ms:.1} ms per 1280x1024 frame; \
         shipped / previous = {:.2}",
        line_ms / base_ms
    );
    println!(
        "lite detector (models/neu_det_lite.onnx): {lite_ms:.1} ms per 1280x1024 frame; lite / shipped = {:.2}",
        lite_ms / line_ms
    );
    for (what, path, shape, ours) in [
        ("shipped", &model, "1,64,28,28", neu_ms),
        ("shipped", &model, "1,64,128,160", line_ms),
        ("lite", &lite, "1,64,128,160", lite_ms),
        ("first look", &look_path, "1,64,128,160", look_ms),
    ] {
        let args = [
            path.display().to_string(),
            "--shape".into(),
            shape.into(),
            "--iters".into(),
            "30".into(),
        ];
        match support::anchor("ort_infer.py", &args) {
            Some(ort) => {
                let theirs = ort["median_ms"].as_f64().unwrap_or(f64::NAN);
                println!(
                    "ONNX Runtime {}, one thread, {what} model, input [{shape}]: {theirs:.2} ms; tract (whole \
                     stage) {ours:.2} ms; tract / ORT = {:.2}",
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
