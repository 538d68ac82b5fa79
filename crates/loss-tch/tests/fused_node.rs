//! How a fused loss's gradient reaches autograd (`Backend::fused_scalar` on libtorch): scaled by
//! the incoming gradient, through non-leaf inputs, next to other terms, with a retained graph,
//! under `no_grad`, twice without a retained graph (an error, not a wrong gradient), and for
//! DBNet as for the multi-label losses. The generic path (autograd through the formulas) is
//! the oracle throughout.

#[path = "../../loss-multilabel/tests/common/mod.rs"]
mod common;

use common::uniforms;
use loss_core::config::MultiLabelPreset;
use loss_core::{Loss, MultiLabelConfig};
use loss_dbnet::{DbInput, DbLoss};
use loss_multilabel::{MultiLabelInput, ResampleLoss};
use loss_tch::TchTensor;
use tch::{Kind, Tensor};

const N: usize = 6;
const C: usize = 11;

fn db_loss(fused: bool) -> ResampleLoss {
    let config = MultiLabelConfig {
        preset: Some(MultiLabelPreset::Db),
        class_freq: Some((0..C).map(|k| (40 / (k + 1)) as f64 + 1.0).collect()),
        train_num: Some(60.0),
        ..MultiLabelConfig::default()
    };
    ResampleLoss::new(config.resolve().unwrap()).unwrap().with_fused(fused)
}

fn logits() -> Tensor {
    let z: Vec<f64> = uniforms(1, N * C).iter().map(|u| 10.0 * u - 5.0).collect();
    Tensor::from_slice(&z).reshape([N as i64, C as i64])
}

fn targets() -> TchTensor {
    let y: Vec<f64> = uniforms(2, N * C).iter().map(|&u| f64::from(u8::from(u < 0.3))).collect();
    TchTensor::from(Tensor::from_slice(&y).reshape([N as i64, C as i64]))
}

fn loss_of(loss: &ResampleLoss, z: &Tensor) -> Tensor {
    let z = TchTensor::from(z.shallow_clone());
    let y = targets();
    let input = MultiLabelInput { logits: &z, targets: &y, weight: None, avg_factor: None };
    loss.forward(input).unwrap().loss.into_inner()
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).reshape([-1])).unwrap()
}

fn assert_close(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-9 * w.abs() + 1e-13 * scale;
        assert!((g - w).abs() <= tol, "{what}[{i}]: got {g}, want {w}");
    }
}

/// The gradient of `f(loss)` w.r.t. a fresh leaf, for the fused and the generic loss.
fn both<F: Fn(Tensor, &Tensor) -> Tensor>(f: F) -> (Vec<f64>, Vec<f64>) {
    let mut grads = Vec::new();
    for fused in [true, false] {
        let leaf = logits().set_requires_grad(true);
        let loss = loss_of(&db_loss(fused), &leaf);
        f(loss, &leaf).backward();
        grads.push(values(&leaf.grad()));
    }
    let generic = grads.pop().unwrap();
    (grads.pop().unwrap(), generic)
}

#[test]
fn the_incoming_gradient_scales_the_fused_one() {
    let (fused, generic) = both(|loss, _| loss.f_mul_scalar(-2.5).unwrap());
    assert_close("grad of -2.5 * loss", &fused, &generic);
    let (unit, _) = both(|loss, _| loss);
    assert!(unit.iter().zip(&fused).all(|(u, s)| *s == -2.5 * u), "scaled exactly");
}

#[test]
fn the_gradient_flows_through_a_non_leaf_input_and_adds_to_other_terms() {
    // loss(3·w + 1) + Σ w², through the fused node and through an ordinary graph.
    let mut grads = Vec::new();
    for fused in [true, false] {
        let w = logits().set_requires_grad(true);
        let z = w.f_mul_scalar(3.0).unwrap().f_add_scalar(1.0).unwrap();
        let total = loss_of(&db_loss(fused), &z).f_add(&w.square().sum(Kind::Double)).unwrap();
        total.backward();
        grads.push(values(&w.grad()));
    }
    assert_close("grad w.r.t. w", &grads[0], &grads[1]);
}

#[test]
fn a_retained_graph_gives_the_same_gradient_twice_in_separate_buffers() {
    let leaf = logits().set_requires_grad(true);
    let loss = loss_of(&db_loss(true), &leaf);
    let mut first = Tensor::f_run_backward(&[&loss], &[&leaf], true, false).unwrap().remove(0);
    let (_, generic) = both(|loss, _| loss);
    assert_close("first", &values(&first), &generic);
    // Changing the first result in place must not reach the second (the node keeps its buffer
    // for the retained graph and hands out copies).
    let _ = first.f_mul_scalar_(0.0).unwrap();
    let second = Tensor::f_run_backward(&[&loss], &[&leaf], true, false).unwrap();
    assert_close("second", &values(&second[0]), &generic);
    let third = Tensor::f_run_backward(&[&loss], &[&leaf], false, false).unwrap();
    assert_close("third, graph released", &values(&third[0]), &generic);
}

#[test]
fn a_second_backward_without_a_retained_graph_is_an_error() {
    let leaf = logits().set_requires_grad(true);
    let loss = loss_of(&db_loss(true), &leaf);
    loss.f_backward().unwrap();
    let err = loss.f_backward().expect_err("second backward");
    assert!(err.to_string().contains("second time"), "{err}");
    // The first gradient is untouched.
    let (_, generic) = both(|loss, _| loss);
    assert_close("grad after the failed call", &values(&leaf.grad()), &generic);
}

#[test]
fn no_graph_is_recorded_without_grad_mode_or_without_an_input_that_requires_it() {
    let leaf = logits().set_requires_grad(true);
    let loss = tch::no_grad(|| loss_of(&db_loss(true), &leaf));
    assert!(!loss.requires_grad());
    let plain = loss_of(&db_loss(true), &logits());
    assert!(!plain.requires_grad());
    let tracked = loss_of(&db_loss(true), &leaf);
    assert!(tracked.requires_grad());
    assert_eq!(tracked.double_value(&[]), plain.double_value(&[]));
}

#[test]
fn create_graph_keeps_the_incoming_gradient_differentiable() {
    // d/ds of (∂(s · loss)/∂z · 1) summed is Σ ∂loss/∂z: the node's backward is linear in the
    // incoming gradient, and that link stays in the graph with `create_graph`.
    let leaf = logits().set_requires_grad(true);
    let s = Tensor::from(1.75f64).set_requires_grad(true);
    let loss = loss_of(&db_loss(true), &leaf).f_mul(&s).unwrap();
    let g = Tensor::f_run_backward(&[&loss], &[&leaf], true, true).unwrap();
    assert!(g[0].requires_grad());
    let ds = Tensor::f_run_backward(&[&g[0].sum(Kind::Double)], &[&s], false, false).unwrap();
    let (_, generic) = both(|loss, _| loss);
    let want: f64 = generic.iter().sum();
    assert_close("d/ds", &values(&ds[0]), &[want]);
    let scaled: Vec<f64> = generic.iter().map(|g| 1.75 * g).collect();
    assert_close("grad", &values(&g[0]), &scaled);
}

#[test]
fn a_second_derivative_with_respect_to_the_input_is_an_error_not_a_wrong_value() {
    // loss + 0 · Σ z²: the gradient is differentiable through the second term on both paths;
    // only the generic path can differentiate the loss's own gradient.
    let second = |fused: bool| {
        let leaf = logits().set_requires_grad(true);
        let total = loss_of(&db_loss(fused), &leaf)
            .f_add(&leaf.square().sum(Kind::Double).f_mul_scalar(0.0).unwrap())
            .unwrap();
        let g = Tensor::f_run_backward(&[&total], &[&leaf], true, true).unwrap();
        Tensor::f_run_backward(&[&g[0].sum(Kind::Double)], &[&leaf], false, false)
    };
    let generic = second(false).expect("the generic path has a second derivative");
    assert!(values(&generic[0]).iter().any(|v| *v != 0.0));
    let err = second(true).expect_err("the fused path has none");
    assert!(err.to_string().contains("no second derivative"), "{err}");
    assert!(err.to_string().contains("with_fused(false)"), "{err}");

    // A gradient penalty through backward() fails the same way.
    let leaf = logits().set_requires_grad(true);
    let loss = loss_of(&db_loss(true), &leaf);
    let g = Tensor::f_run_backward(&[&loss], &[&leaf], true, true).unwrap();
    let err = g[0].square().sum(Kind::Double).f_backward().expect_err("penalty");
    assert!(err.to_string().contains("no second derivative"), "{err}");
}

#[test]
fn an_f64_weight_past_f32_range_gives_what_the_generic_path_gives() {
    // Finite in f64, infinite once converted to the logits' f32: not an input error, so the
    // generic path decides (an infinite loss), and the fused path must not report one.
    let z = logits().to_kind(Kind::Float);
    let mut weight = vec![1.0; N * C];
    weight[5] = 1e300;
    let w = TchTensor::from(Tensor::from_slice(&weight).reshape([N as i64, C as i64]));
    let run = |fused: bool| {
        let zt = TchTensor::from(z.shallow_clone());
        let y = targets();
        let input =
            MultiLabelInput { logits: &zt, targets: &y, weight: Some(&w), avg_factor: None };
        db_loss(fused).forward(input).map(|out| out.loss.double_value(&[]))
    };
    let generic = run(false).expect("the generic path accepts finite weights");
    let fused = run(true).expect("so does the fused path");
    assert_eq!(fused.to_bits(), generic.to_bits(), "{fused} vs {generic}");
}

/// The DBNet loss (default settings) of `preds` against the four target maps.
fn db_loss_of(preds: &Tensor, maps: &[TchTensor; 4], fused: bool) -> Tensor {
    let p = TchTensor::from(preds.shallow_clone());
    let input = DbInput {
        preds: &p,
        gt_shrink: &maps[0],
        gt_shrink_mask: &maps[1],
        gt_thr: &maps[2],
        gt_thr_mask: &maps[3],
    };
    let loss = DbLoss::new(Default::default()).unwrap().with_fused(fused);
    loss.forward(input).unwrap().loss.into_inner()
}

#[test]
fn dbnet_gradients_reach_preds_scaled_through_the_node() {
    let (n, h, w) = (2i64, 12i64, 10i64);
    let p = (n * h * w) as usize;
    let u = |seed| Tensor::from_slice(&uniforms(seed, p)).reshape([n, h, w]);
    let binary = |seed| u(seed).lt(0.35).to_kind(Kind::Double);
    let preds_values: Vec<f64> = uniforms(10, 3 * p).iter().map(|v| 0.02 + 0.96 * v).collect();
    let mut grads = Vec::new();
    for fused in [true, false] {
        let preds = Tensor::from_slice(&preds_values).reshape([n, 3, h, w]).set_requires_grad(true);
        let maps = [binary(11), binary(12), u(13), binary(14)].map(TchTensor::from);
        db_loss_of(&preds, &maps, fused).f_mul_scalar(0.5).unwrap().backward();
        grads.push(values(&preds.grad()));
    }
    assert_close("dbnet grad of 0.5 * loss", &grads[0], &grads[1]);
}

#[test]
fn weights_and_targets_that_require_grad_get_theirs_through_the_generic_path() {
    // Soft targets and weights with gradients (distillation-style): the kernel's gradient is
    // for the logits alone, so the fused loss steps aside and every input gets its gradient.
    let soft = Tensor::from_slice(&uniforms(3, N * C)).reshape([N as i64, C as i64]);
    let weight = Tensor::from_slice(&uniforms(4, N * C)).reshape([N as i64, C as i64]);
    let bce = |fused: bool| {
        let config =
            MultiLabelConfig { preset: Some(MultiLabelPreset::Bce), ..MultiLabelConfig::default() };
        ResampleLoss::new(config.resolve().unwrap()).unwrap().with_fused(fused)
    };
    let mut grads = Vec::new();
    for fused in [true, false] {
        let z = logits().set_requires_grad(true);
        let y = soft.copy().set_requires_grad(true);
        let w = weight.copy().set_requires_grad(true);
        let (zt, yt, wt) = (
            TchTensor::from(z.shallow_clone()),
            TchTensor::from(y.shallow_clone()),
            TchTensor::from(w.shallow_clone()),
        );
        let input =
            MultiLabelInput { logits: &zt, targets: &yt, weight: Some(&wt), avg_factor: None };
        bce(fused).forward(input).unwrap().loss.backward();
        grads.push([values(&z.grad()), values(&y.grad()), values(&w.grad())]);
    }
    for (k, what) in ["logits", "targets", "weight"].iter().enumerate() {
        assert!(grads[0][k].iter().any(|g| *g != 0.0), "{what}: a gradient");
        assert_close(what, &grads[0][k], &grads[1][k]);
    }
}

#[test]
fn dbnet_gradients_from_a_retained_graph_are_separate_buffers() {
    let (n, h, w) = (1i64, 6i64, 7i64);
    let p = (n * h * w) as usize;
    let preds_values: Vec<f64> = uniforms(30, 3 * p).iter().map(|v| 0.05 + 0.9 * v).collect();
    let map = |seed| Tensor::from_slice(&uniforms(seed, p)).reshape([n, h, w]);
    let maps = [
        map(31).lt(0.3).to_kind(Kind::Double),
        map(32).ge(0.0).to_kind(Kind::Double),
        map(33),
        map(34).lt(0.5).to_kind(Kind::Double),
    ]
    .map(TchTensor::from);
    let preds = Tensor::from_slice(&preds_values).reshape([n, 3, h, w]).set_requires_grad(true);
    let loss = db_loss_of(&preds, &maps, true);
    let mut first = Tensor::f_run_backward(&[&loss], &[&preds], true, false).unwrap().remove(0);
    let want = values(&first);
    let _ = first.f_mul_scalar_(0.0).unwrap();
    let second = Tensor::f_run_backward(&[&loss], &[&preds], false, false).unwrap();
    assert_eq!(values(&second[0]), want);
}

#[test]
fn dbnet_target_maps_that_require_grad_get_theirs() {
    let (n, h, w) = (1i64, 9i64, 8i64);
    let p = (n * h * w) as usize;
    let preds_values: Vec<f64> = uniforms(20, 3 * p).iter().map(|v| 0.05 + 0.9 * v).collect();
    let map = |seed| Tensor::from_slice(&uniforms(seed, p)).reshape([n, h, w]);
    let mut grads = Vec::new();
    for fused in [true, false] {
        let preds = Tensor::from_slice(&preds_values).reshape([n, 3, h, w]).set_requires_grad(true);
        let gt_thr = map(23).set_requires_grad(true);
        let maps = [
            map(21).lt(0.3).to_kind(Kind::Double),
            map(22).ge(0.0).to_kind(Kind::Double),
            gt_thr.shallow_clone(),
            map(24).lt(0.5).to_kind(Kind::Double),
        ]
        .map(TchTensor::from);
        db_loss_of(&preds, &maps, fused).backward();
        grads.push([values(&preds.grad()), values(&gt_thr.grad())]);
    }
    assert!(grads[0][1].iter().any(|g| *g != 0.0), "gt_thr: a gradient");
    assert_close("preds", &grads[0][0], &grads[1][0]);
    assert_close("gt_thr", &grads[0][1], &grads[1][1]);
}
