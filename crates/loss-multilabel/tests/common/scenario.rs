//! Random losses and batches for the property tests: every part of the family with parameters
//! drawn from their whole valid range, logits anywhere in ±1e4.

use loss_core::config::{
    Asymmetric, CbMode, Focal, NegativeWeight, Ntr, Reweight, ReweightKind, WeightNorm,
};
use loss_core::{ClassStats, MultiLabelParams, Reduction};
use proptest::prelude::*;

/// A batch and a loss made of randomly chosen parts.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub shape: [usize; 2],
    pub logits: Vec<f64>,
    pub targets: Vec<f64>,
    pub weight: Vec<f64>,
    pub params: MultiLabelParams,
}

pub fn reweight() -> impl Strategy<Value = Option<Reweight>> {
    let kind = prop_oneof![
        Just(ReweightKind::Inverse),
        Just(ReweightKind::SqrtInverse),
        (0.0..0.9999f64, 0..4usize).prop_map(|(beta, m)| ReweightKind::ClassBalanced {
            beta,
            mode: [CbMode::ByClass, CbMode::AverageN, CbMode::AverageW, CbMode::MinN][m],
        }),
        (0.0..1.0f64, -20.0..20.0f64, 0.0..1.0f64)
            .prop_map(|(alpha, beta, mu)| ReweightKind::Rebalance { alpha, beta, mu }),
    ];
    let norm = prop_oneof![
        Just(WeightNorm::None),
        Just(WeightNorm::ByInstance),
        Just(WeightNorm::ByBatch)
    ];
    proptest::option::of((kind, norm).prop_map(|(kind, norm)| Reweight { kind, norm }))
}

pub fn ntr() -> impl Strategy<Value = Option<Ntr>> {
    let switch = prop_oneof![
        Just(NegativeWeight::Auto),
        Just(NegativeWeight::Always),
        Just(NegativeWeight::Never)
    ];
    proptest::option::of((-0.2..0.2f64, 0.1..5.0f64, switch, any::<bool>()).prop_map(
        |(kappa, lambda, negative_weight, bias_over_lambda)| Ntr {
            kappa,
            lambda,
            negative_weight,
            bias_over_lambda,
        },
    ))
}

/// Focal, asymmetric or neither.
pub fn focusing() -> impl Strategy<Value = (Option<Focal>, Option<Asymmetric>)> {
    prop_oneof![
        Just((None, None)),
        (0.0..=5.0f64, 0.0..=1.0f64)
            .prop_map(|(gamma, alpha)| (Some(Focal { gamma, alpha }), None)),
        (0.0..=5.0f64, 0.0..=5.0f64, 0.0..0.3f64).prop_map(|(gamma_pos, gamma_neg, clip)| {
            (None, Some(Asymmetric { gamma_pos, gamma_neg, clip }))
        }),
    ]
}

pub fn logit() -> impl Strategy<Value = f64> {
    prop_oneof![-1e4..=1e4f64, -40.0..40.0f64, Just(0.0)]
}

pub fn scenario() -> impl Strategy<Value = Scenario> {
    (1..7usize, 1..7usize).prop_flat_map(|(n, c)| {
        let len = n * c;
        (
            proptest::collection::vec(logit(), len),
            proptest::collection::vec(any::<bool>(), len),
            proptest::collection::vec(prop_oneof![Just(0.0), 0.0..3.0f64], len),
            proptest::collection::vec(1..100u32, c),
            proptest::option::of(proptest::collection::vec(0.0..4.0f64, c)),
            (reweight(), ntr(), focusing(), 0.0..10.0f64),
        )
            .prop_map(move |(logits, targets, weight, freq, pos_weight, parts)| {
                let (reweight, ntr, (focal, asymmetric), loss_weight) = parts;
                let class_freq = freq.into_iter().map(f64::from).collect();
                Scenario {
                    shape: [n, c],
                    logits,
                    targets: targets.into_iter().map(|b| if b { 1.0 } else { 0.0 }).collect(),
                    weight,
                    params: MultiLabelParams {
                        reduction: Reduction::None,
                        loss_weight,
                        stats: Some(ClassStats::new(class_freq, 100.0).unwrap()),
                        pos_weight,
                        check_finite: true,
                        reweight,
                        focal,
                        ntr,
                        asymmetric,
                    },
                }
            })
    })
}
