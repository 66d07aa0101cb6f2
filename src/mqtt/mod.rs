//! Publish: results, alarms and stats over MQTT, per the contract in README.md.
//!
//! Two threads. `mqtt` owns the connection: it connects with backoff, and on every
//! ConnAck republishes the retained truth (`status` online, `alarm/active`, every
//! `alarm/<class>/active`), subscribes to `cmd/ack` and sends every alarm event still in
//! the outbox, in id order. `publish` takes decided frames from the pipeline and never
//! waits on the broker: results go out when connected and are dropped with a counter when
//! not, alarms are already on disk and go out from the outbox.
//!
//! Delivery of alarms: rumqttc reports each publish it writes as `Outgoing::Publish(pkid)`
//! in the order the requests were made, so a queue of "what was asked" maps packet ids to
//! outbox ids; the matching PubAck removes the event from the outbox. Each connection gets
//! a fresh client and event loop, so nothing is retransmitted behind our back: after a
//! reconnect the outbox alone says what still has to go.

pub mod broker;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rumqttc::{Client, Event, LastWill, MqttOptions, Outgoing, Packet, QoS};
use tracing::{debug, error, info, warn};

use crate::config::Settings;
use crate::contract::{flag, parse_ack, result_json, Command, Topics, OFFLINE, ONLINE};
use crate::stages::decide::{Decided, ToPublish};
use crate::stages::StageContext;
use crate::state::outbox::{EventKind, Outbox};
use crate::telemetry::Stage;
use crate::telemetry::Stats;

/// Most alarm events in flight (published, not yet acknowledged) at once.
const ALARM_WINDOW: usize = 32;

/// State shared by the `publish` and `mqtt` threads.
struct Session {
    client: Option<Client>,
    /// One entry per publish request made on this client, in order: the outbox id for
    /// alarm events, None for everything else.
    asked: VecDeque<Option<u64>>,
    /// QoS 1 packet ids written and not yet acknowledged -> outbox id (if an alarm).
    inflight: HashMap<u16, Option<u64>>,
    /// Outbox ids published on this connection and not yet acknowledged.
    sent: BTreeSet<u64>,
    /// The retained truth: which alarms are active, in class order.
    active: Vec<bool>,
    /// What this connection last published of it.
    published: Option<Vec<bool>>,
}

impl Session {
    fn publish(
        &mut self,
        topic: &str,
        qos: QoS,
        retain: bool,
        payload: Vec<u8>,
        alarm: Option<u64>,
    ) -> bool {
        let Some(client) = &self.client else {
            return false;
        };
        match client.try_publish(topic, qos, retain, payload) {
            Ok(()) => {
                self.asked.push_back(alarm);
                true
            }
            Err(_) => false,
        }
    }

    /// Publishes the retained alarm state: every topic when `all` (on connect), else only
    /// the topics whose value changed since this connection last published them.
    fn publish_alarm_state(&mut self, topics: &Topics, all: bool) {
        let any = self.active.iter().any(|&a| a);
        let before = if all { None } else { self.published.clone() };
        let was_any = before.as_ref().map(|b| b.iter().any(|&a| a));
        if was_any != Some(any) {
            self.publish(
                &topics.alarm_active,
                QoS::AtLeastOnce,
                true,
                flag(any),
                None,
            );
        }
        for i in 0..self.active.len() {
            let a = self.active[i];
            if before.as_ref().map(|b| b[i]) != Some(a) {
                self.publish(
                    &topics.class_active[i],
                    QoS::AtLeastOnce,
                    true,
                    flag(a),
                    None,
                );
            }
        }
        self.published = Some(self.active.clone());
    }

    /// Takes a new active set (bit i = class i) and publishes the topics that changed.
    fn set_active(&mut self, active: u64, topics: &Topics) {
        for (i, a) in self.active.iter_mut().enumerate() {
            *a = active & (1 << i) != 0;
        }
        self.publish_alarm_state(topics, false);
    }

    /// Publishes outbox events not yet sent on this connection, oldest first.
    fn pump(&mut self, outbox: &Mutex<Outbox>, topics: &Topics, stats: &Stats) {
        if self.client.is_none() {
            return;
        }
        let outbox = outbox.lock().expect("outbox lock");
        stats
            .outbox_pending
            .store(outbox.pending_count() as u64, Relaxed);
        stats.outbox_bytes.store(outbox.pending_bytes(), Relaxed);
        for (id, kind, payload) in outbox.pending_events() {
            if self.sent.len() >= ALARM_WINDOW {
                break;
            }
            if self.sent.contains(&id) {
                continue;
            }
            let topic = match kind {
                EventKind::Alarm => &topics.alarm,
                EventKind::Defect => &topics.defect,
                EventKind::Coil => &topics.coil,
            };
            if !self.publish(topic, QoS::AtLeastOnce, false, payload.to_vec(), Some(id)) {
                break;
            }
            self.sent.insert(id);
            if kind == EventKind::Alarm {
                stats.alarms_published.fetch_add(1, Relaxed);
            }
        }
    }
}

/// Everything the publish stage needs from the config.
#[derive(Debug, Clone)]
pub struct PublishConfig {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub result_qos: QoS,
    pub keep_alive: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub request_queue: usize,
    pub username: Option<String>,
    pub password_file: Option<std::path::PathBuf>,
    pub ca_file: Option<std::path::PathBuf>,
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
}

impl PublishConfig {
    pub fn from_settings(s: &Settings) -> PublishConfig {
        let m = &s.mqtt;
        let host = if m.mode == crate::config::MqttMode::Embedded
            && (m.host == "0.0.0.0" || m.host == "::")
        {
            "127.0.0.1".to_string()
        } else {
            m.host.clone()
        };
        PublishConfig {
            host,
            port: m.port as u16,
            client_id: s.client_id(),
            result_qos: if m.result_qos == 1 {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            },
            keep_alive: Duration::from_secs(m.keep_alive_s),
            reconnect_min: Duration::from_millis(m.reconnect_min_ms),
            reconnect_max: Duration::from_millis(m.reconnect_max_ms),
            request_queue: m.result_queue,
            username: m.username.clone(),
            password_file: m.password_file.clone(),
            ca_file: m.ca_file.clone(),
            cert_file: m.cert_file.clone(),
            key_file: m.key_file.clone(),
        }
    }

    fn options(&self, topics: &Topics) -> Result<MqttOptions, String> {
        self.options_with(
            &self.client_id,
            LastWill::new(&topics.status, "offline", QoS::AtLeastOnce, true),
        )
    }

    /// The session options of `[mqtt]` (keep-alive, credentials, TLS) for another client
    /// of the same broker: its own id and last will (the Sparkplug edge node's).
    pub fn options_with(&self, client_id: &str, will: LastWill) -> Result<MqttOptions, String> {
        let mut o = MqttOptions::new(client_id, &self.host, self.port);
        o.set_keep_alive(self.keep_alive);
        o.set_clean_session(true);
        o.set_last_will(will);
        o.set_max_packet_size(1 << 20, 1 << 20);
        o.set_inflight(100);
        if let Some(user) = &self.username {
            let password = match &self.password_file {
                Some(f) => read_password(f)?,
                None => String::new(),
            };
            o.set_credentials(user, password);
        }
        if let Some(ca) = &self.ca_file {
            o.set_transport(rumqttc::Transport::tls_with_config(
                self.tls_config(ca)?.into(),
            ));
        }
        Ok(o)
    }

    fn tls_config(
        &self,
        ca: &std::path::Path,
    ) -> Result<rumqttc::tokio_rustls::rustls::ClientConfig, String> {
        use rumqttc::tokio_rustls::rustls;
        let read =
            |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let mut roots = rustls::RootCertStore::empty();
        let ca_pem = read(ca)?;
        for cert in rustls_pemfile::certs(&mut ca_pem.as_slice()) {
            let cert = cert.map_err(|e| format!("mqtt.ca_file {}: {e}", ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("mqtt.ca_file {}: {e}", ca.display()))?;
        }
        if roots.is_empty() {
            return Err(format!(
                "mqtt.ca_file {}: no certificate in it",
                ca.display()
            ));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => {
                let certs = rustls_pemfile::certs(&mut read(c)?.as_slice())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("mqtt.cert_file {}: {e}", c.display()))?;
                let key = rustls_pemfile::private_key(&mut read(k)?.as_slice())
                    .map_err(|e| format!("mqtt.key_file {}: {e}", k.display()))?
                    .ok_or_else(|| {
                        format!("mqtt.key_file {}: no private key in it", k.display())
                    })?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| format!("mqtt.cert_file: {e}"))
            }
            _ => Ok(builder.with_no_client_auth()),
        }
    }
}

/// Reads a password file (first line), warning when others may read it.
fn read_password(path: &std::path::Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("mqtt.password_file {}: {e}", path.display()))?;
    static WARNED: AtomicBool = AtomicBool::new(false);
    if meta.permissions().mode() & 0o004 != 0 && !WARNED.swap(true, Relaxed) {
        warn!(path = %path.display(), "The MQTT password file is readable by every user; chmod 600 it.");
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("mqtt.password_file {}: {e}", path.display()))?;
    Ok(text.lines().next().unwrap_or("").to_string())
}

/// The publish side of the pipeline: call [`Publisher::publish`] per decided frame.
pub struct Publisher {
    session: Arc<Mutex<Session>>,
    outbox: Arc<Mutex<Outbox>>,
    topics: Topics,
    stats: Arc<Stats>,
    labels: Vec<String>,
    model: String,
    result_qos: QoS,
    last_active: u64,
    json: Vec<u8>,
    stop_io: Arc<AtomicBool>,
    io: Option<std::thread::JoinHandle<()>>,
}

impl Publisher {
    /// The stage's loop: publishes what decide hands over, `stats` every
    /// `stats_interval`; when decide is done, the last stats and status offline.
    pub fn run(
        mut self,
        input: Receiver<ToPublish>,
        stats_interval: Duration,
        model_id: String,
        ctx: StageContext,
    ) {
        let mut next_stats = Instant::now() + stats_interval;
        let mut since = (Instant::now(), 0u64);
        let mut health_seen = (0, 0);
        loop {
            ctx.beat(Stage::Publish);
            let health_now = (
                ctx.stats.health_changes.load(Relaxed),
                ctx.stats.camera_state.load(Relaxed),
            );
            if health_now != health_seen {
                health_seen = health_now;
                self.publish_health();
            }
            let wait = next_stats
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(1));
            match input.recv_timeout(wait) {
                Ok(ToPublish::Frame(d)) => self.publish(&d),
                Ok(ToPublish::AlarmsStored { active }) => {
                    self.set_active(active);
                    self.publish_pending();
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if Instant::now() >= next_stats {
                self.publish_stats(ctx.stats.snapshot_json(&mut since, &model_id));
                next_stats += stats_interval;
                if next_stats < Instant::now() {
                    next_stats = Instant::now() + stats_interval;
                }
            }
        }
        self.publish_stats(ctx.stats.snapshot_json(&mut since, &model_id));
        self.shutdown(Duration::from_secs(2));
        info!("Pipeline drained; status is offline.");
    }

    /// Starts the `mqtt` thread. `commands` receives `cmd/ack` requests for decide.
    /// `primed` gets one message once the first connection has its subscriptions
    /// acknowledged (the broker's retained commands, such as the coil, came first), or
    /// once that first try failed.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        cfg: PublishConfig,
        topics: Topics,
        outbox: Arc<Mutex<Outbox>>,
        stats: Arc<Stats>,
        labels: Vec<String>,
        model: String,
        initial_active: Vec<bool>,
        commands: Sender<Command>,
        primed: Sender<()>,
    ) -> Result<Publisher, String> {
        // Fail early on a broken TLS or password setup: that needs the operator.
        cfg.options(&topics)?;
        let session = Arc::new(Mutex::new(Session {
            client: None,
            asked: VecDeque::new(),
            inflight: HashMap::new(),
            sent: BTreeSet::new(),
            active: initial_active.clone(),
            published: None,
        }));
        let stop_io = Arc::new(AtomicBool::new(false));
        let result_qos = cfg.result_qos;
        let io = {
            let (session, outbox, topics, stats, stop) = (
                session.clone(),
                outbox.clone(),
                topics.clone(),
                stats.clone(),
                stop_io.clone(),
            );
            std::thread::Builder::new()
                .name("mqtt".into())
                .spawn(move || {
                    run_connection(cfg, topics, session, outbox, stats, commands, primed, stop)
                })
                .map_err(|e| e.to_string())?
        };
        let last_active = initial_active
            .iter()
            .enumerate()
            .fold(0u64, |m, (i, &a)| m | ((a as u64) << i));
        Ok(Publisher {
            session,
            outbox,
            topics,
            stats,
            labels,
            model,
            result_qos,
            last_active,
            json: Vec::with_capacity(512),
            stop_io,
            io: Some(io),
        })
    }

    /// Publishes one decided frame: result, result/ok, alarm state changes; alarm events
    /// go out from the outbox.
    pub fn publish(&mut self, d: &Decided) {
        let frame = &d.frame;
        let latency_ms = frame
            .captured_at
            .map(|t| t.elapsed().as_secs_f64() * 1e3)
            .unwrap_or(0.0);
        result_json(frame, &self.labels, &self.model, latency_ms, &mut self.json);
        let mut s = self.session.lock().expect("session lock");
        let sent = s.publish(
            &self.topics.result,
            self.result_qos,
            false,
            self.json.clone(),
            None,
        ) && s.publish(
            &self.topics.result_ok,
            self.result_qos,
            true,
            flag(frame.verdict.ok),
            None,
        );
        if !sent {
            self.stats.dropped_results.fetch_add(1, Relaxed);
        }
        if d.active != self.last_active {
            self.last_active = d.active;
            s.set_active(d.active, &self.topics);
        }
        self.stats.live.set_active_bits(d.active);
        self.stats.live.offer(frame);
        self.stats.plant.set_last(frame);
        if !d.alarms.is_empty()
            || s.sent.len() < self.outbox.lock().map(|o| o.pending_count()).unwrap_or(0)
        {
            s.pump(&self.outbox, &self.topics, &self.stats);
        }
        self.stats.frames_published.fetch_add(1, Relaxed);
        if let Some(t) = frame.captured_at {
            self.stats
                .end_to_end
                .record_us(t.elapsed().as_micros() as u64);
        }
    }

    /// Publishes the retained `health` state as it is now.
    pub fn publish_health(&self) {
        let json = crate::stages::health::health_json(&self.stats);
        let mut s = self.session.lock().expect("session lock");
        s.publish(&self.topics.health, QoS::AtLeastOnce, true, json, None);
    }

    /// Sends outbox events that are not on their way yet.
    pub fn publish_pending(&mut self) {
        let mut s = self.session.lock().expect("session lock");
        s.pump(&self.outbox, &self.topics, &self.stats);
    }

    /// Publishes a `stats` message (QoS 0, dropped when disconnected).
    pub fn publish_stats(&self, json: String) {
        let mut s = self.session.lock().expect("session lock");
        s.publish(
            &self.topics.stats,
            QoS::AtMostOnce,
            false,
            json.into_bytes(),
            None,
        );
    }

    /// Tells the alarm-state topics the current truth (after an acknowledgement, say).
    pub fn set_active(&mut self, active: u64) {
        self.stats.live.set_active_bits(active);
        if active != self.last_active {
            self.last_active = active;
            self.session
                .lock()
                .expect("session lock")
                .set_active(active, &self.topics);
        }
    }

    /// Sends what can still be sent within `grace` (pending alarms), then `status`
    /// offline, and disconnects.
    pub fn shutdown(mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        // Wait, within the grace period, until every stored alarm is acknowledged (which
        // may first need the connection to come up) and nothing else is on its way.
        loop {
            let done = {
                let mut s = self.session.lock().expect("session lock");
                s.pump(&self.outbox, &self.topics, &self.stats);
                let pending = self.outbox.lock().expect("outbox lock").pending_count();
                pending == 0
                    && (s.client.is_none() || (s.inflight.is_empty() && s.asked.is_empty()))
            };
            if done || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        {
            let mut s = self.session.lock().expect("session lock");
            if s.publish(
                &self.topics.status,
                QoS::AtLeastOnce,
                true,
                OFFLINE.to_vec(),
                None,
            ) {
                // Wait briefly for the broker to take it before the disconnect.
                drop(s);
                let until = Instant::now() + Duration::from_millis(1000).min(grace);
                while Instant::now() < until {
                    let s = self.session.lock().expect("session lock");
                    if s.asked.is_empty() && s.inflight.is_empty() {
                        break;
                    }
                    drop(s);
                    std::thread::sleep(Duration::from_millis(5));
                }
                let s = self.session.lock().expect("session lock");
                if let Some(c) = &s.client {
                    let _ = c.try_disconnect();
                }
            }
        }
        self.stop_io.store(true, Relaxed);
        if let Some(io) = self.io.take() {
            let _ = io.join();
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.stop_io.store(true, Relaxed);
        if let Some(c) = self.session.lock().ok().and_then(|s| s.client.clone()) {
            let _ = c.try_disconnect();
        }
        if let Some(io) = self.io.take() {
            let _ = io.join();
        }
    }
}

pub fn sleep_unless(d: Duration, stop: &AtomicBool) {
    let end = Instant::now() + d;
    while !stop.load(Relaxed) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `mqtt` thread: one connection after another until stopped.
#[allow(clippy::too_many_arguments)]
fn run_connection(
    cfg: PublishConfig,
    topics: Topics,
    session: Arc<Mutex<Session>>,
    outbox: Arc<Mutex<Outbox>>,
    stats: Arc<Stats>,
    commands: Sender<Command>,
    primed: Sender<()>,
    stop: Arc<AtomicBool>,
) {
    let subscriptions = [
        (&topics.cmd_ack, QoS::AtLeastOnce),
        (&topics.cmd_coil, QoS::AtLeastOnce),
        (&topics.cmd_speed, QoS::AtMostOnce),
        (&topics.cmd_encoder, QoS::AtMostOnce),
    ];
    // Subscriptions the broker has acknowledged: when all of the first connection's
    // are, the retained commands of those before the last (cmd/coil among them) have
    // arrived (a broker sends a subscription's retained messages right after its SUBACK).
    let mut subscribed = 0usize;
    let mut backoff = cfg.reconnect_min;
    let mut ever_connected = false;
    let mut last_error = String::new();
    while !stop.load(Relaxed) {
        let options = match cfg.options(&topics) {
            Ok(o) => o,
            Err(e) => {
                error!(error = %e, "MQTT settings unusable; retrying.");
                sleep_unless(backoff, &stop);
                backoff = (backoff * 2).min(cfg.reconnect_max);
                continue;
            }
        };
        let (client, mut connection) = Client::new(options, cfg.request_queue.max(16));
        let mut connected = false;
        loop {
            if stop.load(Relaxed) && !connected {
                break;
            }
            let event = match connection.recv_timeout(Duration::from_millis(200)) {
                Ok(ev) => ev,
                Err(rumqttc::RecvTimeoutError::Timeout) => continue,
                Err(rumqttc::RecvTimeoutError::Disconnected) => break,
            };
            match event {
                // A refused connection comes as ConnectionError::ConnectionRefused below.
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connected = true;
                    last_error.clear();
                    backoff = cfg.reconnect_min;
                    if ever_connected {
                        stats.mqtt_reconnects.fetch_add(1, Relaxed);
                    }
                    ever_connected = true;
                    stats.mqtt_connected.store(1, Relaxed);
                    info!(host = %cfg.host, port = cfg.port, "Connected to the MQTT broker.");
                    let mut s = session.lock().expect("session lock");
                    s.client = Some(client.clone());
                    s.asked.clear();
                    s.inflight.clear();
                    s.sent.clear();
                    for &(topic, qos) in &subscriptions {
                        if let Err(e) = client.try_subscribe(topic, qos) {
                            warn!(error = %e, topic = %topic, "Could not subscribe.");
                        }
                    }
                    s.publish(
                        &topics.status,
                        QoS::AtLeastOnce,
                        true,
                        ONLINE.to_vec(),
                        None,
                    );
                    s.publish_alarm_state(&topics, true);
                    s.publish(
                        &topics.health,
                        QoS::AtLeastOnce,
                        true,
                        crate::stages::health::health_json(&stats),
                        None,
                    );
                    s.pump(&outbox, &topics, &stats);
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    let mut s = session.lock().expect("session lock");
                    let alarm = s.asked.pop_front().flatten();
                    if pkid != 0 {
                        s.inflight.insert(pkid, alarm);
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    let mut s = session.lock().expect("session lock");
                    if let Some(Some(id)) = s.inflight.remove(&ack.pkid) {
                        s.sent.remove(&id);
                        if let Err(e) = outbox.lock().expect("outbox lock").ack(id) {
                            error!(error = %e, id, "Could not record an acknowledged alarm in the outbox.");
                        }
                        stats.alarms_acked_by_broker.fetch_add(1, Relaxed);
                        debug!(id, "Broker acknowledged an alarm event.");
                        s.pump(&outbox, &topics, &stats);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == topics.cmd_ack => {
                    match parse_ack(&p.payload) {
                        Ok(cmd) => {
                            info!(command = ?cmd, "Alarm acknowledgement received.");
                            let _ = commands.send(cmd);
                        }
                        Err(e) => warn!(error = %e, "Ignored a malformed cmd/ack message."),
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == topics.cmd_coil => {
                    match crate::contract::parse_coil(&p.payload) {
                        Ok(cmd) => {
                            info!(command = ?cmd, "New coil announced.");
                            let _ = commands.send(cmd);
                        }
                        Err(e) => warn!(error = %e, "Ignored a malformed cmd/coil message."),
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p)))
                    if p.topic == topics.cmd_speed || p.topic == topics.cmd_encoder =>
                {
                    let now = crate::frame::unix_ms();
                    let (res, what) = if p.topic == topics.cmd_speed {
                        (crate::contract::parse_speed(&p.payload, now), "cmd/speed")
                    } else {
                        (
                            crate::contract::parse_encoder(&p.payload, now),
                            "cmd/encoder",
                        )
                    };
                    match res {
                        // A reading the decide stage has no room for is superseded by the
                        // next one: never wait for it.
                        Ok(cmd) => {
                            if commands.try_send(cmd).is_err() {
                                debug!(
                                    topic = what,
                                    "Decide is busy; a line speed reading was skipped."
                                );
                            }
                        }
                        Err(e) => {
                            warn!(error = %e, topic = what, "Ignored a malformed line speed message.")
                        }
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    subscribed += 1;
                    if subscribed == subscriptions.len() {
                        let _ = primed.try_send(());
                    }
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                    break;
                }
                Ok(_) => {}
                Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                    let msg = format!("refused: {code:?}");
                    if msg != last_error {
                        error!(host = %cfg.host, port = cfg.port, reason = ?code,
                            "MQTT broker refused the connection; check mqtt.username and mqtt.password_file. Retrying.");
                    }
                    last_error = msg;
                    break;
                }
                Err(e) => {
                    let msg = e.to_string();
                    if connected {
                        warn!(error = %msg, "Lost the MQTT broker; reconnecting.");
                    } else if msg != last_error {
                        warn!(host = %cfg.host, port = cfg.port, error = %msg, "Cannot reach the MQTT broker; retrying.");
                    }
                    last_error = msg;
                    break;
                }
            }
        }
        {
            let mut s = session.lock().expect("session lock");
            s.client = None;
            s.asked.clear();
            s.inflight.clear();
            s.sent.clear();
        }
        stats.mqtt_connected.store(0, Relaxed);
        // The first try at the broker is over, whatever its outcome: capture need not wait.
        let _ = primed.try_send(());
        if stop.load(Relaxed) {
            break;
        }
        sleep_unless(backoff, &stop);
        backoff = (backoff * 2).min(cfg.reconnect_max);
    }
}
