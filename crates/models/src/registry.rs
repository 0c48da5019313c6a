//! Named model configurations: the shipped Fashion-MNIST models and the
//! reference papers' configurations.
//!
//! Each [`ModelEntry`] names an architecture configuration, the data it
//! expects and, for shipped models, the published weight file ([`Pretrained`]).
//! [`create_model`] builds one from a `VarBuilder`; the CLI's `anytime
//! models` lists them.

use crate::densenet_mc::DenseNetMcConfig;
use crate::error::{ConfigError, ModelError, Result};
use crate::exit::MultiExit;
use crate::gfnet::GfnetConfig;
use crate::msdnet::{MsdNetConfig, Prune, StepMode};
use crate::ranet::RaNetConfig;
use crate::resnet_mc::ResNetMcConfig;
use crate::scan::ScanConfig;
use anytime_blocks::stem::StemKind;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

/// What an architecture's model file provides, on its configuration type:
/// its name, a line of help, how to read a configuration and how to build the
/// model. Adding an architecture is implementing this in the model's file and
/// adding one line to [`ARCHS`].
pub trait Architecture: Serialize + Clone + PartialEq + std::fmt::Debug + Send + Sync + 'static {
    /// Architecture name, as in weight-file metadata and `--arch`.
    const NAME: &'static str;
    /// One line for the CLI's `--arch` help.
    const HELP: &'static str;
    /// Reads and validates a configuration (the project's own JSON form, or
    /// whatever reference forms the architecture accepts).
    fn from_json(v: &Value) -> std::result::Result<Self, ConfigError>;
    /// Checks every value.
    fn validate(&self) -> std::result::Result<(), ConfigError>;
    /// Builds the model, reading parameters through `vb`.
    fn build(&self, vb: VarBuilder) -> Result<Box<dyn MultiExit>>;
    /// The input size to count the model at when none is given.
    fn default_size(&self) -> (usize, usize) {
        (32, 32)
    }
    /// The dataset the configuration is for, when it says (`imagenet`,
    /// `cifar10`, `cifar100`): it chooses the evaluation preprocessing of a
    /// checkpoint loaded without a registry entry.
    fn dataset(&self) -> Option<&'static str> {
        None
    }
}

/// An entry of the architecture table.
#[derive(Debug, Clone, Copy)]
pub struct Arch {
    /// Architecture name.
    pub name: &'static str,
    /// One line of help.
    pub help: &'static str,
    /// Reads a configuration of this architecture.
    pub from_json: fn(&Value) -> std::result::Result<ArchConfig, ConfigError>,
}

impl Arch {
    /// The table entry of the architecture whose configuration type is `C`.
    pub const fn of<C: Architecture>() -> Self {
        Self { name: C::NAME, help: C::HELP, from_json: read_config::<C> }
    }
}

fn read_config<C: Architecture>(v: &Value) -> std::result::Result<ArchConfig, ConfigError> {
    Ok(ArchConfig::new(C::from_json(v)?))
}

/// Every architecture `anytime` builds: one line each.
pub static ARCHS: &[Arch] = &[
    Arch::of::<MsdNetConfig>(),
    Arch::of::<RaNetConfig>(),
    Arch::of::<ResNetMcConfig>(),
    Arch::of::<DenseNetMcConfig>(),
    Arch::of::<ScanConfig>(),
    Arch::of::<GfnetConfig>(),
];

/// The table entry named `name`, or an error listing the known ones.
pub fn arch(name: &str) -> std::result::Result<&'static Arch, ConfigError> {
    ARCHS.iter().find(|a| a.name == name).ok_or_else(|| {
        ConfigError::Invalid(format!(
            "unknown architecture '{name}' (known: {})",
            ARCHS.iter().map(|a| a.name).collect::<Vec<_>>().join(", ")
        ))
    })
}

/// The CLI's `--arch` help, from the table.
pub fn arch_help() -> String {
    let list: Vec<String> = ARCHS.iter().map(|a| format!("{} ({})", a.name, a.help)).collect();
    format!("Architecture of a configuration file: {}", list.join("; "))
}

/// The object-safe face of an [`Architecture`] configuration.
trait DynConfig: std::fmt::Debug + Send + Sync {
    fn name(&self) -> &'static str;
    fn to_json(&self) -> std::result::Result<Value, serde_json::Error>;
    fn validate(&self) -> std::result::Result<(), ConfigError>;
    fn build(&self, vb: VarBuilder) -> Result<Box<dyn MultiExit>>;
    fn default_size(&self) -> (usize, usize);
    fn dataset(&self) -> Option<&'static str>;
    fn as_any(&self) -> &dyn std::any::Any;
}

impl<C: Architecture> DynConfig for C {
    fn name(&self) -> &'static str {
        C::NAME
    }

    fn to_json(&self) -> std::result::Result<Value, serde_json::Error> {
        serde_json::to_value(self)
    }

    fn validate(&self) -> std::result::Result<(), ConfigError> {
        Architecture::validate(self)
    }

    fn build(&self, vb: VarBuilder) -> Result<Box<dyn MultiExit>> {
        Architecture::build(self, vb)
    }

    fn default_size(&self) -> (usize, usize) {
        Architecture::default_size(self)
    }

    fn dataset(&self) -> Option<&'static str> {
        Architecture::dataset(self)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// An architecture and its configuration, as stored in weight-file metadata
/// (`{"arch": "msdnet", "config": {...}}`).
#[derive(Debug, Clone)]
pub struct ArchConfig(Arc<dyn DynConfig>);

impl ArchConfig {
    /// Wraps a configuration.
    pub fn new<C: Architecture>(cfg: C) -> Self {
        Self(Arc::new(cfg))
    }

    /// Reads a configuration file's JSON for architecture `arch`: the
    /// project's own form, or (MSDNet, RANet) a reference-style object with
    /// `args` or `cli_args`, or a weight-file style `{"arch", "config"}`
    /// object.
    pub fn from_json(arch: &str, v: &Value) -> std::result::Result<Self, ConfigError> {
        if let (Some(tag), Some(config)) = (v.get("arch"), v.get("config")) {
            let Some(tag) = tag.as_str() else {
                return Err(ConfigError::Invalid(format!("`arch` must be a string, got {tag}")));
            };
            if tag != arch {
                return Err(ConfigError::Invalid(format!("the configuration is for {tag}, not {arch}")));
            }
            return (self::arch(tag)?.from_json)(config);
        }
        (self::arch(arch)?.from_json)(v)
    }

    /// The configuration as type `C`, when it is one.
    pub fn downcast_ref<C: Architecture>(&self) -> Option<&C> {
        self.0.as_any().downcast_ref::<C>()
    }

    /// The architecture's name.
    pub fn arch(&self) -> &'static str {
        self.0.name()
    }

    /// Checks every value.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        self.0.validate()
    }

    /// Builds the model, reading parameters through `vb`.
    pub fn build(&self, vb: VarBuilder) -> Result<Box<dyn MultiExit>> {
        self.0.build(vb)
    }

    /// The input size to count the model at when none is given.
    pub fn default_size(&self) -> (usize, usize) {
        self.0.default_size()
    }

    /// The dataset the configuration is for, when it says
    /// ([`Architecture::dataset`]).
    pub fn dataset(&self) -> Option<&'static str> {
        self.0.dataset()
    }
}

impl PartialEq for ArchConfig {
    fn eq(&self, other: &Self) -> bool {
        self.arch() == other.arch() && self.0.to_json().ok() == other.0.to_json().ok()
    }
}

impl Serialize for ArchConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let config = self.0.to_json().map_err(serde::ser::Error::custom)?;
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("arch", self.arch())?;
        m.serialize_entry("config", &config)?;
        m.end()
    }
}

impl<'de> Deserialize<'de> for ArchConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        let arch = v.get("arch").and_then(Value::as_str).ok_or_else(|| serde::de::Error::missing_field("arch"))?;
        Self::from_json(arch, &v).map_err(serde::de::Error::custom)
    }
}

/// The data a registered model expects.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DataSpec {
    /// Dataset name (`fashion-mnist`, `cifar10`, `cifar100`, `imagenet`).
    pub dataset: &'static str,
    /// Input channels, height and width, as the model takes them.
    pub input: (usize, usize, usize),
    /// Zero padding, in pixels on each side, that brings the dataset's
    /// images to `input` (2 for SCAN's 32x32 on Fashion-MNIST's 28x28).
    pub pad: usize,
    /// Per-channel normalisation mean.
    pub mean: &'static [f32],
    /// Per-channel normalisation standard deviation.
    pub std: &'static [f32],
    /// Cluttered canvases made from the (padded) images, or `None` (GFNet's
    /// cluttered Fashion-MNIST).
    pub clutter: Option<Clutter>,
}

/// How a cluttered benchmark is made from a dataset (see
/// `anytime_data::cluttered`): `canvas`-pixel canvases with `fragments`
/// fragments of `fragment` pixels; the test and held-out canvases are fixed
/// by their seeds, training canvases are fresh every epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Clutter {
    /// Canvas side.
    pub canvas: usize,
    /// Fragments per canvas.
    pub fragments: usize,
    /// Fragment side.
    pub fragment: usize,
    /// Seed of the test canvases.
    pub test_seed: u64,
    /// Seed of the held-out canvases.
    pub holdout_seed: u64,
}

/// A registered model.
#[derive(Debug, Clone)]
pub struct ModelEntry {
    /// Registry name, e.g. `msdnet-fmnist`.
    pub name: &'static str,
    /// One line of description.
    pub description: &'static str,
    /// Its configuration.
    pub config: fn() -> ArchConfig,
    /// Its data.
    pub data: DataSpec,
    /// The published weights, for shipped models.
    pub weights: Option<Pretrained>,
}

/// Where a shipped model's weights are published.
///
/// The files are the ones in the repository's `weights/` folder; each is also
/// published in its own Hugging Face model repository, from which `anytime`
/// downloads it (checking the digest) when it is not found locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pretrained {
    /// File name, e.g. `msdnet-fmnist.safetensors` (under `weights/` and in the hub repository).
    pub file: &'static str,
    /// Hugging Face model repository holding the file, e.g. `anytime-rs/msdnet-fmnist`.
    pub hub_repo: &'static str,
    /// SHA-256 of the published file, 64 lowercase hex digits.
    pub sha256: &'static str,
}

const FMNIST: DataSpec =
    DataSpec { dataset: "fashion-mnist", input: (1, 28, 28), pad: 0, mean: &[0.2860], std: &[0.3530], clutter: None };
/// Cluttered Fashion-MNIST: 96x96 canvases, six 8x8 fragments (GFNet's
/// benchmark). Normalised with Fashion-MNIST's statistics, as the
/// training pipeline (the canvases' own are 0.040 and 0.166, mostly
/// background).
const FMNIST_CLUTTERED96: DataSpec = DataSpec {
    input: (1, 96, 96),
    clutter: Some(Clutter { canvas: 96, fragments: 6, fragment: 8, test_seed: 96_001, holdout_seed: 96_002 }),
    ..FMNIST
};
/// Fashion-MNIST zero-padded to 32x32 (SCAN's geometry).
const FMNIST_PAD32: DataSpec = DataSpec { input: (1, 32, 32), pad: 2, ..FMNIST };
const CIFAR10: DataSpec = DataSpec {
    dataset: "cifar10",
    input: (3, 32, 32),
    pad: 0,
    mean: &[0.4914, 0.4824, 0.4467],
    std: &[0.2471, 0.2435, 0.2616],
    clutter: None,
};
const CIFAR100: DataSpec = DataSpec {
    dataset: "cifar100",
    input: (3, 32, 32),
    pad: 0,
    mean: &[0.5071, 0.4867, 0.4408],
    std: &[0.2675, 0.2565, 0.2761],
    clutter: None,
};
const IMAGENET: DataSpec = DataSpec {
    dataset: "imagenet",
    input: (3, 224, 224),
    pad: 0,
    mean: &[0.485, 0.456, 0.406],
    std: &[0.229, 0.224, 0.225],
    clutter: None,
};

/// MSDNet for Fashion-MNIST: 3 scales (28/14/7), 5 exits, 30 MFLOPs.
pub fn msdnet_fmnist() -> MsdNetConfig {
    MsdNetConfig {
        stem: StemKind::Cifar,
        num_classes: 10,
        in_channels: 1,
        n_blocks: 5,
        n_channels: 8,
        base: 2,
        step: 2,
        stepmode: StepMode::Even,
        growth_rate: 6,
        gr_factor: vec![1, 2, 4],
        bn_factor: vec![1, 2, 4],
        prune: Prune::Max,
        bottleneck: true,
        reduction: 0.5,
    }
}

/// ResNet-MC for Fashion-MNIST, sized to MSDNet's compute.
pub fn resnet_mc_fmnist() -> ResNetMcConfig {
    ResNetMcConfig {
        in_channels: 1,
        num_classes: 10,
        stem_channels: 16,
        widths: vec![16, 32, 64],
        blocks: vec![2, 2, 2],
        exits: vec![1, 2, 3, 4, 5, 6],
        head_channels: 48,
    }
}

/// DenseNet-MC for Fashion-MNIST, sized to MSDNet's compute.
pub fn densenet_mc_fmnist() -> DenseNetMcConfig {
    DenseNetMcConfig {
        in_channels: 1,
        num_classes: 10,
        stem_channels: 16,
        growth_rate: 12,
        blocks: vec![3, 4, 4],
        bottleneck_factor: 4,
        compression: 0.5,
        exits: vec![1, 3, 5, 7, 9, 11],
        head_channels: 48,
    }
}

/// RANet for Fashion-MNIST, sized to MSDNet's compute: the README's CIFAR-10
/// layout (3 flows at 7/14/28, lg step mode, 6 exits) on 1-channel 28×28.
pub fn ranet_fmnist() -> RaNetConfig {
    RaNetConfig { in_channels: 1, n_channels: 12, growth_rate: 4, ..RaNetConfig::cifar10_readme() }
}

/// SCAN for Fashion-MNIST: the ResNet-18 layout at width 16, 1 channel,
/// 32x32 (the images zero-padded by 2): about 12.9 / 23.5 / 33.8 / 42.2 M
/// MACs per exit.
pub fn scan_resnet18_fmnist() -> ScanConfig {
    ScanConfig { in_channels: 1, width: 16, ..ScanConfig::resnet18(10) }
}

/// GFNet for cluttered Fashion-MNIST: MobileNetV3-Large x0.5 glance and
/// focus encoders, 1 channel, 96x96 canvases, 48-pixel glance and patches,
/// T = 4 (about 4.5 M multiply-accumulates per step).
pub fn gfnet_mnv3_cluttered_fmnist() -> GfnetConfig {
    GfnetConfig {
        model_arch: "mobilenetv3_large_100".into(),
        channel_multiplier: 0.5,
        num_classes: 10,
        image_size: 96,
        patch_size: 48,
        t: 4,
        feature_num: 1280,
        policy_hidden_dim: 256,
        fc_hidden_dim: None,
        in_channels: 1,
    }
}

/// GFNet's comparison: the same MobileNetV3-Large x0.5 on the whole 96x96
/// canvas, one step (a GFNet whose glance is the full image: T = 1, patch
/// = image).
pub fn mnv3_full_cluttered_fmnist() -> GfnetConfig {
    GfnetConfig { patch_size: 96, t: 1, ..gfnet_mnv3_cluttered_fmnist() }
}

/// A tiny MSDNet (3 scales, 3 exits) for smoke tests and CI.
pub fn msdnet_tiny() -> MsdNetConfig {
    MsdNetConfig { n_blocks: 3, n_channels: 4, base: 1, step: 1, growth_rate: 2, ..msdnet_fmnist() }
}

/// Every registered model.
pub static REGISTRY: &[ModelEntry] = &[
    ModelEntry {
        name: "msdnet-fmnist",
        description: "MSDNet, 3 scales, 5 exits, trained on Fashion-MNIST",
        config: || ArchConfig::new(msdnet_fmnist()),
        data: FMNIST,
        weights: Some(Pretrained {
            file: "msdnet-fmnist.safetensors",
            hub_repo: "anytime-rs/msdnet-fmnist",
            sha256: "cb80dd74804702c19152d70d4472730db17df913d7419ffffe9656ac5c55cfa9",
        }),
    },
    ModelEntry {
        name: "resnet-mc-fmnist",
        description: "ResNet-MC baseline, 6 exits, trained on Fashion-MNIST",
        config: || ArchConfig::new(resnet_mc_fmnist()),
        data: FMNIST,
        weights: Some(Pretrained {
            file: "resnet-mc-fmnist.safetensors",
            hub_repo: "anytime-rs/resnet-mc-fmnist",
            sha256: "12a6459e1fedf50180e48756d0940c51d1f1da8aab802d0e42e5c4e00e89b892",
        }),
    },
    ModelEntry {
        name: "densenet-mc-fmnist",
        description: "DenseNet-MC baseline, 6 exits, trained on Fashion-MNIST",
        config: || ArchConfig::new(densenet_mc_fmnist()),
        data: FMNIST,
        weights: Some(Pretrained {
            file: "densenet-mc-fmnist.safetensors",
            hub_repo: "anytime-rs/densenet-mc-fmnist",
            sha256: "db51787385eda2e5f377726bf4c565544e494fbd4cef7598c9b3e52c0809ddb3",
        }),
    },
    ModelEntry {
        name: "ranet-fmnist",
        description: "RANet, 3 flows (7/14/28), 6 exits, trained on Fashion-MNIST",
        config: || ArchConfig::new(ranet_fmnist()),
        data: FMNIST,
        weights: Some(Pretrained {
            file: "ranet-fmnist.safetensors",
            hub_repo: "anytime-rs/ranet-fmnist",
            sha256: "768628920bd3a15b66b4a844f72e47b7105625b4711fc0281347dab33d2b6b4c",
        }),
    },
    ModelEntry {
        name: "scan-resnet18-fmnist",
        description: "SCAN, ResNet-18 layout at width 16, 4 exits, Fashion-MNIST padded to 32x32",
        config: || ArchConfig::new(scan_resnet18_fmnist()),
        data: FMNIST_PAD32,
        weights: Some(Pretrained {
            file: "scan-resnet18-fmnist.safetensors",
            hub_repo: "anytime-rs/scan-resnet18-fmnist",
            sha256: "b115f1376b348ff6ad6cdc1bc22810dcb9c910ccd791806c02e22d026ee1ebfa",
        }),
    },
    ModelEntry {
        name: "gfnet-mnv3-cluttered-fmnist",
        description: "GFNet, MobileNetV3-Large x0.5 encoders, 48-pixel glance and patches, 4 steps, cluttered Fashion-MNIST 96x96",
        config: || ArchConfig::new(gfnet_mnv3_cluttered_fmnist()),
        data: FMNIST_CLUTTERED96,
        weights: Some(Pretrained {
            file: "gfnet-mnv3-cluttered-fmnist.safetensors",
            hub_repo: "anytime-rs/gfnet-mnv3-cluttered-fmnist",
            sha256: "4e6817b876f03b976ba6fee7012642c24f0ade343d0c78d32afca9fb1b6be209",
        }),
    },
    ModelEntry {
        name: "mnv3-full-cluttered-fmnist",
        description: "MobileNetV3-Large x0.5 on the whole 96x96 canvas (GFNet's full-image comparison), cluttered Fashion-MNIST",
        config: || ArchConfig::new(mnv3_full_cluttered_fmnist()),
        data: FMNIST_CLUTTERED96,
        weights: None,
    },
    ModelEntry {
        name: "scan-ablation-full",
        description: "SCAN ablation (short schedule): attention and self-distillation, as scan-resnet18-fmnist",
        config: || ArchConfig::new(scan_resnet18_fmnist()),
        data: FMNIST_PAD32,
        weights: None,
    },
    ModelEntry {
        name: "scan-ablation-no-attention",
        description: "SCAN ablation (short schedule): self-distillation, shallow exits without attention",
        config: || ArchConfig::new(ScanConfig { attention: false, ..scan_resnet18_fmnist() }),
        data: FMNIST_PAD32,
        weights: None,
    },
    ModelEntry {
        name: "scan-ablation-no-distill",
        description: "SCAN ablation (short schedule): attention, plain per-exit cross-entropy",
        config: || ArchConfig::new(scan_resnet18_fmnist()),
        data: FMNIST_PAD32,
        weights: None,
    },
    ModelEntry {
        name: "scan-ablation-neither",
        description: "SCAN ablation (short schedule): no attention, plain per-exit cross-entropy",
        config: || ArchConfig::new(ScanConfig { attention: false, ..scan_resnet18_fmnist() }),
        data: FMNIST_PAD32,
        weights: None,
    },
    ModelEntry {
        name: "msdnet-tiny",
        description: "tiny MSDNet (3 exits) for smoke tests, trains in seconds on the bundled sample",
        config: || ArchConfig::new(msdnet_tiny()),
        data: FMNIST,
        weights: None,
    },
    ModelEntry {
        name: "msdnet-cifar100-anytime",
        description: "MSDNet paper/README: CIFAR-100 anytime model (7 blocks, even, step 2, base 4)",
        config: || ArchConfig::new(MsdNetConfig::cifar100_anytime()),
        data: CIFAR100,
        weights: None,
    },
    ModelEntry {
        name: "msdnet-cifar100-budgeted",
        description: "MSDNet paper/README: CIFAR-100 budgeted model (5 blocks, lin_grow, step 1, base 1)",
        config: || ArchConfig::new(MsdNetConfig::cifar100_budgeted()),
        data: CIFAR100,
        weights: None,
    },
    ModelEntry {
        name: "ranet-cifar10",
        description: "RANet README: CIFAR-10 (lg, step 2, scale-list 1-2-3, grFactor 4-2-1)",
        config: || ArchConfig::new(RaNetConfig::cifar10_readme()),
        data: CIFAR10,
        weights: None,
    },
    ModelEntry {
        name: "ranet-imagenet",
        description: "RANet README: ImageNet (even, step 8, scale-list 1-2-3-4, grFactor 4-2-2-1)",
        config: || ArchConfig::new(RaNetConfig::imagenet_readme()),
        data: IMAGENET,
        weights: None,
    },
    ModelEntry {
        name: "scan-resnet18-cifar100",
        description: "SCAN paper/code: ResNet-18 with attention and ScalaNet exits on CIFAR-100 (width 64)",
        config: || ArchConfig::new(ScanConfig::resnet18(100)),
        data: CIFAR100,
        weights: None,
    },
    ModelEntry {
        name: "msdnet-imagenet-step4",
        description: "MSDNet paper/README: ImageNet model (5 blocks, step 4, 4 scales)",
        config: || ArchConfig::new(MsdNetConfig::imagenet_step4()),
        data: IMAGENET,
        weights: None,
    },
];

/// The entry named `name`, or an error listing the known names.
pub fn lookup(name: &str) -> Result<&'static ModelEntry> {
    REGISTRY.iter().find(|e| e.name == name).ok_or_else(|| {
        ModelError::Unknown(format!(
            "unknown model '{name}' (known: {})",
            REGISTRY.iter().map(|e| e.name).collect::<Vec<_>>().join(", ")
        ))
    })
}

/// Builds the model `cfg` with weights from `path` (safetensors or a PyTorch
/// `.pth` / `.pth.tar` checkpoint), checking strictly that the file holds
/// exactly the model's parameters with the right shapes.
pub fn load_model(cfg: &ArchConfig, path: &std::path::Path) -> Result<Box<dyn MultiExit>> {
    load_model_on(cfg, path, &candle_core::Device::Cpu)
}

/// [`load_model`] with the parameters on `device` (the file is read on the
/// CPU, checked, then each tensor moved).
pub fn load_model_on(
    cfg: &ArchConfig,
    path: &std::path::Path,
    device: &candle_core::Device,
) -> Result<Box<dyn MultiExit>> {
    cfg.validate()?;
    let file = anytime_io::load_tensors(path)?;
    let model = anytime_io::build_checked(file, candle_core::DType::F32, device, |vb| {
        cfg.build(vb).map_err(|e| candle_core::Error::Msg(e.to_string()))
    })?;
    Ok(model)
}

/// Builds the registered model `name` with parameters from `vb`.
pub fn create_model(name: &str, vb: VarBuilder) -> Result<Box<dyn MultiExit>> {
    (lookup(name)?.config)().build(vb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};

    /// Every registered model builds with zero weights and gives one
    /// `[B, classes]` output per exit, without NaNs, at its input size.
    #[test]
    fn registry_sweep() {
        for e in REGISTRY {
            let m = create_model(e.name, VarBuilder::zeros(DType::F32, &Device::Cpu)).expect(e.name);
            let (c, h, w) = e.data.input;
            let costs = m.exit_costs(h, w).expect(e.name);
            assert_eq!(costs.len(), m.num_exits(), "{}", e.name);
            if h * w <= 32 * 32 {
                let xs = Tensor::zeros((2, c, h, w), DType::F32, &Device::Cpu).expect("input");
                let out = m.forward_exits(&xs, &anytime_blocks::Mode::eval()).expect(e.name);
                assert_eq!(out.len(), m.num_exits());
                for o in out {
                    assert_eq!(o.logits.dims(), &[2, m.num_classes()]);
                    assert_eq!(o.feature.dims()[0], 2);
                    assert!(o.logits.to_vec2::<f32>().expect("values").iter().flatten().all(|v| v.is_finite()));
                }
            }
        }
        assert!(lookup("nope").unwrap_err().to_string().contains("msdnet-fmnist"));
    }

    /// Every registered configuration goes through the weight-file form and
    /// back, its architecture is in the table, and the help lists the table.
    #[test]
    fn the_arch_table_drives_configs() {
        for e in REGISTRY {
            let c = (e.config)();
            let v = serde_json::to_value(&c).expect("json");
            assert_eq!(v["arch"], c.arch(), "{}", e.name);
            let back: ArchConfig = serde_json::from_value(v.clone()).expect(e.name);
            assert_eq!(back, c, "{}", e.name);
            let own = ArchConfig::from_json(c.arch(), &v["config"]).expect(e.name);
            assert_eq!(own, c, "{}", e.name);
            assert!(arch(c.arch()).is_ok());
        }
        let help = arch_help();
        assert!(ARCHS.iter().all(|a| help.contains(a.name)), "{help}");
        assert!(serde_json::from_value::<ArchConfig>(serde_json::json!({"arch": "vgg", "config": {}})).is_err());
        let m = (lookup("msdnet-fmnist").expect("entry").config)();
        assert_eq!(m.downcast_ref::<MsdNetConfig>(), Some(&msdnet_fmnist()));
        assert!(m.downcast_ref::<RaNetConfig>().is_none());
    }

    #[test]
    fn arch_config_round_trips() {
        let c = ArchConfig::new(msdnet_fmnist());
        let v = serde_json::to_value(&c).expect("json");
        assert_eq!(ArchConfig::from_json("msdnet", &v).expect("read"), c);
        assert!(ArchConfig::from_json("resnet_mc", &v).is_err());
        assert!(
            ArchConfig::from_json("vgg", &serde_json::json!({}))
                .unwrap_err()
                .to_string()
                .contains("unknown architecture")
        );
    }
}

#[cfg(test)]
mod golden {
    use super::*;
    use crate::testutil;
    use anytime_flops::Mode;
    use candle_core::{DType, Device};

    /// (fixture, architecture) of every reference fixture with weights.
    const FIXTURES: &[(&str, &str)] = &[
        ("msdnet_cifar100_lingrow", "msdnet"),
        ("msdnet_imagenet_tiny", "msdnet"),
        ("msdnet_prune_min", "msdnet"),
        ("msdnet_nobottleneck_r0", "msdnet"),
        ("ranet_cifar10_lg", "ranet"),
        ("ranet_imagenet_tiny", "ranet"),
        ("ranet_repeated_scale", "ranet"),
    ];

    /// Logits at every input size a fixture has, and FLOPs / params at every
    /// size its reference counter measured.
    #[test]
    fn every_fixture_matches_the_reference() {
        for &(name, arch) in FIXTURES {
            let cfg = ArchConfig::from_json(arch, &testutil::json(name, "config.json")).expect(name);
            let model = load_model(&cfg, &testutil::fixture(name).join("state_dict.safetensors")).expect(name);
            let extra = testutil::json(name, "config.json")["extra_io_files"].as_object().cloned().unwrap_or_default();
            for file in std::iter::once("io.safetensors".to_string()).chain(extra.keys().cloned()) {
                let (input, expected) = testutil::io(name, &file);
                // Layer by layer, then with the batch norms folded into the
                // convolutions (the inference path).
                for mode in [anytime_blocks::Mode::eval(), anytime_blocks::Mode::inference()] {
                    let got = model.forward_exits(&input, &mode).expect(name);
                    assert_eq!(got.len(), expected.len(), "{name}");
                    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
                        let what = format!("{name} {file} exit {i} (fold {})", mode.folds_batch_norm());
                        testutil::assert_close(&what, &g.logits, e);
                    }
                }
            }
            let flops = testutil::json(name, "flops.json");
            for (size, entry) in flops["by_input_size"].as_object().expect("sizes") {
                let (h, w) = size.split_once('x').expect("HxW");
                let (h, w): (usize, usize) = (h.parse().expect("h"), w.parse().expect("w"));
                let costs = model.exit_costs(h, w).expect(name);
                let (f, p) = testutil::flops_entry(entry);
                assert_eq!(costs.params(), p, "{name} params at {size}");
                if h == w {
                    assert_eq!(costs.flops(Mode::Reference), f, "{name} flops at {size}");
                } else {
                    // The reference sizes pooling windows from the height only;
                    // we count the real width. The only pooling before the
                    // heads' (1x1) is the ImageNet stem's 3x3/2 max-pool.
                    let stem_c = first_width(&cfg);
                    let (ch, cw) = ((h + 6 - 7) / 2 + 1, (w + 6 - 7) / 2 + 1);
                    let (ph, pw) = ((ch + 2 - 3) / 2 + 1, (cw + 2 - 3) / 2 + 1);
                    let delta = (stem_c * 9 * ph * pw) as i64 - (stem_c * 9 * ph * ph) as i64;
                    for (ours, theirs) in costs.flops(Mode::Reference).iter().zip(&f) {
                        assert_eq!(*ours as i64 - *theirs as i64, delta, "{name} flops at {size}");
                    }
                }
            }
        }
    }

    /// Channels of the stem's output.
    fn first_width(cfg: &ArchConfig) -> usize {
        if let Some(c) = cfg.downcast_ref::<MsdNetConfig>() {
            c.n_channels * c.gr_factor[0]
        } else if let Some(c) = cfg.downcast_ref::<RaNetConfig>() {
            c.n_channels * c.gr_factor[c.gr_factor.len() - 1]
        } else {
            0
        }
    }

    /// The full-size README and training-script configurations, from their
    /// command lines, at every measured size.
    #[test]
    fn full_size_configurations_match_the_reference_counter() {
        let all = testutil::json("", "fullsize_flops.json");
        for (name, v) in all.as_object().expect("object") {
            let arch = v["architecture"].as_str().expect("arch");
            let cfg = ArchConfig::from_json(arch, &serde_json::json!({ "cli_args": v["cli_args"] })).expect(name);
            let model = cfg.build(VarBuilder::zeros(DType::F32, &Device::Cpu)).expect(name);
            for (size, entry) in v["by_input_size"].as_object().expect("sizes") {
                let (h, w) = size.split_once('x').expect("HxW");
                let costs = model.exit_costs(h.parse().expect("h"), w.parse().expect("w")).expect(name);
                let (f, p) = testutil::flops_entry(entry);
                assert_eq!(costs.flops(Mode::Reference), f, "{name} flops at {size}");
                assert_eq!(costs.params(), p, "{name} params at {size}");
            }
        }
    }
}
