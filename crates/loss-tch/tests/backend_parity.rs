//! The same formulas on the ndarray and libtorch backends give the same values, and the
//! libtorch backend turns bad requests into errors, not panics.

use loss_core::ndarray_backend::NdTensor;
use loss_core::{validate, Backend, DType, DeviceSpec, LossError, ValueCheck};
use loss_tch::{resolve_device, TchTensor};
use tch::{Cuda, Kind, Tensor};

const LOGITS: [f64; 12] = [-30.0, -2.5, -0.1, 0.0, 0.3, 1.7, 4.0, 25.0, -1e4, 1e4, 0.5, -7.25];
const TARGETS: [f64; 12] = [0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0];

/// A formula touching every operation of the trait, in the way the losses use them.
fn formula<B: Backend>(x: &B, y: &B) -> loss_core::Result<Vec<B>> {
    let pos = y.gt_scalar(0.5)?;
    let freq = x.from_values_like(&[1.0, 5.0, 2.0, 9.0], &[1, 4])?;
    let signed = x.mul(&y.mul_scalar(-2.0)?.add_scalar(1.0)?)?;
    let bce = signed.softplus()?;
    let focal = bce.mul_scalar(-2.0)?.exp()?.mul(&bce)?;
    let ratio = y.mul(&freq.pow_scalar(-1.0)?)?.sum_dim(1, true)?;
    let rebalance =
        freq.pow_scalar(-1.0)?.div(&ratio)?.sub(&x.full_like(0.9)?)?.mul_scalar(10.0)?;
    let asl =
        x.sigmoid()?.add_scalar(-0.05)?.clamp(Some(0.0), None)?.neg()?.add_scalar(1.0)?.ln()?;
    let picked = pos.select_where(&x.log_sigmoid()?, &x.neg()?.log_sigmoid()?)?;
    let extremes = x.maximum(y)?.add(&x.minimum(y)?)?.abs()?;
    let masks = x.ge_scalar(0.0)?.add(&x.lt_scalar(-1.0)?)?.add(&y.eq_scalar(1.0)?)?;
    let rows = bce.max_dim(1, false)?.add(&bce.min_dim(0, false)?.sum_all()?)?;
    let top = bce.topk_sum(5)?.add(&bce.max_all()?)?;
    let layout = x
        .reshape(&[2, 2, 3])?
        .select(1, 1)?
        .narrow(1, 1, 2)?
        .index_select(0, &[1, 0, 1])?
        .pad_end(1, 2)?;
    let total = bce.sum_all()?;
    Ok(vec![
        bce,
        focal,
        rebalance.sigmoid()?,
        asl,
        picked,
        extremes,
        masks,
        rows,
        top,
        layout,
        total,
        x.scalar_like(3.5)?.detach(),
    ])
}

fn ndarray_inputs() -> (NdTensor, NdTensor) {
    (
        NdTensor::from_f64(LOGITS.to_vec(), &[3, 4]).unwrap(),
        NdTensor::from_f64(TARGETS.to_vec(), &[3, 4]).unwrap(),
    )
}

fn tch_inputs(kind: Kind) -> (TchTensor, TchTensor) {
    let x = Tensor::from_slice(&LOGITS).reshape([3, 4]).to_kind(kind);
    let y = Tensor::from_slice(&TARGETS).reshape([3, 4]).to_kind(kind);
    (TchTensor::from(x), TchTensor::from(y))
}

#[test]
fn every_operation_agrees_between_ndarray_and_libtorch_in_f64() {
    let (nx, ny) = ndarray_inputs();
    let (tx, ty) = tch_inputs(Kind::Double);

    let expected = formula(&nx, &ny).unwrap();
    let got = formula(&tx, &ty).unwrap();

    for (i, (e, g)) in expected.iter().zip(&got).enumerate() {
        assert_eq!(e.shape(), g.shape(), "output {i}");
        for (a, b) in e.to_vec_f64().unwrap().iter().zip(g.to_vec_f64().unwrap()) {
            // libtorch's softplus switches to the identity above 20: 2.1e-9 absolute there.
            let tol = 1e-9 * a.abs().max(1.0) + 3e-9;
            assert!((a - b).abs() <= tol, "output {i}: ndarray {a} vs libtorch {b}");
        }
    }
}

#[test]
fn gradients_flow_through_the_backend() {
    let x = Tensor::from_slice(&[-2.0f64, 0.0, 3.0]).set_requires_grad(true);
    let t = TchTensor::from(x.shallow_clone());

    let loss = t.softplus().unwrap().sum_all().unwrap();
    loss.backward();

    let grad = Vec::<f64>::try_from(&x.grad()).unwrap();
    let sigmoid = |v: f64| 1.0 / (1.0 + (-v).exp());
    for (g, v) in grad.iter().zip([-2.0, 0.0, 3.0]) {
        assert!((g - sigmoid(v)).abs() < 1e-15);
    }
}

#[test]
fn topk_sum_with_zero_k_gives_zero_and_a_zero_gradient() {
    let x = Tensor::from_slice(&[1.0f64, 2.0]).set_requires_grad(true);

    let s = TchTensor::from(x.shallow_clone()).topk_sum(0).unwrap();
    s.backward();

    assert_eq!(s.to_f64().unwrap(), 0.0);
    assert_eq!(Vec::<f64>::try_from(&x.grad()).unwrap(), vec![0.0, 0.0]);
}

#[test]
fn scalar_readout_of_a_non_scalar_is_an_error() {
    let (x, _) = tch_inputs(Kind::Float);
    assert_eq!(x.to_f64().unwrap_err(), LossError::NotScalar { shape: vec![3, 4] });
    let sum = x.sum_all().unwrap().to_f64().unwrap();
    assert!((sum - LOGITS.iter().sum::<f64>()).abs() < 1e-3, "{sum}");
}

#[test]
fn integer_logits_are_rejected_and_half_computes_in_float() {
    let ints = TchTensor::from(Tensor::from_slice(&[1i64, 2, 3]));
    let err = validate::to_compute_type("logits", &ints).unwrap_err();
    assert!(matches!(err, LossError::UnsupportedDtype { ref what, .. } if what == "logits"));

    let half = TchTensor::from(Tensor::from_slice(&[12.0f32]).to_kind(Kind::Half));
    assert_eq!(validate::to_compute_type("logits", &half).unwrap().dtype(), DType::F32);
    let double = TchTensor::from(Tensor::from_slice(&[1.0f64]));
    assert_eq!(validate::to_compute_type("logits", &double).unwrap().dtype(), DType::F64);
}

#[test]
fn first_violation_finds_the_first_offender() {
    let t = TchTensor::from(Tensor::from_slice(&[0.0f32, 1.0, 2.0, f32::NAN, -1.0]));
    assert_eq!(t.first_violation(ValueCheck::NotBinary).unwrap(), Some((2, 2.0)));
    let bad = t.first_violation(ValueCheck::NonFinite).unwrap().unwrap();
    assert_eq!(bad.0, 3);
    assert_eq!(t.first_violation(ValueCheck::Below { lo: -0.5 }).unwrap().map(|v| v.0), Some(3));
    let ok = TchTensor::from(Tensor::from_slice(&[0.0f32, 1.0]));
    assert_eq!(ok.first_violation(ValueCheck::OutsideRange { lo: 0.0, hi: 1.0 }).unwrap(), None);
}

#[test]
fn cuda_on_a_libtorch_without_cuda_is_an_error() {
    if Cuda::is_available() {
        return; // this check is for CPU-only machines; the cuda-tests feature covers GPUs
    }
    let err = resolve_device(DeviceSpec::Cuda(0)).unwrap_err();
    assert!(matches!(err, LossError::DeviceUnavailable { .. }), "{err}");
}

#[test]
fn tensors_on_different_devices_are_an_error_naming_both() {
    let err = validate::check_devices("targets", "cpu", "cuda:1").unwrap_err();
    assert_eq!(err.to_string(), "tensors on different devices: targets is on cuda:1, expected cpu");
}

#[cfg(feature = "cuda-tests")]
#[test]
fn cpu_and_cuda_tensors_are_a_device_mismatch() {
    let cpu = TchTensor::from(Tensor::from_slice(&[1.0f32]));
    let gpu = TchTensor::from(Tensor::from_slice(&[1.0f32]).to_device(tch::Device::Cuda(0)));
    let err = validate::same_device("targets", &cpu, &gpu).unwrap_err();
    assert!(matches!(err, LossError::DeviceMismatch { ref got, .. } if got == "cuda:0"));

    let (x, y) = tch_inputs(Kind::Double);
    let (gx, gy) = (
        TchTensor::from(x.to_device(tch::Device::Cuda(0))),
        TchTensor::from(y.to_device(tch::Device::Cuda(0))),
    );
    let on_cpu = formula(&x, &y).unwrap();
    let on_gpu = formula(&gx, &gy).unwrap();
    for (c, g) in on_cpu.iter().zip(&on_gpu) {
        for (a, b) in c.to_vec_f64().unwrap().iter().zip(g.to_vec_f64().unwrap()) {
            assert!((a - b).abs() <= 1e-9 * a.abs().max(1.0));
        }
    }
}

#[test]
fn a_fused_kernel_hands_its_gradient_to_autograd() {
    let x = Tensor::from_slice(&[1.0f64, -2.0, 3.0]).set_requires_grad(true);
    let t = TchTensor::from(x.shallow_clone());

    // Loss Σ x², gradient 2x, computed by the "kernel" itself.
    let out = t
        .fused_scalar(&mut |values, grad| match (values, grad) {
            (loss_core::HostData::F64(v), loss_core::HostDataMut::F64(g)) => {
                let mut s = 0.0;
                for (gi, &vi) in g.iter_mut().zip(v) {
                    *gi = 2.0 * vi;
                    s += vi * vi;
                }
                Ok(s)
            }
            _ => Err(LossError::Backend("unexpected dtype".into())),
        })
        .unwrap()
        .expect("a contiguous CPU f64 tensor lends its memory");
    out.mul_scalar(3.0).unwrap().backward();

    assert_eq!(out.to_f64().unwrap(), 14.0);
    assert_eq!(Vec::<f64>::try_from(&x.grad()).unwrap(), vec![6.0, -12.0, 18.0]);
}

#[test]
fn fused_kernels_decline_what_has_no_host_memory() {
    let half = TchTensor::from(Tensor::from_slice(&[1.0f32]).to_kind(Kind::Half));
    assert!(half.host_data().is_none());
    assert!(half.fused_scalar(&mut |_, _| Ok(0.0)).unwrap().is_none());
    let strided =
        TchTensor::from(Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]).reshape([2, 2]).tr());
    assert!(strided.host_data().is_none());
}
