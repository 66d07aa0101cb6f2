//! The Sparkplug B edge node (`[sparkplug]`): the same truth as the MQTT contract, as
//! Sparkplug metrics, for Ignition and other Sparkplug host applications.
//!
//! Its own MQTT session (client id `<mqtt client id>-spb`) on the broker of `[mqtt]`,
//! with the same keep-alive, credentials and TLS. On every connection: bdSeq goes up by
//! one (kept in `state.dir/sparkplug.bdseq`, so it keeps counting across restarts), the
//! last will is an NDEATH carrying it, and once born the node sends NBIRTH (seq 0, every
//! metric, bdSeq), then NDATA with the metrics that changed (seq 1-255, then 0 again) at
//! most every [`POLL`]. NCMD `Node Control/Rebirth` = true sends a new NBIRTH; NCMD
//! `Alarm/Acknowledge` = id (0: all) acknowledges like `cmd/ack`. With
//! `sparkplug.primary_host`, the node is born only while that host's STATE says online;
//! when it goes offline the node sends NDEATH, disconnects and waits for it again.
//!
//! The payloads are the Sparkplug B protobuf messages, written here from the
//! specification's `sparkplug_b.proto` (the fields inspectd sends; prost skips the rest
//! when decoding).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use prost::Message as _;
use rumqttc::{Client, Event, LastWill, Outgoing, Packet, QoS};
use tracing::{debug, error, info, warn};

use crate::contract::{conditions, Command};
use crate::mqtt::{sleep_unless, PublishConfig};
use crate::telemetry::{Stats, LIVENESS};

/// The Sparkplug B namespace.
pub const NAMESPACE: &str = "spBv1.0";
/// How often the node looks for changed metrics.
pub const POLL: Duration = Duration::from_millis(100);

/// `Payload` of `sparkplug_b.proto`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Payload {
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    #[prost(message, repeated, tag = "2")]
    pub metrics: Vec<Metric>,
    #[prost(uint64, optional, tag = "3")]
    pub seq: Option<u64>,
    #[prost(string, optional, tag = "4")]
    pub uuid: Option<String>,
    #[prost(bytes = "vec", optional, tag = "5")]
    pub body: Option<Vec<u8>>,
}

/// `Payload.Metric` (without metadata, properties, datasets and templates).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Metric {
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    #[prost(uint64, optional, tag = "2")]
    pub alias: Option<u64>,
    #[prost(uint64, optional, tag = "3")]
    pub timestamp: Option<u64>,
    #[prost(uint32, optional, tag = "4")]
    pub datatype: Option<u32>,
    #[prost(bool, optional, tag = "5")]
    pub is_historical: Option<bool>,
    #[prost(bool, optional, tag = "6")]
    pub is_transient: Option<bool>,
    #[prost(bool, optional, tag = "7")]
    pub is_null: Option<bool>,
    #[prost(oneof = "Value", tags = "10, 11, 12, 13, 14, 15, 16")]
    pub value: Option<Value>,
}

/// `Payload.Metric.value`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Value {
    #[prost(uint32, tag = "10")]
    IntValue(u32),
    #[prost(uint64, tag = "11")]
    LongValue(u64),
    #[prost(float, tag = "12")]
    FloatValue(f32),
    #[prost(double, tag = "13")]
    DoubleValue(f64),
    #[prost(bool, tag = "14")]
    BooleanValue(bool),
    #[prost(string, tag = "15")]
    StringValue(String),
    #[prost(bytes = "vec", tag = "16")]
    BytesValue(Vec<u8>),
}

/// Sparkplug B data types (`DataType` of the specification) that inspectd uses.
pub mod datatype {
    pub const UINT32: u32 = 7;
    pub const UINT64: u32 = 8;
    pub const FLOAT: u32 = 9;
    pub const BOOLEAN: u32 = 11;
    pub const STRING: u32 = 12;
}

impl Metric {
    fn new(name: &str, value: Value, ts: u64) -> Metric {
        let datatype = match value {
            Value::IntValue(_) => datatype::UINT32,
            Value::LongValue(_) => datatype::UINT64,
            Value::FloatValue(_) => datatype::FLOAT,
            Value::BooleanValue(_) => datatype::BOOLEAN,
            Value::StringValue(_) => datatype::STRING,
            Value::DoubleValue(_) => 10,
            Value::BytesValue(_) => 17,
        };
        Metric {
            name: Some(name.to_string()),
            timestamp: Some(ts),
            datatype: Some(datatype),
            value: Some(value),
            ..Metric::default()
        }
    }
}

/// The node's topics.
#[derive(Debug, Clone)]
pub struct NodeTopics {
    pub nbirth: String,
    pub ndata: String,
    pub ndeath: String,
    pub ncmd: String,
    /// The primary host's STATE topic (None without `sparkplug.primary_host`).
    pub state: Option<String>,
}

impl NodeTopics {
    pub fn new(group: &str, node: &str, primary_host: &str) -> NodeTopics {
        let t = |kind: &str| format!("{NAMESPACE}/{group}/{kind}/{node}");
        NodeTopics {
            nbirth: t("NBIRTH"),
            ndata: t("NDATA"),
            ndeath: t("NDEATH"),
            ncmd: t("NCMD"),
            state: (!primary_host.is_empty()).then(|| format!("{NAMESPACE}/STATE/{primary_host}")),
        }
    }
}

/// Every metric's value now, by name (the birth sends them all; NDATA what changed).
pub fn metrics_now(stats: &Stats, station: &str, stale_after: Duration) -> BTreeMap<String, Value> {
    use Value::*;
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    let live = &stats.live;
    let labels = live.labels();
    put("Properties/Model", StringValue(live.model_id().to_string()));
    put("Properties/Station", StringValue(station.to_string()));
    put("Properties/Classes", StringValue(labels.join(",")));
    let p = &stats.plant;
    put("Inspection/Frames", LongValue(p.frames.load(Relaxed)));
    put("Inspection/Defects", LongValue(p.defects.load(Relaxed)));
    put(
        "Inspection/Defective Frames",
        LongValue(p.defective_frames.load(Relaxed)),
    );
    put(
        "Inspection/Alarm Events",
        LongValue(stats.alarm_events.total()),
    );
    let last = p.last().unwrap_or_default();
    put("Last/Seq", LongValue(last.seq));
    put("Last/OK", BooleanValue(last.ok));
    put("Last/Defects", IntValue(last.defects));
    let classes: Vec<&str> = labels
        .iter()
        .enumerate()
        .filter(|(i, _)| last.classes & (1u64 << i.min(&63)) != 0)
        .map(|(_, l)| l.as_str())
        .collect();
    put("Last/Classes", StringValue(classes.join(",")));
    put(
        "Last/Max Score",
        FloatValue((last.max_score * 1000.0).round() / 1000.0),
    );
    let alarms = p.alarms();
    put(
        "Alarm/Active",
        BooleanValue(alarms.iter().any(|a| a.active)),
    );
    put("Alarm/Acknowledge", LongValue(0));
    for (i, label) in labels.iter().enumerate() {
        let a = alarms.get(i).copied().unwrap_or_default();
        put(&format!("Alarm/{label}/Active"), BooleanValue(a.active));
        put(&format!("Alarm/{label}/Latched"), BooleanValue(a.latched));
        put(
            &format!("Alarm/{label}/Acknowledged"),
            BooleanValue(a.acked),
        );
        put(&format!("Alarm/{label}/Id"), LongValue(a.raised_id));
    }
    let reasons = crate::http::not_ready(stats, stale_after);
    let model = stats.model_loaded.load(Relaxed) == 1;
    put("Health/Ready", BooleanValue(reasons.is_empty()));
    put(
        "Health/Running",
        BooleanValue(model && stats.heartbeats.stalest().1 < LIVENESS),
    );
    put("Health/Model Loaded", BooleanValue(model));
    put(
        "Health/Source OK",
        BooleanValue(!reasons.iter().any(|r| r.starts_with("source:"))),
    );
    put(
        "Health/Broker OK",
        BooleanValue(stats.mqtt_connected.load(Relaxed) == 1),
    );
    let conds: Vec<&str> = conditions(stats.health.load(Relaxed))
        .map(|c| c.name())
        .collect();
    put("Health/Conditions", StringValue(conds.join(",")));
    put("Health/Not Ready", StringValue(reasons.join("; ")));
    m
}

/// Encodes a payload of `metrics` (name and value each).
pub fn payload(seq: Option<u64>, metrics: Vec<Metric>) -> Vec<u8> {
    Payload {
        timestamp: Some(crate::frame::unix_ms()),
        metrics,
        seq,
        ..Payload::default()
    }
    .encode_to_vec()
}

fn bd_seq_metric(bd_seq: u64, ts: u64) -> Metric {
    Metric::new("bdSeq", Value::LongValue(bd_seq), ts)
}

/// What an NCMD asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeCommand {
    Rebirth,
    Ack(Option<u64>),
}

/// Reads an NCMD payload; every metric it names must be one the node takes.
pub fn parse_ncmd(bytes: &[u8]) -> Result<Vec<NodeCommand>, String> {
    let p = Payload::decode(bytes).map_err(|e| format!("not a Sparkplug B payload: {e}"))?;
    let mut out = Vec::new();
    for m in p.metrics {
        let name = m.name.as_deref().unwrap_or("");
        match (name, m.value) {
            ("Node Control/Rebirth", Some(Value::BooleanValue(true))) => {
                out.push(NodeCommand::Rebirth)
            }
            ("Node Control/Rebirth", Some(Value::BooleanValue(false))) => {}
            ("Alarm/Acknowledge", Some(Value::LongValue(id))) => {
                out.push(NodeCommand::Ack((id != 0).then_some(id)))
            }
            ("Alarm/Acknowledge", Some(Value::IntValue(id))) => {
                out.push(NodeCommand::Ack((id != 0).then_some(id as u64)))
            }
            (name, v) => {
                return Err(format!(
                    "metric {name:?} with {v:?} is not a command this node takes (Node Control/Rebirth = true, Alarm/Acknowledge = id or 0)"
                ))
            }
        }
    }
    Ok(out)
}

/// Reads a primary host's STATE: Sparkplug 3.0's JSON (`{"online": true, ...}`) or
/// 2.2's `ONLINE` / `OFFLINE`.
pub fn parse_state(bytes: &[u8]) -> Option<bool> {
    let text = std::str::from_utf8(bytes).ok()?.trim();
    match text {
        "ONLINE" => return Some(true),
        "OFFLINE" => return Some(false),
        _ => {}
    }
    serde_json::from_str::<serde_json::Value>(text)
        .ok()?
        .get("online")?
        .as_bool()
}

/// Everything the node needs from the config.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub mqtt: PublishConfig,
    pub client_id: String,
    pub topics: NodeTopics,
    /// The station's topic root, a property of the node.
    pub station: String,
    pub state_dir: PathBuf,
    pub stale_after: Duration,
}

/// The running node; dropping it sends NDEATH and disconnects.
pub struct EdgeNode {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EdgeNode {
    pub fn start(
        cfg: NodeConfig,
        stats: Arc<Stats>,
        commands: Sender<Command>,
    ) -> Result<EdgeNode, String> {
        // A broken TLS or password setup is the operator's to fix: say so at start.
        cfg.mqtt.options_with(
            &cfg.client_id,
            LastWill::new(&cfg.topics.ndeath, vec![], QoS::AtLeastOnce, false),
        )?;
        stats.sparkplug.enabled.store(1, Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("sparkplug".into())
            .spawn(move || run(cfg, stats, commands, s))
            .map_err(|e| format!("cannot start the sparkplug thread: {e}"))?;
        Ok(EdgeNode {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EdgeNode {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const BD_SEQ_FILE: &str = "sparkplug.bdseq";

/// The bdSeq of the next connection: one more than the last one used (0 at first).
fn next_bd_seq(state_dir: &Path, last: Option<u64>) -> u64 {
    let last = last.or_else(|| {
        std::fs::read_to_string(state_dir.join(BD_SEQ_FILE))
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
    });
    let next = last.map_or(0, |b| (b + 1) % 256);
    let path = state_dir.join(BD_SEQ_FILE);
    if let Err(e) =
        std::fs::create_dir_all(state_dir).and_then(|()| std::fs::write(&path, format!("{next}\n")))
    {
        warn!(file = %path.display(), error = %e, "Could not keep the Sparkplug bdSeq; a restart starts it again at 0.");
    }
    next
}

/// One connection's state.
struct Birth {
    client: Client,
    bd_seq: u64,
    seq: u64,
    born: bool,
    sent: BTreeMap<String, Value>,
}

impl Birth {
    fn next_seq(&mut self) -> u64 {
        self.seq = (self.seq + 1) % 256;
        self.seq
    }

    fn birth(&mut self, cfg: &NodeConfig, stats: &Stats) {
        let now = metrics_now(stats, &cfg.station, cfg.stale_after);
        let ts = crate::frame::unix_ms();
        let mut metrics = vec![
            bd_seq_metric(self.bd_seq, ts),
            Metric::new("Node Control/Rebirth", Value::BooleanValue(false), ts),
        ];
        metrics.extend(now.iter().map(|(k, v)| Metric::new(k, v.clone(), ts)));
        self.seq = 0;
        match self.client.try_publish(
            &cfg.topics.nbirth,
            QoS::AtMostOnce,
            false,
            payload(Some(0), metrics),
        ) {
            Ok(()) => {
                self.born = true;
                self.sent = now;
                stats.sparkplug.born.store(1, Relaxed);
                stats.sparkplug.births.fetch_add(1, Relaxed);
                info!(topic = %cfg.topics.nbirth, bd_seq = self.bd_seq, "Sparkplug: NBIRTH.");
            }
            Err(e) => warn!(error = %e, "Sparkplug: could not send NBIRTH."),
        }
    }

    /// Sends what changed since the last birth or data message.
    fn data(&mut self, cfg: &NodeConfig, stats: &Stats) {
        if !self.born {
            return;
        }
        let now = metrics_now(stats, &cfg.station, cfg.stale_after);
        if !now.keys().eq(self.sent.keys()) {
            // A metric the birth did not declare: a host needs a new birth to know it.
            self.birth(cfg, stats);
            return;
        }
        let ts = crate::frame::unix_ms();
        let changed: Vec<Metric> = now
            .iter()
            .filter(|(k, v)| self.sent.get(*k) != Some(v))
            .map(|(k, v)| Metric::new(k, v.clone(), ts))
            .collect();
        if changed.is_empty() {
            return;
        }
        let seq = self.next_seq();
        match self.client.try_publish(
            &cfg.topics.ndata,
            QoS::AtMostOnce,
            false,
            payload(Some(seq), changed),
        ) {
            Ok(()) => {
                self.sent = now;
                stats.sparkplug.data.fetch_add(1, Relaxed);
            }
            // The request queue is full (a slow broker): the next look sends the change.
            Err(e) => {
                self.seq = (self.seq + 255) % 256;
                debug!(error = %e, "Sparkplug: NDATA deferred.");
            }
        }
    }

    /// A graceful death: NDEATH with this connection's bdSeq, then disconnect.
    fn die(&mut self, cfg: &NodeConfig, stats: &Stats) {
        let ts = crate::frame::unix_ms();
        let _ = self.client.try_publish(
            &cfg.topics.ndeath,
            QoS::AtLeastOnce,
            false,
            payload(None, vec![bd_seq_metric(self.bd_seq, ts)]),
        );
        if self.born {
            stats.sparkplug.deaths.fetch_add(1, Relaxed);
        }
        self.born = false;
        stats.sparkplug.born.store(0, Relaxed);
        let _ = self.client.try_disconnect();
    }
}

fn run(cfg: NodeConfig, stats: Arc<Stats>, commands: Sender<Command>, stop: Arc<AtomicBool>) {
    let sp = &stats.sparkplug;
    let mut backoff = cfg.mqtt.reconnect_min;
    let mut last_bd_seq = None;
    let mut last_error = String::new();
    let waits_for_host = cfg.topics.state.is_some();
    while !stop.load(Relaxed) {
        let bd_seq = next_bd_seq(&cfg.state_dir, last_bd_seq);
        last_bd_seq = Some(bd_seq);
        sp.bd_seq.store(bd_seq, Relaxed);
        let will = LastWill::new(
            &cfg.topics.ndeath,
            payload(None, vec![bd_seq_metric(bd_seq, crate::frame::unix_ms())]),
            QoS::AtLeastOnce,
            false,
        );
        let options = match cfg.mqtt.options_with(&cfg.client_id, will) {
            Ok(o) => o,
            Err(e) => {
                error!(error = %e, "Sparkplug: MQTT settings unusable; retrying.");
                sleep_unless(backoff, &stop);
                backoff = (backoff * 2).min(cfg.mqtt.reconnect_max);
                continue;
            }
        };
        let (client, mut connection) = Client::new(options, 64);
        let mut node = Birth {
            client,
            bd_seq,
            seq: 0,
            born: false,
            sent: BTreeMap::new(),
        };
        sp.waiting_for_host.store(waits_for_host as u64, Relaxed);
        let mut connected = false;
        let mut dying: Option<Instant> = None;
        let mut next_look = Instant::now();
        loop {
            if stop.load(Relaxed) && dying.is_none() {
                if connected {
                    info!("Sparkplug: NDEATH (stopping).");
                    node.die(&cfg, &stats);
                    dying = Some(Instant::now());
                } else {
                    break;
                }
            }
            if dying.is_some_and(|t| t.elapsed() > Duration::from_secs(2)) {
                break;
            }
            let event = match connection.recv_timeout(POLL) {
                Ok(ev) => Some(ev),
                Err(rumqttc::RecvTimeoutError::Timeout) => None,
                Err(rumqttc::RecvTimeoutError::Disconnected) => break,
            };
            match event {
                None => {}
                Some(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                    connected = true;
                    last_error.clear();
                    backoff = cfg.mqtt.reconnect_min;
                    sp.connected.store(1, Relaxed);
                    info!(host = %cfg.mqtt.host, port = cfg.mqtt.port, bd_seq, "Sparkplug: connected.");
                    if let Err(e) = node
                        .client
                        .try_subscribe(&cfg.topics.ncmd, QoS::AtLeastOnce)
                    {
                        warn!(error = %e, "Sparkplug: could not subscribe to NCMD.");
                    }
                    match &cfg.topics.state {
                        Some(state) => {
                            if let Err(e) = node.client.try_subscribe(state, QoS::AtLeastOnce) {
                                warn!(error = %e, "Sparkplug: could not subscribe to the primary host's STATE.");
                            }
                        }
                        None => node.birth(&cfg, &stats),
                    }
                }
                Some(Ok(Event::Incoming(Packet::Publish(p))))
                    if Some(&p.topic) == cfg.topics.state.as_ref() =>
                {
                    match parse_state(&p.payload) {
                        Some(true) => {
                            sp.waiting_for_host.store(0, Relaxed);
                            if !node.born && dying.is_none() {
                                info!(topic = %p.topic, "Sparkplug: the primary host is online.");
                                node.birth(&cfg, &stats);
                            }
                        }
                        Some(false) => {
                            sp.waiting_for_host.store(1, Relaxed);
                            if node.born && dying.is_none() {
                                warn!(topic = %p.topic, "Sparkplug: the primary host went offline; NDEATH, and reconnecting to wait for it.");
                                node.die(&cfg, &stats);
                                dying = Some(Instant::now());
                            }
                        }
                        None => {
                            warn!(topic = %p.topic, "Sparkplug: ignored a STATE message that is neither JSON with \"online\" nor ONLINE/OFFLINE.")
                        }
                    }
                }
                Some(Ok(Event::Incoming(Packet::Publish(p)))) if p.topic == cfg.topics.ncmd => {
                    sp.commands.fetch_add(1, Relaxed);
                    match parse_ncmd(&p.payload) {
                        Ok(cmds) => {
                            for c in cmds {
                                match c {
                                    NodeCommand::Rebirth
                                        if dying.is_none() && (node.born || !waits_for_host) =>
                                    {
                                        info!("Sparkplug: rebirth asked for.");
                                        node.birth(&cfg, &stats);
                                    }
                                    NodeCommand::Rebirth => {}
                                    NodeCommand::Ack(id) => {
                                        info!(id = ?id, "Sparkplug: alarm acknowledgement received.");
                                        if commands.try_send(Command::Ack(id)).is_err() {
                                            warn!("Sparkplug: decide is not taking commands; acknowledgement dropped.");
                                        }
                                    }
                                }
                            }
                        }
                        Err(e) => {
                            sp.bad_commands.fetch_add(1, Relaxed);
                            warn!(error = %e, "Sparkplug: ignored an NCMD.");
                        }
                    }
                }
                Some(Ok(Event::Outgoing(Outgoing::Disconnect))) => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    let msg = e.to_string();
                    if connected {
                        warn!(error = %msg, "Sparkplug: lost the broker; reconnecting.");
                    } else if msg != last_error {
                        warn!(host = %cfg.mqtt.host, port = cfg.mqtt.port, error = %msg, "Sparkplug: cannot reach the broker; retrying.");
                    }
                    last_error = msg;
                    break;
                }
            }
            if Instant::now() >= next_look {
                next_look = Instant::now() + POLL;
                if dying.is_none() {
                    node.data(&cfg, &stats);
                }
            }
        }
        sp.connected.store(0, Relaxed);
        sp.born.store(0, Relaxed);
        if stop.load(Relaxed) {
            break;
        }
        if dying.is_none() {
            sleep_unless(backoff, &stop);
            backoff = (backoff * 2).min(cfg.mqtt.reconnect_max);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_has_the_field_numbers_of_sparkplug_b_proto() {
        let bytes = Payload {
            timestamp: Some(1),
            metrics: vec![Metric {
                name: Some("a".into()),
                datatype: Some(datatype::BOOLEAN),
                value: Some(Value::BooleanValue(true)),
                ..Metric::default()
            }],
            seq: Some(2),
            ..Payload::default()
        }
        .encode_to_vec();
        // timestamp (1, varint) = 1; metrics (2, length 7): name (1) "a", datatype (4)
        // = 11, boolean_value (14) = true; seq (3, varint) = 2.
        assert_eq!(
            bytes,
            [0x08, 1, 0x12, 7, 0x0a, 1, b'a', 0x20, 11, 0x70, 1, 0x18, 2]
        );
    }

    #[test]
    fn commands_and_states_are_read_strictly() {
        let ncmd = |metrics: Vec<Metric>| {
            Payload {
                metrics,
                ..Payload::default()
            }
            .encode_to_vec()
        };
        let m = |name: &str, v: Value| Metric::new(name, v, 0);
        assert_eq!(
            parse_ncmd(&ncmd(vec![m(
                "Node Control/Rebirth",
                Value::BooleanValue(true)
            )])),
            Ok(vec![NodeCommand::Rebirth])
        );
        assert_eq!(
            parse_ncmd(&ncmd(vec![
                m("Alarm/Acknowledge", Value::LongValue(7)),
                m("Alarm/Acknowledge", Value::LongValue(0))
            ])),
            Ok(vec![NodeCommand::Ack(Some(7)), NodeCommand::Ack(None)])
        );
        let err = parse_ncmd(&ncmd(vec![m("Inspection/Frames", Value::LongValue(0))])).unwrap_err();
        assert!(err.contains("Inspection/Frames"), "{err}");
        assert!(parse_ncmd(b"\xff\xff\xff").is_err());
        assert_eq!(parse_state(br#"{"online":true,"timestamp":5}"#), Some(true));
        assert_eq!(
            parse_state(br#"{"online":false,"timestamp":5}"#),
            Some(false)
        );
        assert_eq!(parse_state(b"OFFLINE"), Some(false));
        assert_eq!(parse_state(b"online?"), None);
    }

    #[test]
    fn bd_seq_counts_across_restarts_and_wraps() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(next_bd_seq(dir.path(), None), 0);
        assert_eq!(next_bd_seq(dir.path(), None), 1, "read back from the file");
        assert_eq!(next_bd_seq(dir.path(), Some(255)), 0);
    }
}
