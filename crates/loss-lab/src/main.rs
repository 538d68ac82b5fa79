//! `losslab`: config-driven experiments with the balancing losses, and array-level checks.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use loss_core::{DeviceSpec, MultiLabelConfig};
use loss_lab::experiment::{self, Experiment, Prepared, RunResult};
use loss_lab::sweep::Sweep;
use loss_lab::{loss_cmd, report, LabError, Result};
use loss_tch::resolve_device;

#[derive(Parser)]
#[command(
    name = "losslab",
    version,
    about = "Losses for imbalanced labels: experiments and checks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train and evaluate one experiment; prints the result table and writes metrics.json.
    Train {
        /// The experiment file.
        experiment: PathBuf,
        /// cpu, cuda, cuda:N or auto (overrides [train] device).
        #[arg(long, value_parser = parse_device)]
        device: Option<DeviceSpec>,
        /// Output directory (metrics.json, per-label plot).
        #[arg(long, default_value = "runs/train")]
        out: PathBuf,
        /// Data location (overrides [data] path).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Training seed (overrides [train] seed).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Run several [loss] variants over one experiment; prints one table like the paper's.
    Sweep {
        /// The sweep file.
        sweep: PathBuf,
        /// cpu, cuda, cuda:N or auto (overrides [train] device).
        #[arg(long, value_parser = parse_device)]
        device: Option<DeviceSpec>,
        /// Output directory (results.md, results.csv).
        #[arg(long, default_value = "runs/sweep")]
        out: PathBuf,
        /// Data location (overrides [data] path).
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Print class_freq and train_num of an experiment's training data as a [loss] snippet.
    Stats {
        /// The experiment file.
        experiment: PathBuf,
        /// Data location (overrides [data] path).
        #[arg(long)]
        data: Option<PathBuf>,
    },
    /// Compute one loss on .npy arrays; optionally write its gradient.
    Loss {
        /// A file holding a [loss] table.
        #[arg(long)]
        config: PathBuf,
        /// NAME=FILE.npy (logits, targets, weight; or preds, gt_shrink, gt_shrink_mask, gt_thr,
        /// gt_thr_mask).
        #[arg(long = "input", value_parser = loss_cmd::parse_input)]
        inputs: Vec<(String, PathBuf)>,
        /// cpu, cuda, cuda:N or auto.
        #[arg(long, default_value = "cpu", value_parser = parse_device)]
        device: DeviceSpec,
        /// Directory for the gradient (logits.npy or preds.npy).
        #[arg(long)]
        grad_out: Option<PathBuf>,
        /// Print one JSON object, `{"loss": x, "terms": {...}}`. Under `reduction = "none"` the
        /// loss reported (and differentiated by --grad-out) is the sum of the elementwise loss.
        #[arg(long)]
        json: bool,
    },
}

/// Keeps freed memory in the process instead of returning it to the kernel.
///
/// Training allocates and frees gradient buffers of tens of MB at every step; with glibc's
/// defaults each one is a fresh `mmap` whose pages fault in again, which measured as 40% of a
/// Reuters run. Raising both thresholds makes the buffers reuse the same pages.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning parameters; called before any threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

fn parse_device(s: &str) -> std::result::Result<DeviceSpec, String> {
    s.parse().map_err(|_| format!("expected cpu, cuda, cuda:N or auto, got `{s}`"))
}

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line: clap's first, without the usage block that follows it.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or("").trim_start_matches("error: ");
            eprintln!("losslab: error: {first} (see losslab --help)");
            return ExitCode::from(2);
        }
    };
    let quiet = matches!(cli.command, Command::Loss { .. });
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(
            |_| {
                if quiet {
                    "warn".into()
                } else {
                    "info".into()
                }
            },
        ))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("losslab: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> Result<()> {
    match command {
        Command::Train { experiment, device, out, data, seed } => {
            train(&experiment, device, &out, data.as_deref(), seed)
        }
        Command::Sweep { sweep, device, out, data } => {
            run_sweep(&sweep, device, &out, data.as_deref())
        }
        Command::Stats { experiment, data } => stats(&experiment, data.as_deref()),
        Command::Loss { config, inputs, device, grad_out, json } => {
            let r = loss_cmd::run(&config, &inputs, device, grad_out.as_deref())?;
            if json {
                let s = serde_json::to_string(&r).map_err(|e| LabError::Torch(e.to_string()))?;
                println!("{s}");
            } else {
                println!("loss = {}", r.loss);
                for (name, v) in &r.terms {
                    println!("  {name} = {v}");
                }
            }
            Ok(())
        }
    }
}

fn progress(epochs: usize, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(epochs as u64);
    let style =
        ProgressStyle::with_template("{prefix:>12} [{bar:30}] epoch {pos}/{len} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(label.to_string());
    bar
}

fn train_one(
    prepared: &Prepared,
    exp: &Experiment,
    loss: &MultiLabelConfig,
    label: &str,
) -> Result<RunResult> {
    let device = resolve_device(exp.train.device)?;
    let bar = progress(exp.train.epochs, label);
    let result = experiment::run(prepared, exp, loss, device, &mut |_, l| {
        bar.set_message(format!("loss {l:.5}"));
        bar.inc(1);
    });
    bar.finish_and_clear();
    result
}

fn train(
    path: &Path,
    device: Option<DeviceSpec>,
    out: &Path,
    data: Option<&Path>,
    seed: Option<u64>,
) -> Result<()> {
    let start = Instant::now();
    let mut exp = Experiment::from_file(path)?;
    if let Some(d) = device {
        exp.train.device = d;
    }
    if let Some(s) = seed {
        exp.train.seed = s;
    }
    resolve_device(exp.train.device)?;
    report::prepare_out_dir(out)?;
    let prepared = Prepared::new(&exp, data)?;
    tracing::info!(seconds = format!("{:.2}", prepared.seconds), "data and features ready");
    let loss = exp.multilabel_loss()?.clone();
    let mut result = train_one(&prepared, &exp, &loss, "training")?;
    result.seconds = start.elapsed().as_secs_f64();

    let rows = vec![
        ("test".to_string(), report::row(&result.test)),
        ("validation".to_string(), report::row(&result.val)),
    ];
    println!("{}", report::markdown("split", &rows));
    println!(
        "threshold {:.2} (tuned on validation), {:.1} s in all",
        result.threshold, result.seconds
    );
    report::write(&out.join("metrics.json"), &report::metrics_json(&result)?)?;
    let title = format!("per-label test F1: {}", path.display());
    report::plot_per_label(
        &out.join("per_label_f1.svg"),
        &prepared.stats.class_freq,
        &result.per_label_test_f1,
        &title,
    )?;
    tracing::info!(out = %out.display(), "wrote metrics.json and per_label_f1.svg");
    Ok(())
}

fn run_sweep(
    path: &Path,
    device: Option<DeviceSpec>,
    out: &Path,
    data: Option<&Path>,
) -> Result<()> {
    let start = Instant::now();
    let sweep = Sweep::from_file(path)?;
    let mut exp = sweep.experiment()?;
    if let Some(d) = device {
        exp.train.device = d;
    }
    resolve_device(exp.train.device)?;
    for variant in &sweep.variants {
        if let loss_core::LossConfig::Multilabel(m) = &variant.loss {
            exp.loss = loss_core::LossConfig::Multilabel(m.clone());
            exp.validate().map_err(|e| LabError::InvalidConfig {
                what: "variant.loss",
                reason: format!("variant `{}`: {e}", variant.name),
            })?;
        }
    }
    report::prepare_out_dir(out)?;
    let prepared = Prepared::new(&exp, data)?;
    let mut rows = Vec::new();
    let total = sweep.variants.len() * sweep.seeds.len();
    let mut done = 0;
    for variant in &sweep.variants {
        let loss = match &variant.loss {
            loss_core::LossConfig::Multilabel(m) => m.clone(),
            loss_core::LossConfig::Dbnet(_) => {
                return Err(LabError::InvalidConfig {
                    what: "variant.loss.type",
                    reason: format!("variant `{}`: text sweeps need multilabel", variant.name),
                })
            }
        };
        let mut sum = [0.0; 8];
        for &seed in &sweep.seeds {
            exp.train.seed = seed;
            done += 1;
            let label = format!("{done}/{total}");
            let r = train_one(&prepared, &exp, &loss, &label)?;
            let v = report::row(&r.test);
            tracing::info!(
                variant = %variant.name,
                seed,
                micro = format!("{:.4}", v[0]),
                macro_ = format!("{:.4}", v[1]),
                seconds = format!("{:.1}", r.seconds),
                "run finished"
            );
            for (s, x) in sum.iter_mut().zip(v) {
                *s += x;
            }
        }
        let n = sweep.seeds.len() as f64;
        rows.push((variant.name.clone(), sum.map(|s| s / n)));
    }
    let md = report::markdown("loss", &rows);
    println!("{md}");
    println!(
        "test F1 in percent, mean of seeds {:?}; {:.1} s in all",
        sweep.seeds,
        start.elapsed().as_secs_f64()
    );
    report::write(&out.join("results.md"), &md)?;
    report::write(&out.join("results.csv"), &report::csv("loss", &rows))?;
    tracing::info!(out = %out.display(), "wrote results.md and results.csv");
    Ok(())
}

fn stats(path: &Path, data: Option<&Path>) -> Result<()> {
    let exp = Experiment::from_file(path)?;
    let ds = exp.load_dataset(data)?;
    let s = loss_lab::data::LabelStats::from_docs(&ds.train, ds.n_labels())?;
    let freq: Vec<String> = s.class_freq.iter().map(|f| format!("{f}")).collect();
    println!("# labels, in class_freq order: {}", ds.label_names.join(", "));
    println!("[loss]");
    println!("class_freq = [{}]", freq.join(", "));
    println!("train_num = {}", s.train_num);
    Ok(())
}
