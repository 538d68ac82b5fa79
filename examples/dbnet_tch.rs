//! The DBNet loss (paper preset) on libtorch, with its three terms and a gradient step.
//!
//! ```text
//! cargo run --example dbnet_tch --features tch
//! ```

use losslab::core::config::{DbNetConfig, DbNetPreset};
use losslab::dbnet::{DbInput, DbLoss};
use losslab::tch_backend::tch::{Device, Kind, Tensor};
use losslab::tch_backend::TchTensor;
use losslab::{Backend, Loss, LossError};

fn main() -> Result<(), LossError> {
    let loss = DbLoss::from_config(&DbNetConfig {
        preset: Some(DbNetPreset::Dbnet),
        ..DbNetConfig::default()
    })?;

    losslab::tch_backend::tch::manual_seed(0);
    let opts = (Kind::Float, Device::Cpu);
    // Probability, threshold and binary maps of two 32×32 images, all in (0, 1).
    let preds = Tensor::rand([2, 3, 32, 32], opts).set_requires_grad(true);
    // One text rectangle per image.
    let text = Tensor::zeros([2, 32, 32], opts);
    let _ = text.narrow(1, 8, 10).narrow(2, 4, 20).fill_(1.0);
    let ones = Tensor::ones([2, 32, 32], opts);
    let thr = Tensor::full([2, 32, 32], 0.3, opts);

    let (p, g, m, t) = (
        TchTensor::from(preds.shallow_clone()),
        TchTensor::from(text),
        TchTensor::from(ones.shallow_clone()),
        TchTensor::from(thr),
    );
    let input =
        DbInput { preds: &p, gt_shrink: &g, gt_shrink_mask: &m, gt_thr: &t, gt_thr_mask: &m };
    let out = loss.forward(input)?;
    for (name, term) in &out.terms {
        println!("{name:>9} = {:.6}", term.to_f64()?);
    }
    println!("{:>9} = {:.6}", "total", out.loss.to_f64()?);

    out.loss.backward();
    println!("|grad| = {:.6}", preds.grad().norm().double_value(&[]));
    Ok(())
}
