//! The training loop for any [`MultiExit`] model.
//!
//! [`Trainer`] builds the model from a seeded `VarMap`, trains it with the
//! multi-exit loss, evaluates every exit on the held-out split after each
//! epoch, and checkpoints atomically every epoch and every few minutes into a
//! run directory:
//!
//! - `checkpoint.safetensors`: model, optimiser and [`TrainState`] (resumable);
//! - `best.safetensors`: the weights with the best final-exit held-out accuracy;
//! - `metrics.jsonl`: one [`EpochMetrics`] per line;
//! - `curves.svg`: loss and per-exit accuracy curves;
//! - `swa.safetensors`: with weight averaging ([`TrainSpec::swa`]), the
//!   latest average with recalibrated batch-norm statistics.
//!
//! Each step is the spec's [`Objective`](crate::objective::Objective) (the
//! multi-exit loss by default); the spec's parameter groups
//! ([`ParamGroup`]) scale the learning rate and weight decay per group or
//! freeze a group, whose modules then run in eval mode.
//!
//! A run can start from trained weights ([`Trainer::init_from`]) instead of
//! the seeded initialisation: fine-tuning, or a later stage of a recipe
//! such as its weight-averaging stage.
//!
//! A run killed at any moment resumes exactly: the data order and
//! augmentation depend only on `(seed, epoch)`, the checkpoint records the
//! next batch and the state of the objective's random generator, and every
//! kernel is deterministic for a given thread count, so a resumed run ends
//! with the same weights, bit for bit, as an uninterrupted one.

use crate::checkpoint::{Checkpoint, PartialEpoch, TrainState};
use crate::error::{Error, Result};
use crate::init::seeded_var_builder;
use crate::loss::LossConfig;
use crate::metrics::{EpochMetrics, ExitAccuracy, evaluate, write_jsonl};
use crate::objective::{Objective, ObjectiveConfig, RngState, StepContext};
use crate::optim::{OptimConfig, Optimizer, ParamGroup};
use crate::schedule::Schedule;
use crate::swa::{SwaConfig, accumulate, is_running_stat, recalibrate_bn};
use anytime_blocks::Mode;
use anytime_models::MultiExit;
use candle_core::{Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A source of `(images [B, C, H, W] f32, labels [B] u32)` batches.
pub trait Batches {
    /// Batches per epoch.
    fn num_batches(&self) -> usize;
    /// The batches of `epoch` from batch `start` on; the order may depend on
    /// the epoch but must not depend on anything else.
    fn epoch(&self, epoch: usize, start: usize)
    -> Box<dyn Iterator<Item = candle_core::Result<(Tensor, Tensor)>> + '_>;
}

/// Everything that defines a training run besides the model and the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// Epochs to train.
    pub epochs: usize,
    /// Optimiser.
    pub optim: OptimConfig,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Multi-exit loss.
    #[serde(default)]
    pub loss: LossConfig,
    /// What a training step computes (the multi-exit loss by default).
    #[serde(default)]
    pub objective: ObjectiveConfig,
    /// Parameter groups: learning-rate factors, weight decays, frozen
    /// parts.
    #[serde(default)]
    pub groups: Vec<ParamGroup>,
    /// Clip the global gradient norm to this value.
    #[serde(default)]
    pub clip_grad_norm: Option<f64>,
    /// Seed of the initialisation, the data order and the augmentation.
    pub seed: u64,
    /// Minutes between mid-epoch checkpoints.
    #[serde(default = "default_minutes")]
    pub checkpoint_minutes: f64,
    /// Stochastic weight averaging: average the weights at the end of every
    /// epoch from a given one on, and evaluate (and keep, when best) the
    /// average with recalibrated batch-norm statistics.
    #[serde(default)]
    pub swa: Option<SwaConfig>,
}

fn default_minutes() -> f64 {
    5.0
}

impl TrainSpec {
    /// Checks the values against a model with `exits` exits.
    pub fn validate(&self, exits: usize) -> Result<()> {
        let e = |m: String| Error::Config(m);
        if self.epochs == 0 {
            return Err(e("epochs must be at least 1".into()));
        }
        self.optim.validate().map_err(e)?;
        self.schedule.validate().map_err(e)?;
        self.loss.validate(exits).map_err(e)?;
        self.objective.validate().map_err(e)?;
        if let Some(c) = self.clip_grad_norm
            && (c.is_nan() || c <= 0.0)
        {
            return Err(e(format!("gradient clipping needs a norm > 0, got {c}")));
        }
        if self.checkpoint_minutes.is_nan() || self.checkpoint_minutes <= 0.0 {
            return Err(e(format!("checkpoint interval must be > 0 minutes, got {}", self.checkpoint_minutes)));
        }
        if let Some(swa) = &self.swa {
            swa.validate(self.epochs).map_err(e)?;
        }
        Ok(())
    }
}

/// Progress of one training step.
#[derive(Debug, Clone)]
pub struct StepProgress {
    /// Epoch (0-based) and total.
    pub epoch: usize,
    /// Total epochs.
    pub epochs: usize,
    /// Batch just finished (0-based) and batches per epoch.
    pub batch: usize,
    /// Batches per epoch.
    pub batches: usize,
    /// This batch's loss.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Running training accuracy per exit this epoch.
    pub train_acc: Vec<f64>,
    /// Images per second this epoch.
    pub images_per_s: f64,
}

/// Receives progress events; the default methods ignore them. The CLI
/// renders them as progress bars.
pub trait Observer {
    /// After every optimiser step.
    fn on_step(&mut self, _p: &StepProgress) {}
    /// After every epoch's evaluation.
    fn on_epoch(&mut self, _m: &EpochMetrics) {}
    /// After a checkpoint was written.
    fn on_checkpoint(&mut self, _path: &Path) {}
}

/// An observer that ignores everything.
pub struct Silent;
impl Observer for Silent {}

/// How a call to [`Trainer::run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// Every epoch is done.
    Finished,
    /// The time limit was reached; a checkpoint was written.
    TimeLimit,
}

/// How [`Trainer::new`] treats what a run directory already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A new run: a directory that holds a run's files (checkpoint, best
    /// weights, metrics) is an error.
    New,
    /// Continue the run whose checkpoint the directory holds; no checkpoint
    /// is an error.
    Resume,
    /// Continue the run if there is a checkpoint, else start a new one (the
    /// directory must then hold no run's files).
    ResumeOrNew,
    /// A new run that replaces whatever run the directory holds.
    Overwrite,
}

/// A training run bound to a directory.
pub struct Trainer {
    spec: TrainSpec,
    model: Box<dyn MultiExit>,
    varmap: VarMap,
    opt: Optimizer,
    objective: Box<dyn Objective>,
    /// Training mode with the frozen groups' modules in eval mode.
    mode: Mode,
    /// The objective's generator.
    rng: rand_chacha::ChaCha8Rng,
    dir: PathBuf,
    state: TrainState,
    /// Running mean of the parameters (weight averaging), by key.
    swa_avg: BTreeMap<String, Tensor>,
}

/// The file names inside a run directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// Best weights.
pub const BEST_FILE: &str = "best.safetensors";
/// Metrics log.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// The latest weight average (weight averaging only).
pub const SWA_FILE: &str = "swa.safetensors";

/// Removes temporary files a killed write left in `dir`.
fn clean_temporaries(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::Io { path: dir.to_path_buf(), msg: e.to_string() })?;
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().contains(".tmp-") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

impl Trainer {
    /// Builds the model (seeded initialisation) and, as `start` says,
    /// restores the directory's checkpoint or starts anew; a new run never
    /// replaces another run's files unless `start` is [`Start::Overwrite`].
    pub fn new(
        spec: TrainSpec,
        build: impl FnOnce(VarBuilder) -> anytime_models::Result<Box<dyn MultiExit>>,
        dir: &Path,
        start: Start,
    ) -> Result<Self> {
        Self::new_on(spec, build, dir, start, &Device::Cpu)
    }

    /// [`Trainer::new`] with the model and its optimiser on `device` (the
    /// loaders' batches must be moved there, `Loader::on_device`). The seeded
    /// initialisation is the same on every device; checkpoints are written
    /// and read through the CPU.
    pub fn new_on(
        spec: TrainSpec,
        build: impl FnOnce(VarBuilder) -> anytime_models::Result<Box<dyn MultiExit>>,
        dir: &Path,
        start: Start,
        device: &Device,
    ) -> Result<Self> {
        let varmap = VarMap::new();
        let model = build(seeded_var_builder(&varmap, spec.seed, device))?;
        spec.validate(model.num_exits())?;
        std::fs::create_dir_all(dir).map_err(|e| Error::Io { path: dir.to_path_buf(), msg: e.to_string() })?;
        clean_temporaries(dir)?;
        let vars: BTreeMap<String, candle_core::Var> =
            varmap.data().lock().map_err(|e| Error::Config(e.to_string()))?.clone().into_iter().collect();
        ParamGroup::validate(&spec.groups, vars.keys().map(String::as_str)).map_err(Error::Config)?;
        let params: Vec<(String, candle_core::Var)> = vars.into_iter().filter(|(k, _)| !is_running_stat(k)).collect();
        let opt = Optimizer::with_groups(spec.optim.clone(), params, &spec.groups);
        let frozen = spec.groups.iter().filter(|g| g.frozen).map(|g| g.prefix.clone());
        let mode = Mode::train().with_frozen(frozen);
        let objective = spec.objective.build(&spec.loss);
        let rng = RngState::seeded(spec.seed).generator().map_err(Error::Config)?;
        let state = TrainState {
            epoch: 0,
            batch: 0,
            step: 0,
            seed: spec.seed,
            best: None,
            history: Vec::new(),
            seconds: 0.0,
            partial: PartialEpoch::default(),
            spec: Some(spec.clone()),
            init_from: None,
            rng: None,
        };
        let mut t = Self {
            spec,
            model,
            varmap,
            opt,
            objective,
            mode,
            rng,
            dir: dir.to_path_buf(),
            state,
            swa_avg: BTreeMap::new(),
        };
        let ckpt = t.dir.join(CHECKPOINT_FILE);
        let run_files: Vec<PathBuf> = [CHECKPOINT_FILE, BEST_FILE, METRICS_FILE, SWA_FILE]
            .iter()
            .map(|f| t.dir.join(f))
            .filter(|p| p.symlink_metadata().is_ok())
            .collect();
        match (start, ckpt.symlink_metadata().is_ok()) {
            (Start::Resume | Start::ResumeOrNew, true) => t.restore(&ckpt)?,
            (Start::Resume, false) => {
                return Err(Error::Checkpoint {
                    path: ckpt,
                    msg: "no checkpoint to resume; start a new run without --resume (or use --resume-or-start)".into(),
                });
            }
            (Start::Overwrite, _) => {
                for p in &run_files {
                    std::fs::remove_file(p).map_err(|e| Error::Io { path: p.clone(), msg: e.to_string() })?;
                }
            }
            (Start::New | Start::ResumeOrNew, _) if !run_files.is_empty() => {
                let names: Vec<String> = run_files.iter().map(|p| p.display().to_string()).collect();
                return Err(Error::Checkpoint {
                    path: t.dir.clone(),
                    msg: format!(
                        "holds another run's files ({}); resume it with --resume, or replace it with --force",
                        names.join(", ")
                    ),
                });
            }
            _ => {}
        }
        Ok(t)
    }

    fn restore(&mut self, path: &Path) -> Result<()> {
        let ck = Checkpoint::load(path)?;
        if ck.state.seed != self.spec.seed {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                msg: format!("was made with seed {}, this run uses {}", ck.state.seed, self.spec.seed),
            });
        }
        if let Some(spec) = ck.state.spec.as_ref().filter(|s| **s != self.spec) {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                msg: format!(
                    "was made with other training settings; resume it with the same recipe and options ({})",
                    spec_diff(spec, &self.spec)?
                ),
            });
        }
        let averaged = ck.state.averaged_epochs(ck.state.epoch);
        if averaged > 0 && ck.swa.is_empty() {
            return Err(Error::Checkpoint {
                path: path.to_path_buf(),
                msg: format!("records {averaged} averaged epochs but holds no weight average"),
            });
        }
        self.set_vars(&ck.model, true).map_err(|msg| Error::Checkpoint { path: path.to_path_buf(), msg })?;
        self.opt
            .load_state(ck.optim, ck.state.step)
            .map_err(|e| Error::Checkpoint { path: path.to_path_buf(), msg: e.to_string() })?;
        if let Some(rng) = &ck.state.rng {
            self.rng = rng.generator().map_err(|msg| Error::Checkpoint { path: path.to_path_buf(), msg })?;
        }
        self.state = ck.state;
        self.swa_avg = ck.swa;
        Ok(())
    }

    /// Writes `tensors` into the model's variables, checking names and
    /// shapes: all of them when `all`, else the parameters (running
    /// statistics keep their values). The error says what does not fit.
    fn set_vars(&self, tensors: &BTreeMap<String, Tensor>, all: bool) -> std::result::Result<(), String> {
        let data = self.varmap.data().lock().map_err(|e| e.to_string())?;
        let wanted = |k: &String| all || !is_running_stat(k);
        let mut missing: Vec<&String> = data.keys().filter(|k| wanted(k) && !tensors.contains_key(*k)).collect();
        missing.sort();
        let mut unknown: Vec<&String> = tensors.keys().filter(|k| !data.contains_key(*k)).collect();
        unknown.sort();
        if !missing.is_empty() || !unknown.is_empty() {
            return Err(format!(
                "does not fit this model ({} tensors, model has {}; {} missing{}; {} unknown{})",
                tensors.len(),
                data.len(),
                missing.len(),
                missing.first().map_or(String::new(), |k| format!(", e.g. `{k}`")),
                unknown.len(),
                unknown.first().map_or(String::new(), |k| format!(", e.g. `{k}`"))
            ));
        }
        for (k, v) in data.iter().filter(|(k, _)| wanted(k)) {
            let t = &tensors[k];
            if t.shape() != v.shape() {
                return Err(format!("{k} has shape {:?}, the model needs {:?}", t.shape(), v.shape()));
            }
        }
        for (k, v) in data.iter().filter(|(k, _)| wanted(k)) {
            let t = tensors[k].to_dtype(v.dtype()).and_then(|t| t.to_device(v.device())).map_err(|e| e.to_string())?;
            v.set(&t).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Starts the run from trained weights (every variable of the model,
    /// running statistics included, e.g. a shipped weight file or another
    /// run's `best.safetensors`) instead of the seeded initialisation; the
    /// optimiser state starts empty. Only before the first step: a resumed
    /// run already holds its weights.
    pub fn init_from(&mut self, path: &Path) -> Result<()> {
        if self.state.step > 0 {
            return Err(Error::Config(format!(
                "the run in {} has already started; initial weights apply to a new run only",
                self.dir.display()
            )));
        }
        let bad = |msg: String| Error::Io { path: path.to_path_buf(), msg };
        // anytime-io's errors name the file already.
        let file = anytime_io::load_tensors(path).map_err(|e| Error::Weights(e.to_string()))?;
        file.check_finite().map_err(|e| Error::Weights(e.to_string()))?;
        self.set_vars(&file.tensors, true).map_err(bad)?;
        self.state.init_from = Some(path.display().to_string());
        Ok(())
    }

    /// The model being trained.
    pub fn model(&self) -> &dyn MultiExit {
        self.model.as_ref()
    }

    /// Where the run stands.
    pub fn state(&self) -> &TrainState {
        &self.state
    }

    /// The model's variables by key (running statistics included).
    pub fn weights(&self) -> Result<BTreeMap<String, Tensor>> {
        let data = self.varmap.data().lock().map_err(|e| Error::Config(e.to_string()))?;
        Ok(data.iter().map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?))).collect::<candle_core::Result<_>>()?)
    }

    fn save_checkpoint(&self, obs: &mut dyn Observer) -> Result<()> {
        // A diverging run can overflow a weight or a batch-norm statistic while
        // its loss stays finite: such a state is never written over the last
        // good checkpoint.
        let weights = self.weights()?;
        for (k, w) in &weights {
            let bad = w.flatten_all()?.to_vec1::<f32>()?.iter().filter(|v| !v.is_finite()).count();
            if bad > 0 {
                return Err(Error::Config(format!(
                    "the training diverged: {k} holds {bad} NaN or infinite values at epoch {}, batch {}; the last checkpoint is kept; lower the learning rate",
                    self.state.epoch, self.state.batch
                )));
            }
        }
        let (optim, _) = self.opt.state();
        let state = TrainState { rng: Some(RngState::of(&self.rng)), ..self.state.clone() };
        let ck = Checkpoint { model: weights, optim, state, swa: self.swa_avg.clone() };
        let path = self.dir.join(CHECKPOINT_FILE);
        ck.save(&path)?;
        obs.on_checkpoint(&path);
        Ok(())
    }

    /// Trains until every epoch is done or `time_limit` has passed (then a
    /// checkpoint is written and the run can be resumed).
    pub fn run(
        &mut self,
        train: &dyn Batches,
        val: &dyn Batches,
        obs: &mut dyn Observer,
        time_limit: Option<Duration>,
    ) -> Result<RunEnd> {
        let started = Instant::now();
        let mut last_ckpt = Instant::now();
        let batches = train.num_batches();
        let epochs = self.spec.epochs;
        self.state.validate(epochs, batches).map_err(|msg| Error::Checkpoint {
            path: self.dir.join(CHECKPOINT_FILE),
            msg: format!("its training state does not fit the plan: {msg}"),
        })?;
        while self.state.epoch < epochs {
            let epoch = self.state.epoch;
            let epoch_start = Instant::now();
            let mut images = 0usize;
            let p = std::mem::take(&mut self.state.partial);
            let (mut loss_sum, mut seen_batches, mut logged_sums) = (p.loss_sum, p.batches, p.logged);
            let mut acc = ExitAccuracy { correct: p.correct, top5: Vec::new(), total: p.total };
            let lr0 = self.spec.schedule.lr_at(epoch as f64, epochs);
            let first = self.state.batch;
            for (i, batch) in train.epoch(epoch, first).enumerate() {
                let b = first + i;
                let (xs, ys) = batch?;
                let lr = self.spec.schedule.lr_at(epoch as f64 + b as f64 / batches.max(1) as f64, epochs);
                let out = self.objective.step(&mut StepContext {
                    model: self.model.as_ref(),
                    xs: &xs,
                    ys: &ys,
                    mode: &self.mode,
                    rng: &mut self.rng,
                })?;
                let loss = out.loss;
                let mut grads = loss.backward()?;
                if let Some(max) = self.spec.clip_grad_norm {
                    self.opt.clip_grad_norm(&mut grads, max)?;
                }
                self.opt.step(&grads, lr)?;
                let l = loss.to_scalar::<f32>()? as f64;
                if !l.is_finite() {
                    return Err(Error::Config(format!(
                        "the loss diverged ({l}) at epoch {epoch}, batch {b}; lower the learning rate"
                    )));
                }
                acc.update_top1(&out.logits.iter().map(|t| t.detach()).collect::<Vec<_>>(), &ys)?;
                for (name, v) in out.logged {
                    *logged_sums.entry(name).or_insert(0.0) += v;
                }
                loss_sum += l;
                seen_batches += 1;
                images += xs.dim(0)?;
                self.state.step += 1;
                self.state.batch = b + 1;
                obs.on_step(&StepProgress {
                    epoch,
                    epochs,
                    batch: b,
                    batches,
                    loss: l,
                    lr,
                    train_acc: acc.fractions(),
                    images_per_s: images as f64 / epoch_start.elapsed().as_secs_f64().max(1e-9),
                });
                let out_of_time = time_limit.is_some_and(|t| started.elapsed() >= t);
                if out_of_time || last_ckpt.elapsed().as_secs_f64() >= self.spec.checkpoint_minutes * 60.0 {
                    self.state.seconds += last_ckpt.elapsed().as_secs_f64();
                    self.state.partial = PartialEpoch {
                        loss_sum,
                        batches: seen_batches,
                        correct: acc.correct.clone(),
                        total: acc.total,
                        logged: logged_sums.clone(),
                    };
                    self.save_checkpoint(obs)?;
                    last_ckpt = Instant::now();
                    if out_of_time {
                        return Ok(RunEnd::TimeLimit);
                    }
                }
            }
            let val_acc = evaluate(self.model.as_ref(), val.epoch(0, 0))?.fractions();
            let final_acc = val_acc.last().copied().unwrap_or(0.0);
            let swa = match self.spec.swa.clone().filter(|s| epoch >= s.start_epoch) {
                Some(cfg) => Some(self.average(&cfg, epoch, train, val)?),
                None => None,
            };
            self.state.seconds += last_ckpt.elapsed().as_secs_f64();
            last_ckpt = Instant::now();
            let m = EpochMetrics {
                epoch,
                lr: lr0,
                train_loss: loss_sum / seen_batches.max(1) as f64,
                train_acc: acc.fractions(),
                val_acc,
                images_per_s: images as f64 / epoch_start.elapsed().as_secs_f64().max(1e-9),
                seconds: self.state.seconds,
                swa_val_acc: swa.as_ref().map(|(acc, _)| acc.clone()),
                train_logged: logged_sums.iter().map(|(k, v)| (k.clone(), v / seen_batches.max(1) as f64)).collect(),
            };
            self.state.history.push(m.clone());
            self.state.epoch += 1;
            self.state.batch = 0;
            // The sums of a mid-epoch checkpoint belong to the epoch just
            // finished, not to the next one.
            self.state.partial = PartialEpoch::default();
            let swa_final = swa.as_ref().and_then(|(acc, _)| acc.last().copied());
            let (acc, weights) = match swa {
                Some((_, w)) if swa_final.is_some_and(|a| a > final_acc) => (swa_final.unwrap_or(0.0), w),
                _ => (final_acc, self.weights()?),
            };
            if self.state.best.is_none_or(|(b, _)| acc > b) {
                self.state.best = Some((acc, epoch));
                write_weights(&self.dir.join(BEST_FILE), &weights)?;
            }
            write_jsonl(&self.dir.join(METRICS_FILE), &self.state.history)?;
            crate::plot::training_curves(&self.dir.join("curves.svg"), &self.state.history)?;
            self.save_checkpoint(obs)?;
            obs.on_epoch(&m);
        }
        Ok(RunEnd::Finished)
    }
}

impl Trainer {
    /// Adds this epoch's weights to the average, gives the average the
    /// batch-norm statistics of `cfg.bn_batches` training batches, evaluates
    /// it on `val` and writes it to [`SWA_FILE`]; the model's own variables
    /// are restored afterwards. Returns the held-out accuracy per exit and
    /// the averaged weights.
    fn average(
        &mut self,
        cfg: &SwaConfig,
        epoch: usize,
        train: &dyn Batches,
        val: &dyn Batches,
    ) -> Result<(Vec<f64>, BTreeMap<String, Tensor>)> {
        let current = self.weights()?;
        accumulate(&mut self.swa_avg, &current, self.state.averaged_epochs(epoch))?;
        self.set_vars(&self.swa_avg, false).map_err(Error::Config)?;
        let vars: BTreeMap<String, candle_core::Var> = self
            .varmap
            .data()
            .lock()
            .map_err(|e| Error::Config(e.to_string()))?
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        recalibrate_bn(self.model.as_ref(), &self.mode, &vars, train.epoch(epoch, 0), cfg.bn_batches)?;
        let acc = evaluate(self.model.as_ref(), val.epoch(0, 0))?.fractions();
        let averaged = self.weights()?;
        write_weights(&self.dir.join(SWA_FILE), &averaged)?;
        self.set_vars(&current, true).map_err(Error::Config)?;
        Ok((acc, averaged))
    }
}

/// The top-level settings where `run` and `now` differ, as
/// `name: <run's> in the run, <now's> now`.
fn spec_diff(run: &TrainSpec, now: &TrainSpec) -> Result<String> {
    let (a, b) = (serde_json::to_value(run)?, serde_json::to_value(now)?);
    let empty = serde_json::Map::new();
    let (a, b) = (a.as_object().unwrap_or(&empty), b.as_object().unwrap_or(&empty));
    let diffs: Vec<String> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k}: {v} in the run, {} now", b.get(k).unwrap_or(&serde_json::Value::Null)))
        .collect();
    Ok(diffs.join("; "))
}

/// Writes model weights as safetensors, atomically.
fn write_weights(path: &Path, weights: &BTreeMap<String, Tensor>) -> Result<()> {
    let bytes = safetensors::serialize(weights.iter(), None)
        .map_err(|e| Error::Io { path: path.to_path_buf(), msg: e.to_string() })?;
    anytime_io::atomic_write(path, &bytes).map_err(|e| Error::Io { path: path.to_path_buf(), msg: e.to_string() })
}

impl Batches for anytime_data::loader::Loader {
    fn num_batches(&self) -> usize {
        anytime_data::loader::Loader::num_batches(self)
    }

    fn epoch(
        &self,
        epoch: usize,
        start: usize,
    ) -> Box<dyn Iterator<Item = candle_core::Result<(Tensor, Tensor)>> + '_> {
        Box::new(
            anytime_data::loader::Loader::epoch(self, epoch, start)
                .map(|b| b.map_err(|e| candle_core::Error::Msg(e.to_string()))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::{FeatureHint, Reduction};
    use crate::schedule::ScheduleKind;
    use anytime_models::registry::{ArchConfig, msdnet_tiny};

    /// Seeded random images with fixed labels, `batches` batches of `n`.
    struct Synthetic {
        batches: usize,
        n: usize,
        seed: u64,
    }

    impl Batches for Synthetic {
        fn num_batches(&self) -> usize {
            self.batches
        }

        fn epoch(
            &self,
            epoch: usize,
            start: usize,
        ) -> Box<dyn Iterator<Item = candle_core::Result<(Tensor, Tensor)>> + '_> {
            Box::new((start..self.batches).map(move |b| {
                let init = candle_nn::Init::Randn { mean: 0.0, stdev: 1.0 };
                let shape = (self.n, 1, 28, 28).into();
                let xs = crate::init::seeded_tensor(self.seed, &format!("x.{epoch}.{b}"), &shape, init, &Device::Cpu)?;
                let ys: Vec<u32> = (0..self.n).map(|i| ((i * 7 + b * 3 + epoch) % 10) as u32).collect();
                Ok((xs, Tensor::new(ys, &Device::Cpu)?))
            }))
        }
    }

    fn build(vb: VarBuilder) -> anytime_models::Result<Box<dyn MultiExit>> {
        ArchConfig::new(msdnet_tiny()).build(vb)
    }

    fn spec(epochs: usize, seed: u64) -> TrainSpec {
        TrainSpec {
            epochs,
            optim: OptimConfig::msdnet_sgd(),
            schedule: Schedule { lr: 0.05, kind: ScheduleKind::Cosine, warmup_epochs: 0.0 },
            loss: LossConfig::default(),
            objective: ObjectiveConfig::MultiExitCe,
            groups: Vec::new(),
            clip_grad_norm: None,
            seed,
            checkpoint_minutes: 5.0,
            swa: None,
        }
    }

    /// A diverging run (a learning rate of 1e12) stops with an error naming
    /// the divergence; the last checkpoint before it is whole and finite, and
    /// resuming it fails the same way instead of training on garbage.
    #[test]
    fn a_diverging_loss_stops_the_run_with_the_checkpoint_intact() -> Result<()> {
        let root = std::env::temp_dir().join(format!("anytime-train-diverge-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("run");
        let wild = TrainSpec {
            schedule: Schedule { lr: 1e12, kind: ScheduleKind::Cosine, warmup_epochs: 0.0 },
            checkpoint_minutes: 1e-6,
            ..spec(3, 7)
        };
        let (train, val) = data();
        let mut t = Trainer::new(wild.clone(), build, &dir, Start::New)?;
        let e = t.run(&train, &val, &mut Silent, None).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("diverged"), "{e}");
        let ck = Checkpoint::load(&dir.join(CHECKPOINT_FILE))?;
        assert!(ck.state.step > 0, "a checkpoint was written before the divergence");
        for (k, w) in &ck.model {
            assert!(w.flatten_all()?.to_vec1::<f32>()?.iter().all(|v| v.is_finite()), "{k} is not finite");
        }
        let mut again = Trainer::new(wild, build, &dir, Start::Resume)?;
        let e = again.run(&train, &val, &mut Silent, None).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("diverged"), "{e}");
        Ok(())
    }

    /// A toy two-stage recipe: stage 1 adds a feature hint to the loss;
    /// stage 2 starts from stage 1's best weights with the first block
    /// frozen, the classifiers at half the learning rate and random exit
    /// weights.
    fn stages() -> (TrainSpec, TrainSpec) {
        let hint = FeatureHint { coef: 1e-3, reduction: Reduction::Mean };
        let one = TrainSpec { loss: LossConfig { feature_hint: Some(hint), ..LossConfig::default() }, ..spec(1, 5) };
        let two = TrainSpec {
            objective: ObjectiveConfig::RandomExitWeights,
            groups: vec![
                ParamGroup { frozen: true, ..ParamGroup::new("blocks.0") },
                ParamGroup { lr_mult: 0.5, ..ParamGroup::new("classifier") },
            ],
            checkpoint_minutes: 1e-6,
            ..spec(2, 6)
        };
        (one, two)
    }

    fn data() -> (Synthetic, Synthetic) {
        (Synthetic { batches: 3, n: 8, seed: 11 }, Synthetic { batches: 1, n: 8, seed: 12 })
    }

    fn bits(w: &BTreeMap<String, Tensor>) -> Result<BTreeMap<String, Vec<u32>>> {
        w.iter()
            .map(|(k, t)| Ok((k.clone(), t.flatten_all()?.to_vec1::<f32>()?.into_iter().map(f32::to_bits).collect())))
            .collect()
    }

    /// The toy recipe's second stage, started from `init`, in `dir`: run
    /// whole, or stopped after every step and resumed each time. Returns
    /// the final weights, the history and the number of runs.
    fn stage_two(
        init: &Path,
        dir: &Path,
        stop_every_step: bool,
    ) -> Result<(TrainState, BTreeMap<String, Tensor>, usize)> {
        let (train, val) = data();
        let limit = stop_every_step.then_some(Duration::ZERO);
        for runs in 1..100 {
            let mut t = Trainer::new(stages().1, build, dir, Start::ResumeOrNew)?;
            if t.state().step == 0 {
                t.init_from(init)?;
            }
            if t.run(&train, &val, &mut Silent, limit)? == RunEnd::Finished {
                return Ok((t.state().clone(), t.weights()?, runs));
            }
        }
        Err(Error::Config("the stage does not finish".into()))
    }

    #[test]
    fn two_stage_recipe_with_feature_hint_frozen_group_and_stochastic_objective() -> Result<()> {
        let root = std::env::temp_dir().join(format!("anytime-train-stages-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (train, val) = data();

        // Stage 1: the feature hint is part of the loss and logged.
        let (one, _) = stages();
        let mut t = Trainer::new(one, build, &root.join("one"), Start::New)?;
        assert_eq!(t.run(&train, &val, &mut Silent, None)?, RunEnd::Finished);
        let logged = &t.state().history[0].train_logged;
        let hint = logged.get("feature_hint").copied().unwrap_or(0.0);
        assert!(hint > 0.0 && hint.is_finite(), "{logged:?}");
        assert!(logged.get("ce").is_some_and(|ce| *ce > hint), "{logged:?}");
        let init = root.join("one").join(BEST_FILE);
        let start = bits(&anytime_io::load_tensors(&init).map_err(|e| Error::Config(e.to_string()))?.tensors)?;

        // Stage 2, uninterrupted: the frozen block (parameters and
        // batch-norm statistics) is unchanged, everything else trained.
        let (state, whole, _) = stage_two(&init, &root.join("whole"), false)?;
        let whole = bits(&whole)?;
        let frozen = |k: &str| anytime_blocks::mode::within(k, "blocks.0");
        assert!(whole.keys().any(|k| frozen(k) && k.ends_with("running_mean")));
        for (k, w) in &whole {
            if frozen(k) {
                assert_eq!(w, &start[k], "{k} of the frozen group changed");
            }
        }
        for part in ["blocks.1", "classifier"] {
            let mut params = whole.iter().filter(|(k, _)| anytime_blocks::mode::within(k, part) && !is_running_stat(k));
            assert!(params.all(|(k, w)| *w != start[k]), "a parameter under {part} did not train");
        }

        // Stopped after every step and resumed: the same weights and
        // metrics, bit for bit (the random exit weights continue where they
        // stopped).
        let (resumed_state, resumed, runs) = stage_two(&init, &root.join("resumed"), true)?;
        assert!(runs >= 6, "{runs} runs");
        assert_eq!(bits(&resumed)?, whole);
        assert_eq!(state.history.len(), 2);
        for (a, b) in state.history.iter().zip(&resumed_state.history) {
            assert_eq!((a.train_loss, &a.train_acc, &a.val_acc), (b.train_loss, &b.train_acc, &b.val_acc));
        }

        // The checkpoint holds the generator's advanced state.
        let ck = Checkpoint::load(&root.join("resumed").join(CHECKPOINT_FILE))?;
        assert!(ck.state.rng.as_ref().is_some_and(|r| r.word_pos != "0"));

        // A resume with other settings is refused, naming them.
        let mut other = stages().1;
        other.groups[1].lr_mult = 0.25;
        let e = Trainer::new(other, build, &root.join("resumed"), Start::Resume)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("other training settings") && e.contains("groups"), "{e}");
        let mut unknown = stages().1;
        unknown.groups.push(ParamGroup::new("nowhere"));
        let e = Trainer::new(unknown, build, &root.join("new"), Start::New)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("'nowhere' selects no variable"), "{e}");
        let _ = std::fs::remove_dir_all(&root);
        Ok(())
    }
}
