//! Loads Reuters-21578 (ModApte), holds out the paper's validation set and fits TF-IDF, printing
//! how long each step takes:
//!
//! ```text
//! cargo run --release -p loss-lab --example reuters_tfidf [-- DIR]
//! ```
//!
//! `DIR` defaults to `shared/data/reuters21578` beside the repository.

use std::path::PathBuf;
use std::time::Instant;

use loss_lab::data::{reuters, Holdout, LabelStats};
use loss_lab::features::{Tfidf, TfidfConfig};

fn main() -> Result<(), loss_lab::LabError> {
    let dir = std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/reuters21578"))
    });
    let t0 = Instant::now();
    let ds = reuters::load_modapte(&dir)?;
    let t_load = t0.elapsed();
    println!(
        "load: {:.3}s  train {}  test {}  labels {}  labels/doc {:.3}",
        t_load.as_secs_f64(),
        ds.train.len(),
        ds.test.len(),
        ds.n_labels(),
        ds.mean_labels_per_doc()
    );

    let t1 = Instant::now();
    let split = Holdout::new(ds.train.len(), 1000, 123)?;
    let train_docs = split.train_of(&ds.train);
    let val_docs = split.val_of(&ds.train);
    let stats = LabelStats::from_docs(train_docs.iter().copied(), ds.n_labels())?;
    let train_texts: Vec<&str> = train_docs.iter().map(|d| d.text.as_str()).collect();
    let val_texts: Vec<&str> = val_docs.iter().map(|d| d.text.as_str()).collect();
    let test_texts: Vec<&str> = ds.test.iter().map(|d| d.text.as_str()).collect();
    let t_split = t1.elapsed();

    let t2 = Instant::now();
    let model = Tfidf::fit(&train_texts, &TfidfConfig::default())?;
    let t_fit = t2.elapsed();
    let t3 = Instant::now();
    let x_train = model.transform(&train_texts);
    let x_val = model.transform(&val_texts);
    let x_test = model.transform(&test_texts);
    let t_transform = t3.elapsed();
    let t4 = Instant::now();
    let dense = x_train.to_dense();
    let t_dense = t4.elapsed();
    println!(
        "split+stats: {:.3}s  train {} val {}  train_num {}",
        t_split.as_secs_f64(),
        train_docs.len(),
        val_docs.len(),
        stats.train_num
    );
    println!(
        "tfidf fit: {:.3}s  features {}  transform train+val+test: {:.3}s  nnz {}/{}/{}",
        t_fit.as_secs_f64(),
        model.n_features(),
        t_transform.as_secs_f64(),
        x_train.nnz(),
        x_val.nnz(),
        x_test.nnz()
    );
    println!(
        "to_dense (train, {}x{}, {:.0} MB): {:.3}s",
        dense.nrows(),
        dense.ncols(),
        (dense.len() * 4) as f64 / 1e6,
        t_dense.as_secs_f64()
    );
    println!("total (load + split + fit + transform): {:.3}s", t0.elapsed().as_secs_f64());
    Ok(())
}
