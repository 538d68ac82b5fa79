//! Target maps given at image size, brought to the prediction's size.
//!
//! DBNet heads predict at a fraction of the image size, while targets are drawn at image size.
//! MMOCR 0.x rescales each target map (a `BitmapMasks`) by the head's `downsample_ratio` with
//! nearest-neighbour sampling, then zero-pads it at the bottom and right, or crops it, to the
//! prediction's height and width:
//!
//! ```text
//! (h', w') = (⌊h · r + 0.5⌋, ⌊w · r + 0.5⌋)
//! out[n, i, j] = map[n, ⌊i · h / h'⌋, ⌊j · w / w'⌋]     for i < min(h', H), j < min(w', W)
//!              = 0                                     elsewhere (padding)
//! ```
//!
//! The source index `⌊dst · src_len / dst_len⌋` is OpenCV's `INTER_NEAREST` rule, computed
//! here in exact integer arithmetic. Maps are `[N, h, w]`; the result is `[N, H, W]`.
//!
//! ```
//! use loss_core::{ndarray_backend::NdTensor, Backend};
//! use loss_dbnet::targets;
//!
//! // A 1 × 5 × 6 map at image size, predictions 2 × 2: rescaled to 3 × 3 (⌊5·0.5 + 0.5⌋ = 3),
//! // then cropped to 2 × 2.
//! let map = NdTensor::from_f64((0..30).map(f64::from).collect(), &[1, 5, 6])?;
//! assert_eq!(targets::rescaled_size(5, 6, 0.5), (3, 3));
//! let out = targets::rescale_to(&map, 0.5, (2, 2))?;
//! // rows ⌊i·5/3⌋ = 0, 1; columns ⌊j·6/3⌋ = 0, 2
//! assert_eq!(out.to_vec_f64()?, vec![0.0, 2.0, 6.0, 8.0]);
//! # Ok::<(), loss_core::LossError>(())
//! ```

use loss_core::{Backend, LossError, Result};

use crate::check_range;

/// The size a map of `h × w` has after rescaling by `ratio`: `(⌊h·r + 0.5⌋, ⌊w·r + 0.5⌋)`, as
/// mmcv's `rescale_size`.
pub fn rescaled_size(h: usize, w: usize, ratio: f64) -> (usize, usize) {
    let scale = |len: usize| {
        let v = (len as f64 * ratio + 0.5).floor();
        if v.is_finite() && v > 0.0 {
            v as usize
        } else {
            0
        }
    };
    (scale(h), scale(w))
}

/// Nearest-neighbour source indices for `dst_len` outputs from `src_len` inputs:
/// `⌊dst · src_len / dst_len⌋`, OpenCV's `INTER_NEAREST`.
pub fn nearest_indices(src_len: usize, dst_len: usize) -> Vec<usize> {
    (0..dst_len).map(|dst| dst * src_len / dst_len).collect()
}

fn check_map<B: Backend>(what: &str, map: &B) -> Result<Vec<usize>> {
    let shape = map.shape();
    if shape.len() != 3 {
        return Err(LossError::InvalidShape {
            what: what.into(),
            got: shape,
            reason: "expected a target map [N, H, W]".into(),
        });
    }
    Ok(shape)
}

/// Rescales `[N, h, w]` maps by `ratio` with nearest-neighbour sampling.
///
/// # Errors
/// [`LossError::InvalidShape`] for a map that is not 3-D; [`LossError::InvalidConfig`] naming
/// `downsample_ratio` when `ratio` is not finite and > 0.
pub fn rescale_nearest<B: Backend>(map: &B, ratio: f64) -> Result<B> {
    let shape = check_map("target map", map)?;
    let (h2, w2) = rescaled_size(shape[1], shape[2], ratio);
    rescale_to(map, ratio, (h2, w2))
}

/// Zero-pads `[N, h, w]` maps at the bottom and right, or crops them there, to `[N, H, W]`.
///
/// # Errors
/// [`LossError::InvalidShape`] for a map that is not 3-D.
pub fn pad_or_crop<B: Backend>(map: &B, (height, width): (usize, usize)) -> Result<B> {
    let shape = check_map("target map", map)?;
    let mut out = map.shallow_clone();
    for (dim, len, want) in [(1, shape[1], height), (2, shape[2], width)] {
        if len > want {
            out = out.narrow(dim, 0, want)?;
        } else if len < want {
            out = out.pad_end(dim, want - len)?;
        }
    }
    Ok(out)
}

/// Rescales `[N, h, w]` maps by `ratio` and pads or crops them to `[N, H, W]`, in one pass:
/// only the rows and columns that survive the crop are gathered.
///
/// # Errors
/// [`LossError::InvalidShape`] for a map that is not 3-D; [`LossError::InvalidConfig`] naming
/// `downsample_ratio` when `ratio` is not finite and > 0.
pub fn rescale_to<B: Backend>(map: &B, ratio: f64, (height, width): (usize, usize)) -> Result<B> {
    check_range("downsample_ratio", ratio, 0.0, true)?;
    let shape = check_map("target map", map)?;
    let (n, h, w) = (shape[0], shape[1], shape[2]);
    let (h2, w2) = rescaled_size(h, w, ratio);

    let rows: Vec<usize> = nearest_indices(h, h2).into_iter().take(height).collect();
    let cols: Vec<usize> = nearest_indices(w, w2).into_iter().take(width).collect();
    if rows.is_empty() || cols.is_empty() {
        // Nothing of the map survives: all padding.
        return map.from_values_like(&vec![0.0; n * height * width], &[n, height, width]);
    }

    let identity = |idx: &[usize], len: usize| {
        idx.len() == len && idx.iter().enumerate().all(|(i, &j)| i == j)
    };
    let mut out = map.shallow_clone();
    if !identity(&rows, h) {
        out = out.index_select(1, &rows)?;
    }
    if !identity(&cols, w) {
        out = out.index_select(2, &cols)?;
    }
    pad_or_crop(&out, (height, width))
}

#[cfg(test)]
mod tests {
    use loss_core::ndarray_backend::NdTensor;

    use super::*;

    fn iota(shape: &[usize]) -> NdTensor {
        let n: usize = shape.iter().product();
        NdTensor::from_f64((0..n).map(|i| i as f64).collect(), shape).unwrap()
    }

    #[test]
    fn sizes_round_half_up() {
        // int(60 * 0.25 + 0.5), int(62 * 0.25 + 0.5) in mmcv's rescale_size
        assert_eq!(rescaled_size(60, 62, 0.25), (15, 16));
        assert_eq!(rescaled_size(34, 35, 0.5), (17, 18));
        assert_eq!(rescaled_size(1, 1, 0.25), (0, 0));
        assert_eq!(rescaled_size(7, 9, 1.0), (7, 9));
    }

    #[test]
    fn nearest_indices_are_opencv_inter_nearest() {
        // cv2.resize(np.arange(10.)[None], (3, 1), interpolation=cv2.INTER_NEAREST) -> [0, 3, 6]
        assert_eq!(nearest_indices(10, 3), vec![0, 3, 6]);
        assert_eq!(nearest_indices(4, 8), vec![0, 0, 1, 1, 2, 2, 3, 3]);
        assert_eq!(nearest_indices(5, 5), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn padding_is_zeros_at_the_bottom_and_right() {
        let map = iota(&[1, 4, 4]);

        let out = rescale_to(&map, 0.5, (3, 3)).unwrap();

        assert_eq!(out.shape(), vec![1, 3, 3]);
        assert_eq!(out.to_vec_f64().unwrap(), vec![0., 2., 0., 8., 10., 0., 0., 0., 0.]);
    }

    #[test]
    fn rescale_then_fit_equals_the_two_steps() {
        let map = iota(&[2, 30, 40]);

        let fused = rescale_to(&map, 0.5, (16, 16)).unwrap();
        let stepwise = pad_or_crop(&rescale_nearest(&map, 0.5).unwrap(), (16, 16)).unwrap();

        assert_eq!(fused, stepwise);
        assert_eq!(fused.shape(), vec![2, 16, 16]);
    }

    #[test]
    fn a_map_rescaled_to_nothing_is_all_padding() {
        let map = iota(&[2, 1, 1]);

        let out = rescale_to(&map, 0.25, (2, 3)).unwrap();

        assert_eq!(out.to_vec_f64().unwrap(), vec![0.0; 12]);
    }

    #[test]
    fn bad_ratios_and_shapes_are_errors() {
        let map = iota(&[1, 4, 4]);
        assert!(matches!(rescale_to(&map, 0.0, (2, 2)),
            Err(LossError::InvalidConfig { ref key, .. }) if key == "downsample_ratio"));
        assert!(matches!(
            rescale_to(&iota(&[4, 4]), 0.5, (2, 2)),
            Err(LossError::InvalidShape { .. })
        ));
    }
}
