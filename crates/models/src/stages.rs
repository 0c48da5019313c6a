//! The one description of a model's stages, from which running, compaction
//! and per-exit costs all come.
//!
//! A model lists its stages once, at build time: stage k is a list of
//! [`Step`]s (stems, blocks, transitions, "start the next flow" …) and exit
//! k's head. A step works on the model's *carry*, the typed structure a pass
//! holds between steps: over tensors when running ([`Step::forward`]), over
//! shapes when counting FLOPs ([`Step::count`]). [`Stages::advance`] runs one
//! stage, [`Stages::costs`] counts all of them by walking the same list, and
//! the tensor carry knows how to keep a subset of the batch ([`Compact`]), the
//! compaction behind real early exit.
//!
//! ```
//! use anytime_models::stages::{Chain, Compact};
//! use candle_core::{Device, Tensor};
//! # fn main() -> candle_core::Result<()> {
//! let carry = Chain { x: Tensor::arange(0f32, 6., &Device::Cpu)?.reshape((3, 2))? };
//! let kept = carry.select(&[2, 0])?;
//! assert_eq!(kept.x.to_vec2::<f32>()?, vec![vec![4., 5.], vec![0., 1.]]);
//! # Ok(()) }
//! ```

use crate::exit::{ExitOutput, ExitState};
use anytime_blocks::Mode;
use anytime_flops::{Counter, ExitCosts, Shape4};
use anytime_heads::{ConvHead, ExitHead};
use candle_core::{Tensor, bail};

/// A carry that can keep a subset of the batch: the samples at positions
/// `keep`, in that order.
pub trait Compact: Sized {
    /// The carry restricted to the rows `keep` of every tensor.
    fn select(&self, keep: &[u32]) -> candle_core::Result<Self>;
}

impl Compact for Tensor {
    fn select(&self, keep: &[u32]) -> candle_core::Result<Self> {
        anytime_ops::batch::select_rows(self, keep)
    }
}

impl<T: Compact> Compact for Vec<T> {
    fn select(&self, keep: &[u32]) -> candle_core::Result<Self> {
        self.iter().map(|t| t.select(keep)).collect()
    }
}

impl<T: Compact> Compact for Option<T> {
    fn select(&self, keep: &[u32]) -> candle_core::Result<Self> {
        self.as_ref().map(|t| t.select(keep)).transpose()
    }
}

/// What a pass carries between steps, over values `V` ([`Tensor`] when
/// running, [`Shape4`] when counting).
pub trait Carry<V>: Sized {
    /// The carry before the first step: the input alone.
    fn start(input: V) -> Self;
    /// The map the stage's exit head reads, once the stage's steps have run.
    fn head_input(&self) -> Option<&V>;
}

/// One step of a stage.
pub trait Step: std::fmt::Debug + Send + Sync {
    /// The carry over tensors.
    type State: Carry<Tensor> + Compact + Clone + std::fmt::Debug + Send + Sync + 'static;
    /// The carry over shapes.
    type Shapes: Carry<Shape4>;
    /// Runs the step on a batch.
    fn forward(&self, carry: &mut Self::State, mode: &Mode) -> candle_core::Result<()>;
    /// Adds the step's cost of one image and moves the shapes on.
    fn count(&self, carry: &mut Self::Shapes, c: &mut Counter) -> anytime_flops::Result<()>;
}

/// One stage: its steps, then its exit's head (the MSDNet classifier unless
/// the model says otherwise).
#[derive(Debug, Clone)]
pub struct Stage<S, H = ConvHead> {
    /// The steps, in forward order.
    pub steps: Vec<S>,
    /// The exit's classifier.
    pub head: H,
}

impl<S> Stage<S, ConvHead> {
    /// For the chain models (ResNet-MC, DenseNet-MC): after `done` units,
    /// when the next exit (`exits[list.len()]`) follows them, closes the
    /// stage with the `steps` gathered so far and a globally pooled
    /// `classifier.<k>` head on `channels` channels.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn close_chain_stage(
        list: &mut Vec<Stage<S>>,
        steps: &mut Vec<S>,
        exits: &[usize],
        done: usize,
        vb: &candle_nn::VarBuilder,
        channels: usize,
        head_channels: usize,
        num_classes: usize,
    ) -> candle_core::Result<()> {
        if exits.get(list.len()) == Some(&done) {
            let head = ConvHead::with_pool(
                vb.pp("classifier").pp(list.len()),
                channels,
                head_channels,
                num_classes,
                anytime_heads::HeadPool::Global,
            )?;
            list.push(Stage { steps: std::mem::take(steps), head });
        }
        Ok(())
    }
}

/// Every stage of a model, in forward order.
#[derive(Debug, Clone)]
pub struct Stages<S, H = ConvHead> {
    arch: &'static str,
    list: Vec<Stage<S, H>>,
}

/// The single-tensor carry of chain models (ResNet-MC, DenseNet-MC): the
/// current map.
#[derive(Debug, Clone)]
pub struct Chain<V> {
    /// The current map.
    pub x: V,
}

impl<V> Carry<V> for Chain<V> {
    fn start(input: V) -> Self {
        Self { x: input }
    }

    fn head_input(&self) -> Option<&V> {
        Some(&self.x)
    }
}

impl Compact for Chain<Tensor> {
    fn select(&self, keep: &[u32]) -> candle_core::Result<Self> {
        Ok(Self { x: self.x.select(keep)? })
    }
}

impl<S: Step, H: ExitHead> Stages<S, H> {
    /// The stages of architecture `arch`.
    pub fn new(arch: &'static str, list: Vec<Stage<S, H>>) -> Self {
        Self { arch, list }
    }

    /// Number of stages (= exits).
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are no stages.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The stages.
    pub fn list(&self) -> &[Stage<S, H>] {
        &self.list
    }

    /// Cumulative per-exit cost of one image of shape `input`, from shapes.
    pub fn costs(&self, input: Shape4) -> anytime_flops::Result<ExitCosts> {
        self.costs_with(Counter::new(), input)
    }

    /// [`Stages::costs`] with a counter of the caller's (another headline).
    pub fn costs_with(&self, mut c: Counter, input: Shape4) -> anytime_flops::Result<ExitCosts> {
        let mut carry = S::Shapes::start(input);
        for (k, stage) in self.list.iter().enumerate() {
            for step in &stage.steps {
                step.count(&mut carry, &mut c)?;
            }
            let x = *carry.head_input().ok_or_else(|| {
                anytime_flops::Error::Shape(format!("{}: nothing left for exit {k}'s head", self.arch))
            })?;
            stage.head.count(&mut c, x)?;
            c.mark_exit();
        }
        c.try_finish()
    }

    /// A pass over `xs` before stage 0.
    pub fn begin(&self, xs: &Tensor) -> candle_core::Result<ExitState> {
        Ok(ExitState::new(xs.dim(0)?, S::State::start(xs.clone())))
    }

    /// Runs the next stage of `state` and returns its exit's output.
    pub fn advance(&self, state: &mut ExitState, mode: &Mode) -> candle_core::Result<ExitOutput> {
        let k = state.next_exit();
        let Some(stage) = self.list.get(k) else {
            bail!("{}: all {} exits were already computed", self.arch, self.list.len())
        };
        let arch = self.arch;
        let carry = state
            .carry_mut::<S::State>()
            .ok_or_else(|| candle_core::Error::Msg(format!("{arch}: the pass state was not started by this model")))?;
        for step in &stage.steps {
            step.forward(carry, mode)?;
        }
        let Some(x) = carry.head_input() else { bail!("{arch}: nothing left for exit {k}'s head") };
        let out = stage.head.forward_t(x, mode)?;
        state.finish_stage();
        Ok(ExitOutput { logits: out.logits, feature: out.feature })
    }
}
