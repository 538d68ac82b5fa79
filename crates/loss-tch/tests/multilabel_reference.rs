//! `loss_multilabel::ResampleLoss` on libtorch against PyTorch: value and gradient with respect
//! to the logits for every case of `loss-multilabel/tests/fixtures/multilabel.json` (written by
//! `generate.py` beside it), the edge cases that involve autograd, and the property that
//! gradients stay finite.
//!
//! Tolerances: relative 1e-9 (f64) and 1e-5 (f32), with a floor of 1e-13 (f64) or 1e-7 (f32)
//! times the largest magnitude of the compared array (`common::Tolerance`), for entries many
//! orders below the array's scale. Gradient entries whose regularised logit lies past 20 get
//! 2.1e-9 more, relative: the fixtures carry libtorch's softplus, which returns `x` there, and
//! the default (fused) path evaluates it exactly (`common::SOFTPLUS_THRESHOLD_GAP`).
//!
//! With the `cuda-tests` feature, the same cases also run on `cuda:0` against the CPU.

#[path = "../../loss-multilabel/tests/common/mod.rs"]
mod common;

use common::scenario::{scenario, Scenario};
use common::{assert_close, assert_grad_close_exact_softplus, cases, regularised_logits, Case};
use loss_core::{Backend, DType, Loss, LossError, LossOutput, MultiLabelParams, Reduction};
use loss_multilabel::{MultiLabelInput, ResampleLoss};
use loss_tch::TchTensor;
use proptest::prelude::*;
use tch::{Device, Kind, Tensor};

/// A tensor of `shape` from `values`, in the case's element type, on `device`.
fn tensor(values: &[f64], shape: &[usize], kind: Kind, device: Device) -> Tensor {
    let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    let t = match kind {
        Kind::Double => Tensor::from_slice(values),
        _ => Tensor::from_slice(&values.iter().map(|&v| v as f32).collect::<Vec<f32>>()),
    };
    t.reshape(dims).to_device(device)
}

fn kind_of(case: &Case) -> Kind {
    if case.is_f64() {
        Kind::Double
    } else {
        Kind::Float
    }
}

fn to_vec(t: &Tensor) -> Vec<f64> {
    let flat = t.to_kind(Kind::Double).to_device(Device::Cpu).reshape([-1]);
    Vec::<f64>::try_from(&flat).unwrap()
}

/// The case's loss and the gradient of its (summed, under `none`) value w.r.t. a fresh leaf of
/// logits requiring grad.
fn run(case: &Case, device: Device) -> (Vec<f64>, Vec<f64>) {
    let kind = kind_of(case);
    let loss = ResampleLoss::from_config(&case.config).unwrap();
    let logits = tensor(&case.logits, &case.shape, kind, device).set_requires_grad(true);
    let z = TchTensor::from(logits.shallow_clone());
    let y = TchTensor::from(tensor(&case.targets, &case.shape, kind, device));
    let w = case.weight.as_ref().map(|w| TchTensor::from(tensor(w, &case.shape, kind, device)));
    let input = MultiLabelInput {
        logits: &z,
        targets: &y,
        weight: w.as_ref(),
        avg_factor: case.avg_factor,
    };

    let out: LossOutput<TchTensor> =
        loss.forward(input).unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let value = to_vec(&out.loss);
    out.loss.sum(out.loss.kind()).backward();

    (value, to_vec(&logits.grad()))
}

fn check_cases(f64_cases: bool) {
    let selected: Vec<Case> = cases().into_iter().filter(|c| c.is_f64() == f64_cases).collect();
    assert!(selected.len() >= 25, "{} cases", selected.len());
    for case in &selected {
        let (value, grad) = run(case, Device::Cpu);

        assert_close(&format!("{} value", case.name), &value, &case.loss, case.tolerance());
        // The default construction takes the fused path, whose softplus is exact past 20.
        assert_grad_close_exact_softplus(
            &format!("{} grad", case.name),
            &grad,
            &case.grad,
            case.tolerance(),
            &regularised_logits(case),
        );
    }
}

#[test]
fn values_and_gradients_match_pytorch_in_f64() {
    check_cases(true);
}

#[test]
fn values_and_gradients_match_pytorch_in_f32() {
    check_cases(false);
}

fn focal_gamma_zero() -> ResampleLoss {
    let mut params = MultiLabelParams { reduction: Reduction::Sum, ..MultiLabelParams::default() };
    params.focal = Some(loss_core::config::Focal { gamma: 0.0, alpha: 0.5 });
    ResampleLoss::new(params).unwrap()
}

/// Issue 3: focal with γ = 0 on logit 18, target 1, α = 0.5 gives 7.61499e-9 with gradient
/// −7.61499e-9, finite, in both precisions. From PyTorch (generate.py, `checks`):
/// `z = torch.tensor([[18.]], dtype=torch.float64, requires_grad=True)`;
/// `(0.5 * F.binary_cross_entropy_with_logits(z, torch.ones_like(z))).sum().backward()` gives
/// 7.614989814368244e-09 and `z.grad` −7.614989749882284e-09.
#[test]
fn focal_gamma_zero_on_logit_18() {
    let checks = common::checks();
    let want_value = checks["focal_gamma0_logit18"]["value"].as_f64().unwrap();
    let want_grad = checks["focal_gamma0_logit18"]["grad"].as_f64().unwrap();
    for (kind, rel) in [(Kind::Double, 1e-9), (Kind::Float, 1e-5)] {
        let logits = tensor(&[18.0], &[1, 1], kind, Device::Cpu).set_requires_grad(true);
        let targets = TchTensor::from(tensor(&[1.0], &[1, 1], kind, Device::Cpu));
        let z = TchTensor::from(logits.shallow_clone());

        let out = focal_gamma_zero().forward(MultiLabelInput::new(&z, &targets)).unwrap();
        out.loss.backward();

        let value = out.loss.to_f64().unwrap();
        let grad = logits.grad().double_value(&[0, 0]);
        assert!((value - want_value).abs() <= rel * want_value, "{kind:?}: {value:e}");
        assert!((grad - want_grad).abs() <= rel * want_grad.abs(), "{kind:?}: {grad:e}");
        assert!((value - 7.61499e-9).abs() < 1e-13 && (grad + 7.61499e-9).abs() < 1e-13);
    }
}

/// The reference adds the NTR bias to the logits in place, which changes the caller's tensor
/// and fails on a leaf that requires grad; here the leaf is accepted and left as it was.
#[test]
fn leaf_logits_requiring_grad_are_accepted_and_unchanged() {
    let values = [1.0, -2.0, 0.5, 3.0, 0.0, -1.0];
    let logits = tensor(&values, &[2, 3], Kind::Double, Device::Cpu).set_requires_grad(true);
    let targets = TchTensor::from(tensor(
        &[1.0, 0.0, 0.0, 0.0, 1.0, 1.0],
        &[2, 3],
        Kind::Double,
        Device::Cpu,
    ));
    let cfg = loss_core::MultiLabelConfig {
        preset: Some(loss_core::config::MultiLabelPreset::Db),
        class_freq: Some(vec![10.0, 50.0, 90.0]),
        train_num: Some(100.0),
        ..Default::default()
    };
    let z = TchTensor::from(logits.shallow_clone());

    let out = ResampleLoss::from_config(&cfg)
        .unwrap()
        .forward(MultiLabelInput::new(&z, &targets))
        .unwrap();
    out.loss.backward();

    assert!(logits.is_leaf() && logits.requires_grad());
    assert_eq!(to_vec(&logits), values);
    assert_eq!(logits.grad().size(), vec![2, 3]);
    assert!(to_vec(&logits.grad()).iter().all(|g| g.is_finite() && *g != 0.0));
}

#[test]
fn empty_batch_sums_to_zero_with_an_empty_gradient() {
    let logits = Tensor::zeros([0, 3], (Kind::Float, Device::Cpu)).set_requires_grad(true);
    let targets = TchTensor::from(Tensor::zeros([0, 3], (Kind::Float, Device::Cpu)));
    let z = TchTensor::from(logits.shallow_clone());
    let params = |reduction| MultiLabelParams { reduction, ..MultiLabelParams::default() };

    let sum = ResampleLoss::new(params(Reduction::Sum))
        .unwrap()
        .forward(MultiLabelInput::new(&z, &targets))
        .unwrap();
    let mean = ResampleLoss::new(params(Reduction::Mean))
        .unwrap()
        .forward(MultiLabelInput::new(&z, &targets));
    sum.loss.backward();

    assert_eq!(sum.loss.to_f64().unwrap(), 0.0);
    assert_eq!(logits.grad().size(), vec![0, 3]);
    assert!(matches!(mean, Err(LossError::EmptyMean { .. })));
}

#[test]
fn half_precision_logits_compute_in_f32_and_get_a_half_gradient() {
    let logits = tensor(&[0.5, -1.5, 2.0, 0.0], &[2, 2], Kind::Float, Device::Cpu)
        .to_kind(Kind::Half)
        .set_requires_grad(true);
    let targets = TchTensor::from(tensor(&[1.0, 0.0, 0.0, 1.0], &[2, 2], Kind::Float, Device::Cpu));
    let z = TchTensor::from(logits.shallow_clone());

    let out = ResampleLoss::new(MultiLabelParams::default())
        .unwrap()
        .forward(MultiLabelInput::new(&z, &targets))
        .unwrap();
    out.loss.backward();

    assert_eq!(out.loss.dtype(), DType::F32);
    assert_eq!(logits.grad().kind(), Kind::Half);
}

#[test]
fn integer_logits_are_rejected() {
    let z = TchTensor::from(Tensor::from_slice(&[1i64, 0]).reshape([1, 2]));
    let y = TchTensor::from(Tensor::from_slice(&[1i64, 0]).reshape([1, 2]));

    let err = ResampleLoss::new(MultiLabelParams::default())
        .unwrap()
        .forward(MultiLabelInput::new(&z, &y))
        .unwrap_err();

    assert!(
        matches!(err, LossError::UnsupportedDtype { ref what, .. } if what == "logits"),
        "{err}"
    );
}

#[test]
fn integer_and_boolean_targets_are_accepted() {
    let z = TchTensor::from(tensor(&[0.5, -1.0, 2.0, 0.0], &[2, 2], Kind::Float, Device::Cpu));
    let float = TchTensor::from(tensor(&[1.0, 0.0, 0.0, 1.0], &[2, 2], Kind::Float, Device::Cpu));
    let int = TchTensor::from(Tensor::from_slice(&[1i64, 0, 0, 1]).reshape([2, 2]));
    let boolean = TchTensor::from(Tensor::from_slice(&[true, false, false, true]).reshape([2, 2]));
    let loss = focal_gamma_zero();

    let want = loss.forward(MultiLabelInput::new(&z, &float)).unwrap().loss.to_f64().unwrap();
    let from_int = loss.forward(MultiLabelInput::new(&z, &int)).unwrap().loss.to_f64().unwrap();
    let from_bool =
        loss.forward(MultiLabelInput::new(&z, &boolean)).unwrap().loss.to_f64().unwrap();

    assert_eq!((from_int, from_bool), (want, want));
}

/// The loss of a random scenario summed, and its gradient, on libtorch in `kind`.
fn scenario_gradient(s: &Scenario, kind: Kind) -> (f64, Vec<f64>) {
    let shape = [s.shape[0], s.shape[1]];
    let logits = tensor(&s.logits, &shape, kind, Device::Cpu).set_requires_grad(true);
    let z = TchTensor::from(logits.shallow_clone());
    let y = TchTensor::from(tensor(&s.targets, &shape, kind, Device::Cpu));
    let w = TchTensor::from(tensor(&s.weight, &shape, kind, Device::Cpu));
    let params = MultiLabelParams { reduction: Reduction::Sum, ..s.params.clone() };

    let out = ResampleLoss::new(params)
        .unwrap()
        .forward(MultiLabelInput::new(&z, &y).with_weight(&w))
        .unwrap();
    out.loss.backward();

    (out.loss.to_f64().unwrap(), to_vec(&logits.grad()))
}

proptest! {
    /// Finite value and gradient for every finite logit in ±1e4, every `gamma` in [0, 5] (focal
    /// and asymmetric) and every part, in f64 and f32.
    #[test]
    fn value_and_gradient_are_finite(s in scenario()) {
        for kind in [Kind::Double, Kind::Float] {
            let (value, grad) = scenario_gradient(&s, kind);

            prop_assert!(value.is_finite() && value >= 0.0, "{kind:?}: {value}");
            prop_assert!(grad.iter().all(|g| g.is_finite()), "{kind:?}: {grad:?}");
        }
    }
}

#[cfg(feature = "cuda-tests")]
mod cuda {
    use super::*;
    use tch::Cuda;

    /// Every fixture case on `cuda:0` against the CPU, value and gradient: f64 at relative 1e-9,
    /// f32 at 1e-5 (the floors as above).
    #[test]
    fn cpu_and_cuda_agree_on_every_case() {
        assert!(Cuda::is_available(), "the cuda-tests feature needs a CUDA device");
        for case in cases() {
            let (cpu_value, cpu_grad) = run(&case, Device::Cpu);
            let (gpu_value, gpu_grad) = run(&case, Device::Cuda(0));

            assert_close(
                &format!("{} value (cuda)", case.name),
                &gpu_value,
                &cpu_value,
                case.tolerance(),
            );
            assert_close(
                &format!("{} grad (cuda)", case.name),
                &gpu_grad,
                &cpu_grad,
                case.tolerance(),
            );
            assert_close(
                &format!("{} value (cuda vs PyTorch)", case.name),
                &gpu_value,
                &case.loss,
                case.tolerance(),
            );
        }
    }

    #[test]
    fn tensors_on_different_devices_are_an_error() {
        let z = TchTensor::from(tensor(&[0.5, -0.5], &[1, 2], Kind::Float, Device::Cpu));
        let y = TchTensor::from(tensor(&[1.0, 0.0], &[1, 2], Kind::Float, Device::Cuda(0)));

        let err = ResampleLoss::new(MultiLabelParams::default())
            .unwrap()
            .forward(MultiLabelInput::new(&z, &y))
            .unwrap_err();

        assert!(
            matches!(err, LossError::DeviceMismatch { ref what, .. } if what == "targets"),
            "{err}"
        );
    }

    #[test]
    fn empty_batch_and_leaf_on_cuda() {
        let logits = tensor(&[3.0, -1.0, 0.0, 2.0], &[2, 2], Kind::Double, Device::Cuda(0))
            .set_requires_grad(true);
        let y =
            TchTensor::from(tensor(&[1.0, 0.0, 0.0, 0.0], &[2, 2], Kind::Double, Device::Cuda(0)));
        let z = TchTensor::from(logits.shallow_clone());
        let params = MultiLabelParams {
            stats: Some(loss_core::ClassStats::new(vec![3.0, 40.0], 100.0).unwrap()),
            ntr: Some(loss_core::config::Ntr {
                kappa: 0.05,
                lambda: 2.0,
                negative_weight: loss_core::config::NegativeWeight::Always,
                bias_over_lambda: false,
            }),
            ..MultiLabelParams::default()
        };

        let out = ResampleLoss::new(params).unwrap().forward(MultiLabelInput::new(&z, &y)).unwrap();
        out.loss.backward();

        assert_eq!(to_vec(&logits), vec![3.0, -1.0, 0.0, 2.0]);
        assert!(to_vec(&logits.grad()).iter().all(|g| g.is_finite()));
        assert_eq!(logits.grad().device(), Device::Cuda(0));
    }
}
