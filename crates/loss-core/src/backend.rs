//! The tensor operations the two loss families need, implemented once per backend.
//!
//! Losses are generic over [`Backend`], so each formula is written once and runs on every
//! backend: [`crate::ndarray_backend::NdTensor`] (pure Rust, forward only) and libtorch's
//! `tch::Tensor` in the `loss-tch` crate (CPU and CUDA, with autograd).
//!
//! Conventions shared by every implementation:
//! - binary operations broadcast with NumPy's rules;
//! - masks are tensors of 0 and 1 in the element type of the tensor they were made from, and
//!   carry no gradient;
//! - constants are created on the device and in the element type of the tensor they are made
//!   `like`;
//! - every operation returns a [`Result`]: a backend failure is an error, never a panic.

use std::fmt::Debug;

use crate::error::Result;

/// Element type of a tensor, as far as the losses care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F16,
    BF16,
    F32,
    F64,
    /// Any integer or boolean type: never accepted as logits or predictions.
    Integer,
}

impl DType {
    /// The type a loss computes in for inputs of this type: f64 stays f64, f32 stays f32,
    /// half types are promoted to f32, integers have none.
    pub fn compute_type(self) -> Option<DType> {
        match self {
            DType::F64 => Some(DType::F64),
            DType::F32 | DType::F16 | DType::BF16 => Some(DType::F32),
            DType::Integer => None,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::Integer => "integer",
        };
        f.write_str(name)
    }
}

/// A check of every element, answered with the first element that fails it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueCheck {
    /// NaN or ±∞.
    NonFinite,
    /// Anything but exactly 0 or 1.
    NotBinary,
    /// Anything outside the closed interval `[lo, hi]` (NaN included).
    OutsideRange { lo: f64, hi: f64 },
    /// Anything below `lo` (NaN included).
    Below { lo: f64 },
}

impl ValueCheck {
    /// Whether `v` fails the check.
    pub fn fails(self, v: f64) -> bool {
        match self {
            ValueCheck::NonFinite => !v.is_finite(),
            ValueCheck::NotBinary => v != 0.0 && v != 1.0,
            ValueCheck::OutsideRange { lo, hi } => !(lo..=hi).contains(&v),
            ValueCheck::Below { lo } => v.is_nan() || v < lo,
        }
    }
}

/// Read-only host memory of a tensor: contiguous, row-major, on the CPU.
#[derive(Debug, Clone, Copy)]
pub enum HostData<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
}

impl HostData<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            HostData::F32(v) => v.len(),
            HostData::F64(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Writable host memory for a gradient, of the element type of the tensor it belongs to.
#[derive(Debug)]
pub enum HostDataMut<'a> {
    F32(&'a mut [f32]),
    F64(&'a mut [f64]),
}

/// A fused kernel: reads the inputs it captured and `self`'s values, writes the gradient of the
/// loss with respect to them into the buffer (every element: its initial contents are
/// unspecified), and returns the loss value.
pub type FusedKernel<'k> = dyn FnMut(HostData<'_>, HostDataMut<'_>) -> Result<f64> + 'k;

/// The tensor type of a backend and the operations the losses are written in.
///
/// Implemented by the tensor type itself, so loss code reads `x.softplus()?.mul(&w)?`.
///
/// Not `Clone`: libtorch tensors are reference-counted handles, so copying one is
/// [`Backend::shallow_clone`] (a new handle on the same storage, sharing its autograd history).
pub trait Backend: Debug + Sized {
    /// A new handle on the same values (no copy of the data; the autograd graph is shared).
    fn shallow_clone(&self) -> Self;

    // ----- introspection
    /// Dimensions, outermost first.
    fn shape(&self) -> Vec<usize>;
    /// Element type.
    fn dtype(&self) -> DType;
    /// Device name, `"cpu"` or `"cuda:N"`; tensors of one call must agree on it.
    fn device_name(&self) -> String;
    /// Number of elements.
    fn numel(&self) -> usize {
        self.shape().iter().product()
    }

    // ----- construction, on `self`'s device and in `self`'s element type
    /// A tensor of `shape` holding `values` (row-major), made like `self`.
    // The receiver is the template that supplies device and element type, not the source.
    #[allow(clippy::wrong_self_convention)]
    fn from_values_like(&self, values: &[f64], shape: &[usize]) -> Result<Self>;
    /// A tensor of `self`'s shape filled with `value`.
    fn full_like(&self, value: f64) -> Result<Self>;
    /// A 0-d tensor holding `value`, made like `self`.
    fn scalar_like(&self, value: f64) -> Result<Self> {
        self.from_values_like(&[value], &[])
    }
    /// The same values in another element type (integers are rejected as a target type).
    fn to_dtype(&self, dtype: DType) -> Result<Self>;
    /// The same values, cut from the autograd graph.
    fn detach(&self) -> Self;
    /// Whether autograd tracks a gradient for this tensor (always `false` for backends without
    /// autograd). The fused kernels give a gradient to one input only, so they step aside when
    /// another input of the call needs one.
    fn requires_grad(&self) -> bool {
        false
    }

    // ----- elementwise, broadcasting
    fn add(&self, other: &Self) -> Result<Self>;
    fn sub(&self, other: &Self) -> Result<Self>;
    fn mul(&self, other: &Self) -> Result<Self>;
    fn div(&self, other: &Self) -> Result<Self>;
    /// Elementwise maximum.
    fn maximum(&self, other: &Self) -> Result<Self>;
    /// Elementwise minimum.
    fn minimum(&self, other: &Self) -> Result<Self>;
    /// `mask ? on_true : on_false`, elementwise; `self` is the mask (non-zero is true).
    fn select_where(&self, on_true: &Self, on_false: &Self) -> Result<Self>;

    // ----- elementwise with a scalar
    fn add_scalar(&self, value: f64) -> Result<Self>;
    fn mul_scalar(&self, value: f64) -> Result<Self>;
    /// `self ^ exponent`.
    fn pow_scalar(&self, exponent: f64) -> Result<Self>;
    /// Clamps into `[min, max]`; `None` leaves that side open. Gradient 0 where clamped.
    fn clamp(&self, min: Option<f64>, max: Option<f64>) -> Result<Self>;

    // ----- elementwise unary
    fn neg(&self) -> Result<Self>;
    fn exp(&self) -> Result<Self>;
    fn ln(&self) -> Result<Self>;
    fn abs(&self) -> Result<Self>;
    /// `σ(x) = 1 / (1 + e^{−x})`, evaluated without overflow.
    fn sigmoid(&self) -> Result<Self>;
    /// `ln(1 + eˣ)`, as `max(x, 0) + ln(1 + e^{−|x|})`: finite for every finite `x`.
    fn softplus(&self) -> Result<Self>;
    /// `ln σ(x) = −softplus(−x)`, finite for every finite `x`.
    fn log_sigmoid(&self) -> Result<Self>;

    // ----- comparisons, as masks without gradient
    fn gt_scalar(&self, value: f64) -> Result<Self>;
    fn ge_scalar(&self, value: f64) -> Result<Self>;
    fn lt_scalar(&self, value: f64) -> Result<Self>;
    fn eq_scalar(&self, value: f64) -> Result<Self>;

    // ----- reductions
    /// Sum of all elements, as a 0-d tensor.
    fn sum_all(&self) -> Result<Self>;
    /// Sum over `dim`.
    fn sum_dim(&self, dim: usize, keepdim: bool) -> Result<Self>;
    /// Maximum of all elements, as a 0-d tensor (an error on an empty tensor).
    fn max_all(&self) -> Result<Self>;
    /// Maximum over `dim`.
    fn max_dim(&self, dim: usize, keepdim: bool) -> Result<Self>;
    /// Minimum over `dim`.
    fn min_dim(&self, dim: usize, keepdim: bool) -> Result<Self>;
    /// Sum of the `k` largest elements of the flattened tensor, as a 0-d tensor
    /// (`k = 0` gives 0; `k` above the element count is an error). The gradient flows to the
    /// selected elements.
    fn topk_sum(&self, k: usize) -> Result<Self>;

    // ----- layout
    fn reshape(&self, shape: &[usize]) -> Result<Self>;
    /// The slice at `index` along `dim`, with that dimension removed.
    fn select(&self, dim: usize, index: usize) -> Result<Self>;
    /// `len` elements along `dim` starting at `start`.
    fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Self>;
    /// Gathers the given indices along `dim` (repeats allowed).
    fn index_select(&self, dim: usize, indices: &[usize]) -> Result<Self>;
    /// Appends `amount` zeros at the end of `dim`.
    fn pad_end(&self, dim: usize, amount: usize) -> Result<Self>;

    // ----- read-out
    /// The value of a tensor with exactly one element; any other shape is
    /// [`crate::LossError::NotScalar`].
    fn to_f64(&self) -> Result<f64>;
    /// All values, row-major, as f64 (copies to the host).
    fn to_vec_f64(&self) -> Result<Vec<f64>>;
    /// The flat row-major index and value of the first element failing `check`, if any.
    fn first_violation(&self, check: ValueCheck) -> Result<Option<(usize, f64)>>;

    // ----- fused kernels (optional: the generic formulas are used when these decline)
    /// The values without a copy, when they are f32 or f64, contiguous and on the CPU.
    fn host_data(&self) -> Option<HostData<'_>> {
        None
    }

    /// Runs a fused kernel that computes a scalar loss and its gradient with respect to `self`
    /// in one pass, and returns the loss as a 0-d tensor (in `self`'s element type) whose
    /// gradient with respect to `self` is the one the kernel wrote, scaled by the incoming
    /// gradient in backward.
    ///
    /// `Ok(None)` when the backend cannot lend host memory for `self` (another device, a
    /// non-contiguous layout, half precision): callers then use the generic formulas.
    fn fused_scalar(&self, kernel: &mut FusedKernel<'_>) -> Result<Option<Self>> {
        let _ = kernel;
        Ok(None)
    }
}
