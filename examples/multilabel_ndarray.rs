//! The Distribution-Balanced loss on the pure-Rust backend, from a TOML table.
//!
//! ```text
//! cargo run --example multilabel_ndarray --features ndarray
//! ```

use losslab::core::config::LossFile;
use losslab::core::ndarray_backend::NdTensor;
use losslab::multilabel::{MultiLabelInput, ResampleLoss};
use losslab::{Backend, Loss, LossError};

fn main() -> Result<(), LossError> {
    let file = LossFile::from_toml(
        r#"
        [loss]
        type = "multilabel"
        preset = "db"
        class_freq = [10, 50, 90]
        train_num = 100
        "#,
    )?;
    let losslab::core::LossConfig::Multilabel(config) = file.loss else {
        return Err(LossError::InvalidConfig {
            key: "type".into(),
            reason: "expected multilabel".into(),
        });
    };
    let loss = ResampleLoss::from_config(&config)?;

    let logits = NdTensor::from_f64(vec![2.0, -1.0, 0.5, -3.0, 0.0, 4.0], &[2, 3])?;
    let targets = NdTensor::from_f64(vec![1.0, 0.0, 0.0, 0.0, 0.0, 1.0], &[2, 3])?;
    let out = loss.forward(MultiLabelInput::new(&logits, &targets))?;
    println!("DB loss = {:.6}", out.loss.to_f64()?);

    // Errors name what is wrong: here the value and its position.
    let bad = NdTensor::from_f64(vec![1.0, 0.0, 2.0, 0.0, 0.0, 1.0], &[2, 3])?;
    match loss.forward(MultiLabelInput::new(&logits, &bad)) {
        Err(e) => println!("rejected: {e}"),
        Ok(_) => println!("unexpectedly accepted"),
    }
    Ok(())
}
