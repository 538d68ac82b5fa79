//! `make bench-compare`: our losses against the PyTorch reference, side by side, in one run on
//! the same machine and thread count.
//!
//! ```text
//! source scripts/env.sh
//! cargo run --release --example bench_compare --features tch,multilabel,dbnet -- \
//!     --python ~/.cache/losslab/pyenv/bin/python [--threads N] [--case NAME]...
//! ```
//!
//! For every case, two fresh processes run it: this binary with `--run-case NAME` (ours, on
//! libtorch tensors) and `benches/compare/reference.py --case NAME` (the reference formulas in
//! PyTorch eager). Both set the same thread count (`tch::set_num_threads` and rayon's pool
//! here, `torch.set_num_threads` there), build bit-identical inputs, and measure the same way:
//!
//! - peak memory: VmRSS once the inputs exist, VmHWM reset to it (`5 > /proc/self/clear_refs`),
//!   one cold forward + backward, then VmHWM − baseline: the extra resident memory the step
//!   needed at its peak (temporaries, saved tensors, the gradient), allocator included;
//! - time: 3 warm-up steps, then the median over repeated steps (about 1.5 s, at least 5) of
//!   forward + backward on a fresh leaf holding the same values;
//! - the loss value and `Σ |∂loss/∂input|` of the last step, to check both computed the same.
//!
//! `--run-case NAME --stages` runs our side of one case alone and adds where its step's time
//! goes: forward on a leaf that needs no gradient, forward on one that does, backward alone.
//!
//! The driver prints a Markdown table `case | ours (ms) | pytorch (ms) | speed-up | …`, then
//! the values of both sides with their relative differences.

use std::error::Error;
use std::process::Command;
use std::time::Instant;

use losslab::core::config::MultiLabelPreset;
use losslab::core::sample::uniforms as uniform;
use losslab::core::MultiLabelConfig;
use losslab::multilabel::{MultiLabelInput, ResampleLoss};
use losslab::tch_backend::tch::{self, Kind, Tensor};
use losslab::tch_backend::TchTensor;
use losslab::Loss;

type AnyResult<T> = Result<T, Box<dyn Error>>;

/// One forward on a fresh leaf (requiring grad when the flag says so); returns the loss and the
/// leaf.
type Step = Box<dyn FnMut(bool) -> AnyResult<(Tensor, Tensor)>>;

/// A named case: builds its inputs and returns its step.
struct Case {
    name: &'static str,
    setup: fn() -> AnyResult<Step>,
}

/// The rows of the table, in order.
const ROWS: [&str; 8] = [
    "bce 256x18211",
    "focal 256x18211",
    "db 32x90",
    "db 256x90",
    "db 32x18211",
    "db 256x18211",
    "dbnet 2x160x160",
    "dbnet 8x640x640",
];

fn cases() -> Vec<Case> {
    #[allow(unused_mut)]
    let mut cases = vec![
        Case {
            name: "bce 256x18211",
            setup: || multilabel_case(MultiLabelPreset::Bce, 256, 18211),
        },
        Case {
            name: "focal 256x18211",
            setup: || multilabel_case(MultiLabelPreset::Focal, 256, 18211),
        },
        Case { name: "db 32x90", setup: || multilabel_case(MultiLabelPreset::Db, 32, 90) },
        Case { name: "db 256x90", setup: || multilabel_case(MultiLabelPreset::Db, 256, 90) },
        Case { name: "db 32x18211", setup: || multilabel_case(MultiLabelPreset::Db, 32, 18211) },
        Case { name: "db 256x18211", setup: || multilabel_case(MultiLabelPreset::Db, 256, 18211) },
    ];
    cases.push(Case { name: "dbnet 2x160x160", setup: || dbnet_case(2, 160, 160) });
    cases.push(Case { name: "dbnet 8x640x640", setup: || dbnet_case(8, 640, 640) });
    cases
}

// ------------------------------------------------------------------------------------------
// Inputs, bit for bit those of benches/compare/reference.py.

/// Class counts falling like a power law (about 1.2 labels per document), and `N_train`.
fn long_tail(classes: usize) -> (Vec<f64>, f64) {
    let train_num: f64 = if classes <= 100 { 7769.0 } else { 100_000.0 };
    let freq = (1..=classes)
        .map(|rank| {
            (0.4 * train_num * (rank as f64).powf(-1.4)).floor().clamp(1.0, train_num - 1.0)
        })
        .collect();
    (freq, train_num)
}

fn tensor_f32(values: &[f64], shape: [i64; 2]) -> AnyResult<Tensor> {
    let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
    Ok(Tensor::f_from_slice(&v)?.f_reshape(shape)?)
}

/// One multi-label preset on f32 logits uniform in `[−6, 6)` and targets drawn with the class
/// priors; the loss is built with its defaults (the fused path).
fn multilabel_case(preset: MultiLabelPreset, n: usize, classes: usize) -> AnyResult<Step> {
    let (freq, train_num) = long_tail(classes);
    let logits: Vec<f64> = uniform(1, n * classes).iter().map(|u| 12.0 * u - 6.0).collect();
    let draws = uniform(2, n * classes);
    let targets: Vec<f64> = draws
        .iter()
        .enumerate()
        .map(|(i, &u)| if u < freq[i % classes] / train_num { 1.0 } else { 0.0 })
        .collect();
    let shape = [n as i64, classes as i64];
    let z = tensor_f32(&logits, shape)?;
    let y = TchTensor::from(tensor_f32(&targets, shape)?);
    let config = MultiLabelConfig {
        preset: Some(preset),
        class_freq: Some(freq),
        train_num: Some(train_num),
        ..MultiLabelConfig::default()
    };
    let loss = ResampleLoss::from_config(&config)?;
    Ok(Box::new(move |track| {
        let leaf = z.f_detach()?.set_requires_grad(track);
        let logits = TchTensor::from(leaf.shallow_clone());
        let out = loss.forward(MultiLabelInput::new(&logits, &y))?;
        Ok((out.loss.into_inner(), leaf))
    }))
}

// ------------------------------------------------------------------------------------------
// One case, in this process.

fn status_kb(key: &str) -> AnyResult<i64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))
        .ok_or_else(|| format!("no {key} in /proc/self/status"))?;
    let kb = line[key.len() + 1..].trim().trim_end_matches("kB").trim().parse::<i64>()?;
    Ok(kb)
}

/// Resets VmHWM to the current RSS; false where the kernel does not allow it.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Forward + backward on a fresh leaf: the step both sides time.
fn full_step(step: &mut Step) -> AnyResult<(Tensor, Tensor)> {
    let (loss, leaf) = step(true)?;
    loss.f_backward()?;
    Ok((loss, leaf))
}

/// The median of `repeats` timings of `f`, in ms.
fn median_ms(repeats: usize, mut f: impl FnMut() -> AnyResult<()>) -> AnyResult<f64> {
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(1e3 * times[times.len() / 2])
}

fn run_case(name: &str, threads: usize, stages: bool) -> AnyResult<()> {
    tch::set_num_threads(threads as i32);
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global()?;
    let case = cases()
        .into_iter()
        .find(|c| c.name == name)
        .ok_or_else(|| format!("unknown case {name:?}"))?;
    let mut step = (case.setup)()?;

    let base = status_kb("VmRSS")?;
    let peak_kb = if reset_peak() {
        let kept = full_step(&mut step)?;
        let peak = status_kb("VmHWM")? - base;
        drop(kept);
        peak
    } else {
        drop(full_step(&mut step)?);
        -1
    };

    for _ in 0..3 {
        drop(full_step(&mut step)?);
    }
    let start = Instant::now();
    drop(full_step(&mut step)?);
    let estimate = start.elapsed().as_secs_f64();
    let repeats = ((1.5 / estimate.max(1e-6)) as usize).clamp(5, 2000);
    let mut last = None;
    let median = median_ms(repeats, || {
        last = Some(full_step(&mut step)?);
        Ok(())
    })?;
    let (loss, leaf) = last.ok_or("no step ran")?;
    let value = loss.f_to_kind(Kind::Double)?.f_double_value(&[])?;
    let grad_l1 = leaf.grad().f_abs()?.f_sum(Kind::Double)?.f_double_value(&[])?;
    println!("RESULT\t{name}\t{median:.6}\t{peak_kb}\t{value:?}\t{grad_l1:?}\t{repeats}");

    if stages {
        // The same step cut in three: forward on a leaf that needs no gradient (the kernel and
        // the scalar), forward on one that does (adds the gradient buffer's use and the graph
        // node), and the backward call alone.
        let untracked = median_ms(repeats, || step(false).map(drop))?;
        let tracked = median_ms(repeats, || step(true).map(drop))?;
        let mut backward_times = Vec::with_capacity(repeats);
        for _ in 0..repeats {
            let (loss, _leaf) = step(true)?;
            let start = Instant::now();
            loss.f_backward()?;
            backward_times.push(start.elapsed().as_secs_f64());
        }
        backward_times.sort_by(f64::total_cmp);
        let backward = 1e3 * backward_times[backward_times.len() / 2];
        println!(
            "STAGES\t{name}\tforward, no grad {untracked:.3} ms\tforward {tracked:.3} ms\t\
             backward {backward:.3} ms\tstep {median:.3} ms"
        );
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// The driver.

/// What one side reported for one case.
#[derive(Debug, Clone, Copy)]
struct Measured {
    ms: f64,
    peak_kb: i64,
    value: f64,
    grad_l1: f64,
}

fn parse_result(stdout: &str) -> Option<Measured> {
    let line = stdout.lines().find(|l| l.starts_with("RESULT\t"))?;
    let f: Vec<&str> = line.split('\t').collect();
    Some(Measured {
        ms: f.get(2)?.parse().ok()?,
        peak_kb: f.get(3)?.parse().ok()?,
        value: f.get(4)?.parse().ok()?,
        grad_l1: f.get(5)?.parse().ok()?,
    })
}

/// Runs one side of one case; `None` (with the reason on stderr) when it did not report.
fn measure(mut command: Command, side: &str, case: &str) -> Option<Measured> {
    match command.output() {
        Ok(out) => {
            let parsed = parse_result(&String::from_utf8_lossy(&out.stdout));
            if parsed.is_none() {
                let err = String::from_utf8_lossy(&out.stderr);
                let last = err.lines().last().unwrap_or("no output");
                eprintln!("{side} did not report {case:?}: {last}");
            }
            parsed
        }
        Err(e) => {
            eprintln!("{side}: cannot run for {case:?}: {e}");
            None
        }
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn ms(m: Option<Measured>) -> String {
    m.map_or("n/a".into(), |m| format!("{:.3}", m.ms))
}

fn mb(m: Option<Measured>) -> String {
    match m {
        Some(m) if m.peak_kb >= 0 => format!("{:.1}", m.peak_kb as f64 / 1024.0),
        _ => "n/a".into(),
    }
}

fn rel_diff(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(f64::MIN_POSITIVE)
}

struct Args {
    python: String,
    script: String,
    threads: usize,
    only: Vec<String>,
    run_case: Option<String>,
    stages: bool,
}

fn parse_args() -> AnyResult<Args> {
    let mut args = Args {
        python: std::env::var("LOSSLAB_PYTHON").unwrap_or_else(|_| "python3".into()),
        script: "benches/compare/reference.py".into(),
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        only: Vec::new(),
        run_case: None,
        stages: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--python" => args.python = value()?,
            "--script" => args.script = value()?,
            "--threads" => args.threads = value()?.parse()?,
            "--case" => args.only.push(value()?),
            "--run-case" => args.run_case = Some(value()?),
            "--stages" => args.stages = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(args)
}

fn main() -> AnyResult<()> {
    let args = parse_args()?;
    if let Some(name) = &args.run_case {
        return run_case(name, args.threads, args.stages);
    }

    let exe = std::env::current_exe()?;
    let threads = args.threads.to_string();
    let rows: Vec<&str> = ROWS
        .iter()
        .copied()
        .filter(|r| args.only.is_empty() || args.only.iter().any(|o| o == r))
        .collect();
    let torch_version = Command::new(&args.python)
        .args(["-c", "import torch; print(torch.__version__)"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();

    let mut results = Vec::new();
    for &case in &rows {
        eprintln!("measuring {case} ...");
        let mut ours = Command::new(&exe);
        ours.args(["--run-case", case, "--threads", &threads]);
        let mut reference = Command::new(&args.python);
        reference.args([args.script.as_str(), "--case", case, "--threads", &threads]);
        results.push((case, measure(ours, "ours", case), measure(reference, "pytorch", case)));
    }

    let env: Vec<String> = ["OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS"]
        .iter()
        .map(|k| format!("{k}={}", std::env::var(k).unwrap_or_else(|_| "unset".into())))
        .collect();
    println!(
        "Machine: {}, {} logical CPUs; {threads} threads on both sides; PyTorch {torch_version} \
         eager (CPU); ours: release build, fused path; environment of both: {}.\n",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        env.join(", "),
    );
    println!(
        "| case | ours (ms) | pytorch (ms) | speed-up | ours peak RSS Δ (MB) | pytorch peak RSS Δ (MB) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for &(case, ours, theirs) in &results {
        let speedup = match (ours, theirs) {
            (Some(o), Some(t)) => format!("{:.1}×", t.ms / o.ms),
            _ => "n/a".into(),
        };
        println!(
            "| {case} | {} | {} | {speedup} | {} | {} |",
            ms(ours),
            ms(theirs),
            mb(ours),
            mb(theirs)
        );
    }

    println!("\nSame results (f32 inputs; agreement required to relative 1e-5):\n");
    println!("| case | loss, ours | loss, pytorch | rel. diff | Σ abs(grad), ours | Σ abs(grad), pytorch | rel. diff | same |");
    println!("|---|---:|---:|---:|---:|---:|---:|:---:|");
    let mut all_same = true;
    for &(case, ours, theirs) in &results {
        let (Some(o), Some(t)) = (ours, theirs) else {
            println!("| {case} | | | | | | | n/a |");
            continue;
        };
        let (dv, dg) = (rel_diff(o.value, t.value), rel_diff(o.grad_l1, t.grad_l1));
        let same = dv <= 1e-5 && dg <= 1e-5;
        all_same &= same;
        println!(
            "| {case} | {:.9} | {:.9} | {dv:.1e} | {:.9} | {:.9} | {dg:.1e} | {} |",
            o.value,
            t.value,
            o.grad_l1,
            t.grad_l1,
            if same { "yes" } else { "NO" }
        );
    }
    if !all_same {
        return Err("ours and the reference disagree on some case (see the table)".into());
    }
    Ok(())
}

/// The maps of `dbnet_inputs` in benches/compare/reference.py, bit for bit: `n` f32 images of
/// `h × w` per map, `f` applied to the uniforms in f64, then rounded.
fn dbnet_map(
    seed: u64,
    (n, h, w): (usize, usize, usize),
    f: impl Fn(f64) -> f64,
) -> AnyResult<Tensor> {
    let v: Vec<f32> = uniform(seed, n * h * w).into_iter().map(|u| f(u) as f32).collect();
    Ok(Tensor::f_from_slice(&v)?.f_reshape([n as i64, h as i64, w as i64])?)
}

/// The DBNet loss, preset `dbnet` (balanced BCE with hard-negative mining, alpha 5, beta 10),
/// through `DbLoss` (the fused kernel, on as many threads as libtorch), on probabilities in
/// [0.01, 0.99), about 10 % text: the inputs of `dbnet_case` in reference.py.
fn dbnet_case(n: usize, h: usize, w: usize) -> AnyResult<Step> {
    use losslab::core::config::{DbNetConfig, DbNetPreset};
    use losslab::dbnet::{DbInput, DbLoss};

    let size = (n, h, w);
    let maps = [
        dbnet_map(11, size, |u| 0.01 + 0.98 * u)?,
        dbnet_map(12, size, |u| 0.2 + 0.6 * u)?,
        dbnet_map(13, size, |u| u)?,
    ];
    let preds = Tensor::f_stack(&maps, 1)?.f_contiguous()?;
    let below = |seed: u64, fraction: f64| -> AnyResult<TchTensor> {
        let map = dbnet_map(seed, size, |u| if u < fraction { 1.0 } else { 0.0 })?;
        Ok(TchTensor::from(map))
    };
    let (gt_shrink, gt_shrink_mask) = (below(14, 0.1)?, below(15, 0.95)?);
    let gt_thr = TchTensor::from(dbnet_map(16, size, |u| 0.3 + 0.4 * u)?);
    let gt_thr_mask = below(17, 0.3)?;
    let preset = DbNetConfig { preset: Some(DbNetPreset::Dbnet), ..DbNetConfig::default() };
    let threads = usize::try_from(tch::get_num_threads()).unwrap_or(0);
    let loss = DbLoss::from_config(&preset)?.with_threads(threads);
    Ok(Box::new(move |track| {
        let leaf = preds.f_detach()?.set_requires_grad(track);
        let p = TchTensor::from(leaf.shallow_clone());
        let out = loss.forward(DbInput {
            preds: &p,
            gt_shrink: &gt_shrink,
            gt_shrink_mask: &gt_shrink_mask,
            gt_thr: &gt_thr,
            gt_thr_mask: &gt_thr_mask,
        })?;
        Ok((out.loss.into_inner(), leaf))
    }))
}
