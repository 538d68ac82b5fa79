//! Values of the DBNet loss on the ndarray backend against PyTorch (the cases of
//! `fixtures/cases.json`, written by `fixtures/generate.py`).
//!
//! The ndarray backend computes in f64 whatever the declared dtype, so every case is compared
//! with PyTorch's f64 values on the same (rounded) inputs at rel 1e-9, and f32 cases also with
//! PyTorch's f32 values at rel 1e-5. Every case runs through both paths of `DbLoss`: the fused
//! kernel and the generic formulas. Gradients are checked on libtorch, in
//! `loss-tch/tests/dbnet_reference.rs`.

mod common;

use common::fixture::{self, close, Case, Dtype};
use loss_core::ndarray_backend::NdTensor;
use loss_core::{Backend, DType, Loss};
use loss_dbnet::{DbInput, DbLoss};

fn tensor(values: &[f64], shape: &[usize], dtype: Dtype) -> NdTensor {
    let dtype = match dtype {
        Dtype::F32 => DType::F32,
        Dtype::F64 => DType::F64,
    };
    NdTensor::new(values.to_vec(), shape, dtype).unwrap()
}

/// Both paths of `DbLoss`: the fused kernel (the default on ndarray) and the generic formulas.
const PATHS: [bool; 2] = [true, false];

fn run(case: &Case, fused: bool) -> [(&'static str, f64); 4] {
    let inputs = case.inputs();
    let preds = tensor(&inputs.preds, &case.preds_shape, case.dtype);
    let target = |v: &[f64]| tensor(v, &case.target_shape, case.dtype);
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

    let term = |name: &str| out.term(name).unwrap().to_f64().unwrap();
    [
        ("loss", out.loss.to_f64().unwrap()),
        ("loss_prob", term("loss_prob")),
        ("loss_db", term("loss_db")),
        ("loss_thr", term("loss_thr")),
    ]
}

#[test]
fn the_fixture_covers_what_the_issue_asks() {
    let cases = fixture::load();

    let shapes: Vec<&Vec<usize>> = cases.iter().map(|c| &c.preds_shape).collect();
    assert!(shapes.contains(&&vec![1, 3, 4, 4]) && shapes.contains(&&vec![4, 3, 64, 64]));
    let ratios: Vec<f64> = cases.iter().filter_map(|c| c.config.downsample_ratio).collect();
    assert!(ratios.contains(&0.25) && ratios.contains(&0.5));
    assert!(cases.iter().any(|c| c.dtype == Dtype::F32));
    assert!(cases.iter().any(|c| c.dtype == Dtype::F64));
    assert!(cases.iter().any(|c| c.name.contains("no_text")));
    assert!(cases.iter().any(|c| c.name.contains("soft")));
    assert!(cases.iter().any(|c| c.name.contains("logits")));
    assert!(cases.iter().any(|c| c.name.contains("crop")));
    assert!(cases.iter().any(|c| c.name.contains("pad")));
}

#[test]
fn inputs_are_rebuilt_bit_for_bit() {
    for case in fixture::load() {
        let inputs = case.inputs();

        for (name, values) in inputs.named() {
            let sum: f64 = values.iter().sum();
            assert!(
                close(sum, case.checksum(name), 1e-12, 1.0),
                "{} {name}: sum {sum} vs {}",
                case.name,
                case.checksum(name)
            );
        }
        if let Some(stored) = case.stored_inputs() {
            assert_eq!(inputs, stored, "{}", case.name);
        }
    }
}

#[test]
fn values_match_pytorch_in_f64() {
    for (case, fused) in fixture::load().iter().flat_map(|c| PATHS.map(|f| (c, f))) {
        let got = run(case, fused);

        for ((name, got), (_, want)) in got.iter().zip(case.expected_f64.named()) {
            assert!(
                close(*got, want, 1e-9, 1e-3),
                "{} (fused: {fused}) {name}: {got} vs {want}",
                case.name
            );
        }
    }
}

#[test]
fn f32_cases_match_pytorch_in_f32() {
    let cases = fixture::load().into_iter().filter(|c| c.dtype == Dtype::F32);
    for (case, fused) in cases.flat_map(|c| PATHS.map(|f| (c.clone(), f))) {
        let got = run(&case, fused);

        for ((name, got), (_, want)) in got.iter().zip(case.expected.named()) {
            assert!(
                close(*got, want, 1e-5, 1e-3),
                "{} (fused: {fused}) {name}: {got} vs {want}",
                case.name
            );
        }
    }
}

#[test]
fn the_loss_is_the_sum_of_its_terms() {
    for (case, fused) in fixture::load().iter().flat_map(|c| PATHS.map(|f| (c, f))) {
        let [(_, loss), (_, prob), (_, db), (_, thr)] = run(case, fused);

        assert!(close(loss, prob + db + thr, 1e-15, 1.0), "{} (fused: {fused})", case.name);
    }
}
