//! Fuzz targets for every parser and validator of `anytime`, on stable Rust.
//!
//! A [`Target`] has valid seed inputs and a function that parses one input
//! the way the program does. [`fuzz`] feeds it seeded mutations of the seeds
//! ([`mutate`]: bit flips, interesting bytes, truncation, splices, swapped
//! numbers in text) and checks the property every parser must have: it
//! returns `Ok` or an error, and never panics. A panic is returned as a
//! [`Crash`] holding the input, which `cargo xtask fuzz` saves under
//! `crates/fuzz/regressions/` and the tests replay ever after.
//!
//! ```
//! let target = anytime_fuzz::target("idx").expect("target");
//! let done = anytime_fuzz::fuzz(target, 7, 50).expect("no crash");
//! assert_eq!(done, 50);
//! ```

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;

/// A parser under test.
pub struct Target {
    /// Its name (`cargo xtask fuzz --target NAME`, regression file prefix).
    pub name: &'static str,
    /// Valid inputs mutations start from.
    pub seeds: fn() -> Vec<Vec<u8>>,
    /// Parses one input; must never panic.
    pub run: fn(&[u8]),
}

/// An input that made a target panic.
#[derive(Debug, Clone)]
pub struct Crash {
    /// The target.
    pub target: &'static str,
    /// The input.
    pub input: Vec<u8>,
    /// The panic message.
    pub message: String,
}

/// Every target.
pub static TARGETS: &[Target] = &[
    Target { name: "safetensors", seeds: seeds::safetensors, run: run::tensors },
    Target { name: "pth", seeds: seeds::pth, run: run::tensors },
    Target { name: "pickle", seeds: seeds::pickle, run: run::pickle },
    Target { name: "config", seeds: seeds::config, run: run::config },
    Target { name: "idx", seeds: seeds::idx, run: run::idx },
    Target { name: "cifar", seeds: seeds::cifar, run: run::cifar },
    Target { name: "image", seeds: seeds::image, run: run::image },
    Target { name: "calibration", seeds: seeds::calibration, run: run::calibration },
    Target { name: "checkpoint", seeds: seeds::checkpoint, run: run::checkpoint },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// Runs `target` on `input`, turning a panic into a [`Crash`].
pub fn run_case(target: &Target, input: &[u8]) -> Result<(), Crash> {
    let run = target.run;
    std::panic::catch_unwind(|| run(input)).map_err(|e| Crash {
        target: target.name,
        input: input.to_vec(),
        message: e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into()),
    })
}

/// Runs `iterations` mutated inputs of `target` from generator `seed` (the
/// seeds themselves first); returns how many ran, or the first crash.
/// `before` sees each input before it runs (the fuzz driver keeps the last one
/// on disk, to save it when the process dies of something a panic hook cannot
/// catch).
pub fn fuzz_with(target: &Target, seed: u64, iterations: usize, mut before: impl FnMut(&[u8])) -> Result<usize, Crash> {
    let seeds = (target.seeds)();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for i in 0..iterations {
        let input = match seeds.get(i) {
            Some(s) => s.clone(),
            None => {
                let base = &seeds[rng.random_range(0..seeds.len())];
                let other = &seeds[rng.random_range(0..seeds.len())];
                mutate(&mut rng, base, other)
            }
        };
        before(&input);
        run_case(target, &input)?;
    }
    Ok(iterations)
}

/// [`fuzz_with`] without an observer.
pub fn fuzz(target: &Target, seed: u64, iterations: usize) -> Result<usize, Crash> {
    fuzz_with(target, seed, iterations, |_| {})
}

/// Numbers that break careless size arithmetic, as text.
const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1e308",
    "-1e308",
    "NaN",
    "1099511627776",
    "18446744073709551615",
    "18446744073709551616",
    "4294967296",
    "9223372036854775807",
    "0.0000001",
    "3",
];

/// Bytes that break careless parsers.
const BYTES: &[u8] = &[0x00, 0x01, 0x7f, 0x80, 0xff, b'{', b'[', b'"', b'}', b'\\'];

/// One to four mutations of `base` (`other` is spliced from).
pub fn mutate(rng: &mut ChaCha8Rng, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        if v.is_empty() {
            v.push(rng.random());
            continue;
        }
        let at = rng.random_range(0..v.len());
        match rng.random_range(0..9) {
            0 => v[at] ^= 1 << rng.random_range(0..8),
            1 => v[at] = BYTES[rng.random_range(0..BYTES.len())],
            2 => v.truncate(at),
            3 => {
                let n = rng.random_range(1..=16.min(v.len() - at));
                v.drain(at..at + n);
            }
            4 => {
                let n = rng.random_range(1..=8);
                for _ in 0..n {
                    v.insert(at, rng.random());
                }
            }
            5 if !other.is_empty() => {
                let from = rng.random_range(0..other.len());
                let n = rng.random_range(1..=64.min(other.len() - from));
                v.splice(at..at, other[from..from + n].iter().copied());
            }
            6 => {
                // A little-endian u64 / u32 near a header: huge or zero.
                let word: [u8; 8] = match rng.random_range(0..3) {
                    0 => u64::MAX.to_le_bytes(),
                    1 => (1u64 << rng.random_range(20..63)).to_le_bytes(),
                    _ => 0u64.to_le_bytes(),
                };
                let at = at.min(v.len().saturating_sub(8));
                let n = 8.min(v.len() - at);
                v[at..at + n].copy_from_slice(&word[..n]);
            }
            7 => {
                // Replace a run of digits (a number in text) with another.
                let digits = |b: &u8| b.is_ascii_digit() || *b == b'.' || *b == b'-' || *b == b'e';
                if let Some(start) = (at..v.len()).find(|&i| v[i].is_ascii_digit()) {
                    let end = (start..v.len()).find(|&i| !digits(&v[i])).unwrap_or(v.len());
                    let n = NUMBERS[rng.random_range(0..NUMBERS.len())];
                    v.splice(start..end, n.bytes());
                }
            }
            _ => {
                let n = rng.random_range(1..=32.min(v.len() - at));
                let chunk = v[at..at + n].to_vec();
                v.splice(at..at, chunk);
            }
        }
    }
    v
}

const NAME: &str = "fuzz-input";

mod run {
    use super::*;

    pub fn tensors(b: &[u8]) {
        if let Ok(f) = anytime_io::parse_tensors(Path::new(NAME), b) {
            let _ = f.check_finite();
            let _ = anytime_io::sha256_tensors(&f.tensors);
        }
    }

    pub fn pickle(b: &[u8]) {
        let _ = anytime_io::parse_pickle(b);
    }

    pub fn config(b: &[u8]) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(b) else { return };
        for a in anytime_models::registry::ARCHS {
            if let Ok(cfg) = anytime_models::registry::ArchConfig::from_json(a.name, &v) {
                let _ = cfg.validate();
                // Round trip through the weight-file form.
                if let Ok(text) = serde_json::to_value(&cfg) {
                    let _ = serde_json::from_value::<anytime_models::registry::ArchConfig>(text);
                }
            }
        }
    }

    pub fn idx(b: &[u8]) {
        let p = Path::new(NAME);
        if let Ok(raw) = anytime_data::idx::maybe_gunzip(b.to_vec(), p) {
            let _ = anytime_data::idx::parse(&raw, p);
        }
    }

    pub fn cifar(b: &[u8]) {
        use anytime_data::cifar::{Cifar, parse};
        let _ = parse(b, Cifar::Ten, Path::new(NAME));
        let _ = parse(b, Cifar::Hundred, Path::new(NAME));
    }

    pub fn image(b: &[u8]) {
        let _ = anytime_data::image::decode_image(b, Path::new(NAME), 1, (28, 28));
        let _ = anytime_data::image::decode_image(b, Path::new(NAME), 3, (32, 32));
    }

    pub fn calibration(b: &[u8]) {
        if let Ok(text) = std::str::from_utf8(b) {
            let _ = anytime_calibrate::Calibration::parse(Path::new(NAME), text, seeds::SHA);
        }
    }

    pub fn checkpoint(b: &[u8]) {
        if let Ok(c) = anytime_train::checkpoint::Checkpoint::parse(Path::new(NAME), b) {
            let _ = c.state.validate(3, 10);
        }
    }
}

mod seeds {
    use candle_core::{Device, Tensor};
    use std::collections::BTreeMap;

    pub const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn st(tensors: &[(&str, Vec<usize>)], meta: Option<std::collections::HashMap<String, String>>) -> Vec<u8> {
        let ts: Vec<(String, Tensor)> = tensors
            .iter()
            .map(|(k, s)| {
                let n: usize = s.iter().product();
                let t = Tensor::from_vec(
                    (0..n).map(|i| i as f32 * 0.5 - 1.0).collect::<Vec<f32>>(),
                    s.clone(),
                    &Device::Cpu,
                );
                (k.to_string(), t.expect("seed tensor"))
            })
            .collect();
        safetensors::serialize(ts.iter().map(|(k, t)| (k.as_str(), t)), meta).expect("seed safetensors")
    }

    pub fn safetensors() -> Vec<Vec<u8>> {
        let meta = std::collections::HashMap::from([(
            "anytime".to_string(),
            r#"{"architecture":"msdnet","exit_accuracy":[0.5],"exit_mflops":[1.0]}"#.to_string(),
        )]);
        vec![
            st(&[("fc.weight", vec![2, 3]), ("fc.bias", vec![2])], None),
            st(&[("conv.weight", vec![4, 1, 3, 3]), ("bn.running_var", vec![4])], Some(meta)),
        ]
    }

    pub fn pth() -> Vec<Vec<u8>> {
        vec![
            include_bytes!("../../io/testdata/bare_state_dict.pth").to_vec(),
            include_bytes!("../../io/testdata/checkpoint_module.pth.tar").to_vec(),
            include_bytes!("../../io/testdata/protocol4.pth").to_vec(),
            include_bytes!("../../io/testdata/legacy.pth").to_vec(),
            include_bytes!("../../io/testdata/legacy_checkpoint_module.pth.tar").to_vec(),
        ]
    }

    /// The `data.pkl` members of the `.pth` seeds.
    pub fn pickle() -> Vec<Vec<u8>> {
        pth()
            .iter()
            .filter(|f| f.starts_with(b"PK"))
            .filter_map(|zip| {
                // A stored (uncompressed) member: its bytes sit between the
                // local header and the next signature; find `data.pkl` and the
                // pickle's STOP opcode after the PROTO header.
                let name = b"data.pkl";
                let at = zip.windows(name.len()).position(|w| w == name)?;
                let start = zip[at..].iter().position(|&b| b == 0x80)? + at;
                let end = zip[start..].iter().position(|&b| b == b'.').map(|e| start + e + 1)?;
                let stop = zip[start..].windows(4).position(|w| w == b"PK\x03\x04" || w == b"PK\x01\x02");
                let end = stop.map_or(end, |s| (start + s).max(end));
                Some(zip[start..end].to_vec())
            })
            .collect()
    }

    pub fn config() -> Vec<Vec<u8>> {
        [
            r#"{"block": "basic", "layers": [2, 2, 2, 2], "num_classes": 10, "in_channels": 1, "width": 8}"#,
            r#"{"block": "bottleneck", "layers": [1, 2, 1, 1], "num_classes": 7, "width": 4, "attention": false}"#,
            r#"{"cli_args": "python3 main.py --data cifar100 --arch msdnet --nBlocks 7 --stepmode even --step 2 --base 4 --nChannels 16 --growthRate 6 --grFactor 1-2-4 --bnFactor 1-2-4"}"#,
            r#"{"args": {"data": "cifar10", "nBlocks": 2, "block_step": 2, "step": 2, "stepmode": "lg", "scale_list": [1, 2, 3], "grFactor": [4, 2, 1], "bnFactor": [4, 2, 1], "nScales": 3, "compress_factor": 0.25, "reduction": 0.5, "growthRate": 6, "nChannels": 16}}"#,
            r#"{"in_channels": 1, "num_classes": 10, "stem_channels": 16, "widths": [16, 32], "blocks": [2, 2], "exits": [1, 2, 4], "head_channels": 48}"#,
            r#"{"in_channels": 1, "num_classes": 10, "stem_channels": 16, "growth_rate": 12, "blocks": [3, 4], "bottleneck_factor": 4, "compression": 0.5, "exits": [1, 7], "head_channels": 48}"#,
            r#"{"arch": "msdnet", "config": {"stem": "cifar", "num_classes": 10, "in_channels": 1, "n_blocks": 3, "n_channels": 4, "base": 1, "step": 1, "stepmode": "even", "growth_rate": 2, "gr_factor": [1, 2, 4], "bn_factor": [1, 2, 4], "prune": "max", "bottleneck": true, "reduction": 0.5}}"#,
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect()
    }

    pub fn idx() -> Vec<Vec<u8>> {
        let mut images = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 4, 0, 0, 0, 4];
        images.extend((0..32u8).map(|i| i * 7));
        vec![
            images,
            vec![0, 0, 8, 1, 0, 0, 0, 3, 1, 2, 3],
            include_bytes!("../../data/fashion-mnist-sample/t10k-labels-idx1-ubyte.gz").to_vec(),
        ]
    }

    pub fn cifar() -> Vec<Vec<u8>> {
        let rec = |label: u8, extra: usize| {
            let mut v = vec![label; 1 + extra];
            v.extend((0..3072).map(|i| (i % 251) as u8));
            v
        };
        vec![[rec(3, 0), rec(9, 0)].concat(), [rec(1, 1), rec(42, 1)].concat()]
    }

    pub fn image() -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for (w, h) in [(4u32, 3u32), (28, 28)] {
            let img = image::GrayImage::from_fn(w, h, |x, y| image::Luma([(x * 9 + y * 5) as u8]));
            let mut png = std::io::Cursor::new(Vec::new());
            if img.write_to(&mut png, image::ImageFormat::Png).is_ok() {
                out.push(png.into_inner());
            }
        }
        out
    }

    pub fn calibration() -> Vec<Vec<u8>> {
        let c = anytime_calibrate::Calibration {
            model: "msdnet-fmnist".into(),
            weights_sha256: SHA.into(),
            method: anytime_calibrate::Method::Q { q: 1.0 },
            thresholds: anytime_calibrate::Thresholds::new(
                anytime_calibrate::Confidence::MaxSoftmax,
                vec![0.9, 0.8, f32::MIN],
            ),
            exit_mflops: vec![1.0, 2.0, 3.0],
            holdout_images: 100,
            holdout_accuracy: 0.9,
            holdout_mflops: 1.5,
        };
        let e = c.clone().thresholds.with_fallback(anytime_calibrate::Fallback::Ensemble);
        let d = anytime_calibrate::Calibration { thresholds: e, ..c.clone() };
        [c, d].iter().filter_map(|c| serde_json::to_vec_pretty(c).ok()).collect()
    }

    pub fn checkpoint() -> Vec<Vec<u8>> {
        use anytime_train::checkpoint::{Checkpoint, PartialEpoch, TrainState};
        let t = |n: usize| Tensor::from_vec(vec![0.25f32; n], n, &Device::Cpu).expect("tensor");
        let ck = Checkpoint {
            model: BTreeMap::from([("fc.weight".to_string(), t(6)), ("bn.running_mean".to_string(), t(2))]),
            optim: BTreeMap::from([("m.fc.weight".to_string(), t(6))]),
            state: TrainState {
                epoch: 1,
                batch: 4,
                step: 14,
                seed: 1,
                best: Some((0.5, 0)),
                history: Vec::new(),
                seconds: 3.5,
                partial: PartialEpoch::default(),
                spec: None,
                init_from: None,
                rng: None,
            },
            swa: BTreeMap::new(),
        };
        let dir = std::env::temp_dir().join(format!("anytime-fuzz-seed-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("checkpoint.safetensors");
        let bytes = ck.save(&path).ok().and_then(|()| std::fs::read(&path).ok());
        let _ = std::fs::remove_dir_all(&dir);
        bytes.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The short fixed-seed campaign of `cargo test`: every target, its seeds
    /// and a few hundred mutations, without a panic.
    #[test]
    fn every_target_survives_a_short_campaign() {
        for t in TARGETS {
            assert!(!(t.seeds)().is_empty(), "{}: no seeds", t.name);
            let iterations = 2000;
            if let Err(c) = fuzz(t, 2022, iterations) {
                panic!("{}: {} on an input of {} bytes", c.target, c.message, c.input.len());
            }
        }
    }

    /// Every crash `cargo xtask fuzz` ever found stays fixed.
    #[test]
    fn regressions_stay_fixed() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions");
        let Ok(entries) = std::fs::read_dir(&dir) else { return };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(t) = name.split_once('-').and_then(|(t, _)| target(t)) else { continue };
            let input = std::fs::read(e.path()).expect("regression input");
            if let Err(c) = run_case(t, &input) {
                panic!("regression {name}: {}", c.message);
            }
        }
    }
}
