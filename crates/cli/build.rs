//! Records the commit the binary is built from, for `anytime --version`.
//!
//! `ANYTIME_GIT_COMMIT` in the build environment wins (for packagers building
//! from a tarball); otherwise `git rev-parse` in the source tree; otherwise
//! "unknown". The build never fails because git is missing or the source is
//! not a checkout (a published crate).

use std::path::PathBuf;
use std::process::Command;

/// Runs git with `args` in the crate directory; its trimmed stdout on success.
fn git(args: &[&str]) -> Option<String> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
    let out = Command::new("git").args(args).current_dir(dir).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=ANYTIME_GIT_COMMIT");
    let commit = match std::env::var("ANYTIME_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_string(),
        _ => {
            // Rebuild when HEAD moves: HEAD itself, the branch it points to and
            // packed refs (only paths that exist, or cargo reruns every build).
            let mut watch =
                vec![git(&["rev-parse", "--git-path", "HEAD"]), git(&["rev-parse", "--git-path", "packed-refs"])];
            if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
                watch.push(git(&["rev-parse", "--git-path", &branch]));
            }
            let dir = std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from).unwrap_or_default();
            for p in watch.into_iter().flatten() {
                let p = dir.join(p);
                if p.exists() {
                    println!("cargo:rerun-if-changed={}", p.display());
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into())
        }
    };
    println!("cargo:rustc-env=ANYTIME_GIT_COMMIT={commit}");
}
