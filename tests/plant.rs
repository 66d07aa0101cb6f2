//! The plant faces with real peers: the daemon replaying real NEU images to a real
//! mosquitto, read by a real Modbus TCP client (tokio-modbus's) register by register,
//! and a Sparkplug B host (a subscriber decoding the protobuf payloads).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use inspectd::plant::modbus::{self, REGISTER_MAP};
use tokio_modbus::client::sync::{tcp, Context};
use tokio_modbus::prelude::*;

const LONG: Duration = Duration::from_secs(60);

fn connect(addr: SocketAddr) -> Context {
    let mut ctx = tcp::connect_with_timeout(addr, Some(Duration::from_secs(5)))
        .unwrap_or_else(|e| panic!("Modbus client cannot connect to {addr}: {e}"));
    ctx.set_timeout(Duration::from_secs(5));
    ctx
}

/// Registers 0-63 (the status block and the alarm ids).
fn block(ctx: &mut Context) -> Vec<u16> {
    ctx.read_input_registers(0, 64)
        .expect("transport")
        .expect("no exception")
}

fn u32_at(w: &[u16], at: usize) -> u64 {
    ((w[at] as u64) << 16) | w[at + 1] as u64
}

fn metrics(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

fn label_index(class: &str) -> usize {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("models/neu_det.json")).unwrap())
            .unwrap();
    meta["labels"]
        .as_array()
        .unwrap()
        .iter()
        .position(|l| l == class)
        .unwrap()
}

/// A station replaying three scratches images in a loop at 10 frames a second, its
/// alarms latched and raised by 2 of 3 frames, with `extra` config appended; the images'
/// folder (returned first) must outlive the daemon.
fn scratches_station(broker: u16, extra: &str) -> (tempfile::TempDir, Station) {
    let stems = stems_with("scratches", "", 3);
    let stems: Vec<&str> = stems.iter().map(String::as_str).collect();
    let images = image_folder(&stems);
    let st = station(images.path(), broker, true, 10.0, (3, 2, 0, true), extra);
    (images, st)
}

#[test]
fn a_modbus_client_reads_the_map_and_acknowledges_alarms() {
    let broker = Mosquitto::start_forgetful();
    // Scratches in every frame, replayed in a loop: the scratches alarm (latched) raises
    // after two frames and stays until acknowledged.
    let [mb_port, http_port] = free_ports(2)[..] else {
        unreachable!()
    };
    let (_images, st) = scratches_station(
        broker.port,
        &format!(
            "[modbus]\nenabled = true\nlisten = \"127.0.0.1:{mb_port}\"\nmax_clients = 3\nidle_timeout_s = 3\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n"
        ),
    );
    let alarms = Subscriber::start(broker.port, &format!("{}/alarm", st.root), false);
    let daemon = Daemon::start(&st.config);
    let addr: SocketAddr = format!("127.0.0.1:{mb_port}").parse().unwrap();
    assert!(
        wait_until(LONG, || TcpStream::connect(addr).is_ok()),
        "the Modbus face did not listen: {}",
        daemon.log_text()
    );
    let mut ctx = connect(addr);
    let scratches = label_index("scratches");

    // The alarm raises; register 32 + 2i holds the id the alarm JSON carries.
    assert!(
        alarms.wait_for(LONG, |m| m.iter().any(|m| m.payload.contains("\"raised\""))),
        "no alarm raised: {}",
        daemon.log_text()
    );
    let raised = alarms.messages()[0].json();
    assert_eq!(raised["class"], "scratches");
    let id = raised["id"].as_u64().unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        u32_at(&block(&mut ctx), 32 + 2 * scratches) == id
    }));
    let w = block(&mut ctx);
    for (reg, want) in [
        (2, 1u16 << scratches),
        (3, 1 << scratches),
        (4, 1 << scratches),
        (5, 6),
        (6, 2),
    ] {
        assert_eq!(w[reg], want, "register {reg}: {w:?}");
    }
    let status = w[1];
    for (bit, name) in [
        (modbus::STATUS_RUNNING, "running"),
        (modbus::STATUS_SOURCE_OK, "source"),
        (modbus::STATUS_BROKER_OK, "broker"),
        (modbus::STATUS_MODEL_OK, "model"),
        (modbus::STATUS_ALARM, "alarm"),
        (modbus::STATUS_UNACKED, "unacked"),
        (modbus::STATUS_READY, "ready"),
    ] {
        assert!(status & bit != 0, "status {status:#b}: {name} bit not set");
    }
    assert_eq!(status & modbus::STATUS_IMAGE_FAULT, 0, "{status:#b}");
    assert!(w[7] >= 1, "last frame's defect count: {w:?}");
    assert!(w[8] & (1 << scratches) != 0, "last frame's classes: {w:?}");
    assert!((1..=1000).contains(&w[9]), "last max score x 1000: {w:?}");
    let frames = u32_at(&w, 12);
    assert!(
        frames >= 2 && u32_at(&w, 14) >= frames && u32_at(&w, 16) >= 2,
        "{w:?}"
    );
    assert!(u32_at(&w, 18) >= 1, "alarm events: {w:?}");
    // Every class without an alarm reads id 0; the unused classes' ids too.
    for i in (0..16).filter(|&i| i != scratches) {
        assert_eq!(u32_at(&w, 32 + 2 * i), 0, "class {i}: {w:?}");
    }
    // The heartbeat counts while the pipeline lives; the counters move with the frames.
    std::thread::sleep(Duration::from_millis(2200));
    let later = block(&mut ctx);
    assert!(
        later[0].wrapping_sub(w[0]) >= 1,
        "heartbeat {} -> {}",
        w[0],
        later[0]
    );
    assert!(u32_at(&later, 12) > frames, "frames did not move");
    // The same words as holding registers (function 03).
    let held = ctx.read_holding_registers(5, 2).unwrap().unwrap();
    assert_eq!(held, vec![6, 2]);

    // Coil 1 + i acknowledges class i's alarm: it is acked (and, latched, cleared) over
    // MQTT with the id, as cmd/ack would.
    ctx.write_single_coil(1 + scratches as u16, true)
        .unwrap()
        .unwrap();
    assert!(
        alarms.wait_for(Duration::from_secs(10), |m| m.iter().any(|m| {
            let a = m.json();
            a["event"] == "acked" && a["raised_id"] == id
        })),
        "coil acknowledgement did not reach the alarm: {}",
        daemon.log_text()
    );
    // The alarm raises again (the scratches are still in view); acknowledging by id
    // through registers 100-101 acts the same.
    assert!(alarms.wait_for(LONG, |m| m
        .iter()
        .filter(|m| m.payload.contains("\"raised\""))
        .count()
        >= 2));
    // (A new connection: this one may have been idle longer than idle_timeout_s.)
    let mut ctx = connect(addr);
    let second = alarms
        .messages()
        .iter()
        .map(Msg::json)
        .filter(|a| a["event"] == "raised")
        .nth(1)
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    ctx.write_multiple_registers(100, &[(second >> 16) as u16, second as u16])
        .unwrap()
        .unwrap();
    assert!(
        alarms.wait_for(Duration::from_secs(10), |m| m.iter().any(|m| {
            let a = m.json();
            a["event"] == "acked" && a["raised_id"] == second
        })),
        "register acknowledgement did not reach the alarm"
    );
    assert_eq!(
        ctx.read_holding_registers(100, 2).unwrap().unwrap(),
        vec![(second >> 16) as u16, second as u16]
    );

    // Bad requests get Modbus exceptions; the connection and inspection go on.
    assert_eq!(
        ctx.read_input_registers(64, 1).unwrap(),
        Err(ExceptionCode::IllegalDataAddress)
    );
    assert_eq!(
        ctx.read_input_registers(0, 126).unwrap(),
        Err(ExceptionCode::IllegalDataValue)
    );
    assert_eq!(
        ctx.write_single_register(100, 1).unwrap(),
        Err(ExceptionCode::IllegalDataAddress)
    );
    assert_eq!(
        ctx.write_single_coil(7, true).unwrap(),
        Err(ExceptionCode::IllegalDataAddress),
        "6 classes: coils 0-6"
    );
    assert_eq!(
        ctx.read_discrete_inputs(0, 1).unwrap(),
        Err(ExceptionCode::IllegalFunction)
    );
    drop(ctx);

    // Garbage on the wire closes that connection only.
    let mut raw = TcpStream::connect(addr).unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n\x00\x00\x00\x00\x00\xff\xff\xff")
        .unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    assert!(
        matches!(raw.read(&mut buf), Ok(0) | Err(_)),
        "a malformed frame should end the connection"
    );
    // A flood: three clients may connect (max_clients), the rest are refused; idle ones
    // are closed after idle_timeout_s, and a PLC gets back in.
    let flood: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(addr).unwrap()).collect();
    assert!(wait_until(Duration::from_secs(5), || metric(
        &metrics(http_port),
        "inspectd_modbus_refused_total"
    ) >= 5.0));
    assert!(wait_until(Duration::from_secs(10), || metric(
        &metrics(http_port),
        "inspectd_modbus_idle_closed_total"
    ) >= 3.0));
    drop(flood);
    let mut ctx = connect(addr);
    let before = u32_at(&block(&mut ctx), 12);
    std::thread::sleep(Duration::from_millis(1000));
    let after = block(&mut ctx);
    assert!(u32_at(&after, 12) > before, "inspection stopped");
    // No alarm event was lost meanwhile: the ids the broker carried are 1, 2, 3, ...
    let ids: Vec<u64> = alarms
        .messages()
        .iter()
        .map(|m| m.json()["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>());
    let m = metrics(http_port);
    assert!(metric(&m, "inspectd_modbus_requests_total") >= 10.0);
    assert!(metric(&m, "inspectd_modbus_exceptions_total") >= 5.0);
    assert_eq!(metric(&m, "inspectd_modbus_acks_total"), 2.0);
    assert_eq!(metric(&m, "inspectd_modbus_clients"), 1.0);
    assert!(daemon.log_text().contains("Modbus: acknowledgement"));
}

#[test]
fn the_register_map_in_readme_is_the_one_served() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme
        .find("| register | words | name |")
        .expect("README has the Modbus register map");
    let rows: Vec<Vec<String>> = readme[start..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().trim_matches('`').to_string())
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), REGISTER_MAP.len(), "{rows:?}");
    for (row, spec) in rows.iter().zip(REGISTER_MAP.iter()) {
        let range = if spec.words == 1 {
            spec.address.to_string()
        } else {
            format!("{}-{}", spec.address, spec.address + spec.words - 1)
        };
        assert_eq!(
            (row[0].as_str(), row[1].as_str(), row[2].as_str()),
            (range.as_str(), spec.words.to_string().as_str(), spec.name),
            "README row {row:?}"
        );
    }
}

mod sparkplug_host {
    //! A Sparkplug host's view: every message under the group, payloads decoded.
    use super::*;
    use inspectd::plant::sparkplug::{Metric, Payload, Value};
    use prost::Message as _;
    use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
    use std::sync::{Arc, Mutex};

    #[derive(Debug, Clone)]
    pub struct Got {
        pub kind: String,
        pub payload: Payload,
    }

    impl Got {
        pub fn metric(&self, name: &str) -> Option<&Metric> {
            self.payload
                .metrics
                .iter()
                .find(|m| m.name.as_deref() == Some(name))
        }

        pub fn value(&self, name: &str) -> Option<Value> {
            self.metric(name).and_then(|m| m.value.clone())
        }

        pub fn bd_seq(&self) -> u64 {
            match self.value("bdSeq") {
                Some(Value::LongValue(v)) => v,
                other => panic!("{} without bdSeq: {other:?}", self.kind),
            }
        }
    }

    pub struct Host {
        pub got: Arc<Mutex<Vec<Got>>>,
        client: Client,
        _thread: std::thread::JoinHandle<()>,
    }

    impl Host {
        pub fn start(port: u16, group: &str) -> Host {
            let mut opts = MqttOptions::new(format!("spb-host-{}", free_port()), "127.0.0.1", port);
            opts.set_keep_alive(Duration::from_secs(5));
            let (client, mut conn) = Client::new(opts, 64);
            let got = Arc::new(Mutex::new(Vec::new()));
            let (g, c, filter) = (got.clone(), client.clone(), format!("spBv1.0/{group}/#"));
            let subscribed = Arc::new(Mutex::new(false));
            let s = subscribed.clone();
            let thread = std::thread::spawn(move || {
                for ev in conn.iter() {
                    match ev {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            let _ = c.try_subscribe(&filter, QoS::AtLeastOnce);
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => *s.lock().unwrap() = true,
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let kind = p.topic.split('/').nth(2).unwrap_or("").to_string();
                            if kind == "NCMD" {
                                continue; // the host's own commands
                            }
                            let payload = Payload::decode(&p.payload[..]).unwrap_or_else(|e| {
                                panic!("{}: not a Sparkplug B payload: {e}", p.topic)
                            });
                            g.lock().unwrap().push(Got { kind, payload });
                        }
                        Ok(_) => {}
                        Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                }
            });
            assert!(wait_until(Duration::from_secs(10), || *subscribed
                .lock()
                .unwrap()));
            Host {
                got,
                client,
                _thread: thread,
            }
        }

        pub fn all(&self) -> Vec<Got> {
            self.got.lock().unwrap().clone()
        }

        pub fn of(&self, kind: &str) -> Vec<Got> {
            self.all().into_iter().filter(|g| g.kind == kind).collect()
        }

        pub fn wait(&self, timeout: Duration, f: impl Fn(&[Got]) -> bool) -> bool {
            wait_until(timeout, || f(&self.got.lock().unwrap()))
        }

        pub fn command(&self, topic: &str, metrics: Vec<Metric>) {
            let p = Payload {
                timestamp: Some(0),
                metrics,
                ..Payload::default()
            };
            self.client
                .publish(topic, QoS::AtLeastOnce, false, p.encode_to_vec())
                .unwrap();
        }

        pub fn raw(&self, topic: &str, bytes: &[u8], retain: bool) {
            self.client
                .publish(topic, QoS::AtLeastOnce, retain, bytes.to_vec())
                .unwrap();
        }
    }

    pub fn metric(name: &str, value: Value) -> Metric {
        Metric {
            name: Some(name.into()),
            value: Some(value),
            ..Metric::default()
        }
    }
}

use inspectd::plant::sparkplug::Value;
use sparkplug_host::{metric as spb_metric, Host};

/// NBIRTH, then NDATA with seq 1, 2, ... (mod 256), each NBIRTH restarting at 0; every
/// metric a data message names was declared in the birth before it.
fn check_sequence(got: &[sparkplug_host::Got]) {
    let mut declared: Option<std::collections::BTreeSet<String>> = None;
    let mut seq = None;
    for g in got {
        match g.kind.as_str() {
            "NBIRTH" => {
                assert_eq!(g.payload.seq, Some(0), "a birth has seq 0");
                declared = Some(
                    g.payload
                        .metrics
                        .iter()
                        .map(|m| m.name.clone().unwrap())
                        .collect(),
                );
                seq = Some(0);
            }
            "NDATA" => {
                let s = seq.expect("NDATA before any NBIRTH");
                assert_eq!(g.payload.seq, Some((s + 1) % 256), "seq continuity");
                seq = g.payload.seq;
                let d = declared.as_ref().unwrap();
                for m in &g.payload.metrics {
                    let name = m.name.as_ref().unwrap();
                    assert!(d.contains(name), "{name} was not in the birth");
                    assert!(m.datatype.is_some() && m.value.is_some(), "{m:?}");
                }
            }
            "NDEATH" => seq = None,
            _ => {}
        }
    }
}

#[test]
fn a_sparkplug_host_sees_births_data_commands_and_deaths() {
    let broker = Mosquitto::start_forgetful();
    let host = Host::start(broker.port, "tgrp");
    let (_images, st) = scratches_station(
        broker.port,
        "[sparkplug]\nenabled = true\ngroup = \"tgrp\"\nedge_node = \"node1\"\n",
    );
    let ncmd = "spBv1.0/tgrp/NCMD/node1";
    let alarms = Subscriber::start(broker.port, &format!("{}/alarm", st.root), false);
    let mut daemon = Daemon::start(&st.config);
    assert!(
        host.wait(LONG, |g| g.iter().any(|g| g.kind == "NBIRTH")),
        "no NBIRTH: {}",
        daemon.log_text()
    );
    let birth = host.of("NBIRTH").remove(0);
    let bd_seq = birth.bd_seq();
    assert_eq!(
        birth.value("Node Control/Rebirth"),
        Some(Value::BooleanValue(false))
    );
    for name in [
        "Inspection/Frames",
        "Last/OK",
        "Alarm/Active",
        "Alarm/scratches/Active",
        "Alarm/scratches/Latched",
        "Alarm/scratches/Acknowledged",
        "Alarm/scratches/Id",
        "Alarm/crazing/Active",
        "Health/Ready",
        "Health/Broker OK",
        "Properties/Station",
    ] {
        assert!(
            birth.metric(name).is_some(),
            "{name} not declared in NBIRTH"
        );
    }
    assert_eq!(
        birth.value("Properties/Station"),
        Some(Value::StringValue(st.root.clone()))
    );

    // The alarm raises: NDATA says so with the id of the MQTT alarm event.
    assert!(alarms.wait_for(LONG, |m| m.iter().any(|m| m.payload.contains("\"raised\""))));
    let id = alarms.messages()[0].json()["id"].as_u64().unwrap();
    assert!(
        host.wait(Duration::from_secs(10), |g| g.iter().any(|g| g.kind
            == "NDATA"
            && g.value("Alarm/scratches/Id") == Some(Value::LongValue(id)))),
        "no NDATA with the alarm id {id}"
    );
    assert!(host
        .of("NDATA")
        .iter()
        .any(|g| g.value("Alarm/scratches/Active") == Some(Value::BooleanValue(true))));

    // NCMD: acknowledge the alarm by id; ask for a rebirth; a payload that is not
    // Sparkplug and a metric that is no command are ignored.
    host.raw(ncmd, b"\xff\x00garbage", false);
    // A flood of commands for no metric: each is ignored, inspection goes on.
    let flood = 300;
    for _ in 0..flood {
        host.command(ncmd, vec![spb_metric("Flood", Value::BooleanValue(true))]);
    }
    host.command(ncmd, vec![spb_metric("Last/OK", Value::BooleanValue(true))]);
    host.command(
        ncmd,
        vec![spb_metric("Alarm/Acknowledge", Value::LongValue(id))],
    );
    assert!(
        alarms.wait_for(Duration::from_secs(10), |m| m.iter().any(|m| {
            let a = m.json();
            a["event"] == "acked" && a["raised_id"] == id
        })),
        "the NCMD acknowledgement did not reach the alarm: {}",
        daemon.log_text()
    );
    host.command(
        ncmd,
        vec![spb_metric(
            "Node Control/Rebirth",
            Value::BooleanValue(true),
        )],
    );
    assert!(
        host.wait(Duration::from_secs(10), |g| g
            .iter()
            .filter(|g| g.kind == "NBIRTH")
            .count()
            >= 2),
        "no rebirth"
    );
    let rebirth = host.of("NBIRTH").remove(1);
    assert_eq!(
        rebirth.bd_seq(),
        bd_seq,
        "a rebirth keeps the connection's bdSeq"
    );
    let log = daemon.log_text();
    assert_eq!(
        log.matches("ignored an NCMD").count(),
        2 + flood,
        "the garbage, the flood and the non-command are all ignored"
    );
    std::thread::sleep(Duration::from_millis(500));

    // Killed: the broker sends the will, an NDEATH with the same bdSeq.
    daemon.signal(libc::SIGKILL);
    daemon.wait(Duration::from_secs(10));
    assert!(
        host.wait(Duration::from_secs(10), |g| g
            .iter()
            .any(|g| g.kind == "NDEATH")),
        "no NDEATH after a kill"
    );
    let death = host.of("NDEATH").remove(0);
    assert_eq!(death.bd_seq(), bd_seq, "the will's bdSeq is the birth's");
    check_sequence(&host.all());

    // Restarted: the next connection's bdSeq is one more; stopped: an NDEATH of its own.
    let mut daemon = Daemon::start(&st.config);
    assert!(
        host.wait(LONG, |g| g.iter().filter(|g| g.kind == "NBIRTH").count()
            >= 3),
        "no NBIRTH after the restart: {}",
        daemon.log_text()
    );
    assert_eq!(host.of("NBIRTH")[2].bd_seq(), (bd_seq + 1) % 256);
    std::thread::sleep(Duration::from_millis(500));
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait(Duration::from_secs(15)), Some(0));
    assert!(host.wait(Duration::from_secs(5), |g| g
        .iter()
        .filter(|g| g.kind == "NDEATH")
        .count()
        >= 2));
    assert_eq!(host.of("NDEATH")[1].bd_seq(), (bd_seq + 1) % 256);
    let all = host.all();
    check_sequence(&all);
    assert!(
        all.iter().filter(|g| g.kind == "NDATA").count() >= 5,
        "NDATA should follow the frames"
    );
}

#[test]
fn a_sparkplug_node_is_born_only_while_its_primary_host_is_online() {
    let broker = Mosquitto::start_forgetful();
    let images = image_folder(&["scratches_1", "patches_1"]);
    let http_port = free_port();
    let host = Host::start(broker.port, "tgrp");
    let st = station(
        images.path(),
        broker.port,
        true,
        5.0,
        (3, 2, 0, false),
        &format!(
            "[sparkplug]\nenabled = true\ngroup = \"tgrp\"\nedge_node = \"node2\"\nprimary_host = \"scada1\"\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n"
        ),
    );
    let state = "spBv1.0/STATE/scada1";
    let daemon = Daemon::start(&st.config);
    let ready = || {
        let mut s = TcpStream::connect(("127.0.0.1", http_port)).ok()?;
        write!(
            s,
            "GET /health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        Some(body)
    };
    assert!(
        wait_until(LONG, || ready()
            .is_some_and(|b| b.contains("waiting for the primary host"))),
        "readiness should name the primary host: {:?} {}",
        ready(),
        daemon.log_text()
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        host.of("NBIRTH").is_empty(),
        "born before the host is online"
    );
    host.raw(state, br#"{"online":true,"timestamp":1}"#, true);
    assert!(host.wait(Duration::from_secs(10), |g| g
        .iter()
        .any(|g| g.kind == "NBIRTH")));
    let first = host.of("NBIRTH")[0].bd_seq();
    assert!(wait_until(Duration::from_secs(10), || ready()
        .is_some_and(|b| !b.contains("sparkplug"))));
    // The host goes away: NDEATH, and no birth until it is back, then with a new bdSeq.
    host.raw(state, br#"{"online":false,"timestamp":2}"#, true);
    assert!(host.wait(Duration::from_secs(10), |g| g
        .iter()
        .any(|g| g.kind == "NDEATH")));
    assert_eq!(host.of("NDEATH")[0].bd_seq(), first);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(host.of("NBIRTH").len(), 1, "born while the host is offline");
    host.raw(state, br#"{"online":true,"timestamp":3}"#, true);
    assert!(host.wait(Duration::from_secs(10), |g| g
        .iter()
        .filter(|g| g.kind == "NBIRTH")
        .count()
        >= 2));
    assert_eq!(host.of("NBIRTH")[1].bd_seq(), (first + 1) % 256);
    check_sequence(&host.all());
}

mod opcua_client {
    use super::*;
    use opcua::client::{ClientBuilder, DataChangeCallback, IdentityToken, Session};
    use opcua::crypto::SecurityPolicy;
    use opcua::types::{
        AttributeId, BrowseDescription, BrowseDirection, CallMethodRequest, MessageSecurityMode,
        MonitoredItemCreateRequest, MonitoringMode, MonitoringParameters, NodeId, ReadValueId,
        ReferenceTypeId, TimestampsToReturn, VariableId, Variant,
    };
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    pub struct Station {
        pub url: String,
        pub pki: std::path::PathBuf,
    }

    /// Connects with Basic256Sha256 SignAndEncrypt as `identity`; the refusal's status
    /// when refused.
    pub async fn connect(
        st: &Station,
        client_pki: &Path,
        identity: IdentityToken,
    ) -> Result<Arc<Session>, String> {
        connect_with(
            st,
            client_pki,
            SecurityPolicy::Basic256Sha256,
            MessageSecurityMode::SignAndEncrypt,
            identity,
        )
        .await
    }

    pub async fn connect_with(
        st: &Station,
        client_pki: &Path,
        policy: SecurityPolicy,
        mode: MessageSecurityMode,
        identity: IdentityToken,
    ) -> Result<Arc<Session>, String> {
        let mut client = ClientBuilder::new()
            .application_name("inspectd test client")
            .application_uri("urn:inspectd:test-client")
            .product_uri("urn:inspectd:test-client")
            .pki_dir(client_pki)
            .create_sample_keypair(true)
            .trust_server_certs(true)
            .session_retry_limit(0)
            .client()
            .unwrap();
        let (session, event_loop) = client
            .connect_to_matching_endpoint((st.url.as_str(), policy.to_str(), mode), identity)
            .await
            .map_err(|e| format!("no session: {e}"))?;
        // A refused session ends the event loop (no retries); waiting on the connection
        // alone would never return then.
        let mut ended = event_loop.spawn();
        tokio::select! {
            true = session.wait_for_connection() => Ok(session),
            status = &mut ended => Err(format!("refused: {status:?}")),
            _ = tokio::time::sleep(Duration::from_secs(10)) => Err("no answer in 10 s".into()),
        }
    }

    /// The index of inspectd's namespace (`urn:inspectd:<topic root>`).
    pub async fn namespace(session: &Session, root: &str) -> u16 {
        let array = read(session, VariableId::Server_NamespaceArray.into()).await;
        let Variant::Array(a) = array else {
            panic!("namespace array: {array:?}")
        };
        let want = Variant::String(format!("urn:inspectd:{root}").into());
        a.values
            .iter()
            .position(|v| *v == want)
            .unwrap_or_else(|| panic!("inspectd's namespace is not in {:?}", a.values))
            as u16
    }

    pub fn id(ns: u16, path: &str) -> NodeId {
        NodeId::new(ns, format!("InspectionSystem/{path}"))
    }

    pub async fn read(session: &Session, node: NodeId) -> Variant {
        let v = session
            .read(
                &[ReadValueId {
                    node_id: node.clone(),
                    attribute_id: AttributeId::Value as u32,
                    ..Default::default()
                }],
                TimestampsToReturn::Both,
                0.0,
            )
            .await
            .unwrap();
        v[0].value
            .clone()
            .unwrap_or_else(|| panic!("{node}: no value"))
    }

    pub async fn browse_names(session: &Session, node: NodeId) -> Vec<String> {
        let r = session
            .browse(
                &[BrowseDescription {
                    node_id: node,
                    browse_direction: BrowseDirection::Forward,
                    reference_type_id: ReferenceTypeId::HierarchicalReferences.into(),
                    include_subtypes: true,
                    node_class_mask: 0,
                    result_mask: 0x3f,
                }],
                1000,
                None,
            )
            .await
            .unwrap();
        r[0].references
            .as_ref()
            .map(|refs| {
                refs.iter()
                    .map(|r| r.browse_name.name.to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Subscribes to `node`; the values it reports are pushed to the returned list.
    pub async fn subscribe(session: &Session, node: NodeId) -> Arc<Mutex<Vec<Variant>>> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let sub = session
            .create_subscription(
                Duration::from_millis(100),
                100,
                20,
                0,
                0,
                true,
                DataChangeCallback::new(move |dv, _| {
                    if let Some(v) = dv.value {
                        s.lock().unwrap().push(v);
                    }
                }),
            )
            .await
            .unwrap();
        session
            .create_monitored_items(
                sub,
                TimestampsToReturn::Both,
                vec![MonitoredItemCreateRequest {
                    item_to_monitor: ReadValueId {
                        node_id: node,
                        attribute_id: AttributeId::Value as u32,
                        ..Default::default()
                    },
                    monitoring_mode: MonitoringMode::Reporting,
                    requested_parameters: MonitoringParameters {
                        sampling_interval: 0.0,
                        queue_size: 10,
                        discard_oldest: true,
                        ..Default::default()
                    },
                }],
            )
            .await
            .unwrap();
        seen
    }

    pub async fn acknowledge(session: &Session, ns: u16, alarm: u64) -> opcua::types::StatusCode {
        session
            .call_one(CallMethodRequest {
                object_id: NodeId::new(ns, "InspectionSystem"),
                method_id: id(ns, "Acknowledge"),
                input_arguments: Some(vec![Variant::UInt64(alarm)]),
            })
            .await
            .map(|r| r.status_code)
            .unwrap_or_else(|e| e)
    }
}

#[test]
fn an_opcua_client_browses_reads_subscribes_and_acknowledges_with_security() {
    use opcua::client::IdentityToken;
    use opcua::types::Variant;
    let broker = Mosquitto::start_forgetful();
    let [port, http_port] = free_ports(2)[..] else {
        unreachable!()
    };
    let users = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(users.path(), "# who may log in\noperator:s3cret\n").unwrap();
    let (_images, st) = scratches_station(
        broker.port,
        &format!(
            "[opcua]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\nusers_file = \"{}\"\n[http]\nlisten = \"127.0.0.1:{http_port}\"\n",
            users.path().display()
        ),
    );
    let alarms = Subscriber::start(broker.port, &format!("{}/alarm", st.root), false);
    let daemon = Daemon::start(&st.config);
    assert!(
        wait_until(LONG, || TcpStream::connect(("127.0.0.1", port)).is_ok()),
        "the OPC UA face did not listen: {}",
        daemon.log_text()
    );
    let server_pki = st.dir.path().join("state/opcua/pki");
    assert!(
        wait_until(LONG, || server_pki.join("own/cert.der").is_file()),
        "the server's certificate is made on first start: {}",
        daemon.log_text()
    );
    let ua = opcua_client::Station {
        url: format!("opc.tcp://127.0.0.1:{port}/"),
        pki: server_pki.clone(),
    };
    let client_pki = tempfile::tempdir().unwrap();
    let user = || IdentityToken::UserName("operator".into(), "s3cret".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // An unknown client certificate is refused and kept for review; once the plant
        // moves it to trusted/, the client gets in.
        let refusal = |r: Result<_, String>| match r {
            Ok(_) => panic!("let in"),
            Err(e) => e,
        };
        let why = refusal(opcua_client::connect(&ua, client_pki.path(), user()).await);
        assert!(why.contains("BadCertificateUntrusted"), "{why}");
        let rejected = ua.pki.join("rejected");
        let cert = std::fs::read_dir(&rejected)
            .unwrap_or_else(|e| panic!("{}: {e}", rejected.display()))
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "der"))
            .unwrap_or_else(|| {
                panic!(
                    "the refused certificate is not in pki/rejected: {}",
                    daemon.log_text()
                )
            });
        std::fs::create_dir_all(ua.pki.join("trusted")).unwrap();
        std::fs::rename(
            &cert,
            ua.pki.join("trusted").join(cert.file_name().unwrap()),
        )
        .unwrap();
        // No security is not offered unless allow_none is set.
        let why = refusal(
            opcua_client::connect_with(
                &ua,
                client_pki.path(),
                opcua::crypto::SecurityPolicy::None,
                opcua::types::MessageSecurityMode::None,
                user(),
            )
            .await,
        );
        assert!(why.starts_with("no session"), "{why}");
        // Without credentials, or with a wrong password: refused.
        let why =
            refusal(opcua_client::connect(&ua, client_pki.path(), IdentityToken::Anonymous).await);
        assert!(
            why.contains("BadSecurityPolicyRejected"),
            "anonymous: {why}"
        );
        let wrong = IdentityToken::UserName("operator".into(), "wrong".into());
        let why = refusal(opcua_client::connect(&ua, client_pki.path(), wrong).await);
        assert!(
            why.contains("BadIdentityTokenRejected"),
            "a wrong password: {why}"
        );
        let session = opcua_client::connect(&ua, client_pki.path(), user())
            .await
            .expect("a trusted client with the right password gets in");
        let ns = opcua_client::namespace(&session, &st.root).await;

        // Browse: the inspection system's parts.
        let root = opcua::types::NodeId::new(ns, "InspectionSystem");
        let names = opcua_client::browse_names(&session, root).await;
        for want in [
            "SystemState",
            "Alarm",
            "Last",
            "Inspection",
            "Health",
            "Acknowledge",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
        }
        let alarm_names =
            opcua_client::browse_names(&session, opcua_client::id(ns, "Alarm/scratches")).await;
        assert_eq!(
            {
                let mut n = alarm_names.clone();
                n.sort();
                n
            },
            ["Acknowledged", "Active", "Id", "Latched"],
            "{alarm_names:?}"
        );
        // Read: the system runs; the alarm raised over MQTT has the same id here.
        assert_eq!(
            opcua_client::read(&session, opcua_client::id(ns, "SystemState")).await,
            Variant::String("Operational".into())
        );
        assert!(alarms.wait_for(LONG, |m| m.iter().any(|m| m.payload.contains("\"raised\""))));
        let id = alarms.messages()[0].json()["id"].as_u64().unwrap();
        let mut seen = Variant::Empty;
        for _ in 0..50 {
            seen = opcua_client::read(&session, opcua_client::id(ns, "Alarm/scratches/Id")).await;
            if seen == Variant::UInt64(id) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(seen, Variant::UInt64(id));
        let labels = opcua_client::read(&session, opcua_client::id(ns, "Last/Labels")).await;
        assert!(format!("{labels:?}").contains("scratches"), "{labels:?}");
        // Subscribe: the frame counter changes as frames are inspected.
        let frames =
            opcua_client::subscribe(&session, opcua_client::id(ns, "Inspection/Frames")).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let got: Vec<u64> = frames
            .lock()
            .unwrap()
            .iter()
            .filter_map(|v| match v {
                Variant::UInt64(n) => Some(*n),
                _ => None,
            })
            .collect();
        assert!(got.len() >= 3, "data changes: {got:?}");
        assert!(got.windows(2).all(|w| w[0] < w[1]), "{got:?}");
        // Call: Acknowledge(id) acknowledges over MQTT as cmd/ack would.
        assert!(opcua_client::acknowledge(&session, ns, id).await.is_good());
        assert!(
            alarms.wait_for(Duration::from_secs(10), |m| m.iter().any(|m| {
                let a = m.json();
                a["event"] == "acked" && a["raised_id"] == id
            })),
            "the method's acknowledgement did not reach the alarm"
        );
        assert!(
            !opcua_client::acknowledge(&session, ns, u64::MAX)
                .await
                .is_bad(),
            "an id no alarm has is ignored, as by cmd/ack"
        );
        let _ = session.disconnect().await;
    });
    let m = metrics(http_port);
    assert_eq!(metric(&m, "inspectd_opcua_listening"), 1.0);
    assert_eq!(
        metric(&m, "inspectd_opcua_acks_total"),
        2.0,
        "both calls were handed on"
    );
    let frames_before = metric(&m, "inspectd_frames_published_total");
    // Dropped clients, garbage and a flood of connections: the server and the
    // inspection go on, and a new session still reads the alarm state.
    let flood: Vec<TcpStream> = (0..40)
        .map(|i| {
            let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
            if i % 2 == 0 {
                let _ = c.write_all(b"HEL\x00\xff\xff\xff\x7fnot opc ua at all");
            }
            c
        })
        .collect();
    drop(flood);
    rt.block_on(async {
        let session = opcua_client::connect(&ua, client_pki.path(), user())
            .await
            .expect("the server still serves after the flood");
        // The latched alarm cleared on acknowledgement; the scratches still in view
        // raise a new one, which reaches this session with its MQTT id.
        assert!(
            alarms.wait_for(LONG, |m| m
                .iter()
                .filter(|m| m.payload.contains("\"raised\""))
                .count()
                >= 2),
            "no new alarm after the flood"
        );
        let raised: Vec<u64> = alarms
            .messages()
            .iter()
            .map(|m| m.json())
            .filter(|a| a["event"] == "raised")
            .map(|a| a["id"].as_u64().unwrap())
            .collect();
        let ids: Vec<u64> = alarms
            .messages()
            .iter()
            .map(|m| m.json()["id"].as_u64().unwrap())
            .collect();
        assert!(
            ids.windows(2).all(|w| w[1] == w[0] + 1),
            "an alarm event is missing: {ids:?}"
        );
        let ns = opcua_client::namespace(&session, &st.root).await;
        let mut seen = Variant::Empty;
        for _ in 0..50 {
            seen = opcua_client::read(&session, opcua_client::id(ns, "Alarm/scratches/Id")).await;
            if seen == Variant::UInt64(raised[1]) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(seen, Variant::UInt64(raised[1]), "the new alarm's id");
        let _ = session.disconnect().await;
    });
    assert!(
        wait_until(LONG, || metric(
            &metrics(http_port),
            "inspectd_frames_published_total"
        ) > frames_before),
        "inspection stopped during the flood"
    );
}
