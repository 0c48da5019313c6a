//! `docs/ARCHITECTURE.md` stays true: its crate table must list every
//! workspace member, in the directory it lives in, with exactly the workspace
//! crates it depends on (normal dependencies, as `cargo metadata` reports
//! them), each listed below the crates it depends on.
//!
//! Adding a crate to the workspace means adding its row; nothing here names
//! the crates.

use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// One row of the crate table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    /// Package name (`anytime-ops`).
    name: String,
    /// Directory relative to the workspace root (`crates/ops`).
    dir: String,
    /// Workspace crates it depends on, as package names.
    deps: BTreeSet<String>,
}

/// A workspace member as `cargo metadata` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    dir: String,
    /// Normal (not dev or build) dependencies on other workspace members.
    deps: BTreeSet<String>,
}

/// Strips backticks and blanks from a table cell.
fn cell(s: &str) -> String {
    s.trim().trim_matches('`').trim().to_string()
}

/// Parses the table whose header starts `| crate | dir |` (its last column
/// lists dependencies, `(none)` for none). A dependency may be named by its
/// package name or without the `anytime-` prefix.
fn parse_table(doc: &str) -> Result<Vec<Row>> {
    let mut lines = doc.lines().skip_while(|l| {
        let cells: Vec<String> = l.split('|').map(cell).collect();
        !(cells.len() > 3 && cells[1] == "crate" && cells[2] == "dir")
    });
    lines.next().context("no table with the header `| crate | dir | … |`")?;
    lines.next().context("the crate table has no separator line")?;
    let mut rows = Vec::new();
    for line in lines.take_while(|l| l.trim_start().starts_with('|')) {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').collect();
        if cells.len() < 3 {
            bail!("crate table row with fewer than 3 columns: {line}");
        }
        let deps_cell = cell(cells[cells.len() - 1]);
        let deps = if deps_cell == "(none)" {
            BTreeSet::new()
        } else {
            deps_cell.split(',').map(cell).filter(|d| !d.is_empty()).collect()
        };
        rows.push(Row { name: cell(cells[0]), dir: cell(cells[1]), deps });
    }
    if rows.is_empty() {
        bail!("the crate table has no rows");
    }
    Ok(rows)
}

/// Workspace members and their internal normal dependencies from the JSON of
/// `cargo metadata --format-version 1 --no-deps`.
fn parse_metadata(json: &str) -> Result<BTreeMap<String, Member>> {
    let v: serde_json::Value = serde_json::from_str(json).context("cargo metadata output is not JSON")?;
    let root = v["workspace_root"].as_str().context("metadata has no workspace_root")?;
    let packages = v["packages"].as_array().context("metadata has no packages")?;
    let names: BTreeSet<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    let mut members = BTreeMap::new();
    for p in packages {
        let name = p["name"].as_str().context("package without a name")?;
        let manifest = Path::new(p["manifest_path"].as_str().context("package without a manifest path")?);
        let dir = manifest
            .parent()
            .and_then(|d| d.strip_prefix(root).ok())
            .with_context(|| format!("{name}: manifest {} is outside the workspace", manifest.display()))?;
        let deps = p["dependencies"]
            .as_array()
            .context("package without dependencies")?
            .iter()
            // `kind` is null for normal dependencies, "dev" or "build" otherwise.
            .filter(|d| d["kind"].is_null())
            .filter_map(|d| d["name"].as_str())
            .filter(|d| names.contains(d))
            .map(str::to_string)
            .collect();
        members.insert(name.to_string(), Member { dir: dir.to_string_lossy().into_owned(), deps });
    }
    Ok(members)
}

/// Every way the table disagrees with the workspace, one line each.
fn differences(rows: &[Row], members: &BTreeMap<String, Member>) -> Vec<String> {
    // `ops` stands for `anytime-ops`; a name that is neither stays as written.
    let full = |d: &str| {
        let long = format!("anytime-{d}");
        if !members.contains_key(d) && members.contains_key(&long) { long } else { d.to_string() }
    };
    let mut out = Vec::new();
    let mut above = BTreeSet::new();
    for row in rows {
        let Some(m) = members.get(&row.name) else {
            out.push(format!("{}: a table row, but no workspace member of that name", row.name));
            continue;
        };
        if row.dir != m.dir {
            out.push(format!("{}: the table says dir {}, the workspace has {}", row.name, row.dir, m.dir));
        }
        let listed: BTreeSet<String> = row.deps.iter().map(|d| full(d)).collect();
        let missing: Vec<&String> = m.deps.difference(&listed).collect();
        let extra: Vec<&String> = listed.difference(&m.deps).collect();
        if !missing.is_empty() || !extra.is_empty() {
            out.push(format!(
                "{}: depends on {:?} per cargo metadata, the table lists {:?} (missing {missing:?}, not a \
                 dependency {extra:?})",
                row.name, m.deps, listed
            ));
        }
        let below: Vec<&String> = listed.iter().filter(|d| members.contains_key(*d) && !above.contains(*d)).collect();
        if !below.is_empty() {
            out.push(format!("{}: depends on {below:?}, which the table does not list above it", row.name));
        }
        if !above.insert(row.name.clone()) {
            out.push(format!("{}: more than one row", row.name));
        }
    }
    for name in members.keys().filter(|n| !above.contains(*n)) {
        out.push(format!("{name}: a workspace member without a row in the crate table"));
    }
    out
}

#[test]
fn architecture_crate_table_matches_cargo_metadata() -> Result<()> {
    let root = crate::root();
    let doc = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).context("reading docs/ARCHITECTURE.md")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(&root)
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let members = parse_metadata(&String::from_utf8(out.stdout)?)?;
    let diffs = differences(&parse_table(&doc)?, &members);
    assert!(diffs.is_empty(), "docs/ARCHITECTURE.md's crate table is out of date:\n{}", diffs.join("\n"));
    Ok(())
}

#[test]
fn the_check_finds_every_kind_of_difference() -> Result<()> {
    let doc = "intro\n\n| crate | dir | job | may depend on |\n|---|---|---|---|\n\
               | `anytime-a` | `crates/a` | a job, with commas | (none) |\n\
               | `anytime-b` | `crates/b` | b | a, `anytime-c` |\n\
               | `anytime-c` | `crates/x` | c | candle-core |\n\
               | `ghost` | `g` | g | (none) |\n\nafter\n| not | a row |\n";
    let rows = parse_table(doc)?;
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[1].deps, BTreeSet::from(["a".to_string(), "anytime-c".to_string()]));
    let json = serde_json::json!({
        "workspace_root": "/w",
        "packages": [
            {"name": "anytime-a", "manifest_path": "/w/crates/a/Cargo.toml", "dependencies": []},
            {"name": "anytime-b", "manifest_path": "/w/crates/b/Cargo.toml", "dependencies": [
                {"name": "anytime-a", "kind": null}, {"name": "anytime-d", "kind": null},
                {"name": "anytime-c", "kind": "dev"}, {"name": "serde", "kind": null}]},
            {"name": "anytime-c", "manifest_path": "/w/crates/c/Cargo.toml", "dependencies": []},
            {"name": "anytime-d", "manifest_path": "/w/crates/d/Cargo.toml", "dependencies": []}
        ]
    });
    let members = parse_metadata(&json.to_string())?;
    assert_eq!(members["anytime-b"].deps, BTreeSet::from(["anytime-a".to_string(), "anytime-d".to_string()]));
    let diffs = differences(&rows, &members);
    let expect = [
        "anytime-b: depends on {\"anytime-a\", \"anytime-d\"} per cargo metadata, the table lists \
         {\"anytime-a\", \"anytime-c\"} (missing [\"anytime-d\"], not a dependency [\"anytime-c\"])",
        "anytime-b: depends on [\"anytime-c\"], which the table does not list above it",
        "anytime-c: the table says dir crates/x, the workspace has crates/c",
        "anytime-c: depends on {} per cargo metadata, the table lists {\"candle-core\"} (missing [], not a \
         dependency [\"candle-core\"])",
        "ghost: a table row, but no workspace member of that name",
        "anytime-d: a workspace member without a row in the crate table",
    ];
    assert_eq!(diffs, expect);
    assert!(parse_table("no table here").is_err());
    Ok(())
}
