//! The installed binary: copied into a temporary root and run from an empty
//! directory, it finds its weights through `ANYTIME_WEIGHTS_DIR`, shows the
//! demo on the sample built into it, evaluates a data directory, prints its
//! version and commit, and without weights (offline) lists every place it
//! looked. The shipped files match the SHA-256s the registry records.

use crate::util::{isolated, output_within, root, s, temp_dir};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// Copies the built binary to `<tmp>/bin/anytime`, as `cargo install --root <tmp>` lays it out.
fn install(tmp: &Path) -> PathBuf {
    let bin = tmp.join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let exe = bin.join(format!("anytime{}", std::env::consts::EXE_SUFFIX));
    std::fs::copy(env!("CARGO_BIN_EXE_anytime"), &exe).expect("copy the binary");
    // A child another test thread forked while the copy was open for writing
    // holds that descriptor until it execs, and executing the new file fails
    // with ETXTBSY ("text file busy") meanwhile: retry that error only. Once
    // the file has run, no such descriptor is left.
    for _ in 0..100 {
        match Command::new(&exe).arg("--version").output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(Duration::from_millis(20))
            }
            _ => break,
        }
    }
    exe
}

/// Runs the installed binary in `cwd` with the hub cache in `hf_home`.
fn run_in(exe: &Path, cwd: &Path, hf_home: &Path, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut cmd = isolated(Command::new(exe), hf_home);
    cmd.current_dir(cwd).args(args);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let out = output_within(cmd, Duration::from_secs(300));
    eprintln!(
        "$ anytime {} ({vars:?})\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn succeeded(out: &Output) -> String {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Exit code 1 and exactly one `error:` line; returns it.
fn one_error(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    lines[0].to_string()
}

#[test]
fn installed_binary_works_from_an_empty_directory() {
    let tmp = temp_dir("install-root");
    let exe = install(&tmp);
    let cwd = temp_dir("install-cwd");
    let hf_home = temp_dir("install-hf");
    let weights = root().join("weights").canonicalize().expect("weights dir");
    let data = root().join("data/fashion-mnist-sample").canonicalize().expect("sample dir");
    let with_weights = [("ANYTIME_WEIGHTS_DIR", s(&weights))];

    let version = succeeded(&run_in(&exe, &cwd, &hf_home, &["--version"], &[]));
    assert!(version.starts_with(&format!("anytime {} (commit ", env!("CARGO_PKG_VERSION"))), "{version}");
    let head = Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).current_dir(root()).output();
    if let Some(h) = head.ok().filter(|h| h.status.success()) {
        let h = String::from_utf8_lossy(&h.stdout).trim().to_string();
        assert!(version.contains(&h), "{version} should name commit {h}");
    }

    let demo = succeeded(&run_in(&exe, &cwd, &hf_home, &["demo"], &with_weights));
    assert!(demo.contains("msdnet-fmnist on the bundled Fashion-MNIST sample (1000 test images"), "{demo}");
    assert!(demo.contains("budgeted, real early exit") && demo.contains("first image: Ankle boot"), "{demo}");

    let eval = succeeded(&run_in(
        &exe,
        &cwd,
        &hf_home,
        &["eval", "--model", "msdnet-fmnist", "--limit", "100", "--data-dir", s(&data), "--json"],
        &with_weights,
    ));
    let v: serde_json::Value = serde_json::from_str(&eval).expect("json");
    assert_eq!(v["images"], 100);
    assert_eq!(v["exits"].as_array().expect("exits").len(), 5);

    // --data-dir overrides the built-in sample.
    let full = succeeded(&run_in(&exe, &cwd, &hf_home, &["demo", "--data-dir", s(&data)], &with_weights));
    assert!(full.contains(&format!("the Fashion-MNIST test split in {}", data.display())), "{full}");

    // Nothing anywhere, downloads off: every place, in order, and how to get the file.
    let cwd_file = cwd.canonicalize().expect("cwd").join("weights/msdnet-fmnist.safetensors");
    for (args, vars, why) in [
        (&["demo", "--offline"][..], &[][..], "--offline"),
        (&["demo"][..], &[("HF_HUB_OFFLINE", "1")][..], "HF_HUB_OFFLINE"),
    ] {
        let err = one_error(&run_in(&exe, &cwd, &hf_home, args, vars));
        let expected = [
            "no weights for msdnet-fmnist (msdnet-fmnist.safetensors); looked in order:".to_string(),
            "1. --weights: not given;".into(),
            "2. $ANYTIME_WEIGHTS_DIR: not set;".into(),
            format!("3. {} absent;", cwd_file.display()),
            format!(
                "4. Hugging Face cache {}: no msdnet-fmnist.safetensors of anytime-rs/msdnet-fmnist;",
                hf_home.join("hub").display()
            ),
            format!(
                "5. download from https://huggingface.co/anytime-rs/msdnet-fmnist/resolve/main/msdnet-fmnist.safetensors: not tried ({why});"
            ),
            "to get it: run again online".into(),
            "or put msdnet-fmnist.safetensors in $ANYTIME_WEIGHTS_DIR or ./weights, or pass --weights FILE".into(),
        ];
        let mut at = 0;
        for part in &expected {
            let found = err[at..].find(part.as_str());
            assert!(found.is_some(), "missing, or out of order: '{part}' in {err}");
            at += found.unwrap_or(0) + part.len();
        }
        assert!(!err.contains("xtask"), "{err}");
    }

    // ANYTIME_WEIGHTS_DIR that lacks the file is named as looked at.
    let empty = temp_dir("install-empty-weights");
    let err = one_error(&run_in(&exe, &cwd, &hf_home, &["demo", "--offline"], &[("ANYTIME_WEIGHTS_DIR", s(&empty))]));
    assert!(
        err.contains(&format!("2. $ANYTIME_WEIGHTS_DIR: {} absent", empty.join("msdnet-fmnist.safetensors").display())),
        "{err}"
    );
}

/// The files in weights/ are the published ones: their SHA-256s are the registry's.
#[test]
fn shipped_weights_match_the_registry_digests() {
    let mut checked = 0;
    for e in anytime_models::registry::REGISTRY {
        if let Some(p) = e.weights {
            let got = anytime_io::sha256_file(root().join("weights").join(p.file)).expect("read weights");
            assert_eq!(
                got, p.sha256,
                "weights/{} changed: update its sha256 in crates/models/src/registry.rs and publish it to {}",
                p.file, p.hub_repo
            );
            assert_eq!(p.hub_repo, format!("anytime-rs/{}", e.name));
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} shipped models");
}
