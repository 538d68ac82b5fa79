//! The DBNet losses of `loss-dbnet` on libtorch against PyTorch: value and gradient with respect
//! to the predictions, for every case of `loss-dbnet/tests/fixtures/cases.json` (written by
//! `loss-dbnet/tests/fixtures/generate.py`), and the edge cases of issue 4 with their gradients.
//!
//! Tolerances: f64 rel 1e-9, f32 rel 1e-5 (gradient elements relative to the larger of the
//! element and 1e-3 of the largest gradient element).

#[path = "../../loss-dbnet/tests/common/fixture.rs"]
mod fixture;

use fixture::{close, Case, Dtype};
use loss_core::{Backend, DbNetParams, Loss, LossError, LossOutput};
use loss_dbnet::{
    BalancedBceConfig, DbInput, DbLoss, DiceConfig, MaskedInput, ProbInput, ProbLoss,
};
use loss_tch::TchTensor;
use tch::{Device, Kind, Tensor};

fn tensor(values: &[f64], shape: &[usize], kind: Kind) -> Tensor {
    let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    Tensor::from_slice(values).reshape(dims).to_kind(kind)
}

fn kind(dtype: Dtype) -> Kind {
    match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
    }
}

fn leaf(values: &[f64], shape: &[usize], kind: Kind) -> TchTensor {
    TchTensor::from(tensor(values, shape, kind).set_requires_grad(true))
}

fn values_of(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).reshape([-1])).unwrap()
}

fn grad_of(t: &TchTensor) -> Vec<f64> {
    let grad = t.grad();
    assert!(grad.defined(), "no gradient reached the input");
    values_of(&grad)
}

fn scalar(t: &TchTensor) -> f64 {
    Backend::to_f64(t).unwrap()
}

/// Runs a fixture case through the fused kernel or the generic formulas: the four values (loss
/// and terms) and d loss / d preds.
fn run_case(case: &Case, fused: bool) -> ([(&'static str, f64); 4], Vec<f64>) {
    let inputs = case.inputs();
    let k = kind(case.dtype);
    let preds = leaf(&inputs.preds, &case.preds_shape, k);
    let target = |v: &[f64]| TchTensor::from(tensor(v, &case.target_shape, k));
    let (gs, gsm, gt, gtm) = (
        target(&inputs.gt_shrink),
        target(&inputs.gt_shrink_mask),
        target(&inputs.gt_thr),
        target(&inputs.gt_thr_mask),
    );
    let loss = DbLoss::from_config(&case.config).unwrap().with_fused(fused);

    let out = loss
        .forward(DbInput {
            preds: &preds,
            gt_shrink: &gs,
            gt_shrink_mask: &gsm,
            gt_thr: &gt,
            gt_thr_mask: &gtm,
        })
        .unwrap_or_else(|e| panic!("{}: {e}", case.name));
    // The fused kernel's terms are detached values; the generic terms keep their graph.
    let prob = out.term("loss_prob").unwrap();
    assert_eq!(prob.requires_grad(), !fused, "{}: the path taken", case.name);
    out.loss.backward();

    let term = |name: &str| scalar(out.term(name).unwrap());
    let values = [
        ("loss", scalar(&out.loss)),
        ("loss_prob", term("loss_prob")),
        ("loss_db", term("loss_db")),
        ("loss_thr", term("loss_thr")),
    ];
    (values, grad_of(&preds))
}

/// Every element within `rel` of `want`, relative to the larger of the element and `floor`
/// times the largest element of `want`.
fn assert_grad_close(name: &str, got: &[f64], want: &[f64], rel: f64, floor: f64) {
    assert_eq!(got.len(), want.len(), "{name}: gradient length");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())) * floor;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(close(*g, *w, rel, scale), "{name}: gradient[{i}] {g} vs {w}");
    }
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn check_case(case: &Case, fused: bool) {
    let rel = match case.dtype {
        Dtype::F32 => 1e-5,
        Dtype::F64 => 1e-9,
    };
    let (values, grad) = run_case(case, fused);
    let name = format!("{} (fused: {fused})", case.name);

    for ((term, got), (_, want)) in values.iter().zip(case.expected.named()) {
        assert!(close(*got, want, rel, 1e-3), "{name} {term}: {got} vs {want}");
    }
    // Mining through tied losses may select other, equal elements than PyTorch did: the
    // gradient is then the same multiset of values on other positions.
    let arrange = |g: Vec<f64>| if case.has_ties() { sorted(g) } else { g };
    let (grad, want, want_f64) = (arrange(grad), arrange(case.grad()), arrange(case.grad_f64()));
    match case.dtype {
        Dtype::F64 => assert_grad_close(&name, &grad, &want, rel, 1e-3),
        Dtype::F32 => {
            // Each element to rel 1e-5 of the f64 gradient on the same inputs; PyTorch's f32
            // gradient itself is that close only relative to the gradient's scale (its fused
            // `sigmoid(z) - y` cancels for saturated logits, where ours computes `-sigmoid(-z)`).
            assert_grad_close(&name, &grad, &want_f64, rel, 1e-3);
            assert_grad_close(&name, &grad, &want, rel, 1e-1);
        }
    }
}

#[test]
fn fixture_cases_match_pytorch_in_value_and_gradient() {
    let cases = fixture::load();
    assert!(cases.len() >= 20, "{} cases", cases.len());

    for case in &cases {
        check_case(case, true);
    }
}

#[test]
fn fixture_cases_match_pytorch_on_the_generic_path() {
    for case in &fixture::load() {
        check_case(case, false);
    }
}

// ------------------------------------------------------------------------------------------
// Edge cases, with gradients

fn balanced_bce(
    config: BalancedBceConfig,
    p: &[f64],
    g: &[f64],
    kind: Kind,
) -> (Result<LossOutput<TchTensor>, LossError>, TchTensor) {
    let n = [p.len()];
    let pred = leaf(p, &n, kind);
    let target = TchTensor::from(tensor(g, &n, kind));
    let mask = TchTensor::from(tensor(&vec![1.0; p.len()], &n, kind));
    let bce = config.init().unwrap();
    let out = bce.forward(MaskedInput { pred: &pred, target: &target, mask: &mask });
    (out, pred)
}

#[test]
fn one_positive_and_the_three_hardest_negatives() {
    let config = BalancedBceConfig::new().with_negative_ratio(3.0);

    let (out, pred) =
        balanced_bce(config, &[0.9, 0.6, 0.2, 0.1, 0.8], &[1.0, 0.0, 0.0, 0.0, 0.0], Kind::Double);
    let loss = out.unwrap().loss;
    loss.backward();

    // p = torch.tensor([0.9, 0.6, 0.2, 0.1, 0.8], dtype=torch.float64, requires_grad=True)
    // g = torch.tensor([1., 0, 0, 0, 0], dtype=torch.float64)
    // l = F.binary_cross_entropy(p, g, reduction="none")
    // y = ((l * g).sum() + torch.topk(l * (1 - g), 3).values.sum()) / (1 + 3 + 1e-6)
    // y.backward(); y.item(), p.grad.tolist()
    // -> 0.7135579994305731, [-0.2777777083333507, 0.624999843750039, 0.31249992187501946, 0.0,
    //    1.2499996875000783]
    assert!(close(scalar(&loss), 0.7135579994305731, 1e-12, 1.0));
    let want =
        [-0.2777777083333507, 0.624999843750039, 0.31249992187501946, 0.0, 1.2499996875000783];
    assert_grad_close("ratio 3", &grad_of(&pred), &want, 1e-12, 1e-3);
}

#[test]
fn a_batch_without_text_gives_zero_with_zero_gradient() {
    let (out, pred) =
        balanced_bce(BalancedBceConfig::new(), &[0.2, 0.4, 0.6, 0.8], &[0.0; 4], Kind::Double);
    let loss = out.unwrap().loss;
    loss.backward();

    assert_eq!(scalar(&loss), 0.0);
    assert_eq!(grad_of(&pred), vec![0.0; 4]);
}

#[test]
fn a_batch_without_text_with_fallback_negatives() {
    let config = BalancedBceConfig::new().with_fallback_negative_num(4);

    let (out, pred) = balanced_bce(config, &[0.2, 0.4, 0.6, 0.8], &[0.0; 4], Kind::Double);
    let loss = out.unwrap().loss;
    loss.backward();

    // p = torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=torch.float64, requires_grad=True)
    // l = F.binary_cross_entropy(p, torch.zeros(4, dtype=torch.float64), reduction="none")
    // y = torch.topk(l, 4).values.sum() / (0 + 4 + 1e-6); y.backward()
    // -> 0.8149242511160512, [0.31249992187501946, 0.41666656250002604, 0.624999843750039,
    //    1.2499996875000783]
    assert!(close(scalar(&loss), 0.8149242511160512, 1e-12, 1.0));
    let want = [0.31249992187501946, 0.41666656250002604, 0.624999843750039, 1.2499996875000783];
    assert_grad_close("fallback 4", &grad_of(&pred), &want, 1e-12, 1e-3);
}

#[test]
fn a_batch_without_text_gives_a_zero_gradient_through_the_whole_loss() {
    // Backward from one term: the generic path, whose terms stay attached to the graph (the
    // fused path's terms are detached values; its total is checked in `dbnet_fused.rs`).
    let params = DbNetParams { prob_loss: ProbLoss::BalancedBce, ..DbNetParams::default() };
    let loss = DbLoss::new(params).unwrap().with_fused(false);
    let preds = leaf(&[0.3; 3 * 4], &[1, 3, 2, 2], Kind::Double);
    let zeros = TchTensor::from(tensor(&[0.0; 4], &[1, 2, 2], Kind::Double));
    let ones = TchTensor::from(tensor(&[1.0; 4], &[1, 2, 2], Kind::Double));

    let out = loss
        .forward(DbInput {
            preds: &preds,
            gt_shrink: &zeros,
            gt_shrink_mask: &ones,
            gt_thr: &ones,
            gt_thr_mask: &ones,
        })
        .unwrap();
    let prob = out.term("loss_prob").unwrap();
    prob.backward();

    assert_eq!(scalar(prob), 0.0);
    assert_eq!(grad_of(&preds), vec![0.0; 12]);
}

#[test]
fn an_all_zero_threshold_mask_gives_zero_with_zero_gradient() {
    // Backward from one term: the generic path (see above).
    let loss = DbLoss::new(DbNetParams::default()).unwrap().with_fused(false);
    let preds = leaf(&[0.4; 3 * 4], &[1, 3, 2, 2], Kind::Double);
    let zeros = TchTensor::from(tensor(&[0.0; 4], &[1, 2, 2], Kind::Double));
    let ones = TchTensor::from(tensor(&[1.0; 4], &[1, 2, 2], Kind::Double));

    let out = loss
        .forward(DbInput {
            preds: &preds,
            gt_shrink: &ones,
            gt_shrink_mask: &ones,
            gt_thr: &ones,
            gt_thr_mask: &zeros,
        })
        .unwrap();
    let thr = out.term("loss_thr").unwrap();
    thr.backward();

    assert_eq!(scalar(thr), 0.0);
    assert_eq!(grad_of(&preds), vec![0.0; 12]);
}

#[test]
fn an_empty_target_and_prediction_give_a_dice_of_one_with_zero_gradient() {
    let dice = DiceConfig::new().init().unwrap();
    let pred = leaf(&[0.0; 6], &[2, 3], Kind::Double);
    let target = TchTensor::from(tensor(&[0.0; 6], &[2, 3], Kind::Double));
    let mask = TchTensor::from(tensor(&[1.0; 6], &[2, 3], Kind::Double));

    let out = dice.forward(MaskedInput { pred: &pred, target: &target, mask: &mask }).unwrap();
    out.loss.backward();

    assert_eq!(scalar(&out.loss), 1.0);
    assert_eq!(grad_of(&pred), vec![0.0; 6]);
}

#[test]
fn probabilities_of_exactly_zero_and_one_keep_finite_gradients() {
    for kind in [Kind::Float, Kind::Double] {
        let p = [0.0, 1.0, 0.0, 1.0];
        let g = [0.0, 1.0, 1.0, 0.0];
        let pred = leaf(&p, &[4], kind);
        let target = TchTensor::from(tensor(&g, &[4], kind));

        let loss = loss_dbnet::bce_with_probabilities(&pred, &target).unwrap().sum_all().unwrap();
        loss.backward();

        // F.binary_cross_entropy(torch.tensor([0., 1, 0, 1]), torch.tensor([0., 1, 1, 0]),
        //     reduction="none") -> tensor([0., 0., 100., 100.])
        // Gradients: those of -ln(1 - p) and -ln(p) where unclamped (1 and -1), 0 where the
        // log is clamped at -100; PyTorch's own backward gives [0, 0, -1e12, 1e12] here.
        assert_eq!(scalar(&loss), 200.0);
        assert_eq!(grad_of(&pred), vec![1.0, -1.0, 0.0, 0.0]);
    }
}

#[test]
fn probabilities_outside_the_unit_interval_are_named() {
    for (values, index, value) in [([0.5, 1.2, 0.3], 1, 1.2f64), ([0.5, 0.3, -0.1], 2, -0.1)] {
        let (out, _) =
            balanced_bce(BalancedBceConfig::new(), &values, &[1.0, 0.0, 0.0], Kind::Double);

        let err = out.unwrap_err();
        assert!(
            matches!(err, LossError::InvalidValue { ref what, index: ref i, value: v, .. }
                if what == "pred" && i == &[index] && v == value),
            "{err}"
        );
    }
}

#[test]
fn a_half_precision_logit_of_twelve_stays_finite() {
    let logits =
        BalancedBceConfig::new().with_prob_input(ProbInput::Logits).with_fallback_negative_num(1);

    let (out, z) = balanced_bce(logits, &[12.0], &[0.0], Kind::Half);
    let loss = out.unwrap().loss;
    loss.backward();
    let (element, _) = balanced_bce(logits.with_eps(1e-12), &[12.0], &[0.0], Kind::Half);
    let element = scalar(&element.unwrap().loss);

    // z = torch.tensor([12.0], dtype=torch.half, requires_grad=True)
    // F.binary_cross_entropy_with_logits(z.float(), torch.zeros(1)).item() -> 12.000005722045898
    // y = F.binary_cross_entropy_with_logits(z.float(), torch.zeros(1), reduction="none").sum()
    //     / (0 + 1 + 1e-6); y.backward(); y.item(), z.grad -> 11.999994277954102, [1.] (half)
    assert_eq!(loss.kind(), Kind::Float);
    assert!(close(element, 12.000005722045898, 1e-7, 1.0), "{element}");
    assert!(close(scalar(&loss), 11.999994277954102, 1e-7, 1.0));
    assert_eq!(z.grad().kind(), Kind::Half);
    assert_eq!(grad_of(&z), vec![1.0]);
}

#[test]
fn the_probability_path_saturates_in_half_precision() {
    // σ(12) rounds to 1 in f16, so BCE on the probability hits the −100 clamp: finite, but 100.
    // F.binary_cross_entropy(torch.sigmoid(torch.tensor([12.0], dtype=torch.half)).float(),
    //     torch.zeros(1)).item() -> 100.0
    let p = Tensor::from_slice(&[12.0f64]).to_kind(Kind::Half).sigmoid().to_kind(Kind::Double);
    let config = BalancedBceConfig::new().with_fallback_negative_num(1).with_eps(1e-12);

    let (out, _) = balanced_bce(config, &values_of(&p), &[0.0], Kind::Double);

    assert!(close(scalar(&out.unwrap().loss), 100.0, 1e-9, 1.0));
}

#[test]
fn preds_with_two_channels_are_an_error() {
    let loss = DbLoss::new(DbNetParams::default()).unwrap();
    let preds = leaf(&[0.5; 2 * 4], &[1, 2, 2, 2], Kind::Float);
    let ones = TchTensor::from(tensor(&[1.0; 4], &[1, 2, 2], Kind::Float));

    let err = loss
        .forward(DbInput {
            preds: &preds,
            gt_shrink: &ones,
            gt_shrink_mask: &ones,
            gt_thr: &ones,
            gt_thr_mask: &ones,
        })
        .unwrap_err();

    assert!(matches!(err, LossError::InvalidShape { ref what, .. } if what == "preds"), "{err}");
}

#[test]
fn integer_preds_are_an_error() {
    let loss = DbLoss::new(DbNetParams::default()).unwrap();
    let preds = TchTensor::from(Tensor::zeros([1, 3, 2, 2], (Kind::Int64, Device::Cpu)));
    let ones = TchTensor::from(tensor(&[1.0; 4], &[1, 2, 2], Kind::Float));

    let err = loss
        .forward(DbInput {
            preds: &preds,
            gt_shrink: &ones,
            gt_shrink_mask: &ones,
            gt_thr: &ones,
            gt_thr_mask: &ones,
        })
        .unwrap_err();

    assert!(matches!(err, LossError::UnsupportedDtype { ref what, .. } if what == "preds"));
}

#[test]
fn integer_targets_are_converted() {
    let loss = DbLoss::new(DbNetParams::default()).unwrap();
    let preds = leaf(&[0.5; 3 * 4], &[1, 3, 2, 2], Kind::Float);
    let ones = TchTensor::from(Tensor::ones([1, 2, 2], (Kind::Uint8, Device::Cpu)));

    let out = loss
        .forward(DbInput {
            preds: &preds,
            gt_shrink: &ones,
            gt_shrink_mask: &ones,
            gt_thr: &ones,
            gt_thr_mask: &ones,
        })
        .unwrap();

    // Dice of 0.5 against all-text, twice (prob and db), and L1 of 0.5.
    let dice = 1.0 - 4.0 / (6.0 + 1e-6);
    let want = 2.0 * dice + 2.0 / (4.0 + 1e-6);
    assert!(close(scalar(&out.loss), want, 1e-6, 1.0));
}

#[cfg(feature = "cuda-tests")]
#[test]
fn targets_on_another_device_are_an_error() {
    let loss = DbLoss::new(DbNetParams::default()).unwrap();
    let preds =
        TchTensor::from(tensor(&[0.5; 12], &[1, 3, 2, 2], Kind::Float).to_device(Device::Cuda(0)));
    let cpu = TchTensor::from(tensor(&[1.0; 4], &[1, 2, 2], Kind::Float));

    let err = loss
        .forward(DbInput {
            preds: &preds,
            gt_shrink: &cpu,
            gt_shrink_mask: &cpu,
            gt_thr: &cpu,
            gt_thr_mask: &cpu,
        })
        .unwrap_err();

    assert!(matches!(err, LossError::DeviceMismatch { ref what, .. } if what == "gt_shrink"));
}

#[cfg(feature = "cuda-tests")]
#[test]
fn fixture_cases_match_pytorch_on_cuda() {
    // Values only at the fixtures' tolerance: the CUDA kernels sum in another order.
    for case in fixture::load() {
        let inputs = case.inputs();
        let k = kind(case.dtype);
        let on_gpu =
            |v: &[f64], s: &[usize]| TchTensor::from(tensor(v, s, k).to_device(Device::Cuda(0)));
        let preds = on_gpu(&inputs.preds, &case.preds_shape);
        let targets: Vec<TchTensor> =
            [&inputs.gt_shrink, &inputs.gt_shrink_mask, &inputs.gt_thr, &inputs.gt_thr_mask]
                .iter()
                .map(|v| on_gpu(v, &case.target_shape))
                .collect();
        let loss = DbLoss::from_config(&case.config).unwrap();

        let out = loss
            .forward(DbInput {
                preds: &preds,
                gt_shrink: &targets[0],
                gt_shrink_mask: &targets[1],
                gt_thr: &targets[2],
                gt_thr_mask: &targets[3],
            })
            .unwrap();

        let rel = if case.dtype == Dtype::F32 { 1e-5 } else { 1e-9 };
        let got = scalar(&out.loss);
        assert!(close(got, case.expected.loss, rel, 1e-3), "{}: {got}", case.name);
    }
}
