//! The whole pipeline: 1280 x 1024 frames from the `dir` source through every stage to a
//! local mosquitto. Reports, in one run:
//!  - replay flat out with 1 and 2 classify workers: frames per second and frames per
//!    CPU-second (getrusage; a one-frame run is subtracted, so loading the model and
//!    starting up do not count);
//!  - one frame's processing time: end-to-end p50 / p99 paced well below capacity;
//!  - a live source that outruns the model (`capture.live`, 60 frames/s offered) with
//!    the default `capture.queue` and with 4: end-to-end p50 / p99 against that time;
//!  - `../shared/anchors/pyref_pipeline.py --whole` on the same frames, the same network
//!    (the shipped model with a SpaceToDepth node in front, `whole_frame_model.py`) and
//!    the same broker, when the anchors' Python has its packages (`INSPECTD_PYTHON`, else
//!    `models/.venv`, else python3).
//!
//! The frames are the worst case: `line_1280x1024.png`, every 200 x 200 block a NEU
//! defect image. `INSPECTD_BENCH_MODEL=models/neu_det_lite.onnx` measures another model
//! (both pipelines run it); the default is the shipped `models/neu_det.onnx`.
//!
//! Then a line's frames, with the first look on (`model.first_look`, the shipped
//! config's threshold and `[decide]`) and off, against the Python pipeline on the same
//! folder: (a) the worst case, (b) defect-free frames, (c) nine defect-free frames to one
//! worst-case frame. The defect-free frames are assembled from 96 x 96 crops of the
//! box-free area of the held-out NEU images (`models/neu_det.split.json`), the way
//! `inspectd eval` assembles its clean frames: crops of one surface, cross-faded.
//! (b) runs again one surface at a time (the class whose images the crops came from),
//! each against Python on the same frames.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use inspectd::cli::eval::{box_free_crops, list_samples, read_holdout, surfaces};
use inspectd::config::Settings;
use inspectd::pipeline::Pipeline;
use inspectd::telemetry::{Histogram, Stats};

const FRAMES: usize = 60;

struct Broker(std::process::Child);
impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A config replaying `images`, with `extra` lines appended to `[capture]`.
fn config(dir: &Path, name: &str, images: &Path, port: u16, capture: &str) -> Settings {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[station]\nsite = \"bench\"\nline = \"l\"\nstation = \"s\"\n[capture]\nsource = \"dir\"\npath = \"{}\"\n\
             {capture}\n[model]\npath = \"{}\"\n[mqtt]\nport = {port}\nstats_interval_s = 3600\n[state]\ndir = \"{}\"\n[http]\nlisten = \"\"\n",
            images.display(),
            model().display(),
            dir.join(format!("state-{name}")).display()
        ),
    )
    .unwrap();
    Settings::load(&path).unwrap()
}

/// The model both pipelines run: `INSPECTD_BENCH_MODEL` (relative to the repository),
/// else the shipped one.
fn model() -> PathBuf {
    let name =
        std::env::var("INSPECTD_BENCH_MODEL").unwrap_or_else(|_| "models/neu_det.onnx".into());
    support::repo().join(name)
}

/// A run's stats, wall seconds and this process's CPU-seconds.
type Run = (Arc<Stats>, f64, f64);
/// Count, p50 ms and p99 ms of end-to-end latency in a window.
type Window = (u64, f64, f64);

/// Runs the pipeline until the folder is done (or for `live_for`, then stops it).
fn run(s: &Settings, live_for: Option<Duration>) -> Run {
    run_window(s, live_for).0
}

/// [`run`]; for a live run also the end-to-end (count, p50, p99) of the `live_for`
/// window, read before stopping (the final stats message resets the window).
fn run_window(s: &Settings, live_for: Option<Duration>) -> (Run, Window) {
    let stats = Arc::new(Stats::default());
    let (t, cpu) = (Instant::now(), support::cpu_seconds());
    let p = Pipeline::start(s, stats.clone()).unwrap();
    let mut window = (0, 0.0, 0.0);
    if let Some(d) = live_for {
        // The first frame builds the plan for its size: leave it out of the latencies.
        std::thread::sleep(Duration::from_secs(2));
        stats.end_to_end.take();
        std::thread::sleep(d);
        window = stats.end_to_end.take();
        p.stop();
    }
    while !p.finished() {
        std::thread::sleep(Duration::from_millis(2));
    }
    p.join();
    (
        (
            stats,
            t.elapsed().as_secs_f64(),
            support::cpu_seconds() - cpu,
        ),
        window,
    )
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let Ok(child) = std::process::Command::new("mosquitto")
        .args(["-p", &port.to_string()])
        .spawn()
    else {
        println!("pipeline bench needs mosquitto (apt-get install mosquitto)");
        return;
    };
    let _broker = Broker(child);
    std::thread::sleep(Duration::from_millis(500));
    let folder = |name: &str, n: usize| -> PathBuf {
        let images = dir.path().join(name);
        std::fs::create_dir(&images).unwrap();
        for i in 0..n {
            std::fs::copy(support::line_frame(), images.join(format!("{i:03}.png"))).unwrap();
        }
        images
    };
    let (images, one) = (folder("frames", FRAMES), folder("one", 1));
    let replay = format!("loop = false\nfps = 0\nqueue = {FRAMES}");
    let settings = config(dir.path(), "replay", &images, port, &replay);
    println!("CPU: {}; model {}", support::cpu_model(), model().display());
    if std::env::var("INSPECTD_BENCH_ONLY").as_deref() == Ok("first-look") {
        // The line's workloads alone (about a third of the whole run).
        whole_model(dir.path());
        first_look(dir.path(), port, &replay);
        return;
    }

    let mut g = c.benchmark_group("pipeline_1280x1024_to_mqtt");
    g.sample_size(10);
    g.throughput(Throughput::Elements(FRAMES as u64));
    g.bench_function("frames", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| Duration::from_secs_f64(run(&settings, None).1))
                .sum()
        })
    });
    g.finish();

    // Replay flat out with 1 and 2 classify workers. (End-to-end latency here includes
    // the wait in the replay queue, which holds the whole folder.)
    let mut per_cpu = Vec::new();
    let mut capacity = f64::NAN;
    for workers in [1, 2] {
        let mut s = settings.clone();
        s.model.workers = workers;
        let (stats, wall, cpu) = run(&s, None);
        let mut s1 = config(dir.path(), "one", &one, port, &replay);
        s1.model.workers = workers;
        let (_, wall1, cpu1) = run(&s1, None);
        let n = stats.frames_published.load(Relaxed) as f64;
        let frames_per_cpu = (n - 1.0) / (cpu - cpu1);
        per_cpu.push(frames_per_cpu);
        if workers == settings.model.worker_count().clamp(1, 2) {
            capacity = (n - 1.0) / (wall - wall1);
        }
        println!(
            "pipeline, replay flat out, {workers} classify worker(s): {:.1} frames/s, {frames_per_cpu:.1} frames per \
             CPU-second ({n} frames: {wall:.2} s, {cpu:.2} CPU-s; one-frame run {wall1:.2} s, {cpu1:.2} CPU-s \
             subtracted); {}",
            (n - 1.0) / (wall - wall1),
            ms(&stats.end_to_end)
        );
        println!("  {}", stats_line(&stats));
    }

    // One frame's processing time: paced at half the default setting's capacity, so
    // nothing waits.
    let rate = ((capacity / 2.0) * 10.0).floor().max(1.0) / 10.0;
    let paced = config(
        dir.path(),
        "paced",
        &images,
        port,
        &format!("loop = false\nfps = {rate}"),
    );
    let (stats, _, _) = run(&paced, None);
    let (_, processing, paced_p99) = stats.end_to_end.since_start();
    println!(
        "pipeline, paced at {rate} frames/s, half of capacity (one frame's processing time): end to end \
         p50 {processing:.1} ms, p99 {paced_p99:.1} ms\n  {}",
        stats_line(&stats)
    );
    // The same, one worker whose model runs are split over 2 threads (model.threads).
    let mut split = config(
        dir.path(),
        "paced-threads2",
        &images,
        port,
        &format!("loop = false\nfps = {rate}"),
    );
    (split.model.workers, split.model.threads) = (1, 2);
    let (stats2, _, cpu2) = run(&split, None);
    let (n2, p50_2, p99_2) = stats2.end_to_end.since_start();
    println!(
        "pipeline, paced at {rate} frames/s, model.threads = 2, 1 worker: end to end p50 {p50_2:.1} ms, \
         p99 {p99_2:.1} ms, {:.1} ms CPU per frame (start-up included)\n  {}",
        cpu2 * 1e3 / n2.max(1) as f64,
        stats_line(&stats2)
    );

    // A live source that outruns the model.
    for queue in [1, 4] {
        let s = config(
            dir.path(),
            &format!("live{queue}"),
            &images,
            port,
            &format!("loop = true\nlive = true\nfps = 60\nqueue = {queue}"),
        );
        let ((stats, _, _), (n, p50, p99)) = run_window(&s, Some(Duration::from_secs(10)));
        println!(
            "pipeline, live at 60 frames/s offered, capture.queue = {queue}{}, {} classify worker(s): {n} frames \
             in 10 s; end to end p50 {p50:.1} ms, p99 {p99:.1} ms = {:.2}x one frame's processing time \
             (target <= 2x)\n  {}",
            if queue == 1 { " (default)" } else { "" },
            s.model.worker_count(),
            p99 / processing,
            stats_line(&stats)
        );
    }

    anchor(
        dir.path(),
        &images,
        port,
        &per_cpu,
        (rate, processing, paced_p99),
        p99_2,
    );
    first_look(dir.path(), port, &replay);
}

/// A line's workloads with the first look on and off, each against the Python pipeline.
fn first_look(dir: &Path, port: u16, replay: &str) {
    let repo = support::repo();
    let neu = repo.join("../shared/datasets/neu");
    let split = repo.join("models/neu_det.split.json");
    let samples = read_holdout(&split, "val").and_then(|v| list_samples(&neu, Some(&v)));
    let names = samples.as_ref().map(|s| surfaces(s)).unwrap_or_default();
    let crops = samples.and_then(|s| box_free_crops(&s, 96));
    let crops = match crops {
        Ok(c) if !c.is_empty() => c,
        other => {
            println!(
                "first-look workloads not run: no defect-free crops ({:?})",
                other.err()
            );
            return;
        }
    };
    let clean = inspectd::cli::clean::clean_frames(&crops, FRAMES, (1280, 1024));
    let worst = image::open(support::line_frame()).unwrap().to_luma8();
    let write = |name: &str, pick: &dyn Fn(usize) -> Option<usize>| -> PathBuf {
        let folder = dir.join(name);
        std::fs::create_dir_all(&folder).unwrap();
        for i in 0..FRAMES {
            let path = folder.join(format!("{i:03}.png"));
            match pick(i) {
                Some(k) => image::GrayImage::from_raw(1280, 1024, clean[k].1.clone())
                    .unwrap()
                    .save(&path)
                    .unwrap(),
                None => worst.save(&path).unwrap(),
            }
        }
        folder
    };
    let workloads = [
        ("(a) worst case", write("wl-worst", &|_| None), None),
        (
            "(b) defect-free",
            write("wl-clean", &|i| Some(i)),
            Some(5.0),
        ),
        (
            "(c) 9 defect-free : 1 worst",
            write("wl-mix", &|i| (i % 10 != 9).then_some(i)),
            Some(3.0),
        ),
    ];
    let shipped = Settings::load_with_env(
        &repo.join("config/inspectd.toml"),
        [(
            "INSPECTD__MODEL__PATH".to_string(),
            model().display().to_string(),
        )],
    );
    let shipped = match shipped {
        Ok(s) => s,
        Err(e) => {
            println!("first-look workloads not run: config/inspectd.toml: {e}");
            return;
        }
    };
    let whole = dir.join("neu_det_whole.onnx");
    // Off; on looking at every frame (`whole_streak = 0`); on as shipped.
    let streak = shipped.model.first_look.whole_streak;
    let looks = [(false, streak), (true, 0), (true, streak)];
    for (name, folder, target) in workloads {
        let mut ours = Vec::new();
        for (on, whole_streak) in looks {
            let (rate, line) = line_rate(dir, port, replay, &shipped, &folder, on, whole_streak);
            ours.push(rate);
            println!(
                "first look {}, {name}: {line}",
                match (on, whole_streak) {
                    (false, _) => "off".to_string(),
                    (true, 0) => "on, looking at every frame (whole_streak 0)".to_string(),
                    (true, n) => format!("on (shipped, whole_streak {n})"),
                },
            );
        }
        match pyref(&folder, &whole, port) {
            Some(theirs) => println!(
                "{name}: pyref_pipeline.py --whole --read-each {theirs:.1} frames per CPU-second; inspectd / \
                 Python: first look off {:.2}x, on looking at every frame {:.2}x, on as shipped {:.2}x{}",
                ours[0] / theirs,
                ours[1] / theirs,
                ours[2] / theirs,
                target.map(|t| format!(" (target >= {t}x)")).unwrap_or_else(|| " (target: no worse than off)".into())
            ),
            None => println!("{name}: pyref_pipeline.py not run (see above)"),
        }
    }
    // (b) again, one surface at a time: a line makes one kind of strip, and what the
    // first look lets the detector skip depends on the surface. Each surface's frames
    // (twelve, each read five times), first look on as shipped, against Python on them.
    for (g, surface) in names.iter().enumerate() {
        let mine: Vec<usize> = (0..clean.len()).filter(|&k| clean[k].0 == g).collect();
        if mine.is_empty() {
            println!("(b) on {surface} surface: no frame (its images give no 96 px crop)");
            continue;
        }
        let folder = write(&format!("wl-surface-{g}"), &|i| Some(mine[i % mine.len()]));
        let (ours, line) = line_rate(dir, port, replay, &shipped, &folder, true, streak);
        let theirs = pyref(&folder, &whole, port);
        println!(
            "(b) on {surface} surface, first look on as shipped: {line}; {}",
            match theirs {
                Some(t) => format!(
                    "pyref_pipeline.py {t:.1} frames per CPU-second, inspectd / Python {:.2}x",
                    ours / t
                ),
                None => "pyref_pipeline.py not run (see above)".into(),
            }
        );
    }
}

/// One line workload through the daemon: frames per CPU-second (a one-frame run
/// subtracted) and a line saying what the detector and the first look did.
fn line_rate(
    dir: &Path,
    port: u16,
    replay: &str,
    shipped: &Settings,
    folder: &Path,
    on: bool,
    whole_streak: u32,
) -> (f64, String) {
    let tag = format!(
        "{}-{on}-{whole_streak}",
        folder.file_name().unwrap().to_string_lossy()
    );
    let mut s = config(dir, &tag, folder, port, replay);
    s.decide = shipped.decide.clone();
    s.alarm = shipped.alarm.clone();
    s.model.workers = 1;
    s.model.first_look = shipped.model.first_look.clone();
    s.model.first_look.enabled = on;
    s.model.first_look.whole_streak = whole_streak;
    let one_dir = dir.join(format!("{tag}-one"));
    std::fs::create_dir_all(&one_dir).unwrap();
    std::fs::copy(folder.join("000.png"), one_dir.join("000.png")).unwrap();
    let mut s1 = config(dir, &format!("{tag}-one"), &one_dir, port, replay);
    s1.decide = s.decide.clone();
    s1.model = s.model.clone();
    let (stats, _, cpu) = run(&s, None);
    let (_, _, cpu1) = run(&s1, None);
    let n = stats.frames_published.load(Relaxed) as f64;
    let share =
        stats.detector_pixels.load(Relaxed) as f64 / stats.frame_pixels.load(Relaxed).max(1) as f64;
    let rate = (n - 1.0) / (cpu - cpu1);
    let line = format!(
        "{rate:.1} frames per CPU-second, detector on {:.1} % of the pixels, first look p50 {:.1} ms; {}",
        100.0 * share,
        stats.first_look.since_start().1,
        stats_line(&stats)
    );
    (rate, line)
}

/// `pyref_pipeline.py --whole --read-each` on a folder: frames per CPU-second (a one-frame
/// run subtracted), when the anchors' Python has its packages and `whole` was written.
fn pyref(folder: &Path, whole: &Path, port: u16) -> Option<f64> {
    if !whole.is_file() {
        return None;
    }
    let args = |frames: usize| pyref_args(folder, whole, port, frames, true);
    let (_, cpu) = support::anchor_cpu("pyref_pipeline.py", &args(FRAMES))?;
    let (_, cpu1) = support::anchor_cpu("pyref_pipeline.py", &args(1))?;
    Some((FRAMES - 1) as f64 / (cpu - cpu1))
}

/// The Python pipeline on the same frames, network and broker.
/// The shipped model with a SpaceToDepth node in front, for `pyref_pipeline.py --whole`
/// (written once into `dir`); `None`, said why, when the anchors' Python cannot.
fn whole_model(dir: &Path) -> Option<PathBuf> {
    let whole = dir.join("neu_det_whole.onnx");
    if whole.is_file() {
        return Some(whole);
    }
    let made = std::process::Command::new(support::python())
        .arg(support::repo().join("benches/whole_frame_model.py"))
        .arg(model())
        .arg(&whole)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !made {
        println!(
            "pyref_pipeline.py not run: {} has no onnx package to write the whole-frame model \
             (pip install -r models/requirements.txt opencv-python-headless paho-mqtt)",
            support::python()
        );
        return None;
    }
    Some(whole)
}

fn anchor(
    dir: &Path,
    images: &Path,
    port: u16,
    ours: &[f64],
    paced: (f64, f64, f64),
    split_p99: f64,
) {
    let (rate, processing, ours_p99) = paced;
    let Some(whole) = whole_model(dir) else {
        return;
    };
    let args = |frames: usize, read_each: bool| pyref_args(images, &whole, port, frames, read_each);
    let (Some((full, cpu)), Some((_, cpu1))) = (
        support::anchor_cpu("pyref_pipeline.py", &args(FRAMES, true)),
        support::anchor_cpu("pyref_pipeline.py", &args(1, true)),
    ) else {
        println!("pyref_pipeline.py not run (it needs numpy, opencv-python-headless, onnxruntime, paho-mqtt)");
        return;
    };
    let theirs = (FRAMES - 1) as f64 / (cpu - cpu1);
    println!(
        "pyref_pipeline.py --whole --read-each: {} frames/s, {theirs:.1} frames per CPU-second ({cpu:.2} CPU-s, \
         one-frame run {cpu1:.2} subtracted); p50 {} ms, p99 {} ms",
        full["fps"], full["p50_ms"], full["p99_ms"]
    );
    println!(
        "inspectd / Python, frames per CPU-second: 1 worker {:.2}x, 2 workers {:.2}x (target >= 1.5x)",
        ours[0] / theirs,
        ours[1] / theirs
    );
    if let Some(decoded) = support::anchor("pyref_pipeline.py", &args(FRAMES, false)) {
        // inspectd stamps a replayed frame once decoded: compare with frames decoded beforehand.
        let p99 = decoded["p99_ms"].as_f64().unwrap_or(f64::NAN);
        println!(
            "pyref_pipeline.py --whole, frames decoded beforehand (one at a time, nothing waits): p50 {} ms, \
             p99 {p99} ms; inspectd paced at {rate} frames/s: p50 {processing:.1} ms, p99 {ours_p99:.1} ms; \
             p99 inspectd / Python = {:.2} (target <= 0.5); with model.threads = 2: p99 {split_p99:.1} ms, {:.2}",
            decoded["p50_ms"],
            ours_p99 / p99,
            split_p99 / p99
        );
    }
}

/// `pyref_pipeline.py`'s arguments: the full model (`whole`) on every frame of `folder`,
/// results to the broker on `port`; `read_each`: decode each file as it comes.
fn pyref_args(
    folder: &Path,
    whole: &Path,
    port: u16,
    frames: usize,
    read_each: bool,
) -> Vec<String> {
    let mut a: Vec<String> = [
        "--dir",
        &folder.display().to_string(),
        "--model",
        &whole.display().to_string(),
        "--tile",
        "1280",
        "--stride",
        "1280",
        "--whole",
        "--mean",
        "0",
        "--std",
        "0.00392156862745098",
        "--port",
        &port.to_string(),
        "--frames",
        &frames.to_string(),
    ]
    .map(String::from)
    .to_vec();
    if read_each {
        a.push("--read-each".into());
    }
    a
}

fn ms(h: &Histogram) -> String {
    let (_, p50, p99) = h.since_start();
    format!("end to end p50 {p50:.1} ms, p99 {p99:.1} ms")
}

fn stats_line(stats: &Stats) -> String {
    let workers: Vec<String> = stats
        .classify_workers
        .running()
        .iter()
        .map(|w| {
            format!(
                "{} frames / {:.2} s",
                w.frames.load(Relaxed),
                w.busy_us.load(Relaxed) as f64 / 1e6
            )
        })
        .collect();
    format!(
        "{} of {} frames published, capture-queue drops {}; preprocess p50 {:.1} ms, classify p50 {:.1} ms; \
         classify workers [{}]",
        stats.frames_published.load(Relaxed),
        stats.frames_captured.load(Relaxed),
        stats.dropped_capture_queue.load(Relaxed),
        stats.preprocess.since_start().1,
        stats.classify.since_start().1,
        workers.join(", ")
    )
}

criterion_group!(benches, bench);
criterion_main!(benches);
