//! Tensor operations for adaptive-inference (multi-exit) networks, on Candle.
//!
//! Candle 0.11 lacks or gets wrong several ops these networks need; this crate
//! provides them with forward **and** backward passes, and fast CPU kernels
//! for the hot ones:
//!
//! - [`conv`]: 2-D convolution (custom ops on CPU: shifted sums on padded
//!   planes, run by AVX2/FMA register-blocked kernels where the CPU has them
//!   (in 512-bit registers where it has AVX-512F: the forward and input
//!   gradient blocks with the AVX2 form's bits, the weight gradient's sums
//!   over 16 lanes) and by one GEMM per kernel tap elsewhere, direct
//!   depthwise kernels (stride 1 on zero-padded planes, larger strides on
//!   the planes' phases, the same bits on every instruction set and thread
//!   count), im2col + GEMM kept for
//!   comparison, and on AVX-512 a Winograd F(2×2, 3×3) forward and input
//!   gradient for 3×3 stride-1 convolutions of 24 channels and more), and the
//!   fused inference convolutions `conv2d_scale_bias_act` (a batch norm
//!   after the convolution as a per-channel scale and shift) and
//!   `conv2d_bias_act`, the ReLU applied as the output is stored;
//! - [`conv_transpose`]: 2-D transposed convolution (`nn.ConvTranspose2d`:
//!   stride, padding, output padding) on the same kernels, the roles of
//!   forward and input gradient swapped;
//! - [`dropout`]: seeded dropout and per-sample drop-path (stochastic depth);
//! - [`norm`]: batch normalisation (training and eval, fused ReLU, folding);
//! - [`pool`]: average / max pooling with padding and correct gradients,
//!   adaptive and global average pooling;
//! - [`resize`]: differentiable bilinear and bicubic resizing (PyTorch's
//!   `F.interpolate`, both `align_corners`);
//! - [`loss`]: cross-entropy with label smoothing, KL divergence at a
//!   temperature for distillation, top-1 correct count;
//! - [`act`]: `relu6`, `hard_sigmoid`, `hard_swish`;
//! - [`batch`]: batch compaction for real early exit, reassembly in the
//!   original order, per-sample zero-padded crops.
//!
//! Everything returns `candle_core::Result`.
//!
//! The kernels split their work over rayon's global pool. Run a training or
//! inference loop through [`on_worker`] (the `anytime` binary runs every
//! command so): called from a pool thread, a kernel keeps part of its work
//! on the calling thread instead of handing all of it over and sleeping
//! until it is done.
//!
//! ```
//! use anytime_ops::conv::{conv2d, Conv2dParams};
//! use anytime_ops::loss::cross_entropy;
//! use anytime_ops::pool::{global_avg_pool, max_pool2d};
//! use anytime_ops::resize::bilinear;
//! use candle_core::{Device, Tensor};
//! # fn main() -> candle_core::Result<()> {
//! let x = Tensor::ones((1, 2, 5, 5), candle_core::DType::F32, &Device::Cpu)?;
//! let w = Tensor::ones((3, 2, 3, 3), candle_core::DType::F32, &Device::Cpu)?;
//! let y = conv2d(&x, &w, None, Conv2dParams { padding: 1, ..Default::default() })?;
//! assert_eq!(y.dims(), &[1, 3, 5, 5]);
//! let p = max_pool2d(&y, (3, 3), (2, 2), (1, 1))?;
//! assert_eq!(p.dims(), &[1, 3, 3, 3]);
//! let up = bilinear(&p, (6, 6), false)?;
//! let logits = global_avg_pool(&up)?; // [1, 3]
//! let loss = cross_entropy(&logits, &Tensor::new(&[2u32], &Device::Cpu)?, 0.1)?;
//! assert!(loss.to_scalar::<f32>()? > 0.0);
//! # Ok(()) }
//! ```

pub mod act;
pub mod batch;
pub mod conv;
pub mod conv_transpose;
pub mod dropout;
mod kernels;
pub mod loss;
pub mod norm;
pub mod pool;
pub mod resize;
#[cfg(test)]
pub(crate) mod test_util;

use std::sync::atomic::{AtomicBool, Ordering};

static STOCK: AtomicBool = AtomicBool::new(false);

/// Makes [`conv::conv2d`] and the batch norms use Candle's stock ops instead of
/// this crate's CPU kernels (process-wide). For benchmarks and comparisons.
pub fn set_stock_ops(on: bool) {
    STOCK.store(on, Ordering::Relaxed);
}

/// The convolution micro-kernels this CPU runs, chosen at run time:
/// `"AVX-512 (direct and Winograd F(2x2, 3x3) convolutions, weight
/// gradients), AVX2/FMA"` (x86-64 with AVX-512F: the direct convolution's
/// forward and input-gradient blocks, its weight-gradient sums and the
/// Winograd forward of 3×3 stride-1 convolutions with at least 24 channels
/// in and out and at most 256 together, in 512-bit registers, the rest AVX2; without the Winograd forward when
/// [`conv::set_winograd`] turned it off), `"AVX2/FMA"` (AVX2 and FMA) or
/// `"generic"` (GEMM paths only). For benchmark reports.
pub fn kernel_set() -> &'static str {
    if kernels::direct::use_avx512() && conv::winograd_enabled() {
        "AVX-512 (direct and Winograd F(2x2, 3x3) convolutions, weight gradients), AVX2/FMA"
    } else if kernels::direct::use_avx512() {
        "AVX-512 (direct convolutions and weight gradients), AVX2/FMA"
    } else if kernels::direct::available() {
        "AVX2/FMA"
    } else {
        "generic"
    }
}

/// Runs `f` on a thread of rayon's global pool and returns its result (at
/// once, on the calling thread, when that is a pool thread already or the
/// pool has a single thread).
///
/// Every CPU kernel of this crate splits its work with rayon. Called from a
/// thread outside the pool, such as a program's main thread, a parallel
/// kernel hands all of its work to the pool and puts the caller to sleep
/// until it is done: two thread wake-ups per kernel call, hundreds per
/// training step of a small multi-exit network. Called from a pool thread,
/// it runs a part on that thread while the others take the rest, the way
/// PyTorch's intra-op threads include the calling thread. On 2 cores this
/// took MSDNet's and RANet's CIFAR training steps to 0.81–0.97 of the time
/// in two A/B runs (`docs/log/2026-12-03-winograd-and-pool.md`).
///
/// With a single pool thread `f` stays where it is: a loop that waits on a
/// background thread which itself needs the pool (the data loaders decode
/// in parallel) would otherwise wait for ever.
///
/// ```
/// let sum = anytime_ops::on_worker(|| (1..=4).sum::<u32>());
/// assert_eq!(sum, 10);
/// ```
pub fn on_worker<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() || rayon::current_num_threads() < 2 {
        return f();
    }
    rayon::scope(|_| f())
}

/// Whether [`set_stock_ops`] is on.
pub fn stock_ops() -> bool {
    STOCK.load(Ordering::Relaxed)
}

/// Stops Candle's CPU "barrier pool" threads from spinning, unless the user
/// chose a limit in `CANDLE_BARRIER_POOL_SPIN_LIMIT`. Candle runs large
/// element-wise ops on those threads, which spin for 25,000 iterations after
/// each op before they sleep; on a 2-core machine the spinning takes a core
/// from this crate's rayon kernels. A `ranet-fmnist` training step took
/// 1057 ms with the default and 956 ms without spinning (mean of three
/// alternating `cargo xtask bench` runs, docs/results.md). Binaries call it
/// first thing in `main`.
///
/// # Safety
/// It sets an environment variable: call it before any other thread exists
/// (see [`std::env::set_var`]).
pub unsafe fn no_barrier_spin_unless_set() {
    const VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(VAR).is_none() {
        // SAFETY: the caller guarantees that no other thread exists.
        unsafe { std::env::set_var(VAR, "0") };
    }
}

/// Compiles and runs the README's example as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctest;

/// Backward on the workspace's candle-core (vendor/): intermediate values
/// only the graph holds are dropped as the backward passes them, the rest
/// are kept, and a second backward through the graph is an error.
#[cfg(test)]
mod backward_release {
    use candle_core::{DType, Device, Result, Tensor, Var};

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-4 * y.abs().max(1.0))
    }

    #[test]
    fn gradients_and_values_held_outside_the_graph_are_kept() -> Result<()> {
        let xs = [0.5f32, -1.0, 0.25];
        let x = Var::new(&xs, &Device::Cpu)?;
        let a = (x.as_tensor() * 3.0)?; // held here
        let loss = a.exp()?.sqr()?.sum_all()?; // exp and sqr: the graph's only
        let g = loss.backward()?;
        // d/dx Σ exp(3x)² = 6·exp(6x)
        let want: Vec<f32> = xs.iter().map(|v| 6.0 * (6.0 * v).exp()).collect();
        assert!(close(&g.get(&x).expect("a gradient").to_vec1::<f32>()?, &want));
        assert_eq!(a.to_vec1::<f32>()?, [1.5, -3.0, 0.75]);
        let total: f32 = xs.iter().map(|v| (6.0 * v).exp()).sum();
        assert!(close(&[loss.to_scalar::<f32>()?], &[total]));
        Ok(())
    }

    #[test]
    fn a_second_backward_through_a_released_graph_is_an_error() -> Result<()> {
        let x = Var::new(&[0.5f32, -1.0], &Device::Cpu)?;
        let loss = (x.as_tensor() * 3.0)?.exp()?.sum_all()?;
        loss.backward()?;
        let err = loss.backward().expect_err("the graph's values were released").to_string();
        assert!(err.contains("released"), "{err}");
        // A graph built again gives the same gradient.
        let again = (x.as_tensor() * 3.0)?.exp()?.sum_all()?.backward()?;
        let want: Vec<f32> = [0.5f32, -1.0].iter().map(|v| 3.0 * (3.0 * v).exp()).collect();
        assert!(close(&again.get(&x).expect("a gradient").to_vec1::<f32>()?, &want));
        Ok(())
    }

    #[test]
    fn custom_op_gradients_match_a_graph_that_keeps_everything() -> Result<()> {
        // The same convolution, batch norm and ReLU twice: once with every
        // intermediate held here (nothing released), once graph-only.
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 6, 6), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (4, 3, 3, 3), &dev)?)?;
        let gamma = Var::from_tensor(&Tensor::ones(4, DType::F32, &dev)?)?;
        let beta = Var::from_tensor(&Tensor::zeros(4, DType::F32, &dev)?)?;
        let p = crate::conv::Conv2dParams { padding: 1, ..Default::default() };
        let step = |hold: bool| -> Result<(Vec<Vec<f32>>, Vec<Tensor>)> {
            let y = crate::conv::conv2d(x.as_tensor(), w.as_tensor(), None, p)?;
            let z = crate::norm::batch_norm_train(&y, gamma.as_tensor(), beta.as_tensor(), 1e-5, true)?.ys;
            let pooled = crate::pool::global_avg_pool(&z)?;
            let loss = pooled.sqr()?.sum_all()?;
            let held = if hold {
                vec![y, z, pooled]
            } else {
                drop((y, z, pooled));
                Vec::new()
            };
            let g = loss.backward()?;
            let grads = [&x, &w, &gamma, &beta]
                .iter()
                .map(|v| g.get(v).expect("a gradient").flatten_all()?.to_vec1::<f32>())
                .collect::<Result<_>>()?;
            Ok((grads, held))
        };
        let (kept, held) = step(true)?;
        let (released, _) = step(false)?;
        for (a, b) in released.iter().zip(&kept) {
            assert!(close(a, b));
        }
        // The held intermediates still read.
        assert_eq!(held[2].dims(), &[2, 4]);
        assert!(held[1].flatten_all()?.to_vec1::<f32>()?.iter().all(|v| *v >= 0.0));
        Ok(())
    }
}
