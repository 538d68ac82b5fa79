//! Forward + backward of the DBNet loss (preset `dbnet`: balanced BCE with hard-negative mining,
//! Dice, masked L1; alpha 5, beta 10) on libtorch CPU, fused kernel against the generic path.
//!
//! ```text
//! source scripts/env.sh
//! cargo bench --bench dbnet --features tch,multilabel,dbnet
//! ```
//!
//! Sizes: 2×3×160×160 and 8×3×640×640, f32. Each iteration takes a fresh leaf on the same
//! storage (as a training step would), so the gradient is assigned, not accumulated.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use losslab::dbnet::{DbInput, DbLoss, DbNetConfig, DbNetPreset};
use losslab::tch_backend::tch::{Device, Kind, Tensor};
use losslab::tch_backend::TchTensor;
use losslab::Loss;

/// Seeded inputs: probabilities in (0, 1), about 10 % text, a shrink mask with 5 % ignored
/// pixels, a threshold target in [0.3, 0.7] and a threshold mask over about 30 % of the pixels.
struct Inputs {
    preds: Tensor,
    targets: [TchTensor; 4],
}

fn inputs(n: i64, h: i64, w: i64) -> Inputs {
    losslab::tch_backend::tch::manual_seed(7);
    let opts = (Kind::Float, Device::Cpu);
    let prob = Tensor::rand([n, 1, h, w], opts) * 0.98 + 0.01;
    let thr = Tensor::rand([n, 1, h, w], opts) * 0.6 + 0.2;
    let binary = Tensor::rand([n, 1, h, w], opts);
    let preds = Tensor::cat(&[prob, thr, binary], 1).contiguous();
    let below = |fraction: f64| Tensor::rand([n, h, w], opts).lt(fraction).to_kind(Kind::Float);
    let gt_shrink = below(0.1);
    let gt_shrink_mask = below(0.95);
    let gt_thr = Tensor::rand([n, h, w], opts) * 0.4 + 0.3;
    let gt_thr_mask = below(0.3);
    Inputs { preds, targets: [gt_shrink, gt_shrink_mask, gt_thr, gt_thr_mask].map(TchTensor::from) }
}

fn step(loss: &DbLoss, inputs: &Inputs) -> f64 {
    // A new leaf on the same storage: the gradient is assigned, not added to an old one.
    let preds = TchTensor::from(inputs.preds.detach().set_requires_grad(true));
    let [gs, gsm, gt, gtm] = &inputs.targets;
    let out = loss
        .forward(DbInput {
            preds: &preds,
            gt_shrink: gs,
            gt_shrink_mask: gsm,
            gt_thr: gt,
            gt_thr_mask: gtm,
        })
        .expect("DBNet loss");
    out.loss.backward();
    out.loss.double_value(&[])
}

fn bench(c: &mut Criterion) {
    let preset = DbNetConfig { preset: Some(DbNetPreset::Dbnet), ..DbNetConfig::default() };
    let fused = DbLoss::from_config(&preset).expect("preset");
    let generic = fused.with_fused(false);

    let mut group = c.benchmark_group("dbnet");
    for (n, h, w) in [(2, 160, 160), (8, 640, 640)] {
        let data = inputs(n, h, w);
        let name = format!("{n}x3x{h}x{w}");
        let (a, b) = (step(&fused, &data), step(&generic, &data));
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{name}: fused {a} vs generic {b}");
        if n > 2 {
            group.sample_size(10);
        }
        group.bench_with_input(BenchmarkId::new("fused", &name), &data, |bench, d| {
            bench.iter(|| step(&fused, d))
        });
        group.bench_with_input(BenchmarkId::new("generic", &name), &data, |bench, d| {
            bench.iter(|| step(&generic, d))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
