//! Hostile input, property-based: whatever an engineer, a disk or a network hands the
//! daemon, it answers with a value or a clear error, never a panic.
//!
//! Each target runs a short set of cases with the tests; the long run (100,000 cases per
//! target) is `cargo test --release --test hostile -- --ignored`.

mod common;

use std::io::Cursor;
use std::path::Path;

use inspectd::config::Settings;
use inspectd::contract::{parse_ack, Command};
use inspectd::stages::capture::gray_from_bytes;
use inspectd::stages::classify::ModelMeta;
use inspectd::state::outbox::Outbox;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const QUICK: u32 = 300;
const LONG: u32 = 100_000;

fn run<S: Strategy>(cases: u32, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{e}");
    }
}

// ---- config files ----------------------------------------------------------------------

const GOOD_CONFIG: &str = r#"[station]
site = "s"
line = "l"
station = "st"
[capture]
source = "dir"
path = "imgs"
fps = 10
[model]
path = "m.onnx"
[decide]
default_threshold = 0.3
[alarm]
window = 5
raise = 3
[mqtt]
port = 1883
"#;

fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        // TOML spells them nan and inf, as Debug prints infinity.
        any::<f64>().prop_map(|v| format!("{v:?}").replace("NaN", "nan")),
        any::<bool>().prop_map(|v| v.to_string()),
        "[ -~]{0,12}".prop_map(|s| format!("{s:?}")),
        "\\PC{0,8}".prop_map(|s| format!("{s:?}")),
        Just("[]".to_string()),
        Just("[1, \"a\"]".to_string()),
        Just("{ a = 1 }".to_string()),
        Just("\"\"".to_string()),
        Just("-1".to_string()),
        Just("1e400".to_string()),
    ]
}

fn toml_key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "site",
            "line",
            "station",
            "source",
            "path",
            "fps",
            "queue",
            "live",
            "loop",
            "device",
            "width",
            "height",
            "pixel_format",
            "blur_kernel",
            "blur_sigma",
            "min_region_area",
            "max_region_area",
            "min_score",
            "nms_iou",
            "candidates",
            "max_detections",
            "workers",
            "default_threshold",
            "thresholds",
            "snap_to_regions",
            "window",
            "raise",
            "clear",
            "latch",
            "mode",
            "host",
            "port",
            "prefix",
            "result_qos",
            "keep_alive_s",
            "dir",
            "max_outbox_bytes",
            "level",
            "format",
            "ca_file",
            "embedded_allow_remote",
        ])
        .prop_map(String::from),
        "[a-z_]{1,10}",
    ]
}

fn config_text() -> impl Strategy<Value = String> {
    let sections = prop::sample::select(
        inspectd::config::SECTIONS
            .iter()
            .copied()
            .chain(["decide.thresholds", "nonsense"])
            .collect::<Vec<_>>(),
    );
    let edits = prop::collection::vec((sections, toml_key(), toml_value()), 0..6);
    let raw = prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4);
    (edits, raw, any::<bool>()).prop_map(|(edits, raw, keep_good)| {
        let mut text = if keep_good {
            GOOD_CONFIG.to_string()
        } else {
            String::new()
        };
        for (section, key, value) in edits {
            text.push_str(&format!("[{section}]\n{key} = {value}\n"));
        }
        let mut bytes = text.into_bytes();
        for (at, b) in raw {
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                bytes[i] = b;
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn config_files(cases: u32) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("imgs")).unwrap();
    std::fs::write(dir.path().join("m.onnx"), b"x").unwrap();
    let path = dir.path().join("c.toml");
    run(cases, config_text(), |text| {
        std::fs::write(&path, &text).unwrap();
        match Settings::load(&path) {
            Ok(s) => prop_assert!(s.validate().is_empty(), "loaded but invalid: {text}"),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
        Ok(())
    });
}

#[test]
fn config_files_random_keys_types_and_bytes() {
    config_files(QUICK);
}

#[test]
#[ignore = "long run: cargo test --release --test hostile -- --ignored"]
fn config_files_long() {
    config_files(LONG);
}

// ---- image bytes -----------------------------------------------------------------------

/// A real NEU image as PNG, JPEG and BMP bytes.
fn encoded_images() -> Vec<(&'static str, Vec<u8>)> {
    let img = image::open(common::neu_image("scratches_13")).unwrap();
    let mut out = Vec::new();
    for (name, format) in [
        ("png", image::ImageFormat::Png),
        ("jpeg", image::ImageFormat::Jpeg),
        ("bmp", image::ImageFormat::Bmp),
    ] {
        let mut bytes = Vec::new();
        img.write_to(&mut Cursor::new(&mut bytes), format).unwrap();
        out.push((name, bytes));
    }
    out
}

#[derive(Debug, Clone)]
enum Mutation {
    Set(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
    Insert(prop::sample::Index, Vec<u8>),
    /// Overwrite 4 bytes with a large number: sizes and lengths in headers.
    Big(prop::sample::Index),
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    let one = prop_oneof![
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        (
            any::<prop::sample::Index>(),
            prop::collection::vec(any::<u8>(), 1..16)
        )
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<prop::sample::Index>().prop_map(Mutation::Big),
    ];
    prop::collection::vec(one, 1..6)
}

fn mutate(bytes: &mut Vec<u8>, ms: &[Mutation]) {
    for m in ms {
        if bytes.is_empty() {
            return;
        }
        match m {
            Mutation::Set(i, b) => {
                let i = i.index(bytes.len());
                bytes[i] = *b;
            }
            Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len())),
            Mutation::Insert(i, b) => {
                let i = i.index(bytes.len());
                bytes.splice(i..i, b.iter().copied());
            }
            Mutation::Big(i) => {
                let i = i.index(bytes.len());
                for (k, v) in [0x7f, 0xff, 0xff, 0xf0].into_iter().enumerate() {
                    if let Some(b) = bytes.get_mut(i + k) {
                        *b = v;
                    }
                }
            }
        }
    }
}

fn image_bytes(cases: u32) {
    let images = encoded_images();
    let strategy = (0..images.len(), mutations());
    run(cases, strategy, |(which, ms)| {
        let (name, good) = &images[which];
        let mut bytes = good.clone();
        mutate(&mut bytes, &ms);
        match gray_from_bytes(&bytes, Path::new(name)) {
            Ok((w, h, px)) => prop_assert_eq!(px.len(), w as usize * h as usize),
            Err(e) => prop_assert!(e.to_string().starts_with(name), "{e}"),
        }
        Ok(())
    });
}

#[test]
fn image_files_mutated_png_jpeg_bmp() {
    image_bytes(QUICK);
}

#[test]
#[ignore = "long run: cargo test --release --test hostile -- --ignored"]
fn image_files_long() {
    image_bytes(LONG);
}

// ---- cmd/ack ---------------------------------------------------------------------------

fn ack_payloads(cases: u32) {
    let payload = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..40),
        "\\PC{0,20}".prop_map(String::into_bytes),
        "[ 0-9a-zA-Z+-]{0,24}".prop_map(String::into_bytes),
    ];
    run(cases, payload, |bytes| {
        match parse_ack(&bytes) {
            Ok(Command::Ack(Some(id))) => {
                let text = std::str::from_utf8(&bytes).unwrap().trim();
                prop_assert_eq!(text.trim_start_matches('+').parse::<u64>().ok(), Some(id));
            }
            Ok(Command::Ack(None)) => {
                prop_assert!(std::str::from_utf8(&bytes)
                    .unwrap()
                    .trim()
                    .eq_ignore_ascii_case("all"))
            }
            Ok(other) => prop_assert!(false, "cmd/ack parsed as {other:?}"),
            Err(e) => prop_assert!(!e.is_empty()),
        }
        Ok(())
    });
}

#[test]
fn coil_ids_from_any_bytes_are_safe_or_refused_by_name() {
    let payload = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..80),
        "\\PC{0,70}".prop_map(String::into_bytes),
        "[ 0-9a-zA-Z/.:_-]{0,70}".prop_map(String::into_bytes),
    ];
    run(256, payload, |bytes| {
        match inspectd::contract::parse_coil(&bytes) {
            Ok(Command::Coil(id)) => {
                prop_assert_eq!(id.as_str(), std::str::from_utf8(&bytes).unwrap().trim());
                prop_assert!((1..=64).contains(&id.len()));
                prop_assert!(id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c)));
            }
            Ok(other) => prop_assert!(false, "cmd/coil parsed as {other:?}"),
            Err(e) => prop_assert!(e.contains("coil id") || e.contains("not text"), "{e}"),
        }
        Ok(())
    });
}

#[test]
fn line_speeds_and_encoder_counts_from_any_bytes_are_in_range_or_refused() {
    let payload = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..40),
        "\\PC{0,20}".prop_map(String::into_bytes),
        "[ 0-9eE.+-]{0,24}|NaN|inf|-inf|1e400".prop_map(String::into_bytes),
    ];
    run(256, payload, |bytes| {
        match inspectd::contract::parse_speed(&bytes, 7) {
            Ok(Command::Speed { mm_s, at_ms }) => {
                prop_assert!(mm_s.is_finite() && (0.0..=100_000.0).contains(&mm_s));
                prop_assert_eq!(at_ms, 7);
                let text = std::str::from_utf8(&bytes).unwrap().trim();
                prop_assert_eq!(text.parse::<f64>().ok(), Some(mm_s));
            }
            Ok(other) => prop_assert!(false, "cmd/speed parsed as {other:?}"),
            Err(e) => prop_assert!(e.contains("line speed") || e.contains("not text"), "{e}"),
        }
        match inspectd::contract::parse_encoder(&bytes, 7) {
            Ok(Command::Encoder { count, .. }) => {
                let text = std::str::from_utf8(&bytes).unwrap().trim();
                prop_assert_eq!(text.parse::<i64>().ok(), Some(count));
            }
            Ok(other) => prop_assert!(false, "cmd/encoder parsed as {other:?}"),
            Err(e) => prop_assert!(e.contains("encoder count") || e.contains("not text"), "{e}"),
        }
        Ok(())
    });
}

#[test]
fn ack_commands_any_bytes() {
    ack_payloads(QUICK);
}

#[test]
#[ignore = "long run: cargo test --release --test hostile -- --ignored"]
fn ack_commands_long() {
    ack_payloads(LONG);
}

// ---- model metadata --------------------------------------------------------------------

fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z_-]{1,12}",
        "[a-z]{0,4}[\"\\\\/+#][a-z]{0,4}",
        "\\PC{0,10}",
        "[a-z]{0,3}[\\x00-\\x1f][a-z]{0,3}",
        Just(String::new()),
        "[a-z]{65,70}",
    ]
}

fn unsafe_label(l: &str) -> bool {
    l.is_empty()
        || l.len() > 64
        || l.chars()
            .any(|c| matches!(c, '/' | '+' | '#' | '"' | '\\') || c.is_control())
}

fn metadata(cases: u32) {
    let shipped: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::repo().join("models/neu_det.json")).unwrap(),
    )
    .unwrap();
    let shape = (0u32..40, 0u32..40, 0u32..2000, 0u32..3);
    let strategy = (
        prop::collection::vec(label(), 0..8),
        any::<bool>(),
        label(),
        any::<bool>(),
        shape,
    );
    run(
        cases,
        strategy,
        |(mut labels, dup, id, lie, (patch, stride, multiple, channels))| {
            if dup && !labels.is_empty() {
                labels.push(labels[0].clone());
            }
            let mut meta = shipped.clone();
            meta["labels"] = serde_json::json!(labels);
            meta["id"] = serde_json::json!(id);
            if lie {
                meta["input"]["patch"] = patch.into();
                meta["output"]["stride"] = stride.into();
                meta["input"]["multiple"] = multiple.into();
                meta["input"]["channels"] = channels.into();
            }
            let text = meta.to_string();
            match ModelMeta::from_json(&text, Path::new("m.json")) {
                Ok(m) => {
                    prop_assert!(!m.labels.is_empty());
                    for (i, l) in m.labels.iter().enumerate() {
                        prop_assert!(!unsafe_label(l), "accepted {l:?}");
                        prop_assert!(!m.labels[..i].contains(l), "accepted {l:?} twice");
                    }
                    prop_assert!(!m.id.is_empty() && !m.id.contains(['"', '\\']));
                }
                Err(e) => {
                    let e = e.to_string();
                    prop_assert!(
                        e.starts_with("model metadata m.json") || e.contains("m.json"),
                        "{e}"
                    );
                    for l in labels.iter().filter(|l| unsafe_label(l)) {
                        prop_assert!(e.contains(&format!("{l:?}")), "{l:?} not named in {e}");
                    }
                }
            }
            Ok(())
        },
    );
}

#[test]
fn model_metadata_hostile_labels_and_lying_shapes() {
    metadata(QUICK);
}

#[test]
#[ignore = "long run: cargo test --release --test hostile -- --ignored"]
fn model_metadata_long() {
    metadata(LONG);
}

// ---- the outbox ------------------------------------------------------------------------

fn outbox_files(cases: u32) {
    let strategy = (
        1usize..12,
        prop::collection::vec(any::<bool>(), 12),
        any::<prop::sample::Index>(),
        prop_oneof![Just(None), any::<u8>().prop_map(Some)],
    );
    run(cases, strategy, |(events, acked, at, byte)| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.log");
        // (id, offset where its record ends, offset where its ack record ends)
        let mut records = Vec::new();
        {
            let mut o = Outbox::open(dir.path(), 1 << 20).unwrap();
            for i in 0..events {
                let id = o
                    .append(|id| format!("{{\"id\":{id},\"n\":{i}}}").into_bytes())
                    .unwrap();
                let end = std::fs::metadata(&path).unwrap().len();
                records.push((id, end, None));
            }
            for r in records.iter_mut() {
                if acked[r.0 as usize % acked.len()] {
                    o.ack(r.0).unwrap();
                    r.2 = Some(std::fs::metadata(&path).unwrap().len());
                }
            }
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let damage = at.index(bytes.len());
        match byte {
            Some(b) => bytes[damage] ^= b.max(1),
            None => bytes.truncate(damage),
        }
        std::fs::write(&path, &bytes).unwrap();
        let o = Outbox::open(dir.path(), 1 << 20);
        prop_assert!(o.is_ok(), "the daemon must start: {:?}", o.err());
        let o = o.unwrap();
        let pending: Vec<u64> = o.pending().map(|(id, _)| id).collect();
        for (id, end, ack_end) in &records {
            let event_intact = *end <= damage as u64;
            let ack_intact = ack_end.is_some_and(|a| a <= damage as u64);
            if event_intact && ack_end.is_none() {
                prop_assert!(
                    pending.contains(id),
                    "event {id} before the damage at {damage} lost"
                );
            }
            if ack_intact {
                prop_assert!(!pending.contains(id), "acked event {id} came back");
            }
        }
        // New ids never reuse one that was handed out before the damage.
        let before = records
            .iter()
            .filter(|r| r.1 <= damage as u64)
            .map(|r| r.0)
            .max();
        if let Some(max) = before {
            prop_assert!(o.next_id() > max);
        }
        Ok(())
    });
}

#[test]
fn outbox_corrupted_at_random_offsets() {
    outbox_files(QUICK / 3);
}

#[test]
#[ignore = "long run: cargo test --release --test hostile -- --ignored"]
fn outbox_long() {
    outbox_files(LONG);
}
