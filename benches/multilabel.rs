//! Forward + backward of the multi-label presets `bce`, `focal` and `db` on libtorch CPU, the
//! fused kernel against the generic path (`ResampleLoss::with_fused(false)`).
//!
//! ```text
//! source scripts/env.sh
//! cargo bench --bench multilabel --features tch,multilabel,dbnet
//! ```
//!
//! Sizes 32×90, 256×90 (Reuters-21578), 32×18211 and 256×18211 (a MeSH-sized label set), f32
//! logits uniform in [−6, 6), targets drawn with long-tailed class priors (about 1.2 labels per
//! row). Each iteration takes a fresh leaf on the same storage, as a training step would, so
//! the gradient is assigned, not accumulated. Threads: libtorch's and rayon's defaults.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use losslab::core::config::MultiLabelPreset;
use losslab::core::MultiLabelConfig;
use losslab::multilabel::{MultiLabelInput, ResampleLoss};
use losslab::tch_backend::tch::{Kind, Tensor};
use losslab::tch_backend::TchTensor;
use losslab::Loss;

/// Seeded logits, targets and the class counts they were drawn from.
struct Inputs {
    logits: Tensor,
    targets: TchTensor,
    class_freq: Vec<f64>,
    train_num: f64,
}

fn inputs(n: i64, classes: i64) -> Inputs {
    losslab::tch_backend::tch::manual_seed(11);
    let train_num = if classes <= 100 { 7769.0 } else { 100_000.0 };
    let class_freq: Vec<f64> = (1..=classes)
        .map(|rank| {
            (0.4 * train_num * (rank as f64).powf(-1.4)).floor().clamp(1.0, train_num - 1.0)
        })
        .collect();
    let priors: Vec<f32> = class_freq.iter().map(|&f| (f / train_num) as f32).collect();
    let priors = Tensor::from_slice(&priors).reshape([1, classes]);
    let opts = (Kind::Float, losslab::tch_backend::tch::Device::Cpu);
    let logits = Tensor::rand([n, classes], opts) * 12.0 - 6.0;
    let targets = Tensor::rand([n, classes], opts).lt_tensor(&priors).to_kind(Kind::Float);
    Inputs { logits, targets: TchTensor::from(targets), class_freq, train_num }
}

fn loss(preset: MultiLabelPreset, inputs: &Inputs, fused: bool) -> ResampleLoss {
    let config = MultiLabelConfig {
        preset: Some(preset),
        class_freq: Some(inputs.class_freq.clone()),
        train_num: Some(inputs.train_num),
        ..MultiLabelConfig::default()
    };
    ResampleLoss::from_config(&config).expect("a valid preset").with_fused(fused)
}

fn step(loss: &ResampleLoss, inputs: &Inputs) {
    let leaf = inputs.logits.detach().set_requires_grad(true);
    let z = TchTensor::from(leaf.shallow_clone());
    let out = loss.forward(MultiLabelInput::new(&z, &inputs.targets)).expect("forward");
    out.loss.backward();
}

fn multilabel(c: &mut Criterion) {
    let presets = [
        ("bce", MultiLabelPreset::Bce),
        ("focal", MultiLabelPreset::Focal),
        ("db", MultiLabelPreset::Db),
    ];
    for (name, preset) in presets {
        let mut group = c.benchmark_group(format!("multilabel/{name}"));
        group.warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
        group.sample_size(20);
        for (n, classes) in [(32, 90), (256, 90), (32, 18211), (256, 18211)] {
            let inputs = inputs(n, classes);
            let size = format!("{n}x{classes}");
            for (path, fused) in [("fused", true), ("generic", false)] {
                let loss = loss(preset, &inputs, fused);
                group.bench_with_input(BenchmarkId::new(path, &size), &inputs, |b, inputs| {
                    b.iter(|| step(&loss, inputs))
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, multilabel);
criterion_main!(benches);
