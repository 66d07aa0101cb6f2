//! The MQTT contract as README.md states it is what `src/contract.rs` produces: every
//! topic with its QoS and retain flag, and the keys of every JSON example.

mod common;

use std::collections::BTreeSet;

use common::repo;
use inspectd::contract::{self, Qos, TOPIC_TABLE};

fn readme() -> String {
    std::fs::read_to_string(repo().join("README.md")).unwrap()
}

/// The README section that starts with `heading` (up to the next `## `).
fn section<'a>(text: &'a str, heading: &str) -> &'a str {
    let start = text
        .find(heading)
        .unwrap_or_else(|| panic!("README has {heading:?}"));
    let rest = &text[start + heading.len()..];
    &rest[..rest.find("\n## ").unwrap_or(rest.len())]
}

fn keys(v: &serde_json::Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

/// The first JSON object in `text` after `marker`, as it is printed (indented lines).
fn example(text: &str, marker: &str) -> serde_json::Value {
    let start = text
        .find(marker)
        .unwrap_or_else(|| panic!("README shows {marker:?}"));
    let body: String = text[start + marker.len()..]
        .lines()
        .skip_while(|l| !l.trim_start().starts_with('{'))
        .take_while(|l| l.starts_with("    "))
        .collect::<Vec<_>>()
        .join("\n");
    let first = body.trim().lines().next().unwrap().trim().to_string();
    // A block may hold one object spread over lines, or several, one per line.
    serde_json::from_str(body.trim())
        .or_else(|_| serde_json::from_str(&first))
        .unwrap_or_else(|e| panic!("{marker}: {e}\n{body}"))
}

#[test]
fn readme_topic_table_is_the_contract() {
    let text = readme();
    let mqtt = section(&text, "## MQTT contract");
    let rows: Vec<Vec<String>> = mqtt
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| l.split('|').map(|c| c.trim().to_string()).collect())
        .collect();
    assert_eq!(rows.len(), TOPIC_TABLE.len(), "one README row per topic");
    for (row, spec) in rows.iter().zip(TOPIC_TABLE) {
        let topic = row[1].split('`').nth(1).unwrap();
        assert_eq!(topic, spec.suffix, "{row:?}");
        assert_eq!(row[1].contains("subscribes"), spec.inbound, "{row:?}");
        let qos = match spec.qos {
            Qos::AtMostOnce => "0",
            Qos::AtLeastOnce => "1",
            Qos::ResultQos => "`mqtt.result_qos`",
        };
        assert_eq!(row[3], qos, "{topic}: QoS");
        assert_eq!(
            row[4],
            if spec.retained { "yes" } else { "no" },
            "{topic}: retained"
        );
    }
    // Topics::new builds exactly these under the root.
    let t = contract::Topics::new("r", &["scratches".to_string()]);
    let built = [
        &t.status,
        &t.result,
        &t.result_ok,
        &t.alarm,
        &t.alarm_active,
        &t.class_active[0],
        &t.stats,
        &t.health,
        &t.defect,
        &t.coil,
        &t.cmd_ack,
        &t.cmd_coil,
        &t.cmd_speed,
        &t.cmd_encoder,
    ];
    for (topic, spec) in built.iter().zip(TOPIC_TABLE) {
        assert_eq!(
            **topic,
            format!("r/{}", spec.suffix.replace("<class>", "scratches"))
        );
    }
}

#[test]
fn readme_examples_have_the_keys_the_payloads_have() {
    let text = readme();
    let mqtt = section(&text, "## MQTT contract");
    // Result: the README's example against what result_json writes.
    let mut f = inspectd::frame::Frame::default();
    f.reset(42, 200, 200);
    f.verdict.ok = false;
    f.verdict.defects.push(inspectd::frame::Defect {
        label: 0,
        score: 0.87,
        bbox: [64, 0, 36, 200],
        area: false,
        place: None,
    });
    let mut out = Vec::new();
    contract::result_json(&f, &["scratches".into()], "m", 6.2, &mut out);
    let produced: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let shown = example(mqtt, "Result:");
    assert_eq!(keys(&shown), keys(&produced), "result keys");
    assert_eq!(
        keys(&shown["defects"][0]),
        keys(&produced["defects"][0]),
        "defect keys"
    );
    assert_eq!(shown["v"], 1);
    // Alarm: a raised event with its evidence, a cleared one with raised_id.
    let shown = example(mqtt, "Alarm:");
    let change = contract::AlarmChange {
        kind: contract::AlarmKind::Raised,
        class: "scratches".into(),
        frames: 3,
        window: 5,
        seq: 42,
        raised_id: None,
        evidence: None,
    };
    let produced: serde_json::Value =
        serde_json::from_slice(&contract::alarm_json(17, &change)).unwrap();
    assert_eq!(keys(&shown), keys(&produced), "alarm keys");
    // Defect and coil events ([strip]): the examples read back as the payloads' types,
    // and written again they have the same keys and values.
    let shown = example(mqtt, "Each finished track is one `defect` event");
    let track: contract::TrackMsg = serde_json::from_value(shown.clone()).unwrap();
    let produced: serde_json::Value =
        serde_json::from_slice(&contract::defect_json(52, Some("C-20261202-017"), &track)).unwrap();
    assert_eq!(keys(&shown), keys(&produced), "defect keys");
    assert_eq!(keys(&shown["periodic"]), keys(&produced["periodic"]));
    for k in [
        "track", "class", "md_mm", "frames", "evidence", "coil", "id",
    ] {
        assert_eq!(shown[k], produced[k], "defect {k}");
    }
    let shown = example(mqtt, "is published on `coil`:");
    let summary: contract::CoilSummary = serde_json::from_value(shown.clone()).unwrap();
    let produced: serde_json::Value =
        serde_json::from_slice(&contract::coil_json(60, &summary)).unwrap();
    assert_eq!(keys(&shown), keys(&produced), "coil keys");
    assert_eq!(shown["periodic"], produced["periodic"]);
    assert_eq!(shown["counts"], produced["counts"]);
    // Health: the example against the HealthMsg type.
    let shown = example(mqtt, "Health (retained");
    let produced = serde_json::to_value(contract::HealthMsg {
        v: 1,
        ts: 1,
        ok: true,
        camera: None,
        dark: false,
        saturated: false,
        no_contrast: false,
        frozen: false,
        mean: None,
        contrast: None,
        saturated_fraction: None,
        speed: None,
    })
    .unwrap();
    assert_eq!(keys(&shown), keys(&produced), "health keys");
    // Stats: every top-level key the README names is one the payload has.
    let stats = inspectd::telemetry::Stats::default();
    let produced: serde_json::Value =
        serde_json::from_str(&stats.snapshot_json(&mut (std::time::Instant::now(), 0), "m"))
            .unwrap();
    let shown = example(mqtt, "Stats (every");
    assert_eq!(keys(&shown), keys(&produced), "stats keys");
    // The status payloads.
    assert_eq!(contract::ONLINE, b"online");
    assert_eq!(contract::OFFLINE, b"offline");
    assert!(mqtt.contains("`online` / `offline`"));
}
