//! The edge cases of issue 3 and `shared/spec/losses.md` section 1, on the ndarray backend.
//! Each expected value says where it comes from; gradients of the same cases are checked on
//! libtorch in `loss-tch/tests/multilabel_reference.rs`.

mod common;

use loss_core::config::LossFile;
use loss_core::ndarray_backend::NdTensor;
use loss_core::{Backend, DType, Loss, LossConfig, LossError, MultiLabelConfig};
use loss_multilabel::{MultiLabelInput, ResampleLoss};

fn t(values: &[f64], shape: &[usize]) -> NdTensor {
    NdTensor::from_f64(values.to_vec(), shape).unwrap()
}

fn config(toml: &str) -> MultiLabelConfig {
    match LossFile::from_toml(&format!("[loss]\ntype = \"multilabel\"\n{toml}")).unwrap().loss {
        LossConfig::Multilabel(c) => c,
        LossConfig::Dbnet(_) => unreachable!("a multilabel table"),
    }
}

fn loss(toml: &str) -> ResampleLoss {
    ResampleLoss::from_config(&config(toml)).unwrap()
}

fn forward(loss: &ResampleLoss, z: &NdTensor, y: &NdTensor) -> Result<NdTensor, LossError> {
    loss.forward(MultiLabelInput::new(z, y)).map(|out| out.loss)
}

#[test]
fn ntr_bias_for_the_issue_example() {
    let plain = loss("class_freq = [10, 50, 90]\ntrain_num = 100\n[loss.ntr]\nkappa = 0.05\n");
    let halved = loss(
        "class_freq = [10, 50, 90]\ntrain_num = 100\n[loss.ntr]\nkappa = 0.05\nlambda = 2.0\n\
         bias_over_lambda = true\n",
    );

    let nu = plain.ntr_bias().unwrap();
    let nu_half = halved.ntr_bias().unwrap();

    // PyTorch (generate.py, `checks`): -0.05 * torch.log(100 / torch.tensor([10., 50., 90.],
    // dtype=torch.float64) - 1) = [-0.10986122886681099, -0.0, 0.10986122886681096], and half.
    let want = common::checks()["ntr_bias_10_50_90"].clone();
    let want: Vec<f64> = want.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    for c in 0..3 {
        assert!((nu[c] - want[c]).abs() <= 1e-16, "{nu:?} vs {want:?}");
        assert!((nu_half[c] - want[c] / 2.0).abs() <= 1e-16, "{nu_half:?}");
    }
    assert!((nu[0] + 0.1098612).abs() < 1e-7 && nu[1] == 0.0 && (nu[2] - 0.1098612).abs() < 1e-7);
}

#[test]
fn class_freq_of_the_wrong_length_is_an_error() {
    let loss = loss("class_freq = [10, 50]\ntrain_num = 100\n[loss.ntr]\n");
    let z = t(&[0.0; 3], &[1, 3]);
    let y = t(&[1.0, 0.0, 0.0], &[1, 3]);

    let err = forward(&loss, &z, &y).unwrap_err();

    assert_eq!(err, LossError::ClassCountMismatch { expected: 3, got: 2 });
}

#[test]
fn a_zero_count_under_ntr_names_the_class() {
    let err = ResampleLoss::from_config(&config(
        "class_freq = [10, 0, 90]\ntrain_num = 100\n[loss.ntr]\n",
    ))
    .unwrap_err();

    assert!(
        matches!(err, LossError::InvalidClassFreq { class: 1, value, .. } if value == 0.0),
        "{err}"
    );
}

#[test]
fn a_count_not_below_train_num_under_ntr_names_the_class() {
    let err = ResampleLoss::from_config(&config(
        "class_freq = [10, 50, 100]\ntrain_num = 100\n[loss.ntr]\n",
    ))
    .unwrap_err();

    assert!(
        matches!(err, LossError::InvalidClassFreq { class: 2, value, .. } if value == 100.0),
        "{err}"
    );
    assert!(err.to_string().contains("class 2"), "{err}");
}

#[test]
fn class_balanced_with_an_unseen_class_names_class_4() {
    let cfg = config(
        "class_freq = [310, 2489, 114, 17, 0, 725]\ntrain_num = 7770\n[loss.reweight]\n\
         mode = \"class_balanced\"\nbeta = 0.9\n",
    );

    let err = ResampleLoss::from_config(&cfg).unwrap_err();

    assert!(
        matches!(err, LossError::InvalidClassFreq { class: 4, value, .. } if value == 0.0),
        "{err}"
    );
    assert!(err.to_string().contains("class 4"), "{err}");
}

#[test]
fn focal_gamma_zero_on_a_saturated_logit() {
    let loss = loss("reduction = \"sum\"\n[loss.focal]\ngamma = 0.0\nalpha = 0.5\n");
    let z = t(&[18.0], &[1, 1]);
    let y = t(&[1.0], &[1, 1]);

    let value = forward(&loss, &z, &y).unwrap().to_f64().unwrap();

    // PyTorch (generate.py, `checks`): 0.5 * F.binary_cross_entropy_with_logits(
    //     torch.tensor([[18.]], dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64))
    // = 7.614989814368244e-09.
    let want = common::checks()["focal_gamma0_logit18"]["value"].as_f64().unwrap();
    assert!((value - want).abs() <= 1e-9 * want, "{value:e} vs {want:e}");
    assert!((value - 7.61499e-9).abs() < 1e-14);

    // Its gradient, −0.5 · σ(−18) = −7.6149897e-9, by central differences here (exactly on
    // libtorch in loss-tch's multilabel_reference.rs).
    let h = 1e-3;
    let at = |x: f64| forward(&loss, &t(&[x], &[1, 1]), &y).unwrap().to_f64().unwrap();
    let grad = (at(18.0 + h) - at(18.0 - h)) / (2.0 * h);
    assert!((grad + 7.61499e-9).abs() < 1e-14, "{grad:e}");
}

#[test]
fn targets_outside_zero_one_name_the_value() {
    let z = t(&[0.0; 3], &[1, 3]);
    let y = t(&[2.0, 0.0, -1.0], &[1, 3]);

    for toml in ["", "[loss.focal]\n"] {
        let err = forward(&loss(toml), &z, &y).unwrap_err();

        let LossError::InvalidValue { ref what, ref index, value, .. } = err else {
            panic!("expected InvalidValue, got {err}");
        };
        assert_eq!((what.as_str(), index.as_slice(), value), ("targets", &[0, 0][..], 2.0));
        assert!(err.to_string().contains(": 2 "), "{err}");
    }
}

#[test]
fn soft_targets_only_for_plain_bce() {
    let z = t(&[0.3, -0.2], &[1, 2]);
    let y = t(&[0.25, 1.0], &[1, 2]);

    assert!(forward(&loss(""), &z, &y).is_ok());
    let err = forward(&loss("[loss.focal]\n"), &z, &y).unwrap_err();

    assert!(matches!(err, LossError::InvalidValue { value, .. } if value == 0.25), "{err}");
}

#[test]
fn nan_logits_name_the_position() {
    let z = t(&[0.0, 1.0, 2.0, 3.0, f64::NAN, 5.0], &[2, 3]);
    let y = t(&[0.0; 6], &[2, 3]);

    let err = forward(&loss(""), &z, &y).unwrap_err();

    assert!(
        matches!(err, LossError::InvalidValue { ref what, ref index, .. } if what == "logits" && *index == vec![1, 1]),
        "{err}"
    );
    assert!(err.to_string().contains("[1, 1]"), "{err}");
}

#[test]
fn check_finite_off_skips_the_check() {
    let z = t(&[f64::NAN, 0.0], &[1, 2]);
    let y = t(&[1.0, 0.0], &[1, 2]);

    let value = forward(&loss("check_finite = false\n"), &z, &y).unwrap().to_f64().unwrap();

    // No error and no host-side scan: the NaN flows through, as in PyTorch.
    assert!(value.is_nan());
}

#[test]
fn shape_mismatch_names_both_shapes() {
    let z = t(&[0.0; 6], &[2, 3]);
    let y = t(&[0.0; 2], &[2, 1]);

    let err = forward(&loss(""), &z, &y).unwrap_err();

    assert!(
        matches!(err, LossError::ShapeMismatch { ref expected, ref got, .. } if *expected == vec![2, 3] && *got == vec![2, 1]),
        "{err}"
    );
    assert!(err.to_string().contains("[2, 3]") && err.to_string().contains("[2, 1]"), "{err}");
}

#[test]
fn logits_must_be_two_dimensional() {
    let z = t(&[0.0; 3], &[3]);

    let err = forward(&loss(""), &z, &z).unwrap_err();

    assert!(matches!(err, LossError::InvalidShape { ref what, .. } if what == "logits"), "{err}");
}

#[test]
fn integer_logits_are_rejected() {
    let z = NdTensor::new(vec![1.0, 0.0], &[1, 2], DType::Integer).unwrap();
    let y = t(&[1.0, 0.0], &[1, 2]);

    let err = forward(&loss(""), &z, &y).unwrap_err();

    assert!(
        matches!(err, LossError::UnsupportedDtype { ref what, .. } if what == "logits"),
        "{err}"
    );
}

#[test]
fn integer_targets_are_accepted() {
    let z = t(&[0.5, -0.5], &[1, 2]);
    let y = NdTensor::new(vec![1.0, 0.0], &[1, 2], DType::Integer).unwrap();
    let y_float = t(&[1.0, 0.0], &[1, 2]);
    let loss = loss("preset = \"focal\"\n");

    let got = forward(&loss, &z, &y).unwrap().to_f64().unwrap();

    assert_eq!(got, forward(&loss, &z, &y_float).unwrap().to_f64().unwrap());
}

#[test]
fn empty_batch_sums_to_zero_and_has_no_mean() {
    let z = t(&[], &[0, 3]);
    let y = t(&[], &[0, 3]);
    let db = "preset = \"db\"\nclass_freq = [10, 50, 90]\ntrain_num = 100\n";

    let sum = forward(&loss(&format!("{db}reduction = \"sum\"\n")), &z, &y).unwrap();
    let none = forward(&loss(&format!("{db}reduction = \"none\"\n")), &z, &y).unwrap();
    let mean = forward(&loss(db), &z, &y).unwrap_err();

    assert_eq!(sum.to_f64().unwrap(), 0.0);
    assert_eq!(none.shape(), vec![0, 3]);
    assert!(matches!(mean, LossError::EmptyMean { ref shape } if *shape == vec![0, 3]), "{mean}");
}

#[test]
fn avg_factor_divides_the_sum() {
    let z = t(&[0.3, -1.0, 2.0, 0.1], &[2, 2]);
    let y = t(&[1.0, 0.0, 0.0, 1.0], &[2, 2]);
    let sum = forward(&loss("reduction = \"sum\"\n"), &z, &y).unwrap().to_f64().unwrap();
    let mean = loss("");

    let got = mean.forward(MultiLabelInput::new(&z, &y).with_avg_factor(2.5)).unwrap().loss;
    let bad = mean.forward(MultiLabelInput::new(&z, &y).with_avg_factor(0.0)).unwrap_err();

    assert!((got.to_f64().unwrap() - sum / 2.5).abs() < 1e-15);
    assert!(
        matches!(bad, LossError::InvalidConfig { ref key, .. } if key == "avg_factor"),
        "{bad}"
    );
}

#[test]
fn negative_or_misshapen_weights_are_errors() {
    let z = t(&[0.0; 4], &[2, 2]);
    let y = t(&[1.0, 0.0, 0.0, 1.0], &[2, 2]);
    let negative = t(&[1.0, 1.0, -0.5, 1.0], &[2, 2]);
    let row = t(&[1.0, 1.0], &[1, 2]);
    let loss = loss("");

    let err = loss.forward(MultiLabelInput::new(&z, &y).with_weight(&negative)).unwrap_err();
    let shape = loss.forward(MultiLabelInput::new(&z, &y).with_weight(&row)).unwrap_err();

    assert!(
        matches!(err, LossError::InvalidValue { ref what, ref index, value, .. } if what == "weight" && *index == vec![1, 0] && value == -0.5),
        "{err}"
    );
    assert!(matches!(shape, LossError::ShapeMismatch { .. }), "{shape}");
}

#[test]
fn pos_weight_of_the_wrong_length_is_an_error() {
    let z = t(&[0.0; 3], &[1, 3]);
    let y = t(&[1.0, 0.0, 0.0], &[1, 3]);

    let err = forward(&loss("pos_weight = [1.0, 2.0]\n"), &z, &y).unwrap_err();

    assert!(
        matches!(err, LossError::InvalidShape { ref what, ref got, .. } if what == "pos_weight" && *got == vec![2]),
        "{err}"
    );
}

#[test]
fn the_callers_logits_are_unchanged() {
    let values = [1.0, -2.0, 0.5, 3.0, 0.0, -1.0];
    let z = t(&values, &[2, 3]);
    let y = t(&[1.0, 0.0, 0.0, 0.0, 1.0, 1.0], &[2, 3]);

    forward(&loss("preset = \"db\"\nclass_freq = [10, 50, 90]\ntrain_num = 100\n"), &z, &y)
        .unwrap();

    assert_eq!(z.to_vec_f64().unwrap(), values);
}

#[test]
fn rows_without_positive_labels_never_give_nan() {
    let z = t(&[0.5, -0.5, 1.0, 0.2, -3.0, 0.0], &[2, 3]);
    let y = t(&[0.0, 0.0, 0.0, 0.0, 0.0, 0.0], &[2, 3]);
    let stats = "class_freq = [1, 50, 99]\ntrain_num = 100\n";
    let reweights = [
        "mode = \"class_balanced\"\nbeta = 0.9\ncb_mode = \"average_n\"",
        "mode = \"class_balanced\"\nbeta = 0.9\ncb_mode = \"average_w\"",
        "mode = \"class_balanced\"\nbeta = 0.0\ncb_mode = \"min_n\"",
        "mode = \"rebalance\"\nbeta = 0.0",
        "mode = \"rebalance\"\nnorm = \"by_instance\"",
    ];

    for rw in reweights {
        let loss =
            loss(&format!("{stats}reduction = \"none\"\n[loss.ntr]\n[loss.reweight]\n{rw}\n"));

        let values = forward(&loss, &z, &y).unwrap().to_vec_f64().unwrap();

        assert!(values.iter().all(|v| v.is_finite() && *v > 0.0), "{rw}: {values:?}");
    }
}
