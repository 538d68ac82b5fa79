//! The libtorch backend of the losslab crates: [`loss_core::Backend`] for libtorch tensors
//! ([`TchTensor`], a handle on a [`tch::Tensor`]), on CPU and CUDA, with autograd flowing
//! through every operation.
//!
//! Every libtorch call goes through tch's fallible `f_*` functions, so a libtorch failure is a
//! [`LossError::Backend`], never a panic.
//!
//! The fused kernels of `loss-multilabel` and `loss-dbnet` compute a loss and its gradient in
//! one pass ([`Backend::fused_scalar`]). Their gradient joins autograd through a small C++ node,
//! `FusedLossBackward` (`csrc/fused_grad.cpp`, compiled by the build script against the same
//! libtorch): no work in forward, and backward hands the stored gradient on, scaled only when
//! the incoming gradient is not exactly 1, so `loss.backward()` on a leaf makes the kernel's
//! buffer the leaf's `.grad` without a copy (with a retained graph, each backward gets its own
//! copy). A second backward without a retained graph is an error, as for libtorch's own nodes.
//! The node has no second derivative with respect to its input: under `create_graph` the
//! gradient stays differentiable with respect to everything else, and differentiating it with
//! respect to the input is an error naming `with_fused(false)`, which gives the generic
//! formulas and their full second derivatives.
//!
//! ```
//! use loss_tch::{Backend, TchTensor};
//! use tch::{Kind, Tensor};
//!
//! let x = TchTensor::from(Tensor::from_slice(&[-1e4f64, 0.0, 1e4]).set_requires_grad(true));
//! let y = x.softplus()?.sum_all()?;
//! y.backward();
//! assert_eq!(y.to_f64()?, 1e4 + std::f64::consts::LN_2);
//! assert_eq!(x.grad().kind(), Kind::Double);
//! # Ok::<(), loss_core::LossError>(())
//! ```

pub use tch;

mod device;
mod tensor;

pub use device::{resolve_device, to_device_spec};
pub use loss_core::{Backend, LossError, Result};
pub use tensor::TchTensor;
