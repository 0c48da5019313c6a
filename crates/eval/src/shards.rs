//! Per-image results as JSON Lines, in shards that merge into the report of
//! one run.
//!
//! A shard file is one header line ([`ShardHeader`]: what was run, which
//! part of the images, the summary of that part) followed by one line per
//! image, each with its `index` among all the run's images. Shard `K/N`
//! holds the images `[(K−1)·T/N, K·T/N)` of `T` ([`shard_range`]), so N
//! processes (a job array) can each run one part. [`merge`] checks that the
//! shards belong to the same run and cover every image exactly once, and
//! returns the file a single run would have written: the same records in
//! the same order, the summary recomputed from them (times summed).
//!
//! ```
//! use anytime_eval::shards::{Shard, ShardHeader, merge, shard_range};
//! use serde_json::json;
//! assert_eq!(shard_range(10, 2, 3).unwrap(), 3..6);
//! let part = |k: usize, n: usize| {
//!     let r = shard_range(4, k, n).unwrap();
//!     Shard {
//!         header: ShardHeader::new("classify", json!({"model": "m"}), (k, n), 4, r.clone()),
//!         records: r.map(|i| json!({"index": i, "prediction": i % 2})).collect(),
//!     }
//! };
//! let merged = merge(vec![part(2, 2), part(1, 2)]).unwrap();
//! assert_eq!(merged.records.len(), 4);
//! assert_eq!(merged.header.shard, (1, 1));
//! assert!(merge(vec![part(1, 2)]).unwrap_err().to_string().contains("shard 2/2 is missing"));
//! ```

use crate::error::{Error, Result};
use crate::metrics::in_top5;
use crate::report::{ExitReport, SkippedImage};
use anytime_data::source::EvalSource;
use anytime_models::MultiExit;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::ops::Range;
use std::path::Path;

/// The images of shard `k` of `n` (1-based) among `total`: contiguous, the
/// shards' sizes differ by at most one.
pub fn shard_range(total: usize, k: usize, n: usize) -> Result<Range<usize>> {
    if n == 0 || k == 0 || k > n {
        return Err(Error::Invalid(format!("shard {k}/{n}: K must be between 1 and N")));
    }
    let at = |i: usize| ((total as u128 * i as u128) / n as u128) as usize;
    Ok(at(k - 1)..at(k))
}

/// Parses `K/N` (1 ≤ K ≤ N).
pub fn parse_shard(s: &str) -> Result<(usize, usize)> {
    let bad = || Error::Invalid(format!("--shard '{s}': expected K/N with 1 <= K <= N, e.g. 3/8"));
    let (k, n) = s.split_once('/').ok_or_else(bad)?;
    let (k, n) = (k.trim().parse::<usize>().map_err(|_| bad())?, n.trim().parse::<usize>().map_err(|_| bad())?);
    if k == 0 || k > n {
        return Err(bad());
    }
    Ok((k, n))
}

/// The first line of a shard file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardHeader {
    /// What wrote it: `eval` or `classify`.
    pub kind: String,
    /// Everything that must be the same in every shard of a run (model,
    /// weights, data, thresholds, exit costs …).
    pub run: Value,
    /// This shard, `(K, N)`.
    pub shard: (usize, usize),
    /// Images of the whole run.
    pub total: usize,
    /// The first image of this shard.
    pub start: usize,
    /// One past the last image of this shard.
    pub end: usize,
    /// Wall-clock seconds spent on this shard's images, per exit where the
    /// writer measures exits (cumulative: exit k includes the stages before
    /// it), else one value.
    #[serde(default)]
    pub seconds: Vec<f64>,
    /// Images of this shard that could not be read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedImage>,
    /// The summary of this shard's records ([`summarize`]).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub summary: Value,
}

impl ShardHeader {
    /// A header without times, skipped images or summary.
    pub fn new(kind: &str, run: Value, shard: (usize, usize), total: usize, range: Range<usize>) -> Self {
        Self {
            kind: kind.into(),
            run,
            shard,
            total,
            start: range.start,
            end: range.end,
            seconds: Vec::new(),
            skipped: Vec::new(),
            summary: Value::Null,
        }
    }
}

/// A shard file: its header and its records, each a JSON object with an
/// `index`.
#[derive(Debug, Clone, PartialEq)]
pub struct Shard {
    /// The first line.
    pub header: ShardHeader,
    /// One per image, in index order.
    pub records: Vec<Value>,
}

fn index_of(r: &Value) -> Option<usize> {
    r.get("index").and_then(Value::as_u64).and_then(|i| usize::try_from(i).ok())
}

impl Shard {
    /// The file's text: the header (with its summary computed) and one line
    /// per record.
    pub fn to_jsonl(&self) -> Result<String> {
        let mut header = self.header.clone();
        header.summary = summarize(&self.header, &self.records)?;
        let enc = |e: serde_json::Error| Error::Invalid(format!("cannot encode a shard: {e}"));
        let mut out = serde_json::to_string(&header).map_err(enc)?;
        out.push('\n');
        for r in &self.records {
            out.push_str(&serde_json::to_string(r).map_err(enc)?);
            out.push('\n');
        }
        Ok(out)
    }

    /// Writes the file atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        anytime_io::atomic_write(path, self.to_jsonl()?.as_bytes())
            .map_err(|e| Error::Io { path: path.to_path_buf(), msg: e.to_string() })
    }

    /// Reads a shard file, checking that its records lie in its range, in
    /// order, once each.
    pub fn load(path: &Path) -> Result<Self> {
        let io = |msg: String| Error::Io { path: path.to_path_buf(), msg };
        let text = std::fs::read_to_string(path).map_err(|e| io(format!("cannot read: {e}")))?;
        let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
        let (_, first) = lines.next().ok_or_else(|| io("empty: not a shard file".into()))?;
        let header: ShardHeader =
            serde_json::from_str(first).map_err(|e| io(format!("line 1 is not a shard header: {e}")))?;
        let mut records = Vec::new();
        let mut next = header.start;
        for (n, line) in lines {
            let r: Value = serde_json::from_str(line).map_err(|e| io(format!("line {}: {e}", n + 1)))?;
            let i = index_of(&r).ok_or_else(|| io(format!("line {}: a record without an `index`", n + 1)))?;
            if i != next || i >= header.end {
                return Err(io(format!(
                    "line {}: image {i}, expected {next} (this shard holds images {}..{})",
                    n + 1,
                    header.start,
                    header.end
                )));
            }
            next += 1;
            records.push(r);
        }
        if next != header.end {
            return Err(io(format!(
                "{} records for images {}..{}: the file is truncated",
                records.len(),
                header.start,
                header.end
            )));
        }
        Ok(Self { header, records })
    }
}

/// Merges the shards of one run (in any order) into the file one unsharded
/// run writes: shard `1/1` over every image, the records in index order,
/// times summed, skipped images listed, the summary recomputed.
pub fn merge(mut shards: Vec<Shard>) -> Result<Shard> {
    let Some(first) = shards.first() else { return Err(Error::Invalid("no shards to merge".into())) };
    let (kind, run, total, n) =
        (first.header.kind.clone(), first.header.run.clone(), first.header.total, first.header.shard.1);
    for s in &shards {
        let h = &s.header;
        if h.kind != kind || h.run != run || h.total != total || h.shard.1 != n {
            return Err(Error::Invalid(format!(
                "shard {}/{} is not of the same run as shard {}/{} (kind, model, weights, data, settings and image count must match)",
                h.shard.0, h.shard.1, first.header.shard.0, n
            )));
        }
        let want = shard_range(total, h.shard.0, n)?;
        if (h.start, h.end) != (want.start, want.end) {
            return Err(Error::Invalid(format!(
                "shard {}/{n} holds images {}..{}, not {}..{}",
                h.shard.0, h.start, h.end, want.start, want.end
            )));
        }
    }
    shards.sort_by_key(|s| s.header.shard.0);
    for k in 1..=n {
        match shards.iter().filter(|s| s.header.shard.0 == k).count() {
            0 => return Err(Error::Invalid(format!("shard {k}/{n} is missing"))),
            1 => {}
            c => return Err(Error::Invalid(format!("shard {k}/{n} is given {c} times"))),
        }
    }
    let mut header = ShardHeader::new(&kind, run, (1, 1), total, 0..total);
    let width = shards.iter().map(|s| s.header.seconds.len()).max().unwrap_or(0);
    header.seconds = vec![0.0; width];
    let mut records = Vec::with_capacity(total);
    for s in shards {
        for (a, b) in header.seconds.iter_mut().zip(&s.header.seconds) {
            *a += b;
        }
        header.skipped.extend(s.header.skipped);
        records.extend(s.records);
    }
    header.summary = summarize(&header, &records)?;
    Ok(Shard { header, records })
}

/// What a shard's header says about its records: for `eval`, the per-exit
/// report (top-1, top-5, MFLOPs from `run.exit_mflops`, ms per image from
/// `seconds`); for `classify`, the images per exit, the mean MFLOPs and
/// the mean milliseconds per image.
pub fn summarize(header: &ShardHeader, records: &[Value]) -> Result<Value> {
    let read: Vec<&Value> = records.iter().filter(|r| r.get("error").is_none()).collect();
    let n = read.len().max(1) as f64;
    match header.kind.as_str() {
        "eval" => {
            let mflops: Vec<f64> = header
                .run
                .get("exit_mflops")
                .and_then(|m| serde_json::from_value(m.clone()).ok())
                .ok_or_else(|| Error::Invalid("an eval shard without `exit_mflops`".into()))?;
            let mut exits = Vec::new();
            for (k, &mf) in mflops.iter().enumerate() {
                let (mut top1, mut top5, mut has5) = (0usize, 0usize, false);
                for r in &read {
                    let e = &r["exits"][k];
                    top1 += usize::from(e["prediction"] == r["label"]);
                    if let Some(t) = e.get("top5").and_then(Value::as_bool) {
                        has5 = true;
                        top5 += usize::from(t);
                    }
                }
                exits.push(ExitReport {
                    exit: k,
                    accuracy: top1 as f64 / n,
                    top5: has5.then(|| top5 as f64 / n),
                    mflops: mf,
                    ms_per_image: header.seconds.get(k).map_or(0.0, |s| 1e3 * s / n),
                });
            }
            Ok(serde_json::json!({ "images": read.len(), "exits": exits }))
        }
        "classify" => {
            let exits = header.run.get("exit_mflops").and_then(Value::as_array).map_or(0, Vec::len);
            let mut counts = vec![0usize; exits];
            let mut mflops = 0.0;
            for r in &read {
                if let Some(c) = r.get("exit").and_then(Value::as_u64).and_then(|e| counts.get_mut(e as usize)) {
                    *c += 1;
                }
                mflops += r.get("mflops").and_then(Value::as_f64).unwrap_or(0.0);
            }
            let ms: f64 = read.iter().filter_map(|r| r.get("ms").and_then(Value::as_f64)).sum();
            Ok(serde_json::json!({
                "images": read.len(),
                "exit_counts": counts,
                "mflops_per_image": mflops / n,
                "ms_per_image": ms / n,
            }))
        }
        other => Err(Error::Invalid(format!("unknown shard kind '{other}' (eval, classify)"))),
    }
}

/// One image's answer at every exit, as `anytime eval --per-image` records
/// it: `{"index", "image", "label", "exits": [{"prediction", "confidence",
/// "top5"}]}` (confidence: the largest softmax probability; `top5` for
/// models of more than five classes), or `{"index", "image", "error"}` for
/// an image that could not be read. `offset` is the index of the source's
/// first image among the run's.
pub fn per_image_pass(model: &dyn MultiExit, source: &dyn EvalSource, offset: usize) -> Result<(Vec<Value>, Vec<f64>)> {
    let mut seconds = vec![0.0; model.num_exits()];
    if let Some(b) = source.batches().next() {
        crate::exits::exit_logits(model, &b?.images)?;
    }
    let mut records = Vec::new();
    for b in source.batches() {
        let b = b?;
        let logits = crate::exits::timed_exit_logits(model, &b.images, &mut seconds)?;
        let rows: Vec<Vec<Vec<f32>>> = logits.iter().map(|l| l.to_vec2::<f32>()).collect::<candle_core::Result<_>>()?;
        let labels = b.labels.to_vec1::<u32>()?;
        for (j, (&i, &y)) in b.indices.iter().zip(&labels).enumerate() {
            let exits: Vec<Value> = rows
                .iter()
                .map(|r| {
                    let row = &r[j];
                    let p = anytime_models::exit::argmax(row);
                    let conf = anytime_calibrate::Confidence::MaxSoftmax.score(row);
                    let mut e = serde_json::json!({ "prediction": p, "confidence": conf });
                    if row.len() > 5 {
                        e["top5"] = Value::Bool(in_top5(row, y));
                    }
                    e
                })
                .collect();
            records.push(serde_json::json!({
                "index": offset + i,
                "image": source.image_name(i),
                "label": y,
                "exits": exits,
            }));
        }
    }
    // An image the source could not read gets a record saying why, so that
    // every index of the shard has its line.
    let reasons: std::collections::BTreeMap<String, String> =
        source.skipped().into_iter().map(|s| (s.path.display().to_string(), s.reason)).collect();
    let mut seen = vec![false; source.len()];
    for r in &records {
        if let Some(i) = index_of(r).and_then(|i| i.checked_sub(offset))
            && let Some(s) = seen.get_mut(i)
        {
            *s = true;
        }
    }
    for (i, _) in seen.iter().enumerate().filter(|(_, s)| !**s) {
        let image = source.image_name(i);
        let reason = reasons.get(&image).cloned().unwrap_or_else(|| "not read".into());
        records.push(serde_json::json!({ "index": offset + i, "image": image, "error": reason }));
    }
    records.sort_by_key(index_of);
    Ok((records, seconds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eval_shard(k: usize, n: usize, total: usize) -> Shard {
        let r = shard_range(total, k, n).unwrap();
        let mut header = ShardHeader::new("eval", json!({"exit_mflops": [1.0, 2.0]}), (k, n), total, r.clone());
        header.seconds = vec![0.001 * r.len() as f64, 0.002 * r.len() as f64];
        let records = r
            .map(|i| {
                json!({"index": i, "image": format!("#{i}"), "label": i % 3, "exits": [
                    {"prediction": 0, "confidence": 0.5, "top5": true},
                    {"prediction": i % 3, "confidence": 0.9, "top5": i % 2 == 0},
                ]})
            })
            .collect();
        Shard { header, records }
    }

    #[test]
    fn shards_partition_the_images() {
        for (total, n) in [(10, 3), (3, 5), (0, 2), (50_000, 7)] {
            let mut next = 0;
            for k in 1..=n {
                let r = shard_range(total, k, n).unwrap();
                assert_eq!(r.start, next);
                next = r.end;
            }
            assert_eq!(next, total);
        }
        assert!(shard_range(3, 0, 2).is_err() && shard_range(3, 3, 2).is_err());
        assert_eq!(parse_shard("2/8").unwrap(), (2, 8));
        for bad in ["0/3", "4/3", "3", "a/b", "1/0"] {
            assert!(parse_shard(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn merged_shards_equal_the_whole_run() {
        let whole = eval_shard(1, 1, 10);
        let merged = merge(vec![eval_shard(3, 3, 10), eval_shard(1, 3, 10), eval_shard(2, 3, 10)]).unwrap();
        assert_eq!(merged.records, whole.records);
        let (a, b) =
            (summarize(&merged.header, &merged.records).unwrap(), summarize(&whole.header, &whole.records).unwrap());
        assert_eq!(a, b);
        assert_eq!(a["exits"][1]["accuracy"], 1.0);
        assert_eq!(a["exits"][0]["accuracy"], 0.4);
        assert_eq!(a["exits"][1]["top5"], 0.5);
        // Through files.
        let dir = std::env::temp_dir().join(format!("anytime-shards-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("s.jsonl");
        merged.save(&p).unwrap();
        let back = Shard::load(&p).unwrap();
        assert_eq!(back.records, whole.records);
        assert_eq!(back.header.summary, a);
        // A truncated file, a foreign shard, a duplicate, a gap.
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, text.lines().take(5).collect::<Vec<_>>().join("\n")).unwrap();
        assert!(Shard::load(&p).unwrap_err().to_string().contains("truncated"));
        let mut other = eval_shard(2, 3, 10);
        other.header.run = json!({"exit_mflops": [1.0, 3.0]});
        assert!(
            merge(vec![eval_shard(1, 3, 10), other, eval_shard(3, 3, 10)])
                .unwrap_err()
                .to_string()
                .contains("same run")
        );
        let e = merge(vec![eval_shard(1, 3, 10), eval_shard(1, 3, 10), eval_shard(3, 3, 10)]).unwrap_err().to_string();
        assert!(e.contains("shard 1/3 is given 2 times"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
