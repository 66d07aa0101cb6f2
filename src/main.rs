//! The command line: parses arguments and calls into the library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use inspectd::cli::inspect::Inspector;
use inspectd::config::{DecideConfig, ModelConfig, PreprocessConfig, Settings};

/// Edge daemon for unattended visual inspection of steel surfaces.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon in the foreground (systemd runs this).
    Run {
        /// The TOML config file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file: print every problem, exit 1 if there is any.
    CheckConfig {
        /// The TOML config file.
        file: PathBuf,
    },
    /// Classify images: one verdict per image, through the daemon's own stages.
    Classify {
        /// Image files (PNG, JPEG, BMP).
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// Take the model, preprocess and thresholds from this config.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The ONNX model; with --config it replaces the config's model.path. Default:
        /// the config's, else models/neu_det.onnx under the working directory (a
        /// checkout), else the installed /usr/share/inspectd/models/neu_det.onnx.
        #[arg(long)]
        model: Option<PathBuf>,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Accuracy report on a labelled Pascal VOC folder.
    Eval {
        /// Folder with IMAGES/ + ANNOTATIONS/ (or JPEGImages/ + Annotations/).
        #[arg(long)]
        dataset: PathBuf,
        /// Only these images: a split file with a "val" list, or one stem per line.
        #[arg(long)]
        holdout: Option<PathBuf>,
        /// Take the model, preprocess and thresholds from this config.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The ONNX model; with --config it replaces the config's model.path. Default:
        /// the config's, else models/neu_det.onnx under the working directory (a
        /// checkout), else the installed /usr/share/inspectd/models/neu_det.onnx.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Also write the report as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Print, per class, the lowest threshold whose precision (IoU 0.5) reaches this
        /// share (0 to 1), as a [decide] block to paste into the config.
        #[arg(long, value_parser = parse_share)]
        target_precision: Option<f64>,
        /// Print, per class, the box and area thresholds at which at most this share (0
        /// to 1) of the class's images lose every defect of the class, flagging the fewest
        /// clean crops and frames, as a [decide] block to paste.
        #[arg(long, value_parser = parse_share)]
        max_escape: Option<f64>,
        /// With --max-escape: the budget also holds with each image laid into a clean
        /// frame (a defect as a small part of a frame of clean strip), not only on the
        /// images themselves.
        #[arg(long, requires = "max_escape")]
        max_escape_laid: bool,
        /// With --max-escape: box thresholds stay where --target-precision (or the
        /// config) puts them; only the area thresholds hold the budget.
        #[arg(long, requires = "max_escape")]
        areas_only: bool,
        /// Which list of a JSON split file --holdout takes: "val" (held out) or "train".
        #[arg(long, default_value = "val")]
        list: String,
        /// A folder of defect-free images (frames recorded when nothing was wrong), scored
        /// for false alarms.
        #[arg(long)]
        clean: Option<PathBuf>,
        /// Side in pixels of the defect-free crops cut from the box-free area of the
        /// labelled images (0: none).
        #[arg(long, default_value_t = 96)]
        crop: u32,
        /// Camera-sized defect-free frames (1280 x 1024) assembled from those crops.
        #[arg(long, default_value_t = 12)]
        clean_frames: usize,
        /// The first look (model.first_look): "config" as the config says, "on", "off",
        /// or "both": the whole evaluation without it and with it, side by side.
        #[arg(long, default_value = "config", value_parser = ["config", "on", "off", "both"])]
        first_look: String,
    },
    /// Print a finished coil's report ([strip]): summary, block reasons, periodic
    /// defects, every defect in MD order.
    Report {
        /// The coil id (as published on cmd/coil).
        coil: String,
        /// The daemon's config file (for state.dir).
        #[arg(long, short)]
        config: PathBuf,
        /// Print the report's JSON as it is stored.
        #[arg(long, conflicts_with = "csv")]
        json: bool,
        /// Print the report's CSV as it is stored.
        #[arg(long)]
        csv: bool,
    },
    /// Subscribe to a station's topics and print them readably.
    Watch {
        /// The daemon's config file (broker and topic root).
        #[arg(long, short)]
        config: PathBuf,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<usize>,
        /// Stop after this many seconds.
        #[arg(long)]
        timeout: Option<f64>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Run { config } => run(&config),
        Cmd::CheckConfig { file } => match Settings::load(&file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        },
        Cmd::Classify {
            images,
            config,
            model,
            json,
        } => classify(&images, config.as_deref(), model, json),
        Cmd::Eval {
            dataset,
            holdout,
            config,
            model,
            json,
            target_precision,
            max_escape,
            max_escape_laid,
            areas_only,
            list,
            clean,
            crop,
            clean_frames,
            first_look,
        } => {
            let opts = inspectd::cli::eval::EvalOptions {
                target_precision,
                max_escape,
                crop_side: crop,
                clean_frames,
                frame_size: (1280, 1024),
                clean_dir: clean,
                max_escape_laid,
                areas_only,
            };
            eval(
                &dataset,
                holdout.as_deref().map(|h| (h, list.as_str())),
                (config.as_deref(), model),
                json.as_deref(),
                &opts,
                &first_look,
            )
        }
        Cmd::Report {
            coil,
            config,
            json,
            csv,
        } => report(&coil, &config, json, csv),
        Cmd::Watch {
            config,
            count,
            timeout,
        } => {
            let s = match Settings::load(&config) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(1);
                }
            };
            let host = if s.mqtt.host == "0.0.0.0" {
                "127.0.0.1".to_string()
            } else {
                s.mqtt.host.clone()
            };
            let timeout = timeout.map(Duration::from_secs_f64);
            match inspectd::cli::watch::watch(
                &host,
                s.mqtt.port as u16,
                &s.topic_root(),
                count,
                timeout,
            ) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn report(coil: &str, config: &Path, json: bool, csv: bool) -> ExitCode {
    use inspectd::stages::decide::coil;
    let s = match Settings::load(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    // A coil inspected across a restart has a report per part, printed in order.
    match coil::read(&s.state.dir, coil) {
        Ok(parts) => {
            for (k, r) in parts.iter().enumerate() {
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(r).expect("a report serialises")
                    );
                } else if csv {
                    print!("{}", coil::csv(r));
                } else {
                    if k > 0 {
                        println!("\n(part {} of the coil, after a restart)", k + 1);
                    }
                    print!("{}", coil::render(r));
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(config: &Path) -> ExitCode {
    let settings = match Settings::load(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    if let Err(e) = inspectd::telemetry::init_logging(&settings.log.level, settings.log.format) {
        eprintln!("error: cannot start logging: {e:#}");
        return ExitCode::from(1);
    }
    match inspectd::daemon::run(config, settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "inspectd cannot start.");
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The stages' configs: from a config file, or defaults around a model path.
fn stage_configs(
    config: Option<&Path>,
    model: Option<PathBuf>,
) -> Result<(PreprocessConfig, ModelConfig, DecideConfig), String> {
    match config {
        Some(c) => {
            // --model beside --config replaces the config's model.path, as
            // INSPECTD__MODEL__PATH would (a checkout's models/ with the shipped config).
            let mut env: Vec<(String, String)> = std::env::vars().collect();
            if let Some(m) = model {
                env.push(("INSPECTD__MODEL__PATH".into(), m.display().to_string()));
            }
            let s = Settings::load_with_env(c, env).map_err(|e| e.to_string())?;
            Ok((s.preprocess, s.model, s.decide))
        }
        None => Ok((
            PreprocessConfig::default(),
            ModelConfig::with_path(match model {
                Some(m) => m,
                None => inspectd::cli::inspect::default_model()?,
            }),
            DecideConfig::default(),
        )),
    }
}

fn inspector(config: Option<&Path>, model: Option<PathBuf>) -> Result<Inspector, ExitCode> {
    inspector_with(config, model, None)
}

/// The inspector of `config` (or of `model` alone), with the first look turned on or off
/// when `look` says.
fn inspector_with(
    config: Option<&Path>,
    model: Option<PathBuf>,
    look: Option<bool>,
) -> Result<Inspector, ExitCode> {
    let (pre, mut model, decide) = stage_configs(config, model).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(1)
    })?;
    if let Some(on) = look {
        model.first_look.enabled = on;
    }
    // Each image is judged on its own, so the first look reads every one: skipping it
    // in a stretch of frames it sends whole is for a camera's stream.
    model.first_look.whole_streak = 0;
    Inspector::new(&pre, &model, &decide).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(1)
    })
}

fn classify(
    images: &[PathBuf],
    config: Option<&Path>,
    model: Option<PathBuf>,
    json: bool,
) -> ExitCode {
    let mut insp = match inspector(config, model) {
        Ok(i) => i,
        Err(code) => return code,
    };
    let labels = insp.labels().to_vec();
    let mut failed = false;
    for path in images {
        match insp.inspect_file(path) {
            Ok(frame) => {
                let top = &labels[inspectd::cli::inspect::top_class(frame)];
                let defects: Vec<serde_json::Value> = frame
                    .verdict
                    .defects
                    .iter()
                    .map(|d| serde_json::json!({"class": labels[d.label], "score": (d.score * 1e4).round() / 1e4, "bbox": d.bbox, "area": d.area()}))
                    .collect();
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"image": path.display().to_string(), "ok": frame.verdict.ok,
                            "top_class": top, "defects": defects})
                    );
                } else if frame.verdict.ok {
                    println!("{}: ok (most likely class {top})", path.display());
                } else {
                    let list: Vec<String> = frame
                        .verdict
                        .defects
                        .iter()
                        .map(|d| format!("{} {:.2} at {:?}", labels[d.label], d.score, d.bbox))
                        .collect();
                    println!("{}: DEFECT {top}: {}", path.display(), list.join("; "));
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn eval(
    dataset: &Path,
    holdout: Option<(&Path, &str)>,
    (config, model): (Option<&Path>, Option<PathBuf>),
    json: Option<&Path>,
    opts: &inspectd::cli::eval::EvalOptions,
    first_look: &str,
) -> ExitCode {
    let only = match holdout
        .map(|(path, list)| inspectd::cli::eval::read_holdout(path, list))
        .transpose()
    {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let samples = match inspectd::cli::eval::list_samples(dataset, only.as_ref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let runs: &[Option<bool>] = match first_look {
        "on" => &[Some(true)],
        "off" => &[Some(false)],
        "both" => &[Some(false), Some(true)],
        _ => &[None],
    };
    let total = samples.len();
    let mut reports = Vec::new();
    for &look in runs {
        let mut insp = match inspector_with(config, model.clone(), look) {
            Ok(i) => i,
            Err(code) => return code,
        };
        let report = inspectd::cli::eval::evaluate(&mut insp, dataset, &samples, opts, |k| {
            if k % 100 == 0 {
                eprintln!("{k}/{total} images");
            }
        });
        match report {
            Ok(r) => reports.push(r),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let value = match &reports[..] {
        [one] => {
            print!("{}", one.table());
            serde_json::to_value(one).expect("report serialises")
        }
        [off, on] => {
            print!(
                "# without the first look\n{}\n# with the first look\n{}",
                off.table(),
                on.table()
            );
            print!("{}", inspectd::cli::eval::first_look_comparison(off, on));
            serde_json::json!({"first_look_off": off, "first_look_on": on})
        }
        _ => unreachable!("one or two runs"),
    };
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&value).expect("report serialises");
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("error: {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}

fn parse_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a share from 0 to 1 (e.g. 0.9)")),
    }
}
