//! Optimisers: SGD with momentum, Nesterov and (coupled) weight decay with
//! PyTorch's exact update rule, and AdamW. candle-nn's `SGD` has none of these.
//!
//! Both keep their state (momentum buffers, moments, step count) as named
//! tensors so a checkpoint can save and restore it exactly. SGD updates an
//! f32 parameter on the CPU in place, in one pass over the weights, the
//! gradient and the momentum buffer, with the bits of the tensor form (a
//! SCAN ResNet-18 training step took 0.87–0.94 of the time of nine tensor
//! passes, docs/log/2026-12-03-allocator-and-backward-memory.md).
//!
//! [`ParamGroup`]s select parameters by name prefix and give them their own
//! learning-rate multiplier and weight decay, or freeze them: a frozen
//! parameter is not optimised and has no optimiser state.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Optimiser settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OptimConfig {
    /// `torch.optim.SGD(momentum, nesterov, weight_decay)`, dampening 0.
    Sgd {
        /// Momentum factor (0 disables momentum).
        momentum: f64,
        /// Nesterov momentum.
        nesterov: bool,
        /// L2 penalty added to the gradient.
        weight_decay: f64,
    },
    /// `torch.optim.AdamW`.
    AdamW {
        /// First-moment decay.
        beta1: f64,
        /// Second-moment decay.
        beta2: f64,
        /// Denominator epsilon.
        eps: f64,
        /// Decoupled weight decay.
        weight_decay: f64,
    },
}

impl OptimConfig {
    /// MSDNet's training setting: momentum 0.9, Nesterov, weight decay 1e-4.
    pub fn msdnet_sgd() -> Self {
        Self::Sgd { momentum: 0.9, nesterov: true, weight_decay: 1e-4 }
    }

    /// Checks the values.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let in01 = |v: f64| (0.0..1.0).contains(&v);
        match *self {
            Self::Sgd { momentum, nesterov, weight_decay } => {
                if !(0.0..1.0).contains(&momentum) {
                    return Err(format!("momentum must be in [0, 1), got {momentum}"));
                }
                if nesterov && momentum == 0.0 {
                    return Err("Nesterov momentum needs a momentum > 0".into());
                }
                if !(weight_decay >= 0.0 && weight_decay.is_finite()) {
                    return Err(format!("weight decay must be >= 0, got {weight_decay}"));
                }
            }
            Self::AdamW { beta1, beta2, eps, weight_decay } => {
                if !in01(beta1) || !in01(beta2) {
                    return Err(format!("betas must be in [0, 1), got {beta1}, {beta2}"));
                }
                if eps.is_nan() || eps <= 0.0 || !(weight_decay.is_finite() && weight_decay >= 0.0) {
                    return Err(format!("eps must be > 0 and weight decay >= 0, got {eps}, {weight_decay}"));
                }
            }
        }
        Ok(())
    }
}

/// Parameters selected by name prefix, with their own settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamGroup {
    /// The variables named `prefix` or `prefix.…` (the empty prefix selects
    /// everything). A variable in several groups belongs to the one with the
    /// longest prefix.
    pub prefix: String,
    /// Factor on the scheduled learning rate.
    #[serde(default = "one")]
    pub lr_mult: f64,
    /// Weight decay instead of the optimiser's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    /// Not optimised; its modules run in eval mode (batch-norm statistics
    /// are not updated).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub frozen: bool,
}

fn one() -> f64 {
    1.0
}

impl ParamGroup {
    /// A group of the variables under `prefix` with the optimiser's settings.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into(), lr_mult: 1.0, weight_decay: None, frozen: false }
    }

    /// The group of `name`: the one with the longest prefix that holds it.
    pub fn of<'a>(groups: &'a [ParamGroup], name: &str) -> Option<&'a ParamGroup> {
        groups
            .iter()
            .filter(|g| anytime_blocks::mode::within(name, g.prefix.trim_end_matches('.')))
            .max_by_key(|g| g.prefix.trim_end_matches('.').len())
    }

    /// Checks the groups against the model's variable names: valid values,
    /// no prefix twice, every prefix selecting at least one variable.
    pub fn validate<'a>(
        groups: &[ParamGroup],
        names: impl IntoIterator<Item = &'a str> + Clone,
    ) -> std::result::Result<(), String> {
        for (i, g) in groups.iter().enumerate() {
            let p = g.prefix.trim_end_matches('.');
            if !(g.lr_mult >= 0.0 && g.lr_mult.is_finite()) {
                return Err(format!(
                    "group '{p}': learning-rate multiplier must be finite and >= 0, got {}",
                    g.lr_mult
                ));
            }
            if let Some(wd) = g.weight_decay.filter(|wd| !(*wd >= 0.0 && wd.is_finite())) {
                return Err(format!("group '{p}': weight decay must be finite and >= 0, got {wd}"));
            }
            if groups[..i].iter().any(|o| o.prefix.trim_end_matches('.') == p) {
                return Err(format!("group '{p}' is given twice"));
            }
            if !names.clone().into_iter().any(|n| anytime_blocks::mode::within(n, p)) {
                return Err(format!("group '{p}' selects no variable of the model"));
            }
        }
        Ok(())
    }
}

/// An optimiser over named parameters.
pub struct Optimizer {
    cfg: OptimConfig,
    params: Vec<(String, Var)>,
    /// Per parameter (in the order of `params`): learning-rate factor and
    /// weight decay.
    settings: Vec<(f64, f64)>,
    step: u64,
    /// Momentum buffers (SGD) or first moments (AdamW).
    m: BTreeMap<String, Tensor>,
    /// SGD momentum buffers of f32 parameters on the CPU, updated in place
    /// by [`sgd_in_place`] (instead of `m`).
    m_host: BTreeMap<String, Vec<f32>>,
    /// Second moments (AdamW).
    v: BTreeMap<String, Tensor>,
}

impl Optimizer {
    /// An optimiser over `params` (sorted by name for a deterministic order).
    pub fn new(cfg: OptimConfig, params: Vec<(String, Var)>) -> Self {
        Self::with_groups(cfg, params, &[])
    }

    /// An optimiser over `params` with the settings of their [`ParamGroup`]s
    /// (see [`ParamGroup::of`]); frozen parameters are left out. Parameters
    /// in no group get the optimiser's settings.
    pub fn with_groups(cfg: OptimConfig, mut params: Vec<(String, Var)>, groups: &[ParamGroup]) -> Self {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        params.retain(|(n, _)| !ParamGroup::of(groups, n).is_some_and(|g| g.frozen));
        let wd = match cfg {
            OptimConfig::Sgd { weight_decay, .. } | OptimConfig::AdamW { weight_decay, .. } => weight_decay,
        };
        let settings = params
            .iter()
            .map(|(n, _)| ParamGroup::of(groups, n).map_or((1.0, wd), |g| (g.lr_mult, g.weight_decay.unwrap_or(wd))))
            .collect();
        Self { cfg, params, settings, step: 0, m: BTreeMap::new(), m_host: BTreeMap::new(), v: BTreeMap::new() }
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The optimised parameters.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// Scales every gradient so their global L2 norm is at most `max_norm`;
    /// returns the norm before clipping.
    pub fn clip_grad_norm(&self, grads: &mut GradStore, max_norm: f64) -> Result<f64> {
        let mut sq = 0f64;
        for (_, p) in &self.params {
            if let Some(g) = grads.get(p.as_tensor()) {
                sq += g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
            }
        }
        let norm = sq.sqrt();
        if norm > max_norm && norm.is_finite() {
            let scale = max_norm / (norm + 1e-6);
            for (_, p) in &self.params {
                if let Some(g) = grads.remove(p.as_tensor()) {
                    grads.insert(p.as_tensor(), (g * scale)?);
                }
            }
        }
        Ok(norm)
    }

    /// One update with learning rate `lr`. Parameters without a gradient are
    /// left untouched (as PyTorch does).
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        for ((name, p), &(mult, weight_decay)) in self.params.iter().zip(&self.settings) {
            let Some(g) = grads.get(p.as_tensor()) else { continue };
            let lr = lr * mult;
            // Detached: the update must not record an autograd graph, or every
            // momentum buffer would keep all previous steps alive.
            let (g, w) = (&g.detach(), &p.as_tensor().detach());
            match self.cfg {
                OptimConfig::Sgd { momentum, nesterov, .. } if momentum != 0.0 && in_place(p, g) => {
                    let buf = match self.m_host.remove(name) {
                        Some(b) => Some(b),
                        // A buffer restored from a checkpoint.
                        None => self.m.remove(name).map(|t| t.flatten_all()?.to_vec1::<f32>()).transpose()?,
                    };
                    let rule = SgdRule { lr, momentum, nesterov, weight_decay };
                    let buf = sgd_in_place(p.as_tensor(), g, buf, rule)?;
                    self.m_host.insert(name.clone(), buf);
                }
                OptimConfig::Sgd { momentum, nesterov, .. } => {
                    let mut d = if weight_decay != 0.0 { (g + (w * weight_decay)?)? } else { g.clone() };
                    if momentum != 0.0 {
                        let buf = match self.m.get(name) {
                            Some(b) => ((b * momentum)? + &d)?,
                            None => d.copy()?,
                        };
                        d = if nesterov { (d + (&buf * momentum)?)? } else { buf.clone() };
                        self.m.insert(name.clone(), buf);
                    }
                    p.set(&(w - (d * lr)?)?)?;
                }
                OptimConfig::AdamW { beta1, beta2, eps, .. } => {
                    let m = match self.m.get(name) {
                        Some(m) => ((m * beta1)? + (g * (1.0 - beta1))?)?,
                        None => (g * (1.0 - beta1))?,
                    };
                    let v = match self.v.get(name) {
                        Some(v) => ((v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?,
                        None => (g.sqr()? * (1.0 - beta2))?,
                    };
                    let mhat = (&m / (1.0 - beta1.powi(t)))?;
                    let vhat = (&v / (1.0 - beta2.powi(t)))?;
                    let decayed = (w * (1.0 - lr * weight_decay))?;
                    let upd = (mhat / (vhat.sqrt()? + eps)?)?;
                    p.set(&(decayed - (upd * lr)?)?)?;
                    self.m.insert(name.clone(), m);
                    self.v.insert(name.clone(), v);
                }
            }
        }
        Ok(())
    }

    /// The state as named tensors (`m.<param>`, `v.<param>`) plus the step count.
    pub fn state(&self) -> (BTreeMap<String, Tensor>, u64) {
        let mut out = BTreeMap::new();
        for (k, t) in &self.m {
            out.insert(format!("m.{k}"), t.clone());
        }
        for (name, p) in &self.params {
            if let Some(b) = self.m_host.get(name) {
                // Same length as the parameter by construction.
                if let Ok(t) = Tensor::from_slice(b, p.shape(), p.device()) {
                    out.insert(format!("m.{name}"), t);
                }
            }
        }
        for (k, t) in &self.v {
            out.insert(format!("v.{k}"), t.clone());
        }
        (out, self.step)
    }

    /// Restores a state saved by [`Optimizer::state`]; unknown or mis-shaped
    /// entries are errors.
    pub fn load_state(&mut self, state: BTreeMap<String, Tensor>, step: u64) -> Result<()> {
        let shapes: BTreeMap<&str, &Var> = self.params.iter().map(|(n, v)| (n.as_str(), v)).collect();
        let (mut m, mut v) = (BTreeMap::new(), BTreeMap::new());
        for (k, t) in state {
            let (slot, name) = match k.split_once('.') {
                Some(("m", n)) => (&mut m, n.to_string()),
                Some(("v", n)) => (&mut v, n.to_string()),
                _ => candle_core::bail!("optimizer state: unexpected entry {k}"),
            };
            match shapes.get(name.as_str()) {
                Some(p) if p.shape() == t.shape() => {
                    // Checkpoints are read on the CPU; the buffers live with
                    // their parameters.
                    slot.insert(name, t.to_device(p.device())?);
                }
                Some(p) => candle_core::bail!("optimizer state {k}: shape {:?}, parameter {:?}", t.shape(), p.shape()),
                None => candle_core::bail!("optimizer state {k}: no parameter named {name}"),
            }
        }
        // A parameter without buffers after some steps has never had a
        // gradient (GFNet's cascade heads beyond its T steps, the classifier
        // of a glance that is not trained): the live run has none either, so
        // resuming without them is exact. Damaged files are caught by the
        // checkpoint's SHA-256, names and shapes above.
        self.m = m;
        self.m_host.clear();
        self.v = v;
        self.step = step;
        Ok(())
    }
}

/// One parameter's SGD settings.
#[derive(Debug, Clone, Copy)]
struct SgdRule {
    lr: f64,
    momentum: f64,
    nesterov: bool,
    weight_decay: f64,
}

/// Whether [`sgd_in_place`] takes parameter `p` and its gradient `g`: f32
/// on the CPU, both contiguous, the same length.
fn in_place(p: &Var, g: &Tensor) -> bool {
    let plain = |t: &Tensor| {
        t.dtype() == candle_core::DType::F32 && t.device().is_cpu() && t.layout().contiguous_offsets().is_some()
    };
    plain(p.as_tensor()) && plain(g) && p.elem_count() == g.elem_count()
}

/// PyTorch's SGD update of `w` in place, in one pass over `w`, its gradient
/// `g` and momentum buffer `buf` (`None`: the first step, where the buffer
/// starts as the step's direction); returns the buffer. The same f32
/// operations in the same order as the tensor form in
/// [`Optimizer::step`] (same bits): `d = g + w·wd`, `buf = buf·μ + d`,
/// `w = w − (nesterov ? d + buf·μ : buf)·lr`.
fn sgd_in_place(w: &Tensor, g: &Tensor, buf: Option<Vec<f32>>, rule: SgdRule) -> Result<Vec<f32>> {
    let n = w.elem_count();
    let first = buf.is_none();
    let mut buf = buf.unwrap_or_else(|| vec![0f32; n]);
    if buf.len() != n {
        candle_core::bail!("sgd: momentum buffer of {} values for a parameter of {n}", buf.len())
    }
    let op = SgdOp { rule, first, buf: std::cell::RefCell::new(&mut buf) };
    w.inplace_op2(g, &op)?;
    Ok(buf)
}

struct SgdOp<'a> {
    rule: SgdRule,
    first: bool,
    buf: std::cell::RefCell<&'a mut Vec<f32>>,
}

impl candle_core::InplaceOp2 for SgdOp<'_> {
    fn name(&self) -> &'static str {
        "sgd-in-place"
    }

    fn cpu_fwd(
        &self,
        dst: &mut candle_core::CpuStorage,
        w_l: &candle_core::Layout,
        g: &candle_core::CpuStorage,
        g_l: &candle_core::Layout,
    ) -> Result<()> {
        use candle_core::CpuStorage::F32;
        use rayon::prelude::*;
        let (F32(w), F32(g)) = (dst, g) else { candle_core::bail!("sgd-in-place: f32 only") };
        let (Some((w0, w1)), Some((g0, g1))) = (w_l.contiguous_offsets(), g_l.contiguous_offsets()) else {
            candle_core::bail!("sgd-in-place: contiguous tensors only")
        };
        let (Some(w), Some(g)) = (w.get_mut(w0..w1), g.get(g0..g1)) else {
            candle_core::bail!("sgd-in-place: layout outside its storage")
        };
        let mut buf = self.buf.borrow_mut();
        if w.len() != g.len() || w.len() != buf.len() {
            candle_core::bail!("sgd-in-place: {} weights, {} gradients, {} buffer values", w.len(), g.len(), buf.len())
        }
        let r = self.rule;
        let (lr, mu, wd) = (r.lr as f32, r.momentum as f32, r.weight_decay as f32);
        let (first, nesterov) = (self.first, r.nesterov);
        const CHUNK: usize = 1 << 14;
        w.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).zip(buf.par_chunks_mut(CHUNK)).for_each(|((w, g), b)| {
            for ((w, &g), b) in w.iter_mut().zip(g).zip(b) {
                let d = if wd != 0.0 { g + *w * wd } else { g };
                *b = if first { d } else { *b * mu + d };
                let u = if nesterov { d + *b * mu } else { *b };
                *w -= u * lr;
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Two SGD steps on f(w) = sum(w²)/2 (gradient w) checked against the
    /// torch rule by hand: wd 0.1, momentum 0.9, Nesterov, lr 0.5.
    #[test]
    fn a_parameter_that_never_had_a_gradient_resumes_exactly() -> Result<()> {
        // `unused` never enters the loss (GFNet's cascade head beyond T):
        // no buffers after steps, and a resumed optimiser continues as the
        // live one.
        for cfg in [
            OptimConfig::Sgd { momentum: 0.9, nesterov: true, weight_decay: 0.1 },
            OptimConfig::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 },
        ] {
            let run = |resume_after: Option<usize>| -> Result<Vec<f32>> {
                let w = Var::new(&[1.0f32, -2.0], &Device::Cpu)?;
                let unused = Var::new(&[3.0f32], &Device::Cpu)?;
                let params = || vec![("w".to_string(), w.clone()), ("unused".to_string(), unused.clone())];
                let mut opt = Optimizer::new(cfg.clone(), params());
                for step in 0..4 {
                    if resume_after == Some(step) {
                        let (state, steps) = opt.state();
                        assert!(!state.keys().any(|k| k.ends_with(".unused")), "{:?}", state.keys());
                        opt = Optimizer::new(cfg.clone(), params());
                        opt.load_state(state, steps)?;
                    }
                    let loss = (w.as_tensor().sqr()?.sum_all()? * 0.5)?;
                    opt.step(&loss.backward()?, 0.1)?;
                }
                assert_eq!(unused.as_tensor().to_vec1::<f32>()?, [3.0]);
                w.as_tensor().to_vec1::<f32>()
            };
            assert_eq!(run(None)?, run(Some(2))?, "{cfg:?}");
        }
        Ok(())
    }

    #[test]
    fn sgd_nesterov_matches_torch_rule() -> Result<()> {
        let w = Var::new(&[1.0f32, -2.0], &Device::Cpu)?;
        let mut opt = Optimizer::new(
            OptimConfig::Sgd { momentum: 0.9, nesterov: true, weight_decay: 0.1 },
            vec![("w".into(), w.clone())],
        );
        let mut expect = [1.0f64, -2.0];
        let mut buf = [0.0f64; 2];
        for step in 0..2 {
            let loss = (w.as_tensor().sqr()?.sum_all()? * 0.5)?;
            opt.step(&loss.backward()?, 0.5)?;
            for i in 0..2 {
                let d = expect[i] + 0.1 * expect[i];
                buf[i] = if step == 0 { d } else { 0.9 * buf[i] + d };
                expect[i] -= 0.5 * (d + 0.9 * buf[i]);
            }
            let got = w.as_tensor().to_vec1::<f32>()?;
            for i in 0..2 {
                assert!((got[i] as f64 - expect[i]).abs() < 1e-5, "step {step}: {got:?} vs {expect:?}");
            }
        }
        Ok(())
    }

    /// The in-place SGD pass gives the bits of the tensor form (the same f32
    /// operations in the same order), across a save and restore of its
    /// state, with and without Nesterov and weight decay, on a parameter
    /// long enough to be split over threads.
    #[test]
    fn sgd_in_place_equals_the_tensor_form_bit_for_bit() -> Result<()> {
        let n = 40_000;
        let init: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
        for (nesterov, weight_decay) in [(true, 1e-4), (false, 0.0), (true, 0.0), (false, 0.05)] {
            let (momentum, lr) = (0.9, 0.1);
            let loss = |w: &Var| -> Result<GradStore> { (w.as_tensor().sqr()?.sum_all()? * 0.5)?.backward() };
            // The optimiser, restored from its state after two of four steps.
            let w = Var::new(init.as_slice(), &Device::Cpu)?;
            let cfg = OptimConfig::Sgd { momentum, nesterov, weight_decay };
            let mut opt = Optimizer::new(cfg.clone(), vec![("w".into(), w.clone())]);
            for step in 0..4 {
                if step == 2 {
                    let (state, steps) = opt.state();
                    opt = Optimizer::new(cfg.clone(), vec![("w".into(), w.clone())]);
                    opt.load_state(state, steps)?;
                }
                opt.step(&loss(&w)?, lr)?;
            }
            // The tensor form, written out.
            let v = Var::new(init.as_slice(), &Device::Cpu)?;
            let mut buf: Option<Tensor> = None;
            for _ in 0..4 {
                let grads = loss(&v)?;
                let (g, x) = (grads.get(v.as_tensor()).expect("a gradient"), v.as_tensor().detach());
                let d = if weight_decay != 0.0 { (g + (&x * weight_decay)?)? } else { g.clone() };
                let b = match &buf {
                    Some(b) => ((b * momentum)? + &d)?,
                    None => d.copy()?,
                };
                let u = if nesterov { (&d + (&b * momentum)?)? } else { b.clone() };
                buf = Some(b);
                v.set(&(x - (u * lr)?)?)?;
            }
            let (a, b) = (w.as_tensor().to_vec1::<f32>()?, v.as_tensor().to_vec1::<f32>()?);
            assert!(
                a.iter().zip(&b).all(|(a, b)| a.to_bits() == b.to_bits()),
                "nesterov {nesterov}, wd {weight_decay}"
            );
            assert!(opt.m_host.contains_key("w"), "the in-place pass ran");
            let (state, _) = opt.state();
            let m = state.get("m.w").expect("a momentum buffer").to_vec1::<f32>()?;
            let want = buf.expect("a buffer").to_vec1::<f32>()?;
            assert!(m.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()));
        }
        Ok(())
    }

    #[test]
    fn adamw_first_step_is_lr_times_sign() -> Result<()> {
        let w = Var::new(&[3.0f32, -1.0], &Device::Cpu)?;
        let cfg = OptimConfig::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        let mut opt = Optimizer::new(cfg, vec![("w".into(), w.clone())]);
        let loss = w.as_tensor().sum_all()?;
        opt.step(&loss.backward()?, 0.01)?;
        let got = w.as_tensor().to_vec1::<f32>()?;
        assert!((got[0] - 2.99).abs() < 1e-5 && (got[1] + 1.01).abs() < 1e-5, "{got:?}");
        Ok(())
    }

    #[test]
    fn state_round_trips_and_rejects_strangers() -> Result<()> {
        let w = Var::new(&[1.0f32, 2.0], &Device::Cpu)?;
        let mut opt = Optimizer::new(OptimConfig::msdnet_sgd(), vec![("w".into(), w.clone())]);
        opt.step(&w.as_tensor().sum_all()?.backward()?, 0.1)?;
        let (state, step) = opt.state();
        let mut other = Optimizer::new(OptimConfig::msdnet_sgd(), vec![("w".into(), w.clone())]);
        other.load_state(state.clone(), step)?;
        assert_eq!(other.state().0["m.w"].to_vec1::<f32>()?, state["m.w"].to_vec1::<f32>()?);
        let mut bad = state;
        bad.insert("m.nope".into(), Tensor::zeros(2, candle_core::DType::F32, &Device::Cpu)?);
        assert!(other.load_state(bad, 1).is_err());
        Ok(())
    }

    /// Groups: the longest prefix wins, a multiplier scales the step, a
    /// weight-decay override replaces the optimiser's, a frozen parameter
    /// neither moves nor gets state; bad groups are named.
    #[test]
    fn groups_scale_override_and_freeze() -> Result<()> {
        let dev = Device::Cpu;
        let names = ["a.x", "a.b.y", "c.z", "ab.w"];
        let vars: Vec<(String, Var)> =
            names.iter().map(|n| Ok((n.to_string(), Var::new(&[1.0f32], &dev)?))).collect::<Result<_>>()?;
        let groups = vec![
            ParamGroup { lr_mult: 0.5, ..ParamGroup::new("a") },
            ParamGroup { weight_decay: Some(1.0), ..ParamGroup::new("a.b.") },
            ParamGroup { frozen: true, ..ParamGroup::new("c") },
        ];
        ParamGroup::validate(&groups, names).map_err(candle_core::Error::Msg)?;
        assert_eq!(ParamGroup::of(&groups, "a.b.y").map(|g| g.prefix.as_str()), Some("a.b."));
        assert!(ParamGroup::of(&groups, "ab.w").is_none());
        let cfg = OptimConfig::Sgd { momentum: 0.0, nesterov: false, weight_decay: 0.0 };
        let mut opt = Optimizer::with_groups(cfg, vars.clone(), &groups);
        assert_eq!(opt.params().len(), 3);
        let loss = vars.iter().map(|(_, v)| v.as_tensor().sum_all()).reduce(|a, b| a? + b?).expect("vars")?;
        opt.step(&loss.backward()?, 0.1)?;
        let got: Vec<f32> =
            vars.iter().map(|(_, v)| v.as_tensor().to_vec1::<f32>().map(|v| v[0])).collect::<Result<_>>()?;
        // a.x: 1 − 0.05; a.b.y: 1 − 0.1·(1 + 1); c.z frozen; ab.w: 1 − 0.1.
        assert_eq!(got, vec![1.0 - 0.05, 1.0 - 0.2, 1.0, 1.0 - 0.1]);
        let mom = Optimizer::with_groups(OptimConfig::msdnet_sgd(), vars.clone(), &groups);
        let mut mom = mom;
        mom.step(&vars[2].1.as_tensor().sum_all()?.backward()?, 0.1)?;
        assert!(mom.state().0.keys().all(|k| !k.contains("c.z")), "a frozen parameter has no state");
        let bad = |g: ParamGroup| ParamGroup::validate(&[g], names).err().unwrap_or_default();
        assert!(bad(ParamGroup::new("nope")).contains("'nope' selects no variable"));
        assert!(bad(ParamGroup { lr_mult: -1.0, ..ParamGroup::new("a") }).contains("'a'"));
        assert!(bad(ParamGroup { weight_decay: Some(f64::NAN), ..ParamGroup::new("a") }).contains("weight decay"));
        let twice = ParamGroup::validate(&[ParamGroup::new("a"), ParamGroup::new("a.")], names);
        assert!(twice.is_err_and(|e| e.contains("twice")));
        Ok(())
    }

    #[test]
    fn clipping_caps_the_global_norm() -> Result<()> {
        let w = Var::new(&[3.0f32, 4.0], &Device::Cpu)?;
        let opt = Optimizer::new(OptimConfig::msdnet_sgd(), vec![("w".into(), w.clone())]);
        let mut grads = (w.as_tensor().sqr()?.sum_all()? * 0.5)?.backward()?;
        let norm = opt.clip_grad_norm(&mut grads, 1.0)?;
        assert!((norm - 5.0).abs() < 1e-6);
        let g = grads.get(w.as_tensor()).expect("grad").to_vec1::<f32>()?;
        assert!((g[0] - 0.6).abs() < 1e-5 && (g[1] - 0.8).abs() < 1e-5);
        Ok(())
    }
}
