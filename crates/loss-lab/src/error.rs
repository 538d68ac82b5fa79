//! The one error type of the crate.

use std::path::PathBuf;

/// Everything that can go wrong in `loss-lab`: reading data, building features, scoring, `.npy` I/O.
///
/// Every variant that concerns a file names it, so a message is actionable on its own.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A data directory (or file) that should have been provided is not there.
    #[error("data not found at {}: {hint}", path.display())]
    DataMissing {
        /// Where it was looked for.
        path: PathBuf,
        /// Where such data comes from and how to provide it.
        hint: String,
    },

    /// An I/O error while reading or writing a file.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A Reuters SGML file does not have the structure the reader relies on.
    #[error("malformed SGML in {} at byte {offset}: {reason}", path.display())]
    Sgml {
        /// The `.sgm` file.
        path: PathBuf,
        /// Byte offset in the file where the problem was found.
        offset: usize,
        /// What was wrong.
        reason: String,
    },

    /// A JSON Lines file has a line that is not valid JSON or not of the expected shape.
    #[error("{}:{line}: {reason}", path.display())]
    Jsonl {
        /// The `.jsonl` file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What was wrong with the line.
        reason: String,
    },

    /// A split asked for more held-out documents than there are (or would leave none to train on).
    #[error("cannot hold out {requested} of {available} training documents")]
    SplitTooLarge {
        /// How many documents were asked for.
        requested: usize,
        /// How many there are.
        available: usize,
    },

    /// A document refers to a label index outside the label set.
    #[error("document {doc} has label index {label}, but there are only {n_labels} labels")]
    LabelOutOfRange {
        /// Index of the document in the slice given.
        doc: usize,
        /// The offending label index.
        label: usize,
        /// Number of labels.
        n_labels: usize,
    },

    /// Two arrays that must agree in shape do not.
    #[error("shape mismatch for {what}: expected {expected:?}, found {found:?}")]
    ShapeMismatch {
        /// Which argument or quantity.
        what: &'static str,
        /// The shape that was required.
        expected: Vec<usize>,
        /// The shape that was given.
        found: Vec<usize>,
    },

    /// A configuration value is out of its valid range.
    #[error("invalid {what}: {reason}")]
    InvalidConfig {
        /// The setting concerned.
        what: &'static str,
        /// Why it is invalid.
        reason: String,
    },

    /// A vectorizer was fitted on data that yields no term at all (empty vocabulary).
    #[error(
        "empty vocabulary: no term of the {n_docs} training documents passes min_df = {min_df}"
    )]
    EmptyVocabulary {
        /// Number of training documents.
        n_docs: usize,
        /// The minimum document frequency in force.
        min_df: usize,
    },

    /// A TOML file (experiment, sweep or loss config) could not be parsed.
    #[error("{}: {reason}", path.display())]
    Toml {
        /// The file.
        path: PathBuf,
        /// What the parser reported.
        reason: String,
    },

    /// A loss rejected its configuration or its inputs.
    #[error(transparent)]
    Loss(#[from] loss_core::LossError),

    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(String),

    /// A `.npy` file that is not a valid NumPy array file, or one this reader does not support.
    #[error("{}: {problem}", path.display())]
    Npy {
        /// The `.npy` file (or a description of the source when reading from memory).
        path: PathBuf,
        /// What is wrong with it.
        problem: NpyProblem,
    },
}

/// What is wrong with a `.npy` file; carried by [`LabError::Npy`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NpyProblem {
    /// The file does not start with `\x93NUMPY`.
    #[error("not a .npy file (bad magic string)")]
    BadMagic,
    /// A format version other than 1.0, 2.0 and 3.0.
    #[error("unsupported .npy format version {major}.{minor} (supported: 1.0, 2.0, 3.0)")]
    UnsupportedVersion {
        /// Major version byte.
        major: u8,
        /// Minor version byte.
        minor: u8,
    },
    /// The header dictionary could not be parsed or lacks a key.
    #[error("malformed .npy header: {reason}")]
    BadHeader {
        /// What was wrong.
        reason: String,
    },
    /// The array is stored big-endian.
    #[error("big-endian data (descr {descr:?}) is not supported; only little-endian f4/f8")]
    BigEndian {
        /// The header's `descr`.
        descr: String,
    },
    /// A dtype other than little-endian `f4` / `f8`.
    #[error("unsupported dtype {descr:?}; only little-endian f4 (<f4) and f8 (<f8)")]
    UnsupportedDtype {
        /// The header's `descr`.
        descr: String,
    },
    /// The array is stored in Fortran (column-major) order.
    #[error("fortran_order is True; only C-order arrays are supported")]
    FortranOrder,
    /// The element data is shorter than the shape requires.
    #[error("truncated data: shape needs {expected} bytes, file has {found}")]
    Truncated {
        /// Bytes required by the shape and dtype.
        expected: usize,
        /// Bytes present after the header.
        found: usize,
    },
    /// There are bytes after the element data.
    #[error("{extra} unexpected bytes after the array data")]
    TrailingData {
        /// How many bytes too many.
        extra: usize,
    },
    /// The array's dtype is not the one asked for.
    #[error("dtype is {found}, expected {expected}")]
    WrongDtype {
        /// The dtype asked for.
        expected: &'static str,
        /// The dtype in the file.
        found: &'static str,
    },
    /// On write: the data length does not match the product of the shape.
    #[error("shape {shape:?} needs {expected} elements, got {found}")]
    ShapeDataMismatch {
        /// The shape given.
        shape: Vec<usize>,
        /// Product of the shape.
        expected: usize,
        /// Elements given.
        found: usize,
    },
}

/// Shorthand for results in this crate.
pub type Result<T, E = LabError> = std::result::Result<T, E>;

impl LabError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LabError::Io { path: path.into(), source }
    }
}
