//! [`Backend`] for libtorch tensors, through the [`TchTensor`] handle.

use std::ops::Deref;

use loss_core::{
    Backend, DType, FusedKernel, HostData, HostDataMut, LossError, Result, ValueCheck,
};
use tch::{Device, Kind, TchError, Tensor};

/// A [`tch::Tensor`] seen as a [`Backend`] tensor.
///
/// A thin handle (Rust's orphan rule keeps `Backend` from being implemented on `tch::Tensor`
/// directly): it dereferences to the tensor, so `backward()`, `grad()` and the rest of tch's
/// API stay one call away, and [`TchTensor::into_inner`] gives the tensor back.
#[derive(Debug)]
pub struct TchTensor(pub Tensor);

impl TchTensor {
    /// The wrapped tensor.
    pub fn into_inner(self) -> Tensor {
        self.0
    }

    /// The wrapped tensor, borrowed.
    pub fn tensor(&self) -> &Tensor {
        &self.0
    }
}

impl From<Tensor> for TchTensor {
    fn from(t: Tensor) -> Self {
        Self(t)
    }
}

impl From<TchTensor> for Tensor {
    fn from(t: TchTensor) -> Self {
        t.0
    }
}

impl Deref for TchTensor {
    type Target = Tensor;
    fn deref(&self) -> &Tensor {
        &self.0
    }
}

/// Wraps a libtorch result.
fn w(r: std::result::Result<Tensor, TchError>) -> Result<TchTensor> {
    r.map(TchTensor).map_err(err)
}

fn err(e: TchError) -> LossError {
    LossError::Backend(e.to_string())
}

fn kind_of(dtype: DType) -> Result<Kind> {
    match dtype {
        DType::F16 => Ok(Kind::Half),
        DType::BF16 => Ok(Kind::BFloat16),
        DType::F32 => Ok(Kind::Float),
        DType::F64 => Ok(Kind::Double),
        DType::Integer => Err(LossError::UnsupportedDtype {
            what: "conversion target".into(),
            dtype: dtype.to_string(),
        }),
    }
}

fn device_label(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(n) => format!("cuda:{n}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn dim_i64(t: &Tensor, dim: usize) -> Result<i64> {
    let rank = t.dim();
    if dim >= rank {
        return Err(LossError::Backend(format!(
            "dimension {dim} out of range for shape {:?}",
            t.size()
        )));
    }
    i64::try_from(dim).map_err(|_| LossError::Backend(format!("dimension {dim} too large")))
}

fn to_i64(v: usize) -> Result<i64> {
    i64::try_from(v).map_err(|_| LossError::Backend(format!("size {v} does not fit in i64")))
}

fn shape_i64(shape: &[usize]) -> Result<Vec<i64>> {
    shape.iter().map(|&d| to_i64(d)).collect()
}

impl Backend for TchTensor {
    fn shallow_clone(&self) -> Self {
        Self(self.0.shallow_clone())
    }

    fn shape(&self) -> Vec<usize> {
        self.0.size().iter().map(|&d| usize::try_from(d).unwrap_or(0)).collect()
    }

    fn dtype(&self) -> DType {
        match self.0.kind() {
            Kind::Half => DType::F16,
            Kind::BFloat16 => DType::BF16,
            Kind::Float => DType::F32,
            Kind::Double => DType::F64,
            _ => DType::Integer,
        }
    }

    fn device_name(&self) -> String {
        device_label(self.0.device())
    }

    fn from_values_like(&self, values: &[f64], shape: &[usize]) -> Result<Self> {
        let expected: usize = shape.iter().product();
        if expected != values.len() {
            return Err(LossError::Backend(format!(
                "{} values cannot fill shape {shape:?}",
                values.len()
            )));
        }
        let kind = match self.0.kind() {
            k @ (Kind::Half | Kind::BFloat16 | Kind::Float | Kind::Double) => k,
            _ => Kind::Float,
        };
        let shape = shape_i64(shape)?;
        w(Tensor::f_from_slice(values)
            .and_then(|t| t.f_reshape(shape.as_slice()))
            .and_then(|t| t.f_to_dtype(kind, false, false))
            .and_then(|t| t.f_to_device(self.0.device())))
    }

    fn full_like(&self, value: f64) -> Result<Self> {
        w(self.0.f_full_like(value))
    }

    fn to_dtype(&self, dtype: DType) -> Result<Self> {
        w(self.0.f_to_kind(kind_of(dtype)?))
    }

    fn detach(&self) -> Self {
        Self(self.0.detach())
    }

    fn requires_grad(&self) -> bool {
        self.0.requires_grad()
    }

    fn add(&self, other: &Self) -> Result<Self> {
        w(self.0.f_add(&other.0))
    }

    fn sub(&self, other: &Self) -> Result<Self> {
        w(self.0.f_sub(&other.0))
    }

    fn mul(&self, other: &Self) -> Result<Self> {
        w(self.0.f_mul(&other.0))
    }

    fn div(&self, other: &Self) -> Result<Self> {
        w(self.0.f_div(&other.0))
    }

    fn maximum(&self, other: &Self) -> Result<Self> {
        w(self.0.f_maximum(&other.0))
    }

    fn minimum(&self, other: &Self) -> Result<Self> {
        w(self.0.f_minimum(&other.0))
    }

    fn select_where(&self, on_true: &Self, on_false: &Self) -> Result<Self> {
        let cond = self.0.f_ne(0.0).map_err(err)?;
        w(on_true.0.f_where_self(&cond, &on_false.0))
    }

    fn add_scalar(&self, value: f64) -> Result<Self> {
        w(self.0.f_add_scalar(value))
    }

    fn mul_scalar(&self, value: f64) -> Result<Self> {
        w(self.0.f_mul_scalar(value))
    }

    fn pow_scalar(&self, exponent: f64) -> Result<Self> {
        w(self.0.f_pow_tensor_scalar(exponent))
    }

    fn clamp(&self, min: Option<f64>, max: Option<f64>) -> Result<Self> {
        match (min, max) {
            (Some(lo), Some(hi)) => w(self.0.f_clamp(lo, hi)),
            (Some(lo), None) => w(self.0.f_clamp_min(lo)),
            (None, Some(hi)) => w(self.0.f_clamp_max(hi)),
            (None, None) => Ok(Backend::shallow_clone(self)),
        }
    }

    fn neg(&self) -> Result<Self> {
        w(self.0.f_neg())
    }

    fn exp(&self) -> Result<Self> {
        w(self.0.f_exp())
    }

    fn ln(&self) -> Result<Self> {
        w(self.0.f_log())
    }

    fn abs(&self) -> Result<Self> {
        w(self.0.f_abs())
    }

    fn sigmoid(&self) -> Result<Self> {
        w(self.0.f_sigmoid())
    }

    // libtorch's softplus is `log1p(exp(x))` up to its threshold of 20 and `x` above it: it never
    // overflows, is within 2.1e-9 of the exact value at the switch, and its gradient is `σ(x)`.
    fn softplus(&self) -> Result<Self> {
        w(self.0.f_softplus())
    }

    fn log_sigmoid(&self) -> Result<Self> {
        w(self.0.f_log_sigmoid())
    }

    fn gt_scalar(&self, value: f64) -> Result<Self> {
        w(self.0.f_gt(value).and_then(|m| m.f_to_kind(self.0.kind())))
    }

    fn ge_scalar(&self, value: f64) -> Result<Self> {
        w(self.0.f_ge(value).and_then(|m| m.f_to_kind(self.0.kind())))
    }

    fn lt_scalar(&self, value: f64) -> Result<Self> {
        w(self.0.f_lt(value).and_then(|m| m.f_to_kind(self.0.kind())))
    }

    fn eq_scalar(&self, value: f64) -> Result<Self> {
        w(self.0.f_eq(value).and_then(|m| m.f_to_kind(self.0.kind())))
    }

    fn sum_all(&self) -> Result<Self> {
        w(self.0.f_sum(None::<Kind>))
    }

    fn sum_dim(&self, dim: usize, keepdim: bool) -> Result<Self> {
        let d = dim_i64(&self.0, dim)?;
        w(self.0.f_sum_dim_intlist([d].as_slice(), keepdim, None::<Kind>))
    }

    fn max_all(&self) -> Result<Self> {
        if self.0.numel() == 0 {
            return Err(LossError::Backend("max of an empty tensor".into()));
        }
        w(self.0.f_max())
    }

    fn max_dim(&self, dim: usize, keepdim: bool) -> Result<Self> {
        w(self.0.f_amax([dim_i64(&self.0, dim)?].as_slice(), keepdim))
    }

    fn min_dim(&self, dim: usize, keepdim: bool) -> Result<Self> {
        w(self.0.f_amin([dim_i64(&self.0, dim)?].as_slice(), keepdim))
    }

    fn topk_sum(&self, k: usize) -> Result<Self> {
        let n = self.0.numel();
        if k > n {
            return Err(LossError::Backend(format!("top-k with k = {k} of {n} elements")));
        }
        let flat = self.0.f_reshape([-1]).map_err(err)?;
        if k == 0 {
            // Keeps the graph connected, so a zero gradient flows back to every element.
            return w(flat.f_sum(None::<Kind>).and_then(|s| s.f_mul_scalar(0.0)));
        }
        let (values, _) = flat.f_topk(to_i64(k)?, 0, true, false).map_err(err)?;
        w(values.f_sum(None::<Kind>))
    }

    fn reshape(&self, shape: &[usize]) -> Result<Self> {
        w(self.0.f_reshape(shape_i64(shape)?))
    }

    fn select(&self, dim: usize, index: usize) -> Result<Self> {
        w(self.0.f_select(dim_i64(&self.0, dim)?, to_i64(index)?))
    }

    fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Self> {
        w(self.0.f_narrow(dim_i64(&self.0, dim)?, to_i64(start)?, to_i64(len)?))
    }

    fn index_select(&self, dim: usize, indices: &[usize]) -> Result<Self> {
        let d = dim_i64(&self.0, dim)?;
        let idx: Vec<i64> = indices.iter().map(|&i| to_i64(i)).collect::<Result<_>>()?;
        let idx = Tensor::f_from_slice(&idx).and_then(|t| t.f_to_device(self.0.device()));
        w(idx.and_then(|idx| self.0.f_index_select(d, &idx)))
    }

    fn pad_end(&self, dim: usize, amount: usize) -> Result<Self> {
        dim_i64(&self.0, dim)?;
        // constant_pad_nd takes (before, after) pairs from the last dimension backwards, so the
        // pair of `dim` is the last one in a list that stops there.
        let mut pad = vec![0i64; 2 * (self.0.dim() - dim)];
        if let Some(after) = pad.last_mut() {
            *after = to_i64(amount)?;
        }
        w(self.0.f_constant_pad_nd(pad.as_slice()))
    }

    fn to_f64(&self) -> Result<f64> {
        if self.0.numel() != 1 {
            return Err(LossError::NotScalar { shape: self.shape() });
        }
        self.0
            .f_reshape([-1])
            .and_then(|t| t.f_to_kind(Kind::Double))
            .and_then(|t| t.f_double_value(&[0]))
            .map_err(err)
    }

    fn to_vec_f64(&self) -> Result<Vec<f64>> {
        let flat = self
            .0
            .f_detach()
            .and_then(|t| t.f_to_device(Device::Cpu))
            .and_then(|t| t.f_to_kind(Kind::Double))
            .and_then(|t| t.f_reshape([-1]))
            .and_then(|t| t.f_contiguous())
            .map_err(err)?;
        Vec::<f64>::try_from(&flat).map_err(err)
    }

    fn first_violation(&self, check: ValueCheck) -> Result<Option<(usize, f64)>> {
        let x = self.0.f_detach().and_then(|t| t.f_reshape([-1])).map_err(err)?;
        let bad = match check {
            ValueCheck::NonFinite => x.f_isfinite().and_then(|m| m.f_logical_not()),
            ValueCheck::NotBinary => {
                x.f_ne(0.0).and_then(|a| x.f_ne(1.0).and_then(|b| a.f_logical_and(&b)))
            }
            ValueCheck::OutsideRange { lo, hi } => x
                .f_ge(lo)
                .and_then(|a| x.f_le(hi).and_then(|b| a.f_logical_and(&b)))
                .and_then(|ok| ok.f_logical_not()),
            ValueCheck::Below { lo } => x.f_ge(lo).and_then(|ok| ok.f_logical_not()),
        }
        .map_err(err)?;
        let any = bad.f_any().and_then(|a| a.f_int64_value(&[])).map_err(err)?;
        if any == 0 {
            return Ok(None);
        }
        // argmax returns the first maximal index: the first offending element.
        let first = bad
            .f_to_kind(Kind::Uint8)
            .and_then(|b| b.f_argmax(0, false))
            .and_then(|i| i.f_int64_value(&[]))
            .map_err(err)?;
        let value = x.f_double_value(&[first]).map_err(err)?;
        let index =
            usize::try_from(first).map_err(|_| LossError::Backend("negative index".into()))?;
        Ok(Some((index, value)))
    }

    fn host_data(&self) -> Option<HostData<'_>> {
        let t = &self.0;
        if t.device() != Device::Cpu || !t.is_contiguous() {
            return None;
        }
        let n = t.numel();
        let ptr = t.data_ptr();
        match t.kind() {
            Kind::Float if n == 0 => Some(HostData::F32(&[])),
            Kind::Double if n == 0 => Some(HostData::F64(&[])),
            // SAFETY: a contiguous CPU tensor of this kind holds `n` initialised elements of
            // that type at `data_ptr`, and the storage lives at least as long as `&self`.
            Kind::Float => {
                Some(HostData::F32(unsafe { std::slice::from_raw_parts(ptr.cast(), n) }))
            }
            Kind::Double => {
                Some(HostData::F64(unsafe { std::slice::from_raw_parts(ptr.cast(), n) }))
            }
            _ => None,
        }
    }

    fn fused_scalar(&self, kernel: &mut FusedKernel<'_>) -> Result<Option<Self>> {
        let Some(values) = self.host_data() else { return Ok(None) };
        let kind = self.0.kind();
        let grad = Tensor::f_empty(self.0.size(), (kind, Device::Cpu)).map_err(err)?;
        let n = grad.numel();
        let ptr = grad.data_ptr();
        // SAFETY: `grad` is a fresh contiguous CPU tensor of `n` elements of `kind`, owned here
        // and not aliased; any bit pattern is a valid f32/f64, and the kernel overwrites all.
        let buf = match kind {
            _ if n == 0 => match kind {
                Kind::Float => HostDataMut::F32(&mut []),
                _ => HostDataMut::F64(&mut []),
            },
            Kind::Float => {
                HostDataMut::F32(unsafe { std::slice::from_raw_parts_mut(ptr.cast(), n) })
            }
            _ => HostDataMut::F64(unsafe { std::slice::from_raw_parts_mut(ptr.cast(), n) }),
        };
        let value = kernel(values, buf)?;
        let out = Tensor::f_from_slice(&[value])
            .and_then(|t| t.f_reshape([0i64; 0]))
            .and_then(|t| t.f_to_kind(kind))
            .map_err(err)?;
        attach_gradient(out, &self.0, grad).map(|t| Some(Self(t)))
    }
}

#[cfg(fused_grad_node)]
mod node {
    use std::ffi::{c_char, c_int, CStr};

    use tch::Tensor;

    use loss_core::{LossError, Result};

    extern "C" {
        /// `csrc/fused_grad.cpp`: records `out` as the output of a node whose backward hands
        /// `grad` on (scaled by the incoming gradient) to `input`'s history.
        fn losslab_attach_fused_grad(
            out: *const torch_sys::C_tensor,
            input: *const torch_sys::C_tensor,
            grad: *const torch_sys::C_tensor,
            err: *mut c_char,
            err_len: usize,
        ) -> c_int;
    }

    /// Makes `out` the output of a `FusedLossBackward` node (see `csrc/fused_grad.cpp`): no
    /// work in forward; backward hands `grad` on, so a leaf adopts it as `.grad` uncopied.
    pub(super) fn attach_gradient(out: Tensor, input: &Tensor, grad: Tensor) -> Result<Tensor> {
        let mut message = [0 as c_char; 512];
        // SAFETY: the three pointers are live tensor handles owned by the callers for the whole
        // call; the C++ side copies the handles it keeps (reference-counted) and writes at most
        // `message.len()` bytes, NUL-terminated, into `message`.
        let status = unsafe {
            losslab_attach_fused_grad(
                out.as_ptr(),
                input.as_ptr(),
                grad.as_ptr(),
                message.as_mut_ptr(),
                message.len(),
            )
        };
        if status != 0 {
            // SAFETY: on failure the C++ side wrote a NUL-terminated string into `message`.
            let text = unsafe { CStr::from_ptr(message.as_ptr()) };
            return Err(LossError::Backend(text.to_string_lossy().into_owned()));
        }
        Ok(out)
    }
}

#[cfg(fused_grad_node)]
use node::attach_gradient;

/// Without the node (platforms where `csrc/fused_grad.cpp` is not built): `d − detach(d)` with
/// `d = input · grad` is exactly 0 in value and has gradient `grad` with respect to `input`, so
/// backward hands `grad` on, scaled by the incoming gradient, at the cost of one dot product.
#[cfg(not(fused_grad_node))]
fn attach_gradient(out: Tensor, input: &Tensor, grad: Tensor) -> Result<Tensor> {
    if !input.requires_grad() {
        return Ok(out);
    }
    let d = input.f_reshape([-1]).and_then(|x| x.f_dot(&grad.f_reshape([-1])?)).map_err(err)?;
    let zero = d.f_sub(&d.detach()).map_err(err)?;
    out.f_add(&zero).map_err(err)
}
