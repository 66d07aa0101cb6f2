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

#[test]
fn a_modbus_client_reads_the_map_and_acknowledges_alarms() {
    let broker = Mosquitto::start_forgetful();
    // Scratches in every frame, replayed in a loop: the scratches alarm (latched) raises
    // after two frames and stays until acknowledged.
    let stems = stems_with("scratches", "", 3);
    let stems: Vec<&str> = stems.iter().map(String::as_str).collect();
    let images = image_folder(&stems);
    let [mb_port, http_port] = free_ports(2)[..] else {
        unreachable!()
    };
    let st = station(
        images.path(),
        broker.port,
        true,
        10.0,
        (3, 2, 0, true),
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
    let stems = stems_with("scratches", "", 3);
    let stems: Vec<&str> = stems.iter().map(String::as_str).collect();
    let images = image_folder(&stems);
    let host = Host::start(broker.port, "tgrp");
    let st = station(
        images.path(),
        broker.port,
        true,
        10.0,
        (3, 2, 0, true),
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
