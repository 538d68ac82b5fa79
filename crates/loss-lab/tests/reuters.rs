//! The ModApte split of the real Reuters-21578 files in `shared/data/reuters21578` beside the
//! repository (never copied into it).

use std::path::Path;
use std::time::Instant;

use loss_lab::data::{reuters, Holdout, LabelStats};
use loss_lab::features::{Tfidf, TfidfConfig};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data/reuters21578");

#[test]
fn modapte_split_of_the_real_data() {
    let t = Instant::now();
    let ds = match reuters::load_modapte(Path::new(DATA)) {
        Ok(ds) => ds,
        Err(e) => panic!("{e}"),
    };
    eprintln!("loaded Reuters-21578 ModApte in {:.3}s", t.elapsed().as_secs_f64());

    assert_eq!(ds.train.len(), 7770);
    assert_eq!(ds.test.len(), 3019);
    assert_eq!(ds.n_labels(), 90);
    let mean = ds.mean_labels_per_doc();
    assert!((1.23..1.25).contains(&mean), "{mean}");

    // `earn`: 2877 train + 1087 test = 3964 documents.
    let earn = ds.label_index("earn").expect("earn is a label");
    let train_counts = ds.train_label_counts();
    let test_earn = ds.test.iter().filter(|d| d.labels.contains(&earn)).count();
    assert_eq!(train_counts[earn], 2877);
    assert_eq!(test_earn, 1087);
    assert_eq!(train_counts[earn] + test_earn, 3964);
    assert_eq!(train_counts.iter().max(), Some(&train_counts[earn]));
    let acq = ds.label_index("acq").expect("acq is a label");
    assert_eq!(train_counts[acq], 1650);
    // Rare labels: several with a single training document.
    assert_eq!(train_counts.iter().filter(|&&c| c == 1).count(), 7);
    assert!(train_counts.iter().all(|&c| c >= 1));

    for d in ds.train.iter().chain(&ds.test) {
        assert!(!d.labels.is_empty(), "doc {} has no label", d.id);
        assert!(!d.text.trim().is_empty(), "doc {} has no text", d.id);
        assert!(!d.text.chars().any(|c| c.is_control() && c != '\n' && c != '\t'), "{}", d.id);
        assert!(!d.text.contains("&lt;"), "doc {} has an undecoded entity", d.id);
    }
    let first = &ds.train[0];
    assert_eq!(first.id, "1");
    assert_eq!(first.labels, vec![ds.label_index("cocoa").expect("cocoa is a label")]);
    assert!(first.text.starts_with("BAHIA COCOA REVIEW\nShowers continued"), "{}", first.text);
    // The only non-ASCII byte of the collection (0xFC, Latin-1 `ü`) is decoded.
    assert!(ds.train.iter().chain(&ds.test).any(|d| d.text.contains('\u{fc}')));
    // Entities: `<ACQ>`-style tickers come from `&lt;...>`.
    assert!(ds.train.iter().any(|d| d.text.contains('<')));

    // The paper's validation hold-out.
    let split = Holdout::new(ds.train.len(), 1000, 123).expect("1000 < 7770");
    assert_eq!(split.train.len(), 6770);
    assert_eq!(split.val.len(), 1000);
    let stats = LabelStats::from_docs(split.train_of(&ds.train), ds.n_labels()).expect("ok");
    assert_eq!(stats.train_num, 6770);
}

#[test]
fn tfidf_on_the_real_data() {
    let ds = reuters::load_modapte(Path::new(DATA)).unwrap_or_else(|e| panic!("{e}"));
    let train: Vec<&str> = ds.train.iter().map(|d| d.text.as_str()).collect();
    let test: Vec<&str> = ds.test.iter().map(|d| d.text.as_str()).collect();
    let t = Instant::now();
    let model = Tfidf::fit(&train, &TfidfConfig::default()).expect("fit");
    let x_test = model.transform(&test);
    eprintln!("TF-IDF fit on train + transform test in {:.3}s", t.elapsed().as_secs_f64());
    assert_eq!(model.n_features(), 20_000);
    assert_eq!(x_test.n_rows, 3019);
    assert!(model.column_of("earn").is_some() || model.column_of("shr").is_some());
    assert!(model.vocabulary().iter().any(|t| t.contains(' ')), "bigrams are in");
    for i in 0..x_test.n_rows {
        let (_, v) = x_test.row(i);
        let norm: f32 = v.iter().map(|x| x * x).sum();
        assert!(v.is_empty() || (norm - 1.0).abs() < 1e-4, "row {i}: {norm}");
    }
}
