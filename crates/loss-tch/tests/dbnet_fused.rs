//! The fused DBNet kernel against the generic formulas on libtorch, in value and in the gradient
//! with respect to `preds`: every fixture case of `loss-dbnet/tests/fixtures/cases.json`, f32
//! and f64, probabilities and logits, and the edge cases (no text, fallback negatives, soft
//! masks, ties, a zero threshold mask, half precision, strided predictions), and results that do
//! not depend on the thread count.
//!
//! Tolerances: f64 rel 1e-9, f32 rel 1e-5. Gradient elements are compared relative to the larger
//! of the element and 1e-3 of the largest gradient element; in f32 against the generic gradient
//! computed in f64 on the same inputs, and within 1e-1 of the scale of the f32 one. Where mining
//! cuts through equal losses, libtorch's top-k and the kernel may pick different (equal)
//! elements: the values are compared as usual, the gradients by their sum, their support size
//! and their sorted values.

#[path = "../../loss-dbnet/tests/common/fixture.rs"]
mod fixture;

use fixture::{close, Case, Dtype};
use loss_core::{Backend, DbNetParams, Loss, LossError};
use loss_dbnet::{DbInput, DbLoss, ProbInput, ProbLoss};
use loss_tch::TchTensor;
use tch::{Device, Kind, Tensor};

fn tensor(values: &[f64], shape: &[usize], kind: Kind) -> Tensor {
    let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    Tensor::from_slice(values).reshape(dims).to_kind(kind)
}

fn values_of(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).reshape([-1])).unwrap()
}

/// One call's inputs: preds `[N, 3, H, W]` and the four targets.
struct Inputs {
    preds: Tensor,
    targets: [TchTensor; 4],
}

/// What a call gives: loss and terms, and d loss / d preds.
#[derive(Debug, Clone, PartialEq)]
struct Output {
    values: [f64; 4],
    grad: Vec<f64>,
    /// Whether the terms carry a graph (the generic path) or are detached (the fused kernel).
    terms_attached: bool,
}

impl Inputs {
    fn new(
        preds: &[f64],
        targets: [&[f64]; 4],
        (n, h, w): (usize, usize, usize),
        kind: Kind,
    ) -> Self {
        Inputs {
            preds: tensor(preds, &[n, 3, h, w], kind),
            targets: targets.map(|t| TchTensor::from(tensor(t, &[n, h, w], kind))),
        }
    }

    fn try_run(&self, loss: DbLoss, preds: &Tensor) -> Result<Output, LossError> {
        let leaf = TchTensor::from(preds.detach().copy().set_requires_grad(true));
        let [gs, gsm, gt, gtm] = &self.targets;
        let out = loss.forward(DbInput {
            preds: &leaf,
            gt_shrink: gs,
            gt_shrink_mask: gsm,
            gt_thr: gt,
            gt_thr_mask: gtm,
        })?;
        out.loss.backward();
        let term = |name: &str| Backend::to_f64(out.term(name).unwrap()).unwrap();
        let grad = leaf.grad();
        assert!(grad.defined(), "no gradient reached preds");
        assert_eq!(grad.kind(), preds.kind());
        Ok(Output {
            values: [
                Backend::to_f64(&out.loss).unwrap(),
                term("loss_prob"),
                term("loss_db"),
                term("loss_thr"),
            ],
            grad: values_of(&grad),
            terms_attached: out.terms.iter().all(|(_, t)| t.requires_grad()),
        })
    }

    fn run(&self, loss: DbLoss) -> Output {
        self.try_run(loss, &self.preds).unwrap()
    }

    /// Fused against generic: values and gradient within `rel`; with `ties`, the gradient by
    /// its sum, support size and sorted values. Returns the fused output.
    fn compare(&self, loss: DbLoss, rel: f64, ties: bool, what: &str) -> Output {
        let fused = self.run(loss.with_fused(true));
        let generic = self.run(loss.with_fused(false));
        assert!(!fused.terms_attached && generic.terms_attached, "{what}: the paths taken");

        let names = ["loss", "loss_prob", "loss_db", "loss_thr"];
        for (name, (f, g)) in names.iter().zip(fused.values.iter().zip(&generic.values)) {
            assert!(close(*f, *g, rel, 1e-3), "{what} {name}: fused {f} vs generic {g}");
        }
        if ties {
            let sum = |g: &[f64]| g.iter().sum::<f64>();
            let support = |g: &[f64]| g.iter().filter(|&&x| x != 0.0).count();
            let (fs, gs) = (sum(&fused.grad), sum(&generic.grad));
            assert!(close(fs, gs, rel, 1e-3), "{what}: gradient sum {fs} vs {gs}");
            assert_eq!(support(&fused.grad), support(&generic.grad), "{what}: gradient support");
            assert_grad_close(what, &sorted(&fused.grad), &sorted(&generic.grad), rel, 1e-3);
        } else if self.preds.kind() == Kind::Double {
            assert_grad_close(what, &fused.grad, &generic.grad, rel, 1e-3);
        } else {
            // In f32, each element to rel 1e-5 of the generic gradient computed in f64 on the
            // same inputs; libtorch's f32 gradient itself is that close only relative to the
            // gradient's scale (σ' as σ·(1 − σ) cancels for large logits).
            let wide = Inputs {
                preds: self.preds.to_kind(Kind::Double),
                targets: self.targets.each_ref().map(|t| TchTensor::from(t.to_kind(Kind::Double))),
            };
            let exact = wide.run(loss.with_fused(false));
            assert_grad_close(what, &fused.grad, &exact.grad, rel, 1e-3);
            assert_grad_close(what, &fused.grad, &generic.grad, rel, 1e-1);
        }
        fused
    }
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// Every element within `rel` of `want`, relative to the larger of the element and `floor`
/// times the largest element of `want`.
fn assert_grad_close(what: &str, got: &[f64], want: &[f64], rel: f64, floor: f64) {
    assert_eq!(got.len(), want.len(), "{what}: gradient length");
    let floor = want.iter().fold(0.0f64, |m, v| m.max(v.abs())) * floor;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(close(*g, *w, rel, floor), "{what}: gradient[{i}] fused {g} vs generic {w}");
    }
}

fn kind(dtype: Dtype) -> Kind {
    match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
    }
}

fn rel(kind: Kind) -> f64 {
    if kind == Kind::Double {
        1e-9
    } else {
        1e-5
    }
}

fn case_inputs(case: &Case) -> Inputs {
    let inputs = case.inputs();
    let k = kind(case.dtype);
    Inputs {
        preds: tensor(&inputs.preds, &case.preds_shape, k),
        targets: [&inputs.gt_shrink, &inputs.gt_shrink_mask, &inputs.gt_thr, &inputs.gt_thr_mask]
            .map(|t| TchTensor::from(tensor(t, &case.target_shape, k))),
    }
}

/// A seeded batch: probabilities in [0.01, 0.99] (or logits in [−spread, spread]), text with
/// probability `text`, binary masks.
fn batch(
    seed: u64,
    (n, h, w): (usize, usize, usize),
    text: f64,
    logits: Option<f64>,
    kind: Kind,
) -> Inputs {
    let pixels = n * h * w;
    let u = |s: u64| fixture::uniform(seed * 16 + s, pixels);
    let (p, t, b) = (u(0), u(1), u(2));
    let mut preds = Vec::with_capacity(3 * pixels);
    for i in 0..n {
        let image = i * h * w..(i + 1) * h * w;
        match logits {
            Some(spread) => preds.extend(p[image.clone()].iter().map(|u| spread * (2.0 * u - 1.0))),
            None => preds.extend(p[image.clone()].iter().map(|u| 0.01 + 0.98 * u)),
        }
        preds.extend(t[image.clone()].iter().map(|u| 0.2 + 0.6 * u));
        preds.extend_from_slice(&b[image]);
    }
    let below = |s: u64, f: f64| -> Vec<f64> { u(s).iter().map(|&x| f64::from(x < f)).collect() };
    let gt: Vec<f64> = u(5).iter().map(|x| 0.3 + 0.4 * x).collect();
    Inputs::new(&preds, [&below(3, text), &below(4, 0.9), &gt, &below(6, 0.4)], (n, h, w), kind)
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
    let cases = fixture::load();
    assert!(cases.len() >= 20);

    for case in &cases {
        let data = case_inputs(case);
        let loss = DbLoss::from_config(&case.config).unwrap();

        data.compare(loss, rel(kind(case.dtype)), case.has_ties(), &case.name);
    }
}

#[test]
fn every_mode_agrees_in_f32_and_f64_on_several_blocks() {
    // 2 × 96 × 100 = 9600 pixels per image: two blocks per image.
    for kind in [Kind::Float, Kind::Double] {
        for (i, (prob_loss, prob_input)) in MODES.into_iter().enumerate() {
            let logits = (prob_input == ProbInput::Logits).then_some(8.0);
            let data = batch(40 + i as u64, (2, 96, 100), 0.1, logits, kind);
            let loss = DbLoss::new(params(prob_loss, prob_input)).unwrap();

            data.compare(loss, rel(kind), false, &format!("{kind:?} {prob_loss:?} {prob_input:?}"));
        }
    }
}

#[test]
fn saturated_logits_agree() {
    // Logits up to ±40 in f32, where σ rounds to 0 or 1: the losses stay finite and exact. In
    // f64 up to ±19: above 20 libtorch's softplus (the generic path) returns x itself, with
    // gradient 1, which is 2e-9 off the exact σ the kernel computes.
    for (kind, spread) in [(Kind::Float, 40.0), (Kind::Double, 19.0)] {
        for prob_loss in [ProbLoss::BalancedBce, ProbLoss::Dice] {
            let data = batch(9, (2, 30, 40), 0.2, Some(spread), kind);
            let loss = DbLoss::new(params(prob_loss, ProbInput::Logits)).unwrap();

            data.compare(loss, rel(kind), false, &format!("{kind:?} {prob_loss:?} saturated"));
        }
    }
}

#[test]
fn the_benchmark_size_agrees_in_f32() {
    let data = batch(1, (2, 160, 160), 0.1, None, Kind::Float);
    let loss = DbLoss::new(params(ProbLoss::BalancedBce, ProbInput::Probability)).unwrap();

    data.compare(loss, 1e-5, false, "2x3x160x160");
}

#[test]
fn batches_without_text_agree_and_give_no_probability_gradient() {
    for kind in [Kind::Float, Kind::Double] {
        for fallback in [0, 10] {
            let data = batch(3, (2, 16, 16), 0.0, None, kind);
            let mut p = params(ProbLoss::BalancedBce, ProbInput::Probability);
            p.fallback_negative_num = fallback;

            let out = data.compare(DbLoss::new(p).unwrap(), rel(kind), false, "no text");

            let channel0 = (0..2).flat_map(|i| out.grad[i * 768..i * 768 + 256].to_vec());
            let nonzero = channel0.filter(|&g| g != 0.0).count();
            if fallback == 0 {
                assert_eq!(out.values[1], 0.0);
                assert_eq!(nonzero, 0);
            } else {
                // Exactly the ten hardest negatives carry a gradient.
                assert_eq!(nonzero, 10);
            }
        }
    }
}

#[test]
fn an_all_zero_threshold_mask_gives_no_threshold_gradient() {
    let mut data = batch(4, (1, 8, 8), 0.3, None, Kind::Double);
    data.targets[3] = TchTensor::from(Tensor::zeros([1, 8, 8], (Kind::Double, Device::Cpu)));
    let loss = DbLoss::new(params(ProbLoss::BalancedBce, ProbInput::Probability)).unwrap();

    let out = data.compare(loss, 1e-9, false, "zero threshold mask");

    assert_eq!(out.values[3], 0.0);
    assert!(out.grad[64..128].iter().all(|&g| g == 0.0));
}

#[test]
fn soft_masks_agree() {
    for kind in [Kind::Float, Kind::Double] {
        let mut data = batch(5, (2, 24, 20), 0.25, None, kind);
        let soft = |s: u64| {
            let v = fixture::uniform(s, 2 * 24 * 20);
            TchTensor::from(tensor(&v, &[2, 24, 20], kind))
        };
        data.targets[1] = soft(77);
        data.targets[3] = soft(78);

        for (prob_loss, prob_input) in MODES {
            let loss = DbLoss::new(params(prob_loss, prob_input)).unwrap();
            data.compare(loss, rel(kind), false, &format!("soft masks {prob_loss:?}"));
        }
    }
}

#[test]
fn ties_go_to_the_first_negatives_in_index_order() {
    // 3 images of 1 × 40 000 pixels (five blocks each), every probability 0.5: all negatives
    // share the loss ln 2. Text on every 7th pixel: 17 143 positives, so k = 51 429 of the
    // 102 857 negatives, which reaches into the second image (and the second thread).
    let (n, h, w) = (3, 1, 40_000);
    let pixels = n * h * w;
    let text: Vec<f64> = (0..pixels).map(|i| f64::from(i % 7 == 0)).collect();
    let ones = vec![1.0; pixels];
    let preds = vec![0.5; 3 * pixels];
    for kind in [Kind::Float, Kind::Double] {
        let data = Inputs::new(&preds, [&text, &ones, &ones, &ones], (n, h, w), kind);
        let loss = DbLoss::new(params(ProbLoss::BalancedBce, ProbInput::Probability)).unwrap();

        let out = data.compare(loss.with_threads(1), rel(kind), true, &format!("{kind:?} ties"));
        let threaded = data.run(loss.with_threads(3));

        // The mined negatives are the first k negatives of the batch, in row-major order.
        let k = 3 * pixels.div_ceil(7);
        let last = (0..pixels).filter(|i| i % 7 != 0).nth(k - 1).unwrap();
        assert!(last > h * w, "the mined negatives span two images");
        for (i, &t) in text.iter().enumerate() {
            let g = out.grad[(i / (h * w)) * 3 * h * w + i % (h * w)];
            let want = t == 1.0 || i <= last;
            assert_eq!(g != 0.0, want, "{kind:?}: pixel {i}, gradient {g}");
        }
        assert_eq!(threaded, out, "{kind:?}: three threads");
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    // 3 × 256 × 256 pixels: eight blocks per image, and room for six threads of 32 768 pixels;
    // values and gradients bit for bit.
    for kind in [Kind::Float, Kind::Double] {
        for (prob_loss, prob_input) in MODES {
            let logits = (prob_input == ProbInput::Logits).then_some(8.0);
            let data = batch(8, (3, 256, 256), 0.1, logits, kind);
            let loss = DbLoss::new(params(prob_loss, prob_input)).unwrap();
            let one = data.run(loss.with_threads(1));

            for threads in [0, 2, 3, 5, 16] {
                let got = data.run(loss.with_threads(threads));
                assert!(
                    got == one,
                    "{kind:?} {prob_loss:?} {prob_input:?}: {threads} threads differ from one"
                );
            }
        }
    }
}

#[test]
fn half_precision_preds_use_the_kernel_in_f32() {
    let data = batch(6, (2, 12, 10), 0.2, None, Kind::Float);
    let half = data.preds.to_kind(Kind::Half);
    let loss = DbLoss::new(params(ProbLoss::BalancedBce, ProbInput::Probability)).unwrap();

    let fused = data.try_run(loss, &half).unwrap();
    let generic = data.try_run(loss.with_fused(false), &half).unwrap();

    assert!(!fused.terms_attached);
    for (f, g) in fused.values.iter().zip(&generic.values) {
        assert!(close(*f, *g, 1e-5, 1e-3), "{f} vs {g}");
    }
    // The gradient reaches the f16 leaf, rounded to f16 on both paths.
    assert_grad_close("f16", &fused.grad, &generic.grad, 1e-3, 1e-3);
}

#[test]
fn strided_preds_take_the_generic_path() {
    let data = batch(2, (2, 6, 7), 0.3, None, Kind::Double);
    // The same values in a channels-last layout, seen as [N, 3, H, W].
    let strided = data.preds.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]);
    assert!(!strided.is_contiguous());
    let loss = DbLoss::new(params(ProbLoss::BalancedBce, ProbInput::Probability)).unwrap();
    let leaf = TchTensor::from(strided.set_requires_grad(true));
    let [gs, gsm, gt, gtm] = &data.targets;

    let out = loss
        .forward(DbInput {
            preds: &leaf,
            gt_shrink: gs,
            gt_shrink_mask: gsm,
            gt_thr: gt,
            gt_thr_mask: gtm,
        })
        .unwrap();
    let fused = data.run(loss);

    assert!(out.terms.iter().all(|(_, t)| t.requires_grad()), "the generic path");
    assert!(close(Backend::to_f64(&out.loss).unwrap(), fused.values[0], 1e-9, 1e-3));
}

#[test]
fn preds_without_gradient_give_the_same_value() {
    let data = batch(12, (1, 20, 20), 0.2, None, Kind::Float);
    let loss = DbLoss::new(params(ProbLoss::BalancedBce, ProbInput::Probability)).unwrap();
    let preds = TchTensor::from(data.preds.shallow_clone());
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

    assert!(!out.loss.requires_grad());
    assert_eq!(Backend::to_f64(&out.loss).unwrap(), data.run(loss).values[0]);
}

#[test]
fn a_probability_outside_the_unit_interval_is_the_same_error_on_both_paths() {
    let data = batch(13, (2, 4, 5), 0.3, None, Kind::Float);
    let mut values = values_of(&data.preds);
    values[60 + 7] = 1.5; // image 1, channel 0, row 1, column 2
    let bad = tensor(&values, &[2, 3, 4, 5], Kind::Float);
    let loss = DbLoss::new(params(ProbLoss::BalancedBce, ProbInput::Probability)).unwrap();

    let fused = data.try_run(loss, &bad).unwrap_err();
    let generic = data.try_run(loss.with_fused(false), &bad).unwrap_err();

    assert!(
        matches!(fused, LossError::InvalidValue { ref what, ref index, value, .. }
            if what == "preds" && index == &[1, 0, 1, 2] && value == 1.5),
        "{fused}"
    );
    assert_eq!(fused, generic);
}
