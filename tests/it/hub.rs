//! Weights from the Hugging Face cache, offline: a populated cache resolves
//! `hf:<owner>/<repo>/<file>`, and a missing file is a clear error that says
//! downloads are off (`HF_HUB_OFFLINE=1`).

use crate::util::{anytime, root, s, temp_dir};

#[test]
fn r06_weights_resolve_from_a_populated_cache_offline() {
    let home = temp_dir("hub");
    let repo = home.join("hub/models--anytime--fmnist");
    std::fs::create_dir_all(repo.join("refs")).expect("dirs");
    std::fs::create_dir_all(repo.join("snapshots/0123abcd")).expect("dirs");
    std::fs::write(repo.join("refs/main"), "0123abcd").expect("ref");
    std::fs::copy(
        root().join("weights/msdnet-fmnist.safetensors"),
        repo.join("snapshots/0123abcd/msdnet-fmnist.safetensors"),
    )
    .expect("copy");
    let data = root().join("data/fashion-mnist-sample");
    let run = |file: &str| {
        anytime()
            .env("HF_HOME", &home)
            .env("HF_HUB_OFFLINE", "1")
            .env_remove("HF_HUB_CACHE")
            .args([
                "eval",
                "--model",
                "msdnet-fmnist",
                "--weights",
                &format!("hf:anytime/fmnist/{file}"),
                "--data-dir",
                s(&data),
                "--json",
            ])
            .output()
            .expect("run")
    };
    let ok = run("msdnet-fmnist.safetensors");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let v: serde_json::Value = serde_json::from_slice(&ok.stdout).expect("json");
    assert_eq!(v["images"], 1000);
    assert_eq!(v["exits"].as_array().expect("exits").len(), 5);
    let missing = run("other.safetensors");
    assert_eq!(missing.status.code(), Some(1));
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(
        err.contains("not in the Hugging Face cache") && err.contains("downloads are off (HF_HUB_OFFLINE)"),
        "{err}"
    );
}
