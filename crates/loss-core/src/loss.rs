//! The `Loss` trait and the reduction shared by every loss.

use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::error::{LossError, Result};

/// What a loss returns: the loss itself, and for losses made of parts (DBNet) the named parts,
/// whose sum is `loss`.
#[derive(Debug, Clone)]
pub struct LossOutput<T> {
    /// The loss, reduced as configured (or `[N, C]` under [`Reduction::None`]).
    pub loss: T,
    /// Named terms in a fixed order; empty for single-term losses.
    pub terms: Vec<(&'static str, T)>,
}

impl<T> LossOutput<T> {
    /// An output with no named terms.
    pub fn single(loss: T) -> Self {
        Self { loss, terms: Vec::new() }
    }

    /// The term called `name`, if this loss has it.
    pub fn term(&self, name: &str) -> Option<&T> {
        self.terms.iter().find(|(n, _)| *n == name).map(|(_, t)| t)
    }
}

/// A loss function over tensors of backend `B`.
///
/// `Input` bundles the tensors one call needs (logits and targets, or predictions and target
/// maps). Inputs are borrowed and never modified.
pub trait Loss<B: Backend> {
    /// The tensors of one call.
    type Input<'a>
    where
        B: 'a;

    /// Computes the loss.
    fn forward(&self, input: Self::Input<'_>) -> Result<LossOutput<B>>;
}

/// How elementwise losses are reduced; one type for the whole workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reduction {
    /// Keep the elementwise loss.
    None,
    /// Sum of all elements (0 for an empty tensor).
    Sum,
    /// Sum divided by the element count, or by `avg_factor` when one is given.
    #[default]
    Mean,
}

impl Reduction {
    /// Reduces `loss`. `avg_factor` replaces the element count under [`Reduction::Mean`] and is
    /// ignored otherwise. A mean over an empty tensor without `avg_factor` is
    /// [`LossError::EmptyMean`].
    pub fn apply<B: Backend>(self, loss: &B, avg_factor: Option<f64>) -> Result<B> {
        match self {
            Reduction::None => Ok(loss.shallow_clone()),
            Reduction::Sum => loss.sum_all(),
            Reduction::Mean => {
                let denom = match avg_factor {
                    Some(f) if f > 0.0 && f.is_finite() => f,
                    Some(f) => {
                        return Err(LossError::InvalidConfig {
                            key: "avg_factor".into(),
                            reason: format!("must be finite and > 0, got {f}"),
                        })
                    }
                    None if loss.numel() == 0 => {
                        return Err(LossError::EmptyMean { shape: loss.shape() })
                    }
                    None => loss.numel() as f64,
                };
                loss.sum_all()?.mul_scalar(1.0 / denom)
            }
        }
    }
}
