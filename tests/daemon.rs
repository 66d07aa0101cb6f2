//! The daemon end to end: the real binary, the real model, real NEU images, and a real
//! mosquitto started on a free port.

mod common;

use std::time::{Duration, Instant};

use common::*;

const LONG: Duration = Duration::from_secs(60);

/// N-of-M with hysteresis, written again plainly, to say what the daemon must publish.
fn expected_alarms(
    present: &[bool],
    window: usize,
    raise: usize,
    clear: usize,
) -> Vec<(usize, &'static str)> {
    let mut active = false;
    let mut out = Vec::new();
    for i in 0..present.len() {
        let lo = (i + 1).saturating_sub(window);
        let count = present[lo..=i].iter().filter(|&&p| p).count();
        if !active && count >= raise {
            active = true;
            out.push((i + 1, "raised"));
        } else if active && count <= clear {
            active = false;
            out.push((i + 1, "cleared"));
        }
    }
    out
}

#[test]
fn every_frame_gets_one_result_in_order_with_the_verdict_classify_gives() {
    let broker = Mosquitto::start();
    // Four classes the model finds well, in frames it is known to find them in, and the
    // two it finds worst (crazing, rolled-in scale: the model card's weaknesses).
    let found_well: Vec<String> = ["scratches", "patches", "inclusion", "pitted_surface"]
        .iter()
        .map(|c| stems_with(c, "", 1).remove(0))
        .collect();
    let mut stems: Vec<&str> = found_well.iter().map(String::as_str).collect();
    stems.extend(["crazing_1", "rolled-in_scale_10"]);
    let images = image_folder(&stems);
    let st = station(images.path(), broker.port, false, 0.0, (5, 3, 1, false), "");
    let sub = Subscriber::start(broker.port, &format!("{}/#", st.root), false);
    let mut daemon = Daemon::start(&st.config);
    assert_eq!(
        daemon.wait(LONG),
        Some(0),
        "a finished folder ends the daemon cleanly\n{}",
        daemon.log_text()
    );

    let result_topic = format!("{}/result", st.root);
    assert!(sub.wait_for(Duration::from_secs(5), |m| m
        .iter()
        .filter(|m| m.topic == result_topic)
        .count()
        >= 6));
    let results: Vec<serde_json::Value> = sub.on(&result_topic).iter().map(Msg::json).collect();
    assert_eq!(results.len(), stems.len(), "one result per frame");
    let seqs: Vec<u64> = results.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6], "in capture order");

    let classified = classify_json(&files_in(images.path()));
    for (r, c) in results.iter().zip(&classified) {
        assert_eq!(r["v"], 1);
        assert_eq!(r["ok"], c["ok"], "{r} vs {c}");
        let classes = |v: &serde_json::Value| -> Vec<(String, Vec<u64>)> {
            v["defects"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| {
                    (
                        d["class"].as_str().unwrap().to_string(),
                        serde_json::from_value(d["bbox"].clone()).unwrap(),
                    )
                })
                .collect()
        };
        assert_eq!(
            classes(r),
            classes(c),
            "same defects and boxes as `inspectd classify`"
        );
        for (dr, dc) in r["defects"]
            .as_array()
            .unwrap()
            .iter()
            .zip(c["defects"].as_array().unwrap())
        {
            assert!((dr["score"].as_f64().unwrap() - dc["score"].as_f64().unwrap()).abs() < 1e-3);
        }
        assert!(r["model"].as_str().unwrap().starts_with("neu-det-"));
        assert!(r["latency_ms"].as_f64().unwrap() > 0.0);
    }
    // The model at work, not a stub: each image's class is the one the model ranks first,
    // and the daemon reports the defect of the four well-found classes.
    for (i, ((r, c), stem)) in results.iter().zip(&classified).zip(&stems).enumerate() {
        let class = stem.rsplit_once('_').unwrap().0;
        assert_eq!(c["top_class"], class, "{stem}: {c}");
        let found = r["defects"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["class"] == class);
        assert!(found || i >= 4, "{stem}: {r}");
    }
    let ok_topic = format!("{}/result/ok", st.root);
    // The retained `result/ok` says what the last frame's result said.
    let last_ok = if results.last().unwrap()["ok"] == true {
        "1"
    } else {
        "0"
    };
    let oks = sub.on(&ok_topic);
    assert_eq!(oks.len(), 6);
    assert_eq!(oks.last().unwrap().payload, last_ok);
    assert_eq!(
        oks[0].payload, "0",
        "the first frame (scratches) had a defect"
    );
}

#[test]
fn alarms_raise_and_clear_exactly_when_n_of_m_says() {
    let broker = Mosquitto::start();
    // Scratches for four frames, then patches for six: scratches must raise, then clear;
    // patches must raise. (Frames the model is known to find each in.)
    let s = stems_with("scratches", "patches", 2);
    let p = stems_with("patches", "scratches", 3);
    let stems = [
        &s[0], &s[1], &s[0], &s[1], &p[0], &p[1], &p[2], &p[0], &p[1], &p[2],
    ];
    let stems: Vec<&str> = stems.iter().map(|s| s.as_str()).collect();
    let images = image_folder(&stems);
    let (window, raise, clear) = (4usize, 3usize, 1usize);
    let st = station(
        images.path(),
        broker.port,
        false,
        0.0,
        (window as u32, raise as u32, clear as u32, false),
        "",
    );
    let sub = Subscriber::start(broker.port, &format!("{}/#", st.root), false);
    let mut daemon = Daemon::start(&st.config);
    assert_eq!(daemon.wait(LONG), Some(0), "{}", daemon.log_text());

    let classified = classify_json(&files_in(images.path()));
    let alarm_topic = format!("{}/alarm", st.root);
    for class in ["scratches", "patches"] {
        let present: Vec<bool> = classified
            .iter()
            .map(|c| {
                c["defects"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|d| d["class"] == class)
            })
            .collect();
        let want = expected_alarms(&present, window, raise, clear);
        assert!(
            !want.is_empty(),
            "{class}: the crafted sequence should raise it: {present:?}"
        );
        assert!(
            sub.wait_for(Duration::from_secs(5), |m| m
                .iter()
                .filter(|m| m.topic == alarm_topic
                    && m.payload.contains(&format!("\"class\":\"{class}\"")))
                .count()
                >= want.len()),
            "{class}: waiting for {want:?}"
        );
        let got: Vec<(usize, String)> = sub
            .on(&alarm_topic)
            .iter()
            .map(Msg::json)
            .filter(|a| a["class"] == class)
            .map(|a| {
                (
                    a["seq"].as_u64().unwrap() as usize,
                    a["event"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let want: Vec<(usize, String)> =
            want.into_iter().map(|(s, e)| (s, e.to_string())).collect();
        assert_eq!(got, want, "{class}: frames present {present:?}");
    }
    // scratches: raised at the third frame, cleared once at most one of the last four has it.
    let scratches: Vec<serde_json::Value> = sub
        .on(&alarm_topic)
        .iter()
        .map(Msg::json)
        .filter(|a| a["class"] == "scratches")
        .collect();
    assert_eq!(
        (scratches[0]["event"].as_str(), scratches[0]["seq"].as_u64()),
        (Some("raised"), Some(3))
    );
    assert_eq!(scratches[0]["frames"], 3);
    assert_eq!(scratches[0]["window"], 4);
    // Ids are unique and increasing.
    let ids: Vec<u64> = sub
        .on(&alarm_topic)
        .iter()
        .map(|m| m.json()["id"].as_u64().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

    // A subscriber that comes late still learns the state from retained messages.
    let late = Subscriber::start(broker.port, &format!("{}/#", st.root), false);
    assert!(late.wait_for(Duration::from_secs(5), |m| m
        .iter()
        .any(|m| m.topic.ends_with("/status"))));
    let status = late.on(&format!("{}/status", st.root));
    assert_eq!(
        (status[0].payload.as_str(), status[0].retain),
        ("offline", true)
    );
    let patches_active = late.on(&format!("{}/alarm/patches/active", st.root));
    assert_eq!(
        patches_active
            .last()
            .map(|m| (m.payload.as_str(), m.retain)),
        Some(("1", true))
    );
    let any_active = late.on(&format!("{}/alarm/active", st.root));
    assert_eq!(any_active.last().map(|m| m.payload.as_str()), Some("1"));
}

#[test]
fn sigterm_sends_status_offline_and_exits_zero_within_five_seconds() {
    let broker = Mosquitto::start();
    let images = image_folder(&["crazing_1", "patches_12", "scratches_13"]);
    let st = station(images.path(), broker.port, true, 20.0, (5, 3, 1, false), "");
    let sub = Subscriber::start(broker.port, &format!("{}/#", st.root), false);
    let mut daemon = Daemon::start(&st.config);
    let status = format!("{}/status", st.root);
    let result = format!("{}/result", st.root);
    assert!(sub.wait_for(LONG, |m| m
        .iter()
        .any(|m| m.topic == status && m.payload == "online")));
    assert!(
        sub.wait_for(LONG, |m| m.iter().filter(|m| m.topic == result).count()
            >= 5)
    );
    let t = Instant::now();
    daemon.signal(libc::SIGTERM);
    assert_eq!(
        daemon.wait(Duration::from_secs(5)),
        Some(0),
        "{}",
        daemon.log_text()
    );
    eprintln!("SIGTERM to exit: {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
    assert!(sub.wait_for(Duration::from_secs(2), |m| m
        .iter()
        .any(|m| m.topic == status && m.payload == "offline")));
    // Every frame captured was published: the stats at exit count them.
    let stats: Vec<serde_json::Value> = sub
        .on(&format!("{}/stats", st.root))
        .iter()
        .map(Msg::json)
        .collect();
    let last = stats.last().expect("stats were published");
    assert_eq!(last["frames"], last["published"], "{last}");
    assert_eq!(last["frames"].as_u64(), Some(sub.on(&result).len() as u64));
}

#[test]
fn sigkill_leaves_the_last_will_offline() {
    let broker = Mosquitto::start();
    let images = image_folder(&["crazing_1", "patches_12"]);
    let st = station(images.path(), broker.port, true, 5.0, (5, 3, 1, false), "");
    let sub = Subscriber::start(broker.port, &format!("{}/status", st.root), false);
    let mut daemon = Daemon::start(&st.config);
    assert!(sub.wait_for(LONG, |m| m.iter().any(|m| m.payload == "online")));
    daemon.signal(libc::SIGKILL);
    daemon.wait(Duration::from_secs(5));
    assert!(sub.wait_for(Duration::from_secs(10), |m| m
        .last()
        .is_some_and(|m| m.payload == "offline")));
    // And it is retained: a newcomer sees offline.
    let late = Subscriber::start(broker.port, &format!("{}/status", st.root), false);
    assert!(late.wait_for(Duration::from_secs(5), |m| m
        .iter()
        .any(|m| m.payload == "offline" && m.retain)));
}

#[test]
fn a_corrupt_file_is_skipped_and_counted_while_the_rest_flows() {
    let broker = Mosquitto::start();
    let images = image_folder(&["crazing_1", "patches_12", "scratches_13"]);
    std::fs::write(
        images.path().join("0001_broken.png"),
        b"\x89PNG\r\n\x1a\nthis is not an image",
    )
    .unwrap();
    let st = station(images.path(), broker.port, false, 0.0, (5, 3, 1, false), "");
    let sub = Subscriber::start(broker.port, &format!("{}/#", st.root), false);
    let mut daemon = Daemon::start(&st.config);
    assert_eq!(daemon.wait(LONG), Some(0), "{}", daemon.log_text());
    let result = format!("{}/result", st.root);
    assert!(sub.wait_for(Duration::from_secs(5), |m| m
        .iter()
        .filter(|m| m.topic == result)
        .count()
        >= 3));
    assert_eq!(sub.on(&result).len(), 3);
    let stats = sub.on(&format!("{}/stats", st.root));
    assert_eq!(stats.last().unwrap().json()["corrupt_files"], 1);
    assert!(
        daemon.log_text().contains("0001_broken.png"),
        "the log names the file"
    );
}

#[test]
fn the_embedded_broker_serves_a_subscriber() {
    let port = free_port();
    let images = image_folder(&["crazing_1", "patches_12"]);
    let st = station(
        images.path(),
        port,
        true,
        10.0,
        (5, 3, 1, false),
        &format!("[mqtt]\nmode = \"embedded\"\nhost = \"127.0.0.1\"\nport = {port}\nstats_interval_s = 1.0\n"),
    );
    let mut daemon = Daemon::start(&st.config);
    assert!(
        wait_until(LONG, || std::net::TcpStream::connect(("127.0.0.1", port))
            .is_ok()),
        "{}",
        daemon.log_text()
    );
    let sub = Subscriber::start(port, &format!("{}/#", st.root), false);
    let result = format!("{}/result", st.root);
    assert!(
        sub.wait_for(LONG, |m| m.iter().filter(|m| m.topic == result).count()
            >= 3),
        "{}",
        daemon.log_text()
    );
    // The embedded broker keeps retained messages: a newcomer learns the status.
    let late = Subscriber::start(port, &format!("{}/status", st.root), false);
    assert!(late.wait_for(Duration::from_secs(5), |m| m
        .iter()
        .any(|m| m.payload == "online" && m.retain)));
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait(Duration::from_secs(5)), Some(0));
}

#[test]
fn a_bad_config_is_refused_with_every_problem_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        format!(
            "[station]\nsite = \"a\"\nline = \"b\"\nstation = \"c\"\n[capture]\nsource = \"dir\"\npath = \"/nonexistent\"\n\
             [model]\npath = \"{}\"\n[mqtt]\nport = 70000\nprot = 1\n",
            repo().join("models/neu_det.onnx").display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .arg("check-config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mqtt") && err.contains("prot"), "{err}");
    // With the typo fixed, the values are checked, each named.
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("prot = 1\n", ""),
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .arg("check-config")
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("mqtt.port: 70000 is not a port (1-65535)"),
        "{err}"
    );
    assert!(
        err.contains("capture.path: /nonexistent is not a folder"),
        "{err}"
    );
    // The shipped configs are valid.
    for shipped in ["config/inspectd.toml", "config/demo.toml"] {
        // The production file names the model where the .deb installs it.
        let out = std::process::Command::new(bin())
            .arg("check-config")
            .arg(repo().join(shipped))
            .env("INSPECTD__MODEL__PATH", repo().join("models/neu_det.onnx"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{shipped}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn readme_checkout_paths_work_as_written() {
    // From the checkout's root, as README says: a relative path given in the environment
    // is relative to the working directory, not to the config file's folder.
    let out = std::process::Command::new(bin())
        .current_dir(repo())
        .args(["check-config", "config/inspectd.toml"])
        .env("INSPECTD__MODEL__PATH", "models/neu_det.onnx")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `classify` without --model, from the checkout: finds models/neu_det.onnx.
    let out = std::process::Command::new(bin())
        .current_dir(repo())
        .args(["classify", "models/samples/scratches_13.png"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("scratches"));
    // Outside a checkout: the installed model, or a message naming the option to give.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin())
        .current_dir(elsewhere.path())
        .arg("classify")
        .arg(repo().join("models/samples/scratches_13.png"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if std::path::Path::new(inspectd::cli::inspect::DEFAULT_MODELS[1]).is_file() {
        assert!(out.status.success(), "the installed model is found: {err}");
    } else {
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("give --model FILE.onnx or --config FILE"),
            "{err}"
        );
    }
}

/// Runs `inspectd classify --model MODEL IMAGE`, expects exit 1, returns stderr.
fn refused_model(model: &std::path::Path, image: &std::path::Path) -> String {
    let out = std::process::Command::new(bin())
        .args(["classify", "--model"])
        .arg(model)
        .arg(image)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_missing_model_is_a_startup_error_naming_the_file() {
    let images = image_folder(&["crazing_1"]);
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("broken.onnx");
    std::fs::write(&fake, b"not onnx").unwrap();
    std::fs::copy(
        repo().join("models/neu_det.json"),
        dir.path().join("broken.json"),
    )
    .unwrap();
    let image = images.path().join("0000_crazing_1.png");
    let err = refused_model(&fake, &image);
    assert!(
        err.contains("broken.onnx") && err.contains("not a readable ONNX model"),
        "{err}"
    );
    // A model whose metadata names more labels than it outputs.
    let real = dir.path().join("real.onnx");
    std::fs::copy(repo().join("models/neu_det.onnx"), &real).unwrap();
    let mut meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("models/neu_det.json")).unwrap())
            .unwrap();
    meta["labels"].as_array_mut().unwrap().push("extra".into());
    std::fs::write(dir.path().join("real.json"), meta.to_string()).unwrap();
    let err = refused_model(&real, &image);
    assert!(
        err.contains("real.onnx") && err.contains("7 labels"),
        "{err}"
    );
}

#[test]
fn a_replay_as_fast_as_possible_inspects_every_file_in_order() {
    replay_300(1);
}

#[test]
fn two_classify_workers_publish_every_frame_in_order() {
    replay_300(2);
}

fn replay_300(workers: usize) {
    let broker = Mosquitto::start();
    // 300 real NEU images, fps 0 (as fast as the pipeline takes them), no loop.
    let mut stems: Vec<String> = std::fs::read_dir(neu().join("IMAGES"))
        .unwrap()
        .map(|e| {
            e.unwrap()
                .path()
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    stems.sort();
    stems.truncate(300);
    let images = image_folder(&stems.iter().map(String::as_str).collect::<Vec<_>>());
    let st = station(images.path(), broker.port, false, 0.0, (5, 3, 1, false), "");
    let text = std::fs::read_to_string(&st.config).unwrap();
    std::fs::write(
        &st.config,
        text.replace("[model]\n", &format!("[model]\nworkers = {workers}\n")),
    )
    .unwrap();
    let result_topic = format!("{}/result", st.root);
    let sub = Subscriber::start(broker.port, &result_topic, false);
    let mut daemon = Daemon::start(&st.config);
    assert_eq!(daemon.wait(LONG), Some(0), "{}", daemon.log_text());
    assert!(
        daemon
            .log_text()
            .contains(&format!("\"classify_workers\":{workers}")),
        "{}",
        daemon.log_text()
    );
    assert!(
        sub.wait_for(Duration::from_secs(10), |m| m.len() >= 300),
        "{} results",
        sub.messages().len()
    );
    let seqs: Vec<u64> = sub
        .messages()
        .iter()
        .map(|m| m.json()["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (1..=300).collect::<Vec<u64>>(),
        "every file, in order"
    );
    assert!(
        !daemon.log_text().contains("dropped the oldest"),
        "{}",
        daemon.log_text()
    );
}

#[test]
fn with_the_first_look_every_frame_is_published_in_order_and_clean_strip_is_skipped() {
    let broker = Mosquitto::start();
    // Camera-sized frames: defect-free surface assembled from the box-free area of
    // held-out NEU images, and the worst case (every 200 x 200 block a defect) between.
    let repo = repo();
    let val =
        inspectd::cli::eval::read_holdout(&repo.join("models/neu_det.split.json"), "val").unwrap();
    let samples = inspectd::cli::eval::list_samples(&neu(), Some(&val)).unwrap();
    let crops = inspectd::cli::eval::box_free_crops(&samples, 96).unwrap();
    let clean = inspectd::cli::clean::clean_frames(&crops, 6, (1280, 1024));
    let images = tempfile::tempdir().unwrap();
    let worst = repo.join("../shared/datasets/frames/line_1280x1024.png");
    for (i, (_, px)) in clean.iter().enumerate() {
        image::GrayImage::from_raw(1280, 1024, px.clone())
            .unwrap()
            .save(images.path().join(format!("{:02}.png", 2 * i)))
            .unwrap();
        std::fs::copy(&worst, images.path().join(format!("{:02}.png", 2 * i + 1))).unwrap();
    }
    let st = station(images.path(), broker.port, false, 0.0, (5, 3, 1, false), "");
    // The shipped config's first look: on, at its threshold.
    let shipped = shipped_settings().model.first_look;
    assert!(
        shipped.enabled,
        "config/inspectd.toml turns the first look on"
    );
    let text = std::fs::read_to_string(&st.config).unwrap();
    std::fs::write(
        &st.config,
        text.replace(
            "[model]\n",
            &format!(
                "[model]\nworkers = 2\nfirst_look = {{ enabled = true, threshold = {} }}\n",
                shipped.threshold
            ),
        ),
    )
    .unwrap();
    let sub = Subscriber::start(broker.port, &format!("{}/#", st.root), false);
    let mut daemon = Daemon::start(&st.config);
    assert_eq!(daemon.wait(LONG), Some(0), "{}", daemon.log_text());
    let result_topic = format!("{}/result", st.root);
    assert!(sub.wait_for(Duration::from_secs(10), |m| m
        .iter()
        .filter(|m| m.topic == result_topic)
        .count()
        >= 12));
    let results: Vec<serde_json::Value> = sub.on(&result_topic).iter().map(Msg::json).collect();
    let seqs: Vec<u64> = results.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=12).collect::<Vec<u64>>(),
        "every frame, in order"
    );
    for r in results.iter().skip(1).step_by(2) {
        assert!(
            !r["defects"].as_array().unwrap().is_empty(),
            "the worst-case frame is not passed: {r}"
        );
    }
    // The last stats message: the detector ran on part of the pixels only, and the first
    // look's time is reported.
    let stats = sub.on(&format!("{}/stats", st.root));
    let last = stats.last().expect("stats published").json();
    let share = last["detector_share"].as_f64().unwrap();
    assert!(share > 0.0 && share < 1.0, "{last}");
    assert!(
        last["latency"]["first_look"]["n"].as_u64().is_some(),
        "{last}"
    );
}
