//! Gated recurrent units, as `torch.nn.GRUCell` ([`GruCell`]) and a
//! one-layer, unidirectional `torch.nn.GRU` ([`Gru`]); GFNet's policy and
//! its ResNet/DenseNet classifier are GRUs.
//!
//! PyTorch's gate order and equations, with `σ` the logistic sigmoid:
//!
//! ```text
//! r  = σ(W_ir x + b_ir + W_hr h + b_hr)
//! z  = σ(W_iz x + b_iz + W_hz h + b_hz)
//! n  = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))
//! h' = (1 − z) ⊙ n + z ⊙ h
//! ```
//!
//! `weight_ih` `[3·hidden, input]` stacks `W_ir`, `W_iz`, `W_in` (in that
//! order), `weight_hh` `[3·hidden, hidden]` stacks `W_hr`, `W_hz`, `W_hn`,
//! and the biases `[3·hidden]` likewise. Backward runs through Candle's
//! autograd.
//!
//! ```
//! use anytime_blocks::gru::Gru;
//! use candle_core::{DType, Device, Tensor};
//! use candle_nn::VarBuilder;
//! # fn main() -> candle_core::Result<()> {
//! let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
//! let gru = Gru::new(vb, 8, 16, true)?; // keys weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0
//! let xs = Tensor::zeros((5, 2, 8), DType::F32, &Device::Cpu)?; // [steps, batch, input]
//! let (out, h) = gru.forward(&xs, None)?;
//! assert_eq!((out.dims(), h.dims()), (&[5, 2, 16][..], &[2, 16][..]));
//! # Ok(()) }
//! ```

use anytime_flops::{Counter, Shape};
use candle_core::{D, Result, Tensor, bail};
use candle_nn::{Init, VarBuilder};

/// The weights of one GRU layer and their shapes.
#[derive(Debug, Clone)]
struct GruWeights {
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Option<Tensor>,
    bias_hh: Option<Tensor>,
    input: usize,
    hidden: usize,
}

impl GruWeights {
    /// Loads or creates the four tensors under the names `weight_ih{suffix}`
    /// … with PyTorch's initialisation, U(±1/√hidden).
    fn new(vb: &VarBuilder, input: usize, hidden: usize, bias: bool, suffix: &str) -> Result<Self> {
        if input == 0 || hidden == 0 {
            bail!("gru {}: input ({input}) and hidden ({hidden}) sizes must be positive", vb.prefix())
        }
        let bound = 1.0 / (hidden as f64).sqrt();
        let init = Init::Uniform { lo: -bound, up: bound };
        let weight_ih = vb.get_with_hints((3 * hidden, input), &format!("weight_ih{suffix}"), init)?;
        let weight_hh = vb.get_with_hints((3 * hidden, hidden), &format!("weight_hh{suffix}"), init)?;
        let (bias_ih, bias_hh) = if bias {
            (
                Some(vb.get_with_hints(3 * hidden, &format!("bias_ih{suffix}"), init)?),
                Some(vb.get_with_hints(3 * hidden, &format!("bias_hh{suffix}"), init)?),
            )
        } else {
            (None, None)
        };
        Ok(Self { weight_ih, weight_hh, bias_ih, bias_hh, input, hidden })
    }

    /// `x W^T + b` for a `[N, in]` input.
    fn affine(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        let y = x.matmul(&w.t()?)?;
        match b {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// The input projection `x W_ih^T + b_ih` of `[N, input]` (or of all
    /// steps at once, `[T·N, input]`).
    fn project_input(&self, x: &Tensor) -> Result<Tensor> {
        Self::affine(x, &self.weight_ih, self.bias_ih.as_ref())
    }

    /// One step from the input projection `gi` `[N, 3·hidden]` and `h` `[N, hidden]`.
    fn step(&self, gi: &Tensor, h: &Tensor) -> Result<Tensor> {
        let hd = self.hidden;
        let gh = Self::affine(h, &self.weight_hh, self.bias_hh.as_ref())?;
        let rz = candle_nn::ops::sigmoid(&(gi.narrow(D::Minus1, 0, 2 * hd)? + gh.narrow(D::Minus1, 0, 2 * hd)?)?)?;
        let r = rz.narrow(D::Minus1, 0, hd)?;
        let z = rz.narrow(D::Minus1, hd, hd)?;
        let n = (gi.narrow(D::Minus1, 2 * hd, hd)? + (r * gh.narrow(D::Minus1, 2 * hd, hd)?)?)?.tanh()?;
        // h' = (1 − z)·n + z·h = n + z·(h − n)
        &n + (z * (h - &n)?)?
    }

    /// Checks `x` `[N, input]` and returns `h` `[N, hidden]` (zeros when absent).
    fn check_step(&self, x: &Tensor, h: Option<&Tensor>, what: &str) -> Result<Tensor> {
        let (n, i) = x.dims2().map_err(|_| {
            candle_core::Error::Msg(format!("{what}: expected an input [N, {}], got {:?}", self.input, x.dims()))
        })?;
        if i != self.input {
            bail!("{what}: expected {} input features, got {i}", self.input)
        }
        self.hidden_or_zeros(h, n, x, what)
    }

    /// `h` checked to be `[N, hidden]`, or zeros like `x`.
    fn hidden_or_zeros(&self, h: Option<&Tensor>, n: usize, x: &Tensor, what: &str) -> Result<Tensor> {
        match h {
            Some(h) if h.dims() == [n, self.hidden] => Ok(h.clone()),
            Some(h) => bail!("{what}: expected a hidden state [{n}, {}], got {:?}", self.hidden, h.dims()),
            None => Tensor::zeros((n, self.hidden), x.dtype(), x.device()),
        }
    }
}

/// One GRU step, as `torch.nn.GRUCell`: keys `weight_ih` `[3·hidden, input]`,
/// `weight_hh` `[3·hidden, hidden]`, `bias_ih`, `bias_hh` `[3·hidden]`.
#[derive(Debug, Clone)]
pub struct GruCell {
    w: GruWeights,
}

impl GruCell {
    /// Loads or creates the cell's weights under `vb` (new ones drawn from
    /// U(±1/√hidden), PyTorch's default); `bias` false leaves out both biases.
    pub fn new(vb: VarBuilder, input: usize, hidden: usize, bias: bool) -> Result<Self> {
        Ok(Self { w: GruWeights::new(&vb, input, hidden, bias, "")? })
    }

    /// Input features.
    pub fn input_size(&self) -> usize {
        self.w.input
    }

    /// Hidden state size.
    pub fn hidden_size(&self) -> usize {
        self.w.hidden
    }

    /// Adds the cost of one step on `n` vectors ([`Counter::gru_cell`]; a
    /// later step with the same weights goes inside [`Counter::reusing`]).
    pub fn count_flops(&self, c: &mut Counter, n: usize) -> anytime_flops::Result<Shape> {
        c.gru_cell(n, self.input_size(), self.hidden_size(), self.w.bias_ih.is_some())
    }

    /// The next hidden state from input `x` and hidden state `h` (zeros when
    /// `None`, as PyTorch).
    ///
    /// # Shapes
    /// `x` `[N, input]`, `h` `[N, hidden]` → `[N, hidden]`.
    pub fn forward(&self, x: &Tensor, h: Option<&Tensor>) -> Result<Tensor> {
        let h = self.w.check_step(x, h, "gru cell")?;
        self.w.step(&self.w.project_input(x)?, &h)
    }
}

/// A one-layer, unidirectional GRU over a sequence, as `torch.nn.GRU(input,
/// hidden)` with its default `batch_first=False`: the input is
/// **sequence-first**, `[T, N, input]` ([`Gru::forward_batch_first`] takes
/// `[N, T, input]`). Keys `weight_ih_l0`, `weight_hh_l0`, `bias_ih_l0`,
/// `bias_hh_l0`.
#[derive(Debug, Clone)]
pub struct Gru {
    w: GruWeights,
}

impl Gru {
    /// Loads or creates the layer's weights under `vb` (new ones drawn from
    /// U(±1/√hidden), PyTorch's default); `bias` false leaves out both biases.
    pub fn new(vb: VarBuilder, input: usize, hidden: usize, bias: bool) -> Result<Self> {
        Ok(Self { w: GruWeights::new(&vb, input, hidden, bias, "_l0")? })
    }

    /// Input features.
    pub fn input_size(&self) -> usize {
        self.w.input
    }

    /// Hidden state size.
    pub fn hidden_size(&self) -> usize {
        self.w.hidden
    }

    /// Adds the cost of `steps` steps on `n` vectors ([`Counter::gru`]:
    /// the ops of every step, the params once).
    pub fn count_flops(&self, c: &mut Counter, n: usize, steps: usize) -> anytime_flops::Result<Shape> {
        c.gru(n, self.input_size(), self.hidden_size(), steps, self.w.bias_ih.is_some())
    }

    /// Runs the sequence `xs` from the hidden state `h0` (zeros when `None`)
    /// and returns every step's hidden state and the last one.
    ///
    /// PyTorch's `h_0` and `h_n` carry a leading layer dimension
    /// (`[1, N, hidden]`); here `h0` may have it or not and the last state is
    /// returned without it.
    ///
    /// # Shapes
    /// `xs` `[T, N, input]`, `h0` `[N, hidden]` or `[1, N, hidden]` →
    /// (`[T, N, hidden]`, `[N, hidden]`).
    pub fn forward(&self, xs: &Tensor, h0: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        let (t, n, i) = xs.dims3().map_err(|_| {
            candle_core::Error::Msg(format!("gru: expected an input [T, N, {}], got {:?}", self.w.input, xs.dims()))
        })?;
        if i != self.w.input {
            bail!("gru: expected {} input features, got {i}", self.w.input)
        }
        if t == 0 {
            bail!("gru: the sequence is empty")
        }
        let h0 = match h0 {
            Some(h) if h.rank() == 3 && h.dim(0)? == 1 => Some(h.squeeze(0)?),
            other => other.cloned(),
        };
        let mut h = self.w.hidden_or_zeros(h0.as_ref(), n, xs, "gru")?;
        // All steps' input projections in one product.
        let gi = self.w.project_input(&xs.reshape((t * n, i))?)?.reshape((t, n, 3 * self.w.hidden))?;
        let mut outs = Vec::with_capacity(t);
        for s in 0..t {
            h = self.w.step(&gi.get(s)?, &h)?;
            outs.push(h.clone());
        }
        Ok((Tensor::stack(&outs, 0)?, h))
    }

    /// [`Gru::forward`] on a batch-first sequence, as `nn.GRU(...,
    /// batch_first=True)`.
    ///
    /// # Shapes
    /// `xs` `[N, T, input]`, `h0` `[N, hidden]` or `[1, N, hidden]` →
    /// (`[N, T, hidden]`, `[N, hidden]`).
    pub fn forward_batch_first(&self, xs: &Tensor, h0: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        if xs.rank() != 3 {
            bail!("gru: expected an input [N, T, {}], got {:?}", self.w.input, xs.dims())
        }
        let (out, h) = self.forward(&xs.transpose(0, 1)?.contiguous()?, h0)?;
        Ok((out.transpose(0, 1)?.contiguous()?, h))
    }

    /// One step of the layer, for callers that interleave steps with other
    /// work (GFNet's policy): the same as [`GruCell::forward`] with this
    /// layer's weights.
    ///
    /// # Shapes
    /// `x` `[N, input]`, `h` `[N, hidden]` → `[N, hidden]`.
    pub fn step(&self, x: &Tensor, h: Option<&Tensor>) -> Result<Tensor> {
        let h = self.w.check_step(x, h, "gru")?;
        self.w.step(&self.w.project_input(x)?, &h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_golden, assert_grads, fixture, get, var_builder};
    use candle_core::{DType, Device};

    const CELL_PARAMS: [&str; 4] = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"];
    const GRU_PARAMS: [&str; 4] = ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"];

    #[test]
    fn cell_matches_pytorch() -> Result<()> {
        // nn.GRUCell(5, 4) with a hidden state: the output and the gradients
        // of sum(h' · r) for the input, the state and all four parameters.
        let f = fixture("layers.safetensors")?;
        let (vars, vb) = var_builder(&f)?;
        let cell = GruCell::new(vb.pp("gru_cell"), 5, 4, true)?;
        let var = |k: &str| vars[&format!("gru_cell.{k}")].as_tensor().clone();
        let y = cell.forward(&var("x"), Some(&var("h")))?;
        assert_golden("gru cell", &y, get(&f, "gru_cell.y"))?;
        let grads = (y * get(&f, "gru_cell.r"))?.sum_all()?.backward()?;
        assert_grads(&f, &vars, &grads, "gru_cell", &["x", "h"])?;
        assert_grads(&f, &vars, &grads, "gru_cell", &CELL_PARAMS)
    }

    #[test]
    fn sequence_matches_pytorch() -> Result<()> {
        // nn.GRU(5, 4) over 3 steps, sequence-first, with h0 [1, N, H] and
        // without: all outputs, h_n and the gradients of
        // sum(out · r) + sum(h_n · r_h).
        let f = fixture("layers.safetensors")?;
        let (vars, vb) = var_builder(&f)?;
        for (case, with_h0) in [("gru", true), ("gru_zero_h0", false)] {
            let gru = Gru::new(vb.pp(case), 5, 4, true)?;
            let var = |k: &str| vars[&format!("{case}.{k}")].as_tensor().clone();
            let h0 = if with_h0 { Some(var("h0")) } else { None };
            let (out, h) = gru.forward(&var("x"), h0.as_ref())?;
            assert_golden(&format!("{case} out"), &out, get(&f, &format!("{case}.out")))?;
            let h_n = get(&f, &format!("{case}.h_n")).squeeze(0)?;
            assert_golden(&format!("{case} h_n"), &h, &h_n)?;
            let r_h = get(&f, &format!("{case}.r_h")).squeeze(0)?;
            let loss = ((out * get(&f, &format!("{case}.r")))?.sum_all()? + (h * r_h)?.sum_all()?)?;
            let grads = loss.backward()?;
            assert_grads(&f, &vars, &grads, case, if with_h0 { &["x", "h0"] } else { &["x"] })?;
            assert_grads(&f, &vars, &grads, case, &GRU_PARAMS)?;
        }
        Ok(())
    }

    #[test]
    fn shapes_are_checked() -> Result<()> {
        let dev = Device::Cpu;
        let vb = VarBuilder::zeros(DType::F32, &dev);
        let cell = GruCell::new(vb.clone(), 3, 4, true)?;
        let x = Tensor::zeros((2, 5), DType::F32, &dev)?;
        assert!(cell.forward(&x, None).unwrap_err().to_string().contains("expected 3 input features"));
        let x = Tensor::zeros((2, 3), DType::F32, &dev)?;
        let h = Tensor::zeros((3, 4), DType::F32, &dev)?;
        assert!(cell.forward(&x, Some(&h)).unwrap_err().to_string().contains("hidden state [2, 4]"));
        let gru = Gru::new(vb.clone(), 3, 4, false)?;
        let xs = Tensor::zeros((0, 2, 3), DType::F32, &dev)?;
        assert!(gru.forward(&xs, None).unwrap_err().to_string().contains("empty"));
        assert!(gru.forward(&x, None).unwrap_err().to_string().contains("[T, N, 3]"));
        assert!(GruCell::new(vb, 0, 4, true).is_err());
        Ok(())
    }

    #[test]
    fn batch_first_and_steps_agree_with_sequence_first() -> Result<()> {
        let dev = Device::Cpu;
        let vm = candle_nn::VarMap::new();
        let gru = Gru::new(VarBuilder::from_varmap(&vm, DType::F32, &dev), 3, 4, true)?;
        let xs = Tensor::randn(0f32, 1.0, (5, 2, 3), &dev)?;
        let (out, h) = gru.forward(&xs, None)?;
        let (out_bf, h_bf) = gru.forward_batch_first(&xs.transpose(0, 1)?, None)?;
        let diff = |a: &Tensor, b: &Tensor| -> Result<f32> { (a - b)?.abs()?.max_all()?.to_scalar::<f32>() };
        assert_eq!(diff(&out, &out_bf.transpose(0, 1)?)?, 0.0);
        assert_eq!(diff(&h, &h_bf)?, 0.0);
        let mut hs = None;
        for s in 0..5 {
            hs = Some(gru.step(&xs.get(s)?, hs.as_ref())?);
        }
        let Some(hs) = hs else { panic!("no steps") };
        assert!(diff(&h, &hs)? < 1e-6);
        assert!(diff(&h, &out.get(4)?)? < 1e-6);
        Ok(())
    }

    /// The layers count what the counter's rules say: 3·(in·h + h·h) MACs
    /// per vector and step, params once.
    #[test]
    fn counts_flops() -> Result<()> {
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let cell = GruCell::new(vb.pp("cell"), 5, 4, true)?;
        let gru = Gru::new(vb.pp("gru"), 5, 4, false)?;
        let err = |e: anytime_flops::Error| candle_core::Error::Msg(e.to_string());
        let mut c = Counter::with_headline(anytime_flops::Mode::Macs);
        cell.count_flops(&mut c, 2).map_err(err)?;
        assert_eq!(c.current().macs, 2 * 3 * (5 * 4 + 4 * 4));
        assert_eq!(c.current().params, 3 * 4 * (5 + 4) + 6 * 4);
        let mut c = Counter::with_headline(anytime_flops::Mode::Macs);
        let out = gru.count_flops(&mut c, 2, 3).map_err(err)?;
        assert_eq!(out.dims(), &[2, 4]);
        assert_eq!(c.current().macs, 3 * 2 * 3 * (5 * 4 + 4 * 4));
        assert_eq!(c.current().params, 3 * 4 * (5 + 4));
        Ok(())
    }
}
