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
//! The reference figures ([`Cost::macs`]) follow the reference counter
//! (one multiply-add counts as one op):
//!
//! | layer | ops | params |
//! |---|---|---|
//! | conv | `C_in·C_out·kh·kw·H_out·W_out / groups` (bias not counted) | weight (+ bias) |
//! | ReLU | `numel(input)` | 0 |
//! | avg / max pool | `N·C·H_out·W_out·k·k` | 0 |
//! | adaptive avg pool | `N·C·H·W` | 0 |
//! | linear | `N·(in·out + out)` | weight + bias |
//! | batch norm | 0 | weight + bias |
//! | resize, concat | 0 | 0 |
//!
//! Unlike the reference, pooling output sizes use the real input width, so
//! rectangular inputs are counted correctly (square inputs give identical
//! numbers). The "complete" mode adds what the reference leaves out, each kept
//! in its own field: batch-norm (one MAC per element), resizing (taps per
//! output element: 4 bilinear, 16 bicubic), concatenation (elements copied) and
//! convolution bias adds.
//!
//! ```
//! use anytime_flops::{Counter, Shape4};
//! # fn main() -> anytime_flops::Result<()> {
//! let mut c = Counter::new();
//! let x = Shape4::new(1, 3, 32, 32);
//! let y = c.conv2d(x, 16, 3, 1, 1, 1, 1, false)?; // 3x3 conv, padding 1
//! c.batch_norm(y);
//! c.relu(y);
//! let p = c.global_avg_pool(y);
//! c.linear(p.n, 16, 10);
//! c.mark_exit();
//! let costs = c.finish();
//! assert_eq!(costs.exits[0].macs, 3 * 16 * 9 * 32 * 32 + 16 * 32 * 32 + 16 * 32 * 32 + 16 * 10 + 10);
//! assert_eq!(costs.exits[0].params, 3 * 16 * 9 + 2 * 16 + 16 * 10 + 10);
//! # Ok(()) }
//! ```

use serde::Serialize;

/// Errors raised when a layer cannot be applied to the given shape.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
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
    /// A zero stride, dilation or group count.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

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

    /// Number of elements.
    pub const fn numel(&self) -> u64 {
        (self.n * self.c * self.h * self.w) as u64
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

/// Running totals (or a snapshot of them at an exit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Cost {
    /// Multiply-accumulates under the reference counter's rules.
    pub macs: u64,
    /// Parameters of every layer executed so far.
    pub params: u64,
    /// Complete mode: batch-norm ops (one per element).
    pub bn: u64,
    /// Complete mode: resizing ops (taps per output element).
    pub interp: u64,
    /// Complete mode: elements copied by concatenation.
    pub concat: u64,
    /// Complete mode: convolution bias adds.
    pub bias: u64,
}

impl Cost {
    /// The total in the given mode.
    pub const fn total(&self, mode: Mode) -> u64 {
        match mode {
            Mode::Reference => self.macs,
            Mode::Complete => self.macs + self.bn + self.interp + self.concat + self.bias,
        }
    }

    /// Element-wise difference `self - earlier` (cost of the part in between).
    pub const fn since(&self, earlier: &Cost) -> Cost {
        Cost {
            macs: self.macs - earlier.macs,
            params: self.params - earlier.params,
            bn: self.bn - earlier.bn,
            interp: self.interp - earlier.interp,
            concat: self.concat - earlier.concat,
            bias: self.bias - earlier.bias,
        }
    }
}

/// Which ops a total includes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum Mode {
    /// The reference counter's rules (the published numbers).
    #[default]
    Reference,
    /// The reference plus batch norm, resizing, concatenation and bias adds.
    Complete,
}

/// Resizing kernels, for the complete mode's tap count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resize {
    /// Bilinear: 4 taps per output element.
    Bilinear,
    /// Bicubic: 16 taps per output element.
    Bicubic,
}

/// Cumulative costs per exit, in forward order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExitCosts {
    /// Snapshot of the running totals after each exit's classifier.
    pub exits: Vec<Cost>,
    /// Totals after the whole forward pass (equals the last exit for models
    /// whose last layer is an exit).
    pub total: Cost,
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
#[derive(Debug, Clone, Default)]
pub struct Counter {
    total: Cost,
    exits: Vec<Cost>,
}

fn out_size(size: usize, k: usize, stride: usize, padding: usize, dilation: usize) -> Option<usize> {
    let span = dilation * (k - 1) + 1;
    (size + 2 * padding).checked_sub(span).map(|d| d / stride + 1)
}

impl Counter {
    /// An empty counter.
    pub fn new() -> Self {
        Self::default()
    }

    /// The running totals so far.
    pub fn current(&self) -> Cost {
        self.total
    }

    /// A 2-D convolution with a square `k`x`k` kernel; returns the output shape.
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
        for (v, name) in [(stride, "stride"), (dilation, "dilation"), (groups, "groups"), (k, "kernel")] {
            if v == 0 {
                return Err(Error::Zero(name));
            }
        }
        if x.c % groups != 0 || c_out % groups != 0 {
            return Err(Error::Groups { c_in: x.c, c_out, groups });
        }
        let too_large = || Error::KernelTooLarge { layer: "conv", kernel: k, padding, h: x.h, w: x.w };
        let h = out_size(x.h, k, stride, padding, dilation).ok_or_else(too_large)?;
        let w = out_size(x.w, k, stride, padding, dilation).ok_or_else(too_large)?;
        let y = Shape4::new(x.n, c_out, h, w);
        let kk = (k * k) as u64;
        // The reference multiplies by the output size of a batch of one.
        self.total.macs += (x.c * c_out) as u64 * kk * (h * w) as u64 / groups as u64 * x.n as u64;
        self.total.params += (x.c / groups * c_out) as u64 * kk + if bias { c_out as u64 } else { 0 };
        if bias {
            self.total.bias += y.numel();
        }
        Ok(y)
    }

    /// Batch normalisation over `x`'s channels.
    pub fn batch_norm(&mut self, x: Shape4) {
        self.total.params += 2 * x.c as u64;
        self.total.bn += x.numel();
    }

    /// A ReLU (or any element-wise activation the reference counts as ReLU).
    pub fn relu(&mut self, x: Shape4) {
        self.total.macs += x.numel();
    }

    /// Average or max pooling with a square window; returns the output shape.
    pub fn pool2d(&mut self, x: Shape4, k: usize, stride: usize, padding: usize) -> Result<Shape4> {
        if stride == 0 || k == 0 {
            return Err(Error::Zero(if k == 0 { "kernel" } else { "stride" }));
        }
        let too_large = || Error::KernelTooLarge { layer: "pool", kernel: k, padding, h: x.h, w: x.w };
        let h = out_size(x.h, k, stride, padding, 1).ok_or_else(too_large)?;
        let w = out_size(x.w, k, stride, padding, 1).ok_or_else(too_large)?;
        let y = x.with_hw(h, w);
        self.total.macs += y.numel() * (k * k) as u64;
        Ok(y)
    }

    /// Global (or adaptive, to 1x1) average pooling; returns `[N, C, 1, 1]`.
    pub fn global_avg_pool(&mut self, x: Shape4) -> Shape4 {
        self.total.macs += x.numel();
        x.with_hw(1, 1)
    }

    /// A fully connected layer with bias applied to `n` vectors.
    pub fn linear(&mut self, n: usize, in_features: usize, out_features: usize) {
        let w = (in_features * out_features) as u64;
        self.total.macs += n as u64 * (w + out_features as u64);
        self.total.params += w + out_features as u64;
    }

    /// Resizing `x` to `h`x`w` (not counted by the reference; complete mode only).
    pub fn resize(&mut self, x: Shape4, h: usize, w: usize, kind: Resize) -> Shape4 {
        let y = x.with_hw(h, w);
        if (h, w) != (x.h, x.w) {
            let taps = match kind {
                Resize::Bilinear => 4,
                Resize::Bicubic => 16,
            };
            self.total.interp += taps * y.numel();
        }
        y
    }

    /// Concatenation along channels (complete mode: elements copied). Returns
    /// the output shape; the caller guarantees equal `N, H, W`.
    pub fn concat(&mut self, parts: &[Shape4]) -> Shape4 {
        let mut y = parts.first().copied().unwrap_or(Shape4::new(0, 0, 0, 0));
        y.c = parts.iter().map(|s| s.c).sum();
        self.total.concat += y.numel();
        y
    }

    /// Records the running totals as the cost of the next exit.
    pub fn mark_exit(&mut self) {
        self.exits.push(self.total);
    }

    /// The recorded exits and final totals.
    pub fn finish(self) -> ExitCosts {
        ExitCosts { exits: self.exits, total: self.total }
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
    }
}
