//! The one error type of the workspace's loss crates.

use thiserror::Error;

/// Formats a multi-dimensional index as `[i, j, k]`.
pub fn fmt_index(index: &[usize]) -> String {
    let parts: Vec<String> = index.iter().map(usize::to_string).collect();
    format!("[{}]", parts.join(", "))
}

/// Converts a flat row-major index into a multi-dimensional one for `shape`.
pub fn unravel_index(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (slot, &dim) in index.iter_mut().zip(shape).rev() {
        if dim > 0 {
            *slot = flat % dim;
            flat /= dim;
        }
    }
    index
}

/// Everything a loss, a backend or a config can reject.
///
/// Every variant names what it rejects: the tensor or key, the index, the value, the shapes.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum LossError {
    /// Two tensors that must have the same shape do not.
    #[error("shape mismatch: {what}: expected {expected:?}, got {got:?}")]
    ShapeMismatch { what: String, expected: Vec<usize>, got: Vec<usize> },

    /// A tensor has the wrong number of dimensions or a wrong size in one of them.
    #[error("invalid shape for {what}: {got:?} ({reason})")]
    InvalidShape { what: String, got: Vec<usize>, reason: String },

    /// An element of an input tensor is outside what the loss accepts.
    #[error("invalid value in {what} at index {}: {value} ({reason})", fmt_index(.index))]
    InvalidValue { what: String, index: Vec<usize>, value: f64, reason: String },

    /// A per-class statistic is unusable (zero count, count not below `train_num`, ...).
    #[error("invalid class_freq for class {class}: {value} ({reason})")]
    InvalidClassFreq { class: usize, value: f64, reason: String },

    /// `class_freq` has a different length than the number of classes.
    #[error("class_freq has {got} entries but the logits have {expected} classes")]
    ClassCountMismatch { expected: usize, got: usize },

    /// A configuration key holds a value out of its range, or a needed key is missing.
    #[error("invalid config key `{key}`: {reason}")]
    InvalidConfig { key: String, reason: String },

    /// A TOML document could not be parsed into a config.
    #[error("config parse error: {0}")]
    Parse(String),

    /// Tensors live on different devices.
    #[error("tensors on different devices: {what} is on {got}, expected {expected}")]
    DeviceMismatch { what: String, expected: String, got: String },

    /// A device was asked for that this build of libtorch or this machine does not have.
    #[error("device {requested} is not available: {reason}")]
    DeviceUnavailable { requested: String, reason: String },

    /// A tensor has an element type the loss does not accept (integer logits, ...).
    #[error("unsupported dtype for {what}: {dtype}")]
    UnsupportedDtype { what: String, dtype: String },

    /// A scalar was read out of a tensor that is not a scalar.
    #[error("expected a scalar tensor, got shape {shape:?}")]
    NotScalar { shape: Vec<usize> },

    /// `mean` over an empty batch.
    #[error("mean reduction over an empty tensor of shape {shape:?} (use `sum`, which gives 0)")]
    EmptyMean { shape: Vec<usize> },

    /// The tensor library reported an error.
    #[error("backend error: {0}")]
    Backend(String),
}

/// Result alias of the loss crates.
pub type Result<T, E = LossError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unravel_is_row_major() {
        assert_eq!(unravel_index(7, &[2, 3, 4]), vec![0, 1, 3]);
        assert_eq!(unravel_index(23, &[2, 3, 4]), vec![1, 2, 3]);
        assert_eq!(unravel_index(0, &[]), Vec::<usize>::new());
    }

    #[test]
    fn messages_name_the_index_and_value() {
        let err = LossError::InvalidValue {
            what: "targets".into(),
            index: vec![0, 2],
            value: -1.0,
            reason: "must be 0 or 1".into(),
        };
        assert_eq!(
            err.to_string(),
            "invalid value in targets at index [0, 2]: -1 (must be 0 or 1)"
        );
    }
}
