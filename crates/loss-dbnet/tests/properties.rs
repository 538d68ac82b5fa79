//! Properties on random inputs (ndarray backend): the mining by selection equals mining by a full
//! sort, Dice stays in [0, 1], and the target rescale equals its per-pixel definition.

use loss_core::ndarray_backend::NdTensor;
use loss_core::{Backend, Loss};
use loss_dbnet::{targets, BalancedBceConfig, DiceConfig, MaskedInput};
use proptest::prelude::*;

fn t(values: &[f64]) -> NdTensor {
    NdTensor::from_f64(values.to_vec(), &[values.len()]).unwrap()
}

/// The spec's formula with a full sort, in plain Rust.
fn sorted_mining(p: &[f64], g: &[f64], m: &[f64], ratio: f64, fallback: usize) -> f64 {
    let bce = |p: f64, y: f64| -(y * p.ln().max(-100.0) + (1.0 - y) * (1.0 - p).ln().max(-100.0));
    let pos: Vec<f64> = g.iter().zip(m).map(|(g, m)| g * m).collect();
    let neg: Vec<f64> = g.iter().zip(m).map(|(g, m)| (1.0 - g) * m).collect();
    let n_pos = pos.iter().sum::<f64>().floor() as usize;
    let n_neg = neg.iter().sum::<f64>().floor() as usize;
    let k = if n_pos == 0 {
        n_neg.min(fallback)
    } else {
        n_neg.min((n_pos as f64 * ratio).floor() as usize)
    };
    if n_pos + k == 0 {
        return 0.0;
    }
    let losses: Vec<f64> = p.iter().zip(g).map(|(&p, &y)| bce(p, y)).collect();
    let pos_loss: f64 = losses.iter().zip(&pos).map(|(l, w)| l * w).sum();
    let mut neg_loss: Vec<f64> = losses.iter().zip(&neg).map(|(l, w)| l * w).collect();
    neg_loss.sort_by(|a, b| b.total_cmp(a));
    (pos_loss + neg_loss[..k].iter().sum::<f64>()) / (n_pos as f64 + k as f64 + 1e-6)
}

fn pool() -> impl Strategy<Value = (Vec<f64>, Vec<f64>, Vec<f64>)> {
    (1usize..40).prop_flat_map(|n| {
        (
            prop::collection::vec(0.0f64..=1.0, n),
            prop::collection::vec(prop::bool::weighted(0.3).prop_map(f64::from), n),
            prop::collection::vec(prop_oneof![Just(1.0), Just(0.0), 0.0f64..=1.0], n),
        )
    })
}

proptest! {
    #[test]
    fn selection_equals_a_full_sort(
        (p, g, m) in pool(),
        ratio in 0.0f64..5.0,
        fallback in 0usize..10,
    ) {
        let bce = BalancedBceConfig::new()
            .with_negative_ratio(ratio)
            .with_fallback_negative_num(fallback)
            .init()
            .unwrap();
        let (pt, gt, mt) = (t(&p), t(&g), t(&m));

        let got = bce.forward(MaskedInput { pred: &pt, target: &gt, mask: &mt }).unwrap();

        let want = sorted_mining(&p, &g, &m, ratio, fallback);
        let got = got.loss.to_f64().unwrap();
        prop_assert!((got - want).abs() <= 1e-9 * want.abs().max(1.0), "{} vs {}", got, want);
    }

    #[test]
    fn dice_stays_in_the_unit_interval((p, g, m) in pool()) {
        let dice = DiceConfig::new().init().unwrap();
        let (pt, gt, mt) = (t(&p), t(&g), t(&m));

        let got = dice.forward(MaskedInput { pred: &pt, target: &gt, mask: &mt }).unwrap();

        let got = got.loss.to_f64().unwrap();
        prop_assert!((0.0..=1.0).contains(&got), "{}", got);
    }

    #[test]
    fn rescale_matches_its_definition(
        n in 1usize..3,
        h in 1usize..40,
        w in 1usize..40,
        out_h in 1usize..20,
        out_w in 1usize..20,
        ratio in prop_oneof![Just(0.25), Just(0.5), Just(1.0), 0.05f64..2.0],
    ) {
        let values: Vec<f64> = (0..n * h * w).map(|i| i as f64 + 1.0).collect();
        let map = NdTensor::from_f64(values.clone(), &[n, h, w]).unwrap();

        let got = targets::rescale_to(&map, ratio, (out_h, out_w)).unwrap();

        let h2 = (h as f64 * ratio + 0.5).floor() as usize;
        let w2 = (w as f64 * ratio + 0.5).floor() as usize;
        let mut want = Vec::new();
        for b in 0..n {
            for i in 0..out_h {
                for j in 0..out_w {
                    want.push(if i < h2 && j < w2 {
                        values[b * h * w + (i * h / h2) * w + j * w / w2]
                    } else {
                        0.0
                    });
                }
            }
        }
        prop_assert_eq!(got.shape(), vec![n, out_h, out_w]);
        prop_assert_eq!(got.to_vec_f64().unwrap(), want);
    }
}
