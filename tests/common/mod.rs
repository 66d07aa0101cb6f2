//! Shared helpers for the integration tests: a real mosquitto on a free port, the real
//! inspectd binary on a folder of real NEU images, and a subscriber that records what the
//! daemon published.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_inspectd"))
}

/// The shared NEU dataset beside the repository.
pub fn neu() -> PathBuf {
    repo().join("../shared/datasets/neu")
}

/// The shipped `config/inspectd.toml`, its model taken from this checkout's `models/`.
pub fn shipped_settings() -> inspectd::config::Settings {
    inspectd::config::Settings::load_with_env(
        &repo().join("config/inspectd.toml"),
        [(
            "INSPECTD__MODEL__PATH".to_string(),
            repo().join("models/neu_det.onnx").display().to_string(),
        )],
    )
    .expect("config/inspectd.toml loads")
}

pub fn neu_image(stem: &str) -> PathBuf {
    neu().join("IMAGES").join(format!("{stem}.png"))
}

/// `n` distinct free ports (the probe sockets are held together, so none repeats).
/// Ports for the servers a test starts: below Linux's ephemeral range (32768 and up),
/// so that no client connection of a parallel test can take one between the pick and
/// the server's bind; spread by the process id, never the same one twice in a process.
pub fn free_ports(n: usize) -> Vec<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20000;
    const SPAN: u32 = 12000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id() * 97 % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    let mut out = Vec::with_capacity(n);
    for _ in 0..SPAN {
        if out.len() == n {
            break;
        }
        let port = (FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            out.push(port);
        }
    }
    assert_eq!(
        out.len(),
        n,
        "no free ports left between {FIRST} and {}",
        FIRST + SPAN
    );
    out
}

pub fn free_port() -> u16 {
    free_ports(1)[0]
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// Starts mosquitto with the config file `conf`, its log appended to `log`; returns once
/// `port` takes connections (or panics with the log).
pub fn spawn_mosquitto(conf: &Path, log: &Path, port: u16) -> Child {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut child = Command::new("mosquitto")
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .expect("mosquitto must be installed (apt-get install mosquitto)");
    if !wait_until(Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    }) {
        let _ = child.kill();
        panic!(
            "mosquitto did not start on port {port}:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
    child
}

/// A mosquitto started for one test, on its own port, optionally with persistence so that
/// a restart keeps sessions and queued messages like a production broker would.
pub struct Mosquitto {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    persistence: bool,
}

impl Mosquitto {
    /// A broker that forgets everything (retained messages, sessions) when restarted.
    pub fn start_forgetful() -> Mosquitto {
        let mut m = Mosquitto {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
            persistence: false,
        };
        m.launch();
        m
    }

    pub fn start() -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        // Started as root, mosquitto drops to its own user: it must be able to write its
        // persistence file here, or a restart forgets sessions and queued messages.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let mut m = Mosquitto {
            port: free_port(),
            dir,
            child: None,
            persistence: true,
        };
        m.launch();
        m
    }

    fn launch(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\npersistence {}\npersistence_location {}/\n\
                 max_queued_messages 10000\n",
                self.port,
                self.persistence,
                self.dir.path().display()
            ),
        )
        .unwrap();
        self.child = Some(spawn_mosquitto(
            &conf,
            &self.dir.path().join("mosquitto.log"),
            self.port,
        ));
    }

    /// Stops the broker gracefully (it saves its persistence file).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: String,
    pub retain: bool,
    pub at: Instant,
}

impl Msg {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.payload)
            .unwrap_or_else(|e| panic!("{}: {e}: {}", self.topic, self.payload))
    }
}

/// Subscribes to `filter` and records every message, reconnecting when the broker
/// restarts. With `persistent`, the session survives disconnects (clean session off), so
/// QoS 1 messages published while it was away are delivered when it returns.
pub struct Subscriber {
    pub msgs: Arc<Mutex<Vec<Msg>>>,
    connected: Arc<Mutex<u32>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    client: Client,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Subscriber {
    pub fn start(port: u16, filter: &str, persistent: bool) -> Subscriber {
        Self::start_as(port, filter, persistent, None)
    }

    /// [`start`](Self::start), logged in as `(user, password)`.
    pub fn start_as(
        port: u16,
        filter: &str,
        persistent: bool,
        login: Option<(&str, &str)>,
    ) -> Subscriber {
        let id = format!("test-sub-{}-{}", std::process::id(), free_port());
        let mut opts = MqttOptions::new(id, "127.0.0.1", port);
        if let Some((user, password)) = login {
            opts.set_credentials(user, password);
        }
        opts.set_keep_alive(Duration::from_secs(5));
        opts.set_clean_session(!persistent);
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut conn) = Client::new(opts, 64);
        let msgs = Arc::new(Mutex::new(Vec::new()));
        let connected = Arc::new(Mutex::new(0u32));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (m, c, cl, f, st) = (
            msgs.clone(),
            connected.clone(),
            client.clone(),
            filter.to_string(),
            stop.clone(),
        );
        let thread = std::thread::spawn(move || {
            while !st.load(std::sync::atomic::Ordering::Relaxed) {
                let ev = match conn.recv_timeout(Duration::from_millis(100)) {
                    Ok(ev) => ev,
                    Err(rumqttc::RecvTimeoutError::Timeout) => continue,
                    Err(rumqttc::RecvTimeoutError::Disconnected) => break,
                };
                match ev {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = cl.try_subscribe(&f, QoS::AtLeastOnce);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => *c.lock().unwrap() += 1,
                    Ok(Event::Incoming(Packet::Publish(p))) => m.lock().unwrap().push(Msg {
                        topic: p.topic.clone(),
                        payload: String::from_utf8_lossy(&p.payload).into_owned(),
                        retain: p.retain,
                        at: Instant::now(),
                    }),
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        let s = Subscriber {
            msgs,
            connected,
            stop,
            client,
            thread: Some(thread),
        };
        assert!(
            wait_until(Duration::from_secs(10), || s.subscriptions() >= 1),
            "subscriber did not subscribe"
        );
        s
    }

    /// How many times the subscription was acknowledged (once per connection).
    pub fn subscriptions(&self) -> u32 {
        *self.connected.lock().unwrap()
    }

    pub fn messages(&self) -> Vec<Msg> {
        self.msgs.lock().unwrap().clone()
    }

    pub fn on(&self, topic: &str) -> Vec<Msg> {
        self.messages()
            .into_iter()
            .filter(|m| m.topic == topic)
            .collect()
    }

    pub fn wait_for(&self, timeout: Duration, f: impl Fn(&[Msg]) -> bool) -> bool {
        wait_until(timeout, || f(&self.msgs.lock().unwrap()))
    }

    pub fn publish(&self, topic: &str, payload: &str) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
            .unwrap();
    }

    /// Publishes with the retain flag: what a subscriber that connects later still gets.
    pub fn publish_retained(&self, topic: &str, payload: &str) {
        self.client
            .publish(topic, QoS::AtLeastOnce, true, payload.as_bytes().to_vec())
            .unwrap();
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.client.try_disconnect();
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A folder of copies of NEU images, named so that file-name order is the given order.
/// The first `n` NEU images of `class` (by number) in which the shipped model, at the
/// default thresholds, reports a defect of `class` and none of `absent`: tests that need
/// a defect on a frame pick frames the model is known to find it in, whatever model ships.
pub fn stems_with(class: &str, absent: &str, n: usize) -> Vec<String> {
    let mut found = Vec::new();
    let candidates: Vec<String> = (1..=300)
        .map(|i| format!("{class}_{i}"))
        .filter(|s| neu_image(s).is_file())
        .collect();
    for chunk in candidates.chunks(40) {
        let files: Vec<PathBuf> = chunk.iter().map(|s| neu_image(s)).collect();
        for (stem, c) in chunk.iter().zip(classify_json(&files)) {
            let has = |k: &str| {
                c["defects"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|d| d["class"] == k)
            };
            if has(class) && !has(absent) {
                found.push(stem.clone());
                if found.len() == n {
                    return found;
                }
            }
        }
    }
    panic!(
        "only {} {class} images with {class} found: {found:?}",
        found.len()
    );
}

pub fn image_folder(stems: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (i, stem) in stems.iter().enumerate() {
        std::fs::copy(
            neu_image(stem),
            dir.path().join(format!("{i:04}_{stem}.png")),
        )
        .unwrap();
    }
    dir
}

pub struct Station {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub root: String,
}

/// Writes a config for a station replaying `images` to the broker on `port`; `extra` is
/// appended TOML (sections it names must not appear above: use `overrides` for those).
pub fn station(
    images: &Path,
    port: u16,
    looping: bool,
    fps: f64,
    alarm: (u32, u32, u32, bool),
    extra: &str,
) -> Station {
    let dir = tempfile::tempdir().unwrap();
    let site = format!("t{}", free_port());
    let (window, raise, clear, latch) = alarm;
    let config = dir.path().join("inspectd.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[station]
site = "{site}"
line = "l1"
station = "s1"

[capture]
source = "dir"
path = "{images}"
loop = {looping}
fps = {fps}
queue = 64

[model]
path = "{model}"

[alarm]
window = {window}
raise = {raise}
clear = {clear}
latch = {latch}

[state]
dir = "{state}"

[log]
level = "info"
format = "json"
{extra}
"#,
            images = images.display(),
            model = repo().join("models/neu_det.onnx").display(),
            state = dir.path().join("state").display(),
        ),
    )
    .unwrap();
    let root = format!("inspectd/{site}/l1/s1");
    // Sections `extra` did not name get the tests' defaults.
    let text = std::fs::read_to_string(&config).unwrap();
    let mut tail = String::new();
    if !text.contains("[mqtt]") {
        tail += &format!("[mqtt]\nport = {port}\nkeep_alive_s = 2\nreconnect_min_ms = 100\nreconnect_max_ms = 1000\nstats_interval_s = 0.5\n");
    }
    if !text.contains("[http]") {
        // Many daemons run at once: each test that wants HTTP asks for its own port.
        tail += "[http]\nlisten = \"\"\n";
    }
    std::fs::write(&config, text + &tail).unwrap();
    Station { dir, config, root }
}

/// The daemon as a child process, with its JSON log lines collected.
pub struct Daemon {
    pub child: Child,
    pub log: Arc<Mutex<Vec<serde_json::Value>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Daemon {
    pub fn start(config: &Path) -> Daemon {
        let mut child = Command::new(bin())
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("INSPECTD_TEST_LOG").is_some() {
                    eprintln!("daemon: {line}");
                }
                let v = serde_json::from_str(&line).unwrap_or(serde_json::json!({ "raw": line }));
                l.lock().unwrap().push(v);
            }
        });
        Daemon {
            child,
            log,
            reader: Some(reader),
        }
    }

    pub fn signal(&self, sig: i32) {
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Some(status) = self.child.try_wait().unwrap() {
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Alarm ids the daemon logged as stored in its outbox.
    pub fn logged_alarm_ids(&self) -> Vec<u64> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["message"] == "Alarm." || v["fields"]["message"] == "Alarm.")
            .filter_map(|v| v["id"].as_u64().or_else(|| v["fields"]["id"].as_u64()))
            .collect()
    }

    pub fn log_text(&self) -> String {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `inspectd classify --json` on files: one JSON object per file.
pub fn classify_json(files: &[PathBuf]) -> Vec<serde_json::Value> {
    let out = Command::new(bin())
        .arg("classify")
        .arg("--json")
        .arg("--model")
        .arg(repo().join("models/neu_det.onnx"))
        .args(files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The folder's image files in file-name order.
pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// Frames cut from a strip by [`strip_frames`] are this wide and high; the strip moves
/// this many rows from one to the next (1 mm a pixel in the tests' `[strip]`).
pub const STRIP_SIDE: u32 = 400;
pub const STRIP_ADVANCE: u32 = 200;

/// A strip where a patch recurs every 600 mm (three frames), four times, with a scratch
/// once between: (class, column, the row its box is centred on), for [`strip_frames`].
pub const PERIODIC_STRIP: [(&str, u32, u32); 5] = [
    ("patches", 0, 500),
    ("patches", 0, 1100),
    ("scratches", 200, 1400),
    ("patches", 0, 1700),
    ("patches", 0, 2300),
];
/// Frames cut from it.
pub const PERIODIC_FRAMES: u32 = 14;

/// Held-out NEU images of `class` with exactly one labelled box, at least 60 px long.
pub fn single_box_images(class: &str, n: usize) -> Vec<(image::GrayImage, [u32; 4])> {
    let repo = repo();
    let val =
        inspectd::cli::eval::read_holdout(&repo.join("models/neu_det.split.json"), "val").unwrap();
    let mut out = Vec::new();
    for s in inspectd::cli::eval::list_samples(&neu(), Some(&val)).unwrap() {
        let stem = s.image.file_stem().unwrap().to_string_lossy().to_string();
        if !stem.starts_with(class) {
            continue;
        }
        let boxes = inspectd::cli::eval::read_voc(&s.annotation).unwrap();
        if let [b] = boxes.as_slice() {
            let [x0, y0, x1, y1] = b.rect;
            let (w, h) = (x1 - x0, y1 - y0);
            if w.max(h) >= 60 && w.min(h) >= 8 {
                out.push((image::open(&s.image).unwrap().to_luma8(), b.rect));
                if out.len() == n {
                    break;
                }
            }
        }
    }
    assert_eq!(out.len(), n, "{class}: not enough single-box images");
    out
}

/// The strip's defect-free surface: the box-free crops of the held-out images of this
/// class, a plain rolled surface like the one the laid patches and scratches images show
/// (the crazing images' box-free area, the first surface in file order, is crazed texture
/// on which the area output reports crazing areas).
pub const STRIP_SURFACE: &str = "inclusion";

/// A strip of defect-free surface (held-out crops), `STRIP_SIDE` across and long enough for
/// `frames` frames, with NEU images of one box laid in: (class, column, the row the box
/// is centred on). Returns the folder of its overlapping frames and each laid box on the
/// strip (class, x0, y0, x1, y1; 1 mm a pixel).
pub fn strip_frames(
    frames: u32,
    marks: &[(&'static str, u32, u32)],
) -> (tempfile::TempDir, Vec<(&'static str, [f64; 4])>) {
    let repo = repo();
    let val =
        inspectd::cli::eval::read_holdout(&repo.join("models/neu_det.split.json"), "val").unwrap();
    let samples = inspectd::cli::eval::list_samples(&neu(), Some(&val)).unwrap();
    let samples: Vec<_> = samples
        .into_iter()
        .filter(|s| {
            let stem = s.image.file_stem().unwrap().to_string_lossy();
            stem.starts_with(STRIP_SURFACE)
        })
        .collect();
    let crops = inspectd::cli::eval::box_free_crops(&samples, 96).unwrap();
    let length = STRIP_SIDE + (frames - 1) * STRIP_ADVANCE;
    let (_, clean) = inspectd::cli::clean::clean_frames(&crops, 1, (STRIP_SIDE, length))
        .pop()
        .unwrap();
    let mut strip = image::GrayImage::from_raw(STRIP_SIDE, length, clean).unwrap();
    let mut truth = Vec::new();
    let mut images: std::collections::BTreeMap<&str, (image::GrayImage, [u32; 4])> =
        std::collections::BTreeMap::new();
    for &(class, x, centre) in marks {
        let (img, b) = images
            .entry(class)
            .or_insert_with(|| single_box_images(class, 1).pop().unwrap());
        let y = centre - (b[1] + b[3]) / 2;
        lay_in(&mut strip, img, x, y);
        truth.push((class, shift(*b, x, y)));
    }
    let dir = tempfile::tempdir().unwrap();
    for k in 0..frames {
        image::imageops::crop_imm(&strip, 0, k * STRIP_ADVANCE, STRIP_SIDE, STRIP_SIDE)
            .to_image()
            .save(dir.path().join(format!("{k:02}.png")))
            .unwrap();
    }
    (dir, truth)
}

/// Lays `img` into `strip` at (x, y) as a defect lies on a strip (eval's own way: its
/// gray moved to the surface's, its border cross-faded).
fn lay_in(strip: &mut image::GrayImage, img: &image::GrayImage, x: u32, y: u32) {
    let fw = strip.width();
    let (w, h) = img.dimensions();
    inspectd::cli::clean::lay_in(strip, fw, img.as_raw(), w, h, x, y);
}

pub fn shift(r: [u32; 4], dx: u32, dy: u32) -> [f64; 4] {
    [
        (r[0] + dx) as f64,
        (r[1] + dy) as f64,
        (r[2] + dx) as f64,
        (r[3] + dy) as f64,
    ]
}

/// The shipped `[decide]` thresholds (boxes and areas, from `config/inspectd.toml`) as a
/// `[decide]` section: replays whose premise is what a line sees run with what a line runs,
/// not with the code's default of 0.5 for every class.
pub fn shipped_decide() -> String {
    let text = std::fs::read_to_string(repo().join("config/inspectd.toml")).unwrap();
    let shipped: toml::Table = toml::from_str(&text).unwrap();
    let mut decide = toml::Table::new();
    for key in ["thresholds", "area_thresholds"] {
        let value = shipped["decide"].get(key);
        let value = value.unwrap_or_else(|| panic!("config/inspectd.toml has no decide.{key}"));
        decide.insert(key.into(), value.clone());
    }
    let mut section = toml::Table::new();
    section.insert("decide".into(), decide.into());
    toml::to_string(&section).unwrap()
}
