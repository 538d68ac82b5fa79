//! Properties of [`ResampleLoss`] over random parts, parameters and inputs, on the ndarray
//! backend: finite and non-negative for every finite logit in ±1e4 and `gamma` in [0, 5],
//! zero-weight entries contribute nothing, rows can be reordered. (The gradient property runs
//! on libtorch, in `loss-tch/tests/multilabel_reference.rs`.)

mod common;

use common::scenario::{scenario, Scenario};
use loss_core::ndarray_backend::NdTensor;
use loss_core::{Backend, Loss};
use loss_multilabel::{MultiLabelInput, ResampleLoss};
use proptest::prelude::*;

fn t(values: &[f64], shape: &[usize]) -> NdTensor {
    NdTensor::from_f64(values.to_vec(), shape).unwrap()
}

/// The unreduced loss of `s`, with or without its element weights.
fn elements(s: &Scenario, logits: &[f64], targets: &[f64], weighted: bool) -> Vec<f64> {
    let loss = ResampleLoss::new(s.params.clone()).unwrap();
    let (z, y, w) = (t(logits, &s.shape), t(targets, &s.shape), t(&s.weight, &s.shape));
    let input = MultiLabelInput::new(&z, &y);
    let input = if weighted { input.with_weight(&w) } else { input };
    loss.forward(input).unwrap().loss.to_vec_f64().unwrap()
}

proptest! {
    #[test]
    fn finite_and_non_negative(s in scenario()) {
        let values = elements(&s, &s.logits, &s.targets, true);

        prop_assert!(values.iter().all(|v| v.is_finite() && *v >= 0.0), "{values:?}");
        let total: f64 = values.iter().sum();
        prop_assert!(total.is_finite());
    }

    #[test]
    fn zero_weight_entries_contribute_nothing(s in scenario(), shift in -1e3..1e3f64) {
        let moved: Vec<f64> = s.logits.iter().zip(&s.weight)
            .map(|(&z, &w)| if w == 0.0 { z + shift } else { z })
            .collect();

        let before = elements(&s, &s.logits, &s.targets, true);
        let after = elements(&s, &moved, &s.targets, true);

        for (i, w) in s.weight.iter().enumerate() {
            if *w == 0.0 {
                prop_assert_eq!(before[i], 0.0);
                prop_assert_eq!(after[i], 0.0);
            }
        }
        prop_assert_eq!(before, after);
    }

    #[test]
    fn row_order_does_not_matter(s in scenario(), seed in any::<u64>()) {
        let [n, c] = s.shape;
        // A permutation of the rows from the seed (Fisher–Yates with a small LCG).
        let mut order: Vec<usize> = (0..n).collect();
        let mut state = seed | 1;
        for i in (1..n).rev() {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            order.swap(i, (state >> 33) as usize % (i + 1));
        }
        let permute = |v: &[f64]| order.iter().flat_map(|&r| v[r * c..(r + 1) * c].to_vec()).collect::<Vec<_>>();
        let shuffled = Scenario { weight: permute(&s.weight), ..s.clone() };

        let base = elements(&s, &s.logits, &s.targets, true);
        let moved = elements(&shuffled, &permute(&s.logits), &permute(&s.targets), true);

        prop_assert_eq!(permute(&base), moved.clone());
        let (a, b): (f64, f64) = (base.iter().sum(), moved.iter().sum());
        prop_assert!((a - b).abs() <= 1e-12 * a.abs().max(1e-300), "{a} vs {b}");
    }
}
