//! The adaptive-inference commands on the shipped weights and the bundled
//! sample: the demo (the README's main command), anytime classification under
//! a deadline, and the bad inputs of budgets and deadlines.

use crate::util::{fails, ok, root, s, temp_dir};

fn sample_idx() -> std::path::PathBuf {
    root().join("data/fashion-mnist-sample/t10k-images-idx3-ubyte.gz")
}

#[test]
fn r07_demo_runs_every_exit_and_real_early_exit() {
    let out = ok(&["demo"]);
    assert!(out.contains("anytime prediction, every exit"), "{out}");
    assert!(out.contains("budgeted, real early exit"), "{out}");
    assert!(out.lines().filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit())).count() >= 5, "{out}");
}

/// The first `n` sample images as a raw (uncompressed) IDX file.
fn small_idx(n: usize) -> std::path::PathBuf {
    let raw = gunzip(&sample_idx());
    let mut out = vec![0, 0, 8, 3];
    for d in [n as u32, 28, 28] {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(&raw[16..16 + n * 784]);
    let p = temp_dir("small-idx").join("images.idx");
    std::fs::write(&p, out).expect("write");
    p
}

/// Inflates through the system's `gzip -dc`, which keeps the test free of
/// extra dependencies (the binary's own gzip reader is what is under test).
fn gunzip(gz: &std::path::Path) -> Vec<u8> {
    let out = std::process::Command::new("gzip").arg("-dc").arg(gz).output().expect("gzip");
    assert!(out.status.success(), "gzip -dc {}", gz.display());
    out.stdout
}

#[test]
fn r07_classify_under_a_deadline_and_without_budget() {
    let idx = small_idx(20);
    let out = ok(&["classify", "--model", "msdnet-fmnist", s(&idx), "--deadline", "1000"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 20);
    assert!(lines[0].contains("#0: ") && lines[0].contains("exit 4"), "{}", lines[0]);
    let full = ok(&["classify", "--model", "msdnet-fmnist", s(&idx)]);
    assert!(full.lines().all(|l| l.contains("exit 4")));
    // The gzip sample is read as well.
    assert_eq!(
        ok(&["classify", "--model", "msdnet-fmnist", s(&sample_idx()), "--deadline", "0.001"]).lines().count(),
        1000
    );
}

#[test]
fn r07_bad_budgets_deadlines_and_images() {
    let idx = sample_idx();
    let e = fails(&["classify", "--model", "msdnet-fmnist", s(&idx), "--budget", "1.0"]);
    assert!(e.contains("outside") && e.contains("first exit"), "{e}");
    let e = fails(&["classify", "--model", "msdnet-fmnist", s(&idx), "--budget", "99"]);
    assert!(e.contains("outside") && e.contains("full model"), "{e}");
    assert!(fails(&["classify", "--model", "msdnet-fmnist", s(&idx), "--deadline=0"]).contains("(0, 3600000]"));
    assert!(fails(&["classify", "--model", "msdnet-fmnist", s(&idx), "--budget-fraction", "1.5"]).contains("(0, 1]"));
    let dir = temp_dir("bad-image");
    let img = dir.join("broken.png");
    std::fs::write(&img, b"\x89PNG\r\n\x1a\nbroken").expect("write");
    assert!(fails(&["classify", "--model", "msdnet-fmnist", s(&img)]).contains("unreadable image"));
    let cal = dir.join("cal.json");
    std::fs::write(&cal, r#"{"model":"x","weights_sha256":"0000","method":{"kind":"q","q":0.5},"thresholds":{"confidence":"max_softmax","per_exit":[0.5,0.5,0.5,0.5,0.5]},"exit_mflops":[1,2,3,4,5],"holdout_images":1,"holdout_accuracy":1,"holdout_mflops":1}"#).expect("write");
    let e = fails(&["classify", "--model", "msdnet-fmnist", s(&idx), "--calibration", s(&cal)]);
    assert!(e.contains("made for weights 0000"), "{e}");
}

#[test]
fn r26_classify_names_classes_from_a_labels_file() {
    let idx = small_idx(3);
    let dir = temp_dir("labels");
    let labels = dir.join("labels.txt");
    let names: Vec<String> = (0..10).map(|k| format!("class-{k}")).collect();
    std::fs::write(&labels, names.join("\n") + "\n").expect("write");
    let out = ok(&["classify", "--model", "msdnet-fmnist", s(&idx), "--labels", s(&labels)]);
    assert_eq!(out.lines().count(), 3);
    assert!(out.lines().all(|l| l.contains(": class-")), "{out}");
    // Without the file: Fashion-MNIST's names.
    let plain = ok(&["classify", "--model", "msdnet-fmnist", s(&idx)]);
    for (a, b) in plain.lines().zip(out.lines()) {
        let k: usize =
            b.split(": class-").nth(1).and_then(|r| r.split(' ').next()).and_then(|d| d.parse().ok()).expect("a class");
        assert!(a.contains(anytime_fmnist_name(k)), "{a} / {b}");
    }
    // A file of the wrong length, or none at all.
    std::fs::write(&labels, "a\nb\n").expect("write");
    let e = fails(&["classify", "--model", "msdnet-fmnist", s(&idx), "--labels", s(&labels)]);
    assert!(e.contains("2 class names for a model of 10 classes"), "{e}");
    let e = fails(&["classify", "--model", "msdnet-fmnist", s(&idx), "--labels", s(&dir.join("none.txt"))]);
    assert!(e.contains("cannot read the labels file"), "{e}");
}

/// Fashion-MNIST's class names, as `classify` prints them by default.
fn anytime_fmnist_name(k: usize) -> &'static str {
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"][k]
}
