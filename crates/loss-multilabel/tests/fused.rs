//! The fused path of [`ResampleLoss`] against the generic formulas (its oracle), on the ndarray
//! backend: values of `sum` and `mean` over every preset and part, ragged shapes, rows without
//! positives, classes seen once; the same errors; results that do not depend on the number of
//! threads. (Gradients are compared on libtorch, in `loss-tch/tests/multilabel_fused.rs`.)
//!
//! Tolerance: relative 1e-9 on every value. The ndarray backend computes in f64 whatever the
//! declared type and both paths use the exact softplus, so the two differ only by rounding
//! (observed below 1e-13); f32-declared inputs run the same f64 kernel here.

mod common;

use common::uniforms;
use loss_core::config::{
    Asymmetric, CbMode, Focal, MultiLabelPreset, NegativeWeight, Ntr, Reweight, ReweightKind,
    WeightNorm,
};
use loss_core::ndarray_backend::NdTensor;
use loss_core::{
    Backend, ClassStats, DType, Loss, LossError, MultiLabelConfig, MultiLabelParams, Reduction,
};
use loss_multilabel::{MultiLabelInput, ResampleLoss};

const REL: f64 = 1e-9;

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

/// A long-tailed batch: counts falling as a power law with several classes seen once, targets
/// drawn with those priors, every fourth row without a positive label, logits in ±8.
struct Batch {
    shape: [usize; 2],
    logits: Vec<f64>,
    targets: Vec<f64>,
    weight: Vec<f64>,
    class_freq: Vec<f64>,
    train_num: f64,
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
    let logits = uniforms(seed + 1, n * c).iter().map(|u| 16.0 * u - 8.0).collect();
    let weight =
        uniforms(seed + 2, n * c).iter().map(|&u| if u < 0.2 { 0.0 } else { 2.0 * u }).collect();
    Batch { shape, logits, targets, weight, class_freq, train_num }
}

fn tensor(values: &[f64], shape: [usize; 2], dtype: DType) -> NdTensor {
    NdTensor::new(values.to_vec(), &shape, dtype).unwrap()
}

/// How one call is made.
#[derive(Debug, Clone, Copy)]
struct Call {
    dtype: DType,
    weighted: bool,
    avg_factor: Option<f64>,
}

const CALLS: [Call; 4] = [
    Call { dtype: DType::F64, weighted: false, avg_factor: None },
    Call { dtype: DType::F32, weighted: false, avg_factor: None },
    Call { dtype: DType::F64, weighted: true, avg_factor: None },
    Call { dtype: DType::F64, weighted: true, avg_factor: Some(7.5) },
];

fn forward(loss: &ResampleLoss, b: &Batch, call: Call) -> Result<f64, LossError> {
    let z = tensor(&b.logits, b.shape, call.dtype);
    let y = tensor(&b.targets, b.shape, call.dtype);
    let w = tensor(&b.weight, b.shape, call.dtype);
    let input = MultiLabelInput {
        logits: &z,
        targets: &y,
        weight: call.weighted.then_some(&w),
        avg_factor: call.avg_factor,
    };
    loss.forward(input)?.loss.to_f64()
}

/// Fused against generic for `params` on every shape and call, under `sum` and `mean`.
fn agree(what: &str, params: &MultiLabelParams) {
    for reduction in [Reduction::Mean, Reduction::Sum] {
        let params = MultiLabelParams { reduction, ..params.clone() };
        for (s, &shape) in SHAPES.iter().enumerate() {
            let b = batch(shape, 10 + s as u64);
            let params = with_stats(&params, &b);
            let fused = ResampleLoss::new(params.clone()).unwrap();
            let generic = fused.clone().with_fused(false);
            for call in CALLS {
                let got = forward(&fused, &b, call).unwrap();
                let want = forward(&generic, &b, call).unwrap();

                assert!(
                    (got - want).abs() <= REL * want.abs() && got.is_finite(),
                    "{what} {reduction:?} {shape:?} {call:?}: fused {got:e}, generic {want:e}"
                );
            }
        }
    }
}

/// `params` with the batch's class statistics (and per-class parameters of its size).
fn with_stats(params: &MultiLabelParams, b: &Batch) -> MultiLabelParams {
    let c = b.shape[1];
    MultiLabelParams {
        stats: Some(ClassStats::new(b.class_freq.clone(), b.train_num).unwrap()),
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
fn every_preset_agrees_with_the_generic_path() {
    for p in PRESETS {
        agree(&format!("{p:?}"), &preset(p));
    }
}

#[test]
fn pos_weight_agrees_alone_and_with_the_db_parts() {
    let pw = Some(vec![1.0]);
    agree(
        "bce + pos_weight",
        &MultiLabelParams { pos_weight: pw.clone(), ..preset(MultiLabelPreset::Bce) },
    );
    agree("db + pos_weight", &MultiLabelParams { pos_weight: pw, ..preset(MultiLabelPreset::Db) });
}

#[test]
fn focal_with_other_gammas_agrees() {
    for gamma in [0.0, 0.5, 1.0, 3.7] {
        let params = MultiLabelParams {
            focal: Some(Focal { gamma, alpha: 0.25 }),
            ..MultiLabelParams::default()
        };
        agree(&format!("focal gamma {gamma}"), &params);
    }
}

#[test]
fn asymmetric_agrees_with_and_without_clip() {
    for (gamma_pos, gamma_neg, clip) in
        [(0.0, 4.0, 0.05), (1.0, 2.0, 0.0), (0.5, 0.5, 0.1), (0.0, 0.0, 0.2)]
    {
        let asl = Asymmetric { gamma_pos, gamma_neg, clip };
        let plain = MultiLabelParams { asymmetric: Some(asl), ..MultiLabelParams::default() };
        let with_db = MultiLabelParams {
            asymmetric: Some(asl),
            focal: None,
            pos_weight: Some(vec![1.0]),
            ..preset(MultiLabelPreset::DbNoFocal)
        };
        agree(&format!("asymmetric {asl:?}"), &plain);
        agree(&format!("asymmetric {asl:?} with rebalance, NTR, pos_weight"), &with_db);
    }
}

#[test]
fn every_reweight_and_norm_agrees() {
    let kinds = [
        ReweightKind::Inverse,
        ReweightKind::SqrtInverse,
        ReweightKind::ClassBalanced { beta: 0.9, mode: CbMode::ByClass },
        ReweightKind::ClassBalanced { beta: 0.999, mode: CbMode::AverageN },
        ReweightKind::ClassBalanced { beta: 0.9, mode: CbMode::AverageW },
        ReweightKind::ClassBalanced { beta: 0.5, mode: CbMode::MinN },
        ReweightKind::ClassBalanced { beta: 0.0, mode: CbMode::AverageN },
        ReweightKind::Rebalance { alpha: 0.1, beta: 10.0, mu: 0.9 },
        ReweightKind::Rebalance { alpha: 0.3, beta: -4.0, mu: 0.05 },
        ReweightKind::Rebalance { alpha: 0.0, beta: 0.0, mu: 0.5 },
    ];
    for kind in kinds {
        for norm in [WeightNorm::None, WeightNorm::ByInstance, WeightNorm::ByBatch] {
            let params = MultiLabelParams {
                reweight: Some(Reweight { kind, norm }),
                focal: Some(Focal { gamma: 2.0, alpha: 0.5 }),
                ..MultiLabelParams::default()
            };
            agree(&format!("{kind:?} {norm:?}"), &params);
        }
    }
}

#[test]
fn every_ntr_switch_agrees() {
    for negative_weight in [NegativeWeight::Auto, NegativeWeight::Always, NegativeWeight::Never] {
        for bias_over_lambda in [false, true] {
            let ntr = Ntr { kappa: 0.1, lambda: 3.0, negative_weight, bias_over_lambda };
            let alone = MultiLabelParams { ntr: Some(ntr), ..MultiLabelParams::default() };
            let with_cb = MultiLabelParams { ntr: Some(ntr), ..preset(MultiLabelPreset::Cb) };
            agree(&format!("{ntr:?}"), &alone);
            agree(&format!("{ntr:?} with cb"), &with_cb);
        }
    }
}

#[test]
fn soft_targets_agree_for_plain_bce() {
    let b = batch([9, 13], 3);
    let soft: Vec<f64> =
        uniforms(99, 9 * 13).iter().map(|u| (u * 1000.0).round() / 1000.0).collect();
    let b = Batch { targets: soft, ..b };
    let fused =
        ResampleLoss::new(MultiLabelParams { pos_weight: None, ..Default::default() }).unwrap();
    let generic = fused.clone().with_fused(false);

    for call in CALLS {
        let got = forward(&fused, &b, call).unwrap();
        let want = forward(&generic, &b, call).unwrap();

        assert!((got - want).abs() <= REL * want.abs(), "{call:?}: {got:e} vs {want:e}");
    }
}

#[test]
fn invalid_inputs_give_the_generic_paths_error() {
    let b = batch([5, 6], 4);
    let db = with_stats(&preset(MultiLabelPreset::Db), &b);
    let bce = MultiLabelParams::default();
    let mut bad_target = b.targets.clone();
    bad_target[13] = 0.5;
    let mut bad_logit = b.logits.clone();
    bad_logit[20] = f64::NAN;
    bad_logit[4] = f64::INFINITY;
    let mut bad_weight = b.weight.clone();
    bad_weight[17] = -1.0;
    // A bad target after a bad logit: targets are checked first, as on the generic path.
    let mut late_target = b.targets.clone();
    late_target[29] = 2.0;
    /// What is wrong, the loss, and logits, targets, weights.
    type Case<'a> = (&'a str, &'a MultiLabelParams, &'a [f64], &'a [f64], &'a [f64]);
    let cases: [Case<'_>; 6] = [
        ("soft target with db", &db, &b.logits, &bad_target, &b.weight),
        ("target 2 with bce", &bce, &b.logits, &late_target, &b.weight),
        ("non-finite logits", &db, &bad_logit, &b.targets, &b.weight),
        ("negative weight", &db, &b.logits, &b.targets, &bad_weight),
        ("target after logit", &db, &bad_logit, &late_target, &b.weight),
        ("weight after logit", &bce, &bad_logit, &b.targets, &bad_weight),
    ];

    for (what, params, logits, targets, weight) in cases {
        let fused = ResampleLoss::new(params.clone()).unwrap();
        let generic = fused.clone().with_fused(false);
        let (z, y, w) = (
            tensor(logits, b.shape, DType::F64),
            tensor(targets, b.shape, DType::F64),
            tensor(weight, b.shape, DType::F64),
        );
        let input = MultiLabelInput::new(&z, &y).with_weight(&w);

        let got = fused.forward(input).unwrap_err();
        let want = generic.forward(input).unwrap_err();

        assert_eq!(got, want, "{what}");
        assert!(matches!(got, LossError::InvalidValue { .. }), "{what}: {got}");
    }
}

#[test]
fn unchecked_non_finite_logits_flow_through() {
    let params =
        MultiLabelParams { check_finite: false, stats: None, ..preset(MultiLabelPreset::Focal) };
    let loss = ResampleLoss::new(params).unwrap();
    let z = tensor(&[f64::NAN, 0.5], [1, 2], DType::F64);
    let y = tensor(&[1.0, 0.0], [1, 2], DType::F64);

    let value = loss.forward(MultiLabelInput::new(&z, &y)).unwrap().loss.to_f64().unwrap();

    assert!(value.is_nan());
}

#[test]
fn an_invalid_avg_factor_is_the_generic_error() {
    let b = batch([3, 7], 5);
    let z = tensor(&b.logits, b.shape, DType::F64);
    let y = tensor(&b.targets, b.shape, DType::F64);
    let loss = ResampleLoss::new(MultiLabelParams::default()).unwrap();

    let err = loss.forward(MultiLabelInput::new(&z, &y).with_avg_factor(-1.0)).unwrap_err();

    assert!(
        matches!(err, LossError::InvalidConfig { ref key, .. } if key == "avg_factor"),
        "{err}"
    );
}

#[test]
fn the_fused_path_is_on_by_default_and_can_be_turned_off() {
    let loss = ResampleLoss::new(MultiLabelParams::default()).unwrap();

    assert!(loss.fused());
    assert!(!loss.clone().with_fused(false).fused());
    assert_ne!(loss.clone().with_fused(false), loss);
}

/// Sums are added in fixed blocks of rows in block order: the same bits on 1 to 4 threads.
#[test]
fn the_value_does_not_depend_on_the_thread_count() {
    let b = batch([300, 257], 6);
    let loss = ResampleLoss::new(with_stats(&preset(MultiLabelPreset::Db), &b)).unwrap();
    let call = Call { dtype: DType::F64, weighted: true, avg_factor: None };
    let on = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| forward(&loss, &b, call).unwrap())
    };

    let values: Vec<f64> = (1..=4).map(on).collect();

    assert!(values.iter().all(|v| v.to_bits() == values[0].to_bits()), "{values:?}");
}
