//! Upper limits on configuration values, checked by every `validate` before
//! any tensor, plan or list is built, so a hostile or mistyped configuration
//! (a width near 2^40, 10^9 blocks) is a clear error instead of an
//! allocation failure, an overflow or a run that exhausts memory. The limits
//! are far above every published configuration (`docs/limits.md`).

use crate::error::ConfigError;

/// Blocks (MSDNet / RANet `nBlocks`), stages or exits.
pub const MAX_BLOCKS: usize = 256;
/// Layers per block (`step`, `base`, `block_step`, blocks per stage).
pub const MAX_STEP: usize = 256;
/// Layers of a whole network.
pub const MAX_LAYERS: usize = 4096;
/// Any channel count or growth rate.
pub const MAX_CHANNELS: usize = 16_384;
/// Per-scale width factors (`grFactor`, `bnFactor`, bottleneck factors).
pub const MAX_FACTOR: usize = 64;
/// Scales (MSDNet) or flows (RANet).
pub const MAX_SCALES: usize = 8;
/// Input channels.
pub const MAX_IN_CHANNELS: usize = 1024;
/// Classes.
pub const MAX_CLASSES: usize = 1 << 20;
/// An upper bound on the parameters a configuration may have (2^30 f32
/// values: 4 GiB).
pub const MAX_PARAMS: u64 = 1 << 30;

/// `value <= max`, or an error naming `name` and the limit.
pub(crate) fn cap(name: &str, value: usize, max: usize) -> Result<(), ConfigError> {
    if value > max {
        return Err(ConfigError::Invalid(format!("{name} is {value}; at most {max} is supported")));
    }
    Ok(())
}

/// Every value `<= max`.
pub(crate) fn cap_all(name: &str, values: &[usize], max: usize) -> Result<(), ConfigError> {
    match values.iter().find(|&&v| v > max) {
        Some(&v) => Err(ConfigError::Invalid(format!("{name} holds {v}; at most {max} is supported"))),
        None => Ok(()),
    }
}

/// An estimate of a network's parameters must stay under [`MAX_PARAMS`].
pub(crate) fn params_cap(estimate: u128) -> Result<(), ConfigError> {
    if estimate > MAX_PARAMS as u128 {
        return Err(ConfigError::Invalid(format!(
            "the network would hold about {estimate} parameters; at most {MAX_PARAMS} are supported"
        )));
    }
    Ok(())
}

/// A bound for densely connected networks (MSDNet, RANet, DenseNet-MC):
/// `layers` layers that read at most `widest` channels and add at most
/// `growth` (a 1x1 bottleneck and a 3x3 conv each), plus `transitions`
/// `widest`-to-`widest` 1x1 convs (and the stem and heads, bounded alike).
pub(crate) fn dense_params_bound(
    layers: usize,
    widest: usize,
    growth: usize,
    transitions: usize,
) -> Result<(), ConfigError> {
    let (l, w, g, t) = (layers as u128, widest as u128, growth as u128, transitions as u128);
    params_cap(18 * l * w * g + (t + 8) * w * w)
}

/// A bound on the parameters of `layers` 3x3 convolutions at most `widest`
/// channels wide must stay under [`MAX_PARAMS`].
pub(crate) fn params_bound(layers: usize, widest: usize) -> Result<(), ConfigError> {
    let bound = (widest as u128).pow(2) * 9 * layers as u128;
    if bound > MAX_PARAMS as u128 {
        return Err(ConfigError::Invalid(format!(
            "the network could hold up to {bound} parameters ({layers} layers up to {widest} channels wide); at most {MAX_PARAMS} are supported"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::registry::{ArchConfig, REGISTRY};
    use serde_json::json;

    /// Every registered configuration is within the limits; absurd sizes are
    /// refused by `validate`, quickly and without allocating.
    #[test]
    fn limits_refuse_absurd_configs_before_building() {
        for e in REGISTRY {
            (e.config)().validate().unwrap_or_else(|err| panic!("{}: {err}", e.name));
        }
        let t = std::time::Instant::now();
        for (arch, cfg, what) in [
            ("msdnet", json!({"cli_args": "--nBlocks 1000000000 --nChannels 16 --growthRate 6"}), "nBlocks"),
            ("msdnet", json!({"cli_args": "--nBlocks 5 --growthRate 1099511627776"}), "growthRate"),
            ("msdnet", json!({"cli_args": "--nBlocks 200 --step 200 --base 200"}), "layers"),
            ("ranet", json!({"cli_args": "--nBlocks 2 --nChannels 1099511627776"}), "nChannels"),
        ] {
            let e = ArchConfig::from_json(arch, &cfg).unwrap_err().to_string();
            assert!(e.contains(what), "{arch} {cfg}: {e}");
        }
        assert!(t.elapsed().as_secs_f64() < 1.0);
    }
}
