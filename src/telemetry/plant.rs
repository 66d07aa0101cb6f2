//! What the plant faces (`[modbus]`, `[sparkplug]`, `[opcua]`) say: the same truth the MQTT
//! contract publishes, kept where every face can read it without touching a frame.
//!
//! Decide writes each class's alarm state after every change (raise, clear,
//! acknowledgement, a restore at start-up); publish writes the last frame's verdict and
//! the counters as it publishes the result. Every write bumps [`PlantView::version`], so a
//! face that sends changes (Sparkplug's NDATA) knows when to look.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use crate::frame::Frame;

/// One class's alarm, as decide holds it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlarmView {
    pub active: bool,
    /// Raised with `alarm.latch`: it stays active until acknowledged.
    pub latched: bool,
    /// Acknowledged since it was raised.
    pub acked: bool,
    /// The outbox id of the `raised` event (0: none).
    pub raised_id: u64,
}

/// The last frame published.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LastResult {
    pub seq: u64,
    pub ts_ms: u64,
    pub ok: bool,
    pub defects: u32,
    /// Bit i: class i is among its defects.
    pub classes: u64,
    /// The highest score among its defects (0 without any).
    pub max_score: f32,
    /// Each defect: label index, score, box (x, y, w, h in frame pixels).
    pub items: Vec<(usize, f32, [u32; 4])>,
}

#[derive(Default)]
pub struct PlantView {
    alarms: Mutex<Vec<AlarmView>>,
    last: Mutex<Option<LastResult>>,
    /// Frames published, defects reported in them, and frames with at least one defect.
    pub frames: AtomicU64,
    pub defects: AtomicU64,
    pub defective_frames: AtomicU64,
    version: AtomicU64,
}

impl PlantView {
    /// Decide's alarm state, in class order.
    pub fn set_alarms(&self, alarms: Vec<AlarmView>) {
        let mut a = self.alarms.lock().expect("plant alarms lock");
        if *a != alarms {
            *a = alarms;
            self.version.fetch_add(1, Relaxed);
        }
    }

    pub fn alarms(&self) -> Vec<AlarmView> {
        self.alarms.lock().expect("plant alarms lock").clone()
    }

    /// A frame was published with this verdict. Called per frame: the last result is
    /// rewritten in place, so its defect list allocates only when a frame holds more
    /// defects than any before it.
    pub fn set_last(&self, frame: &Frame) {
        let v = &frame.verdict;
        let defects = v.defects.len() as u64;
        {
            let mut guard = self.last.lock().expect("plant last lock");
            let last = guard.get_or_insert_with(LastResult::default);
            last.seq = frame.seq;
            last.ts_ms = frame.ts_ms;
            last.ok = v.ok;
            last.defects = defects as u32;
            last.classes = v.defects.iter().fold(0u64, |m, d| {
                m | 1u64.checked_shl(d.label as u32).unwrap_or(0)
            });
            last.max_score = v.defects.iter().map(|d| d.score).fold(0.0, f32::max);
            last.items.clear();
            last.items
                .extend(v.defects.iter().map(|d| (d.label, d.score, d.bbox)));
        }
        self.frames.fetch_add(1, Relaxed);
        self.defects.fetch_add(defects, Relaxed);
        if defects > 0 {
            self.defective_frames.fetch_add(1, Relaxed);
        }
        self.version.fetch_add(1, Relaxed);
    }

    pub fn last(&self) -> Option<LastResult> {
        self.last.lock().expect("plant last lock").clone()
    }

    /// Changes whenever anything here changed.
    pub fn version(&self) -> u64 {
        self.version.load(Relaxed)
    }
}

/// The Modbus face's counters (`[modbus]`).
#[derive(Default)]
pub struct ModbusStats {
    /// 1 when `[modbus]` is enabled.
    pub enabled: AtomicU64,
    /// 1 while the server listens.
    pub listening: AtomicU64,
    pub clients: AtomicU64,
    pub connections: AtomicU64,
    /// Connections refused because `modbus.max_clients` were connected.
    pub refused: AtomicU64,
    /// Connections closed after `modbus.idle_timeout_s` without a request.
    pub idle_closed: AtomicU64,
    pub requests: AtomicU64,
    /// Requests answered with a Modbus exception (a bad address, function or value).
    pub exceptions: AtomicU64,
    /// Acknowledgements written (coil or register).
    pub acks: AtomicU64,
}

/// The Sparkplug B edge node's counters (`[sparkplug]`).
#[derive(Default)]
pub struct SparkplugStats {
    /// 1 when `[sparkplug]` is enabled.
    pub enabled: AtomicU64,
    /// 1 while connected to the broker.
    pub connected: AtomicU64,
    /// 1 while born (NBIRTH sent on this connection, no NDEATH since).
    pub born: AtomicU64,
    /// 1 while `sparkplug.primary_host` is configured and its STATE says offline (or
    /// has not been seen).
    pub waiting_for_host: AtomicU64,
    pub births: AtomicU64,
    pub deaths: AtomicU64,
    pub data: AtomicU64,
    pub commands: AtomicU64,
    /// NCMD payloads that could not be decoded or named no known metric.
    pub bad_commands: AtomicU64,
    /// The bdSeq of the current connection.
    pub bd_seq: AtomicU64,
}

/// The OPC UA server's counters (`[opcua]`).
#[derive(Default)]
pub struct OpcUaStats {
    /// 1 when `[opcua]` is enabled.
    pub enabled: AtomicU64,
    /// 1 while the server listens.
    pub listening: AtomicU64,
    /// Acknowledgements called through the `Acknowledge` method.
    pub acks: AtomicU64,
}
