//! The HTTP face against the real daemon, a real mosquitto and real NEU images: metrics
//! parse as Prometheus text and grow, readiness follows the broker, evidence is written
//! and served, frozen frames are reported on `health` and not counted twice, and the
//! live page draws boxes in a real headless Chromium.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

struct Reply {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl Reply {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// A plain HTTP/1.1 GET on a connection the server closes after the body.
fn get(port: u16, path: &str) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    // Read the header block, then the body: by its length when given (Chromium's
    // DevTools server keeps the connection open), else to the end.
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    let split = loop {
        if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        let k = s.read(&mut buf).unwrap();
        assert!(
            k > 0,
            "the connection closed before a header block: {raw:?}"
        );
        raw.extend_from_slice(&buf[..k]);
    };
    let headers = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = headers.split(' ').nth(1).unwrap().parse().unwrap();
    let length = headers.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().unwrap())
    });
    match length {
        Some(n) => {
            while raw.len() < split + 4 + n {
                let k = s.read(&mut buf).unwrap();
                assert!(k > 0, "the body ended early");
                raw.extend_from_slice(&buf[..k]);
            }
        }
        None => {
            s.read_to_end(&mut raw).unwrap();
        }
    }
    let mut body = raw[split + 4..].to_vec();
    if headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

/// The body of a chunked HTTP/1.1 response.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk size");
        let size = usize::from_str_radix(std::str::from_utf8(&raw[..eol]).unwrap().trim(), 16)
            .expect("a hex chunk size");
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw = &raw[eol + 2 + size + 2..];
    }
}

/// The first `n` server-sent events of `path`, as JSON.
fn events(port: u16, path: &str, n: usize) -> Vec<serde_json::Value> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 65536];
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let found: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str(d).ok())
            .collect();
        if found.len() >= n || Instant::now() > end {
            return found;
        }
        let k = s.read(&mut buf).unwrap();
        assert!(k > 0, "the event stream ended: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..k]));
    }
}

/// One sample of a metric: its value, from the parsed exposition.
fn sample(m: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    m.samples
        .iter()
        .find(|s| {
            s.metric == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(k).is_some_and(|x| x == *v))
        })
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{name}: not a scalar: {other:?}"),
        })
}

fn scrape(port: u16) -> (String, prometheus_parse::Scrape) {
    let r = get(port, "/metrics");
    assert_eq!(r.status, 200);
    let ct = r.header("content-type").unwrap();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    let text = r.text();
    assert!(text.ends_with("# EOF\n"), "{text}");
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("parses as Prometheus text");
    (text, parsed)
}

fn http_station(images: &std::path::Path, mqtt: u16, fps: f64, extra: &str) -> (Station, u16) {
    let http = free_port();
    let station = station(
        images,
        mqtt,
        true,
        fps,
        (3, 2, 0, false),
        &format!("[http]\nlisten = \"127.0.0.1:{http}\"\n{extra}"),
    );
    (station, http)
}

fn wait_ready(port: u16, want: u16, timeout: Duration) -> Reply {
    let end = Instant::now() + timeout;
    loop {
        let r = match TcpStream::connect(("127.0.0.1", port)) {
            Ok(_) => get(port, "/health/ready"),
            Err(_) => {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if r.status == want || Instant::now() > end {
            return r;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn metrics_readiness_and_evidence_over_http() {
    let mut broker = Mosquitto::start();
    let stems = stems_with("scratches", "", 4);
    let refs: Vec<&str> = stems.iter().map(String::as_str).collect();
    let images = image_folder(&refs);
    let (station, http) = http_station(
        images.path(),
        broker.port,
        8.0,
        "[evidence]\nsample_every = 3\n",
    );
    let sub = Subscriber::start(broker.port, &format!("{}/#", station.root), false);
    let daemon = Daemon::start(&station.config);

    let r = wait_ready(http, 200, Duration::from_secs(60));
    assert_eq!(r.status, 200, "{}\n{}", r.text(), daemon.log_text());
    assert_eq!(r.json()["ready"], true);
    let live = get(http, "/health/live");
    assert_eq!(
        (live.status, live.json()["live"].clone()),
        (200, true.into())
    );

    // An alarm is raised and names its evidence image.
    assert!(
        sub.wait_for(Duration::from_secs(30), |m| {
            m.iter()
                .any(|m| m.topic.ends_with("/alarm") && m.json()["event"] == "raised")
        }),
        "no alarm raised: {}",
        daemon.log_text()
    );
    let raised = sub
        .on(&format!("{}/alarm", station.root))
        .into_iter()
        .find(|m| m.json()["event"] == "raised")
        .unwrap()
        .json();
    let rel = raised["evidence"]
        .as_str()
        .expect("the event names its image")
        .to_string();
    assert!(
        rel.starts_with("evidence/") && rel.ends_with(".png"),
        "{rel}"
    );
    let file = station.dir.path().join("state").join(&rel);
    assert!(
        wait_until(Duration::from_secs(10), || file.is_file()),
        "{} was not written",
        file.display()
    );
    let png = image::open(&file).unwrap().to_luma8();
    let source = image::open(neu_image(&stems[0])).unwrap().to_luma8();
    assert_eq!(png.dimensions(), source.dimensions());
    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(file.with_extension("json")).unwrap()).unwrap();
    assert_eq!(sidecar["alarm_id"], raised["id"]);
    assert!(!sidecar["model"].as_str().unwrap().is_empty());
    let digest = sidecar["config_sha256"].as_str().unwrap();
    assert!(
        digest.len() == 64 && digest.chars().all(|c| c.is_ascii_hexdigit()),
        "{digest}"
    );
    assert_eq!(sidecar["result"]["ok"], false);
    assert!(!sidecar["result"]["defects"].as_array().unwrap().is_empty());
    // Served as it is on disk; nothing outside the evidence folder is.
    let served = get(http, &format!("/{rel}"));
    assert_eq!(served.status, 200);
    assert_eq!(served.body, std::fs::read(&file).unwrap());
    for path in [
        "/evidence/../inspectd.toml",
        "/evidence/%2e%2e/inspectd.toml",
        "/evidence/../state/outbox.log",
    ] {
        let r = get(http, path);
        assert_ne!(r.status, 200, "{path} served: {}", r.text());
    }

    // Metrics: they parse, carry the model id, and count.
    let (text, m) = scrape(http);
    let model = sidecar["model"].as_str().unwrap();
    assert!(
        text.contains(&format!("inspectd_model_info{{model=\"{model}\"}} 1")),
        "{text}"
    );
    let frames1 = sample(&m, "inspectd_frames_published_total", &[]).unwrap();
    assert!(frames1 > 0.0, "{text}");
    assert!(
        sample(
            &m,
            "inspectd_alarm_events_total",
            &[("class", "scratches"), ("event", "raised")]
        )
        .unwrap()
            >= 1.0,
        "{text}"
    );
    assert_eq!(
        sample(&m, "inspectd_broker_connected", &[]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&m, "inspectd_camera_up", &[]), Some(1.0), "{text}");
    assert!(
        sample(&m, "inspectd_evidence_written_total", &[]).unwrap() >= 1.0,
        "{text}"
    );
    assert!(
        sample(&m, "inspectd_evidence_bytes", &[]).unwrap() > 0.0,
        "{text}"
    );
    for queue in ["capture", "results", "outbox", "evidence"] {
        assert!(
            sample(&m, "inspectd_dropped_total", &[("queue", queue)]).is_some(),
            "{queue}: {text}"
        );
    }
    assert_eq!(
        sample(&m, "inspectd_health_condition", &[("condition", "frozen")]),
        Some(0.0)
    );
    let classify = m
        .samples
        .iter()
        .find(|s| {
            s.metric == "inspectd_stage_latency_seconds"
                && s.labels.get("stage") == Some("classify")
        })
        .expect("a classify latency histogram");
    match &classify.value {
        prometheus_parse::Value::Histogram(buckets) => {
            let inf = buckets.last().unwrap();
            assert!(
                inf.less_than.is_infinite() && inf.count >= 1.0,
                "{buckets:?}"
            );
            assert!(
                buckets.windows(2).all(|w| w[0].count <= w[1].count),
                "cumulative"
            );
        }
        other => panic!("not a histogram: {other:?}"),
    }
    assert!(
        wait_until(Duration::from_secs(20), || {
            sample(&scrape(http).1, "inspectd_frames_published_total", &[]).unwrap() > frames1
        }),
        "the frame counter does not grow"
    );

    // The live page's feeds.
    let page = get(http, "/");
    assert_eq!(page.status, 200);
    assert!(page.text().contains("EventSource(\"/events\")"));
    assert!(
        !page.text().contains("http://") && !page.text().contains("https://"),
        "no outside resources"
    );
    let evs = events(http, "/events", 3);
    assert_eq!(evs.len(), 3);
    let last = &evs[2];
    assert_eq!(last["model"], model);
    assert!(last["frame"]["seq"].as_u64().unwrap() > 0, "{last}");
    assert!(last["alarms"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["class"] == "scratches"));
    let seq = last["frame"]["seq"].as_u64().unwrap();
    let jpeg = get(http, &format!("/frame.jpg?seq={seq}"));
    assert_eq!(jpeg.status, 200);
    assert_eq!(jpeg.header("content-type").as_deref(), Some("image/jpeg"));
    let img = image::load_from_memory(&jpeg.body).unwrap();
    assert_eq!((img.width(), img.height()), (200, 200));
    // A frame no longer kept is not answered with another frame's pixels.
    let gone = get(http, &format!("/frame.jpg?seq={}", seq + 1_000_000));
    assert_eq!(gone.status, 404);
    assert!(gone.text().contains("no longer kept"), "{}", gone.text());

    // Readiness follows the broker.
    broker.stop();
    let r = wait_ready(http, 503, Duration::from_secs(20));
    assert_eq!(r.status, 503, "{}", r.text());
    let reasons = r.json()["reasons"].to_string();
    assert!(reasons.contains("broker: not connected"), "{reasons}");
    assert_eq!(
        sample(&scrape(http).1, "inspectd_broker_connected", &[]),
        Some(0.0)
    );
    broker.restart();
    let r = wait_ready(http, 200, Duration::from_secs(30));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(sample(&scrape(http).1, "inspectd_broker_reconnects_total", &[]).unwrap() >= 1.0);
}

#[test]
fn a_frozen_camera_is_reported_and_its_repeats_are_not_counted_again() {
    let broker = Mosquitto::start();
    let stem = stems_with("scratches", "", 1).remove(0);
    // One image replayed in a loop: the same frame over and over.
    let images = image_folder(&[&stem]);
    let (station, http) = http_station(
        images.path(),
        broker.port,
        10.0,
        "[health]\nfrozen_after_s = 1.0\n",
    );
    let sub = Subscriber::start(broker.port, &format!("{}/#", station.root), false);
    let daemon = Daemon::start(&station.config);
    let health_topic = format!("{}/health", station.root);
    assert!(
        sub.wait_for(Duration::from_secs(40), |m| m
            .iter()
            .any(|m| m.topic == health_topic && m.json()["frozen"] == true)),
        "no frozen health: {:?}\n{}",
        sub.on(&health_topic),
        daemon.log_text()
    );
    let h = sub.on(&health_topic).last().unwrap().json();
    assert_eq!(
        (h["v"].clone(), h["ok"].clone()),
        (1.into(), false.into()),
        "{h}"
    );
    let r = wait_ready(http, 503, Duration::from_secs(5));
    assert!(r.text().contains("health: frozen"), "{}", r.text());
    let frozen_logs = daemon
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|v| v["condition"] == "frozen" && v["level"] == "WARN")
        .count();
    assert_eq!(frozen_logs, 1, "logged once: {}", daemon.log_text());
    // Every frame but the first repeats it: one frame with scratches, never 2 of 3.
    std::thread::sleep(Duration::from_secs(2));
    let (text, m) = scrape(http);
    let published = sample(&m, "inspectd_frames_published_total", &[]).unwrap();
    let skipped = sample(&m, "inspectd_repeats_skipped_total", &[]).unwrap();
    assert!(published >= 10.0 && skipped >= published - 2.0, "{text}");
    assert!(
        !sub.messages().iter().any(|m| m.topic.ends_with("/alarm")),
        "a repeated frame raised an alarm"
    );
    // The results still go out, one per frame.
    assert!(sub.on(&format!("{}/result", station.root)).len() >= 10);
    drop(daemon);

    // With decide.skip_repeats = false the same frames raise the alarm.
    let sub2 = Subscriber::start(broker.port, &format!("{}/alarm", station.root), false);
    let mut cmd = std::process::Command::new(bin());
    cmd.args(["run", "--config"])
        .arg(&station.config)
        .env("INSPECTD__DECIDE__SKIP_REPEATS", "false")
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let raised = sub2.wait_for(Duration::from_secs(40), |m| {
        m.iter().any(|m| m.json()["event"] == "raised")
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        raised,
        "without skip_repeats the repeated defect raises the alarm"
    );
}

/// Chromium, headless, driven over the DevTools protocol: open a page, evaluate, take a
/// screenshot. (Chromium's own `--screenshot` shoots before the page's event stream has
/// delivered anything.)
struct Browser {
    child: std::process::Child,
    _profile: tempfile::TempDir,
    ws: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
}

impl Browser {
    fn open(url: &str) -> Browser {
        let chromium = std::env::var_os("INSPECTD_CHROMIUM")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
        assert!(
            chromium.is_file(),
            "{} is missing: apt-get install -y chromium (or set INSPECTD_CHROMIUM)",
            chromium.display()
        );
        let profile = tempfile::tempdir().unwrap();
        let child = std::process::Command::new(&chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--window-size=1100,800",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Chromium writes the port it chose into the profile.
        let port_file = profile.path().join("DevToolsActivePort");
        assert!(
            wait_until(Duration::from_secs(30), || std::fs::read_to_string(
                &port_file
            )
            .is_ok_and(|t| t.lines().count() >= 2)),
            "Chromium did not start its DevTools endpoint"
        );
        let port: u16 = std::fs::read_to_string(&port_file)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let mut page_ws = None;
        assert!(wait_until(Duration::from_secs(10), || {
            let list = get(port, "/json/list").json();
            page_ws = list.as_array().unwrap().iter().find_map(|t| {
                (t["type"] == "page")
                    .then(|| t["webSocketDebuggerUrl"].as_str().unwrap().to_string())
            });
            page_ws.is_some()
        }));
        let (ws, _) = tungstenite::client(
            page_ws.unwrap().as_str(),
            TcpStream::connect(("127.0.0.1", port)).unwrap(),
        )
        .unwrap();
        Browser {
            child,
            _profile: profile,
            ws,
            next_id: 1,
        }
    }

    /// Sends a DevTools command and returns its result.
    fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = serde_json::json!({ "id": id, "method": method, "params": params });
        self.ws
            .send(tungstenite::Message::text(msg.to_string()))
            .unwrap();
        loop {
            let reply = self.ws.read().unwrap();
            let Ok(text) = reply.to_text() else { continue };
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    fn eval(&mut self, expression: &str) -> serde_json::Value {
        self.call(
            "Runtime.evaluate",
            serde_json::json!({ "expression": expression, "returnByValue": true }),
        )["result"]["value"]
            .clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The live page in Debian's Chromium: it connects to the event stream, shows the
/// newest frame, and the screenshot shows the defect boxes drawn on it in their colour
/// (#ff2a2a, which no gray frame contains).
#[test]
fn the_live_page_draws_boxes_in_a_real_browser() {
    let broker = Mosquitto::start();
    let stems = stems_with("patches", "", 3);
    let refs: Vec<&str> = stems.iter().map(String::as_str).collect();
    let images = image_folder(&refs);
    let (station, http) = http_station(images.path(), broker.port, 4.0, "");
    let daemon = Daemon::start(&station.config);
    let r = wait_ready(http, 200, Duration::from_secs(60));
    assert_eq!(r.status, 200, "{}\n{}", r.text(), daemon.log_text());

    let mut browser = Browser::open(&format!("http://127.0.0.1:{http}/"));
    let mut boxes = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(30), || {
            boxes = browser.eval("document.body.dataset.boxes");
            boxes
                .as_str()
                .and_then(|b| b.parse::<u32>().ok())
                .is_some_and(|b| b > 0)
        }),
        "the page drew no frame with boxes: {boxes}"
    );
    assert_eq!(
        browser.eval("document.getElementById('conn').textContent"),
        "live"
    );
    // The verdict and the defect list describe the frame on the canvas.
    let panel = browser.eval(
        "(() => { const b = document.body.dataset; return [b.seq, b.boxes, \
         document.getElementById('verdict').textContent, \
         document.querySelectorAll('#defects tr').length]; })()",
    );
    let seq = panel[0].as_str().unwrap();
    assert!(
        panel[2]
            .as_str()
            .unwrap()
            .starts_with(&format!("frame {seq}: ")),
        "{panel}"
    );
    assert_eq!(panel[1].as_str().unwrap(), panel[3].to_string(), "{panel}");
    let alarms = browser.eval("document.getElementById('alarms').textContent");
    assert!(alarms.as_str().unwrap().contains("patches"), "{alarms}");
    let shot = browser.call(
        "Page.captureScreenshot",
        serde_json::json!({ "format": "png" }),
    );
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    let out_dir = repo().join("target/screenshots");
    std::fs::create_dir_all(&out_dir).unwrap();
    let path = out_dir.join("live-page.png");
    std::fs::write(&path, &png).unwrap();
    let img = image::load_from_memory(&png).unwrap().to_rgb8();
    let boxed = img
        .pixels()
        .filter(|p| p[0] > 220 && p[1] < 80 && p[2] < 80)
        .count();
    let gray = img
        .pixels()
        .filter(|p| p[0] == p[1] && p[1] == p[2] && p[0] > 40 && p[0] < 220)
        .count();
    assert!(
        gray > 20_000,
        "the frame is on the page ({gray} gray pixels)"
    );
    assert!(
        boxed > 300,
        "box-coloured pixels on the page: {boxed} ({})",
        path.display()
    );
}

/// The coil map on the live page, in Chromium: a replay of a strip where a patch recurs
/// every 600 mm gives marks in the patches colour (#7ed321) joined as one periodic
/// defect; clicking a mark shows its evidence image.
#[test]
fn the_live_page_draws_the_coil_map_and_a_clicked_mark_shows_its_image() {
    let (images, _) = strip_frames(PERIODIC_FRAMES, &PERIODIC_STRIP);
    let broker = Mosquitto::start();
    let (station, http) = http_station(
        images.path(),
        broker.port,
        4.0,
        &format!(
            "[strip]\nmm_per_px_cd = 1.0\nmm_per_px_md = 1.0\nadvance_px = {STRIP_ADVANCE}\nperiodic_min_pitch_mm = 300\n"
        ),
    );
    let sub = Subscriber::start(broker.port, &format!("{}/#", station.root), false);
    sub.publish_retained(&format!("{}/cmd/coil", station.root), "C-MAP-1");
    let daemon = Daemon::start(&station.config);
    let r = wait_ready(http, 200, Duration::from_secs(60));
    assert_eq!(r.status, 200, "{}\n{}", r.text(), daemon.log_text());

    let mut browser = Browser::open(&format!("http://127.0.0.1:{http}/"));
    let mut seen = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(60), || {
            seen = browser
                .eval("[document.body.dataset.marks, document.body.dataset.periodic].join()");
            let n: Vec<u32> = seen
                .as_str()
                .unwrap_or("")
                .split(',')
                .filter_map(|v| v.parse().ok())
                .collect();
            n.len() == 2 && n[0] >= 4 && n[1] >= 1
        }),
        "no periodic defect on the map: marks, periodic = {seen}\n{}",
        daemon.log_text()
    );
    assert_eq!(
        browser.eval("document.getElementById('coilid').textContent"),
        "C-MAP-1"
    );
    // The map's data is the daemon's: the same marks /api/coil serves.
    let api = get(http, "/api/coil").json();
    assert_eq!(api["coil"], "C-MAP-1");
    assert!(api["marks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["class"] == "patches" && k["periodic"].is_u64()));
    // Click a patches mark: its evidence image is shown.
    let track = browser.eval(
        "(() => { const r = [...document.querySelectorAll('#coilmap rect.mark')].find((r) => r.getAttribute('fill') === '#7ed321'); \
         r.dispatchEvent(new MouseEvent('click', { bubbles: true })); return r.dataset.track; })()",
    );
    assert!(track.is_string(), "{track}");
    assert!(
        wait_until(Duration::from_secs(10), || {
            browser
            .eval("(() => { const i = document.getElementById('markimg'); return !i.hidden && i.complete && i.naturalWidth; })()")
            == serde_json::json!(400)
        }),
        "the clicked mark's image did not load"
    );
    let text = browser.eval("document.getElementById('marktext').textContent");
    assert!(
        text.as_str()
            .unwrap()
            .starts_with(&format!("track {}: patches", track.as_str().unwrap())),
        "{text}"
    );

    let shot = browser.call(
        "Page.captureScreenshot",
        serde_json::json!({ "format": "png", "captureBeyondViewport": true }),
    );
    use base64::Engine;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap())
        .unwrap();
    let out_dir = repo().join("target/screenshots");
    std::fs::create_dir_all(&out_dir).unwrap();
    let path = out_dir.join("coil-map.png");
    std::fs::write(&path, &png).unwrap();
    let img = image::load_from_memory(&png).unwrap().to_rgb8();
    let patches = img
        .pixels()
        .filter(|p| {
            (p[0] as i32 - 0x7e).abs() < 12
                && (p[1] as i32 - 0xd3).abs() < 12
                && (p[2] as i32 - 0x21).abs() < 12
        })
        .count();
    assert!(
        patches > 100,
        "patches-coloured pixels on the page: {patches} ({})",
        path.display()
    );
}

#[test]
fn a_taken_http_port_is_refused_at_start_naming_the_key() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let images = image_folder(&["scratches_1"]);
    let station = station(
        images.path(),
        free_port(),
        false,
        0.0,
        (3, 2, 0, false),
        &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let mut daemon = Daemon::start(&station.config);
    let code = daemon.wait(Duration::from_secs(30));
    assert_eq!(code, Some(1), "{}", daemon.log_text());
    let log = daemon.log_text();
    assert!(
        log.contains(&format!("http.listen 127.0.0.1:{port}: cannot listen")),
        "{log}"
    );
}
