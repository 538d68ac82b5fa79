//! A pure-Rust, forward-only backend on `ndarray`, for building and testing the loss crates
//! without libtorch. Values are held and computed in f64 whatever the declared element type.

use ndarray::{ArrayD, Axis, IxDyn, Zip};

use crate::backend::{Backend, DType, FusedKernel, HostData, HostDataMut, ValueCheck};
use crate::error::{LossError, Result};

/// An n-dimensional f64 array with the element type it stands for.
#[derive(Debug, Clone, PartialEq)]
pub struct NdTensor {
    data: ArrayD<f64>,
    dtype: DType,
}

impl NdTensor {
    /// A tensor of `shape` from row-major `values`, standing for element type `dtype`.
    pub fn new(values: Vec<f64>, shape: &[usize], dtype: DType) -> Result<Self> {
        let data = ArrayD::from_shape_vec(IxDyn(shape), values)
            .map_err(|e| LossError::Backend(format!("cannot make shape {shape:?}: {e}")))?;
        Ok(Self { data, dtype })
    }

    /// An f64 tensor of `shape` from row-major `values`.
    pub fn from_f64(values: Vec<f64>, shape: &[usize]) -> Result<Self> {
        Self::new(values, shape, DType::F64)
    }

    /// Wraps an array, standing for element type `dtype`.
    pub fn from_array(data: ArrayD<f64>, dtype: DType) -> Self {
        Self { data, dtype }
    }

    /// The values.
    pub fn array(&self) -> &ArrayD<f64> {
        &self.data
    }

    fn like(&self, data: ArrayD<f64>) -> Self {
        Self { data, dtype: self.dtype }
    }

    fn map(&self, f: impl Fn(f64) -> f64) -> Result<Self> {
        Ok(self.like(self.data.mapv(f)))
    }

    fn zip(&self, other: &Self, f: impl Fn(f64, f64) -> f64) -> Result<Self> {
        let shape = broadcast_shape(self.data.shape(), other.data.shape())?;
        let a = self.data.broadcast(IxDyn(&shape)).ok_or_else(|| broadcast_err(self, other))?;
        let b = other.data.broadcast(IxDyn(&shape)).ok_or_else(|| broadcast_err(self, other))?;
        Ok(self.like(Zip::from(&a).and(&b).map_collect(|&x, &y| f(x, y))))
    }

    fn check_dim(&self, dim: usize) -> Result<()> {
        if dim >= self.data.ndim() {
            return Err(LossError::Backend(format!(
                "dimension {dim} out of range for shape {:?}",
                self.data.shape()
            )));
        }
        Ok(())
    }

    fn fold_dim(
        &self,
        dim: usize,
        keepdim: bool,
        init: f64,
        f: fn(f64, f64) -> f64,
    ) -> Result<Self> {
        self.check_dim(dim)?;
        if self.data.shape()[dim] == 0 && init.is_infinite() {
            return Err(LossError::Backend(format!("max/min over empty dimension {dim}")));
        }
        let mut out = self.data.fold_axis(Axis(dim), init, |&acc, &x| f(acc, x));
        if keepdim {
            out = out.insert_axis(Axis(dim));
        }
        Ok(self.like(out))
    }
}

fn broadcast_err(a: &NdTensor, b: &NdTensor) -> LossError {
    LossError::ShapeMismatch {
        what: "broadcast operands".into(),
        expected: a.data.shape().to_vec(),
        got: b.data.shape().to_vec(),
    }
}

fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(LossError::ShapeMismatch {
                    what: "broadcast operands".into(),
                    expected: a.to_vec(),
                    got: b.to_vec(),
                })
            }
        };
    }
    Ok(out)
}

/// `ln(1 + eˣ)` without overflow: `max(x, 0) + ln(1 + e^{−|x|})`.
fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

fn mask(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

impl Backend for NdTensor {
    fn shallow_clone(&self) -> Self {
        self.clone()
    }

    fn shape(&self) -> Vec<usize> {
        self.data.shape().to_vec()
    }

    fn dtype(&self) -> DType {
        self.dtype
    }

    fn device_name(&self) -> String {
        "cpu".into()
    }

    fn from_values_like(&self, values: &[f64], shape: &[usize]) -> Result<Self> {
        Self::new(values.to_vec(), shape, self.dtype)
    }

    fn full_like(&self, value: f64) -> Result<Self> {
        Ok(self.like(ArrayD::from_elem(self.data.raw_dim(), value)))
    }

    fn to_dtype(&self, dtype: DType) -> Result<Self> {
        if dtype == DType::Integer {
            return Err(LossError::UnsupportedDtype {
                what: "to_dtype".into(),
                dtype: "integer".into(),
            });
        }
        Ok(Self { data: self.data.clone(), dtype })
    }

    fn detach(&self) -> Self {
        self.clone()
    }

    fn add(&self, other: &Self) -> Result<Self> {
        self.zip(other, |a, b| a + b)
    }

    fn sub(&self, other: &Self) -> Result<Self> {
        self.zip(other, |a, b| a - b)
    }

    fn mul(&self, other: &Self) -> Result<Self> {
        self.zip(other, |a, b| a * b)
    }

    fn div(&self, other: &Self) -> Result<Self> {
        self.zip(other, |a, b| a / b)
    }

    fn maximum(&self, other: &Self) -> Result<Self> {
        self.zip(other, |a, b| if a.is_nan() || b.is_nan() { f64::NAN } else { a.max(b) })
    }

    fn minimum(&self, other: &Self) -> Result<Self> {
        self.zip(other, |a, b| if a.is_nan() || b.is_nan() { f64::NAN } else { a.min(b) })
    }

    fn select_where(&self, on_true: &Self, on_false: &Self) -> Result<Self> {
        let picked_true = self.zip(on_true, |m, t| if m != 0.0 { t } else { f64::NAN })?;
        let cond = self.zip(on_true, |m, _| m)?;
        let out = cond.zip(on_false, |m, f| if m != 0.0 { f64::NAN } else { f })?;
        // Combine: where the mask is set take the first, elsewhere the second.
        let shape = broadcast_shape(&picked_true.shape(), &out.shape())?;
        let a = picked_true
            .data
            .broadcast(IxDyn(&shape))
            .ok_or_else(|| broadcast_err(self, on_false))?;
        let b = out.data.broadcast(IxDyn(&shape)).ok_or_else(|| broadcast_err(self, on_false))?;
        let m = cond.data.broadcast(IxDyn(&shape)).ok_or_else(|| broadcast_err(self, on_false))?;
        let data =
            Zip::from(&m).and(&a).and(&b).map_collect(|&m, &t, &f| if m != 0.0 { t } else { f });
        Ok(Self { data, dtype: on_true.dtype })
    }

    fn add_scalar(&self, value: f64) -> Result<Self> {
        self.map(|x| x + value)
    }

    fn mul_scalar(&self, value: f64) -> Result<Self> {
        self.map(|x| x * value)
    }

    fn pow_scalar(&self, exponent: f64) -> Result<Self> {
        self.map(|x| x.powf(exponent))
    }

    fn clamp(&self, min: Option<f64>, max: Option<f64>) -> Result<Self> {
        self.map(|mut x| {
            if let Some(lo) = min {
                if x < lo {
                    x = lo;
                }
            }
            if let Some(hi) = max {
                if x > hi {
                    x = hi;
                }
            }
            x
        })
    }

    fn neg(&self) -> Result<Self> {
        self.map(|x| -x)
    }

    fn exp(&self) -> Result<Self> {
        self.map(f64::exp)
    }

    fn ln(&self) -> Result<Self> {
        self.map(f64::ln)
    }

    fn abs(&self) -> Result<Self> {
        self.map(f64::abs)
    }

    fn sigmoid(&self) -> Result<Self> {
        self.map(sigmoid)
    }

    fn softplus(&self) -> Result<Self> {
        self.map(softplus)
    }

    fn log_sigmoid(&self) -> Result<Self> {
        self.map(|x| -softplus(-x))
    }

    fn gt_scalar(&self, value: f64) -> Result<Self> {
        self.map(|x| mask(x > value))
    }

    fn ge_scalar(&self, value: f64) -> Result<Self> {
        self.map(|x| mask(x >= value))
    }

    fn lt_scalar(&self, value: f64) -> Result<Self> {
        self.map(|x| mask(x < value))
    }

    fn eq_scalar(&self, value: f64) -> Result<Self> {
        self.map(|x| mask(x == value))
    }

    fn sum_all(&self) -> Result<Self> {
        Ok(self.like(ArrayD::from_elem(IxDyn(&[]), self.data.sum())))
    }

    fn sum_dim(&self, dim: usize, keepdim: bool) -> Result<Self> {
        self.fold_dim(dim, keepdim, 0.0, |a, b| a + b)
    }

    fn max_all(&self) -> Result<Self> {
        if self.data.is_empty() {
            return Err(LossError::Backend("max of an empty tensor".into()));
        }
        let m = self.data.iter().copied().fold(f64::NEG_INFINITY, |a, b| {
            if a.is_nan() || b.is_nan() {
                f64::NAN
            } else {
                a.max(b)
            }
        });
        Ok(self.like(ArrayD::from_elem(IxDyn(&[]), m)))
    }

    fn max_dim(&self, dim: usize, keepdim: bool) -> Result<Self> {
        self.fold_dim(dim, keepdim, f64::NEG_INFINITY, f64::max)
    }

    fn min_dim(&self, dim: usize, keepdim: bool) -> Result<Self> {
        self.fold_dim(dim, keepdim, f64::INFINITY, f64::min)
    }

    fn topk_sum(&self, k: usize) -> Result<Self> {
        let n = self.data.len();
        if k > n {
            return Err(LossError::Backend(format!("top-k with k = {k} of {n} elements")));
        }
        let mut v: Vec<f64> = self.data.iter().copied().collect();
        let sum = if k == 0 {
            0.0
        } else {
            // Selection, not a full sort: only the k largest need to be found.
            v.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
            v[..k].iter().sum()
        };
        Ok(self.like(ArrayD::from_elem(IxDyn(&[]), sum)))
    }

    fn reshape(&self, shape: &[usize]) -> Result<Self> {
        let values: Vec<f64> = self.data.iter().copied().collect();
        Self::new(values, shape, self.dtype)
    }

    fn select(&self, dim: usize, index: usize) -> Result<Self> {
        self.check_dim(dim)?;
        if index >= self.data.shape()[dim] {
            return Err(LossError::Backend(format!(
                "index {index} out of range in dimension {dim}"
            )));
        }
        Ok(self.like(self.data.index_axis(Axis(dim), index).to_owned()))
    }

    fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Self> {
        self.check_dim(dim)?;
        if start + len > self.data.shape()[dim] {
            return Err(LossError::Backend(format!(
                "narrow {start}..{} out of range in dimension {dim} of {:?}",
                start + len,
                self.data.shape()
            )));
        }
        let view = self.data.slice_axis(Axis(dim), ndarray::Slice::from(start..start + len));
        Ok(self.like(view.to_owned()))
    }

    fn index_select(&self, dim: usize, indices: &[usize]) -> Result<Self> {
        self.check_dim(dim)?;
        let len = self.data.shape()[dim];
        if let Some(&bad) = indices.iter().find(|&&i| i >= len) {
            return Err(LossError::Backend(format!("index {bad} out of range in dimension {dim}")));
        }
        Ok(self.like(self.data.select(Axis(dim), indices)))
    }

    fn pad_end(&self, dim: usize, amount: usize) -> Result<Self> {
        self.check_dim(dim)?;
        let mut shape = self.data.shape().to_vec();
        shape[dim] = amount;
        let zeros = ArrayD::zeros(IxDyn(&shape));
        let data = ndarray::concatenate(Axis(dim), &[self.data.view(), zeros.view()])
            .map_err(|e| LossError::Backend(e.to_string()))?;
        Ok(self.like(data))
    }

    fn to_f64(&self) -> Result<f64> {
        if self.data.len() != 1 {
            return Err(LossError::NotScalar { shape: self.shape() });
        }
        self.data.iter().next().copied().ok_or(LossError::NotScalar { shape: self.shape() })
    }

    fn to_vec_f64(&self) -> Result<Vec<f64>> {
        Ok(self.data.iter().copied().collect())
    }

    fn first_violation(&self, check: ValueCheck) -> Result<Option<(usize, f64)>> {
        Ok(self.data.iter().copied().enumerate().find(|&(_, v)| check.fails(v)))
    }

    // Values are held in f64 whatever the declared type, so host data is always f64.
    fn host_data(&self) -> Option<HostData<'_>> {
        self.data.as_slice().map(HostData::F64)
    }

    // Forward only: the kernel's gradient is computed (so both paths do the same work) and
    // dropped.
    fn fused_scalar(&self, kernel: &mut FusedKernel<'_>) -> Result<Option<Self>> {
        let Some(values) = self.data.as_slice() else { return Ok(None) };
        let mut grad = vec![0.0; values.len()];
        let value = kernel(HostData::F64(values), HostDataMut::F64(&mut grad))?;
        Ok(Some(self.like(ArrayD::from_elem(IxDyn(&[]), value))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f64], s: &[usize]) -> NdTensor {
        NdTensor::from_f64(v.to_vec(), s).unwrap()
    }

    #[test]
    fn softplus_is_finite_far_out() {
        let x = t(&[-1e4, -30.0, 0.0, 30.0, 1e4], &[5]);
        let v = x.softplus().unwrap().to_vec_f64().unwrap();
        assert_eq!(v[0], 0.0);
        // math.log1p(math.exp(-30)) in Python.
        assert!((v[1] - 9.357622968839737e-14).abs() < 1e-27);
        assert!((v[2] - std::f64::consts::LN_2).abs() < 1e-15);
        assert!((v[3] - 30.000000000000092).abs() < 1e-12);
        assert_eq!(v[4], 1e4);
        let ls = x.log_sigmoid().unwrap().to_vec_f64().unwrap();
        assert_eq!(ls[0], -1e4);
    }

    #[test]
    fn broadcasting_follows_numpy() {
        let a = t(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
        let row = t(&[10.0, 20.0, 30.0], &[1, 3]);
        let col = t(&[100.0, 200.0], &[2, 1]);
        assert_eq!(a.add(&row).unwrap().to_vec_f64().unwrap(), vec![11., 22., 33., 14., 25., 36.]);
        assert_eq!(a.mul(&col).unwrap().to_vec_f64().unwrap()[3], 800.0);
        assert!(a.add(&t(&[1.0, 2.0], &[2])).is_err());
    }

    #[test]
    fn reductions_and_topk() {
        let a = t(&[1.0, 5.0, 3.0, 4.0, 2.0, 6.0], &[2, 3]);
        assert_eq!(a.sum_dim(1, true).unwrap().shape(), vec![2, 1]);
        assert_eq!(a.max_dim(0, false).unwrap().to_vec_f64().unwrap(), vec![4.0, 5.0, 6.0]);
        assert_eq!(a.min_dim(1, false).unwrap().to_vec_f64().unwrap(), vec![1.0, 2.0]);
        assert_eq!(a.topk_sum(2).unwrap().to_f64().unwrap(), 11.0);
        assert_eq!(a.topk_sum(0).unwrap().to_f64().unwrap(), 0.0);
        assert!(a.topk_sum(7).is_err());
    }

    #[test]
    fn scalar_readout_of_a_non_scalar_is_an_error() {
        let err = t(&[1.0, 2.0], &[2]).to_f64().unwrap_err();
        assert_eq!(err, LossError::NotScalar { shape: vec![2] });
    }

    #[test]
    fn select_where_pads_and_gathers() {
        let m = t(&[1.0, 0.0, 1.0], &[3]);
        let out = m.select_where(&t(&[1.0, 2.0, 3.0], &[3]), &t(&[-1.0], &[1])).unwrap();
        assert_eq!(out.to_vec_f64().unwrap(), vec![1.0, -1.0, 3.0]);
        let a = t(&[1.0, 2.0, 3.0, 4.0], &[2, 2]);
        assert_eq!(a.pad_end(1, 1).unwrap().to_vec_f64().unwrap(), vec![1., 2., 0., 3., 4., 0.]);
        assert_eq!(a.index_select(0, &[1, 1, 0]).unwrap().shape(), vec![3, 2]);
        assert_eq!(
            a.first_violation(ValueCheck::OutsideRange { lo: 0.0, hi: 2.5 }).unwrap(),
            Some((2, 3.0))
        );
    }
}
