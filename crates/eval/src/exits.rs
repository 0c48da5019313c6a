//! The only place this crate runs a model's exits: every evaluation goes
//! through these two functions, so a change of the model interface
//! ([`MultiExit`]) touches this file alone.

use anytime_blocks::Mode;
use anytime_models::{Anytime, MultiExit};
use candle_core::Tensor;
use std::time::Instant;

/// Logits `[N, classes]` of every exit for `xs` `[N, C, H, W]`, in eval mode.
pub fn exit_logits(model: &dyn MultiExit, xs: &Tensor) -> candle_core::Result<Vec<Tensor>> {
    Ok(model.forward_exits(xs, &Mode::inference())?.into_iter().map(|o| o.logits).collect())
}

/// Logits of every exit for `xs` with the lazy anytime pass (eval mode),
/// adding to `seconds[k]` the wall-clock time from the start of the pass until
/// exit `k`'s logits were computed (so exit `k` includes every stage before
/// it). `seconds` needs one entry per exit.
pub fn timed_exit_logits(model: &dyn MultiExit, xs: &Tensor, seconds: &mut [f64]) -> candle_core::Result<Vec<Tensor>> {
    if seconds.len() != model.num_exits() {
        candle_core::bail!("{} timers for {} exits", seconds.len(), model.num_exits());
    }
    let start = Instant::now();
    let mut logits = Vec::with_capacity(seconds.len());
    for (i, l) in Anytime::new(model, xs)?.enumerate() {
        // Force the computation before reading the clock.
        let l = l?.logits.contiguous()?;
        seconds[i] += start.elapsed().as_secs_f64();
        logits.push(l);
    }
    Ok(logits)
}
