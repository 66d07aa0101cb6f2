//! PLC-grade delivery: no alarm lost to a broker outage or to a daemon killed while the
//! broker is away. A real mosquitto (with persistence, like a production broker) is
//! stopped and restarted by the tests; the subscriber keeps a persistent session.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;

/// Alternating runs of two classes, so alarms keep being raised and cleared: four frames
/// the model finds scratches in, then four it finds patches in.
fn alternating() -> Vec<String> {
    let s = stems_with("scratches", "patches", 2);
    let p = stems_with("patches", "scratches", 2);
    [&s[0], &s[1], &s[0], &s[1], &p[0], &p[1], &p[0], &p[1]]
        .into_iter()
        .cloned()
        .collect()
}

fn alarm_ids(sub: &Subscriber, root: &str) -> Vec<u64> {
    sub.on(&format!("{root}/alarm"))
        .iter()
        .map(|m| m.json()["id"].as_u64().unwrap())
        .collect()
}

/// A broker, a station replaying `alternating()` at 10 frames/s (M=3, N=2, N_clear=0), a
/// persistent subscriber to its alarms, and the daemon, once the first alarm arrived.
fn alarming_station() -> (Mosquitto, tempfile::TempDir, Station, Subscriber, Daemon) {
    let broker = Mosquitto::start();
    let stems = alternating();
    let images = image_folder(&stems.iter().map(String::as_str).collect::<Vec<_>>());
    let st = station(images.path(), broker.port, true, 10.0, (3, 2, 0, false), "");
    let sub = Subscriber::start(broker.port, &format!("{}/alarm", st.root), true);
    let daemon = Daemon::start(&st.config);
    assert!(
        sub.wait_for(Duration::from_secs(60), |m| !m.is_empty()),
        "{}",
        daemon.log_text()
    );
    (broker, images, st, sub, daemon)
}

#[test]
fn alarms_raised_while_the_broker_is_down_all_arrive_after_it_returns() {
    let (mut broker, _images, st, sub, mut daemon) = alarming_station();

    broker.stop();
    let before_outage = daemon.logged_alarm_ids().len();
    std::thread::sleep(Duration::from_secs(11));
    let during_outage = daemon.logged_alarm_ids().len() - before_outage;
    assert!(
        during_outage >= 4,
        "alarms kept being decided and stored during the outage ({during_outage})"
    );
    let stored_before_restart: BTreeSet<u64> = daemon.logged_alarm_ids().into_iter().collect();
    let restarted = Instant::now();
    broker.restart();

    // Let the daemon catch up, then stop it (it flushes what it still has).
    std::thread::sleep(Duration::from_secs(2));
    daemon.signal(libc::SIGTERM);
    assert_eq!(
        daemon.wait(Duration::from_secs(10)),
        Some(0),
        "{}",
        daemon.log_text()
    );
    let stored: BTreeSet<u64> = daemon.logged_alarm_ids().into_iter().collect();
    assert!(
        sub.wait_for(Duration::from_secs(20), |m| {
            let got: BTreeSet<u64> = m.iter().map(|m| m.json()["id"].as_u64().unwrap()).collect();
            stored.is_subset(&got)
        }),
        "missing: {:?}",
        stored
            .difference(&alarm_ids(&sub, &st.root).into_iter().collect())
            .collect::<Vec<_>>()
    );
    // When did the last alarm that was waiting at the restart arrive?
    let last_at = sub
        .messages()
        .iter()
        .filter(|m| {
            m.at > restarted && stored_before_restart.contains(&m.json()["id"].as_u64().unwrap())
        })
        .map(|m| m.at)
        .max()
        .unwrap();
    let received = alarm_ids(&sub, &st.root);
    let unique: BTreeSet<u64> = received.iter().copied().collect();
    // Duplicates only as QoS 1 allows; the first delivery of each id comes in id order.
    let mut first_seen = Vec::new();
    for id in &received {
        if !first_seen.contains(id) {
            first_seen.push(*id);
        }
    }
    assert!(first_seen.windows(2).all(|w| w[0] < w[1]), "{first_seen:?}");
    assert_eq!(
        unique, stored,
        "every stored alarm delivered, and nothing else"
    );
    eprintln!(
        "outage: {} alarms stored in total, {during_outage} during the 11 s outage, {} delivered ({} duplicates); \
         last pending alarm delivered {:.0} ms after the broker restarted",
        stored.len(),
        unique.len(),
        received.len() - unique.len(),
        (last_at - restarted).as_secs_f64() * 1e3
    );
}

#[test]
fn alarms_pending_when_the_daemon_is_killed_arrive_after_both_restart() {
    let (mut broker, images, st, sub, mut daemon) = alarming_station();
    broker.stop();
    let before = daemon.logged_alarm_ids().len();
    assert!(wait_until(Duration::from_secs(30), || daemon
        .logged_alarm_ids()
        .len()
        >= before + 3));
    daemon.signal(libc::SIGKILL);
    daemon.wait(Duration::from_secs(5));
    let stored_before_kill: BTreeSet<u64> = daemon.logged_alarm_ids().into_iter().collect();
    let delivered: BTreeSet<u64> = alarm_ids(&sub, &st.root).into_iter().collect();
    let pending: Vec<u64> = stored_before_kill.difference(&delivered).copied().collect();
    assert!(
        !pending.is_empty(),
        "alarms were pending when the daemon died"
    );

    broker.restart();
    // Restart with a folder that raises nothing, so only the outbox can deliver them.
    let quiet = image_folder(&["patches_12"]);
    let st2_config = std::fs::read_to_string(&st.config)
        .unwrap()
        .replace(
            &images.path().display().to_string(),
            &quiet.path().display().to_string(),
        )
        .replace("loop = true", "loop = false");
    std::fs::write(&st.config, st2_config).unwrap();
    let mut again = Daemon::start(&st.config);
    assert!(
        sub.wait_for(Duration::from_secs(30), |m| {
            let got: BTreeSet<u64> = m.iter().map(|m| m.json()["id"].as_u64().unwrap()).collect();
            pending.iter().all(|id| got.contains(id))
        }),
        "pending {pending:?} not delivered\n{}",
        again.log_text()
    );
    assert_eq!(again.wait(Duration::from_secs(30)), Some(0));
    // The restarted daemon's ids continue after the old ones.
    let new_ids = again.logged_alarm_ids();
    assert!(
        new_ids
            .iter()
            .all(|id| id > stored_before_kill.iter().max().unwrap()),
        "{new_ids:?}"
    );
}

#[test]
fn a_latched_alarm_clears_on_cmd_ack_with_an_acked_event() {
    let broker = Mosquitto::start();
    let images = image_folder(&["scratches_114", "scratches_13", "scratches_114"]);
    let st = station(images.path(), broker.port, true, 5.0, (3, 2, 0, true), "");
    let sub = Subscriber::start(broker.port, &format!("{}/#", st.root), false);
    let _daemon = Daemon::start(&st.config);
    let alarm = format!("{}/alarm", st.root);
    assert!(sub.wait_for(Duration::from_secs(60), |m| m
        .iter()
        .any(|m| m.topic == alarm)));
    let raised = sub.on(&alarm)[0].json();
    assert_eq!(raised["event"], "raised");
    sub.publish(&format!("{}/cmd/ack", st.root), "not-an-id");
    sub.publish(&format!("{}/cmd/ack", st.root), &raised["id"].to_string());
    assert!(sub.wait_for(Duration::from_secs(10), |m| m
        .iter()
        .any(|m| m.topic == alarm && m.payload.contains("\"event\":\"acked\""))));
    let acked = sub
        .on(&alarm)
        .iter()
        .map(Msg::json)
        .find(|a| a["event"] == "acked")
        .unwrap();
    assert_eq!(acked["raised_id"], raised["id"]);
    assert_eq!(acked["class"], raised["class"]);
    let class_active = format!(
        "{}/alarm/{}/active",
        st.root,
        raised["class"].as_str().unwrap()
    );
    assert!(sub.wait_for(Duration::from_secs(5), |m| m
        .iter()
        .any(|m| m.topic == class_active && m.payload == "0")));
}

#[test]
fn a_broker_that_forgot_everything_gets_the_retained_truth_back_and_results_are_counted_as_dropped()
{
    let mut broker = Mosquitto::start_forgetful();
    let images = image_folder(&["scratches_114", "scratches_13"]);
    // Latched, so the alarm stays active across the outage.
    let st = station(images.path(), broker.port, true, 10.0, (3, 2, 0, true), "");
    let mut daemon = Daemon::start(&st.config);
    let first = Subscriber::start(broker.port, &format!("{}/alarm/active", st.root), false);
    assert!(
        first.wait_for(Duration::from_secs(60), |m| m
            .iter()
            .any(|m| m.payload == "1")),
        "{}",
        daemon.log_text()
    );
    drop(first);

    broker.stop();
    std::thread::sleep(Duration::from_secs(3));
    broker.restart();
    assert!(
        wait_until(Duration::from_secs(20), || daemon
            .log_text()
            .matches("Connected to the MQTT broker.")
            .count()
            >= 2),
        "{}",
        daemon.log_text()
    );
    // The retained truth goes out after the ConnAck, in order (status, alarm/active, each
    // class; scratches is the last class): once a probe has seen scratches' topic come by,
    // live or retained, the broker holds all of it. (A subscriber that joined before the
    // republish would get it live, without the retain flag: MQTT 3.1.1.)
    let probe = Subscriber::start(broker.port, &format!("{}/#", st.root), false);
    let scratches = format!("{}/alarm/scratches/active", st.root);
    assert!(
        probe.wait_for(Duration::from_secs(10), |m| m
            .iter()
            .any(|m| m.topic == scratches && m.payload == "1")),
        "{}",
        daemon.log_text()
    );
    drop(probe);
    // A newcomer on the restarted (empty) broker learns the truth from inspectd.
    let late = Subscriber::start(broker.port, &format!("{}/#", st.root), false);
    let retained = |topic: String, payload: &'static str| {
        move |m: &[Msg]| {
            m.iter()
                .any(|m| m.topic == topic && m.retain && m.payload == payload)
        }
    };
    assert!(late.wait_for(
        Duration::from_secs(10),
        retained(format!("{}/status", st.root), "online")
    ));
    assert!(late.wait_for(
        Duration::from_secs(10),
        retained(format!("{}/alarm/active", st.root), "1")
    ));
    assert!(late.wait_for(
        Duration::from_secs(10),
        retained(format!("{}/alarm/scratches/active", st.root), "1")
    ));
    // Frames kept flowing during the outage; their results were dropped and counted.
    let stats_topic = format!("{}/stats", st.root);
    assert!(late.wait_for(Duration::from_secs(10), |m| m
        .iter()
        .any(|m| m.topic == stats_topic)));
    let stats = late.on(&stats_topic).last().unwrap().json();
    assert!(stats["drops"]["results"].as_u64().unwrap() >= 10, "{stats}");
    assert!(
        stats["mqtt"]["reconnects"].as_u64().unwrap() >= 1,
        "{stats}"
    );
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait(Duration::from_secs(5)), Some(0));
}

#[test]
fn an_alarm_active_when_the_daemon_is_killed_is_closed_by_the_next_one_with_its_id() {
    let broker = Mosquitto::start();
    let scratched = stems_with("scratches", "patches", 2);
    let images = image_folder(&[&scratched[0], &scratched[1]]);
    let st = station(images.path(), broker.port, true, 10.0, (3, 2, 0, false), "");
    let sub = Subscriber::start(broker.port, &format!("{}/#", st.root), false);
    let mut daemon = Daemon::start(&st.config);
    let alarm = format!("{}/alarm", st.root);
    let raised = |m: &Msg| {
        m.topic == alarm && m.json()["event"] == "raised" && m.json()["class"] == "scratches"
    };
    assert!(
        sub.wait_for(Duration::from_secs(60), |m| m.iter().any(raised)),
        "{}",
        daemon.log_text()
    );
    let raised_id = sub.messages().iter().find(|m| raised(m)).unwrap().json()["id"]
        .as_u64()
        .unwrap();
    daemon.signal(libc::SIGKILL);
    daemon.wait(Duration::from_secs(5));
    let saved = std::fs::read_to_string(st.dir.path().join("state/alarms.json")).unwrap();
    assert!(saved.contains("\"scratches\""), "{saved}");

    // The next process sees frames without scratches: the alarm it inherited clears, and
    // the cleared event names the raised event of the process that died.
    let clean = stems_with("patches", "scratches", 4);
    let quiet = image_folder(&clean.iter().map(String::as_str).collect::<Vec<_>>());
    let text = std::fs::read_to_string(&st.config)
        .unwrap()
        .replace(
            &images.path().display().to_string(),
            &quiet.path().display().to_string(),
        )
        .replace("loop = true", "loop = false");
    std::fs::write(&st.config, text).unwrap();
    let restarted_at = Instant::now();
    let mut again = Daemon::start(&st.config);
    assert_eq!(
        again.wait(Duration::from_secs(60)),
        Some(0),
        "{}",
        again.log_text()
    );
    let cleared = |m: &Msg| {
        m.topic == alarm && m.json()["event"] == "cleared" && m.json()["class"] == "scratches"
    };
    assert!(
        sub.wait_for(Duration::from_secs(10), |m| m.iter().any(cleared)),
        "no cleared event\n{}",
        again.log_text()
    );
    let events: Vec<serde_json::Value> = sub
        .messages()
        .iter()
        .filter(|m| cleared(m))
        .map(Msg::json)
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["raised_id"], raised_id);
    // Until it cleared, the new process kept the retained truth: scratches active.
    let active = format!("{}/alarm/scratches/active", st.root);
    let after_restart: Vec<String> = sub
        .messages()
        .iter()
        .filter(|m| m.topic == active && m.at > restarted_at)
        .map(|m| m.payload.clone())
        .collect();
    assert_eq!(
        after_restart.first().map(String::as_str),
        Some("1"),
        "{after_restart:?}"
    );
    assert_eq!(
        after_restart.last().map(String::as_str),
        Some("0"),
        "{after_restart:?}"
    );
    let saved = std::fs::read_to_string(st.dir.path().join("state/alarms.json")).unwrap();
    assert!(!saved.contains("\"scratches\""), "{saved}");
}

/// Runs the daemon on a non-looping folder to its end; it must exit 0.
fn run_to_the_end(config: &std::path::Path) -> Daemon {
    let mut daemon = Daemon::start(config);
    assert_eq!(
        daemon.wait(Duration::from_secs(60)),
        Some(0),
        "{}",
        daemon.log_text()
    );
    daemon
}

#[test]
fn a_corrupt_alarm_state_file_is_an_error_and_a_clean_start() {
    let broker = Mosquitto::start();
    let images = image_folder(&["patches_12"]);
    let st = station(images.path(), broker.port, false, 0.0, (3, 2, 0, false), "");
    std::fs::create_dir_all(st.dir.path().join("state")).unwrap();
    std::fs::write(
        st.dir.path().join("state/alarms.json"),
        b"{\"v\":1,\"active\":[{\"cla",
    )
    .unwrap();
    let log = run_to_the_end(&st.config).log_text();
    assert!(
        log.contains("Saved alarm state is corrupt") && log.contains("\"level\":\"ERROR\""),
        "{log}"
    );
}

#[test]
fn a_missing_alarm_state_file_after_alarms_is_an_error_and_a_clean_start() {
    let broker = Mosquitto::start();
    let scratched = stems_with("scratches", "patches", 2);
    let images = image_folder(&[&scratched[0], &scratched[1], &scratched[0]]);
    let st = station(images.path(), broker.port, false, 0.0, (3, 2, 0, false), "");
    let first = run_to_the_end(&st.config);
    assert!(!first.logged_alarm_ids().is_empty(), "{}", first.log_text());
    assert!(
        first
            .log_text()
            .contains("No saved alarm state (first start)"),
        "a first start is not an error"
    );
    std::fs::remove_file(st.dir.path().join("state/alarms.json")).unwrap();
    let log = run_to_the_end(&st.config).log_text();
    assert!(
        log.contains("Saved alarm state is missing although alarms were raised before")
            && log.contains("\"level\":\"ERROR\""),
        "{log}"
    );
}
