//! The operator's interface: one TOML file, overridable from the environment as
//! `INSPECTD__<SECTION>__<KEY>`. Every field's `///` comment is its documentation;
//! `config/inspectd.toml` repeats them for the people who edit the file.
//!
//! Loading is two steps: serde shapes the file into [`Settings`] (unknown keys and wrong
//! types are errors), then [`Settings::validate`] checks the values and reports every
//! problem it finds, each naming its key.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Everything inspectd reads from its config file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Where this daemon stands; the three names form the MQTT topic root.
    pub station: StationConfig,
    /// Where frames come from.
    pub capture: CaptureConfig,
    /// Blur, Otsu threshold and candidate regions.
    #[serde(default)]
    pub preprocess: PreprocessConfig,
    /// The ONNX model and how it is run.
    pub model: ModelConfig,
    /// Per-class score thresholds.
    #[serde(default)]
    pub decide: DecideConfig,
    /// N-of-M alarms with hysteresis.
    #[serde(default)]
    pub alarm: AlarmConfig,
    /// The broker and the topics.
    pub mqtt: MqttConfig,
    /// Where the alarm outbox and counters live.
    #[serde(default)]
    pub state: StateConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// The HTTP face: metrics, health endpoints, the live page, evidence.
    #[serde(default)]
    pub http: HttpConfig,
    /// Images of what raised an alarm, kept under `state.dir/evidence`.
    #[serde(default)]
    pub evidence: EvidenceConfig,
    /// Camera and frame health: dark, saturated, no contrast, frozen.
    #[serde(default)]
    pub health: HealthConfig,
    /// Where on the strip each defect is, and one track per physical defect. Absent: off,
    /// and results are exactly what they are without it.
    #[serde(default)]
    pub strip: Option<StripConfig>,
    /// The Modbus TCP face for PLCs: a register map of the same truth. Off by default.
    #[serde(default)]
    pub modbus: ModbusConfig,
    /// The Sparkplug B edge node for Ignition and other SCADA hosts. Off by default.
    #[serde(default)]
    pub sparkplug: SparkplugConfig,
    /// The OPC UA server for SCADA and MES. Off by default.
    #[serde(default)]
    pub opcua: OpcUaConfig,
}

/// `[opcua]`: an OPC UA server (README, "OPC UA").
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OpcUaConfig {
    #[serde(default)]
    pub enabled: bool,
    /// Host name or address and port the endpoint listens on (and names in its URL).
    #[serde(default = "default_opcua_listen")]
    pub listen: String,
    /// Also offer the endpoint without security (no signing, no encryption).
    #[serde(default)]
    pub allow_none: bool,
    /// Let clients in without a user name.
    #[serde(default)]
    pub anonymous: bool,
    /// File of `user:password` lines (one per user; keep it mode 600).
    #[serde(default)]
    pub users_file: Option<PathBuf>,
    /// Trust every client certificate (for a first commissioning only): otherwise a
    /// client's certificate must be in `state.dir/opcua/pki/trusted/`.
    #[serde(default)]
    pub trust_all_clients: bool,
}

impl OpcUaConfig {
    /// `listen` as host and port (None when it is not `host:port`).
    pub fn host_port(&self) -> Option<(&str, u16)> {
        let (host, port) = self.listen.rsplit_once(':')?;
        Some((host, port.parse().ok()?)).filter(|_| !host.is_empty())
    }
}

impl Default for OpcUaConfig {
    fn default() -> Self {
        OpcUaConfig {
            enabled: false,
            listen: default_opcua_listen(),
            allow_none: false,
            anonymous: false,
            users_file: None,
            trust_all_clients: false,
        }
    }
}

/// Reads an OPC UA users file: `user:password` lines; blank lines and `#` comments are
/// skipped. An error names the line.
pub fn read_users(path: &Path) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut users = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once(':') {
            Some((u, pw))
                if !u.is_empty() && !pw.is_empty() && !u.contains(char::is_whitespace) =>
            {
                users.push((u.to_string(), pw.to_string()))
            }
            _ => {
                return Err(format!(
                    "{} line {}: not `user:password`",
                    path.display(),
                    i + 1
                ))
            }
        }
    }
    if users.is_empty() {
        return Err(format!("{}: no `user:password` line", path.display()));
    }
    Ok(users)
}

fn default_opcua_listen() -> String {
    "127.0.0.1:4840".into()
}

/// `[modbus]`: a Modbus TCP server (README, "Modbus TCP").
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModbusConfig {
    #[serde(default)]
    pub enabled: bool,
    /// Address and port to listen on. Modbus has no authentication: loopback unless the
    /// PLC network is one you trust (then its own address, not 0.0.0.0 on every network).
    #[serde(default = "default_modbus_listen")]
    pub listen: String,
    /// Clients connected at once; more are refused (a flood cannot lock the PLC out
    /// forever: idle ones are closed, see below).
    #[serde(default = "default_modbus_max_clients")]
    pub max_clients: u32,
    /// A connection without a request for this long is closed.
    #[serde(default = "default_modbus_idle_timeout")]
    pub idle_timeout_s: u64,
}

impl Default for ModbusConfig {
    fn default() -> Self {
        ModbusConfig {
            enabled: false,
            listen: default_modbus_listen(),
            max_clients: default_modbus_max_clients(),
            idle_timeout_s: default_modbus_idle_timeout(),
        }
    }
}

fn default_modbus_listen() -> String {
    "127.0.0.1:1502".into()
}
fn default_modbus_max_clients() -> u32 {
    8
}
fn default_modbus_idle_timeout() -> u64 {
    60
}

/// `[sparkplug]`: a Sparkplug B edge node on the broker of `[mqtt]` (README, "Sparkplug B").
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SparkplugConfig {
    #[serde(default)]
    pub enabled: bool,
    /// The Sparkplug group id.
    #[serde(default = "default_sparkplug_group")]
    pub group: String,
    /// The edge node id; empty: `<site>-<line>-<station>`.
    #[serde(default)]
    pub edge_node: String,
    /// The primary host application's id: when set, the node is born only while that
    /// host's `spBv1.0/STATE/<id>` says online, and dies and reconnects when it goes
    /// offline. Empty: born as soon as connected.
    #[serde(default)]
    pub primary_host: String,
}

impl Default for SparkplugConfig {
    fn default() -> Self {
        SparkplugConfig {
            enabled: false,
            group: default_sparkplug_group(),
            edge_node: String::new(),
            primary_host: String::new(),
        }
    }
}

fn default_sparkplug_group() -> String {
    "inspectd".into()
}

/// `[strip]`: the camera's view of the strip and how far the strip moves between frames.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StripConfig {
    /// Millimetres per pixel across the strip (CD, the frame's columns).
    pub mm_per_px_cd: f64,
    /// Millimetres per pixel along the strip (MD, the frame's rows; row 0 is the side
    /// the coil's head has passed, the strip moves up the image).
    pub mm_per_px_md: f64,
    /// The frame column where the strip's reference edge is: CD is measured from it.
    #[serde(default)]
    pub edge_px: u32,
    /// The line's speed, fixed, in mm/s: MD advances by speed x the time between frames
    /// (their capture timestamps). One of `speed_mm_s` and `advance_px`.
    #[serde(default)]
    pub speed_mm_s: Option<f64>,
    /// The strip advances by this many rows from one frame to the next (a camera
    /// triggered by an encoder every so many mm, or a replay of overlapping frames).
    #[serde(default)]
    pub advance_px: Option<u32>,
    /// The line tells its speed over MQTT: `"cmd/speed"` (mm/s) or `"cmd/encoder"` (an
    /// encoder count, `mm_per_count` mm a count). One of `speed_mm_s`, `advance_px` and
    /// this.
    #[serde(default)]
    pub speed_source: Option<SpeedSource>,
    /// Millimetres of strip per encoder count (`speed_source = "cmd/encoder"`).
    #[serde(default)]
    pub mm_per_count: Option<f64>,
    /// With `speed_source`: the speed is stale (reported in health) when nothing arrived
    /// for this many seconds.
    #[serde(default = "default_speed_stale_s")]
    pub speed_stale_s: f64,
    /// Two detections of one class in consecutive frames are one defect when their boxes
    /// on the strip overlap or are at most this far apart (mm).
    #[serde(default = "default_join_mm")]
    pub join_mm: f64,
    /// Periodic defects: tracks of one class at a constant MD pitch, at least
    /// `periodic_min_repeats` of them in a row, each within `periodic_tolerance_mm` of
    /// where the pitch puts it; pitches from `periodic_min_pitch_mm` to
    /// `periodic_max_pitch_mm` (a roll's circumference).
    #[serde(default = "default_periodic_min_repeats")]
    pub periodic_min_repeats: u32,
    #[serde(default = "default_periodic_tolerance_mm")]
    pub periodic_tolerance_mm: f64,
    #[serde(default = "default_periodic_min_pitch_mm")]
    pub periodic_min_pitch_mm: f64,
    #[serde(default = "default_periodic_max_pitch_mm")]
    pub periodic_max_pitch_mm: f64,
    /// Coil reports kept under `state.dir/coils/`; the oldest go first.
    #[serde(default = "default_keep_coils")]
    pub keep_coils: usize,
    /// When a finished coil is marked `block` (held for inspection).
    #[serde(default)]
    pub block: BlockRules,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum SpeedSource {
    #[serde(rename = "cmd/speed")]
    Speed,
    #[serde(rename = "cmd/encoder")]
    Encoder,
}

fn default_speed_stale_s() -> f64 {
    2.0
}

/// `[strip.block]`: a coil is blocked when any rule holds.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BlockRules {
    /// Per class: a defect of it longer (MD) than this many mm.
    #[serde(default)]
    pub longer_than_mm: BTreeMap<String, f64>,
    /// Per class: more than this many of its defects within any 100 m of the coil.
    #[serde(default)]
    pub per_100m: BTreeMap<String, u32>,
    /// Any periodic defect.
    #[serde(default)]
    pub periodic: bool,
}

fn default_join_mm() -> f64 {
    10.0
}

fn default_periodic_min_repeats() -> u32 {
    3
}

fn default_periodic_tolerance_mm() -> f64 {
    20.0
}

fn default_periodic_min_pitch_mm() -> f64 {
    100.0
}

fn default_periodic_max_pitch_mm() -> f64 {
    6000.0
}

fn default_keep_coils() -> usize {
    1000
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StationConfig {
    /// Plant or site name, e.g. `plant1`.
    pub site: String,
    /// Line name, e.g. `hsm2`.
    pub line: String,
    /// Station name on that line, e.g. `coiler`.
    pub station: String,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A V4L2 camera (`capture.device`).
    V4l2,
    /// A folder of images replayed in file-name order (`capture.path`).
    Dir,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CaptureConfig {
    /// `v4l2` or `dir`.
    pub source: SourceKind,
    /// V4L2 device node.
    #[serde(default = "default_device")]
    pub device: PathBuf,
    /// V4L2 frame width in pixels.
    #[serde(default = "default_width")]
    pub width: u32,
    /// V4L2 frame height in pixels.
    #[serde(default = "default_height")]
    pub height: u32,
    /// V4L2 pixel format: `GREY`, `YUYV` or `MJPG`.
    #[serde(default = "default_pixel_format")]
    pub pixel_format: String,
    /// `dir` source: the folder of PNG, JPEG or BMP images.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `dir` source: replay the folder forever (`true`) or once (`false`).
    #[serde(default)]
    pub r#loop: bool,
    /// Frames per second: the camera rate for V4L2, the replay rate for `dir`
    /// (0 = as fast as the pipeline takes them).
    #[serde(default)]
    pub fps: f64,
    /// `dir` source: deliver the folder as a live camera would: at `fps`, never waiting
    /// for the pipeline, dropping the oldest waiting frame when it is behind (to try a
    /// line's timing on recorded frames). A V4L2 camera is always live.
    #[serde(default)]
    pub live: bool,
    /// Frames that may wait between capture and preprocess. Live: when full, the oldest
    /// is dropped; each frame waiting adds a frame interval of latency when behind.
    #[serde(default = "default_queue")]
    pub queue: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PreprocessConfig {
    /// Gaussian kernel size in pixels: odd, 3 to 15.
    #[serde(default = "default_blur_kernel")]
    pub blur_kernel: u32,
    /// Gaussian sigma in pixels; 0 derives it from the kernel size as OpenCV does.
    #[serde(default)]
    pub blur_sigma: f64,
    /// Smallest candidate region kept, in pixels.
    #[serde(default = "default_min_region_area")]
    pub min_region_area: u32,
    /// Largest candidate region kept, in pixels.
    #[serde(default = "default_max_region_area")]
    pub max_region_area: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The ONNX file; its metadata (`<name>.json`) sits beside it.
    pub path: PathBuf,
    /// Lowest score a peak of the model's heat map needs to be kept as a detection at
    /// all (0 to 1). Only `inspectd eval` looks below the `[decide]` thresholds: keep this
    /// low so its precision/recall curves are complete.
    #[serde(default = "default_min_score")]
    pub min_score: f64,
    /// Two detections of one class whose boxes overlap by more than this (intersection
    /// over union, above 0 and at most 1) mark one defect: the surer is kept. 1 keeps
    /// every peak (with `candidates = "peaks"`).
    #[serde(default = "default_nms_iou")]
    pub nms_iou: f64,
    /// Which cells of the heat map may be a defect: `cells` (the default: every cell at
    /// or above `min_score`, each with the box it predicts, then `nms_iou`, so a cell
    /// beside a peak that reads the defect at another extent keeps its box as a second,
    /// weaker answer) or `peaks` (a cell whose heat is the highest of its 3 x 3
    /// neighbourhood, one box each: the decode before 2026-12-07). `cells` needs
    /// `nms_iou` below 1.
    #[serde(default)]
    pub candidates: Candidates,
    /// Most detections kept per frame, best first (1 to 10000).
    #[serde(default = "default_max_detections")]
    pub max_detections: usize,
    /// Classify threads, each running the model on its own frames (1 to 64); results
    /// still leave in frame order. 0 = the machine's cores minus one, at least one.
    #[serde(default)]
    pub workers: usize,
    /// Threads each worker's model run may use (1 to 64): above 1, one frame's matrix
    /// products are split across threads, so a frame is done sooner when cores are idle
    /// (lower latency), at some extra CPU per frame for the hand-offs.
    #[serde(default = "default_model_threads")]
    pub threads: usize,
    /// The first look: a small net that finds the windows of a frame that may hold a
    /// defect, so the detector runs on those only (`[model.first_look]`).
    #[serde(default)]
    pub first_look: FirstLookConfig,
}

/// `[model.first_look]`: where the detector looks.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FirstLookConfig {
    /// Run the first look and the detector only where it sees something. Off: the
    /// detector runs on every pixel of every frame.
    #[serde(default)]
    pub enabled: bool,
    /// The first-look ONNX file (its metadata beside it); default: `neu_look.onnx` in
    /// the folder of `model.path`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// A 32 x 32 cell is looked at closely when the first look's probability that a
    /// defect touches it is at least this (0 to 1).
    #[serde(default = "default_look_threshold")]
    pub threshold: f64,
    /// Side of the square tiles the frame is divided into, in pixels (a multiple of 32):
    /// the detector runs on each tile holding a flagged cell (or next to one)...
    #[serde(default = "default_look_tile")]
    pub tile: u32,
    /// ...with this much of the frame around it, in pixels (a multiple of 32), so what
    /// it reports inside the tile is what it would report on the whole frame.
    #[serde(default = "default_look_margin")]
    pub margin: u32,
    /// When the tiles to run would cover more than this share of the frame (0 to 1),
    /// the detector runs on the whole frame instead (it is cheaper then).
    #[serde(default = "default_look_max_share")]
    pub max_share: f64,
    /// After this many frames in a row on which the first look flagged every tile (a
    /// stretch full of defects), the look is skipped and the detector runs whole,
    /// looking again at every `whole_streak`-th frame, until a look flags less. The
    /// detector only ever runs on more, never less. 0: look at every frame.
    #[serde(default = "default_look_whole_streak")]
    pub whole_streak: u32,
}

fn default_look_threshold() -> f64 {
    0.1
}
fn default_look_tile() -> u32 {
    256
}
fn default_look_margin() -> u32 {
    64
}
fn default_look_max_share() -> f64 {
    0.6
}
fn default_look_whole_streak() -> u32 {
    4
}

impl Default for FirstLookConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            path: None,
            threshold: default_look_threshold(),
            tile: default_look_tile(),
            margin: default_look_margin(),
            max_share: default_look_max_share(),
            whole_streak: default_look_whole_streak(),
        }
    }
}

impl FirstLookConfig {
    /// The first-look model file for a detector at `model`.
    pub fn model_path(&self, model: &Path) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| model.with_file_name("neu_look.onnx"))
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DecideConfig {
    /// Per-class score thresholds, e.g. `{ scratches = 0.8 }`; classes not named use
    /// `default_threshold`.
    #[serde(default)]
    pub thresholds: BTreeMap<String, f64>,
    /// Threshold for classes not named in `thresholds`.
    #[serde(default = "default_threshold")]
    pub default_threshold: f64,
    /// Area defects, per class, e.g. `{ crazing = 0.9 }`: where the model's area output
    /// is at least this sure that a region's surface shows the class and no box of that
    /// class was reported there, the region itself is reported as one defect (texture
    /// defects such as crazing cover a region rather than make an object). Classes not
    /// named report boxes only. Needs a model with an area output.
    #[serde(default)]
    pub area_thresholds: BTreeMap<String, f64>,
    /// Shrink each defect's box to the candidate regions (Otsu blobs) centred inside it.
    /// Off by default: on NEU it costs box accuracy (README, "Preprocessing").
    #[serde(default)]
    pub snap_to_regions: bool,
    /// A frame whose difference hash equals the previous frame's (a stopped line under a
    /// running camera) does not count again towards the alarm windows: one defect under a
    /// stopped camera is one defect, not a frame's worth each frame.
    #[serde(default = "yes")]
    pub skip_repeats: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AlarmConfig {
    /// M: how many of the latest frames are looked at.
    #[serde(default = "default_window")]
    pub window: u32,
    /// N: raise when at least this many of the last M frames had the class.
    #[serde(default = "default_raise")]
    pub raise: u32,
    /// N_clear: clear when at most this many of the last M frames had it.
    #[serde(default = "default_clear")]
    pub clear: u32,
    /// Hold a raised alarm until it is acknowledged on `cmd/ack`.
    #[serde(default)]
    pub latch: bool,
    /// What the window counts: frames that show the class, or (with `[strip]`) frames
    /// where a new defect of the class was first seen, so one defect seen in several
    /// overlapping frames counts once.
    #[serde(default)]
    pub count: AlarmCount,
}

/// `model.candidates`: which heat-map cells the decode reads as candidate defects.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Candidates {
    /// The 3 x 3 peaks of each class's heat, one box each.
    Peaks,
    /// Every cell at or above `model.min_score`, each with its own box.
    #[default]
    Cells,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AlarmCount {
    #[default]
    Frames,
    Tracks,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MqttMode {
    /// Connect to a broker at `mqtt.host:mqtt.port`.
    External,
    /// Run a broker inside inspectd, listening on `mqtt.host:mqtt.port`.
    Embedded,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `external` or `embedded`.
    #[serde(default = "default_mode")]
    pub mode: MqttMode,
    /// Broker host (external) or the address to listen on (embedded).
    #[serde(default = "default_host")]
    pub host: String,
    /// Broker port.
    #[serde(default = "default_port")]
    pub port: u32,
    /// The embedded broker has no authentication, so it listens only on a loopback
    /// address unless this is true.
    #[serde(default)]
    pub embedded_allow_remote: bool,
    /// First part of every topic.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// MQTT client id; empty derives `inspectd-<site>-<line>-<station>`.
    #[serde(default)]
    pub client_id: String,
    /// QoS of `result` and `result/ok`: 0 or 1.
    #[serde(default)]
    pub result_qos: u8,
    /// Seconds between `stats` messages.
    #[serde(default = "default_stats_interval")]
    pub stats_interval_s: f64,
    /// MQTT keep-alive in seconds.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u64,
    /// First reconnect delay in milliseconds; doubles up to `reconnect_max_ms`.
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min_ms: u64,
    /// Longest reconnect delay in milliseconds.
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_ms: u64,
    /// Results waiting for the broker; beyond this they are dropped and counted.
    #[serde(default = "default_result_queue")]
    pub result_queue: usize,
    /// User name for the broker (optional).
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the broker password (never put the password in this file).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// TLS: CA certificate (PEM); setting it turns TLS on.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// TLS: client certificate (PEM), with `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// TLS: client private key (PEM), with `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Directory for the alarm outbox (systemd: `/var/lib/inspectd`).
    #[serde(default = "default_state_dir")]
    pub dir: PathBuf,
    /// Largest size of the pending alarms in the outbox; beyond it the oldest are dropped
    /// with an ERROR log and counted in `stats`.
    #[serde(default = "default_max_outbox_bytes")]
    pub max_outbox_bytes: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address and port of the HTTP face (`/metrics`, `/health/live`, `/health/ready`,
    /// the live page `/`, `/evidence/...`); empty turns it off. It has no authentication
    /// and serves frames of the line: keep it on loopback or a plant network.
    #[serde(default = "default_http_listen")]
    pub listen: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EvidenceConfig {
    /// Keep the frame (PNG) and a JSON sidecar of every raised alarm under
    /// `state.dir/evidence/YYYY-MM-DD/`.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Also keep every Nth frame with a defect (0: only alarms).
    #[serde(default)]
    pub sample_every: u64,
    /// Most bytes the evidence folder may hold; the oldest files go first.
    #[serde(default = "default_evidence_max_bytes")]
    pub max_bytes: u64,
    /// Files older than this many days are removed (0: no age limit).
    #[serde(default = "default_evidence_max_age_days")]
    pub max_age_days: u32,
    /// Frames that may wait for the evidence writer; when full, a frame is not kept and
    /// is counted (a slow disk never stalls the pipeline).
    #[serde(default = "default_evidence_queue")]
    pub queue: usize,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Too dark: the frame's mean gray level is below this (0 to 255).
    #[serde(default = "default_dark_below")]
    pub dark_below: f64,
    /// Saturated: more than this fraction of the pixels is at 250 or above (0 to 1).
    #[serde(default = "default_saturated_above")]
    pub saturated_above: f64,
    /// No contrast: the standard deviation of the blurred frame's gray levels is below
    /// this (a lens cap, a fogged lens, a lamp out on a uniform surface).
    #[serde(default = "default_min_contrast")]
    pub min_contrast: f64,
    /// Frozen: frames keep arriving but show the same image (difference hashes within
    /// `frozen_distance` bits of each other) for this many seconds (0: never reported).
    #[serde(default = "default_frozen_after_s")]
    pub frozen_after_s: f64,
    /// Hamming distance (bits of 64) under which two frames' difference hashes count as
    /// the same image for `frozen_after_s`.
    #[serde(default)]
    pub frozen_distance: u32,
    /// Consecutive frames a condition must hold (or be gone) before its state changes.
    #[serde(default = "default_confirm_frames")]
    pub confirm_frames: u32,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
    Journald,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `info,inspectd::mqtt=debug`.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// `pretty`, `json` or `journald`.
    #[serde(default = "default_log_format")]
    pub format: LogFormat,
}

fn default_device() -> PathBuf {
    PathBuf::from("/dev/video0")
}
fn default_width() -> u32 {
    1280
}
fn default_height() -> u32 {
    1024
}
fn default_pixel_format() -> String {
    "YUYV".into()
}
/// `localhost` or a loopback IP address (127.0.0.0/8, ::1).
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn default_queue() -> usize {
    1
}
fn default_blur_kernel() -> u32 {
    5
}
fn default_min_region_area() -> u32 {
    16
}
fn default_max_region_area() -> u32 {
    1 << 20
}
fn default_min_score() -> f64 {
    0.05
}
fn default_nms_iou() -> f64 {
    0.5
}
fn default_max_detections() -> usize {
    100
}
fn default_model_threads() -> usize {
    1
}
fn default_threshold() -> f64 {
    0.5
}
fn default_window() -> u32 {
    5
}
fn default_raise() -> u32 {
    3
}
fn default_clear() -> u32 {
    1
}
fn default_mode() -> MqttMode {
    MqttMode::External
}
fn default_host() -> String {
    "127.0.0.1".into()
}
fn default_port() -> u32 {
    1883
}
fn default_prefix() -> String {
    "inspectd".into()
}
fn default_stats_interval() -> f64 {
    5.0
}
fn default_keep_alive() -> u64 {
    5
}
fn default_reconnect_min() -> u64 {
    250
}
fn default_reconnect_max() -> u64 {
    10_000
}
fn default_result_queue() -> usize {
    64
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/inspectd")
}
fn default_max_outbox_bytes() -> u64 {
    16 << 20
}
fn yes() -> bool {
    true
}
fn default_http_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_evidence_max_bytes() -> u64 {
    1 << 30
}
fn default_evidence_max_age_days() -> u32 {
    30
}
fn default_evidence_queue() -> usize {
    4
}
fn default_dark_below() -> f64 {
    20.0
}
fn default_saturated_above() -> f64 {
    0.2
}
fn default_min_contrast() -> f64 {
    2.0
}
fn default_frozen_after_s() -> f64 {
    10.0
}
fn default_confirm_frames() -> u32 {
    3
}
fn default_log_level() -> String {
    "info".into()
}
fn default_log_format() -> LogFormat {
    LogFormat::Pretty
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self {
            blur_kernel: default_blur_kernel(),
            blur_sigma: 0.0,
            min_region_area: default_min_region_area(),
            max_region_area: default_max_region_area(),
        }
    }
}

impl ModelConfig {
    /// The classify threads to run: `workers`, or the cores minus one (at least one).
    pub fn worker_count(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism()
                .map_or(1, |n| n.get().saturating_sub(1))
                .max(1),
            n => n,
        }
    }

    /// The model at `path` with every other key at its default.
    pub fn with_path(path: PathBuf) -> Self {
        Self {
            path,
            min_score: default_min_score(),
            nms_iou: default_nms_iou(),
            candidates: Candidates::default(),
            max_detections: default_max_detections(),
            workers: 0,
            threads: 1,
            first_look: FirstLookConfig::default(),
        }
    }
}

impl Default for DecideConfig {
    fn default() -> Self {
        Self {
            thresholds: BTreeMap::new(),
            default_threshold: default_threshold(),
            area_thresholds: BTreeMap::new(),
            snap_to_regions: false,
            skip_repeats: true,
        }
    }
}

impl Default for AlarmConfig {
    fn default() -> Self {
        Self {
            window: default_window(),
            raise: default_raise(),
            clear: default_clear(),
            latch: false,
            count: AlarmCount::Frames,
        }
    }
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            dir: default_state_dir(),
            max_outbox_bytes: default_max_outbox_bytes(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_http_listen(),
        }
    }
}

impl Default for EvidenceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            sample_every: 0,
            max_bytes: default_evidence_max_bytes(),
            max_age_days: default_evidence_max_age_days(),
            queue: default_evidence_queue(),
        }
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            dark_below: default_dark_below(),
            saturated_above: default_saturated_above(),
            min_contrast: default_min_contrast(),
            frozen_after_s: default_frozen_after_s(),
            frozen_distance: 0,
            confirm_frames: default_confirm_frames(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: default_log_level(),
            format: default_log_format(),
        }
    }
}

/// Every problem found in a config, each naming its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    pub source: String,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} problem(s)", self.source, self.problems.len())?;
        for p in &self.problems {
            write!(f, "\n  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The sections of the file, in the order they are checked.
pub const SECTIONS: &[&str] = &[
    "station",
    "capture",
    "preprocess",
    "model",
    "decide",
    "alarm",
    "mqtt",
    "state",
    "log",
    "http",
    "evidence",
    "health",
    "strip",
    "modbus",
    "sparkplug",
    "opcua",
];

impl Settings {
    /// Reads `path`, applies `INSPECTD__SECTION__KEY` overrides from the environment and
    /// validates. A relative path written in the file is taken relative to the file's
    /// folder; one given in the environment, relative to the working directory (as any
    /// path typed on a command line is).
    pub fn load(path: &Path) -> Result<Settings, ConfigErrors> {
        Self::load_with_env(path, std::env::vars())
    }

    /// As [`Settings::load`], with the environment given (tests pass their own).
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigErrors> {
        let source = path.display().to_string();
        let fail = |problems: Vec<String>| ConfigErrors {
            source: source.clone(),
            problems,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| fail(vec![format!("cannot read the file: {e}")]))?;
        let env: std::collections::HashMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("INSPECTD__"))
            .collect();
        // `model.path` for INSPECTD__MODEL__PATH: the keys the environment set.
        let from_env: BTreeSet<String> = env
            .keys()
            .map(|k| {
                k["INSPECTD__".len()..]
                    .to_ascii_lowercase()
                    .replace("__", ".")
            })
            .collect();
        let merged = ::config::Config::builder()
            .add_source(::config::File::from_str(&text, ::config::FileFormat::Toml))
            .add_source(
                ::config::Environment::with_prefix("INSPECTD")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .source(Some(env)),
            )
            .build()
            .map_err(|e| fail(vec![e.to_string()]))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let settings = Self::deserialize_sections(&merged, base, &from_env).map_err(fail)?;
        let problems = settings.validate();
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(fail(problems))
        }
    }

    /// Deserialises section by section so that a typo in one section does not hide the
    /// problems of the others. When some sections fail, the ones that parsed are still
    /// validated (with placeholders for the rest), so one run reports every problem.
    fn deserialize_sections(
        merged: &::config::Config,
        base: &Path,
        from_env: &BTreeSet<String>,
    ) -> Result<Settings, Vec<String>> {
        let mut problems = Vec::new();
        let table = merged
            .clone()
            .try_deserialize::<BTreeMap<String, ::config::Value>>()
            .unwrap_or_default();
        for key in table.keys() {
            if !SECTIONS.contains(&key.as_str()) {
                problems.push(format!(
                    "{key}: unknown section (known: {})",
                    SECTIONS.join(", ")
                ));
            }
        }
        let mut failed = Vec::new();
        fn section<T: serde::de::DeserializeOwned>(
            table: &BTreeMap<String, ::config::Value>,
            name: &'static str,
            required: bool,
            problems: &mut Vec<String>,
            failed: &mut Vec<&'static str>,
        ) -> Option<T> {
            let parsed = match table.get(name) {
                Some(v) => v
                    .clone()
                    .try_deserialize::<T>()
                    .map_err(|e| format!("{name}: {e}")),
                None if required => Err(format!("{name}: missing section")),
                // An absent optional section takes its defaults.
                None => toml::from_str::<T>("").map_err(|e| format!("{name}: {e}")),
            };
            parsed
                .map_err(|e| {
                    problems.push(e);
                    failed.push(name);
                })
                .ok()
        }
        let (p, f) = (&mut problems, &mut failed);
        let station = section::<StationConfig>(&table, "station", true, p, f);
        let capture = section::<CaptureConfig>(&table, "capture", true, p, f);
        let preprocess = section::<PreprocessConfig>(&table, "preprocess", false, p, f);
        let model = section::<ModelConfig>(&table, "model", true, p, f);
        let decide = section::<DecideConfig>(&table, "decide", false, p, f);
        let alarm = section::<AlarmConfig>(&table, "alarm", false, p, f);
        let mqtt = section::<MqttConfig>(&table, "mqtt", true, p, f);
        let state = section::<StateConfig>(&table, "state", false, p, f);
        let log = section::<LogConfig>(&table, "log", false, p, f);
        let http = section::<HttpConfig>(&table, "http", false, p, f);
        let evidence = section::<EvidenceConfig>(&table, "evidence", false, p, f);
        let health = section::<HealthConfig>(&table, "health", false, p, f);
        let modbus = section::<ModbusConfig>(&table, "modbus", false, p, f);
        let sparkplug = section::<SparkplugConfig>(&table, "sparkplug", false, p, f);
        let opcua = section::<OpcUaConfig>(&table, "opcua", false, p, f);
        // `[strip]` is off when absent: no defaults to take.
        let strip = table
            .contains_key("strip")
            .then(|| section::<StripConfig>(&table, "strip", true, p, f))
            .flatten();
        let mut settings = Settings {
            station: station.unwrap_or_else(|| StationConfig {
                site: "x".into(),
                line: "x".into(),
                station: "x".into(),
            }),
            capture: capture.unwrap_or_else(|| {
                toml::from_str("source = \"v4l2\"").expect("placeholder parses")
            }),
            preprocess: preprocess.unwrap_or_default(),
            model: model
                .unwrap_or_else(|| toml::from_str("path = \"\"").expect("placeholder parses")),
            decide: decide.unwrap_or_default(),
            alarm: alarm.unwrap_or_default(),
            mqtt: mqtt.unwrap_or_else(|| toml::from_str("").expect("placeholder parses")),
            state: state.unwrap_or_default(),
            log: log.unwrap_or_default(),
            http: http.unwrap_or_default(),
            evidence: evidence.unwrap_or_default(),
            health: health.unwrap_or_default(),
            strip,
            modbus: modbus.unwrap_or_default(),
            sparkplug: sparkplug.unwrap_or_default(),
            opcua: opcua.unwrap_or_default(),
        };
        settings.resolve_paths(base, from_env);
        if problems.is_empty() {
            return Ok(settings);
        }
        // The placeholders' own complaints are not the operator's problems.
        let broken = |key: &str| failed.iter().any(|f| key.starts_with(&format!("{f}.")));
        problems.extend(settings.validate().into_iter().filter(|p| !broken(p)));
        Err(problems)
    }

    /// Makes relative paths absolute: against the config file's folder, or the working
    /// directory for a key the environment set.
    fn resolve_paths(&mut self, base: &Path, from_env: &BTreeSet<String>) {
        let cwd = std::env::current_dir().unwrap_or_default();
        let fix = |key: &str, p: &mut PathBuf| {
            if p.is_relative() {
                let from = if from_env.contains(key) { &cwd } else { base };
                *p = from.join(&*p);
            }
        };
        fix("model.path", &mut self.model.path);
        if let Some(p) = self.model.first_look.path.as_mut() {
            fix("model.first_look.path", p);
        }
        fix("state.dir", &mut self.state.dir);
        if let Some(p) = self.capture.path.as_mut() {
            fix("capture.path", p);
        }
        for (key, p) in [
            ("mqtt.password_file", &mut self.mqtt.password_file),
            ("mqtt.ca_file", &mut self.mqtt.ca_file),
            ("mqtt.cert_file", &mut self.mqtt.cert_file),
            ("mqtt.key_file", &mut self.mqtt.key_file),
            ("opcua.users_file", &mut self.opcua.users_file),
        ] {
            if let Some(p) = p {
                fix(key, p);
            }
        }
    }

    /// Checks the values; returns every problem found, each naming its key.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        for (key, value) in [
            ("station.site", &self.station.site),
            ("station.line", &self.station.line),
            ("station.station", &self.station.station),
            ("mqtt.prefix", &self.mqtt.prefix),
        ] {
            if value.is_empty() {
                p.push(format!("{key}: must not be empty"));
            } else if value.contains(['/', '+', '#']) || value.chars().any(char::is_whitespace) {
                p.push(format!("{key}: {value:?} must not contain '/', '+', '#' or spaces (it is part of a topic)"));
            }
        }
        let c = &self.capture;
        match c.source {
            SourceKind::Dir => match &c.path {
                None => p.push("capture.path: required when capture.source = \"dir\"".into()),
                Some(path) if !path.is_dir() => {
                    p.push(format!("capture.path: {} is not a folder", path.display()))
                }
                Some(_) => {}
            },
            SourceKind::V4l2 => {
                if !matches!(c.pixel_format.as_str(), "GREY" | "YUYV" | "MJPG") {
                    p.push(format!(
                        "capture.pixel_format: {:?} is not one of GREY, YUYV, MJPG",
                        c.pixel_format
                    ));
                }
                if c.width == 0 || c.height == 0 || c.width > 16384 || c.height > 16384 {
                    p.push(format!(
                        "capture.width/height: {}x{} is not a frame size",
                        c.width, c.height
                    ));
                }
            }
        }
        if !(c.fps.is_finite() && (0.0..=1000.0).contains(&c.fps)) {
            p.push(format!("capture.fps: {} is not a rate (0 to 1000)", c.fps));
        }
        if !(1..=1024).contains(&c.queue) {
            p.push(format!(
                "capture.queue: {} is not a queue length (1 to 1024)",
                c.queue
            ));
        }
        let pre = &self.preprocess;
        if pre.blur_kernel.is_multiple_of(2) || !(3..=15).contains(&pre.blur_kernel) {
            p.push(format!(
                "preprocess.blur_kernel: {} is not an odd size from 3 to 15",
                pre.blur_kernel
            ));
        }
        if !(pre.blur_sigma.is_finite() && (0.0..=20.0).contains(&pre.blur_sigma)) {
            p.push(format!(
                "preprocess.blur_sigma: {} is not a sigma (0 to 20; 0 = from the kernel)",
                pre.blur_sigma
            ));
        }
        if pre.min_region_area > pre.max_region_area {
            p.push(format!(
                "preprocess.min_region_area: {} is larger than preprocess.max_region_area ({})",
                pre.min_region_area, pre.max_region_area
            ));
        }
        if !self.model.path.is_file() {
            p.push(format!(
                "model.path: {} does not exist",
                self.model.path.display()
            ));
        }
        if !(self.model.min_score.is_finite() && (0.0..=1.0).contains(&self.model.min_score)) {
            p.push(format!(
                "model.min_score: {} is not a score (0 to 1)",
                self.model.min_score
            ));
        }
        if !(self.model.nms_iou > 0.0 && self.model.nms_iou <= 1.0) {
            p.push(format!(
                "model.nms_iou: {} is not an overlap (above 0, at most 1; 1 keeps every peak)",
                self.model.nms_iou
            ));
        }
        if self.model.candidates == Candidates::Cells && self.model.nms_iou >= 1.0 {
            p.push(
                "model.candidates = \"cells\" (the default) needs model.nms_iou below 1 \
                 (every cell's box would be a defect); set model.candidates = \"peaks\" to \
                 keep every peak"
                    .to_string(),
            );
        }
        if self.model.workers > 64 {
            p.push(format!(
                "model.workers: {} is not a thread count (1 to 64; 0 = cores minus one)",
                self.model.workers
            ));
        }
        if !(1..=64).contains(&self.model.threads) {
            p.push(format!(
                "model.threads: {} is not a thread count (1 to 64)",
                self.model.threads
            ));
        }
        let look = &self.model.first_look;
        if look.enabled && !look.model_path(&self.model.path).is_file() {
            p.push(format!(
                "model.first_look.path: {} does not exist (the first look is enabled)",
                look.model_path(&self.model.path).display()
            ));
        }
        if !(look.threshold.is_finite() && (0.0..=1.0).contains(&look.threshold)) {
            p.push(format!(
                "model.first_look.threshold: {} is not a probability (0 to 1)",
                look.threshold
            ));
        }
        for (key, v) in [("tile", look.tile), ("margin", look.margin)] {
            if v % 32 != 0 || v > 4096 || (key == "tile" && v == 0) {
                p.push(format!(
                    "model.first_look.{key}: {v} is not a multiple of 32 from {} to 4096",
                    if key == "tile" { 32 } else { 0 }
                ));
            }
        }
        if !(look.max_share.is_finite() && (0.0..=1.0).contains(&look.max_share)) {
            p.push(format!(
                "model.first_look.max_share: {} is not a share (0 to 1)",
                look.max_share
            ));
        }
        if look.whole_streak > 10_000 {
            p.push(format!(
                "model.first_look.whole_streak: {} frames is more than 10000 (0 looks at every frame)",
                look.whole_streak
            ));
        }
        if let Some(st) = &self.strip {
            for (key, v) in [
                ("mm_per_px_cd", st.mm_per_px_cd),
                ("mm_per_px_md", st.mm_per_px_md),
            ] {
                if !(v.is_finite() && v > 0.0 && v <= 1000.0) {
                    p.push(format!(
                        "strip.{key}: {v} is not a pixel size (above 0, at most 1000 mm)"
                    ));
                }
            }
            let sources = [
                st.speed_mm_s.is_some(),
                st.advance_px.is_some(),
                st.speed_source.is_some(),
            ];
            if sources.iter().filter(|&&s| s).count() != 1 {
                p.push(
                    "strip: give exactly one of speed_mm_s (a fixed line speed), advance_px (rows the strip moves between frames) and speed_source (\"cmd/speed\" or \"cmd/encoder\": the line tells it over MQTT)"
                        .to_string(),
                );
            }
            if let Some(v) = st.speed_mm_s {
                if !(v.is_finite() && v > 0.0 && v <= 100_000.0) {
                    p.push(format!(
                        "strip.speed_mm_s: {v} is not a line speed (above 0, at most 100000 mm/s)"
                    ));
                }
            }
            if st.advance_px == Some(0) {
                p.push("strip.advance_px: 0 rows: the strip would never move".to_string());
            }
            match (st.speed_source, st.mm_per_count) {
                (Some(SpeedSource::Encoder), None) => p.push(
                    "strip.mm_per_count: needed with speed_source = \"cmd/encoder\" (mm of strip per count)"
                        .to_string(),
                ),
                (Some(SpeedSource::Encoder), Some(v)) if !(v.is_finite() && v > 0.0 && v <= 1000.0) => {
                    p.push(format!(
                        "strip.mm_per_count: {v} is not a length per count (above 0, at most 1000 mm)"
                    ))
                }
                (Some(SpeedSource::Encoder), Some(_)) => {}
                (_, Some(_)) => p.push(
                    "strip.mm_per_count: only used with speed_source = \"cmd/encoder\"".to_string(),
                ),
                (_, None) => {}
            }
            if !(st.speed_stale_s.is_finite()
                && st.speed_stale_s > 0.0
                && st.speed_stale_s <= 3600.0)
            {
                p.push(format!(
                    "strip.speed_stale_s: {} is not a time (above 0, at most 3600 s)",
                    st.speed_stale_s
                ));
            }
            for (key, v) in [
                ("join_mm", st.join_mm),
                ("periodic_tolerance_mm", st.periodic_tolerance_mm),
            ] {
                if !(v.is_finite() && (0.0..=10_000.0).contains(&v)) {
                    p.push(format!(
                        "strip.{key}: {v} is not a distance (0 to 10000 mm)"
                    ));
                }
            }
            let pitch = [st.periodic_min_pitch_mm, st.periodic_max_pitch_mm];
            if !(pitch.iter().all(|v| v.is_finite() && *v > 0.0) && pitch[0] <= pitch[1]) {
                p.push(format!(
                    "strip.periodic_min_pitch_mm / periodic_max_pitch_mm: {} / {} is not a range of pitches (above 0, min at most max)",
                    pitch[0], pitch[1]
                ));
            }
            if !(2..=1000).contains(&st.periodic_min_repeats) {
                p.push(format!(
                    "strip.periodic_min_repeats: {} is not a count of repeats (2 to 1000)",
                    st.periodic_min_repeats
                ));
            }
            if st.keep_coils == 0 {
                p.push("strip.keep_coils: 0 would keep no coil report".to_string());
            }
            for (class, v) in &st.block.longer_than_mm {
                if !(v.is_finite() && *v >= 0.0) {
                    p.push(format!(
                        "strip.block.longer_than_mm.{class}: {v} is not a length (0 or more mm)"
                    ));
                }
            }
        } else if self.alarm.count == AlarmCount::Tracks {
            p.push(
                "alarm.count: \"tracks\" needs a [strip] section (tracks are followed on the strip)"
                    .to_string(),
            );
        }
        if !(1..=10000).contains(&self.model.max_detections) {
            p.push(format!(
                "model.max_detections: {} is not a count (1 to 10000)",
                self.model.max_detections
            ));
        }
        for (key, table) in [
            ("thresholds", &self.decide.thresholds),
            ("area_thresholds", &self.decide.area_thresholds),
        ] {
            for (class, t) in table {
                if !(0.0..=1.0).contains(t) {
                    p.push(format!("decide.{key}.{class}: {t} is not a score (0 to 1)"));
                }
            }
        }
        if !(0.0..=1.0).contains(&self.decide.default_threshold) {
            p.push(format!(
                "decide.default_threshold: {} is not a score (0 to 1)",
                self.decide.default_threshold
            ));
        }
        let a = &self.alarm;
        if !(1..=1000).contains(&a.window) {
            p.push(format!(
                "alarm.window: {} is not a window (1 to 1000 frames)",
                a.window
            ));
        }
        if a.raise == 0 || a.raise > a.window {
            p.push(format!(
                "alarm.raise: {} must be from 1 to alarm.window ({})",
                a.raise, a.window
            ));
        }
        if a.clear >= a.raise {
            p.push(format!(
                "alarm.clear: {} must be below alarm.raise ({}) for hysteresis",
                a.clear, a.raise
            ));
        }
        let m = &self.mqtt;
        if !(1..=65535).contains(&m.port) {
            p.push(format!("mqtt.port: {} is not a port (1-65535)", m.port));
        }
        if m.host.is_empty() {
            p.push("mqtt.host: must not be empty".into());
        }
        if m.result_qos > 1 {
            p.push(format!("mqtt.result_qos: {} is not 0 or 1", m.result_qos));
        }
        if !(m.stats_interval_s.is_finite() && m.stats_interval_s >= 0.1) {
            p.push(format!(
                "mqtt.stats_interval_s: {} is too short (at least 0.1)",
                m.stats_interval_s
            ));
        }
        if !(1..=3600).contains(&m.keep_alive_s) {
            p.push(format!(
                "mqtt.keep_alive_s: {} is not from 1 to 3600",
                m.keep_alive_s
            ));
        }
        if m.reconnect_min_ms == 0 || m.reconnect_min_ms > m.reconnect_max_ms {
            p.push(format!(
                "mqtt.reconnect_min_ms: {} must be at least 1 and at most mqtt.reconnect_max_ms ({})",
                m.reconnect_min_ms, m.reconnect_max_ms
            ));
        }
        if m.result_queue == 0 {
            p.push("mqtt.result_queue: must be at least 1".into());
        }
        if m.password_file.is_some() && m.username.is_none() {
            p.push("mqtt.password_file: set mqtt.username too".into());
        }
        if let Some(f) = &m.password_file {
            if !f.is_file() {
                p.push(format!(
                    "mqtt.password_file: {} does not exist",
                    f.display()
                ));
            }
        }
        for (key, file) in [
            ("mqtt.ca_file", &m.ca_file),
            ("mqtt.cert_file", &m.cert_file),
            ("mqtt.key_file", &m.key_file),
        ] {
            if let Some(f) = file {
                if !f.is_file() {
                    p.push(format!("{key}: {} does not exist", f.display()));
                }
            }
        }
        if m.cert_file.is_some() != m.key_file.is_some() {
            p.push("mqtt.cert_file: set together with mqtt.key_file".into());
        }
        if (m.cert_file.is_some() || m.key_file.is_some()) && m.ca_file.is_none() {
            p.push("mqtt.ca_file: required when a client certificate is set".into());
        }
        if m.mode == MqttMode::Embedded && !m.embedded_allow_remote && !is_loopback(&m.host) {
            p.push(format!(
                "mqtt.host: {:?} is not a loopback address; the embedded broker has no \
                 authentication, so it listens on loopback only unless \
                 mqtt.embedded_allow_remote = true",
                m.host
            ));
        }
        if m.mode == MqttMode::Embedded && m.ca_file.is_some() {
            p.push(
                "mqtt.ca_file: TLS is for external brokers; the embedded broker serves plain MQTT"
                    .into(),
            );
        }
        let mb = &self.modbus;
        if mb.enabled && mb.listen.parse::<std::net::SocketAddr>().is_err() {
            p.push(format!(
                "modbus.listen: {:?} is not an address and port (such as 127.0.0.1:1502)",
                mb.listen
            ));
        }
        if !(1..=256).contains(&mb.max_clients) {
            p.push(format!(
                "modbus.max_clients: {} is not a client count (1 to 256)",
                mb.max_clients
            ));
        }
        if !(1..=86400).contains(&mb.idle_timeout_s) {
            p.push(format!(
                "modbus.idle_timeout_s: {} is not a time (1 to 86400 s)",
                mb.idle_timeout_s
            ));
        }
        let ua = &self.opcua;
        if ua.enabled {
            match ua.host_port() {
                Some((_, port)) if port > 0 => {}
                _ => p.push(format!(
                    "opcua.listen: {:?} is not a host and port (such as 127.0.0.1:4840)",
                    ua.listen
                )),
            }
            if !ua.anonymous && ua.users_file.is_none() {
                p.push("opcua: give users_file (user:password lines) or anonymous = true; nobody could log in".into());
            }
            if let Some(f) = &ua.users_file {
                if let Err(e) = read_users(f) {
                    p.push(format!("opcua.users_file: {e}"));
                }
            }
        }
        let sp = &self.sparkplug;
        for (key, value, may_be_empty) in [
            ("sparkplug.group", &sp.group, false),
            ("sparkplug.edge_node", &sp.edge_node, true),
            ("sparkplug.primary_host", &sp.primary_host, true),
        ] {
            if value.is_empty() && !may_be_empty {
                p.push(format!("{key}: must not be empty"));
            } else if value.contains(['/', '+', '#']) || value.chars().any(char::is_whitespace) {
                p.push(format!(
                    "{key}: {value:?} must not contain '/', '+', '#' or spaces (it is part of a Sparkplug topic)"
                ));
            }
        }
        if self.state.max_outbox_bytes < 4096 {
            p.push(format!(
                "state.max_outbox_bytes: {} is too small (at least 4096)",
                self.state.max_outbox_bytes
            ));
        }
        if !self.http.listen.is_empty() && self.http.listen.parse::<std::net::SocketAddr>().is_err()
        {
            p.push(format!(
                "http.listen: {:?} is not an address and port such as \"127.0.0.1:8080\" (empty turns HTTP off)",
                self.http.listen
            ));
        }
        let e = &self.evidence;
        if e.max_bytes < 1 << 20 {
            p.push(format!(
                "evidence.max_bytes: {} is too small (at least 1048576)",
                e.max_bytes
            ));
        }
        if !(1..=1024).contains(&e.queue) {
            p.push(format!(
                "evidence.queue: {} is not a queue length (1 to 1024)",
                e.queue
            ));
        }
        let h = &self.health;
        if !(h.dark_below.is_finite() && (0.0..=255.0).contains(&h.dark_below)) {
            p.push(format!(
                "health.dark_below: {} is not a gray level (0 to 255)",
                h.dark_below
            ));
        }
        if !(h.saturated_above.is_finite() && (0.0..=1.0).contains(&h.saturated_above)) {
            p.push(format!(
                "health.saturated_above: {} is not a fraction (0 to 1)",
                h.saturated_above
            ));
        }
        if !(h.min_contrast.is_finite() && (0.0..=128.0).contains(&h.min_contrast)) {
            p.push(format!(
                "health.min_contrast: {} is not a standard deviation of gray levels (0 to 128)",
                h.min_contrast
            ));
        }
        if !(h.frozen_after_s.is_finite() && (0.0..=86400.0).contains(&h.frozen_after_s)) {
            p.push(format!(
                "health.frozen_after_s: {} is not a duration (0 to 86400 s; 0 = off)",
                h.frozen_after_s
            ));
        }
        if h.frozen_distance > 32 {
            p.push(format!(
                "health.frozen_distance: {} is not a distance (0 to 32 bits)",
                h.frozen_distance
            ));
        }
        if !(1..=1000).contains(&h.confirm_frames) {
            p.push(format!(
                "health.confirm_frames: {} is not a count (1 to 1000)",
                h.confirm_frames
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            p.push(format!(
                "log.level: {:?} is not a tracing filter: {e}",
                self.log.level
            ));
        }
        p
    }

    /// `<prefix>/<site>/<line>/<station>`
    pub fn topic_root(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.mqtt.prefix, self.station.site, self.station.line, self.station.station
        )
    }

    /// The Sparkplug edge node id: `sparkplug.edge_node`, or `<site>-<line>-<station>`.
    pub fn edge_node(&self) -> String {
        if self.sparkplug.edge_node.is_empty() {
            format!(
                "{}-{}-{}",
                self.station.site, self.station.line, self.station.station
            )
        } else {
            self.sparkplug.edge_node.clone()
        }
    }

    pub fn client_id(&self) -> String {
        if self.mqtt.client_id.is_empty() {
            format!(
                "inspectd-{}-{}-{}",
                self.station.site, self.station.line, self.station.station
            )
        } else {
            self.mqtt.client_id.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, body: &str) -> PathBuf {
        std::fs::write(dir.join("m.onnx"), b"x").unwrap();
        std::fs::create_dir_all(dir.join("imgs")).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, body).unwrap();
        path
    }

    const GOOD: &str = r#"
[station]
site = "s"
line = "l"
station = "st"
[capture]
source = "dir"
path = "imgs"
[model]
path = "m.onnx"
[mqtt]
port = 1883
"#;

    #[test]
    fn a_minimal_file_loads_with_defaults_and_relative_paths() {
        let dir = tempfile::tempdir().unwrap();
        let s = Settings::load_with_env(&write(dir.path(), GOOD), []).unwrap();
        assert_eq!(s.alarm.window, 5);
        assert_eq!(s.model.path, dir.path().join("m.onnx"));
        assert_eq!(s.topic_root(), "inspectd/s/l/st");
        assert_eq!(s.client_id(), "inspectd-s-l-st");
    }

    #[test]
    fn environment_overrides_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let env = [("INSPECTD__MQTT__PORT".to_string(), "1884".to_string())];
        let s = Settings::load_with_env(&write(dir.path(), GOOD), env).unwrap();
        assert_eq!(s.mqtt.port, 1884);
    }

    #[test]
    fn a_relative_path_from_the_environment_is_relative_to_the_working_directory() {
        let dir = tempfile::tempdir().unwrap();
        let env = [
            (
                "INSPECTD__MODEL__PATH".to_string(),
                "models/neu_det.onnx".to_string(),
            ),
            ("INSPECTD__STATE__DIR".to_string(), "/var/tmp/s".to_string()),
        ];
        let s = Settings::load_with_env(&write(dir.path(), GOOD), env).unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(s.model.path, cwd.join("models/neu_det.onnx"));
        assert_eq!(s.state.dir, Path::new("/var/tmp/s"));
        // The file's own relative paths stay relative to the file.
        let s = Settings::load_with_env(&write(dir.path(), GOOD), []).unwrap();
        assert_eq!(s.model.path, dir.path().join("m.onnx"));
    }

    #[test]
    fn an_opcua_face_nobody_could_use_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let load = |extra: &str| {
            Settings::load_with_env(&write(dir.path(), &format!("{GOOD}[opcua]\n{extra}")), [])
        };
        let err = load("enabled = true\n").unwrap_err();
        assert!(err.to_string().contains("nobody could log in"), "{err}");
        let err = load("enabled = true\nanonymous = true\nlisten = \"4840\"\n").unwrap_err();
        assert!(err.to_string().contains("opcua.listen"), "{err}");
        std::fs::write(dir.path().join("users"), "operator secret\n").unwrap();
        let err = load("enabled = true\nusers_file = \"users\"\n").unwrap_err();
        assert!(
            err.to_string().contains("line 1: not `user:password`"),
            "{err}"
        );
        std::fs::write(dir.path().join("users"), "# plant\noperator:s3cret\n").unwrap();
        let s = load("enabled = true\nusers_file = \"users\"\n").unwrap();
        assert_eq!(
            s.opcua.users_file.as_deref(),
            Some(dir.path().join("users").as_path())
        );
        assert!(!s.opcua.allow_none && !s.opcua.anonymous && !s.opcua.trust_all_clients);
        assert_eq!(
            read_users(&dir.path().join("users")).unwrap(),
            [("operator".to_string(), "s3cret".to_string())]
        );
    }

    #[test]
    fn unknown_keys_in_two_sections_are_both_reported() {
        let dir = tempfile::tempdir().unwrap();
        let body = GOOD
            .replace("port = 1883", "port = 1883\nprot = 1")
            .replace("[model]", "[model]\npaht = 1");
        let err = Settings::load_with_env(&write(dir.path(), &body), []).unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
        assert!(
            err.problems[0].starts_with("model:") && err.problems[0].contains("paht"),
            "{err}"
        );
        assert!(
            err.problems[1].starts_with("mqtt:") && err.problems[1].contains("prot"),
            "{err}"
        );
    }

    #[test]
    fn a_typo_does_not_hide_the_bad_values_of_other_sections() {
        let dir = tempfile::tempdir().unwrap();
        let body = GOOD.replace("port = 1883", "port = 70000")
            + "[alarm]\nwindow = 3\nraise = 5\nwindoww = 1\n";
        let err = Settings::load_with_env(&write(dir.path(), &body), []).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("alarm: unknown field `windoww`"), "{text}");
        assert!(
            text.contains("mqtt.port: 70000 is not a port (1-65535)"),
            "{text}"
        );
        assert!(
            !text.contains("alarm.raise"),
            "the broken section is reported once, by serde: {text}"
        );
        assert_eq!(err.problems.len(), 2, "{text}");
    }

    #[test]
    fn every_bad_value_is_reported_with_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let body = GOOD.replace("port = 1883", "port = 70000")
            + "[alarm]\nwindow = 3\nraise = 5\nclear = 5\n[preprocess]\nblur_kernel = 4\n";
        let err = Settings::load_with_env(&write(dir.path(), &body), []).unwrap_err();
        let text = err.to_string();
        for needle in [
            "mqtt.port: 70000 is not a port (1-65535)",
            "alarm.raise: 5 must be from 1 to alarm.window (3)",
            "alarm.clear: 5 must be below alarm.raise",
            "preprocess.blur_kernel: 4 is not an odd size",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert_eq!(err.problems.len(), 4, "{text}");
    }

    #[test]
    fn the_overlap_that_makes_one_defect_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let s = Settings::load_with_env(&write(dir.path(), GOOD), []).unwrap();
        assert_eq!(s.model.nms_iou, 0.5, "the default");
        for (bad, needle) in [
            ("0", "model.nms_iou: 0 is not an overlap"),
            ("1.5", "model.nms_iou: 1.5 is not an overlap"),
            ("nan", "model.nms_iou: NaN is not an overlap"),
        ] {
            let body = GOOD.replace(
                "path = \"m.onnx\"",
                &format!("path = \"m.onnx\"\nnms_iou = {bad}"),
            );
            let err = Settings::load_with_env(&write(dir.path(), &body), []).unwrap_err();
            assert!(err.to_string().contains(needle), "{bad}: {err}");
        }
        let body = GOOD.replace(
            "path = \"m.onnx\"",
            "path = \"m.onnx\"\nnms_iou = 1\ncandidates = \"peaks\"",
        );
        let s = Settings::load_with_env(&write(dir.path(), &body), []).unwrap();
        assert_eq!(s.model.nms_iou, 1.0, "1 keeps every peak");
    }

    #[test]
    fn which_cells_are_candidates_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let s = Settings::load_with_env(&write(dir.path(), GOOD), []).unwrap();
        assert_eq!(s.model.candidates, Candidates::Cells, "the default");
        let with =
            |extra: &str| GOOD.replace("path = \"m.onnx\"", &format!("path = \"m.onnx\"\n{extra}"));
        let s = Settings::load_with_env(&write(dir.path(), &with("candidates = \"peaks\"")), [])
            .unwrap();
        assert_eq!(s.model.candidates, Candidates::Peaks);
        let err =
            Settings::load_with_env(&write(dir.path(), &with("nms_iou = 1")), []).unwrap_err();
        assert!(
            err.to_string()
                .contains("model.candidates = \"cells\" (the default) needs model.nms_iou below 1"),
            "{err}"
        );
        let err = Settings::load_with_env(&write(dir.path(), &with("candidates = \"all\"")), [])
            .unwrap_err();
        assert!(err.to_string().contains("candidates"), "{err}");
        assert!(err.to_string().contains("all"), "{err}");
    }

    #[test]
    fn the_first_looks_whole_streak_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let s = Settings::load_with_env(&write(dir.path(), GOOD), []).unwrap();
        assert_eq!(s.model.first_look.whole_streak, 4, "the default");
        let body = GOOD.to_string() + "[model.first_look]\nwhole_streak = 20000\n";
        let err = Settings::load_with_env(&write(dir.path(), &body), []).unwrap_err();
        assert!(
            err.to_string()
                .contains("model.first_look.whole_streak: 20000 frames is more than 10000"),
            "{err}"
        );
        let body = GOOD.to_string() + "[model.first_look]\nwhole_streak = 0\n";
        let s = Settings::load_with_env(&write(dir.path(), &body), []).unwrap();
        assert_eq!(s.model.first_look.whole_streak, 0, "0 looks at every frame");
    }

    #[test]
    fn http_evidence_and_health_values_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let body = GOOD.to_string()
            + "[http]\nlisten = \"localhost:8080\"\n\
               [evidence]\nmax_bytes = 10\nqueue = 0\n\
               [health]\ndark_below = 300\nsaturated_above = 2\nmin_contrast = -1\n\
               frozen_after_s = -5\nfrozen_distance = 40\nconfirm_frames = 0\n";
        let err = Settings::load_with_env(&write(dir.path(), &body), []).unwrap_err();
        let text = err.to_string();
        for key in [
            "http.listen: \"localhost:8080\" is not an address and port",
            "evidence.max_bytes: 10 is too small",
            "evidence.queue: 0",
            "health.dark_below: 300",
            "health.saturated_above: 2",
            "health.min_contrast: -1",
            "health.frozen_after_s: -5",
            "health.frozen_distance: 40",
            "health.confirm_frames: 0",
        ] {
            assert!(text.contains(key), "missing {key:?} in\n{text}");
        }
        assert_eq!(err.problems.len(), 9, "{text}");
        // The defaults, and HTTP turned off.
        let body = GOOD.to_string() + "[http]\nlisten = \"\"\n";
        let s = Settings::load_with_env(&write(dir.path(), &body), []).unwrap();
        assert_eq!(s.http.listen, "");
        assert!(s.evidence.enabled && s.decide.skip_repeats);
        assert_eq!(s.health.frozen_after_s, 10.0);
    }

    #[test]
    fn strip_is_off_unless_configured_and_its_bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let s = Settings::load_with_env(&write(dir.path(), GOOD), []).unwrap();
        assert_eq!(s.strip, None);
        let body = GOOD.to_string()
            + "[strip]\nmm_per_px_cd = 0\nmm_per_px_md = -1\nspeed_mm_s = 1000.0\nadvance_px = 10\njoin_mm = -2\n";
        let err = Settings::load_with_env(&write(dir.path(), &body), []).unwrap_err();
        let text = err.to_string();
        for key in [
            "strip.mm_per_px_cd: 0",
            "strip.mm_per_px_md: -1",
            "strip: give exactly one of speed_mm_s",
            "strip.join_mm: -2",
        ] {
            assert!(text.contains(key), "missing {key:?} in\n{text}");
        }
        let body = GOOD.to_string()
            + "[strip]\nmm_per_px_cd = 0.5\nmm_per_px_md = 0.5\nadvance_px = 0\nspeed = 3\n";
        let text = Settings::load_with_env(&write(dir.path(), &body), [])
            .unwrap_err()
            .to_string();
        assert!(text.contains("strip: unknown field `speed`"), "{text}");
        let body = GOOD.to_string()
            + "[strip]\nmm_per_px_cd = 0.5\nmm_per_px_md = 0.25\nadvance_px = 512\n";
        let s = Settings::load_with_env(&write(dir.path(), &body), []).unwrap();
        let st = s.strip.unwrap();
        assert_eq!(
            (st.advance_px, st.speed_mm_s, st.join_mm),
            (Some(512), None, 10.0)
        );
        // The speed over MQTT: an encoder needs its mm per count; the block rules and
        // periodic settings are checked; tracks counted by alarms need [strip].
        let body = (GOOD.to_string() + "[alarm]\ncount = \"tracks\"\n")
            + "[strip]\nmm_per_px_cd = 0.5\nmm_per_px_md = 0.5\nspeed_source = \"cmd/encoder\"\nspeed_stale_s = 0\n\
               periodic_min_pitch_mm = 900\nperiodic_max_pitch_mm = 800\nperiodic_min_repeats = 1\nkeep_coils = 0\n\
               [strip.block]\nlonger_than_mm = { scratches = -1 }\n";
        let text = Settings::load_with_env(&write(dir.path(), &body), [])
            .unwrap_err()
            .to_string();
        for key in [
            "strip.mm_per_px_count",
            "strip.speed_stale_s: 0",
            "strip.periodic_min_pitch_mm / periodic_max_pitch_mm: 900 / 800",
            "strip.periodic_min_repeats: 1",
            "strip.keep_coils: 0",
            "strip.block.longer_than_mm.scratches: -1",
        ] {
            let key = key.replace("mm_per_px_count", "mm_per_count: needed");
            assert!(text.contains(&key), "missing {key:?} in\n{text}");
        }
        assert!(!text.contains("alarm.count"), "{text}");
        let body = GOOD.to_string() + "[alarm]\ncount = \"tracks\"\n";
        let text = Settings::load_with_env(&write(dir.path(), &body), [])
            .unwrap_err()
            .to_string();
        assert!(
            text.contains("alarm.count: \"tracks\" needs a [strip] section"),
            "{text}"
        );
        let body = GOOD.to_string()
            + "[strip]\nmm_per_px_cd = 0.5\nmm_per_px_md = 0.5\nspeed_source = \"cmd/speed\"\nspeed_mm_s = 3.0\n";
        let text = Settings::load_with_env(&write(dir.path(), &body), [])
            .unwrap_err()
            .to_string();
        assert!(text.contains("strip: give exactly one of"), "{text}");
    }

    #[test]
    fn a_missing_capture_folder_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let body = GOOD.replace("path = \"imgs\"", "path = \"nowhere\"");
        let err = Settings::load_with_env(&write(dir.path(), &body), []).unwrap_err();
        assert!(
            err.to_string().contains("capture.path:") && err.to_string().contains("nowhere"),
            "{err}"
        );
    }

    #[test]
    fn the_embedded_broker_listens_on_loopback_unless_allowed_more() {
        let dir = tempfile::tempdir().unwrap();
        for (host, allow, ok) in [
            ("127.0.0.1", false, true),
            ("localhost", false, true),
            ("::1", false, true),
            ("0.0.0.0", false, false),
            ("192.168.1.10", false, false),
            ("0.0.0.0", true, true),
        ] {
            let body = GOOD.replace(
                "port = 1883",
                &format!(
                    "port = 1883\nmode = \"embedded\"\nhost = \"{host}\"\nembedded_allow_remote = {allow}"
                ),
            );
            let res = Settings::load_with_env(&write(dir.path(), &body), []);
            assert_eq!(res.is_ok(), ok, "{host} {allow}: {:?}", res.err());
            if let Err(e) = res {
                assert!(
                    e.to_string().contains("mqtt.host")
                        && e.to_string().contains("embedded_allow_remote"),
                    "{e}"
                );
            }
        }
    }

    #[test]
    fn capture_live_and_the_queue_default() {
        let dir = tempfile::tempdir().unwrap();
        let s = Settings::load_with_env(&write(dir.path(), GOOD), []).unwrap();
        assert!(!s.capture.live);
        assert_eq!(s.capture.queue, 1);
        let body = GOOD.replace("path = \"imgs\"", "path = \"imgs\"\nlive = true\nqueue = 3");
        let s = Settings::load_with_env(&write(dir.path(), &body), []).unwrap();
        assert!(s.capture.live);
        assert_eq!(s.capture.queue, 3);
    }
}
