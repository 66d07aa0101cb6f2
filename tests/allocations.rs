//! No heap allocation per frame in our stages in the steady state: a counting allocator
//! watches preprocess, decide and our part of classify over 200 camera-sized frames.
//! tract's own allocations (inside the model run) are counted separately and reported.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use inspectd::config::{ModelConfig, PreprocessConfig};
use inspectd::frame::Frame;
use inspectd::stages::classify::Classifier;
use inspectd::stages::decide::Decider;
use inspectd::stages::preprocess::Preprocessor;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
thread_local!(static COUNTING: Cell<bool> = const { Cell::new(false) });

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Relaxed);
        }
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Relaxed);
        }
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made on this thread while `f` runs.
fn allocations_in<R>(f: impl FnOnce() -> R) -> (u64, R) {
    let before = ALLOCATIONS.load(Relaxed);
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    (ALLOCATIONS.load(Relaxed) - before, r)
}

#[test]
fn preprocess_decide_and_our_classify_code_allocate_nothing_per_frame() {
    let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let (w, h, px) = inspectd::stages::capture::load_gray(
        &repo.join("../shared/datasets/frames/line_1280x1024.png"),
    )
    .unwrap();
    let mut pre = Preprocessor::new(&PreprocessConfig::default());
    let mut classifier = Classifier::new(
        &ModelConfig::with_path(repo.join("models/neu_det.onnx")),
        Some((w, h)),
    )
    .unwrap();
    // The shipped thresholds: boxes, area defects and one box per defect all run.
    let shipped = common::shipped_settings();
    assert!(!shipped.decide.area_thresholds.is_empty());
    let mut decider = Decider::new(&shipped.decide, classifier.labels()).unwrap();
    let mut frame = Frame::default();
    let mut run = |frame: &mut Frame, seq: u64| {
        frame.reset(seq, w, h);
        frame.pixels.copy_from_slice(&px);
        let (pre_allocs, ()) = allocations_in(|| pre.process(frame));
        let (cls_allocs, r) = allocations_in(|| classifier.classify(frame));
        r.unwrap();
        let (dec_allocs, ()) = allocations_in(|| decider.decide(frame));
        (pre_allocs, cls_allocs, dec_allocs)
    };
    // Warm up: buffers grow to their steady size.
    for seq in 1..=5 {
        run(&mut frame, seq);
    }
    let (mut pre_total, mut cls_total, mut dec_total) = (0, 0, 0);
    for seq in 6..206 {
        let (p, c, d) = run(&mut frame, seq);
        pre_total += p;
        cls_total += c;
        dec_total += d;
    }
    assert!(!frame.verdict.defects.is_empty() || !frame.detections.is_empty());
    eprintln!(
        "allocations over 200 frames of 1280x1024: preprocess {pre_total}, decide {dec_total}, \
         classify {cls_total} ({:.0} per frame: tract's run and our code together)",
        cls_total as f64 / 200.0
    );
    assert_eq!(pre_total, 0, "preprocess allocated");
    assert_eq!(dec_total, 0, "decide allocated");

    // Our part of classify, the decode of the model's outputs, on this frame's real
    // outputs (copied out first): no allocation once its buffers have grown.
    let (mut heat, mut boxes, mut grid) = (Vec::new(), Vec::new(), None);
    classifier
        .infer(&px, w as usize, h as usize, |hm, bx, _, _, g| {
            heat.extend_from_slice(hm);
            boxes.extend_from_slice(bx);
            grid = Some(*g);
        })
        .unwrap();
    let grid = grid.unwrap();
    let n = classifier.labels().len();
    // Both readings of the heat (`model.candidates`): the 3 x 3 peaks, every cell.
    for peaks_only in [true, false] {
        let (mut dets, mut scores) = (Vec::new(), Vec::new());
        let decode = |dets: &mut Vec<_>, scores: &mut Vec<_>| {
            inspectd::stages::classify::decode(
                &heat, &boxes, &grid, n, 0.05, peaks_only, dets, scores,
            );
        };
        decode(&mut dets, &mut scores);
        let (decode_allocs, ()) = allocations_in(|| {
            for _ in 0..200 {
                decode(&mut dets, &mut scores);
                inspectd::stages::classify::keep_distinct(&mut dets, 0.5, 100);
            }
        });
        assert!(!dets.is_empty());
        assert_eq!(
            decode_allocs, 0,
            "decode (peaks only: {peaks_only}) or its suppression allocated"
        );
    }

    // The first look's part (the shipped config's settings): choosing the windows from
    // the cells and putting the windows' outputs back on the frame's grid, on this
    // frame's real first-look output with one flagged cell in 400 kept (a few tiles).
    let detector =
        inspectd::stages::classify::ModelMeta::load(&repo.join("models/neu_det.onnx")).unwrap();
    let mut look = inspectd::stages::look::FirstLook::new(
        &repo.join("models/neu_look.onnx"),
        &shipped.model.first_look,
        &detector.input,
    )
    .unwrap();
    let padded = (w as usize, h as usize);
    look.look(&px, padded, padded).unwrap();
    let mut cells = look.cells().to_vec();
    let threshold = shipped.model.first_look.threshold as f32;
    let mut flagged = 0;
    for c in cells.iter_mut() {
        if *c >= threshold {
            flagged += 1;
            if flagged % 400 != 1 {
                *c = 0.0;
            }
        }
    }
    assert!(
        flagged > 400,
        "the first look flags the worst-case frame: {flagged} cells"
    );
    let (cols, rows) = (w as usize / 32, h as usize / 32);
    let mut windows = Vec::new();
    let plan = |windows: &mut Vec<_>| {
        inspectd::stages::look::plan_windows(
            &cells,
            cols,
            (cols, rows),
            32,
            padded,
            &inspectd::config::FirstLookConfig {
                max_share: 1.0,
                ..shipped.model.first_look.clone()
            },
            windows,
        )
    };
    plan(&mut windows);
    assert!(!windows.is_empty());
    let window_out = vec![0.5f32; n * 12 * 12 * 16];
    let mut frame_maps = vec![0f32; n * (w * h) as usize / 64];
    let (look_allocs, ()) = allocations_in(|| {
        for _ in 0..200 {
            plan(&mut windows);
            for win in &windows {
                inspectd::stages::classify::keep_core(
                    &window_out,
                    &mut frame_maps,
                    n,
                    8,
                    ((384, 384), padded),
                    win,
                );
            }
        }
    });
    assert!(frame_maps.contains(&0.5));
    assert_eq!(look_allocs, 0, "choosing or stitching windows allocated");
}
