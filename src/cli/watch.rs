//! `inspectd watch`: subscribes to a station's topics and prints what arrives, one line
//! per message, so an engineer can see the daemon at work from any machine.

use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

/// Prints messages under `root/#` until `count` messages (if given) or `timeout`.
pub fn watch(
    host: &str,
    port: u16,
    root: &str,
    count: Option<usize>,
    timeout: Option<Duration>,
) -> anyhow::Result<()> {
    let id = format!("inspectd-watch-{}", std::process::id());
    let mut opts = MqttOptions::new(id, host, port);
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut connection) = Client::new(opts, 16);
    let filter = format!("{root}/#");
    let started = Instant::now();
    let mut seen = 0usize;
    let mut warned = false;
    loop {
        if timeout.is_some_and(|t| started.elapsed() >= t) || count.is_some_and(|c| seen >= c) {
            break;
        }
        let event = match connection.recv_timeout(Duration::from_millis(200)) {
            Ok(ev) => ev,
            Err(rumqttc::RecvTimeoutError::Timeout) => continue,
            Err(rumqttc::RecvTimeoutError::Disconnected) => break,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                client.subscribe(&filter, QoS::AtLeastOnce)?;
                eprintln!("watching {filter} on {host}:{port}");
                warned = false;
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                seen += 1;
                let topic = p
                    .topic
                    .strip_prefix(root)
                    .map(|t| t.trim_start_matches('/'))
                    .unwrap_or(&p.topic);
                let body = String::from_utf8_lossy(&p.payload);
                let when = chrono_like(crate::frame::unix_ms());
                println!(
                    "{when} {:<22} {}{}",
                    topic,
                    body,
                    if p.retain { "  (retained)" } else { "" }
                );
            }
            Ok(_) => {}
            Err(e) => {
                if !warned {
                    eprintln!("cannot reach {host}:{port}: {e}; retrying");
                    warned = true;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
    Ok(())
}

/// HH:MM:SS.mmm (UTC).
fn chrono_like(ms: u64) -> String {
    let t = crate::frame::Utc::from_unix_ms(ms);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        t.hour, t.minute, t.second, t.milli
    )
}
