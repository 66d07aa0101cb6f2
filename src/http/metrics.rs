//! `/metrics`: the counters of [`Stats`] in the Prometheus / OpenMetrics text format,
//! encoded by `prometheus-client` at each scrape. The pipeline keeps counting in its own
//! lock-free atomics; nothing here is on a frame's path.
//!
//! Names start with `inspectd_` and carry their unit; counters end in `_total` (README,
//! "Metrics", lists every one).

use std::fmt::Error;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::contract::AlarmKind;
use crate::contract::Condition;
use crate::telemetry::{Histogram, Stats};

/// The registry `/metrics` encodes: one collector reading `stats`.
pub fn registry(stats: Arc<Stats>) -> Registry {
    let mut registry = Registry::with_prefix("inspectd");
    registry.register_collector(Box::new(StatsCollector { stats }));
    registry
}

/// The exposition text of `registry` (OpenMetrics 1.0, ending in `# EOF`).
pub fn encode(registry: &Registry) -> String {
    let mut out = String::with_capacity(16 << 10);
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("metrics encode into a String");
    out
}

/// The content type of [`encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

struct StatsCollector {
    stats: Arc<Stats>,
}

impl std::fmt::Debug for StatsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatsCollector")
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Result<(), Error> {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: f64,
) -> Result<(), Error> {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, unit, g.metric_type())?)
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Relaxed)
}

impl Collector for StatsCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), Error> {
        let s = &*self.stats;
        let live = &s.live;
        let labels = live.labels();

        let mut info = e.encode_descriptor(
            "model",
            "The model running: its id (from its metadata) as a label.",
            None,
            MetricType::Info,
        )?;
        info.encode_info(&[("model", live.model_id())])?;

        counter(
            &mut e,
            "frames_captured",
            "Frames delivered by the source.",
            load(&s.frames_captured),
        )?;
        counter(
            &mut e,
            "frames_published",
            "Frames inspected to the end (a result was sent or counted as dropped).",
            load(&s.frames_published),
        )?;
        {
            let mut m = e.encode_descriptor(
                "dropped",
                "Things dropped, per queue: capture (a live source's oldest frame), results (broker down), outbox (oldest alarm events over state.max_outbox_bytes), evidence (the writer was behind).",
                None,
                MetricType::Counter,
            )?;
            for (queue, v) in [
                ("capture", &s.dropped_capture_queue),
                ("results", &s.dropped_results),
                ("outbox", &s.outbox_dropped),
                ("evidence", &s.evidence_dropped),
            ] {
                ConstCounter::new(load(v)).encode(m.encode_family(&[("queue", queue)])?)?;
            }
        }
        counter(
            &mut e,
            "corrupt_files",
            "Replayed files that could not be decoded (skipped).",
            load(&s.corrupt_files),
        )?;
        counter(
            &mut e,
            "frame_errors",
            "Frames a stage failed on (skipped).",
            load(&s.frame_errors),
        )?;
        counter(
            &mut e,
            "frame_pixels",
            "Pixels of the frames classified.",
            load(&s.frame_pixels),
        )?;
        counter(
            &mut e,
            "detector_pixels",
            "Pixels of those frames the detector ran on (the rest the first look found clean; all of them without a first look).",
            load(&s.detector_pixels),
        )?;
        counter(&mut e, "repeats_skipped", "Frames identical to the previous one (same difference hash) not counted again by the alarms.", load(&s.repeats_skipped))?;
        {
            let mut m = e.encode_descriptor(
                "stage_latency",
                "Time per frame in each stage, and from capture to publish (end_to_end).",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for (stage, h) in [
                ("preprocess", &s.preprocess),
                ("classify", &s.classify),
                ("first_look", &s.first_look),
                ("decide", &s.decide),
                ("end_to_end", &s.end_to_end),
            ] {
                encode_histogram(&mut m, stage, h)?;
            }
        }
        {
            let mut m = e.encode_descriptor(
                "classify_worker_busy",
                "Time each classify worker spent running the model.",
                Some(&Unit::Seconds),
                MetricType::Counter,
            )?;
            for (i, w) in s.classify_workers.running().iter().enumerate() {
                let secs = load(&w.busy_us) as f64 / 1e6;
                ConstCounter::new(secs).encode(m.encode_family(&[("worker", i.to_string())])?)?;
            }
        }
        {
            let mut m = e.encode_descriptor(
                "alarm_events",
                "Alarm events stored in the outbox, per class and event.",
                None,
                MetricType::Counter,
            )?;
            for (i, class) in labels.iter().enumerate() {
                for kind in [AlarmKind::Raised, AlarmKind::Cleared, AlarmKind::Acked] {
                    let v = s.alarm_events.get(i, kind);
                    ConstCounter::new(v).encode(
                        m.encode_family(&[("class", class.as_str()), ("event", kind.as_str())])?,
                    )?;
                }
            }
        }
        {
            let mut m = e.encode_descriptor(
                "alarm_active",
                "1 while the class's alarm is active.",
                None,
                MetricType::Gauge,
            )?;
            let active = live.active_bits();
            for (i, class) in labels.iter().enumerate() {
                let v = ((active >> i) & 1) as i64;
                ConstGauge::new(v).encode(m.encode_family(&[("class", class.as_str())])?)?;
            }
        }
        gauge(
            &mut e,
            "outbox_pending_events",
            "Alarm events stored and not yet acknowledged by the broker.",
            None,
            load(&s.outbox_pending) as f64,
        )?;
        gauge(
            &mut e,
            "outbox_pending",
            "Size of the alarm events waiting for the broker.",
            Some(&Unit::Bytes),
            load(&s.outbox_bytes) as f64,
        )?;
        counter(
            &mut e,
            "alarms_acked_by_broker",
            "Alarm events the broker acknowledged (PUBACK).",
            load(&s.alarms_acked_by_broker),
        )?;
        gauge(
            &mut e,
            "broker_connected",
            "1 while connected to the MQTT broker.",
            None,
            load(&s.mqtt_connected) as f64,
        )?;
        counter(
            &mut e,
            "broker_reconnects",
            "Connections to the broker after the first.",
            load(&s.mqtt_reconnects),
        )?;
        let camera_up = !s.camera_down() && load(&s.source_finished) == 0;
        gauge(
            &mut e,
            "camera_up",
            "1 while the source delivers frames (a camera streaming, a folder not finished).",
            None,
            camera_up as u8 as f64,
        )?;
        counter(
            &mut e,
            "camera_reconnects",
            "Times the camera was opened again after a loss.",
            load(&s.camera_reconnects),
        )?;
        {
            let mut m = e.encode_descriptor(
                "health_condition",
                "1 while the frame health condition holds (dark, saturated, no_contrast, frozen).",
                None,
                MetricType::Gauge,
            )?;
            let bits = load(&s.health);
            for c in Condition::ALL {
                let v = (bits & c.bit() != 0) as i64;
                ConstGauge::new(v).encode(m.encode_family(&[("condition", c.name())])?)?;
            }
        }
        let [mean, contrast, saturated] = s.frame_measures().unwrap_or_default();
        gauge(
            &mut e,
            "frame_mean_gray_level",
            "The last frame's mean gray level (0 to 255).",
            None,
            mean,
        )?;
        gauge(
            &mut e,
            "frame_contrast_gray_level",
            "The last frame's contrast: standard deviation of its gray levels.",
            None,
            contrast,
        )?;
        gauge(
            &mut e,
            "frame_saturated",
            "Fraction of the last frame's pixels at 250 or above.",
            Some(&Unit::Ratios),
            saturated,
        )?;
        counter(
            &mut e,
            "evidence_written",
            "Evidence images written.",
            load(&s.evidence_written),
        )?;
        counter(
            &mut e,
            "evidence_errors",
            "Evidence images that could not be written (disk full, permissions).",
            load(&s.evidence_errors),
        )?;
        counter(
            &mut e,
            "evidence_removed",
            "Evidence files removed by retention (evidence.max_bytes, evidence.max_age_days).",
            load(&s.evidence_removed),
        )?;
        gauge(
            &mut e,
            "evidence",
            "Size of the evidence folder.",
            Some(&Unit::Bytes),
            load(&s.evidence_bytes) as f64,
        )?;
        let mb = &s.modbus;
        if load(&mb.enabled) == 1 {
            gauge(
                &mut e,
                "modbus_listening",
                "1 while the Modbus TCP face listens.",
                None,
                load(&mb.listening) as f64,
            )?;
            gauge(
                &mut e,
                "modbus_clients",
                "Modbus clients connected now.",
                None,
                load(&mb.clients) as f64,
            )?;
            for (name, help, v) in [
                ("modbus_connections", "Modbus connections accepted.", &mb.connections),
                ("modbus_refused", "Modbus connections refused: modbus.max_clients were connected.", &mb.refused),
                ("modbus_idle_closed", "Modbus connections closed after modbus.idle_timeout_s without a request.", &mb.idle_closed),
                ("modbus_requests", "Modbus requests answered.", &mb.requests),
                ("modbus_exceptions", "Modbus requests answered with an exception (a bad address, function or value).", &mb.exceptions),
                ("modbus_acks", "Alarm acknowledgements written over Modbus.", &mb.acks),
            ] {
                counter(&mut e, name, help, load(v))?;
            }
        }
        let ua = &s.opcua;
        if load(&ua.enabled) == 1 {
            gauge(
                &mut e,
                "opcua_listening",
                "1 while the OPC UA server listens.",
                None,
                load(&ua.listening) as f64,
            )?;
            counter(
                &mut e,
                "opcua_acks",
                "Alarm acknowledgements called through the OPC UA Acknowledge method.",
                load(&ua.acks),
            )?;
        }
        let sp = &s.sparkplug;
        if load(&sp.enabled) == 1 {
            gauge(
                &mut e,
                "sparkplug_connected",
                "1 while the Sparkplug edge node is connected to the broker.",
                None,
                load(&sp.connected) as f64,
            )?;
            gauge(
                &mut e,
                "sparkplug_born",
                "1 while the edge node is born (NBIRTH sent, no NDEATH since).",
                None,
                load(&sp.born) as f64,
            )?;
            gauge(
                &mut e,
                "sparkplug_waiting_for_host",
                "1 while sparkplug.primary_host is not online.",
                None,
                load(&sp.waiting_for_host) as f64,
            )?;
            gauge(
                &mut e,
                "sparkplug_bdseq",
                "The bdSeq of the edge node's current connection.",
                None,
                load(&sp.bd_seq) as f64,
            )?;
            for (name, help, v) in [
                ("sparkplug_births", "NBIRTH messages sent.", &sp.births),
                (
                    "sparkplug_deaths",
                    "NDEATH messages sent (graceful deaths; the will covers the rest).",
                    &sp.deaths,
                ),
                ("sparkplug_data", "NDATA messages sent.", &sp.data),
                (
                    "sparkplug_commands",
                    "NCMD messages received.",
                    &sp.commands,
                ),
                (
                    "sparkplug_bad_commands",
                    "NCMD messages ignored (undecodable, or naming no command metric).",
                    &sp.bad_commands,
                ),
            ] {
                counter(&mut e, name, help, load(v))?;
            }
        }
        Ok(())
    }
}

fn encode_histogram(
    m: &mut prometheus_client::encoding::MetricEncoder,
    stage: &str,
    h: &Histogram,
) -> Result<(), Error> {
    let (sum, count, buckets) = h.cumulative();
    // The text format wants each bucket's own count; it adds them up itself.
    let mut own = Vec::with_capacity(buckets.len() + 1);
    let mut below = 0;
    for &(le, cumulative) in &buckets {
        own.push((le, cumulative - below));
        below = cumulative;
    }
    own.push((f64::MAX, count - below));
    m.encode_family(&[("stage", stage)])?
        .encode_histogram::<NoLabelSet>(sum, count, &own, None)
}
