//! A small reader and writer for NumPy `.npy` files: little-endian `f32` (`<f4`) and `f64` (`<f8`)
//! arrays in C order.
//!
//! Reading accepts format versions 1.0, 2.0 and 3.0; writing produces version 1.0 with the header
//! padded so the data starts on a 64-byte boundary, as NumPy does. Everything else — big-endian
//! data, `fortran_order: True`, other dtypes, truncated or over-long data, a bad magic string or
//! header — is a [`LabError::Npy`] naming the file and the [`NpyProblem`].

use std::path::Path;

use ndarray::{ArrayBase, ArrayD, Data, Dimension, IxDyn};

use crate::error::{LabError, NpyProblem, Result};

const MAGIC: &[u8] = b"\x93NUMPY";

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// An element type this module reads and writes: `f32` or `f64`.
pub trait NpyElement: Copy + sealed::Sealed {
    /// The little-endian `descr` NumPy writes for it.
    const DESCR: &'static str;
    /// Bytes per element.
    const SIZE: usize;
    /// `"f32"` or `"f64"`.
    const NAME: &'static str;
    /// Appends the little-endian bytes.
    fn put_le(self, out: &mut Vec<u8>);
    /// Wraps a vector as [`NpyData`].
    fn wrap(data: Vec<Self>) -> NpyData;
    /// Takes the vector back out of [`NpyData`] of this type.
    fn unwrap(data: NpyData) -> std::result::Result<Vec<Self>, NpyData>;
}

impl NpyElement for f32 {
    const DESCR: &'static str = "<f4";
    const SIZE: usize = 4;
    const NAME: &'static str = "f32";
    fn put_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn wrap(data: Vec<Self>) -> NpyData {
        NpyData::F32(data)
    }
    fn unwrap(data: NpyData) -> std::result::Result<Vec<Self>, NpyData> {
        match data {
            NpyData::F32(v) => Ok(v),
            other => Err(other),
        }
    }
}

impl NpyElement for f64 {
    const DESCR: &'static str = "<f8";
    const SIZE: usize = 8;
    const NAME: &'static str = "f64";
    fn put_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn wrap(data: Vec<Self>) -> NpyData {
        NpyData::F64(data)
    }
    fn unwrap(data: NpyData) -> std::result::Result<Vec<Self>, NpyData> {
        match data {
            NpyData::F64(v) => Ok(v),
            other => Err(other),
        }
    }
}

/// The elements of an array read from a `.npy` file, in C order.
#[derive(Debug, Clone, PartialEq)]
pub enum NpyData {
    /// `<f4` data.
    F32(Vec<f32>),
    /// `<f8` data.
    F64(Vec<f64>),
}

impl NpyData {
    /// `"f32"` or `"f64"`.
    pub fn dtype(&self) -> &'static str {
        match self {
            NpyData::F32(_) => f32::NAME,
            NpyData::F64(_) => f64::NAME,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            NpyData::F32(v) => v.len(),
            NpyData::F64(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An array read from a `.npy` file.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// The shape (empty for a 0-d array, which has one element).
    pub shape: Vec<usize>,
    /// The elements, C order.
    pub data: NpyData,
}

/// Reads a `.npy` file.
pub fn read_npy(path: &Path) -> Result<NpyArray> {
    let bytes = std::fs::read(path).map_err(|e| LabError::io(path, e))?;
    parse_npy(&bytes, path)
}

/// Reads a `.npy` file of element type `T` as an [`ArrayD`]; a file of the other float type is a
/// [`NpyProblem::WrongDtype`] error (no silent conversion).
pub fn read_array<T: NpyElement>(path: &Path) -> Result<ArrayD<T>> {
    let arr = read_npy(path)?;
    let npy_err = |problem| LabError::Npy { path: path.to_path_buf(), problem };
    let found = arr.data.dtype();
    let data = T::unwrap(arr.data)
        .map_err(|_| npy_err(NpyProblem::WrongDtype { expected: T::NAME, found }))?;
    ArrayD::from_shape_vec(IxDyn(&arr.shape), data).map_err(|e| {
        npy_err(NpyProblem::BadHeader { reason: format!("shape does not fit the data: {e}") })
    })
}

/// Parses the bytes of a `.npy` file; `source` only names it in errors.
pub fn parse_npy(bytes: &[u8], source: &Path) -> Result<NpyArray> {
    parse_inner(bytes).map_err(|problem| LabError::Npy { path: source.to_path_buf(), problem })
}

fn bad_header(reason: impl Into<String>) -> NpyProblem {
    NpyProblem::BadHeader { reason: reason.into() }
}

fn parse_inner(bytes: &[u8]) -> std::result::Result<NpyArray, NpyProblem> {
    if bytes.len() < MAGIC.len() + 2 || !bytes.starts_with(MAGIC) {
        return Err(NpyProblem::BadMagic);
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (len_bytes, utf8) = match (major, minor) {
        (1, 0) => (2, false),
        (2, 0) => (4, false),
        (3, 0) => (4, true),
        _ => return Err(NpyProblem::UnsupportedVersion { major, minor }),
    };
    let len_field =
        bytes.get(8..8 + len_bytes).ok_or_else(|| bad_header("file ends inside the header"))?;
    let header_len = len_field.iter().rev().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
    let data_start = 8 + len_bytes + header_len;
    let header_bytes = bytes
        .get(8 + len_bytes..data_start)
        .ok_or_else(|| bad_header("file ends inside the header"))?;
    let header: String = if utf8 {
        std::str::from_utf8(header_bytes)
            .map_err(|_| bad_header("header is not valid UTF-8"))?
            .to_string()
    } else {
        header_bytes.iter().map(|&b| char::from(b)).collect()
    };
    let dict = parse_dict(&header)?;
    let descr = match dict.iter().find(|(k, _)| k == "descr").map(|(_, v)| v) {
        Some(Value::Str(s)) => s.clone(),
        Some(Value::Other(raw)) => return Err(NpyProblem::UnsupportedDtype { descr: raw.clone() }),
        Some(_) => return Err(bad_header("'descr' is not a string")),
        None => return Err(bad_header("missing key 'descr'")),
    };
    match dict.iter().find(|(k, _)| k == "fortran_order").map(|(_, v)| v) {
        Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => return Err(NpyProblem::FortranOrder),
        Some(_) => return Err(bad_header("'fortran_order' is not True or False")),
        None => return Err(bad_header("missing key 'fortran_order'")),
    }
    let shape = match dict.iter().find(|(k, _)| k == "shape").map(|(_, v)| v) {
        Some(Value::Tuple(dims)) => dims.clone(),
        Some(_) => return Err(bad_header("'shape' is not a tuple of integers")),
        None => return Err(bad_header("missing key 'shape'")),
    };
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad_header("shape overflows"))?;
    let payload = bytes.get(data_start..).unwrap_or(&[]);
    match descr.as_str() {
        "<f4" => Ok(NpyArray { shape, data: NpyData::F32(decode::<f32, 4>(payload, count)?) }),
        "<f8" => Ok(NpyArray { shape, data: NpyData::F64(decode::<f64, 8>(payload, count)?) }),
        ">f4" | ">f8" => Err(NpyProblem::BigEndian { descr }),
        _ => Err(NpyProblem::UnsupportedDtype { descr }),
    }
}

trait FromLe<const N: usize>: Sized {
    fn from_le(b: [u8; N]) -> Self;
}

impl FromLe<4> for f32 {
    fn from_le(b: [u8; 4]) -> Self {
        f32::from_le_bytes(b)
    }
}

impl FromLe<8> for f64 {
    fn from_le(b: [u8; 8]) -> Self {
        f64::from_le_bytes(b)
    }
}

fn decode<T: FromLe<N>, const N: usize>(
    payload: &[u8],
    count: usize,
) -> std::result::Result<Vec<T>, NpyProblem> {
    let expected = count.checked_mul(N).ok_or_else(|| bad_header("shape overflows"))?;
    if payload.len() < expected {
        return Err(NpyProblem::Truncated { expected, found: payload.len() });
    }
    if payload.len() > expected {
        return Err(NpyProblem::TrailingData { extra: payload.len() - expected });
    }
    Ok(payload
        .chunks_exact(N)
        .map(|c| {
            let mut b = [0u8; N];
            b.copy_from_slice(c);
            T::from_le(b)
        })
        .collect())
}

/// A value of the header dictionary.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Str(String),
    Bool(bool),
    Tuple(Vec<usize>),
    /// A list or other bracketed value (e.g. a structured dtype), kept as text.
    Other(String),
}

/// Parses the Python dict literal of a `.npy` header, e.g.
/// `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`.
fn parse_dict(text: &str) -> std::result::Result<Vec<(String, Value)>, NpyProblem> {
    let mut p = Parser { chars: text.trim().chars().collect(), pos: 0 };
    p.expect('{')?;
    let mut out = Vec::new();
    loop {
        p.skip_ws();
        if p.eat('}') {
            break;
        }
        let key = p.string()?;
        p.skip_ws();
        p.expect(':')?;
        p.skip_ws();
        let value = p.value()?;
        out.push((key, value));
        p.skip_ws();
        if p.eat(',') {
            continue;
        }
        p.skip_ws();
        p.expect('}')?;
        break;
    }
    p.skip_ws();
    if p.pos != p.chars.len() {
        return Err(bad_header("text after the dictionary"));
    }
    Ok(out)
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> std::result::Result<(), NpyProblem> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(bad_header(format!("expected {c:?} at character {}", self.pos)))
        }
    }

    fn string(&mut self) -> std::result::Result<String, NpyProblem> {
        let quote = match self.peek() {
            Some(q @ ('\'' | '"')) => q,
            _ => return Err(bad_header(format!("expected a string at character {}", self.pos))),
        };
        self.pos += 1;
        let mut s = String::new();
        loop {
            match self.peek() {
                None => return Err(bad_header("unterminated string")),
                Some(c) if c == quote => {
                    self.pos += 1;
                    return Ok(s);
                }
                Some(c) => {
                    s.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    fn word(&mut self) -> String {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }

    fn value(&mut self) -> std::result::Result<Value, NpyProblem> {
        match self.peek() {
            Some('\'' | '"') => Ok(Value::Str(self.string()?)),
            Some('(') => {
                self.pos += 1;
                let mut dims = Vec::new();
                loop {
                    self.skip_ws();
                    if self.eat(')') {
                        break;
                    }
                    // The whole entry up to its delimiter, so that `-2` or `2.5` is named as
                    // written.
                    let start = self.pos;
                    while self.peek().is_some_and(|c| !matches!(c, ',' | ')') && !c.is_whitespace())
                    {
                        self.pos += 1;
                    }
                    let digits: String = self.chars[start..self.pos].iter().collect();
                    // Python 2 era files may write `3L`.
                    let digits = digits.strip_suffix('L').unwrap_or(&digits);
                    let dim = digits.parse::<usize>().map_err(|_| {
                        bad_header(format!("shape entry {digits:?} is not a non-negative integer"))
                    })?;
                    dims.push(dim);
                    self.skip_ws();
                    if self.eat(',') {
                        continue;
                    }
                    self.skip_ws();
                    self.expect(')')?;
                    break;
                }
                Ok(Value::Tuple(dims))
            }
            Some('[' | '{') => {
                let start = self.pos;
                let mut depth = 0usize;
                while let Some(c) = self.peek() {
                    self.pos += 1;
                    match c {
                        '[' | '{' | '(' => depth += 1,
                        ']' | '}' | ')' => {
                            depth = depth.saturating_sub(1);
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                Ok(Value::Other(self.chars[start..self.pos].iter().collect()))
            }
            _ => match self.word().as_str() {
                "True" => Ok(Value::Bool(true)),
                "False" => Ok(Value::Bool(false)),
                w => Err(bad_header(format!("unsupported value {w:?}"))),
            },
        }
    }
}

/// The bytes of a version 1.0 `.npy` file holding `data` with `shape` (C order).
pub fn encode_npy<T: NpyElement>(
    shape: &[usize],
    data: &[T],
) -> std::result::Result<Vec<u8>, NpyProblem> {
    let expected = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if expected != Some(data.len()) {
        return Err(NpyProblem::ShapeDataMismatch {
            shape: shape.to_vec(),
            expected: expected.unwrap_or(usize::MAX),
            found: data.len(),
        });
    }
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_text = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header =
        format!("{{'descr': '{}', 'fortran_order': False, 'shape': {shape_text}, }}", T::DESCR);
    // magic (6) + version (2) + length (2) + header + '\n' must be a multiple of 64.
    let unpadded = MAGIC.len() + 2 + 2 + header.len() + 1;
    header.extend(std::iter::repeat_n(' ', (64 - unpadded % 64) % 64));
    header.push('\n');
    let header_len = u16::try_from(header.len())
        .map_err(|_| bad_header("header longer than 65535 bytes needs format 2.0"))?;
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * T::SIZE);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for &x in data {
        x.put_le(&mut out);
    }
    Ok(out)
}

/// Writes `data` with `shape` (C order) to a version 1.0 `.npy` file.
pub fn write_npy<T: NpyElement>(path: &Path, shape: &[usize], data: &[T]) -> Result<()> {
    let bytes = encode_npy(shape, data)
        .map_err(|problem| LabError::Npy { path: path.to_path_buf(), problem })?;
    std::fs::write(path, bytes).map_err(|e| LabError::io(path, e))
}

/// Writes an ndarray array (any memory layout; elements go out in logical C order).
pub fn write_array<T, S, D>(path: &Path, array: &ArrayBase<S, D>) -> Result<()>
where
    T: NpyElement,
    S: Data<Elem = T>,
    D: Dimension,
{
    let data: Vec<T> = array.iter().copied().collect();
    write_npy(path, array.shape(), &data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array2};
    use std::path::PathBuf;

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("loss-lab-npy-{}-{name}", std::process::id()))
    }

    fn problem(bytes: &[u8]) -> NpyProblem {
        match parse_npy(bytes, Path::new("mem.npy")) {
            Err(LabError::Npy { path, problem }) => {
                assert_eq!(path, PathBuf::from("mem.npy"));
                problem
            }
            other => panic!("expected a .npy error, got {other:?}"),
        }
    }

    /// A hand-made file with the given version and header text.
    fn with_header(major: u8, header: &str, payload: &[u8]) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&[major, 0]);
        if major == 1 {
            b.extend_from_slice(&(header.len() as u16).to_le_bytes());
        } else {
            b.extend_from_slice(&(header.len() as u32).to_le_bytes());
        }
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(payload);
        b
    }

    #[test]
    fn encode_layout() {
        let bytes = encode_npy(&[2, 3], &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).expect("consistent");
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + header_len]).expect("ascii");
        assert!(header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"));
        assert!(header.ends_with('\n'));
        assert_eq!(bytes.len(), 10 + header_len + 24);
        let one_d = encode_npy(&[2], &[1.0f64, 2.0]).expect("consistent");
        assert!(String::from_utf8_lossy(&one_d).contains("'shape': (2,)"));
        let scalar = encode_npy::<f64>(&[], &[7.0]).expect("consistent");
        assert!(String::from_utf8_lossy(&scalar).contains("'shape': ()"));
        assert!(matches!(
            encode_npy(&[2, 2], &[1.0f32]),
            Err(NpyProblem::ShapeDataMismatch { expected: 4, found: 1, .. })
        ));
    }

    #[test]
    fn round_trip_files() {
        let a: Array2<f32> = array![[1.5, -2.0, 3.25], [f32::MIN_POSITIVE, f32::MAX, -0.0]];
        let p = temp("rt32.npy");
        write_array(&p, &a).expect("write");
        let back = read_array::<f32>(&p).expect("read");
        assert_eq!(back.shape(), &[2, 3]);
        assert_eq!(back.iter().copied().collect::<Vec<_>>(), a.iter().copied().collect::<Vec<_>>());
        // A transposed (non-C-contiguous) view goes out in logical order.
        write_array(&p, &a.t()).expect("write");
        let back = read_npy(&p).expect("read");
        assert_eq!(back.shape, vec![3, 2]);
        assert_eq!(
            back.data,
            NpyData::F32(vec![1.5, f32::MIN_POSITIVE, -2.0, f32::MAX, 3.25, -0.0])
        );
        // f64, 3-d, empty and 0-d.
        let v: Vec<f64> = (0..24).map(|i| f64::from(i) * 0.1 - 1.0).collect();
        write_npy(&p, &[2, 3, 4], &v).expect("write");
        let back = read_npy(&p).expect("read");
        assert_eq!(back, NpyArray { shape: vec![2, 3, 4], data: NpyData::F64(v) });
        write_npy::<f32>(&p, &[0, 5], &[]).expect("write");
        let back = read_npy(&p).expect("read");
        assert_eq!(back.shape, vec![0, 5]);
        assert!(back.data.is_empty());
        write_npy(&p, &[], &[std::f64::consts::PI]).expect("write");
        let back = read_array::<f64>(&p).expect("read");
        assert_eq!(back.ndim(), 0);
        assert_eq!(back.iter().copied().collect::<Vec<_>>(), vec![std::f64::consts::PI]);
        match read_array::<f32>(&p) {
            Err(LabError::Npy { problem, .. }) => {
                assert_eq!(problem, NpyProblem::WrongDtype { expected: "f32", found: "f64" })
            }
            other => panic!("unexpected {other:?}"),
        }
        std::fs::remove_file(&p).ok();
    }

    #[test]
    fn versions_2_and_3() {
        let payload: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n";
        for major in [2, 3] {
            let arr = parse_npy(&with_header(major, h, &payload), Path::new("v.npy")).expect("ok");
            assert_eq!(arr.data, NpyData::F32(vec![1.0, 2.0]));
        }
        // Python 2 style long integers and double quotes.
        let h = "{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (1L, 2L)}";
        let arr = parse_npy(&with_header(1, h, &payload), Path::new("v.npy")).expect("ok");
        assert_eq!(arr.shape, vec![1, 2]);
    }

    #[test]
    fn errors_are_typed() {
        let payload = [0u8; 8];
        let ok = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
        assert_eq!(problem(b"\x93NUMPX\x01\x00"), NpyProblem::BadMagic);
        assert_eq!(problem(b"PK\x03\x04"), NpyProblem::BadMagic);
        let mut v4 = with_header(1, ok, &payload);
        v4[6] = 4;
        assert_eq!(problem(&v4), NpyProblem::UnsupportedVersion { major: 4, minor: 0 });
        let be = ok.replace("<f4", ">f4");
        assert_eq!(
            problem(&with_header(1, &be, &payload)),
            NpyProblem::BigEndian { descr: ">f4".into() }
        );
        let int = ok.replace("<f4", "<i8");
        assert_eq!(
            problem(&with_header(1, &int, &payload)),
            NpyProblem::UnsupportedDtype { descr: "<i8".into() }
        );
        let structured = "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }";
        assert!(matches!(
            problem(&with_header(1, structured, &payload)),
            NpyProblem::UnsupportedDtype { .. }
        ));
        let fortran = ok.replace("False", "True");
        assert_eq!(problem(&with_header(1, &fortran, &payload)), NpyProblem::FortranOrder);
        assert_eq!(
            problem(&with_header(1, ok, &payload[..7])),
            NpyProblem::Truncated { expected: 8, found: 7 }
        );
        assert_eq!(problem(&with_header(1, ok, &[0u8; 9])), NpyProblem::TrailingData { extra: 1 });
        let no_shape = "{'descr': '<f4', 'fortran_order': False}";
        assert!(matches!(
            problem(&with_header(1, no_shape, &payload)),
            NpyProblem::BadHeader { .. }
        ));
        let garbage = "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,)}";
        assert!(matches!(
            problem(&with_header(1, garbage, &payload)),
            NpyProblem::BadHeader { .. }
        ));
        let neg = "{'descr': '<f4', 'fortran_order': False, 'shape': (-2,)}";
        assert!(matches!(problem(&with_header(1, neg, &payload)), NpyProblem::BadHeader { .. }));
        let mut short = with_header(1, ok, &payload);
        short.truncate(20);
        assert!(matches!(problem(&short), NpyProblem::BadHeader { .. }));
        let e = parse_npy(&with_header(1, &fortran, &payload), Path::new("dir/x.npy"))
            .expect_err("fortran");
        assert_eq!(
            e.to_string(),
            "dir/x.npy: fortran_order is True; only C-order arrays are supported"
        );
    }

    #[test]
    fn a_bad_shape_entry_is_named_as_written() {
        for (entry, named) in [("-2", "\"-2\""), ("2.5", "\"2.5\"")] {
            let h =
                format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({entry}, 3), }}\n");
            let p = problem(&with_header(1, &h, &[]));
            assert!(p.to_string().contains(named), "{p}");
        }
    }

    #[test]
    fn missing_file_is_io_error() {
        let e = read_npy(Path::new("/nonexistent/x.npy")).expect_err("missing");
        assert!(matches!(e, LabError::Io { .. }));
        assert!(e.to_string().contains("/nonexistent/x.npy"));
    }
}
