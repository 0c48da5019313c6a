//! Shape-based counting of multiply-accumulates (MACs) and parameters for
//! multi-exit networks.
//!
//! Every block of the workspace reports its own cost to a [`Counter`] from
//! input shapes alone, without running the network, so a full-size ImageNet
//! configuration answers instantly. A model calls [`Counter::mark_exit`] when
//! an exit's classifier has run, which records the running totals: costs are
//! **cumulative in forward order**, earlier exit heads included, exactly as the
//! reference `op_counter.measure_model` of MSDNet-PyTorch and RANet-pytorch
//! reports them.
//!
//! # Counting rules
//!
//! A MAC is one multiply-add (`a += w·x`). Every layer adds its operations to
//! *categories*, each a field of [`Cost`], so any total can be formed from
//! them; a [`Mode`] names the three totals this crate defines:
//!
//! | category ([`Cost`] field) | what | [`Mode::Reference`] | [`Mode::Macs`] | [`Mode::Complete`] |
//! |---|---|---|---|---|
//! | `conv` | convolution and transposed-convolution MACs (squeeze-excite convs included) | ✓ | ✓ | ✓ |
//! | `linear` | linear-layer MACs: `vectors·in·out` | ✓ | ✓ | ✓ |
//! | `recurrent` | GRU / LSTM MACs: `3·(in·h + h·h)` / `4·(in·h + h·h)` per vector and step | ✓ | ✓ | ✓ |
//! | `linear_bias` | bias adds of linear layers and recurrent cells | ✓ | | ✓ |
//! | `act` | activations (ReLU, sigmoid, tanh, hard-sigmoid, hard-swish, …): one per element | ✓ | | ✓ |
//! | `pool` | pooling: `N·C·H_out·W_out·k·k`; adaptive / global: `N·C·H·W` | ✓ | | ✓ |
//! | `gate` | element-wise products (gates, masks, squeeze-excite scaling, inside GRU / LSTM cells) | | | ✓ |
//! | `bias` | convolution bias adds: one per output element | | | ✓ |
//! | `bn` | batch norm: one per element | | | ✓ |
//! | `interp` | resizing: 4 (bilinear) or 16 (bicubic) taps per output element | | | ✓ |
//! | `concat` | elements copied by concatenation | | | ✓ |
//!
//! [`Mode::Reference`] is the reference counter's rule (it counts ReLU,
//! pooling and linear bias adds, and is what the MSDNet and RANet papers
//! publish); [`Mode::Macs`] counts multiply-accumulates only, the rule of GFNet
//! and of most later papers. A counter keeps the total of one mode, its
//! *headline*, in [`Cost::macs`] ([`Counter::new`]: reference;
//! [`Counter::with_headline`]: any). Parameters are counted once per layer
//! run; layers that run again with weights already counted (a recurrent cell's
//! later steps, an encoder applied to a second input) are counted inside
//! [`Counter::reusing`].
//!
//! Unlike the reference, pooling output sizes use the real input width, so
//! rectangular inputs are counted correctly (square inputs give identical
//! numbers). The repository's `docs/flops.md` states every layer's count.
//!
//! ```
//! use anytime_flops::{Activation, Counter, Mode, Shape4};
//! # fn main() -> anytime_flops::Result<()> {
//! let mut c = Counter::new();
//! let x = Shape4::new(1, 3, 32, 32);
//! let y = c.conv2d(x, 16, 3, 1, 1, 1, 1, false)?; // 3x3 conv, padding 1
//! c.batch_norm(y);
//! c.relu(y);
//! let p = c.global_avg_pool(y);
//! c.linear(p.n, 16, 10);
//! c.mark_exit();
//! // A squeeze-excite gate and a GRU step after the first exit.
//! let y = c.squeeze_excite(y, 4, Activation::HardSigmoid)?;
//! c.gru_cell(1, 16, 8, true)?;
//! c.mark_exit();
//! let costs = c.finish();
//! let conv = 3 * 16 * 9 * 32 * 32;
//! assert_eq!(costs.exits[0].macs, conv + 16 * 32 * 32 + 16 * 32 * 32 + 16 * 10 + 10);
//! assert_eq!(costs.exits[0].params, 3 * 16 * 9 + 2 * 16 + 16 * 10 + 10);
//! // Multiply-accumulates only: the conv, the linear layer, the squeeze-excite
//! // 1x1 convs and the GRU step 3·(in·h + h·h).
//! let macs = conv + 16 * 10 + (16 * 4 + 4 * 16) + 3 * (16 * 8 + 8 * 8);
//! assert_eq!(costs.flops(Mode::Macs), vec![conv + 16 * 10, macs]);
//! assert_eq!(costs.exits[1].gate, (16 * 32 * 32 + 3 * 8) as u64);
//! # Ok(()) }
//! ```

use serde::Serialize;
use std::fmt;

/// Errors raised when a layer cannot be applied to the given shape.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A kernel larger than the (padded) input.
    #[error("{layer}: a {kernel}x{kernel} window (padding {padding}) does not fit a {h}x{w} input")]
    KernelTooLarge {
        /// The layer kind.
        layer: &'static str,
        /// Kernel size.
        kernel: usize,
        /// Padding.
        padding: usize,
        /// Input height.
        h: usize,
        /// Input width.
        w: usize,
    },
    /// Channels that do not divide into the groups of a grouped convolution.
    #[error("conv: {c_in} input / {c_out} output channels do not divide into {groups} groups")]
    Groups {
        /// Input channels.
        c_in: usize,
        /// Output channels.
        c_out: usize,
        /// Groups.
        groups: usize,
    },
    /// An input with another channel count than the layer was built for.
    #[error("{layer}: expected {expected} input channels, got {got}")]
    Channels {
        /// The layer kind.
        layer: &'static str,
        /// Channels the layer was built for.
        expected: usize,
        /// Channels of the input.
        got: usize,
    },
    /// Any other shape a layer cannot take.
    #[error("{0}")]
    Shape(String),
    /// A zero stride, dilation, group count or size.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// A count (or a running total) beyond `u64::MAX`.
    #[error("{0}: the count does not fit in 64 bits")]
    Overflow(&'static str),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Product of `dims` as `u64`, or [`Error::Overflow`] naming `layer`.
fn product(layer: &'static str, dims: &[usize]) -> Result<u64> {
    dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64)).ok_or(Error::Overflow(layer))
}

/// An activation shape `[N, C, H, W]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Shape4 {
    /// Batch size.
    pub n: usize,
    /// Channels.
    pub c: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
}

impl Shape4 {
    /// A shape from its four dimensions.
    pub const fn new(n: usize, c: usize, h: usize, w: usize) -> Self {
        Self { n, c, h, w }
    }

    /// Number of elements, saturating at `u64::MAX` (see
    /// [`Shape4::checked_numel`]).
    pub const fn numel(&self) -> u64 {
        (self.n as u64).saturating_mul(self.c as u64).saturating_mul(self.h as u64).saturating_mul(self.w as u64)
    }

    /// Number of elements, or [`Error::Overflow`] beyond `u64::MAX`.
    pub fn checked_numel(&self) -> Result<u64> {
        product("shape", &[self.n, self.c, self.h, self.w])
    }

    /// The same shape with another channel count.
    pub const fn with_c(self, c: usize) -> Self {
        Self { c, ..self }
    }

    /// The same shape with another spatial size.
    pub const fn with_hw(self, h: usize, w: usize) -> Self {
        Self { h, w, ..self }
    }
}

impl fmt::Display for Shape4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {}, {}, {}]", self.n, self.c, self.h, self.w)
    }
}

/// A shape of any rank (a vector batch `[N, F]`, a sequence `[N, T, F]`, a
/// feature map `[N, C, H, W]`, …).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Shape(Vec<usize>);

impl Shape {
    /// A shape from its dimensions, outermost first.
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Self(dims.into())
    }

    /// The dimensions, outermost first.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.len()
    }

    /// Number of elements (1 for rank 0), or [`Error::Overflow`] beyond
    /// `u64::MAX`.
    pub fn numel(&self) -> Result<u64> {
        product("shape", &self.0)
    }

    /// The shape as `[N, C, H, W]`, or [`Error::Shape`] for another rank.
    pub fn to_shape4(&self) -> Result<Shape4> {
        match self.0[..] {
            [n, c, h, w] => Ok(Shape4::new(n, c, h, w)),
            _ => Err(Error::Shape(format!("expected a 4-d shape [N, C, H, W], got {self}"))),
        }
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl From<Shape4> for Shape {
    fn from(s: Shape4) -> Self {
        Self(vec![s.n, s.c, s.h, s.w])
    }
}

impl From<&Shape> for Shape {
    fn from(s: &Shape) -> Self {
        s.clone()
    }
}

impl From<Vec<usize>> for Shape {
    fn from(dims: Vec<usize>) -> Self {
        Self(dims)
    }
}

impl From<&[usize]> for Shape {
    fn from(dims: &[usize]) -> Self {
        Self(dims.to_vec())
    }
}

impl<const R: usize> From<[usize; R]> for Shape {
    fn from(dims: [usize; R]) -> Self {
        Self(dims.to_vec())
    }
}

/// Running totals (or a snapshot of them at an exit). Every operation is in
/// exactly one category field; `macs` repeats the headline total of the
/// counter that produced it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Cost {
    /// The headline total: the counter's [`Mode`] applied to the categories
    /// ([`Mode::Reference`], the reference counter's rules, unless the
    /// counter was made by [`Counter::with_headline`]).
    pub macs: u64,
    /// Parameters of every layer executed so far (weights reused inside
    /// [`Counter::reusing`] are counted once).
    pub params: u64,
    /// Batch-norm ops (one per element).
    pub bn: u64,
    /// Resizing ops (taps per output element).
    pub interp: u64,
    /// Elements copied by concatenation.
    pub concat: u64,
    /// Convolution (and transposed-convolution) bias adds.
    pub bias: u64,
    /// Convolution and transposed-convolution multiply-accumulates.
    pub conv: u64,
    /// Linear-layer multiply-accumulates (`vectors·in·out`).
    pub linear: u64,
    /// Bias adds of linear layers and recurrent cells.
    pub linear_bias: u64,
    /// GRU / LSTM multiply-accumulates.
    pub recurrent: u64,
    /// Activation ops (one per element).
    pub act: u64,
    /// Pooling ops.
    pub pool: u64,
    /// Element-wise products (gates, masks, scalings).
    pub gate: u64,
}

impl Cost {
    /// The total in the given mode, computed from the category fields
    /// (saturating at `u64::MAX`).
    pub const fn total(&self, mode: Mode) -> u64 {
        let macs = self.conv.saturating_add(self.linear).saturating_add(self.recurrent);
        match mode {
            Mode::Macs => macs,
            Mode::Reference => macs.saturating_add(self.linear_bias).saturating_add(self.act).saturating_add(self.pool),
            Mode::Complete => macs
                .saturating_add(self.linear_bias)
                .saturating_add(self.act)
                .saturating_add(self.pool)
                .saturating_add(self.gate)
                .saturating_add(self.bias)
                .saturating_add(self.bn)
                .saturating_add(self.interp)
                .saturating_add(self.concat),
        }
    }

    /// Element-wise difference `self - earlier` (cost of the part in between;
    /// saturating at 0).
    pub const fn since(&self, earlier: &Cost) -> Cost {
        Cost {
            macs: self.macs.saturating_sub(earlier.macs),
            params: self.params.saturating_sub(earlier.params),
            bn: self.bn.saturating_sub(earlier.bn),
            interp: self.interp.saturating_sub(earlier.interp),
            concat: self.concat.saturating_sub(earlier.concat),
            bias: self.bias.saturating_sub(earlier.bias),
            conv: self.conv.saturating_sub(earlier.conv),
            linear: self.linear.saturating_sub(earlier.linear),
            linear_bias: self.linear_bias.saturating_sub(earlier.linear_bias),
            recurrent: self.recurrent.saturating_sub(earlier.recurrent),
            act: self.act.saturating_sub(earlier.act),
            pool: self.pool.saturating_sub(earlier.pool),
            gate: self.gate.saturating_sub(earlier.gate),
        }
    }

    /// [`Cost::total`] without saturation: `None` when it does not fit.
    fn checked_total(&self, mode: Mode) -> Option<u64> {
        let macs = self.conv.checked_add(self.linear)?.checked_add(self.recurrent)?;
        let reference = || macs.checked_add(self.linear_bias)?.checked_add(self.act)?.checked_add(self.pool);
        match mode {
            Mode::Macs => Some(macs),
            Mode::Reference => reference(),
            Mode::Complete => reference()?
                .checked_add(self.gate)?
                .checked_add(self.bias)?
                .checked_add(self.bn)?
                .checked_add(self.interp)?
                .checked_add(self.concat),
        }
    }

    /// Field-wise sum, `None` on overflow (`macs` is left to the caller).
    fn checked_add(&self, d: &Cost) -> Option<Cost> {
        Some(Cost {
            macs: self.macs,
            params: self.params.checked_add(d.params)?,
            bn: self.bn.checked_add(d.bn)?,
            interp: self.interp.checked_add(d.interp)?,
            concat: self.concat.checked_add(d.concat)?,
            bias: self.bias.checked_add(d.bias)?,
            conv: self.conv.checked_add(d.conv)?,
            linear: self.linear.checked_add(d.linear)?,
            linear_bias: self.linear_bias.checked_add(d.linear_bias)?,
            recurrent: self.recurrent.checked_add(d.recurrent)?,
            act: self.act.checked_add(d.act)?,
            pool: self.pool.checked_add(d.pool)?,
            gate: self.gate.checked_add(d.gate)?,
        })
    }

    /// Field-wise saturating sum (`macs` is left to the caller).
    fn saturating_add(&self, d: &Cost) -> Cost {
        Cost {
            macs: self.macs,
            params: self.params.saturating_add(d.params),
            bn: self.bn.saturating_add(d.bn),
            interp: self.interp.saturating_add(d.interp),
            concat: self.concat.saturating_add(d.concat),
            bias: self.bias.saturating_add(d.bias),
            conv: self.conv.saturating_add(d.conv),
            linear: self.linear.saturating_add(d.linear),
            linear_bias: self.linear_bias.saturating_add(d.linear_bias),
            recurrent: self.recurrent.saturating_add(d.recurrent),
            act: self.act.saturating_add(d.act),
            pool: self.pool.saturating_add(d.pool),
            gate: self.gate.saturating_add(d.gate),
        }
    }
}

/// Which categories a total includes (see the crate docs' table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum Mode {
    /// The reference counter's rules (the published MSDNet / RANet numbers):
    /// MACs plus linear bias adds, activations and pooling.
    #[default]
    Reference,
    /// Everything: the reference plus element-wise products, convolution bias
    /// adds, batch norm, resizing and concatenation.
    Complete,
    /// Multiply-accumulates only (convolutions, linear layers, recurrent
    /// cells); activations, pooling, products, bias adds, batch norm and
    /// resizing are listed separately.
    Macs,
}

/// Resizing kernels, for the tap count of [`Cost::interp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// Bilinear: 4 taps per output element.
    Bilinear,
    /// Bicubic: 16 taps per output element.
    Bicubic,
}

/// Element-wise activations; each counts one op per element in
/// [`Cost::act`], whatever its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `max(x, 0)`.
    Relu,
    /// `1 / (1 + e^-x)`.
    Sigmoid,
    /// `tanh(x)`.
    Tanh,
    /// `relu6(x + 3) / 6` (MobileNetV3).
    HardSigmoid,
    /// `x · relu6(x + 3) / 6` (MobileNetV3).
    HardSwish,
    /// `x · sigmoid(x)`.
    Silu,
    /// Gaussian error linear unit.
    Gelu,
}

/// Cumulative costs per exit, in forward order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExitCosts {
    /// Snapshot of the running totals after each exit's classifier.
    pub exits: Vec<Cost>,
    /// Totals after the whole forward pass (equals the last exit for models
    /// whose last layer is an exit).
    pub total: Cost,
    /// The mode of the counter's headline ([`Cost::macs`]): the rule the
    /// model's published figures follow.
    pub headline: Mode,
}

impl ExitCosts {
    /// Cumulative ops per exit in `mode`, raw counts.
    pub fn flops(&self, mode: Mode) -> Vec<u64> {
        self.exits.iter().map(|c| c.total(mode)).collect()
    }

    /// Cumulative ops per exit in `mode`, in millions.
    pub fn mflops(&self, mode: Mode) -> Vec<f64> {
        self.exits.iter().map(|c| c.total(mode) as f64 / 1e6).collect()
    }

    /// Cumulative parameters per exit.
    pub fn params(&self) -> Vec<u64> {
        self.exits.iter().map(|c| c.params).collect()
    }

    /// Number of exits.
    pub fn len(&self) -> usize {
        self.exits.len()
    }

    /// True when no exit was recorded.
    pub fn is_empty(&self) -> bool {
        self.exits.is_empty()
    }
}

/// A layer or block that reports its cost from its input shape.
pub trait CountFlops {
    /// Adds this layer's cost for an input of shape `x` to `counter` and
    /// returns the output shape, or an error when `x` does not fit the layer.
    fn count_flops(&self, counter: &mut Counter, x: Shape4) -> Result<Shape4>;
}

/// Accumulates costs layer by layer.
///
/// Methods that return a [`Result`] use checked arithmetic and leave the
/// counter unchanged on error. The infallible ones kept from the first API
/// ([`Counter::relu`], [`Counter::batch_norm`], [`Counter::global_avg_pool`],
/// [`Counter::linear`], [`Counter::resize`], [`Counter::concat`]) saturate at
/// `u64::MAX` instead and mark the counter, which [`Counter::try_finish`]
/// reports.
#[derive(Debug, Clone, Default)]
pub struct Counter {
    total: Cost,
    exits: Vec<Cost>,
    headline: Mode,
    reusing: bool,
    overflowed: bool,
}

/// Output size of a convolution or pooling window along one axis.
fn out_size(size: usize, k: usize, stride: usize, padding: usize, dilation: usize) -> Option<usize> {
    let span = dilation.checked_mul(k - 1)?.checked_add(1)?;
    padding.checked_mul(2)?.checked_add(size)?.checked_sub(span).map(|d| d / stride + 1)
}

/// Output size of a transposed convolution along one axis (torch's rule):
/// `(size − 1)·stride − 2·padding + dilation·(k − 1) + output_padding + 1`;
/// `None` when it is not positive or overflows.
fn transposed_out_size(
    size: usize,
    k: usize,
    stride: usize,
    padding: usize,
    output_padding: usize,
    dilation: usize,
) -> Option<usize> {
    let full = size
        .checked_sub(1)?
        .checked_mul(stride)?
        .checked_add(dilation.checked_mul(k - 1)?)?
        .checked_add(output_padding)?
        .checked_add(1)?;
    full.checked_sub(padding.checked_mul(2)?).filter(|&s| s > 0)
}

/// `Ok(d)` when `d` is exact, `Err(d)` when it saturated.
fn exact(d: Cost, is_exact: bool) -> std::result::Result<Cost, Cost> {
    if is_exact { Ok(d) } else { Err(d) }
}

fn check_nonzero(values: &[(usize, &'static str)]) -> Result<()> {
    match values.iter().find(|(v, _)| *v == 0) {
        Some(&(_, name)) => Err(Error::Zero(name)),
        None => Ok(()),
    }
}

impl Counter {
    /// An empty counter whose headline ([`Cost::macs`]) follows the reference
    /// counter's rules ([`Mode::Reference`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty counter whose headline ([`Cost::macs`]) is the total in
    /// `mode` (e.g. [`Mode::Macs`] for models whose papers count
    /// multiply-accumulates only).
    pub fn with_headline(mode: Mode) -> Self {
        Self { headline: mode, ..Self::default() }
    }

    /// The mode of the headline.
    pub fn headline(&self) -> Mode {
        self.headline
    }

    /// The running totals so far.
    pub fn current(&self) -> Cost {
        self.total
    }

    /// True when an infallible method saturated a count (see
    /// [`Counter::try_finish`]).
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// Adds `d` to the totals with checked arithmetic; unchanged on error.
    fn record(&mut self, layer: &'static str, mut d: Cost) -> Result<()> {
        if self.reusing {
            d.params = 0;
        }
        let mut t = self.total.checked_add(&d).ok_or(Error::Overflow(layer))?;
        t.macs = t.checked_total(self.headline).ok_or(Error::Overflow(layer))?;
        self.total = t;
        Ok(())
    }

    /// Adds `d` for the infallible methods: `Ok` holds the exact delta, `Err`
    /// the delta saturated at `u64::MAX`; a saturated delta or total marks
    /// the counter.
    fn record_saturating(&mut self, layer: &'static str, d: std::result::Result<Cost, Cost>) {
        let exact = d.is_ok();
        let d = d.unwrap_or_else(|saturated| saturated);
        if !exact || self.record(layer, d).is_err() {
            let d = if self.reusing { Cost { params: 0, ..d } } else { d };
            self.total = self.total.saturating_add(&d);
            self.total.macs = self.total.total(self.headline);
            self.overflowed = true;
        }
    }

    /// Runs `f`, counting its operations but not its parameters: for layers
    /// whose weights were counted already (a recurrent cell's later steps, an
    /// encoder applied to a second input). Nests; returns what `f` returns.
    pub fn reusing<T, E>(
        &mut self,
        f: impl FnOnce(&mut Self) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let before = std::mem::replace(&mut self.reusing, true);
        let out = f(self);
        self.reusing = before;
        out
    }

    /// A 2-D convolution with a square `k`x`k` kernel; returns the output shape.
    ///
    /// MACs `N·(C_in/groups)·C_out·k·k·H_out·W_out` (`C_in·C_out·k²·H_out·W_out /
    /// groups`, the reference's formula); params `(C_in/groups)·C_out·k·k` (+
    /// `C_out` bias); with bias, one bias add per output element. Grouped
    /// convolutions take `groups > 1`; depthwise ones are
    /// [`Counter::depthwise_conv2d`].
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d(
        &mut self,
        x: Shape4,
        c_out: usize,
        k: usize,
        stride: usize,
        padding: usize,
        dilation: usize,
        groups: usize,
        bias: bool,
    ) -> Result<Shape4> {
        check_nonzero(&[(stride, "stride"), (dilation, "dilation"), (groups, "groups"), (k, "kernel")])?;
        if !x.c.is_multiple_of(groups) || !c_out.is_multiple_of(groups) {
            return Err(Error::Groups { c_in: x.c, c_out, groups });
        }
        let too_large = || Error::KernelTooLarge { layer: "conv", kernel: k, padding, h: x.h, w: x.w };
        let h = out_size(x.h, k, stride, padding, dilation).ok_or_else(too_large)?;
        let w = out_size(x.w, k, stride, padding, dilation).ok_or_else(too_large)?;
        let y = Shape4::new(x.n, c_out, h, w);
        let weights = product("conv", &[x.c / groups, c_out, k, k])?;
        let d = Cost {
            conv: product("conv", &[x.n, x.c / groups, c_out, k, k, h, w])?,
            params: weights.checked_add(if bias { c_out as u64 } else { 0 }).ok_or(Error::Overflow("conv"))?,
            bias: if bias { product("conv", &[x.n, c_out, h, w])? } else { 0 },
            ..Cost::default()
        };
        self.record("conv", d)?;
        Ok(y)
    }

    /// A depthwise convolution (`groups = C_out = C_in`, one `k`x`k` filter per
    /// channel): MACs `N·C·k·k·H_out·W_out`, params `C·k·k` (+ `C`).
    pub fn depthwise_conv2d(
        &mut self,
        x: Shape4,
        k: usize,
        stride: usize,
        padding: usize,
        dilation: usize,
        bias: bool,
    ) -> Result<Shape4> {
        check_nonzero(&[(x.c, "depthwise conv channels")])?;
        self.conv2d(x, x.c, k, stride, padding, dilation, x.c, bias)
    }

    /// A 2-D transposed convolution (`torch.nn.ConvTranspose2d`) with a square
    /// kernel; returns the output shape.
    ///
    /// Output size per axis `(H_in − 1)·stride − 2·padding + dilation·(k − 1) +
    /// output_padding + 1` (`output_padding` must be smaller than `stride` or
    /// `dilation`). Every input element meets every tap of its group's
    /// filters, so MACs are `N·(C_in/groups)·C_out·k·k·H_in·W_in`; params
    /// `C_in·(C_out/groups)·k·k` (+ `C_out` bias); with bias, one bias add per
    /// output element.
    #[allow(clippy::too_many_arguments)]
    pub fn conv_transpose2d(
        &mut self,
        x: Shape4,
        c_out: usize,
        k: usize,
        stride: usize,
        padding: usize,
        output_padding: usize,
        dilation: usize,
        groups: usize,
        bias: bool,
    ) -> Result<Shape4> {
        check_nonzero(&[(stride, "stride"), (dilation, "dilation"), (groups, "groups"), (k, "kernel")])?;
        if !x.c.is_multiple_of(groups) || !c_out.is_multiple_of(groups) {
            return Err(Error::Groups { c_in: x.c, c_out, groups });
        }
        if output_padding >= stride && output_padding >= dilation {
            return Err(Error::Shape(format!(
                "conv transpose: output padding {output_padding} must be smaller than the stride ({stride}) or the \
                 dilation ({dilation})"
            )));
        }
        let empty = || {
            Error::Shape(format!(
                "conv transpose: a {k}x{k} kernel (stride {stride}, padding {padding}, output padding \
                 {output_padding}, dilation {dilation}) gives no output for a {}x{} input",
                x.h, x.w
            ))
        };
        let h = transposed_out_size(x.h, k, stride, padding, output_padding, dilation).ok_or_else(empty)?;
        let w = transposed_out_size(x.w, k, stride, padding, output_padding, dilation).ok_or_else(empty)?;
        let y = Shape4::new(x.n, c_out, h, w);
        let weights = product("conv transpose", &[x.c, c_out / groups, k, k])?;
        let d = Cost {
            conv: product("conv transpose", &[x.n, x.c / groups, c_out, k, k, x.h, x.w])?,
            params: weights
                .checked_add(if bias { c_out as u64 } else { 0 })
                .ok_or(Error::Overflow("conv transpose"))?,
            bias: if bias { product("conv transpose", &[x.n, c_out, h, w])? } else { 0 },
            ..Cost::default()
        };
        self.record("conv transpose", d)?;
        Ok(y)
    }

    /// Batch normalisation over `x`'s channels: params `2·C`, one op per
    /// element in [`Cost::bn`].
    pub fn batch_norm(&mut self, x: Shape4) {
        let d = Cost { params: (x.c as u64).saturating_mul(2), bn: x.numel(), ..Cost::default() };
        self.record_saturating("batch norm", exact(d, x.checked_numel().is_ok() && x.c as u64 <= u64::MAX / 2));
    }

    /// A ReLU on a 4-d map: one op per element in [`Cost::act`] (any rank:
    /// [`Counter::activation`]).
    pub fn relu(&mut self, x: Shape4) {
        let d = Cost { act: x.numel(), ..Cost::default() };
        self.record_saturating("relu", exact(d, x.checked_numel().is_ok()));
    }

    /// An element-wise activation on a shape of any rank: one op per element
    /// in [`Cost::act`].
    pub fn activation(&mut self, x: impl Into<Shape>, kind: Activation) -> Result<()> {
        let _ = kind; // every kind counts the same
        let act = x.into().numel()?;
        self.record("activation", Cost { act, ..Cost::default() })
    }

    /// A sigmoid on a shape of any rank ([`Counter::activation`]).
    pub fn sigmoid(&mut self, x: impl Into<Shape>) -> Result<()> {
        self.activation(x, Activation::Sigmoid)
    }

    /// A tanh on a shape of any rank ([`Counter::activation`]).
    pub fn tanh(&mut self, x: impl Into<Shape>) -> Result<()> {
        self.activation(x, Activation::Tanh)
    }

    /// A hard sigmoid on a shape of any rank ([`Counter::activation`]).
    pub fn hard_sigmoid(&mut self, x: impl Into<Shape>) -> Result<()> {
        self.activation(x, Activation::HardSigmoid)
    }

    /// A hard swish on a shape of any rank ([`Counter::activation`]).
    pub fn hard_swish(&mut self, x: impl Into<Shape>) -> Result<()> {
        self.activation(x, Activation::HardSwish)
    }

    /// An element-wise product `a ⊙ b` with torch broadcasting (a gate, an
    /// attention mask, a scaling): one product per output element in
    /// [`Cost::gate`]. Returns the broadcast shape.
    pub fn gate(&mut self, a: impl Into<Shape>, b: impl Into<Shape>) -> Result<Shape> {
        let (a, b) = (a.into(), b.into());
        let rank = a.rank().max(b.rank());
        let at = |s: &Shape, i: usize| if i + s.rank() >= rank { s.0[i + s.rank() - rank] } else { 1 };
        let mut dims = Vec::with_capacity(rank);
        for i in 0..rank {
            let (p, q) = (at(&a, i), at(&b, i));
            dims.push(match (p, q) {
                _ if p == q => p,
                (1, _) => q,
                (_, 1) => p,
                _ => return Err(Error::Shape(format!("element-wise product: shapes {a} and {b} do not broadcast"))),
            });
        }
        let y = Shape(dims);
        let gate = y.numel()?;
        self.record("element-wise product", Cost { gate, ..Cost::default() })?;
        Ok(y)
    }

    /// Average or max pooling with a square window; returns the output shape.
    /// Ops `N·C·H_out·W_out·k·k` in [`Cost::pool`].
    pub fn pool2d(&mut self, x: Shape4, k: usize, stride: usize, padding: usize) -> Result<Shape4> {
        if stride == 0 || k == 0 {
            return Err(Error::Zero(if k == 0 { "kernel" } else { "stride" }));
        }
        let too_large = || Error::KernelTooLarge { layer: "pool", kernel: k, padding, h: x.h, w: x.w };
        let h = out_size(x.h, k, stride, padding, 1).ok_or_else(too_large)?;
        let w = out_size(x.w, k, stride, padding, 1).ok_or_else(too_large)?;
        let y = x.with_hw(h, w);
        let pool = product("pool", &[x.n, x.c, h, w, k, k])?;
        self.record("pool", Cost { pool, ..Cost::default() })?;
        Ok(y)
    }

    /// Global (or adaptive, to 1x1) average pooling; returns `[N, C, 1, 1]`.
    /// Ops `N·C·H·W` in [`Cost::pool`].
    pub fn global_avg_pool(&mut self, x: Shape4) -> Shape4 {
        let d = Cost { pool: x.numel(), ..Cost::default() };
        self.record_saturating("global pool", exact(d, x.checked_numel().is_ok()));
        x.with_hw(1, 1)
    }

    /// Adaptive average or max pooling to `h`x`w`; returns `[N, C, h, w]`. Ops
    /// `N·C·H·W` (every input element read once, the reference's rule for
    /// `AdaptiveAvgPool2d`) in [`Cost::pool`].
    pub fn adaptive_pool2d(&mut self, x: Shape4, h: usize, w: usize) -> Result<Shape4> {
        check_nonzero(&[(h, "adaptive pool output height"), (w, "adaptive pool output width")])?;
        let pool = x.checked_numel().map_err(|_| Error::Overflow("adaptive pool"))?;
        self.record("adaptive pool", Cost { pool, ..Cost::default() })?;
        Ok(x.with_hw(h, w))
    }

    /// A fully connected layer with bias applied to `n` vectors: MACs
    /// `n·in·out`, bias adds `n·out` (both in the reference total), params
    /// `in·out + out`. Any rank and an optional bias: [`Counter::linear_nd`].
    pub fn linear(&mut self, n: usize, in_features: usize, out_features: usize) {
        let (n, i, o) = (n as u64, in_features as u64, out_features as u64);
        let linear = n.checked_mul(i).and_then(|v| v.checked_mul(o));
        let linear_bias = n.checked_mul(o);
        let params = i.checked_mul(o).and_then(|v| v.checked_add(o));
        let d = Cost {
            linear: linear.unwrap_or(u64::MAX),
            linear_bias: linear_bias.unwrap_or(u64::MAX),
            params: params.unwrap_or(u64::MAX),
            ..Cost::default()
        };
        let d = exact(d, linear.is_some() && linear_bias.is_some() && params.is_some());
        self.record_saturating("linear", d);
    }

    /// A fully connected layer on the last axis of `x` (`[.., in]`, any rank
    /// from 1): every leading position is one vector. MACs
    /// `vectors·in·out`; with bias, `vectors·out` bias adds and `out` more
    /// params. Returns `[.., out]`.
    pub fn linear_nd(
        &mut self,
        x: impl Into<Shape>,
        in_features: usize,
        out_features: usize,
        bias: bool,
    ) -> Result<Shape> {
        let x = x.into();
        let Some((&last, lead)) = x.0.split_last() else {
            return Err(Error::Shape("linear: the input has no dimensions".into()));
        };
        if last != in_features {
            return Err(Error::Channels { layer: "linear", expected: in_features, got: last });
        }
        let vectors = product("linear", lead)?;
        let weights = product("linear", &[in_features, out_features])?;
        let d = Cost {
            linear: vectors.checked_mul(weights).ok_or(Error::Overflow("linear"))?,
            linear_bias: if bias {
                vectors.checked_mul(out_features as u64).ok_or(Error::Overflow("linear"))?
            } else {
                0
            },
            params: weights.checked_add(if bias { out_features as u64 } else { 0 }).ok_or(Error::Overflow("linear"))?,
            ..Cost::default()
        };
        self.record("linear", d)?;
        let mut dims = lead.to_vec();
        dims.push(out_features);
        Ok(Shape(dims))
    }

    /// A squeeze-excite gate on `x` (MobileNetV3 / torchvision
    /// `SqueezeExcitation`): global average pool, 1x1 conv `C → reduced` with
    /// bias, ReLU, 1x1 conv `reduced → C` with bias, the `gate` activation,
    /// and the broadcast product with `x`. Counts, per image:
    /// pool `C·H·W`; conv `2·C·reduced`; conv bias adds `reduced + C`;
    /// activations `reduced + C`; products `C·H·W`; params
    /// `2·C·reduced + reduced + C`. Returns `x`'s shape.
    pub fn squeeze_excite(&mut self, x: Shape4, reduced: usize, gate: Activation) -> Result<Shape4> {
        check_nonzero(&[(reduced, "squeeze-excite reduced channels")])?;
        let mut s = Counter { headline: self.headline, reusing: self.reusing, ..Counter::default() };
        let p = s.adaptive_pool2d(x, 1, 1)?;
        let r = s.conv2d(p, reduced, 1, 1, 0, 1, 1, true)?;
        s.activation(r, Activation::Relu)?;
        let e = s.conv2d(r, x.c, 1, 1, 0, 1, 1, true)?;
        s.activation(e, gate)?;
        s.gate(x, e)?;
        self.record("squeeze-excite", Cost { macs: 0, ..s.total })?;
        Ok(x)
    }

    /// Costs of `steps` steps of a recurrent cell with `gates` gates: MACs
    /// `gates·(in·h + h·h)`, bias adds `2·gates·h`, `acts·h` activations and
    /// `3·h` products per vector and step; params counted once.
    #[allow(clippy::too_many_arguments)]
    fn recurrent(
        &mut self,
        layer: &'static str,
        gates: usize,
        acts: usize,
        n: usize,
        input: usize,
        hidden: usize,
        steps: usize,
        bias: bool,
    ) -> Result<Shape> {
        check_nonzero(&[(input, "input features"), (hidden, "hidden size"), (steps, "steps")])?;
        let ovf = Error::Overflow(layer);
        let per_vector = product(layer, &[gates, input.checked_add(hidden).ok_or(ovf.clone())?, hidden])?;
        let runs = product(layer, &[n, steps])?;
        let per_run = |m: usize| product(layer, &[m, hidden]).and_then(|v| v.checked_mul(runs).ok_or(ovf.clone()));
        let d = Cost {
            recurrent: per_vector.checked_mul(runs).ok_or(ovf.clone())?,
            linear_bias: if bias { per_run(2 * gates)? } else { 0 },
            act: per_run(acts)?,
            gate: per_run(3)?,
            params: per_vector.checked_add(if bias { product(layer, &[2 * gates, hidden])? } else { 0 }).ok_or(ovf)?,
            ..Cost::default()
        };
        self.record(layer, d)?;
        Ok(Shape(vec![n, hidden]))
    }

    /// One step of a GRU cell (`torch.nn.GRUCell`) on `n` vectors of `input`
    /// features with `hidden` units. Per vector: MACs `3·(in·h + h·h)`; bias
    /// adds `6·h` (`b_ih`, `b_hh`); activations `3·h` (two sigmoids, one tanh);
    /// products `3·h` (`r ⊙ (W_hn h + b_hn)`, `(1 − z) ⊙ n`, `z ⊙ h`). Params
    /// `3·h·(in + h)` (+ `6·h`). Returns `[n, hidden]`. A cell run again with
    /// the same weights goes inside [`Counter::reusing`], or use
    /// [`Counter::gru`].
    pub fn gru_cell(&mut self, n: usize, input: usize, hidden: usize, bias: bool) -> Result<Shape> {
        self.recurrent("gru", 3, 3, n, input, hidden, 1, bias)
    }

    /// `steps` steps of one GRU cell ([`Counter::gru_cell`]): ops `steps`
    /// times, params once.
    pub fn gru(&mut self, n: usize, input: usize, hidden: usize, steps: usize, bias: bool) -> Result<Shape> {
        self.recurrent("gru", 3, 3, n, input, hidden, steps, bias)
    }

    /// One step of an LSTM cell (`torch.nn.LSTMCell`). Per vector: MACs
    /// `4·(in·h + h·h)`; bias adds `8·h`; activations `5·h` (three sigmoids,
    /// two tanh); products `3·h` (`f ⊙ c`, `i ⊙ g`, `o ⊙ tanh(c')`). Params
    /// `4·h·(in + h)` (+ `8·h`). Returns `[n, hidden]`.
    pub fn lstm_cell(&mut self, n: usize, input: usize, hidden: usize, bias: bool) -> Result<Shape> {
        self.recurrent("lstm", 4, 5, n, input, hidden, 1, bias)
    }

    /// `steps` steps of one LSTM cell ([`Counter::lstm_cell`]): ops `steps`
    /// times, params once.
    pub fn lstm(&mut self, n: usize, input: usize, hidden: usize, steps: usize, bias: bool) -> Result<Shape> {
        self.recurrent("lstm", 4, 5, n, input, hidden, steps, bias)
    }

    /// Resizing `x` to `h`x`w`: taps per output element (4 bilinear, 16
    /// bicubic) in [`Cost::interp`]; resizing to the same size is free.
    pub fn resize(&mut self, x: Shape4, h: usize, w: usize, kind: Resize) -> Shape4 {
        let y = x.with_hw(h, w);
        if (h, w) != (x.h, x.w) {
            let taps = match kind {
                Resize::Bilinear => 4,
                Resize::Bicubic => 16,
            };
            let interp = y.checked_numel().ok().and_then(|e| e.checked_mul(taps));
            let d = Cost { interp: interp.unwrap_or(u64::MAX), ..Cost::default() };
            self.record_saturating("resize", exact(d, interp.is_some()));
        }
        y
    }

    /// Concatenation along channels: elements copied, in [`Cost::concat`].
    /// Returns the output shape; the caller guarantees equal `N, H, W`.
    pub fn concat(&mut self, parts: &[Shape4]) -> Shape4 {
        let mut y = parts.first().copied().unwrap_or(Shape4::new(0, 0, 0, 0));
        let c = parts.iter().try_fold(0usize, |a, s| a.checked_add(s.c));
        y.c = c.unwrap_or(usize::MAX);
        let d = Cost { concat: y.numel(), ..Cost::default() };
        self.record_saturating("concat", exact(d, c.is_some() && y.checked_numel().is_ok()));
        y
    }

    /// Records the running totals as the cost of the next exit.
    pub fn mark_exit(&mut self) {
        self.exits.push(self.total);
    }

    /// The recorded exits and final totals (saturated where
    /// [`Counter::overflowed`]).
    pub fn finish(self) -> ExitCosts {
        ExitCosts { exits: self.exits, total: self.total, headline: self.headline }
    }

    /// The recorded exits and final totals, or [`Error::Overflow`] when an
    /// infallible method saturated a count.
    pub fn try_finish(self) -> Result<ExitCosts> {
        if self.overflowed {
            return Err(Error::Overflow("counter"));
        }
        Ok(self.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conv_counts_by_hand() {
        let mut c = Counter::new();
        // 3x3/2 conv, 8 -> 16 channels, 32x32 -> 16x16.
        let y = c.conv2d(Shape4::new(1, 8, 32, 32), 16, 3, 2, 1, 1, 1, false).unwrap();
        assert_eq!(y, Shape4::new(1, 16, 16, 16));
        assert_eq!(c.current().macs, 8 * 16 * 9 * 256);
        assert_eq!(c.current().conv, 8 * 16 * 9 * 256);
        assert_eq!(c.current().params, 8 * 16 * 9);
        assert_eq!(c.current().bias, 0);
    }

    #[test]
    fn odd_and_rectangular_sizes() {
        let mut c = Counter::new();
        // 7x7/2 pad 3 on 129x97 -> 65x49 (torch: floor((129+6-7)/2)+1 = 65).
        let y = c.conv2d(Shape4::new(1, 3, 129, 97), 64, 7, 2, 3, 1, 1, true).unwrap();
        assert_eq!((y.h, y.w), (65, 49));
        assert_eq!(c.current().macs, 3 * 64 * 49 * 65 * 49);
        assert_eq!(c.current().params, 3 * 64 * 49 + 64);
        assert_eq!(c.current().bias, 64 * 65 * 49);
        // 3x3/2 pad 1 max pool: 65x49 -> 33x25, counted with the real width.
        let p = c.pool2d(y, 3, 2, 1).unwrap();
        assert_eq!((p.h, p.w), (33, 25));
        assert_eq!(c.current().macs, 3 * 64 * 49 * 65 * 49 + 64 * 33 * 25 * 9);
        assert_eq!(c.current().pool, 64 * 33 * 25 * 9);
    }

    #[test]
    fn grouped_and_dilated() {
        let mut c = Counter::new();
        let y = c.conv2d(Shape4::new(2, 32, 10, 10), 32, 3, 1, 2, 2, 32, false).unwrap();
        assert_eq!((y.h, y.w), (10, 10));
        assert_eq!(c.current().macs, 2 * 32 * 32 * 9 * 100 / 32);
        assert_eq!(c.current().params, 32 * 9);
        assert_eq!(
            c.conv2d(Shape4::new(1, 30, 4, 4), 32, 3, 1, 1, 1, 4, false),
            Err(Error::Groups { c_in: 30, c_out: 32, groups: 4 })
        );
    }

    #[test]
    fn grouped_conv_by_hand() {
        let mut c = Counter::new();
        // 4 groups of 8 -> 16 channels: each output channel sees 8 inputs.
        let y = c.conv2d(Shape4::new(1, 32, 8, 8), 64, 3, 1, 1, 1, 4, true).unwrap();
        assert_eq!(y, Shape4::new(1, 64, 8, 8));
        assert_eq!(c.current().conv, 8 * 64 * 9 * 64); // 294,912
        assert_eq!(c.current().conv, 294_912);
        assert_eq!(c.current().params, 8 * 64 * 9 + 64);
        assert_eq!(c.current().bias, 64 * 64);
    }

    #[test]
    fn depthwise_conv_by_hand() {
        let mut c = Counter::new();
        let y = c.depthwise_conv2d(Shape4::new(2, 32, 10, 10), 3, 2, 1, 1, false).unwrap();
        assert_eq!(y, Shape4::new(2, 32, 5, 5));
        // One 3x3 filter per channel: 2 images · 32 channels · 9 taps · 25 outputs.
        assert_eq!(c.current().conv, 14_400);
        assert_eq!(c.current().params, 288);
        assert_eq!(
            c.depthwise_conv2d(Shape4::new(1, 0, 4, 4), 3, 1, 1, 1, false),
            Err(Error::Zero("depthwise conv channels"))
        );
    }

    #[test]
    fn conv_transpose_by_hand() {
        let mut c = Counter::new();
        // 4x4/2 pad 1 doubles 7x7 -> 14x14: (7 - 1)·2 - 2 + 4 = 14.
        let y = c.conv_transpose2d(Shape4::new(1, 8, 7, 7), 4, 4, 2, 1, 0, 1, 1, true).unwrap();
        assert_eq!(y, Shape4::new(1, 4, 14, 14));
        // Every input element meets all 16 taps of all 4 filters: 8·4·16·49.
        assert_eq!(c.current().conv, 25_088);
        assert_eq!(c.current().params, 8 * 4 * 16 + 4);
        assert_eq!(c.current().bias, 4 * 196);
        assert_eq!(c.current().total(Mode::Macs), 25_088);
        // 3x3/2 pad 1 with output padding 1 on 5x6: (5 - 1)·2 - 2 + 3 + 1 = 10, 12.
        let mut c = Counter::new();
        let y = c.conv_transpose2d(Shape4::new(2, 6, 5, 6), 6, 3, 2, 1, 1, 1, 3, false).unwrap();
        assert_eq!((y.h, y.w), (10, 12));
        // Groups of 2 -> 2 channels: 2 images · 2 · 6 · 9 · 30 input positions.
        assert_eq!(c.current().conv, 6_480);
        // torch weight [C_in, C_out/groups, k, k] = [6, 2, 3, 3].
        assert_eq!(c.current().params, 108);
        assert!(matches!(
            c.conv_transpose2d(Shape4::new(1, 4, 5, 5), 4, 3, 2, 1, 2, 1, 1, false),
            Err(Error::Shape(m)) if m.contains("output padding 2")
        ));
        // 1x1, padding 1 on a 1x1 input: 0 - 2 + 0 + 1 < 1.
        assert!(matches!(
            c.conv_transpose2d(Shape4::new(1, 4, 1, 1), 4, 1, 1, 1, 0, 1, 1, false),
            Err(Error::Shape(m)) if m.contains("no output")
        ));
        assert_eq!(c.current().conv, 6_480, "failed layers leave the counter unchanged");
    }

    #[test]
    fn too_small_inputs_are_errors() {
        let mut c = Counter::new();
        assert!(matches!(c.pool2d(Shape4::new(1, 4, 1, 1), 2, 2, 0), Err(Error::KernelTooLarge { layer: "pool", .. })));
        assert!(c.conv2d(Shape4::new(1, 4, 2, 2), 4, 5, 1, 1, 1, 1, false).is_err());
        assert_eq!(c.conv2d(Shape4::new(1, 4, 2, 2), 4, 3, 0, 1, 1, 1, false), Err(Error::Zero("stride")));
    }

    #[test]
    fn relu_linear_bn_and_exits() {
        let mut c = Counter::new();
        let x = Shape4::new(1, 128, 2, 2);
        c.relu(x);
        c.batch_norm(x);
        let p = c.pool2d(x, 2, 2, 0).unwrap();
        c.linear(p.n, 128, 100);
        c.mark_exit();
        c.linear(1, 10, 10);
        c.mark_exit();
        let costs = c.finish();
        let first = 512 + 128 * 4 + 128 * 100 + 100;
        assert_eq!(costs.flops(Mode::Reference), vec![first, first + 110]);
        assert_eq!(costs.params(), vec![256 + 12_900, 256 + 12_900 + 110]);
        assert_eq!(costs.exits[0].bn, 512);
        assert_eq!(costs.exits[0].total(Mode::Complete), first + 512);
        assert_eq!(costs.flops(Mode::Macs), vec![12_800, 12_900]);
        assert_eq!(costs.headline, Mode::Reference);
    }

    #[test]
    fn complete_mode_extras() {
        let mut c = Counter::new();
        let a = Shape4::new(1, 4, 8, 8);
        let up = c.resize(a, 16, 16, Resize::Bilinear);
        assert_eq!(c.current().interp, 4 * 4 * 256);
        // Resizing to the same size is free.
        c.resize(up, 16, 16, Resize::Bicubic);
        assert_eq!(c.current().interp, 4 * 4 * 256);
        let y = c.concat(&[up, Shape4::new(1, 6, 16, 16)]);
        assert_eq!(y.c, 10);
        assert_eq!(c.current().concat, 10 * 256);
        assert_eq!(c.current().macs, 0);
        assert_eq!(c.current().total(Mode::Complete), 4 * 4 * 256 + 10 * 256);
        c.resize(y, 8, 4, Resize::Bicubic);
        assert_eq!(c.current().interp, 4 * 4 * 256 + 16 * 10 * 32);
    }

    #[test]
    fn shapes_of_any_rank() {
        let s = Shape::new([2, 3, 4]);
        assert_eq!((s.rank(), s.numel(), s.dims()), (3, Ok(24), &[2, 3, 4][..]));
        assert_eq!(Shape::new(Vec::new()).numel(), Ok(1));
        assert_eq!(Shape::from(Shape4::new(1, 2, 3, 4)).to_shape4(), Ok(Shape4::new(1, 2, 3, 4)));
        assert!(matches!(s.to_shape4(), Err(Error::Shape(m)) if m.contains("[2, 3, 4]")));
        assert_eq!(Shape::new([usize::MAX, 3]).numel(), Err(Error::Overflow("shape")));
        assert_eq!(Shape4::new(usize::MAX, 2, 1, 1).checked_numel(), Err(Error::Overflow("shape")));
        assert_eq!(Shape4::new(usize::MAX, 2, 2, 1).numel(), u64::MAX);
    }

    #[test]
    fn linear_on_vectors_and_sequences() {
        let mut c = Counter::new();
        // 5 vectors of 7 features -> 3, with bias.
        assert_eq!(c.linear_nd([5, 7], 7, 3, true), Ok(Shape::new([5, 3])));
        assert_eq!((c.current().linear, c.current().linear_bias, c.current().params), (105, 15, 24));
        // [2, 4, 7]: 8 vectors, no bias.
        let seq = Shape::new([2, 4, 7]);
        assert_eq!(c.linear_nd(&seq, 7, 3, false), Ok(Shape::new([2, 4, 3])));
        assert_eq!(seq.numel(), Ok(56), "borrowed shapes stay usable");
        assert_eq!((c.current().linear, c.current().linear_bias, c.current().params), (105 + 168, 15, 24 + 21));
        // A single vector of rank 1.
        assert_eq!(c.linear_nd([7], 7, 2, true), Ok(Shape::new([2])));
        assert_eq!(c.current().linear, 105 + 168 + 14);
        // The reference total counts bias adds, the MAC-only one does not.
        assert_eq!(c.current().total(Mode::Reference), 287 + 15 + 2);
        assert_eq!(c.current().total(Mode::Macs), 287);
        assert_eq!(c.linear_nd([5, 6], 7, 3, true), Err(Error::Channels { layer: "linear", expected: 7, got: 6 }));
        assert!(matches!(c.linear_nd(Shape::new(vec![]), 7, 3, true), Err(Error::Shape(_))));
        // The legacy form equals a rank-2 input with bias.
        let mut a = Counter::new();
        a.linear(4, 10, 6);
        let mut b = Counter::new();
        b.linear_nd([4, 10], 10, 6, true).unwrap();
        assert_eq!(a.current(), b.current());
    }

    #[test]
    fn gru_and_lstm_by_hand() {
        let mut c = Counter::new();
        // GRU 10 -> 20: 3·(10·20 + 20·20) = 1,800 MACs per vector and step.
        assert_eq!(c.gru_cell(1, 10, 20, true), Ok(Shape::new([1, 20])));
        let t = c.current();
        assert_eq!((t.recurrent, t.linear_bias, t.act, t.gate, t.params), (1_800, 120, 60, 60, 1_920));
        assert_eq!(t.total(Mode::Macs), 1_800);
        assert_eq!(t.total(Mode::Reference), 1_800 + 120 + 60);
        assert_eq!(t.total(Mode::Complete), 1_800 + 120 + 60 + 60);
        // 4 steps on 2 vectors: ops 8 times, params once.
        let mut c = Counter::new();
        c.gru(2, 10, 20, 4, false).unwrap();
        assert_eq!((c.current().recurrent, c.current().linear_bias, c.current().params), (14_400, 0, 1_800));
        // A second step of the same cell inside `reusing` equals `gru` over 2 steps.
        let mut a = Counter::new();
        a.gru_cell(3, 10, 20, true).unwrap();
        a.reusing(|a| a.gru_cell(3, 10, 20, true)).unwrap();
        let mut b = Counter::new();
        b.gru(3, 10, 20, 2, true).unwrap();
        assert_eq!(a.current(), b.current());
        // GFNet-sized: a 1280-d feature into a 1024-unit GRU, 3·(1280·1024 + 1024²).
        let mut c = Counter::with_headline(Mode::Macs);
        c.gru_cell(1, 1280, 1024, true).unwrap();
        assert_eq!(c.current().macs, 7_077_888);
        // LSTM 10 -> 20: 4·600 MACs, 8·20 bias adds, 5·20 activations, 3·20 products.
        let mut c = Counter::new();
        assert_eq!(c.lstm_cell(1, 10, 20, true), Ok(Shape::new([1, 20])));
        let t = c.current();
        assert_eq!((t.recurrent, t.linear_bias, t.act, t.gate, t.params), (2_400, 160, 100, 60, 2_560));
        c.reusing(|c| c.lstm(1, 10, 20, 2, true)).unwrap();
        assert_eq!((c.current().recurrent, c.current().params), (7_200, 2_560));
        assert_eq!(c.gru(1, 10, 20, 0, true), Err(Error::Zero("steps")));
        assert_eq!(c.gru_cell(1, 10, 0, true), Err(Error::Zero("hidden size")));
    }

    #[test]
    fn mobilenet_v3_squeeze_excite_by_hand() {
        // MobileNetV3-Large's third bottleneck: SE on the 72 expanded channels
        // at 28x28, squeezed to make_divisible(72 / 4, 8) = 24, hard-sigmoid gate.
        let mut c = Counter::new();
        let x = Shape4::new(1, 72, 28, 28);
        assert_eq!(c.squeeze_excite(x, 24, Activation::HardSigmoid), Ok(x));
        let t = c.current();
        assert_eq!(t.pool, 56_448); // 72·784
        assert_eq!(t.conv, 3_456); // 72·24 + 24·72
        assert_eq!(t.bias, 96); // 24 + 72
        assert_eq!(t.act, 96); // ReLU on 24, hard sigmoid on 72
        assert_eq!(t.gate, 56_448); // 72·784 products
        // torchvision: fc1 72·24 + 24, fc2 24·72 + 72.
        assert_eq!(t.params, 3_552);
        assert_eq!(t.total(Mode::Macs), 3_456);
        assert_eq!(t.total(Mode::Reference), 3_456 + 96 + 56_448);
        assert_eq!(t.total(Mode::Complete), 3_456 + 96 + 56_448 + 56_448 + 96);
        assert_eq!(t.macs, t.total(Mode::Reference));
        assert_eq!(c.squeeze_excite(x, 0, Activation::Sigmoid), Err(Error::Zero("squeeze-excite reduced channels")));
    }

    #[test]
    fn gates_and_activations() {
        let mut c = Counter::new();
        // A channel gate broadcast over the map.
        assert_eq!(c.gate(Shape4::new(2, 3, 4, 5), [2, 3, 1, 1]), Ok(Shape::new([2, 3, 4, 5])));
        assert_eq!(c.current().gate, 120);
        // A spatial mask [4, 5] against [3, 1, 5] broadcasts to [3, 4, 5].
        assert_eq!(c.gate([4, 5], [3, 1, 5]), Ok(Shape::new([3, 4, 5])));
        assert_eq!(c.current().gate, 180);
        assert!(matches!(c.gate([3, 4], [5, 4]), Err(Error::Shape(m)) if m.contains("[3, 4] and [5, 4]")));
        assert_eq!(c.current().total(Mode::Reference), 0, "products are not in the reference total");
        c.sigmoid([2, 3]).unwrap();
        c.hard_swish(Shape4::new(1, 16, 4, 4)).unwrap();
        let v = Shape::new([7]);
        c.hard_sigmoid(&v).unwrap();
        assert_eq!(v.rank(), 1);
        c.tanh([1, 1]).unwrap();
        c.activation([2, 2], Activation::Gelu).unwrap();
        assert_eq!(c.current().act, 6 + 256 + 7 + 1 + 4);
        assert_eq!(c.current().macs, 274);
        assert_eq!(c.current().total(Mode::Macs), 0);
    }

    #[test]
    fn adaptive_pooling() {
        let mut c = Counter::new();
        assert_eq!(c.adaptive_pool2d(Shape4::new(1, 16, 7, 9), 3, 3), Ok(Shape4::new(1, 16, 3, 3)));
        assert_eq!(c.current().pool, 16 * 63);
        // Global pooling is the 1x1 case.
        let mut g = Counter::new();
        g.global_avg_pool(Shape4::new(1, 16, 7, 9));
        assert_eq!(g.current(), c.current());
        assert_eq!(c.adaptive_pool2d(Shape4::new(1, 16, 7, 9), 0, 3), Err(Error::Zero("adaptive pool output height")));
    }

    #[test]
    fn headline_follows_the_chosen_mode() {
        let run = |c: &mut Counter| {
            let y = c.conv2d(Shape4::new(1, 3, 8, 8), 4, 3, 1, 1, 1, 1, true).unwrap();
            c.batch_norm(y);
            c.relu(y);
            let y = c.squeeze_excite(y, 2, Activation::Sigmoid).unwrap();
            let p = c.global_avg_pool(y);
            c.linear(p.n, 4, 10);
            c.mark_exit();
        };
        for mode in [Mode::Reference, Mode::Macs, Mode::Complete] {
            let mut c = Counter::with_headline(mode);
            run(&mut c);
            assert_eq!(c.headline(), mode);
            let costs = c.finish();
            assert_eq!(costs.headline, mode);
            assert_eq!(costs.exits[0].macs, costs.exits[0].total(mode));
        }
        let mut c = Counter::with_headline(Mode::Macs);
        run(&mut c);
        // conv 3·4·9·64, SE convs 4·2 + 2·4, linear 4·10.
        assert_eq!(c.current().macs, 6_912 + 16 + 40);
    }

    #[test]
    fn reusing_skips_params_and_nests() {
        let mut c = Counter::new();
        let x = Shape4::new(1, 2, 4, 4);
        c.conv2d(x, 2, 3, 1, 1, 1, 1, false).unwrap();
        let r: Result<()> = c.reusing(|c| {
            c.conv2d(x, 2, 3, 1, 1, 1, 1, false)?;
            c.reusing(|c| c.linear_nd([1, 2], 2, 2, true))?;
            c.linear(1, 2, 2);
            Ok(())
        });
        r.unwrap();
        c.linear(1, 2, 2);
        assert_eq!(c.current().params, 36 + 6);
        assert_eq!(c.current().conv, 2 * 576);
    }

    #[test]
    fn overflow_is_an_error_not_a_panic() {
        let mut c = Counter::new();
        let huge = Shape4::new(1, 1 << 20, 1 << 20, 1 << 20);
        assert_eq!(c.conv2d(huge, 1 << 20, 1, 1, 0, 1, 1, false), Err(Error::Overflow("conv")));
        assert_eq!(
            c.conv2d(Shape4::new(1, 1, 4, 4), 1, 1, 1, usize::MAX, 1, 1, false),
            Err(Error::KernelTooLarge { layer: "conv", kernel: 1, padding: usize::MAX, h: 4, w: 4 })
        );
        assert_eq!(c.linear_nd([1 << 40, 1 << 20], 1 << 20, 1 << 10, true), Err(Error::Overflow("linear")));
        assert_eq!(c.gru(1 << 40, 1 << 20, 1 << 20, 1, true), Err(Error::Overflow("gru")));
        assert_eq!(c.current(), Cost::default());
        assert!(!c.overflowed());
        // The infallible legacy methods saturate and mark the counter.
        c.relu(Shape4::new(1, 1 << 30, 1 << 30, 1 << 30));
        assert!(c.overflowed());
        assert_eq!(c.current().act, u64::MAX);
        assert_eq!(c.clone().try_finish(), Err(Error::Overflow("counter")));
        assert_eq!(c.finish().total.act, u64::MAX);
        // Running totals that outgrow u64 are an error too.
        let mut c = Counter::new();
        let big = Shape4::new(1, 1 << 16, 1 << 16, 1 << 16);
        for _ in 0..3 {
            c.conv2d(big, 1 << 14, 1, 1, 0, 1, 1, false).unwrap();
        }
        assert_eq!(c.conv2d(big, 1 << 14, 1, 1, 0, 1, 1, false), Err(Error::Overflow("conv")));
        assert_eq!(c.current().conv, 3 << 62);
        assert_eq!(c.current().macs, 3 << 62);
    }
}
