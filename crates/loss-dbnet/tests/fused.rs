//! The fused DBNet kernel against the generic formulas, in value, on the ndarray backend (which
//! holds f64): every fixture case and the edge cases, at rel 1e-9. The generic path is the
//! oracle; both are checked against PyTorch in `reference.rs`. Gradients, f32 and the thread
//! count's effect on the gradient are checked on libtorch in `loss-tch/tests/dbnet_fused.rs`.

mod common;

use common::fixture::{self, close};
use loss_core::ndarray_backend::NdTensor;
use loss_core::{Backend, DType, Loss, LossError};
use loss_dbnet::{DbInput, DbLoss, DbNetParams, ProbInput, ProbLoss};
use proptest::prelude::*;

/// The four values of one call: loss and the three terms.
type Values = [f64; 4];

fn tensor(values: &[f64], shape: &[usize]) -> NdTensor {
    NdTensor::from_f64(values.to_vec(), shape).unwrap()
}

/// Inputs of one call: preds `[N, 3, H, W]` and four targets `[N, H, W]`.
struct Inputs {
    preds: NdTensor,
    targets: [NdTensor; 4],
}

impl Inputs {
    fn new(preds: &[f64], targets: [&[f64]; 4], (n, h, w): (usize, usize, usize)) -> Self {
        Inputs {
            preds: tensor(preds, &[n, 3, h, w]),
            targets: targets.map(|t| tensor(t, &[n, h, w])),
        }
    }

    fn run(&self, loss: DbLoss) -> Result<Values, LossError> {
        let [gs, gsm, gt, gtm] = &self.targets;
        let out = loss.forward(DbInput {
            preds: &self.preds,
            gt_shrink: gs,
            gt_shrink_mask: gsm,
            gt_thr: gt,
            gt_thr_mask: gtm,
        })?;
        let term = |name: &str| out.term(name).map_or(f64::NAN, |t| t.to_f64().unwrap());
        Ok([out.loss.to_f64()?, term("loss_prob"), term("loss_db"), term("loss_thr")])
    }

    /// Fused and generic values, asserted equal to rel 1e-9.
    fn compare(&self, loss: DbLoss, what: &str) -> Values {
        let fused = self.run(loss.with_fused(true)).unwrap();
        let generic = self.run(loss.with_fused(false)).unwrap();
        for (name, (f, g)) in
            ["loss", "loss_prob", "loss_db", "loss_thr"].iter().zip(fused.iter().zip(&generic))
        {
            assert!(close(*f, *g, 1e-9, 1e-3), "{what} {name}: fused {f} vs generic {g}");
        }
        fused
    }
}

/// Seeded uniform values (the fixtures' splitmix64 stream).
fn uniform(seed: u64, n: usize) -> Vec<f64> {
    fixture::uniform(seed, n)
}

/// A random batch: probabilities (or logits), text with probability `text`, soft or binary
/// masks.
fn batch(seed: u64, (n, h, w): (usize, usize, usize), text: f64, logits: bool) -> Inputs {
    let pixels = n * h * w;
    let mut preds = Vec::with_capacity(3 * pixels);
    let (p, t, b) = (uniform(seed, pixels), uniform(seed + 1, pixels), uniform(seed + 2, pixels));
    for i in 0..n {
        let image = i * h * w..(i + 1) * h * w;
        if logits {
            preds.extend(p[image.clone()].iter().map(|u| 16.0 * u - 8.0));
        } else {
            preds.extend(p[image.clone()].iter().map(|u| 0.01 + 0.98 * u));
        }
        preds.extend(t[image.clone()].iter().map(|u| 0.2 + 0.6 * u));
        preds.extend_from_slice(&b[image]);
    }
    let gs: Vec<f64> = uniform(seed + 3, pixels).iter().map(|&u| f64::from(u < text)).collect();
    let gsm: Vec<f64> = uniform(seed + 4, pixels).iter().map(|&u| f64::from(u < 0.9)).collect();
    let gt: Vec<f64> = uniform(seed + 5, pixels).iter().map(|u| 0.3 + 0.4 * u).collect();
    let gtm: Vec<f64> = uniform(seed + 6, pixels).iter().map(|&u| f64::from(u < 0.4)).collect();
    Inputs::new(&preds, [&gs, &gsm, &gt, &gtm], (n, h, w))
}

fn params(prob_loss: ProbLoss, prob_input: ProbInput) -> DbNetParams {
    DbNetParams { prob_loss, prob_input, alpha: 5.0, beta: 10.0, ..DbNetParams::default() }
}

const MODES: [(ProbLoss, ProbInput); 4] = [
    (ProbLoss::BalancedBce, ProbInput::Probability),
    (ProbLoss::BalancedBce, ProbInput::Logits),
    (ProbLoss::Dice, ProbInput::Probability),
    (ProbLoss::Dice, ProbInput::Logits),
];

#[test]
fn every_fixture_case_agrees_with_the_generic_path() {
    for case in fixture::load() {
        let inputs = case.inputs();
        let data = Inputs {
            preds: tensor(&inputs.preds, &case.preds_shape),
            targets: [
                &inputs.gt_shrink,
                &inputs.gt_shrink_mask,
                &inputs.gt_thr,
                &inputs.gt_thr_mask,
            ]
            .map(|t| tensor(t, &case.target_shape)),
        };

        data.compare(DbLoss::from_config(&case.config).unwrap(), &case.name);
    }
}

#[test]
fn every_mode_agrees_on_batches_of_several_blocks() {
    // 3 × 96 × 100 = 9600 pixels per image: two blocks of the kernel per image.
    for (i, (prob_loss, prob_input)) in MODES.into_iter().enumerate() {
        let logits = prob_input == ProbInput::Logits;
        let data = batch(100 + i as u64, (3, 96, 100), 0.1, logits);

        data.compare(DbLoss::new(params(prob_loss, prob_input)).unwrap(), &format!("{i}"));
    }
}

#[test]
fn batches_without_text_agree_with_and_without_fallback_negatives() {
    for fallback in [0, 1, 7, 5000] {
        let mut p = params(ProbLoss::BalancedBce, ProbInput::Probability);
        p.fallback_negative_num = fallback;
        let data = batch(7, (2, 20, 30), 0.0, false);

        let got = data.compare(DbLoss::new(p).unwrap(), &format!("fallback {fallback}"));

        if fallback == 0 {
            // n⁺ = 0 and k = 0: nothing selected, the term is 0.
            assert_eq!(got[1], 0.0);
        } else {
            assert!(got[1] > 0.0);
        }
    }
}

#[test]
fn a_batch_without_text_with_fallback_negatives_matches_the_issue() {
    // One image of four pixels, probabilities [0.2, 0.4, 0.6, 0.8], no text, fallback 4: the
    // mean BCE of all four, 0.8149245 (issue 4), times alpha = 1.
    let ones = [1.0; 4];
    let data = Inputs::new(
        &[0.2, 0.4, 0.6, 0.8, 0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0],
        [&[0.0; 4], &ones, &ones, &ones],
        (1, 2, 2),
    );
    let p = DbNetParams {
        prob_loss: ProbLoss::BalancedBce,
        fallback_negative_num: 4,
        ..DbNetParams::default()
    };

    let got = data.compare(DbLoss::new(p).unwrap(), "fallback 4");

    // torch.topk(F.binary_cross_entropy(p, torch.zeros(4), reduction="none"), 4).values.sum()
    //     / (0 + 4 + 1e-6) -> 0.8149242511160512 (see tests/edge_cases.rs)
    assert!(close(got[1], 0.8149242511160512, 1e-12, 1.0), "{}", got[1]);
}

#[test]
fn soft_masks_and_masks_above_one_agree() {
    let (n, h, w) = (2, 17, 23);
    let pixels = n * h * w;
    let data = batch(21, (n, h, w), 0.2, false);
    let soft: Vec<f64> = uniform(99, pixels);
    // Masks of 2 make ⌊Σ neg⌋ larger than the pool: k reaches into the zeros outside it.
    let heavy: Vec<f64> = uniform(98, pixels).iter().map(|u| (4.0 * u).floor() / 2.0).collect();
    for mask in [soft, heavy] {
        let targets = [
            data.targets[0].shallow_clone(),
            tensor(&mask, &[n, h, w]),
            data.targets[2].shallow_clone(),
            tensor(&mask, &[n, h, w]),
        ];
        let masked = Inputs { preds: data.preds.shallow_clone(), targets };

        for ratio in [0.5, 3.0, 100.0] {
            let mut p = params(ProbLoss::BalancedBce, ProbInput::Probability);
            p.negative_ratio = ratio;
            masked.compare(DbLoss::new(p).unwrap(), &format!("ratio {ratio}"));
        }
    }
}

#[test]
fn mining_through_ties_is_exact_in_value() {
    // Probabilities from four levels: thousands of negatives share each loss, and the k-th
    // largest falls among equal values (in the same histogram bucket, across blocks).
    let (n, h, w) = (2, 90, 100);
    let pixels = n * h * w;
    let mut preds = Vec::new();
    let levels = uniform(5, pixels);
    for i in 0..n {
        let image = i * h * w..(i + 1) * h * w;
        preds.extend(levels[image.clone()].iter().map(|u| ((4.0 * u).floor() + 1.0) / 5.0));
        preds.extend(std::iter::repeat_n(0.5, h * w));
        preds.extend(std::iter::repeat_n(0.5, h * w));
    }
    let text: Vec<f64> = uniform(6, pixels).iter().map(|&u| f64::from(u < 0.1)).collect();
    let ones = vec![1.0; pixels];
    let data = Inputs::new(&preds, [&text, &ones, &ones, &ones], (n, h, w));

    for ratio in [1.0, 2.5, 3.0, 7.0] {
        let mut p = params(ProbLoss::BalancedBce, ProbInput::Probability);
        p.negative_ratio = ratio;
        data.compare(DbLoss::new(p).unwrap(), &format!("ties, ratio {ratio}"));
    }
}

#[test]
fn a_kth_loss_of_zero_takes_negatives_first_and_agrees() {
    // Negatives predicted exactly 0 have loss 0: the k-th largest is 0, shared with every
    // element outside the pool.
    let (n, h, w) = (1, 4, 8);
    let pixels = n * h * w;
    let mut prob = vec![0.0; pixels];
    prob[3] = 0.7;
    prob[9] = 0.4;
    let mut text = vec![0.0; pixels];
    text[0] = 1.0;
    text[1] = 1.0;
    let preds: Vec<f64> = [prob, vec![0.5; pixels], vec![0.5; pixels]].concat();
    let ones = vec![1.0; pixels];
    let data = Inputs::new(&preds, [&text, &ones, &ones, &ones], (n, h, w));

    for ratio in [1.0, 3.0, 20.0] {
        let mut p = params(ProbLoss::BalancedBce, ProbInput::Probability);
        p.negative_ratio = ratio;
        data.compare(DbLoss::new(p).unwrap(), &format!("zero losses, ratio {ratio}"));
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    // 3 × 256 × 256 pixels: eight blocks per image, and room for six threads of 32 768 pixels.
    for (prob_loss, prob_input) in MODES {
        let data = batch(3, (3, 256, 256), 0.1, prob_input == ProbInput::Logits);
        let loss = DbLoss::new(params(prob_loss, prob_input)).unwrap();
        let one = data.run(loss.with_threads(1)).unwrap();

        for threads in [2, 3, 4, 7, 64] {
            let got = data.run(loss.with_threads(threads)).unwrap();
            assert_eq!(got, one, "{prob_loss:?} {prob_input:?} with {threads} threads");
        }
        assert_eq!(data.run(loss).unwrap(), one, "automatic thread count");
    }
}

#[test]
fn a_probability_outside_the_unit_interval_is_the_same_error_on_both_paths() {
    for (flat, value) in [(0, 1.2), (3, -0.1), (2 * 12 + 7, f64::NAN)] {
        let (n, h, w) = (3, 3, 4);
        let data = batch(11, (n, h, w), 0.3, false);
        let mut preds = data.preds.to_vec_f64().unwrap();
        let (image, within) = (flat / (h * w), flat % (h * w));
        preds[image * 3 * h * w + within] = value;
        // Another bad value later, in channel 0 of the last image: the first one is named.
        preds[(n - 1) * 3 * h * w + h * w - 1] = 2.0;
        let data = Inputs { preds: tensor(&preds, &[n, 3, h, w]), targets: data.targets };
        let loss = DbLoss::new(params(ProbLoss::BalancedBce, ProbInput::Probability)).unwrap();

        let fused = data.run(loss).unwrap_err();
        let generic = data.run(loss.with_fused(false)).unwrap_err();

        let want = vec![image, 0, within / w, within % w];
        match (&fused, &generic) {
            (
                LossError::InvalidValue { what, index, value: v, .. },
                LossError::InvalidValue { index: gi, value: gv, .. },
            ) => {
                assert_eq!((what.as_str(), index), ("preds", &want), "{fused}");
                assert_eq!(index, gi);
                assert!(v.to_bits() == gv.to_bits() && (v == &value || value.is_nan()));
            }
            _ => panic!("{fused} / {generic}"),
        }
        assert_eq!(fused.to_string(), generic.to_string());
    }
}

#[test]
fn half_precision_and_f32_inputs_keep_their_compute_type() {
    let data = batch(1, (1, 8, 8), 0.3, false);
    let values = data.preds.to_vec_f64().unwrap();
    for (dtype, compute) in [(DType::F16, DType::F32), (DType::F32, DType::F32)] {
        let preds = NdTensor::new(values.clone(), &[1, 3, 8, 8], dtype).unwrap();
        let loss = DbLoss::new(params(ProbLoss::BalancedBce, ProbInput::Probability)).unwrap();
        let [gs, gsm, gt, gtm] = &data.targets;

        let out = loss
            .forward(DbInput {
                preds: &preds,
                gt_shrink: gs,
                gt_shrink_mask: gsm,
                gt_thr: gt,
                gt_thr_mask: gtm,
            })
            .unwrap();

        assert_eq!(out.loss.dtype(), compute);
        assert!(out.terms.iter().all(|(_, t)| t.dtype() == compute));
    }
}

#[test]
fn an_empty_batch_agrees() {
    let data = Inputs::new(&[], [&[], &[], &[], &[]], (0, 4, 4));

    for (prob_loss, prob_input) in MODES {
        data.compare(DbLoss::new(params(prob_loss, prob_input)).unwrap(), "empty");
    }
}

fn pool() -> impl Strategy<Value = (usize, usize, Vec<f64>, Vec<f64>, Vec<f64>)> {
    (1usize..3, 1usize..40).prop_flat_map(|(n, hw)| {
        let pixels = n * hw;
        (
            Just(n),
            Just(hw),
            // Few distinct values, so that ties are common; 0 and 1 hit the log clamp.
            prop::collection::vec(
                prop_oneof![Just(0.0), Just(1.0), Just(0.25), Just(0.5), 0.0f64..=1.0],
                pixels,
            ),
            prop::collection::vec(prop::bool::weighted(0.3).prop_map(f64::from), pixels),
            prop::collection::vec(
                prop_oneof![Just(1.0), Just(0.0), Just(2.0), 0.0f64..=1.0],
                pixels,
            ),
        )
    })
}

proptest! {
    #[test]
    fn random_pools_agree(
        (n, hw, p, g, m) in pool(),
        ratio in 0.0f64..5.0,
        fallback in 0usize..10,
        logits in any::<bool>(),
    ) {
        let pixels = n * hw;
        let channel = |i: usize, v: &[f64]| v[i * hw..(i + 1) * hw].to_vec();
        let preds: Vec<f64> = (0..n)
            .flat_map(|i| {
                let x = channel(i, &p);
                let x = if logits { x.iter().map(|v| 12.0 * v - 6.0).collect() } else { x };
                [x, channel(i, &m), channel(i, &p)].concat()
            })
            .collect();
        let thr: Vec<f64> = (0..pixels).map(|i| (i % 7) as f64 / 7.0).collect();
        let data = Inputs::new(&preds, [&g, &m, &thr, &m], (n, 1, hw));
        let mut params = params(
            ProbLoss::BalancedBce,
            if logits { ProbInput::Logits } else { ProbInput::Probability },
        );
        params.negative_ratio = ratio;
        params.fallback_negative_num = fallback;

        data.compare(DbLoss::new(params).unwrap(), "random pool");
    }
}
