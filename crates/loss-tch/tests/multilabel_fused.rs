//! The fused path of `loss_multilabel::ResampleLoss` on libtorch against the generic formulas
//! (its oracle): value and gradient with respect to the logits over every preset and part, f32
//! and f64, ragged shapes, rows without positives, classes seen once; the PyTorch fixtures
//! through the forced generic path; exact softplus past 20; results independent of the thread
//! count; the fall-backs.
//!
//! Tolerances (`common::Tolerance`): relative 1e-9 (f64) and 1e-5 (f32), with a floor of 1e-13
//! (f64) or 1e-7 (f32) times the largest magnitude of the compared array. Both paths compute in
//! the precision of the data; f32 differs by the rounding of two different evaluation orders
//! (observed around 1e-6 at worst). Regularised logits stay below 20 in magnitude in these
//! comparisons: past 20, libtorch's softplus returns `x` (derivative 1) where the fused path is
//! exact (`σ(x)`), a gap of its own test below.

#[path = "../../loss-multilabel/tests/common/mod.rs"]
mod common;

use common::{assert_close, cases, uniforms, Case, Tolerance, F32, F64};
use loss_core::config::{
    Asymmetric, CbMode, Focal, MultiLabelPreset, NegativeWeight, Ntr, Reweight, ReweightKind,
    WeightNorm,
};
use loss_core::{
    Backend, ClassStats, Loss, LossError, MultiLabelConfig, MultiLabelParams, Reduction,
};
use loss_multilabel::{MultiLabelInput, ResampleLoss};
use loss_tch::TchTensor;
use tch::{Device, Kind, Tensor};

const SHAPES: [[usize; 2]; 4] = [[1, 1], [3, 7], [17, 90], [64, 257]];

const PRESETS: [MultiLabelPreset; 13] = [
    MultiLabelPreset::Bce,
    MultiLabelPreset::Focal,
    MultiLabelPreset::Cb,
    MultiLabelPreset::RFocal,
    MultiLabelPreset::NtrFocal,
    MultiLabelPreset::DbNoFocal,
    MultiLabelPreset::CbNtr,
    MultiLabelPreset::Db,
    MultiLabelPreset::CbPubmed,
    MultiLabelPreset::RFocalPubmed,
    MultiLabelPreset::NtrFocalPubmed,
    MultiLabelPreset::DbNoFocalPubmed,
    MultiLabelPreset::DbPubmed,
];

/// A long-tailed batch: counts falling as a power law with several classes seen once (from
/// 117 classes on), targets drawn with those priors, every fourth row without a positive label,
/// logits in ±6 (so `|λ · (z + ν)| < 20` for `λ ≤ 2.5`, `κ ≤ 0.1`).
struct Batch {
    shape: [usize; 2],
    logits: Vec<f64>,
    targets: Vec<f64>,
    weight: Vec<f64>,
    stats: ClassStats,
}

fn batch(shape: [usize; 2], seed: u64) -> Batch {
    let [n, c] = shape;
    let train_num = 1000.0;
    let class_freq: Vec<f64> =
        (0..c).map(|k| (300.0 * ((k + 1) as f64).powf(-1.2)).floor().max(1.0)).collect();
    let draws = uniforms(seed, n * c);
    let targets = (0..n * c)
        .map(|i| {
            let prior = (3.0 * class_freq[i % c] / train_num).clamp(0.05, 0.5);
            if (i / c) % 4 == 0 || draws[i] >= prior {
                0.0
            } else {
                1.0
            }
        })
        .collect();
    Batch {
        shape,
        logits: uniforms(seed + 1, n * c).iter().map(|u| 12.0 * u - 6.0).collect(),
        targets,
        weight: uniforms(seed + 2, n * c)
            .iter()
            .map(|&u| if u < 0.2 { 0.0 } else { 2.0 * u })
            .collect(),
        stats: ClassStats::new(class_freq, train_num).unwrap(),
    }
}

fn tensor(values: &[f64], shape: [usize; 2], kind: Kind) -> Tensor {
    Tensor::from_slice(values).reshape([shape[0] as i64, shape[1] as i64]).to_kind(kind)
}

fn to_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).reshape([-1])).unwrap()
}

/// How one call is made.
#[derive(Debug, Clone, Copy)]
struct Call {
    kind: Kind,
    weighted: bool,
    avg_factor: Option<f64>,
}

const CALLS: [Call; 5] = [
    Call { kind: Kind::Double, weighted: false, avg_factor: None },
    Call { kind: Kind::Float, weighted: false, avg_factor: None },
    Call { kind: Kind::Double, weighted: true, avg_factor: None },
    Call { kind: Kind::Float, weighted: true, avg_factor: None },
    Call { kind: Kind::Double, weighted: true, avg_factor: Some(7.5) },
];

fn tolerance(kind: Kind) -> Tolerance {
    if kind == Kind::Double {
        F64
    } else {
        F32
    }
}

/// Value and gradient w.r.t. a fresh leaf of logits.
fn run(
    loss: &ResampleLoss,
    logits: &Tensor,
    targets: &Tensor,
    weight: Option<&Tensor>,
    avg: Option<f64>,
) -> (f64, Vec<f64>) {
    let leaf = logits.detach().set_requires_grad(true);
    let z = TchTensor::from(leaf.shallow_clone());
    let y = TchTensor::from(targets.shallow_clone());
    let w = weight.map(|w| TchTensor::from(w.shallow_clone()));
    let input = MultiLabelInput { logits: &z, targets: &y, weight: w.as_ref(), avg_factor: avg };

    let out = loss.forward(input).unwrap();
    out.loss.backward();

    (out.loss.to_f64().unwrap(), to_vec(&leaf.grad()))
}

fn run_batch(loss: &ResampleLoss, b: &Batch, call: Call) -> (f64, Vec<f64>) {
    let z = tensor(&b.logits, b.shape, call.kind);
    let y = tensor(&b.targets, b.shape, call.kind);
    let w = tensor(&b.weight, b.shape, call.kind);
    run(loss, &z, &y, call.weighted.then_some(&w), call.avg_factor)
}

fn params_of(loss: &ResampleLoss) -> &MultiLabelParams {
    loss.params()
}

/// `call` on the batch's values rounded to f32, computed in f64.
fn run_batch_rounded(loss: &ResampleLoss, b: &Batch, call: Call) -> (f64, Vec<f64>) {
    let round = |v: &[f64]| -> Vec<f64> { v.iter().map(|&x| f64::from(x as f32)).collect() };
    let rounded = Batch {
        shape: b.shape,
        logits: round(&b.logits),
        targets: b.targets.clone(),
        weight: round(&b.weight),
        stats: b.stats.clone(),
    };
    run_batch(loss, &rounded, Call { kind: Kind::Double, ..call })
}

/// Fused against generic for `params` on every shape and call, under `sum` and `mean`; f32
/// results also against the generic path in f64 on the same values. With ASL's clip the direct
/// f32 comparison is left out: libtorch's f32 sigmoid backward `(1 − σ) · σ` loses digits where
/// σ is near 1 (1.1e-5 from the f64 value on some entries here), where the fused path computes
/// `σ(−x)` directly; the f64 oracle still holds the fused result to 1e-5.
fn agree(what: &str, params: &MultiLabelParams) {
    for reduction in [Reduction::Mean, Reduction::Sum] {
        for (s, &shape) in SHAPES.iter().enumerate() {
            let b = batch(shape, 20 + s as u64);
            let params = MultiLabelParams { reduction, ..with_stats(params, &b) };
            let fused = ResampleLoss::new(params).unwrap();
            let generic = fused.clone().with_fused(false);
            for call in CALLS {
                let (value, grad) = run_batch(&fused, &b, call);
                let (want_value, want_grad) = run_batch(&generic, &b, call);

                let name = format!("{what} {reduction:?} {shape:?} {call:?}");
                let tol = tolerance(call.kind);
                let clipped = params_of(&fused).asymmetric.is_some_and(|a| a.clip > 0.0);
                if call.kind == Kind::Double || !clipped {
                    assert_close(&format!("{name} value"), &[value], &[want_value], tol);
                    assert_close(&format!("{name} grad"), &grad, &want_grad, tol);
                }
                if call.kind == Kind::Float {
                    // The generic path in f64 on the same (f32) values: the oracle without the
                    // rounding of an f32 evaluation.
                    let exact = run_batch_rounded(&generic, &b, call);
                    assert_close(&format!("{name} value (f64 oracle)"), &[value], &[exact.0], tol);
                    assert_close(&format!("{name} grad (f64 oracle)"), &grad, &exact.1, tol);
                }
            }
        }
    }
}

/// `params` with the batch's class statistics (and a `pos_weight` of its size, if any).
fn with_stats(params: &MultiLabelParams, b: &Batch) -> MultiLabelParams {
    let c = b.shape[1];
    MultiLabelParams {
        stats: Some(b.stats.clone()),
        pos_weight: params
            .pos_weight
            .as_ref()
            .map(|_| (0..c).map(|k| 0.5 + (k % 5) as f64 * 0.75).collect()),
        ..params.clone()
    }
}

fn preset(p: MultiLabelPreset) -> MultiLabelParams {
    // Class statistics are replaced per batch by `with_stats`.
    let config = MultiLabelConfig {
        preset: Some(p),
        class_freq: Some(vec![1.0]),
        train_num: Some(10.0),
        ..MultiLabelConfig::default()
    };
    config.resolve().unwrap()
}

#[test]
fn every_preset_agrees_in_value_and_gradient() {
    for p in PRESETS {
        agree(&format!("{p:?}"), &preset(p));
    }
}

#[test]
fn pos_weight_focal_and_asymmetric_agree_in_value_and_gradient() {
    let pw = Some(vec![1.0]);
    agree(
        "bce + pos_weight",
        &MultiLabelParams { pos_weight: pw.clone(), ..preset(MultiLabelPreset::Bce) },
    );
    agree("db + pos_weight", &MultiLabelParams { pos_weight: pw, ..preset(MultiLabelPreset::Db) });
    for gamma in [0.0, 0.5, 3.7] {
        let focal = Some(Focal { gamma, alpha: 0.25 });
        agree(&format!("focal gamma {gamma}"), &MultiLabelParams { focal, ..Default::default() });
    }
    for (gamma_pos, gamma_neg, clip) in [(0.0, 4.0, 0.05), (1.0, 2.0, 0.0), (0.5, 0.5, 0.1)] {
        let asl = Asymmetric { gamma_pos, gamma_neg, clip };
        agree(
            &format!("asymmetric {asl:?}"),
            &MultiLabelParams { asymmetric: Some(asl), ..Default::default() },
        );
        agree(
            &format!("asymmetric {asl:?} with rebalance and NTR"),
            &MultiLabelParams {
                asymmetric: Some(asl),
                focal: None,
                ..preset(MultiLabelPreset::DbNoFocal)
            },
        );
    }
}

#[test]
fn reweights_norms_and_ntr_switches_agree_in_value_and_gradient() {
    let kinds = [
        ReweightKind::Inverse,
        ReweightKind::SqrtInverse,
        ReweightKind::ClassBalanced { beta: 0.999, mode: CbMode::AverageN },
        ReweightKind::ClassBalanced { beta: 0.9, mode: CbMode::AverageW },
        ReweightKind::ClassBalanced { beta: 0.5, mode: CbMode::MinN },
        ReweightKind::Rebalance { alpha: 0.3, beta: -4.0, mu: 0.05 },
    ];
    for (i, kind) in kinds.into_iter().enumerate() {
        let norm = [WeightNorm::None, WeightNorm::ByInstance, WeightNorm::ByBatch][i % 3];
        let reweight = Some(Reweight { kind, norm });
        agree(
            &format!("{kind:?} {norm:?}"),
            &MultiLabelParams { reweight, ..preset(MultiLabelPreset::Focal) },
        );
    }
    let rebalance = ReweightKind::Rebalance { alpha: 0.1, beta: 10.0, mu: 0.9 };
    for norm in [WeightNorm::ByInstance, WeightNorm::ByBatch] {
        let reweight = Some(Reweight { kind: rebalance, norm });
        agree(
            &format!("db {norm:?}"),
            &MultiLabelParams { reweight, ..preset(MultiLabelPreset::Db) },
        );
    }
    for (negative_weight, bias_over_lambda) in
        [(NegativeWeight::Always, false), (NegativeWeight::Never, true)]
    {
        let ntr = Some(Ntr { kappa: 0.1, lambda: 2.5, negative_weight, bias_over_lambda });
        agree(&format!("{ntr:?}"), &MultiLabelParams { ntr, ..Default::default() });
        agree(
            &format!("{ntr:?} with cb"),
            &MultiLabelParams { ntr, ..preset(MultiLabelPreset::Cb) },
        );
    }
}

#[test]
fn soft_targets_agree_in_value_and_gradient_for_plain_bce() {
    let b = batch([9, 13], 3);
    let soft: Vec<f64> =
        uniforms(98, 9 * 13).iter().map(|u| (u * 1000.0).round() / 1000.0).collect();
    let b = Batch { targets: soft, ..b };
    let fused = ResampleLoss::new(MultiLabelParams::default()).unwrap();
    let generic = fused.clone().with_fused(false);

    for call in CALLS {
        let (value, grad) = run_batch(&fused, &b, call);
        let (want_value, want_grad) = run_batch(&generic, &b, call);

        let tol = tolerance(call.kind);
        assert_close(&format!("{call:?} value"), &[value], &[want_value], tol);
        assert_close(&format!("{call:?} grad"), &grad, &want_grad, tol);
    }
}

/// The fixture cases through the forced generic path, at the plain tolerance (the fused path
/// runs them in `multilabel_reference.rs`).
fn fixtures_through_the_generic_path(f64_cases: bool) {
    let selected: Vec<Case> = cases().into_iter().filter(|c| c.is_f64() == f64_cases).collect();
    for case in &selected {
        let kind = if case.is_f64() { Kind::Double } else { Kind::Float };
        let loss = ResampleLoss::from_config(&case.config).unwrap().with_fused(false);
        let z = tensor(&case.logits, case.shape, kind);
        let y = tensor(&case.targets, case.shape, kind);
        let w = case.weight.as_ref().map(|w| tensor(w, case.shape, kind));
        let leaf = z.set_requires_grad(true);
        let zt = TchTensor::from(leaf.shallow_clone());
        let yt = TchTensor::from(y);
        let wt = w.map(TchTensor::from);
        let input = MultiLabelInput {
            logits: &zt,
            targets: &yt,
            weight: wt.as_ref(),
            avg_factor: case.avg_factor,
        };

        let out = loss.forward(input).unwrap();
        out.loss.sum(out.loss.kind()).backward();

        assert_close(
            &format!("{} value", case.name),
            &to_vec(&out.loss),
            &case.loss,
            case.tolerance(),
        );
        assert_close(
            &format!("{} grad", case.name),
            &to_vec(&leaf.grad()),
            &case.grad,
            case.tolerance(),
        );
    }
}

#[test]
fn fixtures_pass_through_the_generic_path_in_f64() {
    fixtures_through_the_generic_path(true);
}

#[test]
fn fixtures_pass_through_the_generic_path_in_f32() {
    fixtures_through_the_generic_path(false);
}

/// Past 20, libtorch's softplus returns `x` with derivative 1; the fused path's is exact,
/// `σ(x) = 1 − e^{−x}`: gradients differ by at most `e^{−20} = 2.06e-9` (relative, here where
/// the gradient is `σ(x)` itself), values by at most 2.1e-9 per element.
#[test]
fn the_fused_softplus_is_exact_past_20() {
    let logits: Vec<f64> = (0..64).map(|i| 19.0 + 0.1 * i as f64).collect();
    let z = tensor(&logits, [1, 64], Kind::Double);
    let y = tensor(&[0.0; 64], [1, 64], Kind::Double);
    let sum = MultiLabelParams { reduction: Reduction::Sum, ..Default::default() };
    let fused = ResampleLoss::new(sum).unwrap();

    let (value, grad) = run(&fused, &z, &y, None, None);
    let (generic_value, generic_grad) = run(&fused.clone().with_fused(false), &z, &y, None, None);

    let exact: Vec<f64> = logits.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect();
    assert_close("fused gradient = σ(x)", &grad, &exact, F64);
    let gap = grad.iter().zip(&generic_grad).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(gap > 1e-9 && gap <= 2.1e-9, "largest gap {gap:e}");
    assert!((value - generic_value).abs() <= 64.0 * 2.1e-9, "{value} vs {generic_value}");
}

/// The saved gradient is handed on scaled by the incoming gradient.
#[test]
fn backward_scales_the_saved_gradient() {
    let b = batch([5, 9], 7);
    let loss = ResampleLoss::new(with_stats(&preset(MultiLabelPreset::Db), &b)).unwrap();
    let z = tensor(&b.logits, b.shape, Kind::Double);
    let y = TchTensor::from(tensor(&b.targets, b.shape, Kind::Double));
    let (_, once) = run(&loss, &z, &y, None, None);
    let leaf = z.set_requires_grad(true);
    let zt = TchTensor::from(leaf.shallow_clone());

    let out = loss.forward(MultiLabelInput::new(&zt, &y)).unwrap();
    (out.loss.0 * -2.5).backward();

    let want: Vec<f64> = once.iter().map(|g| -2.5 * g).collect();
    assert_close("scaled gradient", &to_vec(&leaf.grad()), &want, F64);
}

/// Sums are added in fixed blocks of rows in block order, and every gradient entry is computed
/// by one element: the same bits on 1 to 4 threads.
#[test]
fn value_and_gradient_do_not_depend_on_the_thread_count() {
    let b = batch([300, 257], 8);
    let loss = ResampleLoss::new(with_stats(&preset(MultiLabelPreset::Db), &b)).unwrap();
    for kind in [Kind::Double, Kind::Float] {
        let call = Call { kind, weighted: true, avg_factor: None };
        let on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| run_batch(&loss, &b, call))
        };

        let (value, grad) = on(1);
        for threads in 2..=4 {
            let (v, g) = on(threads);
            assert_eq!(v.to_bits(), value.to_bits(), "{kind:?}, {threads} threads");
            assert!(
                g.iter().zip(&grad).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{kind:?}, {threads} threads"
            );
        }
    }
}

#[test]
fn non_contiguous_and_half_precision_logits() {
    let b = batch([6, 11], 9);
    let loss = ResampleLoss::new(with_stats(&preset(MultiLabelPreset::Db), &b)).unwrap();
    let generic = loss.clone().with_fused(false);
    let y = tensor(&b.targets, b.shape, Kind::Double);
    // A transposed copy, transposed back: the same values in a non-contiguous layout, which
    // the fused path declines (the generic path runs).
    let strided =
        tensor(&b.logits, b.shape, Kind::Double).transpose(0, 1).contiguous().transpose(0, 1);
    assert!(!strided.is_contiguous());

    let (value, grad) = run(&loss, &strided, &y, None, None);
    let (want_value, want_grad) = run(&generic, &strided, &y, None, None);
    assert_close("strided value", &[value], &[want_value], F64);
    assert_close("strided grad", &grad, &want_grad, F64);

    // Half logits compute in f32 on the fused path and get a half gradient.
    let half = tensor(&b.logits, b.shape, Kind::Half);
    let y32 = tensor(&b.targets, b.shape, Kind::Float);
    let leaf = half.set_requires_grad(true);
    let zt = TchTensor::from(leaf.shallow_clone());
    let out =
        loss.forward(MultiLabelInput::new(&zt, &TchTensor::from(y32.shallow_clone()))).unwrap();
    out.loss.backward();
    let (want_value, want_grad) = run(&generic, &half.to_kind(Kind::Float), &y32, None, None);
    assert_eq!((out.loss.kind(), leaf.grad().kind()), (Kind::Float, Kind::Half));
    let loose = Tolerance { rel: 1e-5, floor: 1e-3 };
    assert_close("half value", &[out.loss.to_f64().unwrap()], &[want_value], F32);
    assert_close("half grad", &to_vec(&leaf.grad()), &want_grad, loose);
}

/// Targets of another element type are checked before they are converted, so the error names
/// the caller's value, as on the generic path.
#[test]
fn targets_of_another_type_are_checked_as_given() {
    let loss = ResampleLoss::new(preset_without_stats(MultiLabelPreset::Focal)).unwrap();
    let z = TchTensor::from(tensor(&[0.5, -1.0, 2.0, 0.0], [2, 2], Kind::Float));
    let near_one = 1.0 + 1e-12; // 1.0 once rounded to f32
    let y = TchTensor::from(tensor(&[1.0, 0.0, 0.0, near_one], [2, 2], Kind::Double));
    let y_int = TchTensor::from(Tensor::from_slice(&[1i64, 0, 0, 1]).reshape([2, 2]));
    let y_float = TchTensor::from(tensor(&[1.0, 0.0, 0.0, 1.0], [2, 2], Kind::Float));

    let err = loss.forward(MultiLabelInput::new(&z, &y)).unwrap_err();
    let generic_err =
        loss.clone().with_fused(false).forward(MultiLabelInput::new(&z, &y)).unwrap_err();
    let from_int = loss.forward(MultiLabelInput::new(&z, &y_int)).unwrap().loss.to_f64().unwrap();
    let from_float =
        loss.forward(MultiLabelInput::new(&z, &y_float)).unwrap().loss.to_f64().unwrap();

    assert_eq!(err, generic_err);
    assert!(
        matches!(err, LossError::InvalidValue { ref index, value, .. } if *index == vec![1, 1] && value == near_one),
        "{err}"
    );
    assert_eq!(from_int, from_float);
}

fn preset_without_stats(p: MultiLabelPreset) -> MultiLabelParams {
    MultiLabelParams { stats: None, ..preset(p) }
}

#[test]
fn tensors_stay_on_their_device_and_the_input_is_not_touched() {
    let b = batch([4, 5], 10);
    let loss = ResampleLoss::new(with_stats(&preset(MultiLabelPreset::Db), &b)).unwrap();
    let z = tensor(&b.logits, b.shape, Kind::Float);
    let before = to_vec(&z);
    let y = tensor(&b.targets, b.shape, Kind::Float);

    let (_, grad) = run(&loss, &z, &y, None, None);

    assert_eq!(to_vec(&z), before);
    assert_eq!(z.device(), Device::Cpu);
    assert!(grad.iter().all(|g| g.is_finite()));
}
