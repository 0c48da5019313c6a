//! Primitive layers: [`Conv2d`], [`ConvTranspose2d`], [`BatchNorm2d`] and
//! [`Linear`].
//!
//! Each mirrors its `torch.nn` namesake, including the `state_dict` key names
//! (`weight`, `bias`, `running_mean`, `running_var`); all but
//! [`ConvTranspose2d`] count their own cost.

use crate::Mode;
use anytime_flops::{CountFlops, Counter, Shape4};
use anytime_ops::conv::{Conv2dParams, conv2d, conv2d_scale_shift_packed_act};
use anytime_ops::conv_transpose::{ConvTranspose2dParams, conv_transpose2d};
use anytime_ops::norm::{batch_norm_eval, batch_norm_train, fold_bn_after_conv};
use candle_core::{Module, Result, Tensor, Var};
use candle_nn::{Init, VarBuilder};
use std::sync::{Arc, Mutex};

/// A 2-D convolution with a square kernel, as `torch.nn.Conv2d`.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    params: Conv2dParams,
    kernel: usize,
    in_channels: usize,
    out_channels: usize,
    /// The following batch norm as a per-channel scale and shift of this
    /// convolution's output, packed `[scale; shift]`, kept from the first
    /// [`Mode::inference`] pass until a training pass ([`Conv2d::forward_bn`]).
    folded: Arc<Mutex<Option<Tensor>>>,
}

impl Conv2d {
    /// Loads or creates `weight` `[out, in / groups, k, k]` (and `bias` `[out]`)
    /// under `vb`. New weights are drawn from N(0, 2 / (k·k·out)), the He
    /// initialisation MSDNet and RANet use; a new bias is zero.
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        params: Conv2dParams,
        bias: bool,
    ) -> Result<Self> {
        if params.groups == 0
            || !in_channels.is_multiple_of(params.groups)
            || !out_channels.is_multiple_of(params.groups)
        {
            candle_core::bail!(
                "conv {}: {in_channels} -> {out_channels} channels do not divide into {} groups",
                vb.prefix(),
                params.groups
            )
        }
        let stdev = (2.0 / (kernel * kernel * out_channels) as f64).sqrt();
        let weight = vb.get_with_hints(
            (out_channels, in_channels / params.groups, kernel, kernel),
            "weight",
            Init::Randn { mean: 0.0, stdev },
        )?;
        let bias = if bias { Some(vb.get_with_hints(out_channels, "bias", Init::Const(0.0))?) } else { None };
        Ok(Self { weight, bias, params, kernel, in_channels, out_channels, folded: Arc::default() })
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// The weight tensor `[out, in / groups, k, k]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// This convolution, then `bn`, then a ReLU when `relu`: the unit every
    /// conv → batch norm pair of the models runs through. With
    /// [`Mode::folds_batch_norm`] (a [`Mode::inference`] pass) it is one
    /// fused convolution on the weights as they are, `bn` (with this
    /// convolution's bias) applied as a per-channel scale and shift and the
    /// ReLU as the output is stored; the scale and shift are computed once
    /// and kept, `2·C_out` floats (folding `bn` into a copy of the weights
    /// instead doubled the weight memory of inference). In every other mode
    /// the two layers run as they are, and a pass that trains `bn` drops the
    /// kept scale and shift (the training step changes them).
    ///
    /// # Shapes
    /// `[N, in, H, W]` → `[N, out, H', W']`.
    pub fn forward_bn(&self, bn: &BatchNorm2d, xs: &Tensor, mode: &Mode, relu: bool) -> Result<Tensor> {
        if bn.num_features != self.out_channels {
            candle_core::bail!(
                "conv -> batch norm {}: {} conv outputs for {} batch norm channels",
                bn.prefix,
                self.out_channels,
                bn.num_features
            )
        }
        let mut kept =
            self.folded.lock().map_err(|_| candle_core::Error::Msg(format!("{}: poisoned fold", bn.prefix)))?;
        if mode.folds_batch_norm() {
            let c = xs.dim(1)?;
            if c != self.in_channels {
                candle_core::bail!("conv: expected {} input channels, got {c}", self.in_channels)
            }
            let scale_shift = match kept.as_ref() {
                Some(f) => f.clone(),
                None => {
                    let (scale, shift) = bn.scale_shift_after(self.bias.as_ref())?;
                    let f = Tensor::cat(&[&scale, &shift], 0)?;
                    *kept = Some(f.clone());
                    f
                }
            };
            drop(kept);
            return conv2d_scale_shift_packed_act(xs, &self.weight, &scale_shift, self.params, relu);
        }
        if mode.trains(&bn.prefix) {
            *kept = None;
        }
        drop(kept);
        bn.forward_act(&self.forward(xs)?, mode, relu)
    }
}

impl Module for Conv2d {
    /// # Shapes
    /// `[N, in, H, W]` → `[N, out, H', W']`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let c = xs.dim(1)?;
        if c != self.in_channels {
            candle_core::bail!("conv: expected {} input channels, got {c}", self.in_channels)
        }
        conv2d(xs, &self.weight, self.bias.as_ref(), self.params)
    }
}

impl CountFlops for Conv2d {
    fn count_flops(&self, counter: &mut Counter, x: Shape4) -> anytime_flops::Result<Shape4> {
        if x.c != self.in_channels {
            return Err(anytime_flops::Error::Channels { layer: "conv", expected: self.in_channels, got: x.c });
        }
        let p = self.params;
        counter.conv2d(
            x,
            self.out_channels,
            self.kernel,
            p.stride,
            p.padding,
            p.dilation,
            p.groups,
            self.bias.is_some(),
        )
    }
}

/// A 2-D transposed convolution with a square kernel, as
/// `torch.nn.ConvTranspose2d` (one group, dilation 1): keys `weight`
/// `[in, out, k, k]` and, when present, `bias` `[out]`.
#[derive(Debug, Clone)]
pub struct ConvTranspose2d {
    weight: Tensor,
    bias: Option<Tensor>,
    params: ConvTranspose2dParams,
    in_channels: usize,
    out_channels: usize,
}

impl ConvTranspose2d {
    /// Loads or creates `weight` `[in, out, k, k]` (and `bias` `[out]`) under
    /// `vb`. New weights and biases are drawn from U(±1/√(out·k·k)),
    /// PyTorch's default for this layer (its fan-in is computed from the
    /// weight's second dimension). Groups other than 1, dilation other than
    /// 1 and `output_padding >= stride` are errors.
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        params: ConvTranspose2dParams,
        bias: bool,
    ) -> Result<Self> {
        if params.groups != 1 || params.dilation != 1 {
            candle_core::bail!(
                "conv transpose {}: only groups 1 and dilation 1 are supported, got {params:?}",
                vb.prefix()
            )
        }
        if params.stride == 0 || params.output_padding >= params.stride {
            candle_core::bail!(
                "conv transpose {}: need stride >= 1 and output_padding < stride, got {params:?}",
                vb.prefix()
            )
        }
        if in_channels == 0 || out_channels == 0 || kernel == 0 {
            candle_core::bail!(
                "conv transpose {}: channels ({in_channels} -> {out_channels}) and kernel ({kernel}) must be positive",
                vb.prefix()
            )
        }
        let bound = 1.0 / ((out_channels * kernel * kernel) as f64).sqrt();
        let init = Init::Uniform { lo: -bound, up: bound };
        let weight = vb.get_with_hints((in_channels, out_channels, kernel, kernel), "weight", init)?;
        let bias = if bias { Some(vb.get_with_hints(out_channels, "bias", init)?) } else { None };
        Ok(Self { weight, bias, params, in_channels, out_channels })
    }

    /// Output channels.
    pub fn out_channels(&self) -> usize {
        self.out_channels
    }

    /// The weight tensor `[in, out, k, k]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The stride, padding and output padding.
    pub fn params(&self) -> ConvTranspose2dParams {
        self.params
    }
}

impl Module for ConvTranspose2d {
    /// # Shapes
    /// `[N, in, H, W]` → `[N, out, H', W']` with
    /// `H' = (H - 1)·stride - 2·padding + k + output_padding`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let c = xs.dim(1)?;
        if c != self.in_channels {
            candle_core::bail!("conv transpose: expected {} input channels, got {c}", self.in_channels)
        }
        conv_transpose2d(xs, &self.weight, self.bias.as_ref(), self.params)
    }
}

impl CountFlops for ConvTranspose2d {
    fn count_flops(&self, counter: &mut Counter, x: Shape4) -> anytime_flops::Result<Shape4> {
        if x.c != self.in_channels {
            return Err(anytime_flops::Error::Channels {
                layer: "conv transpose",
                expected: self.in_channels,
                got: x.c,
            });
        }
        let p = self.params;
        let k = self.weight.dims().get(2).copied().unwrap_or(0);
        counter.conv_transpose2d(
            x,
            self.out_channels,
            k,
            p.stride,
            p.padding,
            p.output_padding,
            p.dilation,
            p.groups,
            self.bias.is_some(),
        )
    }
}

/// Batch normalisation over channels, as `torch.nn.BatchNorm2d` (eps 1e-5,
/// momentum 0.1), optionally fused with a following ReLU.
///
/// The layer knows its variable prefix (`blocks.0.1.…`, from the
/// `VarBuilder` it was built with) and runs in training mode only when the
/// pass's [`Mode`] trains that prefix ([`Mode::trains`]): then it normalises
/// with the batch statistics and updates the running ones in place (they are
/// [`Var`]s shared with the `VarMap` the layer was built from); otherwise (an
/// eval pass, or a frozen module) it normalises with the running statistics
/// and leaves them untouched.
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    num_features: usize,
    eps: f64,
    momentum: f64,
    prefix: String,
}

/// Names of the buffers a [`BatchNorm2d`] registers; training excludes them
/// from the optimised parameters.
pub const BN_BUFFERS: [&str; 3] = ["running_mean", "running_var", "num_batches_tracked"];

/// The weight of a batch's statistics in the running ones (PyTorch's
/// default); recalibration after weight averaging undoes it.
pub const BN_MOMENTUM: f64 = 0.1;

impl BatchNorm2d {
    /// Loads or creates `weight` (1), `bias` (0), `running_mean` (0) and
    /// `running_var` (1), each `[num_features]`, under `vb`.
    pub fn new(vb: VarBuilder, num_features: usize) -> Result<Self> {
        let weight = vb.get_with_hints(num_features, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(num_features, "bias", Init::Const(0.0))?;
        let running_mean = Var::from_tensor(&vb.get_with_hints(num_features, "running_mean", Init::Const(0.0))?)?;
        let running_var = Var::from_tensor(&vb.get_with_hints(num_features, "running_var", Init::Const(1.0))?)?;
        Ok(Self {
            weight,
            bias,
            running_mean,
            running_var,
            num_features,
            eps: 1e-5,
            momentum: BN_MOMENTUM,
            prefix: vb.prefix(),
        })
    }

    /// The variable prefix the layer was built under (its module name).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Normalises `xs` (training mode for this module: batch statistics,
    /// updating the running ones; eval mode or frozen: running statistics)
    /// and applies a ReLU when `relu`.
    ///
    /// # Shapes
    /// `[N, C, H, W]` → `[N, C, H, W]`.
    pub fn forward_act(&self, xs: &Tensor, mode: &Mode, relu: bool) -> Result<Tensor> {
        let (n, c, h, w) = xs.dims4()?;
        if c != self.num_features {
            candle_core::bail!("batch norm: expected {} channels, got {c}", self.num_features)
        }
        if !mode.trains(&self.prefix) {
            return batch_norm_eval(
                xs,
                &self.weight,
                &self.bias,
                self.running_mean.as_tensor(),
                self.running_var.as_tensor(),
                self.eps,
                relu,
            );
        }
        let count = n * h * w;
        if count < 2 {
            candle_core::bail!("batch norm: training needs more than one value per channel, got input {:?}", xs.dims())
        }
        let out = batch_norm_train(xs, &self.weight, &self.bias, self.eps, relu)?;
        let m = self.momentum;
        let unbiased = out.var.affine(count as f64 / (count - 1) as f64, 0.0)?;
        self.running_mean.set(&((self.running_mean.as_tensor().detach() * (1.0 - m))? + (out.mean * m)?)?)?;
        self.running_var.set(&((self.running_var.as_tensor().detach() * (1.0 - m))? + (unbiased * m)?)?)?;
        Ok(out.ys)
    }
}

impl BatchNorm2d {
    /// This batch norm, in eval mode, as the per-channel scale and shift
    /// of the convolution (with `bias`) before it: `conv(x, w) · scale +
    /// shift = bn(conv(x, w) + b)`, detached from the variables.
    pub fn scale_shift_after(&self, bias: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let (s, t) = fold_bn_after_conv(
            bias.map(|b| b.detach()).as_ref(),
            &self.weight.detach(),
            &self.bias.detach(),
            &self.running_mean.as_tensor().detach(),
            &self.running_var.as_tensor().detach(),
            self.eps,
        )?;
        Ok((s.contiguous()?, t.contiguous()?))
    }

    /// [`BatchNorm2d::forward_act`] without the ReLU.
    pub fn forward_t(&self, xs: &Tensor, mode: &Mode) -> Result<Tensor> {
        self.forward_act(xs, mode, false)
    }
}

impl CountFlops for BatchNorm2d {
    fn count_flops(&self, counter: &mut Counter, x: Shape4) -> anytime_flops::Result<Shape4> {
        if x.c != self.num_features {
            return Err(anytime_flops::Error::Channels { layer: "batch norm", expected: self.num_features, got: x.c });
        }
        counter.batch_norm(x);
        Ok(x)
    }
}

/// A fully connected layer with bias, as `torch.nn.Linear`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Tensor,
    in_features: usize,
    out_features: usize,
}

impl Linear {
    /// Loads or creates `weight` `[out, in]` (U(±1/√in), torch's default) and
    /// `bias` `[out]` (zero, as MSDNet and RANet initialise it).
    pub fn new(vb: VarBuilder, in_features: usize, out_features: usize) -> Result<Self> {
        let bound = 1.0 / (in_features as f64).sqrt();
        let weight =
            vb.get_with_hints((out_features, in_features), "weight", Init::Uniform { lo: -bound, up: bound })?;
        let bias = vb.get_with_hints(out_features, "bias", Init::Const(0.0))?;
        Ok(Self { weight, bias, in_features, out_features })
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// Output features (classes, for an exit head).
    pub fn out_features(&self) -> usize {
        self.out_features
    }
}

impl Module for Linear {
    /// # Shapes
    /// `[N, in]` → `[N, out]`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (_n, f) = xs.dims2()?;
        if f != self.in_features {
            candle_core::bail!("linear: expected {} input features, got {f}", self.in_features)
        }
        xs.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)
    }
}

impl Linear {
    /// Adds the cost of applying the layer to `n` vectors.
    pub fn count_flops(&self, counter: &mut Counter, n: usize) {
        counter.linear(n, self.in_features, self.out_features);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use candle_nn::VarMap;

    #[test]
    fn batch_norm_updates_running_stats_like_torch() -> Result<()> {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let bn = BatchNorm2d::new(VarBuilder::from_varmap(&vm, DType::F32, &dev), 2)?;
        // Channel 0 holds 1..4, channel 1 holds 2 * (1..4).
        let xs = Tensor::new(&[[[[1f32, 2.], [3., 4.]], [[2., 4.], [6., 8.]]]], &dev)?;
        let ys = bn.forward_t(&xs, &Mode::train())?;
        // torch: mean 2.5, biased var 1.25 -> (x - 2.5) / sqrt(1.25 + 1e-5).
        let y00 = ys.flatten_all()?.to_vec1::<f32>()?[0];
        assert!((y00 - (-1.5 / (1.25f32 + 1e-5).sqrt())).abs() < 1e-5);
        // running_mean = 0.9 * 0 + 0.1 * [2.5, 5]; running_var = 0.9 + 0.1 * unbiased [5/3, 20/3].
        let rm = bn.running_mean.as_tensor().to_vec1::<f32>()?;
        let rv = bn.running_var.as_tensor().to_vec1::<f32>()?;
        assert!((rm[0] - 0.25).abs() < 1e-6 && (rm[1] - 0.5).abs() < 1e-6);
        assert!((rv[0] - (0.9 + 0.1 * 5.0 / 3.0)).abs() < 1e-6);
        assert!((rv[1] - (0.9 + 0.1 * 20.0 / 3.0)).abs() < 1e-6);
        // The running statistics live in the VarMap, so a checkpoint sees them.
        let stored = vm.data().lock().map_err(|e| candle_core::Error::Msg(e.to_string()))?["running_mean"].clone();
        assert_eq!(stored.as_tensor().to_vec1::<f32>()?, rm);
        Ok(())
    }

    /// The fused inference pass equals conv → eval batch norm → ReLU, and
    /// a training pass drops the kept scale and shift: after it (new running
    /// statistics) and a weight update, inference follows the new weights
    /// and statistics.
    #[test]
    fn folded_inference_follows_training() -> Result<()> {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let p = Conv2dParams { padding: 1, ..Default::default() };
        let conv = Conv2d::new(vb.pp("conv"), 3, 5, 3, p, true)?;
        let bn = BatchNorm2d::new(vb.pp("bn"), 5)?;
        let xs = Tensor::randn(0f32, 1., (4, 3, 6, 6), &dev)?;
        let close = |a: &Tensor, b: &Tensor| -> Result<f32> { (a - b)?.abs()?.max_all()?.to_scalar::<f32>() };
        for relu in [false, true] {
            conv.forward_bn(&bn, &xs, &Mode::train(), relu)?; // non-trivial statistics
            let fused = conv.forward_bn(&bn, &xs, &Mode::inference(), relu)?;
            let eval = conv.forward_bn(&bn, &xs, &Mode::eval(), relu)?;
            assert!(Mode::inference().folds_batch_norm() && !Mode::eval().folds_batch_norm());
            assert!(close(&fused, &eval)? < 1e-5, "relu {relu}");
            if relu {
                assert!(fused.min_all()?.to_scalar::<f32>()? >= 0.0);
            }
            // A training pass, then a weight update (an optimiser step).
            conv.forward_bn(&bn, &xs, &Mode::train(), relu)?;
            let data = vm.data().lock().map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            let w = &data["conv.weight"];
            w.set(&(w.as_tensor() * 1.5)?)?;
            drop(data);
            let after = conv.forward_bn(&bn, &xs, &Mode::inference(), relu)?;
            // (A scale and shift kept from before the training pass would
            // miss its new running statistics.)
            assert!(close(&after, &conv.forward_bn(&bn, &xs, &Mode::eval(), relu)?)? < 1e-5, "relu {relu}");
            assert!(close(&after, &fused)? > 1e-3, "relu {relu}: the update changed nothing");
        }
        let other = BatchNorm2d::new(vb.pp("other"), 4)?;
        let err = conv.forward_bn(&other, &xs, &Mode::inference(), true).unwrap_err().to_string();
        assert!(err.contains("5 conv outputs for 4 batch norm channels"), "{err}");
        Ok(())
    }

    /// A frozen batch norm (its prefix under a frozen one) in a training pass
    /// normalises as in eval mode and leaves its statistics alone; one
    /// outside the frozen prefix trains.
    #[test]
    fn a_frozen_batch_norm_runs_in_eval_mode() -> Result<()> {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let frozen = BatchNorm2d::new(vb.pp("a").pp("bn"), 2)?;
        let free = BatchNorm2d::new(vb.pp("b").pp("bn"), 2)?;
        assert_eq!(frozen.prefix(), "a.bn");
        let xs = Tensor::new(&[[[[1f32, 2.], [3., 4.]], [[2., 4.], [6., 8.]]]], &dev)?;
        let mode = Mode::train().with_frozen(["a".to_string()]);
        let stats = |bn: &BatchNorm2d| -> Result<Vec<f32>> {
            Ok([bn.running_mean.as_tensor().to_vec1::<f32>()?, bn.running_var.as_tensor().to_vec1::<f32>()?].concat())
        };
        let before = stats(&frozen)?;
        let ys = frozen.forward_t(&xs, &mode)?;
        assert_eq!(stats(&frozen)?, before);
        let eval = frozen.forward_t(&xs, &Mode::eval())?;
        assert_eq!(ys.flatten_all()?.to_vec1::<f32>()?, eval.flatten_all()?.to_vec1::<f32>()?);
        free.forward_t(&xs, &mode)?;
        assert_ne!(stats(&free)?, before);
        Ok(())
    }

    #[test]
    fn conv_transpose_matches_pytorch() -> Result<()> {
        // nn.ConvTranspose2d(6, 4, 4, stride=2, padding=1) as SCAN builds it:
        // the output and the gradients of sum(y · r) for x, weight and bias.
        use crate::testutil::{assert_golden, assert_grads, fixture, get, var_builder};
        let f = fixture("layers.safetensors")?;
        let (vars, vb) = var_builder(&f)?;
        let p = ConvTranspose2dParams { stride: 2, padding: 1, ..Default::default() };
        let layer = ConvTranspose2d::new(vb.pp("convt_layer"), 6, 4, 4, p, true)?;
        let y = layer.forward(vars["convt_layer.x"].as_tensor())?;
        assert_eq!(y.dims(), &[2, 4, 8, 10]);
        assert_golden("conv transpose", &y, get(&f, "convt_layer.y"))?;
        let grads = (y * get(&f, "convt_layer.r"))?.sum_all()?.backward()?;
        assert_grads(&f, &vars, &grads, "convt_layer", &["x", "weight", "bias"])
    }

    #[test]
    fn conv_transpose_rejects_what_it_cannot_do() -> Result<()> {
        let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
        let d = ConvTranspose2dParams::default();
        let e = |p: ConvTranspose2dParams| ConvTranspose2d::new(vb.pp("up"), 2, 2, 3, p, true).unwrap_err().to_string();
        assert!(e(ConvTranspose2dParams { groups: 2, ..d }).contains("groups 1"));
        assert!(e(ConvTranspose2dParams { dilation: 2, ..d }).contains("dilation 1"));
        assert!(e(ConvTranspose2dParams { stride: 2, output_padding: 2, ..d }).contains("output_padding < stride"));
        let layer = ConvTranspose2d::new(vb, 2, 3, 3, d, false)?;
        let xs = Tensor::zeros((1, 1, 4, 4), DType::F32, &Device::Cpu)?;
        assert!(layer.forward(&xs).unwrap_err().to_string().contains("expected 2 input channels"));
        Ok(())
    }

    #[test]
    fn channel_mismatch_is_an_error() -> Result<()> {
        let dev = Device::Cpu;
        let conv = Conv2d::new(VarBuilder::zeros(DType::F32, &dev), 3, 4, 3, Conv2dParams::default(), false)?;
        let xs = Tensor::zeros((1, 1, 8, 8), DType::F32, &dev)?;
        let err = conv.forward(&xs).unwrap_err().to_string();
        assert!(err.contains("expected 3 input channels, got 1"), "{err}");
        let mut c = Counter::new();
        assert!(conv.count_flops(&mut c, Shape4::new(1, 1, 8, 8)).is_err());
        Ok(())
    }

    /// The transposed conv counts C_in·C_out·k·k·H_in·W_in MACs and PyTorch's
    /// output size (SCAN's 4x4/2, padding 1: 16x16 → 32x32).
    #[test]
    fn conv_transpose_counts_flops() -> Result<()> {
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, candle_core::DType::F32, &candle_core::Device::Cpu);
        let p = ConvTranspose2dParams { stride: 2, padding: 1, ..Default::default() };
        let ct = ConvTranspose2d::new(vb, 16, 8, 4, p, true)?;
        let mut c = Counter::with_headline(anytime_flops::Mode::Macs);
        let y =
            ct.count_flops(&mut c, Shape4::new(1, 16, 16, 16)).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        assert_eq!(y, Shape4::new(1, 8, 32, 32));
        assert_eq!(c.current().macs, 16 * 8 * 16 * 16 * 16);
        assert_eq!(c.current().params, 16 * 8 * 16 + 8);
        let xs = Tensor::zeros((1, 16, 16, 16), candle_core::DType::F32, &candle_core::Device::Cpu)?;
        assert_eq!(ct.forward(&xs)?.dims(), &[1, 8, 32, 32]);
        Ok(())
    }
}
