//! `inspectd run`: the daemon's life. Starts the pipeline, tells systemd when it is ready,
//! feeds the watchdog only while every stage shows life, applies a changed config file
//! (or SIGHUP) without a restart where it can, and stops cleanly on SIGINT or SIGTERM.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tracing::{error, info, warn};

use crate::config::Settings;
use crate::pipeline::{Control, Pipeline};
use crate::telemetry::Stats;

use crate::telemetry::LIVENESS;

/// Runs until a signal, or until a non-looping folder is done.
pub fn run(config_path: &Path, settings: Settings) -> anyhow::Result<()> {
    let term = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, term.clone())?;
    }
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())?;

    let stats = Arc::new(Stats::default());
    stats.live.set_config_digest(config_digest(&settings));
    // Up before the model loads, so /health/ready can say it is loading.
    let _http = if settings.http.listen.is_empty() {
        None
    } else {
        Some(
            crate::http::HttpServer::start(
                &settings.http.listen,
                stats.clone(),
                &settings.state.dir,
                settings.capture.fps,
            )
            .map_err(anyhow::Error::msg)?,
        )
    };
    let pipeline = Pipeline::start(&settings, stats.clone())?;
    notify("READY=1");
    let watchdog = watchdog_interval();
    let mut last_ping = Instant::now();
    let mut running = settings;
    let mut seen_mtime = mtime(config_path);
    let mut last_check = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        if term.load(Relaxed) {
            info!("Stopping: finishing the frames in flight.");
            notify("STOPPING=1");
            break;
        }
        if pipeline.finished() {
            break;
        }
        if let Some(every) = watchdog {
            if last_ping.elapsed() >= every {
                let (stage, age) = pipeline.stalest_stage();
                if age < LIVENESS {
                    notify("WATCHDOG=1");
                } else {
                    error!(
                        stage,
                        silent_s = age.as_secs(),
                        "A pipeline stage shows no life; not feeding the watchdog."
                    );
                }
                last_ping = Instant::now();
            }
        }
        if hup.swap(false, Relaxed)
            || (last_check.elapsed() >= Duration::from_secs(1) && {
                last_check = Instant::now();
                let m = mtime(config_path);
                let changed = m != seen_mtime;
                seen_mtime = m;
                changed
            })
        {
            reload(config_path, &mut running, &pipeline);
            stats.live.set_config_digest(config_digest(&running));
        }
    }
    pipeline.stop();
    pipeline.join();
    Ok(())
}

/// SHA-256 of the running settings (after environment overrides), for evidence
/// sidecars: two images taken under the same settings carry the same digest.
pub fn config_digest(settings: &Settings) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{settings:?}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Validates the file again; applies thresholds and alarm settings live, says which
/// other changes wait for a restart, and keeps everything as it is when the file is bad.
fn reload(path: &Path, running: &mut Settings, pipeline: &Pipeline) {
    let new = match Settings::load(path) {
        Ok(s) => s,
        Err(e) => {
            error!(problems = %e.problems.join("; "), "Config reload refused; the running settings stay.");
            return;
        }
    };
    if new == *running {
        return;
    }
    if new.decide != running.decide || new.alarm != running.alarm {
        pipeline.control(Control::Reconfigure(new.decide.clone(), new.alarm.clone()));
    }
    let mut later = Vec::new();
    macro_rules! section {
        ($($name:ident),*) => { $( if new.$name != running.$name { later.push(stringify!($name)); } )* };
    }
    section!(
        station, capture, preprocess, model, mqtt, state, log, http, evidence, health, strip,
        modbus, sparkplug, opcua
    );
    if !later.is_empty() {
        warn!(sections = %later.join(", "), "Config changes in these sections take effect after a restart.");
    }
    *running = new;
}

/// sd_notify: tells systemd about our state when it started us with `Type=notify`.
pub fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = PathBuf::from(&socket);
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let bytes = socket.as_encoded_bytes();
    let res = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = res {
        warn!(error = %e, "Could not notify systemd.");
    }
}

/// Half the watchdog period systemd asked for, if it asked.
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}
