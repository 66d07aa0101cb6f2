//! The whole pipeline: 1280 x 1024 frames from the `dir` source through every stage to a
//! local mosquitto, as fast as it takes them. Reports frames per second (per core: this
//! machine's core count is printed) and end-to-end latency p50 / p99.

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
             loop = false\nfps = 0\nqueue = {FRAMES}\n[model]\npath = \"{}\"\ntile_stride = 64\n[mqtt]\nport = {port}\n\
             [state]\ndir = \"{}\"\n",
            images.display(),
            support::repo().join("models/neu_tiles.onnx").display(),
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
        let mut since = (Instant::now() - Duration::from_secs(1), 0);
        let v: serde_json::Value =
            serde_json::from_str(&stats.snapshot_json(&mut since, "bench")).unwrap();
        println!(
            "pipeline: {} frames published of {}, capture-queue drops {}; cores {}; end-to-end p50 {} ms, p99 {} ms; \
             classify p50 {} ms; preprocess p50 {} ms",
            v["published"], v["frames"], v["drops"]["capture_queue"],
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            v["latency"]["end_to_end"]["p50_ms"], v["latency"]["end_to_end"]["p99_ms"],
            v["latency"]["classify"]["p50_ms"], v["latency"]["preprocess"]["p50_ms"],
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
