//! Training recipes: for each trainable registry model, the data, the
//! augmentation and the hyper-parameters that produced its shipped weights.

use crate::error::{Error, Result};
use crate::loss::LossConfig;
use crate::optim::OptimConfig;
use crate::schedule::{Schedule, ScheduleKind};
use crate::swa::SwaConfig;
use crate::trainer::TrainSpec;
use anytime_data::loader::Augment;

/// How to train one registry model.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// The registry model it trains.
    pub model: &'static str,
    /// Epochs, optimiser, schedule, loss, seed.
    pub spec: TrainSpec,
    /// Samples per batch.
    pub batch_size: usize,
    /// Training augmentation.
    pub augment: Augment,
    /// Images held out of the training set for validation and calibration.
    pub holdout: usize,
    /// Seed of the held-out split (kept apart from the training seed so the
    /// split never changes).
    pub split_seed: u64,
    /// A second stage that starts from the first stage's best weights
    /// (`anytime train --stage swa --init runs/<model>/best.safetensors`):
    /// stochastic weight averaging over a cyclic schedule.
    pub swa_stage: Option<TrainSpec>,
}

impl Recipe {
    /// The settings of `stage`, or an error when the recipe has no such stage.
    pub fn stage(&self, stage: Stage) -> Result<&TrainSpec> {
        match stage {
            Stage::Main => Ok(&self.spec),
            Stage::Swa => self
                .swa_stage
                .as_ref()
                .ok_or_else(|| Error::Config(format!("the recipe of '{}' has no weight-averaging stage", self.model))),
        }
    }
}

/// A stage of a recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Training from the seeded initialisation.
    Main,
    /// Stochastic weight averaging from the main stage's best weights.
    Swa,
}

impl Stage {
    /// The default run directory of this stage of `model`, relative to the
    /// repository root: `runs/<model>`, `runs/<model>/swa`.
    pub fn run_dir(self, model: &str) -> std::path::PathBuf {
        let main = std::path::Path::new("runs").join(model);
        match self {
            Stage::Main => main,
            Stage::Swa => main.join("swa"),
        }
    }
}

/// SGD with Nesterov momentum, cosine decay from 0.1 after one warm-up epoch.
fn fmnist_spec(epochs: usize) -> TrainSpec {
    TrainSpec {
        epochs,
        optim: OptimConfig::msdnet_sgd(),
        schedule: Schedule { lr: 0.1, kind: ScheduleKind::Cosine, warmup_epochs: 1.0 },
        loss: LossConfig::default(),
        clip_grad_norm: None,
        seed: 1,
        checkpoint_minutes: 5.0,
        swa: None,
    }
}

/// Epochs of the Fashion-MNIST baselines and RANet, sized so that one run of
/// a ~30-MFLOP model fits about two hours on the project's 2-core machines
/// (measured for msdnet-fmnist: 6.3 min per epoch with AVX-512, 12.2 min on
/// an AVX2-only EPYC). Everything else in the recipes is shared.
const FMNIST_EPOCHS: usize = 10;

/// Epochs of `msdnet-fmnist`: its 10-epoch run stopped at 93.07 % test
/// accuracy at the final exit, still rising (held-out 93.4 % in the last
/// epoch, training accuracy under augmentation 89 %), below the 94.5 % the
/// project asks of it. Three times the schedule (about 3.7 hours of
/// undisturbed training on the 2-core machines, run across sessions with
/// `--resume`) reached 94.37 % (held-out 94.58 %), still short; its
/// weight-averaging stage ([`swa_spec`], 12 epochs from lr 0.03) then gave
/// 94.53 % (held-out 94.62 %, the average of 10 epochs).
const MSDNET_FMNIST_EPOCHS: usize = 30;

/// The weight-averaging stage: from the main stage's weights, `epochs`
/// one-epoch cosine cycles from `lr` to 0 (another data order), the weights
/// at every cycle's end averaged, batch-norm statistics recomputed on
/// `bn_batches` training batches.
fn swa_spec(epochs: usize, lr: f64, bn_batches: usize) -> TrainSpec {
    TrainSpec {
        schedule: Schedule { lr, kind: ScheduleKind::CosineCycles { cycle_epochs: 1.0 }, warmup_epochs: 0.0 },
        seed: 2,
        swa: Some(SwaConfig { start_epoch: 0, bn_batches }),
        ..fmnist_spec(epochs)
    }
}

const FMNIST_AUG: Augment = Augment { pad_crop: Some(2), hflip: true, random_resized_crop: None };

/// The recipe for `model`, or an error listing the trainable models.
pub fn recipe(model: &str) -> Result<Recipe> {
    let fmnist = |model, epochs| Recipe {
        model,
        spec: fmnist_spec(epochs),
        batch_size: 64,
        augment: FMNIST_AUG,
        holdout: 5000,
        split_seed: 2024,
        swa_stage: None,
    };
    Ok(match model {
        "msdnet-fmnist" => {
            Recipe { swa_stage: Some(swa_spec(12, 0.03, 200)), ..fmnist("msdnet-fmnist", MSDNET_FMNIST_EPOCHS) }
        }
        "resnet-mc-fmnist" => fmnist("resnet-mc-fmnist", FMNIST_EPOCHS),
        "densenet-mc-fmnist" => fmnist("densenet-mc-fmnist", FMNIST_EPOCHS),
        "ranet-fmnist" => fmnist("ranet-fmnist", FMNIST_EPOCHS),
        "msdnet-tiny" => Recipe {
            spec: TrainSpec { checkpoint_minutes: 0.002, ..fmnist_spec(2) },
            swa_stage: Some(TrainSpec { checkpoint_minutes: 0.002, ..swa_spec(2, 0.03, 2) }),
            batch_size: 50,
            holdout: 200,
            ..fmnist("msdnet-tiny", 2)
        },
        other => {
            return Err(Error::Config(format!(
                "no training recipe for '{other}' (trainable: msdnet-fmnist, resnet-mc-fmnist, densenet-mc-fmnist, ranet-fmnist, msdnet-tiny)"
            )));
        }
    })
}
