//! What the operator and systemd rely on: a config edit applied without a restart (and a
//! bad edit refused), and the sd_notify protocol (READY, watchdog pings, STOPPING).

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::*;

#[test]
fn a_threshold_edit_takes_effect_without_a_restart_and_a_bad_edit_is_refused() {
    let broker = Mosquitto::start();
    let stems = stems_with("patches", "", 3);
    let images = image_folder(&stems.iter().map(String::as_str).collect::<Vec<_>>());
    let st = station(images.path(), broker.port, true, 20.0, (5, 3, 1, false), "");
    let sub = Subscriber::start(broker.port, &format!("{}/result", st.root), false);
    let mut daemon = Daemon::start(&st.config);
    assert!(sub.wait_for(Duration::from_secs(60), |m| m.len() >= 3));
    assert!(
        sub.messages().iter().all(|m| m.json()["ok"] == false),
        "frames with patches have defects"
    );

    // A bad edit: refused, named, and the daemon keeps going with what it had.
    let good = std::fs::read_to_string(&st.config).unwrap();
    std::fs::write(&st.config, good.replace("[alarm]", "[alarm]\nwindoww = 3")).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || daemon
            .log_text()
            .contains("Config reload refused")),
        "{}",
        daemon.log_text()
    );
    assert!(daemon.log_text().contains("windoww"));
    let n = sub.messages().len();
    assert!(sub.wait_for(Duration::from_secs(10), |m| m.len() >= n + 5));
    assert!(sub.messages()[n..].iter().all(|m| m.json()["ok"] == false));

    // A good edit: thresholds no detection reaches. Frames become ok, with no restart.
    std::fs::write(
        &st.config,
        good.replace("[alarm]", "[decide]\ndefault_threshold = 0.9999\n\n[alarm]"),
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || daemon
            .log_text()
            .contains("Applied the new thresholds")),
        "{}",
        daemon.log_text()
    );
    let n = sub.messages().len();
    assert!(sub.wait_for(Duration::from_secs(10), |m| m.len() >= n + 5));
    let after: Vec<bool> = sub.messages()[n + 2..]
        .iter()
        .map(|m| m.json()["ok"] == true)
        .collect();
    assert!(!after.is_empty() && after.iter().all(|&ok| ok), "{after:?}");
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "same process throughout"
    );
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait(Duration::from_secs(5)), Some(0));
}

#[test]
fn systemd_hears_ready_watchdog_pings_and_stopping() {
    let broker = Mosquitto::start();
    let images = image_folder(&["crazing_1", "patches_12"]);
    let st = station(images.path(), broker.port, true, 10.0, (5, 3, 1, false), "");
    let sock_path = st.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut child = std::process::Command::new(bin())
        .args(["run", "--config"])
        .arg(&st.config)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut heard = Vec::new();
    let mut buf = [0u8; 256];
    while heard
        .iter()
        .filter(|m: &&String| m.as_str() == "WATCHDOG=1")
        .count()
        < 3
    {
        let n = sock.recv(&mut buf).expect("a notification within 30 s");
        heard.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert_eq!(heard[0], "READY=1", "{heard:?}");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    loop {
        let n = sock.recv(&mut buf).expect("STOPPING=1 after SIGTERM");
        if &buf[..n] == b"STOPPING=1" {
            break;
        }
    }
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
