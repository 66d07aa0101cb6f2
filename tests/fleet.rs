//! A fleet: two stations, each with its own mosquitto, bridged (mosquitto's own bridge)
//! to a central mosquitto, as a plant with many stations runs them. The bridge links run
//! through a TCP relay the test can cut, so a link can drop and come back while the
//! stations keep inspecting.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

const LONG: Duration = Duration::from_secs(90);

/// A TCP relay from a local port to `to`; [`Relay::cut`] drops every connection and
/// refuses new ones until [`Relay::restore`].
struct Relay {
    port: u16,
    up: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(to: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let open = Arc::new(Mutex::new(Vec::new()));
        let (u, o) = (up.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                if !u.load(Relaxed) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                    continue;
                };
                let mut o = o.lock().unwrap();
                o.push(client.try_clone().unwrap());
                o.push(server.try_clone().unwrap());
                for (mut from, mut into) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 << 10];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || into.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = into.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Relay { port, up, open }
    }

    fn cut(&self) {
        self.up.store(false, Relaxed);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.up.store(true, Relaxed);
    }
}

/// A station's own mosquitto, bridging everything under `inspectd/` to the relay's port
/// (QoS 1, a persistent bridge session: what the link cannot carry now is queued).
fn edge_broker(dir: &Path, name: &str, relay: u16) -> (std::process::Child, u16) {
    let port = free_port();
    let conf = dir.join(format!("{name}.conf"));
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\n\
             connection {name}-to-central\naddress 127.0.0.1:{relay}\n\
             topic inspectd/# out 1\ncleansession false\nrestart_timeout 1 2\n\
             keepalive_interval 5\nmax_queued_messages 10000\n"
        ),
    )
    .unwrap();
    let child = spawn_mosquitto(&conf, &dir.join(format!("{name}.log")), port);
    (child, port)
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn alarm_ids(sub: &Subscriber, root: &str) -> Vec<u64> {
    sub.on(&format!("{root}/alarm"))
        .iter()
        .map(|m| m.json()["id"].as_u64().unwrap())
        .collect()
}

#[test]
fn two_stations_bridged_to_a_central_broker_lose_no_alarm_when_a_link_drops() {
    let dir = tempfile::tempdir().unwrap();
    let central = Mosquitto::start_forgetful();
    let (relay_a, relay_b) = (Relay::start(central.port), Relay::start(central.port));
    let (edge_a, port_a) = edge_broker(dir.path(), "edge-a", relay_a.port);
    let (edge_b, port_b) = edge_broker(dir.path(), "edge-b", relay_b.port);
    let (_edge_a, _edge_b) = (Killed(edge_a), Killed(edge_b));
    let sub = Subscriber::start(central.port, "inspectd/#", false);
    // Both bridges are up before the stations start: a probe from each edge reaches the
    // centre.
    for (port, name) in [(port_a, "a"), (port_b, "b")] {
        let probe = Subscriber::start(port, "probe/none", false);
        let topic = format!("inspectd/probe/{name}");
        assert!(
            wait_until(LONG, || {
                probe.publish(&topic, "up");
                sub.wait_for(Duration::from_millis(500), |m| {
                    m.iter().any(|m| m.topic == topic)
                })
            }),
            "bridge {name} did not come up"
        );
    }

    // Scratches, then patches: alarms raise and clear for each (N-of-M 3 of 4).
    let s = stems_with("scratches", "patches", 2);
    let p = stems_with("patches", "scratches", 2);
    let stems = [
        &s[0], &s[1], &s[0], &s[1], &p[0], &p[1], &p[0], &p[1], &p[0], &p[1],
    ];
    let stems: Vec<&str> = stems.iter().map(|s| s.as_str()).collect();
    let images = image_folder(&stems);

    // Station A loops, its link up: its events reach the centre as they happen.
    let a = station(images.path(), port_a, true, 10.0, (4, 3, 1, false), "");
    let daemon_a = Daemon::start(&a.config);
    assert!(
        sub.wait_for(LONG, |m| m
            .iter()
            .any(|m| m.topic == format!("{}/alarm", a.root))),
        "no alarm of station A at the centre: {}",
        daemon_a.log_text()
    );

    // Station B's link is down for its whole run: it inspects every frame, raises and
    // clears its alarms, and stops; nothing of it reaches the centre yet.
    relay_b.cut();
    std::thread::sleep(Duration::from_millis(500));
    let b = station(images.path(), port_b, false, 0.0, (4, 3, 1, false), "");
    let mut daemon_b = Daemon::start(&b.config);
    assert_eq!(daemon_b.wait(LONG), Some(0), "{}", daemon_b.log_text());
    let logged = daemon_b.logged_alarm_ids();
    assert!(logged.len() >= 3, "B should raise and clear: {logged:?}");
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        sub.messages().iter().all(|m| !m.topic.starts_with(&b.root)),
        "the cut link carried B's messages"
    );

    // The link comes back: every one of B's alarms arrives, in order, none twice.
    relay_b.restore();
    assert!(
        sub.wait_for(LONG, |m| m
            .iter()
            .filter(|m| m.topic == format!("{}/alarm", b.root))
            .count()
            >= logged.len()),
        "B's alarms after the link returned: {:?} of {logged:?}",
        alarm_ids(&sub, &b.root)
    );
    assert_eq!(alarm_ids(&sub, &b.root), logged);
    let ids_a = alarm_ids(&sub, &a.root);
    assert!(ids_a.windows(2).all(|w| w[0] < w[1]), "{ids_a:?}");

    // A newcomer at the centre learns both stations' state from retained messages,
    // each under its own root.
    let late = Subscriber::start(central.port, "inspectd/#", false);
    let retained = |root: &str, suffix: &str| {
        // What the broker retains (B's queued backlog may still arrive live after it).
        late.on(&format!("{root}/{suffix}"))
            .into_iter()
            .rfind(|m| m.retain)
            .map(|m| m.payload)
    };
    assert!(
        wait_until(Duration::from_secs(10), || {
            retained(&a.root, "status").is_some() && retained(&b.root, "status").is_some()
        }),
        "retained status at the centre: {:?}",
        late.messages()
            .iter()
            .filter(|m| m.topic.ends_with("/status"))
            .collect::<Vec<_>>()
    );
    assert_eq!(retained(&a.root, "status").as_deref(), Some("online"));
    assert_eq!(retained(&b.root, "status").as_deref(), Some("offline"));
    for root in [&a.root, &b.root] {
        for class in ["scratches", "patches", "crazing"] {
            assert!(
                retained(root, &format!("alarm/{class}/active")).is_some(),
                "{root}: alarm/{class}/active is not retained at the centre"
            );
        }
        assert!(retained(root, "alarm/active").is_some(), "{root}");
    }
    drop(daemon_a);
}
