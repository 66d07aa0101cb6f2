//! The whole pipeline: 1280 x 1024 frames from the `dir` source through every stage to a
//! local mosquitto, as fast as it takes them. Reports frames per second (per core: this
//! machine's core count is printed), frames per CPU-second with 1 and 2 classify
//! workers, and end-to-end latency p50 / p99.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use inspectd::config::Settings;
use inspectd::pipeline::Pipeline;
use inspectd::telemetry::Stats;

const FRAMES: usize = 40;

struct Broker(std::process::Child);
impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
    let images = dir.path().join("frames");
    std::fs::create_dir(&images).unwrap();
    for i in 0..FRAMES {
        std::fs::copy(support::line_frame(), images.join(format!("{i:03}.png"))).unwrap();
    }
    let config = dir.path().join("bench.toml");
    std::fs::write(
        &config,
        format!(
            "[station]\nsite = \"bench\"\nline = \"l\"\nstation = \"s\"\n[capture]\nsource = \"dir\"\npath = \"{}\"\n\
             loop = false\nfps = 0\nqueue = {FRAMES}\n[model]\npath = \"{}\"\n[mqtt]\nport = {port}\n\
             [state]\ndir = \"{}\"\n",
            images.display(),
            support::repo().join("models/neu_det.onnx").display(),
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let settings = Settings::load(&config).unwrap();
    let mut last = None;
    let mut g = c.benchmark_group("pipeline_1280x1024_to_mqtt");
    g.sample_size(10);
    g.throughput(Throughput::Elements(FRAMES as u64));
    g.bench_function("frames", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let stats = Arc::new(Stats::default());
                let t = Instant::now();
                let p = Pipeline::start(&settings, stats.clone()).unwrap();
                while !p.finished() {
                    std::thread::sleep(Duration::from_millis(2));
                }
                total += t.elapsed();
                p.join();
                last = Some(stats);
            }
            total
        })
    });
    g.finish();
    if let Some(stats) = last {
        report("as fast as it goes", &stats);
    }
    // Flat out with 1 and 2 classify workers: frames per second and per CPU-second.
    for workers in [1, 2] {
        let mut s = Settings::load(&config).unwrap();
        s.model.workers = workers;
        let stats = Arc::new(Stats::default());
        let (t, cpu) = (Instant::now(), cpu_seconds());
        let p = Pipeline::start(&s, stats.clone()).unwrap();
        while !p.finished() {
            std::thread::sleep(Duration::from_millis(2));
        }
        p.join();
        let (wall, cpu) = (t.elapsed().as_secs_f64(), cpu_seconds() - cpu);
        let n = stats
            .frames_published
            .load(std::sync::atomic::Ordering::Relaxed) as f64;
        println!(
            "pipeline, {workers} classify worker(s), flat out: {:.1} frames/s, {:.1} frames per CPU-second \
             ({n} frames, {wall:.2} s, {cpu:.2} CPU-s)",
            n / wall,
            n / cpu
        );
        report(&format!("{workers} worker(s)"), &stats);
    }
    // Paced below capacity, so latency is the pipeline's own, not time spent queueing.
    let paced = Settings::load(&config).map(|mut s| {
        s.capture.fps = 15.0;
        s
    });
    let stats = Arc::new(Stats::default());
    let p = Pipeline::start(&paced.unwrap(), stats.clone()).unwrap();
    while !p.finished() {
        std::thread::sleep(Duration::from_millis(5));
    }
    p.join();
    report("paced at 15 frames/s", &stats);
}

/// User + system CPU time of this process so far (getrusage), in seconds.
fn cpu_seconds() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn report(what: &str, stats: &Stats) {
    use std::sync::atomic::Ordering::Relaxed;
    let ms = |h: &inspectd::telemetry::Histogram| {
        let (_, p50, p99) = h.since_start();
        format!("p50 {p50:.1} ms, p99 {p99:.1} ms")
    };
    println!(
        "pipeline, {what}: {} of {} frames published, capture-queue drops {}, {} cores; end to end {}; \
         preprocess {}; classify {}",
        stats.frames_published.load(Relaxed),
        stats.frames_captured.load(Relaxed),
        stats.dropped_capture_queue.load(Relaxed),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        ms(&stats.end_to_end),
        ms(&stats.preprocess),
        ms(&stats.classify),
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
