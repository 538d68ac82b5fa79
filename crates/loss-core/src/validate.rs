//! Input checks shared by the loss crates; each failure names the tensor, index and value.

use crate::backend::{Backend, ValueCheck};
use crate::error::{unravel_index, LossError, Result};

/// `got` must have exactly the shape of `expected`; no silent broadcasting.
pub fn same_shape<B: Backend>(what: &str, expected: &B, got: &B) -> Result<()> {
    let (e, g) = (expected.shape(), got.shape());
    if e != g {
        return Err(LossError::ShapeMismatch { what: what.into(), expected: e, got: g });
    }
    Ok(())
}

/// `got` must live on `reference`'s device.
pub fn same_device<B: Backend>(what: &str, reference: &B, got: &B) -> Result<()> {
    check_devices(what, &reference.device_name(), &got.device_name())
}

/// Device names must agree; the error names both.
pub fn check_devices(what: &str, expected: &str, got: &str) -> Result<()> {
    if expected != got {
        return Err(LossError::DeviceMismatch {
            what: what.into(),
            expected: expected.into(),
            got: got.into(),
        });
    }
    Ok(())
}

/// Converts a floating input to the type a loss computes in (f64 stays, f32 stays, half types
/// become f32); integer inputs are [`LossError::UnsupportedDtype`].
pub fn to_compute_type<B: Backend>(what: &str, t: &B) -> Result<B> {
    let dtype = t.dtype();
    match dtype.compute_type() {
        Some(c) if c == dtype => Ok(t.shallow_clone()),
        Some(c) => t.to_dtype(c),
        None => Err(LossError::UnsupportedDtype { what: what.into(), dtype: dtype.to_string() }),
    }
}

/// Converts `t` (any dtype, integers included: targets may be integer) to `like`'s dtype.
pub fn to_type_of<B: Backend>(t: &B, like: &B) -> Result<B> {
    if t.dtype() == like.dtype() {
        Ok(t.shallow_clone())
    } else {
        t.to_dtype(like.dtype())
    }
}

/// Every element must pass `check`; the error names the first one that does not.
pub fn values<B: Backend>(what: &str, t: &B, check: ValueCheck, reason: &str) -> Result<()> {
    if let Some((flat, value)) = t.first_violation(check)? {
        return Err(LossError::InvalidValue {
            what: what.into(),
            index: unravel_index(flat, &t.shape()),
            value,
            reason: reason.into(),
        });
    }
    Ok(())
}
