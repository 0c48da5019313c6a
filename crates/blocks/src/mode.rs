//! Train or eval mode, decided per module.
//!
//! A model's forward pass receives one [`Mode`]. Whether a given module (named
//! by its variable prefix, e.g. `blocks.0.1.layers.0`) runs in training mode
//! is [`Mode::trains`]: the model is in training mode and the module is not
//! inside a frozen prefix. A frozen module runs in eval mode: batch norm
//! normalises with its running statistics and does not update them, dropout
//! is inactive.
//!
//! ```
//! use anytime_blocks::Mode;
//! let m = Mode::train().with_frozen(["model_prime".to_string()]);
//! assert!(m.trains("model.blocks.0"));
//! assert!(!m.trains("model_prime.bn1"));
//! assert!(!m.trains("model_prime"));
//! assert!(m.trains("model_primes.bn1")); // a prefix ends at a dot
//! assert!(!Mode::eval().trains("model.blocks.0"));
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Train or eval mode of a forward pass, with frozen module prefixes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mode {
    train: bool,
    fold: bool,
    frozen: Arc<[String]>,
}

static FOLD_BATCH_NORM: AtomicBool = AtomicBool::new(true);

/// Whether [`Mode::inference`] folds batch norms into convolutions (the
/// default) or runs them as [`Mode::eval`] does (`false`: to measure the
/// fused path against the unfused one, e.g. `anytime eval --no-fold`).
pub fn set_fold_batch_norm(on: bool) {
    FOLD_BATCH_NORM.store(on, Ordering::Relaxed);
}

impl Mode {
    /// Every module in eval mode.
    pub fn eval() -> Self {
        Self { train: false, fold: false, frozen: Arc::from(Vec::new()) }
    }

    /// Eval mode for inference with fixed batch-norm statistics: each
    /// convolution followed by a batch norm runs as one fused convolution,
    /// the batch norm applied as a per-channel scale and shift and the ReLU
    /// after it as the values are stored. The scale and shift are computed
    /// on a pair's first inference pass and kept until the pair runs in
    /// training mode, so a caller that changes batch-norm parameters or
    /// statistics by other means (loading new ones into the same variables)
    /// must use [`Mode::eval`] (always unfused); new convolution weights are
    /// used as they are. Same results as [`Mode::eval`] up to float
    /// rounding.
    pub fn inference() -> Self {
        Self { fold: FOLD_BATCH_NORM.load(Ordering::Relaxed), ..Self::eval() }
    }

    /// Every module in training mode (until frozen).
    pub fn train() -> Self {
        Self { train: true, fold: false, frozen: Arc::from(Vec::new()) }
    }

    /// Whether convolution → batch norm pairs run fused ([`Mode::inference`]).
    pub fn folds_batch_norm(&self) -> bool {
        self.fold && !self.train
    }

    /// Training mode when `train`, else eval mode.
    pub fn from_train(train: bool) -> Self {
        if train { Self::train() } else { Self::eval() }
    }

    /// The same mode with the modules under `prefixes` frozen (eval mode).
    pub fn with_frozen(self, prefixes: impl IntoIterator<Item = String>) -> Self {
        let mut all: Vec<String> = self.frozen.iter().cloned().collect();
        all.extend(prefixes.into_iter().map(|p| p.trim_end_matches('.').to_string()));
        Self { train: self.train, fold: self.fold, frozen: Arc::from(all) }
    }

    /// Whether the pass as a whole is a training pass.
    pub fn is_train(&self) -> bool {
        self.train
    }

    /// The frozen prefixes.
    pub fn frozen(&self) -> &[String] {
        &self.frozen
    }

    /// Whether the module named `module` (its variable prefix) runs in
    /// training mode.
    pub fn trains(&self, module: &str) -> bool {
        self.train && !self.frozen.iter().any(|p| within(module, p))
    }
}

/// `name` equals `prefix` or lies under it (`prefix.` …); the empty prefix
/// holds everything.
pub fn within(name: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || name == prefix
        || (name.starts_with(prefix) && name.as_bytes().get(prefix.len()) == Some(&b'.'))
}
