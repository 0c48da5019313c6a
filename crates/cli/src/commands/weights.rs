//! Where a registry model's weights come from, in one documented order:
//!
//! 1. `--weights FILE`, or `--weights hf:<owner>/<repo>/<file>`;
//! 2. `$ANYTIME_WEIGHTS_DIR/<file>`;
//! 3. `weights/<file>` under the working directory;
//! 4. the Hugging Face cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//!    `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`);
//! 5. a download with hf-hub from the entry's hub repository (`$HF_ENDPOINT`,
//!    default `https://huggingface.co`) into that cache, checked against the
//!    SHA-256 the registry records; `--offline` or `HF_HUB_OFFLINE=1` forbid it.
//!
//! A file found in the cache (4) is checked against the registry's SHA-256 too;
//! files named by the user (1–3) are taken as they are (they may be retrained).
//! When nothing is found, the error lists every place looked, in order, and
//! how to get the file.

use anyhow::{Result, anyhow, bail};
use anytime_models::registry::{ModelEntry, Pretrained};
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

/// Environment variable naming a directory of weight files (step 2).
pub const WEIGHTS_DIR_ENV: &str = "ANYTIME_WEIGHTS_DIR";

/// The hub used when `HF_ENDPOINT` is not set.
const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Where a registry model's weights come from.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct WeightsArgs {
    /// Weights file (safetensors or PyTorch checkpoint), or
    /// `hf:<owner>/<repo>/<file>` (Hugging Face cache, downloaded when online).
    /// Default: the registry entry's file from $ANYTIME_WEIGHTS_DIR, then
    /// ./weights, then the Hugging Face cache, then downloaded from its hub
    /// repository (SHA-256 checked).
    #[arg(long)]
    pub weights: Option<String>,
    /// Never download weights (as does HF_HUB_OFFLINE=1).
    #[arg(long)]
    pub offline: bool,
}

/// The settings resolution reads from the process environment.
#[derive(Debug, Clone)]
struct Env {
    /// `$ANYTIME_WEIGHTS_DIR`.
    weights_dir: Option<PathBuf>,
    /// The Hugging Face cache's `hub` directory, or why there is none.
    hub_cache: std::result::Result<PathBuf, String>,
    /// Hub endpoint, without a trailing slash.
    endpoint: String,
    /// Why downloads are forbidden, if they are.
    offline: Option<&'static str>,
}

/// A non-empty environment variable.
fn var(name: &str) -> Option<std::ffi::OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

/// Whether an `HF_HUB_OFFLINE`-style value means "on" (as huggingface_hub reads it).
fn truthy(v: &str) -> bool {
    matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
}

impl Env {
    fn from_process(offline_flag: bool) -> Self {
        let hub_cache = if let Some(d) = var("HF_HUB_CACHE") {
            Ok(PathBuf::from(d))
        } else if let Some(h) = var("HF_HOME") {
            Ok(PathBuf::from(h).join("hub"))
        } else if let Some(x) = var("XDG_CACHE_HOME") {
            Ok(PathBuf::from(x).join("huggingface/hub"))
        } else if let Some(home) = var("HOME").or_else(|| var("USERPROFILE")) {
            Ok(PathBuf::from(home).join(".cache/huggingface/hub"))
        } else {
            Err("no cache directory (set HF_HOME)".to_string())
        };
        let offline = if offline_flag {
            Some("--offline")
        } else if std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| truthy(&v)) {
            Some("HF_HUB_OFFLINE")
        } else {
            None
        };
        let endpoint = std::env::var("HF_ENDPOINT")
            .ok()
            .map(|e| e.trim().trim_end_matches('/').to_string())
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        Self { weights_dir: var(WEIGHTS_DIR_ENV).map(PathBuf::from), hub_cache, endpoint, offline }
    }

    /// The URL hf-hub downloads `file` of `repo` from (revision `main`).
    fn url(&self, repo: &str, file: &str) -> String {
        format!("{}/{repo}/resolve/main/{file}", self.endpoint)
    }
}

/// A file in the hub cache, if `repo`'s `main` snapshot holds it.
fn cached(cache: &Path, repo: &str, file: &str) -> Option<PathBuf> {
    Cache::new(cache.to_path_buf()).repo(Repo::new(repo.to_string(), RepoType::Model)).get(file)
}

/// Downloads `file` of `repo` into the cache with hf-hub; when `sha256` is
/// given, checks it and removes a mismatching file from the cache.
fn download(env: &Env, cache: &Path, repo: &str, file: &str, sha256: Option<&str>) -> Result<PathBuf, String> {
    let api = ApiBuilder::from_cache(Cache::new(cache.to_path_buf()))
        .with_endpoint(env.endpoint.clone())
        .with_progress(std::io::stderr().is_terminal())
        .with_user_agent("anytime", env!("CARGO_PKG_VERSION"))
        .build()
        .map_err(|e| format!("failed ({e})"))?;
    let path = api.model(repo.to_string()).download(file).map_err(|e| format!("failed ({e})"))?;
    if let Some(want) = sha256 {
        let got = anytime_io::sha256_file(&path).map_err(|e| format!("failed ({e})"))?;
        if !got.eq_ignore_ascii_case(want) {
            remove_cached(&path);
            return Err(format!(
                "rejected: the file's SHA-256 is {got}, the registry records {want} (removed from the cache)"
            ));
        }
    }
    eprintln!("downloaded {file} from {} into {}", env.url(repo, file), path.display());
    Ok(path)
}

/// Removes a cache entry: the snapshot link and the blob it points to.
fn remove_cached(pointer: &Path) {
    if let Ok(blob) = std::fs::canonicalize(pointer) {
        let _ = std::fs::remove_file(blob);
    }
    let _ = std::fs::remove_file(pointer);
}

/// How to get a registry model's weights, for the not-found message.
fn how_to_get(p: &Pretrained, env: &Env) -> String {
    let online = match env.offline {
        Some(_) => "run again online (without --offline / HF_HUB_OFFLINE) to download it",
        None => "connect to the network (or set HF_ENDPOINT to a reachable hub) so it can be downloaded",
    };
    format!(
        "to get it: {online} from {}/{}, or put {} in ${WEIGHTS_DIR_ENV} or ./weights, or pass --weights FILE",
        env.endpoint, p.hub_repo, p.file
    )
}

/// Resolves the weights of a registry model to a local file, in the order of
/// the module documentation.
pub fn resolve_weights(entry: &ModelEntry, w: &WeightsArgs) -> Result<PathBuf> {
    let env = Env::from_process(w.offline);
    match &w.weights {
        Some(spec) => match spec.strip_prefix("hf:") {
            Some(rest) => resolve_hub_spec(&env, Some(entry), spec, rest),
            None => {
                let p = PathBuf::from(spec);
                if !p.exists() {
                    bail!("weights file {} does not exist", p.display());
                }
                Ok(p)
            }
        },
        None => {
            let Some(p) = entry.weights else {
                bail!("{} has no published weights; pass --weights FILE", entry.name);
            };
            search(&env, entry, &p)
        }
    }
}

/// The weights of a checkpoint without a registry entry (`--arch --config
/// --weights`): a file, or `hf:<owner>/<repo>/<file>` (cache, else a
/// download).
pub fn resolve_checkpoint(w: &WeightsArgs) -> Result<PathBuf> {
    let Some(spec) = &w.weights else {
        bail!("--arch and --config need --weights FILE (the checkpoint to load)");
    };
    match spec.strip_prefix("hf:") {
        Some(rest) => resolve_hub_spec(&Env::from_process(w.offline), None, spec, rest),
        None => {
            let p = PathBuf::from(spec);
            if !p.exists() {
                bail!("weights file {} does not exist", p.display());
            }
            Ok(p)
        }
    }
}

/// `--weights hf:<owner>/<repo>/<file>`: the cache, else a download when
/// online (checked when it names the registry's own file).
fn resolve_hub_spec(env: &Env, entry: Option<&ModelEntry>, spec: &str, rest: &str) -> Result<PathBuf> {
    let mut parts = rest.splitn(3, '/');
    let (Some(owner), Some(name), Some(file)) = (parts.next(), parts.next(), parts.next()) else {
        bail!("bad hub weights '{spec}': expected hf:<owner>/<repo>/<file>");
    };
    if owner.is_empty() || name.is_empty() || file.is_empty() {
        bail!("bad hub weights '{spec}': expected hf:<owner>/<repo>/<file>");
    }
    let repo = format!("{owner}/{name}");
    let cache = env.hub_cache.as_ref().map_err(|why| anyhow!("cannot use {spec}: {why}"))?;
    if let Some(path) = cached(cache, &repo, file) {
        return Ok(path);
    }
    if let Some(flag) = env.offline {
        bail!(
            "{file} of {repo} is not in the Hugging Face cache at {} and downloads are off ({flag}); \
             run again online, or pass a local path",
            cache.display()
        );
    }
    let sha = entry.and_then(|e| e.weights).filter(|p| p.hub_repo == repo && p.file == file).map(|p| p.sha256);
    download(env, cache, &repo, file, sha).map_err(|why| {
        anyhow!(
            "{file} of {repo} is not in the Hugging Face cache at {}, and the download from {} {why}",
            cache.display(),
            env.url(&repo, file)
        )
    })
}

/// Steps 2–5 for a registry model's published file.
fn search(env: &Env, entry: &ModelEntry, p: &Pretrained) -> Result<PathBuf> {
    let mut looked = vec!["--weights: not given".to_string()];
    match &env.weights_dir {
        Some(dir) => {
            let f = dir.join(p.file);
            if f.is_file() {
                return Ok(f);
            }
            looked.push(format!("${WEIGHTS_DIR_ENV}: {} absent", f.display()));
        }
        None => looked.push(format!("${WEIGHTS_DIR_ENV}: not set")),
    }
    let local = Path::new("weights").join(p.file);
    if local.is_file() {
        return Ok(local);
    }
    let cwd = std::env::current_dir().map(|d| d.join(&local)).unwrap_or_else(|_| local.clone());
    looked.push(format!("{} absent", cwd.display()));
    match &env.hub_cache {
        Ok(cache) => match cached(cache, p.hub_repo, p.file) {
            Some(f) => match anytime_io::sha256_file(&f) {
                Ok(sha) if sha.eq_ignore_ascii_case(p.sha256) => return Ok(f),
                Ok(sha) => looked.push(format!(
                    "Hugging Face cache: {} has SHA-256 {sha}, not the registry's {}",
                    f.display(),
                    p.sha256
                )),
                Err(e) => looked.push(format!("Hugging Face cache: {e}")),
            },
            None => looked.push(format!("Hugging Face cache {}: no {} of {}", cache.display(), p.file, p.hub_repo)),
        },
        Err(why) => looked.push(format!("Hugging Face cache: {why}")),
    }
    let url = env.url(p.hub_repo, p.file);
    match (&env.hub_cache, env.offline) {
        (_, Some(flag)) => looked.push(format!("download from {url}: not tried ({flag})")),
        (Err(why), None) => looked.push(format!("download from {url}: not tried ({why})")),
        (Ok(cache), None) => match download(env, cache, p.hub_repo, p.file, Some(p.sha256)) {
            Ok(f) => return Ok(f),
            Err(why) => looked.push(format!("download from {url}: {why}")),
        },
    }
    let places: Vec<String> = looked.iter().enumerate().map(|(i, l)| format!("{}. {l}", i + 1)).collect();
    bail!("no weights for {} ({}); looked in order: {}; {}", entry.name, p.file, places.join("; "), how_to_get(p, env))
}

/// The local copy of a published file (steps 2–4, no download), for listings.
pub fn find_local(p: &Pretrained) -> Option<PathBuf> {
    let env = Env::from_process(true);
    env.weights_dir
        .map(|d| d.join(p.file))
        .filter(|f| f.is_file())
        .or_else(|| Some(Path::new("weights").join(p.file)).filter(|f| f.is_file()))
        .or_else(|| env.hub_cache.ok().and_then(|c| cached(&c, p.hub_repo, p.file)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_values_read_as_huggingface_hub_does() {
        for v in ["1", "true", "YES", "On", " 1 "] {
            assert!(truthy(v), "{v}");
        }
        for v in ["0", "", "false", "no", "off", "2"] {
            assert!(!truthy(v), "{v}");
        }
    }

    #[test]
    fn urls_follow_the_hub_layout() {
        let env = Env {
            weights_dir: None,
            hub_cache: Err(String::new()),
            endpoint: "http://127.0.0.1:9".into(),
            offline: None,
        };
        assert_eq!(
            env.url("anytime-rs/msdnet-fmnist", "msdnet-fmnist.safetensors"),
            "http://127.0.0.1:9/anytime-rs/msdnet-fmnist/resolve/main/msdnet-fmnist.safetensors"
        );
    }

    #[test]
    fn bad_hub_specs_are_named() {
        let entry = anytime_models::registry::lookup("msdnet-fmnist").expect("entry");
        for spec in ["hf:owner", "hf:owner/repo", "hf://x", "hf:a//f"] {
            let w = WeightsArgs { weights: Some(spec.into()), offline: true };
            let e = resolve_weights(entry, &w).expect_err(spec).to_string();
            assert!(e.contains("expected hf:<owner>/<repo>/<file>"), "{spec}: {e}");
        }
    }
}
