//! The contract with the PLC, SCADA and historian: every MQTT topic under the station's
//! root and every payload published on it, with its version field. README.md's "MQTT
//! contract" table describes exactly this file; a test holds the two together.
//!
//! Scalars are plain ASCII (`1` / `0`, `online` / `offline`); JSON is compact, produced by
//! serde (labels and model ids escaped whatever they hold) and versioned (`"v":1`).
//!
//! | topic          | payload                          | QoS | retained |
//! |----------------|----------------------------------|-----|----------|
//! | `status`       | `online` / `offline` (last will) | 1   | yes      |
//! | `result`       | [`result_json`]                  | cfg | no       |
//! | `result/ok`    | `1` / `0`                        | cfg | yes      |
//! | `alarm`        | [`alarm_json`]                   | 1   | no       |
//! | `alarm/active` | `1` / `0`                        | 1   | yes      |
//! | `alarm/<class>/active` | `1` / `0`                | 1   | yes      |
//! | `stats`        | [`StatsMsg`]                     | 0   | no       |
//! | `health`       | [`HealthMsg`]                    | 1   | yes      |
//! | `defect`       | [`defect_json`] (`[strip]`)      | 1   | no       |
//! | `coil`         | [`coil_json`] (`[strip]`)        | 1   | no       |
//! | `cmd/ack` (in) | an alarm id or `all`: [`parse_ack`] | 1 | no     |
//! | `cmd/coil` (in) | the new coil's id: [`parse_coil`] | 1 | no      |
//! | `cmd/speed` (in) | the line speed, mm/s: [`parse_speed`] | 0 | no  |
//! | `cmd/encoder` (in) | an encoder count: [`parse_encoder`] | 0 | no |

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::frame::Frame;

/// QoS of a topic: fixed, or `mqtt.result_qos` (0 unless configured).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    AtMostOnce,
    AtLeastOnce,
    ResultQos,
}

/// One row of the contract: a topic under the root, its QoS, whether it is retained, and
/// whether inspectd subscribes to it instead of publishing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicSpec {
    pub suffix: &'static str,
    pub qos: Qos,
    pub retained: bool,
    pub inbound: bool,
}

const fn spec(suffix: &'static str, qos: Qos, retained: bool, inbound: bool) -> TopicSpec {
    TopicSpec {
        suffix,
        qos,
        retained,
        inbound,
    }
}

/// Every topic of the contract, in README's order (`alarm/<class>/active` once per class).
pub const TOPIC_TABLE: [TopicSpec; 14] = [
    spec("status", Qos::AtLeastOnce, true, false),
    spec("result", Qos::ResultQos, false, false),
    spec("result/ok", Qos::ResultQos, true, false),
    spec("alarm", Qos::AtLeastOnce, false, false),
    spec("alarm/active", Qos::AtLeastOnce, true, false),
    spec("alarm/<class>/active", Qos::AtLeastOnce, true, false),
    spec("stats", Qos::AtMostOnce, false, false),
    spec("health", Qos::AtLeastOnce, true, false),
    spec("defect", Qos::AtLeastOnce, false, false),
    spec("coil", Qos::AtLeastOnce, false, false),
    spec("cmd/ack", Qos::AtLeastOnce, false, true),
    spec("cmd/coil", Qos::AtLeastOnce, false, true),
    spec("cmd/speed", Qos::AtMostOnce, false, true),
    spec("cmd/encoder", Qos::AtMostOnce, false, true),
];

/// The payloads of `status`: the daemon's own, and its last will.
pub const ONLINE: &[u8] = b"online";
pub const OFFLINE: &[u8] = b"offline";

/// A retained flag's payload.
pub fn flag(on: bool) -> Vec<u8> {
    vec![if on { b'1' } else { b'0' }]
}

/// Every topic of the contract, built once from the config.
#[derive(Debug, Clone)]
pub struct Topics {
    pub status: String,
    pub result: String,
    pub result_ok: String,
    pub alarm: String,
    pub alarm_active: String,
    pub stats: String,
    pub health: String,
    pub defect: String,
    pub coil: String,
    pub cmd_ack: String,
    pub cmd_coil: String,
    pub cmd_speed: String,
    pub cmd_encoder: String,
    /// `alarm/<class>/active`, in class order.
    pub class_active: Vec<String>,
}

impl Topics {
    pub fn new(root: &str, classes: &[String]) -> Topics {
        let at = |suffix: &str| {
            debug_assert!(TOPIC_TABLE.iter().any(|t| t.suffix == suffix));
            format!("{root}/{suffix}")
        };
        Topics {
            status: at("status"),
            result: at("result"),
            result_ok: at("result/ok"),
            alarm: at("alarm"),
            alarm_active: at("alarm/active"),
            stats: at("stats"),
            health: at("health"),
            defect: at("defect"),
            coil: at("coil"),
            cmd_ack: at("cmd/ack"),
            cmd_coil: at("cmd/coil"),
            cmd_speed: at("cmd/speed"),
            cmd_encoder: at("cmd/encoder"),
            class_active: classes
                .iter()
                .map(|c| at("alarm/<class>/active").replace("<class>", c))
                .collect(),
        }
    }
}

/// An alarm event as the contract has it (serialised by serde: labels are escaped).
#[derive(Serialize)]
struct AlarmEvent<'a> {
    v: u8,
    ts: u64,
    id: u64,
    event: &'a str,
    class: &'a str,
    frames: u32,
    window: u32,
    seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    raised_id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    evidence: Option<&'a str>,
}

/// The alarm JSON of the contract.
pub fn alarm_json(id: u64, change: &AlarmChange) -> Vec<u8> {
    serde_json::to_vec(&AlarmEvent {
        v: 1,
        ts: crate::frame::unix_ms(),
        id,
        event: change.kind.as_str(),
        class: &change.class,
        frames: change.frames,
        window: change.window,
        seq: change.seq,
        raised_id: change.raised_id,
        evidence: change.evidence.as_deref(),
    })
    .expect("an alarm event serialises")
}

/// One defect on the coil, followed to its end (`[strip]`): the body of a `defect` event
/// and a row of the coil report. Lengths in mm, rounded to 0.1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrackMsg {
    pub track: u64,
    pub class: String,
    /// The best score of the frames that showed it.
    pub score: f64,
    /// Head-side end, mm from the coil's head.
    pub md_mm: f64,
    /// Edge-side end, mm from the reference edge.
    pub cd_mm: f64,
    pub length_mm: f64,
    pub width_mm: f64,
    /// Frames that showed it.
    pub frames: u32,
    /// The image of the frame that first showed it, relative to `state.dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
    /// It recurs at a constant pitch: the periodic defect it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub periodic: Option<PeriodicMsg>,
}

/// A defect recurring at a constant MD pitch, as far as it has been seen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeriodicMsg {
    pub pitch_mm: f64,
    /// The diameter of a roll whose circumference is the pitch.
    pub roll_diameter_mm: f64,
    /// Tracks in a row at the pitch, this one included.
    pub repeats: u32,
    /// The first of them (the one nearest the head): names the periodic defect.
    pub first_track: u64,
}

#[derive(Serialize)]
struct DefectEvent<'a> {
    v: u8,
    ts: u64,
    id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    coil: Option<&'a str>,
    #[serde(flatten)]
    track: &'a TrackMsg,
}

/// The `defect` event of the contract: one per finished track.
pub fn defect_json(id: u64, coil: Option<&str>, track: &TrackMsg) -> Vec<u8> {
    serde_json::to_vec(&DefectEvent {
        v: 1,
        ts: crate::frame::unix_ms(),
        id,
        coil,
        track,
    })
    .expect("a defect event serialises")
}

/// A finished coil: the `coil` event and the head of its report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoilSummary {
    pub coil: String,
    /// Capture times (Unix ms) of its first and last frame.
    pub started_ts: u64,
    pub ended_ts: u64,
    /// `cmd/coil` (the next coil started) or `shutdown`.
    pub ended_by: String,
    pub frames: u64,
    /// Strip length inspected: from the head to the last frame's last row, mm.
    pub length_mm: f64,
    /// Defects (tracks) per class; every class of the model, 0 included.
    pub counts: BTreeMap<String, u32>,
    /// The surest defect, if any.
    pub worst: Option<WorstMsg>,
    pub periodic: Vec<PeriodicChain>,
    /// A `[strip.block]` rule holds: hold the coil.
    pub block: bool,
    /// Each rule that holds, in words.
    pub block_reasons: Vec<String>,
    /// The report's JSON file relative to `state.dir` (None: it could not be written).
    pub report: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorstMsg {
    pub track: u64,
    pub class: String,
    pub score: f64,
    pub md_mm: f64,
}

/// A periodic defect of a coil: its tracks and their MD.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeriodicChain {
    pub class: String,
    pub pitch_mm: f64,
    pub roll_diameter_mm: f64,
    pub repeats: u32,
    pub tracks: Vec<u64>,
    pub md_mm: Vec<f64>,
}

#[derive(Serialize)]
struct CoilEvent<'a> {
    v: u8,
    ts: u64,
    id: u64,
    #[serde(flatten)]
    summary: &'a CoilSummary,
}

/// The `coil` event of the contract: one per finished coil.
pub fn coil_json(id: u64, summary: &CoilSummary) -> Vec<u8> {
    serde_json::to_vec(&CoilEvent {
        v: 1,
        ts: crate::frame::unix_ms(),
        id,
        summary,
    })
    .expect("a coil event serialises")
}

/// A coil's report, `state.dir/coils/<coil>.json`: the summary and every defect in MD
/// order. `inspectd report COIL` prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoilReport {
    pub v: u8,
    #[serde(flatten)]
    pub summary: CoilSummary,
    pub defects: Vec<TrackMsg>,
}

/// A result as the contract has it, borrowing the frame.
#[derive(Serialize)]
struct ResultMsg<'a> {
    v: u8,
    ts: u64,
    seq: u64,
    ok: bool,
    defects: Defects<'a>,
    latency_ms: f64,
    model: &'a str,
    regions: usize,
    /// `[strip]` only: the coil (`cmd/coil`) and the MD of the frame's first row.
    #[serde(skip_serializing_if = "Option::is_none")]
    coil: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    md_mm: Option<f64>,
}

struct Defects<'a> {
    frame: &'a Frame,
    labels: &'a [String],
}

#[derive(Serialize)]
struct DefectMsg<'a> {
    class: &'a str,
    score: f64,
    bbox: [u32; 4],
    area: u64,
    /// `[strip]` only: the track and the place on the strip, mm.
    #[serde(skip_serializing_if = "Option::is_none")]
    track: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    md_mm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cd_mm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    length_mm: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    width_mm: Option<f64>,
}

impl Serialize for Defects<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.frame.verdict.defects.iter().map(|d| DefectMsg {
            class: &self.labels[d.label],
            score: round_to(d.score as f64, 1e4),
            bbox: d.bbox,
            area: d.area(),
            track: d.place.map(|p| p.track),
            md_mm: d.place.map(|p| round_to(p.md_mm, 10.0)),
            cd_mm: d.place.map(|p| round_to(p.cd_mm, 10.0)),
            length_mm: d.place.map(|p| round_to(p.length_mm, 10.0)),
            width_mm: d.place.map(|p| round_to(p.width_mm, 10.0)),
        }))
    }
}

/// Writes the result JSON of the contract into `out` (cleared first; no allocation once
/// it has grown to a frame's size).
pub fn result_json(
    frame: &Frame,
    labels: &[String],
    model: &str,
    latency_ms: f64,
    out: &mut Vec<u8>,
) {
    out.clear();
    serde_json::to_writer(
        &mut *out,
        &ResultMsg {
            v: 1,
            ts: frame.ts_ms,
            seq: frame.seq,
            ok: frame.verdict.ok,
            defects: Defects { frame, labels },
            latency_ms: round_to(latency_ms, 1e3),
            model,
            regions: frame.regions.len(),
            coil: frame.verdict.strip.as_ref().and_then(|p| p.coil.as_deref()),
            md_mm: frame
                .verdict
                .strip
                .as_ref()
                .map(|p| round_to(p.md_mm, 10.0)),
        },
    )
    .expect("a result serialises into memory");
}

/// Commands that arrive from the broker for the decide stage.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Acknowledge the alarm raised with this id, or all (`None`).
    Ack(Option<u64>),
    /// A new coil starts, with this id (`[strip]`).
    Coil(String),
    /// The line speed, mm/s, received at `at_ms` (Unix ms).
    Speed { mm_s: f64, at_ms: u64 },
    /// The line's encoder count, received at `at_ms`.
    Encoder { count: i64, at_ms: u64 },
}

/// Parses a `cmd/speed` payload: the line speed in mm/s, a number from 0 to 100000.
pub fn parse_speed(payload: &[u8], at_ms: u64) -> Result<Command, String> {
    let text = std::str::from_utf8(payload)
        .map_err(|_| "payload is not text".to_string())?
        .trim();
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=100_000.0).contains(&v) => {
            Ok(Command::Speed { mm_s: v, at_ms })
        }
        _ => Err(format!("{text:?} is not a line speed (mm/s, 0 to 100000)")),
    }
}

/// Parses a `cmd/encoder` payload: the encoder's count, a whole number.
pub fn parse_encoder(payload: &[u8], at_ms: u64) -> Result<Command, String> {
    let text = std::str::from_utf8(payload)
        .map_err(|_| "payload is not text".to_string())?
        .trim();
    text.parse::<i64>()
        .map(|count| Command::Encoder { count, at_ms })
        .map_err(|_| format!("{text:?} is not an encoder count (a whole number)"))
}

/// Parses a `cmd/coil` payload: the coil's id, 1 to 64 characters of letters, digits
/// and `-_.:/` (it is written into results, logs and file names).
pub fn parse_coil(payload: &[u8]) -> Result<Command, String> {
    let text = std::str::from_utf8(payload)
        .map_err(|_| "payload is not text".to_string())?
        .trim();
    let fine = |c: char| c.is_ascii_alphanumeric() || "-_.:/".contains(c);
    if text.is_empty() || text.len() > 64 || !text.chars().all(fine) {
        return Err(format!(
            "{text:?} is not a coil id (1 to 64 letters, digits or -_.:/)"
        ));
    }
    Ok(Command::Coil(text.to_string()))
}

/// Parses a `cmd/ack` payload: an alarm id or `all`.
pub fn parse_ack(payload: &[u8]) -> Result<Command, String> {
    let text = std::str::from_utf8(payload)
        .map_err(|_| "payload is not text".to_string())?
        .trim();
    if text.eq_ignore_ascii_case("all") {
        return Ok(Command::Ack(None));
    }
    text.parse::<u64>()
        .map(|id| Command::Ack(Some(id)))
        .map_err(|_| format!("{text:?} is neither an alarm id nor `all`"))
}

/// What an alarm did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlarmKind {
    Raised,
    Cleared,
    Acked,
}

impl AlarmKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmKind::Raised => "raised",
            AlarmKind::Cleared => "cleared",
            AlarmKind::Acked => "acked",
        }
    }
}

/// An alarm transition, before it gets its id from the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlarmChange {
    pub kind: AlarmKind,
    pub class: String,
    /// Frames in the window that had the class.
    pub frames: u32,
    pub window: u32,
    /// The frame that caused it (0 for an acknowledgement).
    pub seq: u64,
    /// For cleared and acked: the id of the raised event they close.
    pub raised_id: Option<u64>,
    /// For raised: the frame's evidence image, relative to `state.dir`, when one is
    /// being written.
    pub evidence: Option<String>,
}

/// The health conditions, as bits of [`Stats::health`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Dark = 1,
    Saturated = 2,
    NoContrast = 4,
    Frozen = 8,
}

impl Condition {
    pub const ALL: [Condition; 4] = [
        Condition::Dark,
        Condition::Saturated,
        Condition::NoContrast,
        Condition::Frozen,
    ];

    /// The name in the `health` JSON, the metrics and the readiness reasons.
    pub fn name(self) -> &'static str {
        match self {
            Condition::Dark => "dark",
            Condition::Saturated => "saturated",
            Condition::NoContrast => "no_contrast",
            Condition::Frozen => "frozen",
        }
    }

    pub fn bit(self) -> u64 {
        self as u64
    }
}

/// The conditions set in a [`Stats::health`] bit set.
pub fn conditions(bits: u64) -> impl Iterator<Item = Condition> {
    Condition::ALL
        .into_iter()
        .filter(move |c| bits & c.bit() != 0)
}

/// Where the camera source is; `stats` reports it as `camera.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CameraState {
    Opening = 1,
    Streaming = 2,
    Lost = 3,
    Backoff = 4,
}

impl CameraState {
    pub fn name(self) -> &'static str {
        match self {
            CameraState::Opening => "opening",
            CameraState::Streaming => "streaming",
            CameraState::Lost => "lost",
            CameraState::Backoff => "backoff",
        }
    }

    const ALL: [CameraState; 4] = [
        CameraState::Opening,
        CameraState::Streaming,
        CameraState::Lost,
        CameraState::Backoff,
    ];

    /// The state stored in [`Stats::camera_state`]; None: no camera.
    pub fn from_code(code: u64) -> Option<CameraState> {
        Self::ALL.into_iter().find(|s| *s as u64 == code)
    }

    /// The name of the state stored in [`Stats::camera_state`] (`none`: no camera).
    pub fn name_of(code: u64) -> &'static str {
        Self::from_code(code).map_or("none", Self::name)
    }
}

/// The `health` JSON of the contract (retained): the camera's state and each condition.
#[derive(Serialize)]
pub struct HealthMsg<'a> {
    pub v: u8,
    pub ts: u64,
    pub ok: bool,
    /// The camera source's state; `null` for a replayed folder.
    pub camera: Option<&'a str>,
    pub dark: bool,
    pub saturated: bool,
    pub no_contrast: bool,
    pub frozen: bool,
    /// The last frame's mean gray level, contrast (standard deviation) and saturated
    /// fraction; null before the first frame.
    pub mean: Option<f64>,
    pub contrast: Option<f64>,
    pub saturated_fraction: Option<f64>,
    /// `[strip]` with `speed_source`: `ok`, `missing` (nothing yet) or `stale`; absent
    /// otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed: Option<&'a str>,
}

/// `v` rounded to a multiple of `1 / scale` (1e3: three decimals), for JSON payloads.
pub fn round_to(v: f64, scale: f64) -> f64 {
    (v * scale).round() / scale
}

/// The `stats` JSON, every `telemetry.stats_interval`: totals since start, and fps and
/// stage latencies since the previous one.
#[derive(Serialize)]
pub struct StatsMsg<'a> {
    pub v: u8,
    pub ts: u64,
    pub model: &'a str,
    /// Frames captured, and results published.
    pub frames: u64,
    pub published: u64,
    pub fps: f64,
    pub drops: Drops,
    pub corrupt_files: u64,
    pub frame_errors: u64,
    pub camera: CameraStats,
    pub mqtt: MqttStats,
    pub alarms: AlarmStats,
    pub classify_workers: Vec<WorkerMsg>,
    /// Share of the pixels classified since start that the detector ran on: 1 without
    /// the first look, lower where it found clean strip.
    pub detector_share: f64,
    pub latency: Latencies,
}

/// Frames and events not delivered, by where they were dropped.
#[derive(Serialize)]
pub struct Drops {
    pub capture_queue: u64,
    pub results: u64,
    pub outbox: u64,
}

#[derive(Serialize)]
pub struct CameraStats {
    /// A [`CameraState`] name, or `none` (a replayed folder).
    pub state: &'static str,
    pub down: bool,
    pub reconnects: u64,
}

#[derive(Serialize)]
pub struct MqttStats {
    pub connected: bool,
    pub reconnects: u64,
}

#[derive(Serialize)]
pub struct AlarmStats {
    pub outbox_pending: u64,
    pub published: u64,
    pub acked_by_broker: u64,
}

#[derive(Serialize)]
pub struct WorkerMsg {
    pub frames: u64,
    pub busy_s: f64,
}

/// Per stage: frames measured, median and 99th percentile in ms.
#[derive(Serialize)]
pub struct Latency {
    pub n: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Serialize)]
pub struct Latencies {
    pub preprocess: Latency,
    pub classify: Latency,
    /// Part of classify: the first look (n = 0 when it is off).
    pub first_look: Latency,
    pub decide: Latency,
    pub end_to_end: Latency,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_commands_parse_ids_and_all() {
        assert_eq!(parse_ack(b"17"), Ok(Command::Ack(Some(17))));
        assert_eq!(parse_ack(b" all\n"), Ok(Command::Ack(None)));
        assert!(parse_ack(b"seventeen").is_err());
        assert!(parse_ack(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn alarm_json_follows_the_contract() {
        let change = AlarmChange {
            kind: AlarmKind::Cleared,
            class: "scratches".into(),
            frames: 1,
            window: 5,
            seq: 42,
            raised_id: Some(7),
            evidence: None,
        };
        let v: serde_json::Value = serde_json::from_slice(&alarm_json(9, &change)).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["id"], 9);
        assert_eq!(v["event"], "cleared");
        assert_eq!(v["class"], "scratches");
        assert_eq!(v["frames"], 1);
        assert_eq!(v["window"], 5);
        assert_eq!(v["seq"], 42);
        assert_eq!(v["raised_id"], 7);
        assert!(v["ts"].as_u64().unwrap() > 1_700_000_000_000);
    }

    #[test]
    fn payloads_stay_valid_json_whatever_the_label_and_model_id_hold() {
        let hostile = ["a\"b", "back\\slash", "ünïcödé ✓", "tab\there", "\u{1}ctl"];
        let mut f = Frame::default();
        f.reset(1, 10, 10);
        let mut out = Vec::new();
        for (i, label) in hostile.iter().enumerate() {
            f.verdict.defects.clear();
            f.verdict.defects.push(crate::frame::Defect {
                label: 0,
                score: 0.5,
                bbox: [0, 0, 1, 1],
                area: false,
                place: None,
            });
            result_json(&f, &[label.to_string()], label, 1.0, &mut out);
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(v["defects"][0]["class"], *label);
            assert_eq!(v["model"], *label);
            let change = AlarmChange {
                kind: AlarmKind::Raised,
                class: label.to_string(),
                frames: 3,
                window: 5,
                seq: i as u64,
                raised_id: None,
                evidence: Some("evidence/2026-11-30/081020123-alarm-1-x.png".into()),
            };
            let a: serde_json::Value = serde_json::from_slice(&alarm_json(1, &change)).unwrap();
            assert_eq!(a["class"], *label);
            assert!(a.get("raised_id").is_none());
            assert_eq!(a["evidence"], "evidence/2026-11-30/081020123-alarm-1-x.png");
        }
    }

    #[test]
    fn result_json_follows_the_contract() {
        let mut f = Frame::default();
        f.reset(5, 200, 200);
        f.verdict.ok = false;
        f.verdict.defects.push(crate::frame::Defect {
            label: 1,
            score: 0.97,
            bbox: [1, 2, 64, 64],
            area: false,
            place: None,
        });
        let mut out = Vec::new();
        result_json(
            &f,
            &["ok".into(), "scratches".into()],
            "m1",
            1.23456,
            &mut out,
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["seq"], 5);
        assert_eq!(v["ok"], false);
        assert_eq!(v["defects"][0]["class"], "scratches");
        assert_eq!(v["defects"][0]["bbox"], serde_json::json!([1, 2, 64, 64]));
        assert_eq!(v["defects"][0]["area"], 64 * 64);
        assert!((v["defects"][0]["score"].as_f64().unwrap() - 0.97).abs() < 1e-4);
        assert_eq!(v["model"], "m1");
        assert!((v["latency_ms"].as_f64().unwrap() - 1.235).abs() < 1e-9);
    }
}
