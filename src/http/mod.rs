//! The HTTP face (`[http] listen`): `/metrics`, `/health/live`, `/health/ready`, the live
//! page `/` with its feeds (`/events`, `/frame.jpg`, `/api/state`) and the evidence
//! folder under `/evidence/`.
//!
//! axum on a one-thread tokio runtime of its own (the `http` thread): rumqttc already
//! brings tokio and axum's HTTP stack (hyper) into the build, and an async server keeps
//! the page's open event streams from tying up a thread each. Every handler only reads
//! the lock-free [`Stats`] (the live frames sit behind a short mutex); nothing here can
//! slow a frame down, and nothing here changes alarm state.

pub mod metrics;
pub mod serve;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tracing::{error, info};

use crate::contract::conditions;
use crate::contract::CameraState;
use crate::telemetry::Stats;
use crate::telemetry::LIVENESS;

struct App {
    stats: Arc<Stats>,
    registry: Registry,
    /// The source is not delivering when its last frame is older than this.
    stale_after: Duration,
}

/// The running server; dropping it stops it.
pub struct HttpServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpServer {
    /// Binds `listen` (an error names it) and serves on the `http` thread. `fps` is the
    /// configured frame rate (0: as fast as possible); the source counts as delivering
    /// while its last frame is at most max(5 s, 3 frame intervals) old.
    pub fn start(
        listen: &str,
        stats: Arc<Stats>,
        state_dir: &Path,
        fps: f64,
    ) -> Result<HttpServer, String> {
        let addr: SocketAddr = listen
            .parse()
            .map_err(|e| format!("http.listen {listen:?}: {e}"))?;
        let std_listener = serve::bind("http.listen", listen, addr)?;
        let addr = std_listener.local_addr().map_err(|e| e.to_string())?;
        let stale_after = stale_after(fps);
        let app = Arc::new(App {
            registry: crate::http::metrics::registry(stats.clone()),
            stats,
            stale_after,
        });
        let router = router(app, &state_dir.join(crate::state::evidence::FOLDER));
        let runtime = serve::runtime("HTTP")?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = serve::spawn(
            "http",
            "HTTP",
            runtime,
            std_listener,
            move |listener| async move {
                tokio::select! {
                    res = axum::serve(listener, router) => {
                        if let Err(e) = res {
                            error!(error = %e, "HTTP server stopped.");
                        }
                    }
                    _ = stop_rx => {}
                }
            },
        )?;
        info!(%addr, "HTTP: metrics, health and the live page.");
        Ok(HttpServer {
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

impl Drop for HttpServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A source counts as delivering while its last frame is at most this old: max(5 s, 3
/// frame intervals) at `capture.fps` (0: as fast as possible, 5 s).
pub fn stale_after(fps: f64) -> Duration {
    if fps > 0.0 {
        Duration::from_secs_f64((3.0 / fps).max(5.0))
    } else {
        Duration::from_secs(5)
    }
}

fn router(app: Arc<App>, evidence: &Path) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/api/state", get(state))
        .route("/events", get(events))
        .route("/frame.jpg", get(frame))
        .route("/api/coil", get(coil_map))
        .nest_service("/evidence", tower_http::services::ServeDir::new(evidence))
        .with_state(app)
}

const PAGE: &str = include_str!("live.html");

async fn page(State(app): State<Arc<App>>) -> Html<&'static str> {
    app.stats.live.watch();
    Html(PAGE)
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let body = crate::http::metrics::encode(&app.registry);
    (
        [(header::CONTENT_TYPE, crate::http::metrics::CONTENT_TYPE)],
        body,
    )
        .into_response()
}

fn json(status: StatusCode, v: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// The stage silent longest, when it has been silent for `limit` or more.
pub fn stalled(stats: &Stats, limit: Duration) -> Option<(crate::telemetry::Stage, Duration)> {
    Some(stats.heartbeats.stalest()).filter(|&(_, age)| age >= limit)
}

async fn live(State(app): State<Arc<App>>) -> Response {
    match stalled(&app.stats, LIVENESS) {
        Some((stage, age)) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "live": false, "stage": stage.name(), "silent_s": age.as_secs() }),
        ),
        None => json(StatusCode::OK, serde_json::json!({ "live": true })),
    }
}

/// Why the daemon is not ready (empty: ready).
pub fn not_ready(stats: &Stats, stale_after: Duration) -> Vec<String> {
    let mut reasons = Vec::new();
    if stats.model_loaded.load(Relaxed) == 0 {
        reasons.push("model: not loaded yet".to_string());
    }
    let last = stats.last_frame_ms.load(Relaxed);
    if stats.source_finished.load(Relaxed) == 1 {
        reasons.push("source: finished (the folder was replayed once)".into());
    } else if stats.camera_down() {
        reasons.push(format!(
            "source: camera is {}",
            CameraState::name_of(stats.camera_state.load(Relaxed))
        ));
    } else if last == 0 {
        reasons.push("source: no frame yet".into());
    } else {
        let age = stats.heartbeats.now_ms().saturating_sub(last);
        if age > stale_after.as_millis() as u64 {
            reasons.push(format!("source: no frame for {:.1} s", age as f64 / 1e3));
        }
    }
    if stats.mqtt_connected.load(Relaxed) == 0 {
        reasons.push("broker: not connected".into());
    }
    for c in conditions(stats.health.load(Relaxed)) {
        reasons.push(format!("health: {}", c.name()));
    }
    let speed =
        crate::stages::decide::strip::SpeedState::from_code(stats.strip_speed.load(Relaxed));
    if let (false, Some(s)) = (speed.is_fine(), speed.name()) {
        reasons.push(format!("strip: line speed {s} (cmd/speed or cmd/encoder)"));
    }
    if stats.modbus.enabled.load(Relaxed) == 1 && stats.modbus.listening.load(Relaxed) == 0 {
        reasons.push("modbus: not listening".into());
    }
    if stats.opcua.enabled.load(Relaxed) == 1 && stats.opcua.listening.load(Relaxed) == 0 {
        reasons.push("opcua: not listening".into());
    }
    let sp = &stats.sparkplug;
    if sp.enabled.load(Relaxed) == 1 {
        if sp.connected.load(Relaxed) == 0 {
            reasons.push("sparkplug: not connected to the broker".into());
        } else if sp.waiting_for_host.load(Relaxed) == 1 {
            reasons.push("sparkplug: waiting for the primary host to be online".into());
        } else if sp.born.load(Relaxed) == 0 {
            reasons.push("sparkplug: not born (no NBIRTH on this connection)".into());
        }
    }
    reasons
}

async fn ready(State(app): State<Arc<App>>) -> Response {
    let reasons = not_ready(&app.stats, app.stale_after);
    if reasons.is_empty() {
        json(StatusCode::OK, serde_json::json!({ "ready": true }))
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "ready": false, "reasons": reasons }),
        )
    }
}

/// What the live page shows, as JSON: the newest kept frame (its defects; the image at
/// `/frame.jpg?seq=N`), alarms per class, counters, latency, health.
fn state_json(app: &App) -> serde_json::Value {
    let s = &app.stats;
    let live = &s.live;
    let labels = live.labels();
    let active = live.active_bits();
    let frame = live.latest().map(|f| {
        serde_json::json!({
            "seq": f.seq,
            "ts": f.ts_ms,
            "width": f.width,
            "height": f.height,
            "ok": f.ok,
            "defects": f.defects.iter().map(|d| serde_json::json!({
                "class": labels.get(d.label).map_or("?", |l| l.as_str()),
                "score": crate::contract::round_to(d.score as f64, 1e3),
                "bbox": d.bbox,
            })).collect::<Vec<_>>(),
        })
    });
    let (n, p50, p99) = s.end_to_end.since_start();
    serde_json::json!({
        "v": 1,
        "model": live.model_id(),
        "frame": frame,
        "alarms": labels.iter().enumerate().map(|(i, c)| serde_json::json!({
            "class": c, "active": active >> i & 1 == 1,
        })).collect::<Vec<_>>(),
        "frames": s.frames_published.load(Relaxed),
        "latency_ms": { "n": n, "p50": p50, "p99": p99 },
        "drops": {
            "capture_queue": s.dropped_capture_queue.load(Relaxed),
            "results": s.dropped_results.load(Relaxed),
            "evidence": s.evidence_dropped.load(Relaxed),
        },
        "broker_connected": s.mqtt_connected.load(Relaxed) == 1,
        "camera": CameraState::from_code(s.camera_state.load(Relaxed)).map(|c| c.name()),
        "health": conditions(s.health.load(Relaxed)).map(|c| c.name()).collect::<Vec<_>>(),
        "not_ready": not_ready(s, app.stale_after),
        "coil": live.map_head().map(|(coil, position, width, marks, version)| serde_json::json!({
            "coil": coil,
            "position_mm": crate::contract::round_to(position, 10.0),
            "width_mm": crate::contract::round_to(width, 10.0),
            "marks": marks,
            "version": version,
        })),
    })
}

/// The coil map (`[strip]`): the coil, how far the strip has gone, every finished defect
/// (class, MD/CD extent, its periodic defect, its evidence image). `null` without `[strip]`.
async fn coil_map(State(app): State<Arc<App>>) -> Response {
    let live = &app.stats.live;
    let labels = live.labels();
    let v = live.map().map(|m| {
        serde_json::json!({
            "coil": m.coil,
            "position_mm": crate::contract::round_to(m.position_mm, 10.0),
            "width_mm": crate::contract::round_to(m.width_mm, 10.0),
            "version": m.version,
            "more": m.more,
            "classes": labels,
            "marks": m.marks.iter().map(|k| serde_json::json!({
                "track": k.track,
                "class": labels.get(k.label).map_or("?", |l| l.as_str()),
                "label": k.label,
                "score": crate::contract::round_to(k.score as f64, 1e3),
                "md_mm": k.md_mm,
                "cd_mm": k.cd_mm,
                "length_mm": k.length_mm,
                "width_mm": k.width_mm,
                "periodic": k.periodic,
                "evidence": k.evidence,
            })).collect::<Vec<_>>(),
        })
    });
    json(StatusCode::OK, v.unwrap_or(serde_json::Value::Null))
}

async fn state(State(app): State<Arc<App>>) -> Response {
    app.stats.live.watch();
    json(StatusCode::OK, state_json(&app))
}

/// Server-sent events: the page's state four times a second, with the frames per second
/// over the last second (null during the first).
async fn events(
    State(app): State<Arc<App>>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let frames = app.stats.frames_published.load(Relaxed);
    let start = (
        app.clone(),
        tokio::time::Instant::now(),
        frames,
        None::<f64>,
    );
    let stream =
        futures_util::stream::unfold(start, |(app, mut since, mut frames, mut fps)| async move {
            app.stats.live.watch();
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now_frames = app.stats.frames_published.load(Relaxed);
            let elapsed = since.elapsed().as_secs_f64();
            if elapsed >= 1.0 {
                fps = Some(now_frames.saturating_sub(frames) as f64 / elapsed);
                frames = now_frames;
                since = tokio::time::Instant::now();
            }
            let mut v = state_json(&app);
            v["fps"] = serde_json::json!(fps.map(|f| crate::contract::round_to(f, 10.0)));
            let event = Event::default().data(v.to_string());
            Some((Ok(event), (app, since, frames, fps)))
        });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[derive(Deserialize)]
struct FrameQuery {
    seq: Option<u64>,
}

async fn frame(State(app): State<Arc<App>>, Query(q): Query<FrameQuery>) -> Response {
    let live = &app.stats.live;
    live.watch();
    // A named frame is that frame or none: the page draws the event's boxes on it, and
    // another frame's pixels under them would show defects where there are none.
    let snap = match q.seq {
        Some(seq) => live.get(seq).ok_or_else(|| {
            format!("frame {seq} is no longer kept (the live view keeps the newest few)")
        }),
        None => live.latest().ok_or_else(|| "no frame yet".to_string()),
    };
    let snap = match snap {
        Ok(snap) => snap,
        Err(why) => return (StatusCode::NOT_FOUND, why).into_response(),
    };
    // JPEG encoding is CPU work: off the async thread.
    let encoded = tokio::task::spawn_blocking(move || {
        let seq = snap.seq;
        (seq, snap.jpeg().to_vec())
    })
    .await;
    match encoded {
        Ok((seq, jpeg)) if !jpeg.is_empty() => {
            let mut r = ([(header::CONTENT_TYPE, "image/jpeg")], jpeg).into_response();
            r.headers_mut().insert(
                "x-seq",
                HeaderValue::from_str(&seq.to_string()).expect("digits are a header value"),
            );
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "could not encode the frame",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::Condition;
    use crate::telemetry::Stage;

    #[test]
    fn a_silent_stage_is_named() {
        let stats = Stats::default();
        for s in Stage::ALL {
            stats.heartbeats.beat(s);
        }
        assert!(stalled(&stats, Duration::from_millis(50)).is_none());
        std::thread::sleep(Duration::from_millis(80));
        for s in Stage::ALL.into_iter().filter(|&s| s != Stage::Classify) {
            stats.heartbeats.beat(s);
        }
        let (stage, age) = stalled(&stats, Duration::from_millis(50)).unwrap();
        assert_eq!(stage, Stage::Classify);
        assert!(age >= Duration::from_millis(80));
    }

    #[test]
    fn readiness_gives_every_reason() {
        let stats = Stats::default();
        let stale = Duration::from_millis(50);
        let reasons = not_ready(&stats, stale);
        assert_eq!(
            reasons,
            [
                "model: not loaded yet",
                "source: no frame yet",
                "broker: not connected"
            ]
        );
        stats.model_loaded.store(1, Relaxed);
        stats.mqtt_connected.store(1, Relaxed);
        stats
            .last_frame_ms
            .store(stats.heartbeats.now_ms().max(1), Relaxed);
        assert!(not_ready(&stats, stale).is_empty());
        std::thread::sleep(Duration::from_millis(80));
        let reasons = not_ready(&stats, stale);
        assert_eq!(reasons.len(), 1);
        assert!(
            reasons[0].starts_with("source: no frame for"),
            "{reasons:?}"
        );
        stats
            .last_frame_ms
            .store(stats.heartbeats.now_ms().max(1), Relaxed);
        stats
            .health
            .store(Condition::Dark.bit() | Condition::Frozen.bit(), Relaxed);
        stats.camera_state.store(CameraState::Lost as u64, Relaxed);
        assert_eq!(
            not_ready(&stats, stale),
            ["source: camera is lost", "health: dark", "health: frozen"]
        );
        stats.source_finished.store(1, Relaxed);
        assert_eq!(
            not_ready(&stats, stale)[0],
            "source: finished (the folder was replayed once)"
        );
    }

    #[test]
    fn plant_faces_count_for_readiness_only_when_enabled() {
        let stats = Stats::default();
        let stale = Duration::from_secs(5);
        stats.model_loaded.store(1, Relaxed);
        stats.mqtt_connected.store(1, Relaxed);
        stats
            .last_frame_ms
            .store(stats.heartbeats.now_ms().max(1), Relaxed);
        // Off: not listening and not connected say nothing.
        assert!(not_ready(&stats, stale).is_empty());
        stats.modbus.enabled.store(1, Relaxed);
        stats.sparkplug.enabled.store(1, Relaxed);
        assert_eq!(
            not_ready(&stats, stale),
            [
                "modbus: not listening",
                "sparkplug: not connected to the broker"
            ]
        );
        stats.modbus.listening.store(1, Relaxed);
        stats.sparkplug.connected.store(1, Relaxed);
        stats.sparkplug.waiting_for_host.store(1, Relaxed);
        assert_eq!(
            not_ready(&stats, stale),
            ["sparkplug: waiting for the primary host to be online"]
        );
        stats.sparkplug.waiting_for_host.store(0, Relaxed);
        assert_eq!(
            not_ready(&stats, stale),
            ["sparkplug: not born (no NBIRTH on this connection)"]
        );
        stats.sparkplug.born.store(1, Relaxed);
        assert!(not_ready(&stats, stale).is_empty());
    }
}
