//! The `.npy` reader against files written by NumPy 2.4 (`fixtures/gen_npy_fixtures.py`).

use std::path::{Path, PathBuf};

use loss_lab::npy::{encode_npy, read_array, read_npy, NpyData};
use loss_lab::{LabError, NpyProblem};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn problem(name: &str) -> NpyProblem {
    match read_npy(&fixture(name)) {
        Err(LabError::Npy { path, problem }) => {
            assert!(path.ends_with(name), "{}", path.display());
            problem
        }
        other => panic!("expected a .npy error for {name}, got {other:?}"),
    }
}

fn c32() -> Vec<f32> {
    (0..6).map(|i| i as f32 / 4.0 - 0.5).collect()
}

#[test]
fn reads_f32_c_order() {
    let a = read_array::<f32>(&fixture("f32_2x3.npy")).expect("valid fixture");
    assert_eq!(a.shape(), &[2, 3]);
    assert_eq!(a.iter().copied().collect::<Vec<_>>(), c32());
    assert_eq!(a[[1, 0]], 0.25);
}

#[test]
fn writer_matches_numpy_byte_for_byte() {
    let ours = encode_npy(&[2, 3], &c32()).expect("consistent");
    let numpy = std::fs::read(fixture("f32_2x3.npy")).expect("fixture present");
    assert_eq!(ours, numpy);
    let v: Vec<f64> = (0..12).map(|i| f64::from(i) * 0.1 - 1.0).collect();
    let ours = encode_npy(&[2, 2, 3], &v).expect("consistent");
    let numpy = std::fs::read(fixture("f64_2x2x3.npy")).expect("fixture present");
    assert_eq!(ours, numpy);
}

#[test]
fn reads_f64_3d_scalar_and_empty() {
    let a = read_npy(&fixture("f64_2x2x3.npy")).expect("valid fixture");
    assert_eq!(a.shape, vec![2, 2, 3]);
    let want: Vec<f64> = (0..12).map(|i| f64::from(i) * 0.1 - 1.0).collect();
    assert_eq!(a.data, NpyData::F64(want));
    let s = read_npy(&fixture("f64_scalar.npy")).expect("valid fixture");
    assert!(s.shape.is_empty());
    assert_eq!(s.data, NpyData::F64(vec![2.5]));
    let e = read_array::<f32>(&fixture("f32_empty_0x4.npy")).expect("valid fixture");
    assert_eq!(e.shape(), &[0, 4]);
}

#[test]
fn reads_versions_2_and_3() {
    let a = read_npy(&fixture("f32_v2.npy")).expect("version 2.0");
    assert_eq!(a.shape, vec![2, 3]);
    assert_eq!(a.data, NpyData::F32(c32()));
    let b = read_npy(&fixture("f64_v3.npy")).expect("version 3.0");
    assert_eq!(b.data, NpyData::F64(vec![1.0, -2.0, 1e300]));
}

#[test]
fn rejects_what_it_does_not_support() {
    assert_eq!(problem("f32_fortran.npy"), NpyProblem::FortranOrder);
    assert_eq!(problem("f64_big_endian.npy"), NpyProblem::BigEndian { descr: ">f8".into() });
    assert_eq!(problem("i64.npy"), NpyProblem::UnsupportedDtype { descr: "<i8".into() });
    let e = read_npy(&fixture("i64.npy")).expect_err("int64");
    let msg = e.to_string();
    assert!(msg.contains("i64.npy") && msg.contains("<i8"), "{msg}");
}

#[test]
fn truncated_numpy_file() {
    let bytes = std::fs::read(fixture("f32_2x3.npy")).expect("fixture present");
    let path = std::env::temp_dir().join(format!("loss-lab-trunc-{}.npy", std::process::id()));
    std::fs::write(&path, &bytes[..bytes.len() - 3]).expect("temp file");
    let r = read_npy(&path);
    std::fs::remove_file(&path).ok();
    match r {
        Err(LabError::Npy { problem, .. }) => {
            assert_eq!(problem, NpyProblem::Truncated { expected: 24, found: 21 })
        }
        other => panic!("unexpected {other:?}"),
    }
}
