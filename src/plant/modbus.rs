//! The Modbus TCP face (`[modbus]`): the register map a PLC polls, and coils and
//! registers it writes to acknowledge alarms.
//!
//! tokio-modbus serves the protocol on a one-thread runtime of its own (the `modbus`
//! thread). Every request is answered from [`Stats`] (atomics and two short locks):
//! nothing here waits on a frame, and an acknowledgement is handed to decide exactly as
//! `cmd/ack` is. [`REGISTER_MAP`] is the map README shows; a test reads it register by
//! register with a real Modbus client.
//!
//! Words are unsigned 16 bits; a 32-bit value takes two registers, high word first.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crossbeam_channel::Sender;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_modbus::{ExceptionCode, Request, Response};
use tracing::{debug, error, info, warn};

use crate::config::ModbusConfig;
use crate::contract::Command;
use crate::http::serve;
use crate::telemetry::{Stats, LIVENESS};

/// One entry of the map: where, how many words, its name and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisterSpec {
    pub address: u16,
    pub words: u16,
    pub name: &'static str,
    pub what: &'static str,
}

const fn reg(address: u16, words: u16, name: &'static str, what: &'static str) -> RegisterSpec {
    RegisterSpec {
        address,
        words,
        name,
        what,
    }
}

/// Status word bits (register 1).
pub const STATUS_RUNNING: u16 = 1 << 0;
pub const STATUS_SOURCE_OK: u16 = 1 << 1;
pub const STATUS_BROKER_OK: u16 = 1 << 2;
pub const STATUS_MODEL_OK: u16 = 1 << 3;
pub const STATUS_ALARM: u16 = 1 << 4;
pub const STATUS_UNACKED: u16 = 1 << 5;
pub const STATUS_IMAGE_FAULT: u16 = 1 << 6;
pub const STATUS_READY: u16 = 1 << 7;

/// First register of the active alarm ids (two words per class).
pub const ALARM_IDS: u16 = 32;
/// Classes the map has room for (bits of a word; ids at 32-63).
pub const MAX_CLASSES: usize = 16;
/// The holding registers an alarm id is written to (function 16, both words) to
/// acknowledge it; they read back the last id acknowledged this way.
pub const ACK_REGISTER: u16 = 100;
/// Coil 0 acknowledges every active alarm; coil 1 + i the alarm of class i.
pub const ACK_ALL_COIL: u16 = 0;

/// The register map (input registers, function 04; the same words as holding
/// registers, function 03). Registers 20-31 are reserved and read 0.
pub const REGISTER_MAP: [RegisterSpec; 17] = [
    reg(0, 1, "heartbeat", "counts up once a second while every pipeline stage shows life; wraps at 65535"),
    reg(1, 1, "status", "bit 0 running, 1 source delivering, 2 broker connected, 3 model loaded, 4 an alarm active, 5 an active alarm not acknowledged, 6 image health fault (dark, saturated, no contrast, frozen), 7 ready (as /health/ready)"),
    reg(2, 1, "alarm_active", "bit i: the alarm of class i is active"),
    reg(3, 1, "alarm_unacked", "bit i: the alarm of class i is active and not acknowledged"),
    reg(4, 1, "alarm_latched", "bit i: the alarm of class i is latched (stays until acknowledged)"),
    reg(5, 1, "classes", "how many defect classes the model has (class i: the model's i-th label)"),
    reg(6, 1, "last_verdict", "the last frame published: 0 none yet, 1 ok, 2 defect"),
    reg(7, 1, "last_defects", "defects in the last frame"),
    reg(8, 1, "last_classes", "bit i: class i among the last frame's defects"),
    reg(9, 1, "last_max_score", "the last frame's highest defect score, x 1000"),
    reg(10, 2, "last_seq", "the last frame's sequence number (low 32 bits)"),
    reg(12, 2, "frames", "frames published since start"),
    reg(14, 2, "defects", "defects reported since start"),
    reg(16, 2, "defective_frames", "frames with at least one defect since start"),
    reg(18, 2, "alarm_events", "alarm events stored since start (raised, cleared, acknowledged)"),
    reg(ALARM_IDS, 2 * MAX_CLASSES as u16, "alarm_id", "per class i at 32 + 2i: the id of its active alarm's raised event (as in the alarm JSON and cmd/ack); 0 when none"),
    reg(ACK_REGISTER, 2, "ack_id", "write an alarm id (function 16, both words) to acknowledge it, as cmd/ack does; reads the last id acknowledged here"),
];

/// Words readable from 0 (the status block and the alarm ids).
const BLOCK: usize = (ALARM_IDS as usize) + 2 * MAX_CLASSES;

/// The running server; dropping it stops it.
pub struct ModbusServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ModbusServer {
    /// Binds `cfg.listen` (an error names it) and serves on the `modbus` thread.
    /// `stale_after`: a source whose last frame is older is not delivering.
    pub fn start(
        cfg: &ModbusConfig,
        stats: Arc<Stats>,
        commands: Sender<Command>,
        stale_after: Duration,
    ) -> Result<ModbusServer, String> {
        let addr: SocketAddr = cfg
            .listen
            .parse()
            .map_err(|e| format!("modbus.listen {:?}: {e}", cfg.listen))?;
        let std_listener = serve::bind("modbus.listen", &addr.to_string(), addr)?;
        let addr = std_listener.local_addr().map_err(|e| e.to_string())?;
        let runtime = serve::runtime("Modbus")?;
        let shared = Arc::new(Shared {
            stats: stats.clone(),
            commands,
            stale_after,
            heartbeat: AtomicU64::new(0),
            last_ack: AtomicU64::new(0),
        });
        let (max, idle) = (
            cfg.max_clients as u64,
            Duration::from_secs(cfg.idle_timeout_s),
        );
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = serve::spawn(
            "modbus",
            "Modbus",
            runtime,
            std_listener,
            move |listener| async move {
                shared.stats.modbus.listening.store(1, Relaxed);
                let beat = {
                    let shared = shared.clone();
                    async move {
                        let mut tick = tokio::time::interval(Duration::from_secs(1));
                        loop {
                            tick.tick().await;
                            if shared.stats.heartbeats.stalest().1 < LIVENESS {
                                shared.heartbeat.fetch_add(1, Relaxed);
                            }
                        }
                    }
                };
                let server = tokio_modbus::server::tcp::Server::new(listener);
                let on_connected = |stream: TcpStream, peer: SocketAddr| {
                    let shared = shared.clone();
                    async move {
                        let m = &shared.stats.modbus;
                        if m.clients.load(Relaxed) >= max {
                            m.refused.fetch_add(1, Relaxed);
                            warn!(%peer, max_clients = max, "Modbus: too many clients; connection refused.");
                            return Ok(None);
                        }
                        m.clients.fetch_add(1, Relaxed);
                        m.connections.fetch_add(1, Relaxed);
                        debug!(%peer, "Modbus client connected.");
                        let service = Service {
                            shared: shared.clone(),
                            _guard: ClientGuard(shared.clone()),
                        };
                        Ok(Some((service, IdleStream::new(stream, idle))))
                    }
                };
                let stats = shared.stats.clone();
                let on_error = move |e: io::Error| {
                    if e.kind() == io::ErrorKind::TimedOut {
                        stats.modbus.idle_closed.fetch_add(1, Relaxed);
                        debug!("Modbus: an idle client was disconnected.");
                    } else {
                        debug!(error = %e, "Modbus: a client connection ended with an error.");
                    }
                };
                tokio::select! {
                    res = server.serve(&on_connected, on_error) => {
                        if let Err(e) = res {
                            error!(error = %e, "Modbus server stopped.");
                        }
                    }
                    _ = beat => {}
                    _ = stop_rx => {}
                }
                shared.stats.modbus.listening.store(0, Relaxed);
            },
        )?;
        stats.modbus.enabled.store(1, Relaxed);
        info!(%addr, "Modbus TCP: the register map is served.");
        Ok(ModbusServer {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The address bound (the port chosen, when `listen` asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ModbusServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Shared {
    stats: Arc<Stats>,
    commands: Sender<Command>,
    stale_after: Duration,
    heartbeat: AtomicU64,
    last_ack: AtomicU64,
}

/// Counts a connected client for as long as its service lives.
struct ClientGuard(Arc<Shared>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.stats.modbus.clients.fetch_sub(1, Relaxed);
    }
}

struct Service {
    shared: Arc<Shared>,
    _guard: ClientGuard,
}

impl tokio_modbus::server::Service for Service {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::future::Ready<Result<Response, ExceptionCode>>;

    fn call(&self, req: Request<'static>) -> Self::Future {
        let m = &self.shared.stats.modbus;
        m.requests.fetch_add(1, Relaxed);
        let res = self.shared.answer(req);
        if res.is_err() {
            m.exceptions.fetch_add(1, Relaxed);
        }
        std::future::ready(res)
    }
}

fn hi(v: u64) -> u16 {
    ((v >> 16) & 0xffff) as u16
}

fn lo(v: u64) -> u16 {
    (v & 0xffff) as u16
}

impl Shared {
    fn answer(&self, req: Request<'static>) -> Result<Response, ExceptionCode> {
        match req {
            Request::ReadInputRegisters(addr, n) => {
                self.read(addr, n).map(Response::ReadInputRegisters)
            }
            Request::ReadHoldingRegisters(addr, n) => {
                self.read(addr, n).map(Response::ReadHoldingRegisters)
            }
            Request::ReadCoils(addr, n) => {
                let classes = self.classes() as u32;
                if n == 0 || n > 2000 || addr as u32 + n as u32 > 1 + classes {
                    return Err(ExceptionCode::IllegalDataAddress);
                }
                // Acknowledge coils are momentary: they read 0.
                Ok(Response::ReadCoils(vec![false; n as usize]))
            }
            Request::WriteSingleCoil(addr, on) => {
                self.ack_coil(addr, on)?;
                Ok(Response::WriteSingleCoil(addr, on))
            }
            Request::WriteMultipleCoils(addr, values) => {
                if values.is_empty() {
                    return Err(ExceptionCode::IllegalDataValue);
                }
                let classes = self.classes() as u32;
                if addr as u32 + values.len() as u32 > 1 + classes {
                    return Err(ExceptionCode::IllegalDataAddress);
                }
                for (i, &on) in values.iter().enumerate() {
                    self.ack_coil(addr + i as u16, on)?;
                }
                Ok(Response::WriteMultipleCoils(addr, values.len() as u16))
            }
            Request::WriteMultipleRegisters(addr, words) => {
                if addr != ACK_REGISTER || words.len() != 2 {
                    return Err(ExceptionCode::IllegalDataAddress);
                }
                let id = ((words[0] as u64) << 16) | words[1] as u64;
                if id == 0 {
                    return Err(ExceptionCode::IllegalDataValue);
                }
                self.ack(Some(id))?;
                self.last_ack.store(id, Relaxed);
                Ok(Response::WriteMultipleRegisters(addr, 2))
            }
            // Everything else (single register writes included: an id takes two words).
            Request::WriteSingleRegister(..) => Err(ExceptionCode::IllegalDataAddress),
            _ => Err(ExceptionCode::IllegalFunction),
        }
    }

    fn classes(&self) -> usize {
        self.stats.live.labels().len().min(MAX_CLASSES)
    }

    fn ack_coil(&self, addr: u16, on: bool) -> Result<(), ExceptionCode> {
        let classes = self.classes();
        if addr as usize > classes {
            return Err(ExceptionCode::IllegalDataAddress);
        }
        if !on {
            return Ok(());
        }
        if addr == ACK_ALL_COIL {
            return self.ack(None);
        }
        let alarms = self.stats.plant.alarms();
        match alarms.get(addr as usize - 1) {
            Some(a) if a.active && a.raised_id != 0 => self.ack(Some(a.raised_id)),
            // Nothing to acknowledge for that class: a PLC's repeated write is harmless.
            _ => Ok(()),
        }
    }

    fn ack(&self, id: Option<u64>) -> Result<(), ExceptionCode> {
        match self.commands.try_send(Command::Ack(id)) {
            Ok(()) => {
                self.stats.modbus.acks.fetch_add(1, Relaxed);
                info!(id = ?id, "Modbus: acknowledgement handed to decide.");
                Ok(())
            }
            Err(_) => Err(ExceptionCode::ServerDeviceBusy),
        }
    }

    fn read(&self, addr: u16, n: u16) -> Result<Vec<u16>, ExceptionCode> {
        if n == 0 || n > 125 {
            return Err(ExceptionCode::IllegalDataValue);
        }
        let (start, end) = (addr as usize, addr as usize + n as usize);
        if end <= BLOCK {
            return Ok(self.block()[start..end].to_vec());
        }
        let ack = ACK_REGISTER as usize;
        if start >= ack && end <= ack + 2 {
            let id = self.last_ack.load(Relaxed);
            return Ok([hi(id), lo(id)][start - ack..end - ack].to_vec());
        }
        Err(ExceptionCode::IllegalDataAddress)
    }

    /// Registers 0 to 63, as [`REGISTER_MAP`] says.
    fn block(&self) -> [u16; BLOCK] {
        let s = &*self.stats;
        let mut w = [0u16; BLOCK];
        let alarms = s.plant.alarms();
        let bits = |f: &dyn Fn(&crate::telemetry::plant::AlarmView) -> bool| {
            alarms
                .iter()
                .take(MAX_CLASSES)
                .enumerate()
                .fold(0u16, |m, (i, a)| if f(a) { m | (1 << i) } else { m })
        };
        let (active, unacked, latched) = (
            bits(&|a| a.active),
            bits(&|a| a.active && !a.acked),
            bits(&|a| a.latched),
        );
        let stalled = s.heartbeats.stalest().1 >= LIVENESS;
        let model = s.model_loaded.load(Relaxed) == 1;
        let reasons = crate::http::not_ready(s, self.stale_after);
        let source_ok = !reasons.iter().any(|r| r.starts_with("source:"));
        let mut status = 0u16;
        for (on, bit) in [
            (model && !stalled, STATUS_RUNNING),
            (source_ok, STATUS_SOURCE_OK),
            (s.mqtt_connected.load(Relaxed) == 1, STATUS_BROKER_OK),
            (model, STATUS_MODEL_OK),
            (active != 0, STATUS_ALARM),
            (unacked != 0, STATUS_UNACKED),
            (s.health.load(Relaxed) != 0, STATUS_IMAGE_FAULT),
            (reasons.is_empty(), STATUS_READY),
        ] {
            if on {
                status |= bit;
            }
        }
        w[0] = lo(self.heartbeat.load(Relaxed));
        w[1] = status;
        w[2] = active;
        w[3] = unacked;
        w[4] = latched;
        w[5] = s.live.labels().len() as u16;
        if let Some(last) = s.plant.last() {
            w[6] = if last.ok { 1 } else { 2 };
            w[7] = last.defects.min(65535) as u16;
            w[8] = (last.classes & 0xffff) as u16;
            w[9] = (last.max_score.clamp(0.0, 1.0) * 1000.0).round() as u16;
            (w[10], w[11]) = (hi(last.seq), lo(last.seq));
        }
        let p = &s.plant;
        for (at, v) in [
            (12, p.frames.load(Relaxed)),
            (14, p.defects.load(Relaxed)),
            (16, p.defective_frames.load(Relaxed)),
            (18, s.alarm_events.total()),
        ] {
            (w[at], w[at + 1]) = (hi(v), lo(v));
        }
        for (i, a) in alarms.iter().take(MAX_CLASSES).enumerate() {
            let at = ALARM_IDS as usize + 2 * i;
            (w[at], w[at + 1]) = (hi(a.raised_id), lo(a.raised_id));
        }
        w
    }
}

/// A client's stream that fails with `TimedOut` when no byte arrives for `idle`: an idle
/// or half-open connection does not hold one of `max_clients` forever.
struct IdleStream {
    inner: TcpStream,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl IdleStream {
    fn new(inner: TcpStream, idle: Duration) -> IdleStream {
        IdleStream {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

impl AsyncRead for IdleStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(res) => {
                if buf.filled().len() > before {
                    let at = tokio::time::Instant::now() + self.idle;
                    self.deadline.as_mut().reset(at);
                }
                Poll::Ready(res)
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no request within modbus.idle_timeout_s",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for IdleStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_is_in_address_order_and_nothing_overlaps() {
        for pair in REGISTER_MAP.windows(2) {
            assert!(
                pair[0].address + pair[0].words <= pair[1].address,
                "{} overlaps {}",
                pair[0].name,
                pair[1].name
            );
        }
        let last_in_block = REGISTER_MAP
            .iter()
            .filter(|r| r.address < ACK_REGISTER)
            .map(|r| (r.address + r.words) as usize)
            .max();
        assert_eq!(last_in_block, Some(BLOCK));
    }
}
