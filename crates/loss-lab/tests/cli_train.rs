//! `losslab train`, `sweep` and `stats` end to end on a small JSON Lines corpus made here.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_losslab");

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("losslab-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Documents whose words give their labels away: `a` is frequent (and given to documents
/// without another label: 259 of 300), `b` medium (60), `c` rare (28).
fn corpus(dir: &Path) {
    let doc = |i: usize| {
        let mut labels = vec![];
        let mut words = vec![format!("filler{}", i % 7), "common".to_string()];
        if i.is_multiple_of(2) {
            labels.push("a");
            words.push("apple orchard".into());
        }
        if i.is_multiple_of(5) {
            labels.push("b");
            words.push("banana boat".into());
        }
        if i.is_multiple_of(11) {
            labels.push("c");
            words.push("cherry cake".into());
        }
        if labels.is_empty() {
            labels.push("a");
        }
        serde_json::json!({ "text": words.join(" "), "labels": labels }).to_string()
    };
    let lines = |range: std::ops::Range<usize>| range.map(doc).collect::<Vec<_>>().join("\n");
    std::fs::write(dir.join("train.jsonl"), lines(0..300)).expect("train");
    std::fs::write(dir.join("test.jsonl"), lines(300..400)).expect("test");
}

fn experiment(dir: &Path, preset: &str) -> PathBuf {
    let text = format!(
        "[data]\nformat = \"jsonl\"\ntrain = \"train.jsonl\"\ntest = \"test.jsonl\"\n\
         val_size = 50\n\n[features]\nmin_df = 1\nmax_features = 500\n\n\
         [model]\nkind = \"linear\"\n\n[train]\nepochs = 30\nbatch_size = 32\nlr = 0.05\n\n\
         [loss]\ntype = \"multilabel\"\npreset = \"{preset}\"\n"
    );
    let path = dir.join(format!("{preset}.toml"));
    std::fs::write(&path, text).expect("experiment");
    path
}

#[test]
fn train_writes_metrics_and_a_plot() {
    let dir = scratch("train");
    corpus(&dir);
    let exp = experiment(&dir, "db");
    let out_dir = dir.join("out");

    let out = Command::new(BIN)
        .args(["train", &exp.display().to_string(), "--out", &out_dir.display().to_string()])
        .output()
        .expect("run");

    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("| test |") && table.contains("micro-F1"), "{table}");
    let metrics: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("metrics.json")).unwrap())
            .expect("metrics.json");
    let micro = metrics["test"]["micro_f1"].as_f64().expect("test micro_f1");
    assert!(micro > 0.9, "the corpus is separable: micro-F1 {micro}");
    for group in ["head", "medium"] {
        assert!(metrics["test"]["groups"][group]["macro_f1"].is_number(), "{group}: {metrics}");
    }
    // No label of this corpus has 8 or fewer training documents: the group is empty, and says so.
    let tail = &metrics["test"]["groups"]["tail"];
    assert_eq!((tail["n_labels"].as_u64(), tail["macro_f1"].is_null()), (Some(0), true), "{tail}");
    assert!(table.contains("n/a"), "{table}");
    assert!(metrics["val"]["micro_f1"].is_number());
    let t = metrics["threshold"].as_f64().expect("threshold");
    assert!((0.4 - 1e-6..=0.6 + 1e-6).contains(&t), "{t}");
    assert!(metrics["seconds"].as_f64().expect("seconds") > 0.0);
    let svg = std::fs::read_to_string(out_dir.join("per_label_f1.svg")).expect("plot");
    assert!(svg.starts_with("<svg"), "an SVG plot");
}

#[test]
fn sweep_prints_one_row_per_variant_and_writes_md_and_csv() {
    let dir = scratch("sweep");
    corpus(&dir);
    experiment(&dir, "bce");
    let sweep = dir.join("sweep.toml");
    std::fs::write(
        &sweep,
        "experiment = \"bce.toml\"\nseeds = [1, 2]\n\n\
         [[variant]]\nname = \"BCE\"\nloss = { type = \"multilabel\", preset = \"bce\" }\n\n\
         [[variant]]\nname = \"FL\"\nloss = { type = \"multilabel\", preset = \"focal\" }\n",
    )
    .expect("sweep");
    let out_dir = dir.join("out");

    let out = Command::new(BIN)
        .args(["sweep", &sweep.display().to_string(), "--out", &out_dir.display().to_string()])
        .output()
        .expect("run");

    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("| BCE |") && table.contains("| FL |"), "{table}");
    let csv = std::fs::read_to_string(out_dir.join("results.csv")).expect("csv");
    assert_eq!(csv.lines().count(), 3, "{csv}");
    assert!(std::fs::read_to_string(out_dir.join("results.md")).expect("md").contains("| FL |"));
}

#[test]
fn stats_prints_a_loss_snippet_and_errors_are_clear() {
    let dir = scratch("stats");
    corpus(&dir);
    let exp = experiment(&dir, "bce");

    let out = Command::new(BIN).args(["stats", &exp.display().to_string()]).output().expect("run");

    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[loss]") && text.contains("train_num = 300"), "{text}");
    assert!(text.contains("class_freq = [259, 60, 28]"), "{text}");

    let missing = Command::new(BIN)
        .args(["train", &exp.display().to_string(), "--data", "/nonexistent/corpus"])
        .output()
        .expect("run");
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("/nonexistent/corpus"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// Runs `losslab` and returns its stderr, checking that it failed with one line.
fn one_line_failure(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().expect("run");
    assert!(!out.status.success(), "accepted: {args:?}");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let errors: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "one error line: {err}");
    assert!(!err.contains("panicked") && !err.contains("frame #"), "{err}");
    errors[0].to_string()
}

#[test]
fn settings_are_checked_before_the_data_is_read() {
    let dir = scratch("settings");
    let base = "[data]\nformat = \"jsonl\"\ntrain = \"missing.jsonl\"\ntest = \"missing.jsonl\"\n";
    let cases = [
        ("[train]\nlr = -1.0\n", "train.lr"),
        ("[train]\nweight_decay = nan\n", "train.weight_decay"),
        ("[train]\nepochs = 0\n", "train.epochs"),
        ("[train]\nbatch_size = 0\n", "train.batch_size"),
        ("[model]\nkind = \"mlp\"\nhidden = 0\n", "model.hidden"),
        ("[model]\nkind = \"mlp\"\ndropout = 1.5\n", "model.dropout"),
        ("[model]\nkind = \"linear\"\nhiden = 5\n", "hiden"),
        ("[model]\nkind = \"linear\"\nhidden = 5\n", "model.hidden"),
        ("[eval]\nthreshold_step = 0.0\n", "eval.threshold"),
        ("[loss]\ntype = \"multilabel\"\n[loss.focal]\ngamma = -2.0\n", "focal.gamma"),
    ];
    for (i, (table, named)) in cases.iter().enumerate() {
        let mut text = format!("{base}{table}");
        if !table.contains("[loss]") {
            text.push_str("[loss]\ntype = \"multilabel\"\n");
        }
        let exp = dir.join(format!("case{i}.toml"));
        std::fs::write(&exp, text).expect("experiment");

        let err = one_line_failure(&["train", &exp.display().to_string()]);

        assert!(err.contains(named), "case {i}: expected `{named}` in: {err}");
        assert!(!err.contains("missing.jsonl"), "case {i}: data read first: {err}");
    }
}

#[test]
fn a_bad_out_dir_or_duplicate_variant_fails_before_training() {
    let dir = scratch("out");
    corpus(&dir);
    let exp = experiment(&dir, "bce");
    let file = dir.join("a-file");
    std::fs::write(&file, "x").expect("file");

    let err = one_line_failure(&[
        "train",
        &exp.display().to_string(),
        "--out",
        &file.display().to_string(),
    ]);
    assert!(err.contains("not a directory"), "{err}");

    let sweep = dir.join("sweep.toml");
    std::fs::write(
        &sweep,
        "experiment = \"bce.toml\"\n[[variant]]\nname = \"A\"\nloss = { type = \"multilabel\" }\n\
         [[variant]]\nname = \"A\"\nloss = { type = \"multilabel\", preset = \"focal\" }\n",
    )
    .expect("sweep");
    let err = one_line_failure(&["sweep", &sweep.display().to_string()]);
    assert!(err.contains("`A`"), "{err}");

    let err = one_line_failure(&["train", &exp.display().to_string(), "--device", "gpu"]);
    assert!(err.contains("gpu"), "{err}");
}
