//! `cargo xtask ci`: formatting, clippy and the tests, as CI runs them.

use anyhow::{Result, bail};
use std::process::Command;

fn cargo(args: &[&str]) -> Result<()> {
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(env!("CARGO")).args(args).current_dir(crate::root()).status()?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

/// Runs the checks.
pub fn run() -> Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&["clippy", "--workspace", "--release", "--all-targets", "--", "-D", "warnings"])?;
    cargo(&["test", "--workspace", "--release"])
}
