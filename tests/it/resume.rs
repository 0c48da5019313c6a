//! Training survives SIGKILL: a run killed at random moments and resumed each
//! time ends with the same weights, bit for bit, as an uninterrupted run, with
//! every checkpoint loadable and no temporary file left behind; so does a
//! later recipe stage with a frozen group and a stochastic objective.

use crate::util::{anytime, metrics_without_timings, ok, root, s, temp_dir};
use candle_core::Device;
use std::time::{Duration, Instant};

fn train_args(dir: &std::path::Path) -> Vec<String> {
    let data = root().join("data/fashion-mnist-sample");
    ["train", "--model", "msdnet-tiny", "--data-dir", s(&data), "--run-dir", s(dir), "--quiet", "--resume-or-start"]
        .iter()
        .map(|a| a.to_string())
        .collect()
}

fn final_weights(dir: &std::path::Path) -> Vec<(String, Vec<f32>)> {
    let t = candle_core::safetensors::load(dir.join("checkpoint.safetensors"), &Device::Cpu).expect("checkpoint loads");
    let mut v: Vec<(String, Vec<f32>)> = t
        .into_iter()
        .filter(|(k, _)| k.starts_with("model."))
        .map(|(k, t)| (k, t.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("f32")))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Runs `args` and returns how long the run took (the uninterrupted
/// reference, whose duration sets the moments of the kills).
fn timed_ok(args: &[String]) -> Duration {
    let start = Instant::now();
    ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    start.elapsed()
}

/// Runs `args` (a resumable run in `dir`) and kills it with SIGKILL at a
/// fixed pseudo-random schedule of moments between 10 % and 40 % of
/// `whole`, the uninterrupted run's duration (so the schedule follows the
/// machine's and the kernels' speed, and no attempt gets far enough for the
/// next to finish unkilled: at least two kills), resuming each time, until a
/// run finishes; checks that every checkpoint left is whole. Returns the number
/// of kills.
fn kill_until_finished(args: &[String], dir: &std::path::Path, whole: Duration) -> usize {
    // The schedule is fixed so that the test is reproducible.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        assert!(Instant::now() < deadline, "resumed training did not finish");
        let mut child = anytime().args(args).spawn().expect("spawn");
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let wait = whole.mul_f64(0.1 + 0.3 * (state % 1000) as f64 / 1000.0).max(Duration::from_millis(50));
        let start = Instant::now();
        let finished = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                assert!(status.success(), "a resumed run failed");
                break true;
            }
            if start.elapsed() >= wait {
                break false;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if finished {
            return kills;
        }
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        kills += 1;
        // Whatever the moment of the kill, the last checkpoint is whole.
        if dir.join("checkpoint.safetensors").exists() {
            final_weights(dir);
        }
    }
}

fn assert_same_bits(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)], kills: usize) {
    assert_eq!(a.len(), b.len());
    for ((ka, va), (kb, vb)) in a.iter().zip(b) {
        assert_eq!(ka, kb);
        assert!(va.iter().zip(vb).all(|(x, y)| x.to_bits() == y.to_bits()), "{ka} differs after {kills} kills");
    }
}

/// Every recorded metric but the timings is identical between an
/// uninterrupted run and a killed-and-resumed one.
fn assert_same_metrics(a: &std::path::Path, b: &std::path::Path) {
    let (x, y) = (metrics_without_timings(a), metrics_without_timings(b));
    assert!(!x.is_empty());
    assert_eq!(x, y, "metrics differ between the uninterrupted and the resumed run");
}

#[test]
fn r06_kill_and_resume_gives_the_same_weights() {
    let reference = temp_dir("resume-ref");
    let whole = timed_ok(&train_args(&reference));

    let killed = temp_dir("resume-killed");
    let args = train_args(&killed);
    let kills = kill_until_finished(&args, &killed, whole);
    assert!(kills >= 2, "the run finished before it could be killed twice ({kills} kills)");
    for entry in std::fs::read_dir(&killed).expect("run dir") {
        let name = entry.expect("entry").file_name().to_string_lossy().into_owned();
        assert!(!name.contains(".tmp-"), "temporary file left: {name}");
    }
    assert_same_bits(&final_weights(&reference), &final_weights(&killed), kills);
    assert_same_metrics(&reference, &killed);
    // A corrupt checkpoint on --resume is named and left in place.
    let bytes = std::fs::read(killed.join("checkpoint.safetensors")).expect("checkpoint");
    std::fs::write(killed.join("checkpoint.safetensors"), &bytes[..bytes.len() / 3]).expect("corrupt");
    let out = anytime().args(&args).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("checkpoint.safetensors"), "{err}");
    assert_eq!(std::fs::read(killed.join("checkpoint.safetensors")).expect("kept").len(), bytes.len() / 3);
}

/// The tiny recipe's first stage trains with a feature hint; its `tune`
/// stage, a later stage with a frozen group and a
/// stochastic objective (random exit weights drawn from a generator saved in
/// every checkpoint), killed during its epochs and resumed, ends with the
/// same weights as an uninterrupted run; the frozen block's parameters and
/// batch-norm statistics are those it started from.
#[test]
fn r21_later_stage_with_frozen_group_and_stochastic_objective_survives_sigkill() {
    let main = temp_dir("stage-main");
    let data = root().join("data/fashion-mnist-sample");
    ok(&["train", "--model", "msdnet-tiny", "--data-dir", s(&data), "--run-dir", s(&main), "--quiet"]);
    // The first stage's loss has a feature hint, logged per epoch.
    let metrics = std::fs::read_to_string(main.join("metrics.jsonl")).expect("metrics");
    for line in metrics.lines() {
        let m: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        let hint = m["train_logged"]["feature_hint"].as_f64().expect("the feature hint is logged");
        assert!(hint > 0.0 && hint < m["train_loss"].as_f64().expect("loss"), "{m}");
    }
    let init = main.join("best.safetensors");
    let tune_args = |dir: &std::path::Path| -> Vec<String> {
        let mut a = train_args(dir);
        a.extend(["--stage", "tune", "--init", s(&init)].iter().map(|a| a.to_string()));
        a
    };
    let reference = temp_dir("stage-ref");
    let whole = timed_ok(&tune_args(&reference));
    let killed = temp_dir("stage-killed");
    let kills = kill_until_finished(&tune_args(&killed), &killed, whole);
    assert!(kills >= 2, "the stage finished before it could be killed twice ({kills} kills)");
    let (a, b) = (final_weights(&reference), final_weights(&killed));
    assert_same_bits(&a, &b, kills);

    let start = candle_core::safetensors::load(&init, &Device::Cpu).expect("initial weights");
    let bits = |t: &candle_core::Tensor| -> Vec<u32> {
        t.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("f32").into_iter().map(f32::to_bits).collect()
    };
    let mut frozen = 0;
    for (k, v) in &a {
        let name = k.strip_prefix("model.").expect("a model tensor");
        let v: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
        if name.starts_with("blocks.0.") {
            frozen += 1;
            assert_eq!(v, bits(&start[name]), "{name} of the frozen group changed");
        } else if name.starts_with("blocks.1.") && name.ends_with(".weight") {
            assert_ne!(v, bits(&start[name]), "{name} did not train");
        }
    }
    let stats = a.iter().any(|(k, _)| k.starts_with("model.blocks.0.") && k.ends_with("running_var"));
    assert!(frozen > 0 && stats, "the frozen block holds batch-norm statistics ({frozen} tensors)");

    // Other settings on resume are refused, naming them.
    let mut other = tune_args(&killed);
    other.extend(["--epochs".to_string(), "1".to_string()]);
    let e = crate::util::fails(&other.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(e.contains("other training settings") && e.contains("epochs: 2 in the run, 1 now"), "{e}");
}
