//! Shared helpers: running the binary, fixture paths, temporary directories.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `tests/fixtures/<name>/<file>`.
pub fn fixture(name: &str, file: &str) -> PathBuf {
    root().join("tests/fixtures").join(name).join(file)
}

/// A command running the `anytime` binary in the repository root.
pub fn anytime() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_anytime"));
    c.current_dir(root());
    c
}

/// Runs `anytime args...` and returns its output.
pub fn run(args: &[&str]) -> Output {
    anytime().args(args).output().expect("the anytime binary runs")
}

/// Asserts success and returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(out.status.success(), "anytime {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts a clean failure: exit code 1, exactly one `error:` line on
/// stderr, no panic; returns that line.
pub fn fails(args: &[&str]) -> String {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "anytime {args:?} should fail with code 1; stderr: {err}");
    assert!(!err.contains("panicked"), "anytime {args:?} panicked: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "anytime {args:?}: expected one error line, got {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    lines[0].to_string()
}

/// A fresh, empty temporary directory unique to this test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("anytime-it-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Path as &str.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
