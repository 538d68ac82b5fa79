//! Turning a [`DeviceSpec`] into a [`tch::Device`] that really exists.

use loss_core::{DeviceSpec, LossError, Result};
use tch::{Cuda, Device};

/// The libtorch device for `spec`.
///
/// `cpu` is always there; `cuda:N` needs a libtorch built with CUDA, a driver and at least
/// `N + 1` devices, and is an error otherwise (never a silent fall-back to the CPU); `auto`
/// picks `cuda:0` when CUDA is usable and the CPU otherwise.
///
/// # Errors
/// [`LossError::DeviceUnavailable`] naming the request and why it cannot be met.
pub fn resolve_device(spec: DeviceSpec) -> Result<Device> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Auto => Ok(Device::cuda_if_available()),
        DeviceSpec::Cuda(n) => {
            if !Cuda::is_available() {
                return Err(LossError::DeviceUnavailable {
                    requested: spec.to_string(),
                    reason: "libtorch reports no CUDA: it was built without CUDA (the CPU-only \
                             libtorch of scripts/libtorch.sh), libtorch_cuda.so was not loaded, \
                             or no NVIDIA driver/device is present"
                        .into(),
                });
            }
            let count = usize::try_from(Cuda::device_count()).unwrap_or(0);
            if n >= count {
                return Err(LossError::DeviceUnavailable {
                    requested: spec.to_string(),
                    reason: format!("only {count} CUDA device(s) are visible"),
                });
            }
            Ok(Device::Cuda(n))
        }
    }
}

/// The [`DeviceSpec`] naming a libtorch device (`mps` and other devices have none).
pub fn to_device_spec(device: Device) -> Result<DeviceSpec> {
    match device {
        Device::Cpu => Ok(DeviceSpec::Cpu),
        Device::Cuda(n) => Ok(DeviceSpec::Cuda(n)),
        other => Err(LossError::DeviceUnavailable {
            requested: format!("{other:?}"),
            reason: "only cpu and cuda devices are supported".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_always_there() {
        assert_eq!(resolve_device(DeviceSpec::Cpu).unwrap(), Device::Cpu);
        assert_eq!(to_device_spec(Device::Cuda(2)).unwrap(), DeviceSpec::Cuda(2));
    }

    #[test]
    fn cuda_without_cuda_is_an_error_not_a_fallback() {
        if Cuda::is_available() {
            return; // only meaningful on a CPU-only libtorch or a machine without a GPU
        }
        let err = resolve_device(DeviceSpec::Cuda(0)).unwrap_err();
        assert!(
            matches!(err, LossError::DeviceUnavailable { ref requested, .. } if requested == "cuda:0")
        );
        assert!(err.to_string().contains("no CUDA"), "{err}");
        assert_eq!(resolve_device(DeviceSpec::Auto).unwrap(), Device::Cpu);
    }
}
