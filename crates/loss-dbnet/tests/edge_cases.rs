//! The edge cases of issue 4 and section 2 of `shared/spec/losses.md`, on the ndarray
//! backend, each with the PyTorch lines that gave its expected value. Gradients of the same cases
//! are checked on libtorch in `loss-tch/tests/dbnet_reference.rs`.

use loss_core::config::LossFile;
use loss_core::ndarray_backend::NdTensor;
use loss_core::Loss;
use loss_core::{Backend, DType, LossConfig, LossError};
use loss_dbnet::{
    bce_with_logits, BalancedBceConfig, DbInput, DbLoss, DbNetParams, MaskedInput, MaskedL1Config,
    ProbInput, ProbLoss,
};

fn t(values: &[f64]) -> NdTensor {
    NdTensor::from_f64(values.to_vec(), &[values.len()]).unwrap()
}

fn full(value: f64, shape: &[usize]) -> NdTensor {
    NdTensor::from_f64(vec![value; shape.iter().product()], shape).unwrap()
}

fn balanced(config: BalancedBceConfig, p: &[f64], g: &[f64]) -> Result<f64, LossError> {
    let (p, g, m) = (t(p), t(g), t(&vec![1.0; p.len()]));
    let bce = config.init()?;
    bce.forward(MaskedInput { pred: &p, target: &g, mask: &m })?.loss.to_f64()
}

fn db_forward(
    loss: &DbLoss,
    preds: &NdTensor,
    targets: [&NdTensor; 4],
) -> Result<loss_core::LossOutput<NdTensor>, LossError> {
    loss.forward(DbInput {
        preds,
        gt_shrink: targets[0],
        gt_shrink_mask: targets[1],
        gt_thr: targets[2],
        gt_thr_mask: targets[3],
    })
}

#[test]
fn one_positive_and_the_three_hardest_negatives() {
    let config = BalancedBceConfig::new().with_negative_ratio(3.0);

    let got = balanced(config, &[0.9, 0.6, 0.2, 0.1, 0.8], &[1.0, 0.0, 0.0, 0.0, 0.0]).unwrap();

    // p = torch.tensor([0.9, 0.6, 0.2, 0.1, 0.8], dtype=torch.float64)
    // g = torch.tensor([1., 0, 0, 0, 0], dtype=torch.float64)
    // l = F.binary_cross_entropy(p, g, reduction="none")
    // (((l * g).sum() + torch.topk(l * (1 - g), 3).values.sum()) / (1 + 3 + 1e-6)).item()
    // -> 0.7135579994305731
    assert!((got - 0.7135579994305731).abs() < 1e-15, "{got}");
}

#[test]
fn a_batch_without_text_gives_zero() {
    let got = balanced(BalancedBceConfig::new(), &[0.2, 0.4, 0.6, 0.8], &[0.0; 4]).unwrap();

    // n⁺ = 0 and fallback_negative_num = 0: k = 0, nothing is selected (spec: 0, zero gradient).
    assert_eq!(got, 0.0);
}

#[test]
fn a_batch_without_text_with_fallback_negatives() {
    let config = BalancedBceConfig::new().with_fallback_negative_num(4);

    let got = balanced(config, &[0.2, 0.4, 0.6, 0.8], &[0.0; 4]).unwrap();

    // p = torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=torch.float64)
    // l = F.binary_cross_entropy(p, torch.zeros(4, dtype=torch.float64), reduction="none")
    // (torch.topk(l, 4).values.sum() / (0 + 4 + 1e-6)).item() -> 0.8149242511160512
    assert!((got - 0.8149242511160512).abs() < 1e-15, "{got}");
}

#[test]
fn mining_through_ties_is_exact_in_value() {
    let config = BalancedBceConfig::new().with_negative_ratio(2.0);
    let g = [0.0, 0.0, 0.0, 0.0, 1.0, 0.0];

    let got = balanced(config, &[0.6, 0.6, 0.6, 0.3, 0.9, 0.6], &g).unwrap();
    let permuted = balanced(config, &[0.6, 0.3, 0.6, 0.6, 0.9, 0.6], &g).unwrap();

    // p = torch.tensor([0.6, 0.6, 0.6, 0.3, 0.9, 0.6], dtype=torch.float64)
    // g = torch.tensor([0., 0, 0, 0, 1, 0], dtype=torch.float64)
    // l = F.binary_cross_entropy(p, g, reduction="none")
    // (((l * g).sum() + torch.topk(l * (1 - g), 2).values.sum()) / (1 + 2 + 1e-6)).item()
    // -> 0.6459804444752306
    assert!((got - 0.6459804444752306).abs() < 1e-15, "{got}");
    assert_eq!(got, permuted);
}

#[test]
fn an_all_zero_threshold_mask_gives_zero() {
    let l1 = MaskedL1Config::new().init().unwrap();
    let (pred, target, mask) = (t(&[0.2, 0.9, 0.4]), t(&[0.3, 0.7, 0.5]), t(&[0.0; 3]));

    let out = l1.forward(MaskedInput { pred: &pred, target: &target, mask: &mask }).unwrap();

    // (torch.abs(t - g) * 0).sum() / (0 + 1e-6) -> 0
    assert_eq!(out.loss.to_f64().unwrap(), 0.0);
}

#[test]
fn an_all_zero_threshold_mask_gives_a_zero_term() {
    let loss = DbLoss::new(DbNetParams::default()).unwrap();
    let preds = full(0.5, &[1, 3, 2, 2]);
    let (ones, zeros) = (full(1.0, &[1, 2, 2]), full(0.0, &[1, 2, 2]));

    let out = db_forward(&loss, &preds, [&ones, &ones, &ones, &zeros]).unwrap();

    assert_eq!(out.term("loss_thr").unwrap().to_f64().unwrap(), 0.0);
}

#[test]
fn probabilities_outside_the_unit_interval_are_named() {
    for (values, index, value) in [(vec![0.5, 1.2, 0.3], 1, 1.2), (vec![0.5, 0.3, -0.1], 2, -0.1)] {
        let err = balanced(BalancedBceConfig::new(), &values, &[1.0, 0.0, 0.0]).unwrap_err();

        assert!(
            matches!(err, LossError::InvalidValue { ref what, index: ref i, value: v, .. }
                if what == "pred" && i == &[index] && v == value),
            "{err}"
        );
        assert!(err.to_string().contains(&format!("[{index}]")), "{err}");
    }
}

#[test]
fn probabilities_outside_the_unit_interval_are_named_by_their_index_in_preds() {
    let params = DbNetParams { prob_loss: ProbLoss::BalancedBce, ..DbNetParams::default() };
    let loss = DbLoss::new(params).unwrap();
    let mut values = vec![0.5; 2 * 3 * 2 * 2];
    values[12 + 3] = 1.2; // image 1, channel 0, row 1, column 1
    let preds = NdTensor::from_f64(values, &[2, 3, 2, 2]).unwrap();
    let ones = full(1.0, &[2, 2, 2]);

    let err = db_forward(&loss, &preds, [&ones, &ones, &ones, &ones]).unwrap_err();

    assert!(
        matches!(err, LossError::InvalidValue { ref what, ref index, value, .. }
            if what == "preds" && index == &[1, 0, 1, 1] && value == 1.2),
        "{err}"
    );
}

#[test]
fn logits_are_not_range_checked() {
    let config = BalancedBceConfig::new().with_prob_input(ProbInput::Logits);

    let got = balanced(config, &[3.0, -7.5, 40.0], &[1.0, 0.0, 0.0]).unwrap();

    assert!(got.is_finite() && got > 0.0);
}

#[test]
fn a_half_precision_logit_of_twelve_stays_finite() {
    // Forward on ndarray (values in f64); the same case on real f16 tensors is in loss-tch.
    let z = NdTensor::new(vec![12.0], &[1], DType::F16).unwrap();
    let (y, m) = (t(&[0.0]), t(&[1.0]));
    let config =
        BalancedBceConfig::new().with_prob_input(ProbInput::Logits).with_fallback_negative_num(1);

    let element = bce_with_logits(&z, &y).unwrap().to_f64().unwrap();
    let out = config.init().unwrap().forward(MaskedInput { pred: &z, target: &y, mask: &m });
    let out = out.unwrap().loss;

    // F.binary_cross_entropy_with_logits(torch.tensor([12.0], dtype=torch.float64),
    //     torch.zeros(1, dtype=torch.float64)).item() -> 12.000006144193478
    assert!((element - 12.000006144193478).abs() < 1e-12, "{element}");
    assert_eq!(out.dtype(), DType::F32);
    assert!((out.to_f64().unwrap() - 12.000006144193478 / (1.0 + 1e-6)).abs() < 1e-12);
}

#[test]
fn preds_with_two_channels_are_an_error() {
    let loss = DbLoss::new(DbNetParams::default()).unwrap();
    let preds = full(0.5, &[1, 2, 4, 4]);
    let ones = full(1.0, &[1, 4, 4]);

    let err = db_forward(&loss, &preds, [&ones, &ones, &ones, &ones]).unwrap_err();

    assert!(
        matches!(err, LossError::InvalidShape { ref what, ref got, .. }
            if what == "preds" && got == &[1, 2, 4, 4]),
        "{err}"
    );
}

#[test]
fn preds_that_are_not_four_dimensional_are_an_error() {
    let loss = DbLoss::new(DbNetParams::default()).unwrap();
    let preds = full(0.5, &[3, 4, 4]);
    let ones = full(1.0, &[1, 4, 4]);

    let err = db_forward(&loss, &preds, [&ones, &ones, &ones, &ones]).unwrap_err();

    assert!(matches!(err, LossError::InvalidShape { ref what, .. } if what == "preds"), "{err}");
}

#[test]
fn targets_of_another_size_need_a_downsample_ratio() {
    let loss = DbLoss::new(DbNetParams::default()).unwrap();
    let preds = full(0.5, &[1, 3, 4, 4]);
    let (ones, image) = (full(1.0, &[1, 4, 4]), full(1.0, &[1, 16, 16]));

    let err = db_forward(&loss, &preds, [&ones, &ones, &image, &ones]).unwrap_err();

    assert!(
        matches!(err, LossError::ShapeMismatch { ref what, ref expected, ref got }
            if what.starts_with("gt_thr") && expected == &[1, 4, 4] && got == &[1, 16, 16]),
        "{err}"
    );
    let message = err.to_string();
    assert!(message.contains("[1, 4, 4]") && message.contains("[1, 16, 16]"), "{message}");
}

#[test]
fn the_same_targets_with_a_downsample_ratio_are_rescaled() {
    let params = DbNetParams { downsample_ratio: Some(0.25), ..DbNetParams::default() };
    let loss = DbLoss::new(params).unwrap();
    let preds = full(0.5, &[1, 3, 4, 4]);
    let image = full(1.0, &[1, 16, 16]);

    let out = db_forward(&loss, &preds, [&image, &image, &image, &image]).unwrap();

    // Dice of 0.5 everywhere against all-text: 1 − 2·8 / (8 + 16 + 1e-6); L1: 0.5.
    let dice = 1.0 - 16.0 / (24.0 + 1e-6);
    assert!((out.term("loss_prob").unwrap().to_f64().unwrap() - dice).abs() < 1e-12);
    assert!((out.term("loss_thr").unwrap().to_f64().unwrap() - 8.0 / (16.0 + 1e-6)).abs() < 1e-12);
}

#[test]
fn a_negative_ratio_is_a_config_error() {
    let file = LossFile::from_toml("[loss]\ntype = \"dbnet\"\nnegative_ratio = -1.0\n").unwrap();
    let LossConfig::Dbnet(config) = file.loss else { panic!("expected a dbnet table") };

    let from_config = DbLoss::from_config(&config).unwrap_err();
    let params = DbNetParams { negative_ratio: -1.0, ..DbNetParams::default() };
    let from_params = DbLoss::new(params).unwrap_err();

    for err in [from_config, from_params] {
        assert!(
            matches!(err, LossError::InvalidConfig { ref key, .. } if key == "negative_ratio"),
            "{err}"
        );
    }
}

#[test]
fn the_interface_example_table_builds_a_loss() {
    // The dbnet table of shared/spec/interfaces.md, with the preset.
    let file = LossFile::from_toml(
        r#"
        [loss]
        type = "dbnet"
        preset = "dbnet"
        prob_loss = "balanced_bce"
        prob_input = "probability"
        alpha = 5
        beta = 10.0
        negative_ratio = 3.0
        fallback_negative_num = 0
        eps = 1e-6
        downsample_ratio = 0.25
        "#,
    )
    .unwrap();
    let LossConfig::Dbnet(config) = file.loss else { panic!("expected a dbnet table") };

    let loss = DbLoss::from_config(&config).unwrap();

    let p = loss.params();
    assert_eq!((p.alpha, p.beta, p.prob_loss), (5.0, 10.0, ProbLoss::BalancedBce));
    assert_eq!(p.downsample_ratio, Some(0.25));
}

#[test]
fn defaults_and_preset() {
    let default = DbLoss::from_config(&Default::default()).unwrap();
    let file = LossFile::from_toml("[loss]\ntype = \"dbnet\"\npreset = \"dbnet\"\n").unwrap();
    let LossConfig::Dbnet(config) = file.loss else { panic!("expected a dbnet table") };
    let preset = DbLoss::from_config(&config).unwrap();

    let d = default.params();
    assert_eq!((d.alpha, d.beta, d.prob_loss), (1.0, 1.0, ProbLoss::Dice));
    assert_eq!((d.negative_ratio, d.fallback_negative_num, d.eps), (3.0, 0, 1e-6));
    let p = preset.params();
    assert_eq!((p.alpha, p.beta, p.prob_loss), (5.0, 10.0, ProbLoss::BalancedBce));
}

#[test]
fn losses_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<DbLoss>();
    check::<loss_dbnet::BalancedBce>();
    check::<loss_dbnet::Dice>();
    check::<loss_dbnet::MaskedL1>();
    check::<loss_dbnet::ApproxBinary>();
}
