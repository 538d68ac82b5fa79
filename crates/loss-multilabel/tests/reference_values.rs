//! [`ResampleLoss`] on the ndarray backend against PyTorch: every case of
//! `fixtures/multilabel.json` (written by `fixtures/generate.py`).
//!
//! Values are compared at relative 1e-9 (f64 cases) and 1e-5 (f32 cases), with a floor of
//! 1e-13 (f64) or 1e-7 (f32) times the largest magnitude of the compared array (see
//! `common::Tolerance`). The ndarray backend computes in f64 whatever the declared type, so f32
//! cases compare an f64 computation with PyTorch's f32 one. The backend is forward-only:
//! gradients are checked here by central differences against the fixtures' PyTorch gradients,
//! and exactly on libtorch in `loss-tch/tests/multilabel_reference.rs`.

mod common;

use common::{assert_close, cases, Case, Tolerance};
use loss_core::ndarray_backend::NdTensor;
use loss_core::{Backend, DType, Loss, Result};
use loss_multilabel::{MultiLabelInput, ResampleLoss};

fn tensor(case: &Case, values: &[f64]) -> NdTensor {
    let dtype = if case.is_f64() { DType::F64 } else { DType::F32 };
    NdTensor::new(values.to_vec(), &case.shape, dtype).unwrap()
}

/// The case's loss with `logits` in place of its own, as a flat vector.
fn loss_with(case: &Case, logits: &[f64]) -> Result<Vec<f64>> {
    let loss = ResampleLoss::from_config(&case.config)?;
    let z = tensor(case, logits);
    let y = tensor(case, &case.targets);
    let w = case.weight.as_ref().map(|w| tensor(case, w));
    let input = MultiLabelInput {
        logits: &z,
        targets: &y,
        weight: w.as_ref(),
        avg_factor: case.avg_factor,
    };
    loss.forward(input)?.loss.to_vec_f64()
}

fn check_values(prefixes: &[&str]) {
    let selected: Vec<Case> =
        cases().into_iter().filter(|c| prefixes.iter().any(|p| c.name.starts_with(p))).collect();
    assert!(!selected.is_empty(), "no fixture case starts with {prefixes:?}");
    for case in &selected {
        let got = loss_with(case, &case.logits).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_close(&case.name, &got, &case.loss, case.tolerance());
    }
}

#[test]
fn plain_bce_pos_weight_and_user_weights() {
    check_values(&["bce_"]);
}

#[test]
fn inverse_and_sqrt_inverse_reweights() {
    check_values(&["inverse_", "sqrt_inverse_"]);
}

#[test]
fn class_balanced_reweights_in_all_four_modes() {
    check_values(&["cb_"]);
}

#[test]
fn rebalance_reweights() {
    check_values(&["rebalance_"]);
}

#[test]
fn negative_tolerant_regularisation_and_its_switches() {
    check_values(&["ntr_"]);
}

#[test]
fn focal() {
    check_values(&["focal_"]);
}

#[test]
fn asymmetric() {
    check_values(&["asymmetric_"]);
}

#[test]
fn presets_and_overrides() {
    check_values(&["preset_"]);
}

#[test]
fn every_fixture_case_belongs_to_a_test() {
    let prefixes = [
        "bce_",
        "inverse_",
        "sqrt_inverse_",
        "cb_",
        "rebalance_",
        "ntr_",
        "focal_",
        "asymmetric_",
        "preset_",
    ];
    for case in cases() {
        assert!(prefixes.iter().any(|p| case.name.starts_with(p)), "{} is in no test", case.name);
    }
}

#[test]
fn every_preset_is_covered_in_f64_and_f32() {
    let names: Vec<String> = cases().into_iter().map(|c| c.name).collect();
    for preset in [
        "bce",
        "focal",
        "cb",
        "cb-pubmed",
        "r-focal",
        "r-focal-pubmed",
        "ntr-focal",
        "ntr-focal-pubmed",
        "db-nofocal",
        "db-nofocal-pubmed",
        "cb-ntr",
        "db",
        "db-pubmed",
    ] {
        for dtype in ["f64", "f32"] {
            let name = format!("preset_{preset}_{dtype}");
            assert!(names.contains(&name), "missing {name}");
        }
    }
}

/// Central differences of the ndarray loss against the fixture gradients, on the f64 cases
/// small enough to perturb every logit. Step `h = 1e-5 · max(1, |z|)`; truncation and rounding
/// errors stay near 1e-9 of the gradient's scale, so relative 1e-6 with a floor of 1e-6 of the
/// largest gradient entry.
#[test]
fn fixture_gradients_are_the_derivative_of_our_values() {
    let tol = Tolerance { rel: 1e-6, floor: 1e-6 };
    let mut checked = 0;
    for case in cases().iter().filter(|c| c.is_f64() && c.logits.len() <= 100) {
        let total = |z: &[f64]| loss_with(case, z).unwrap().iter().sum::<f64>();
        let mut numeric = Vec::with_capacity(case.logits.len());
        for i in 0..case.logits.len() {
            let h = 1e-5 * case.logits[i].abs().max(1.0);
            let (mut up, mut down) = (case.logits.clone(), case.logits.clone());
            up[i] += h;
            down[i] -= h;
            numeric.push((total(&up) - total(&down)) / (2.0 * h));
        }
        assert_close(&format!("{} (central differences)", case.name), &numeric, &case.grad, tol);
        checked += 1;
    }
    assert!(checked >= 50, "only {checked} cases checked");
}
