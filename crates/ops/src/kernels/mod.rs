//! CPU kernels behind the custom ops: GEMM wrapper, im2col / col2im, direct
//! depthwise convolution, and
//! helpers to read Candle storages.
//!
//! Every kernel is deterministic for a given thread count: work is split into
//! a fixed number of contiguous chunks and partial sums are reduced in order.

pub(crate) mod bn;
pub(crate) mod conv;
pub(crate) mod depthwise;
pub(crate) mod direct;
pub(crate) mod pool;
pub(crate) mod shift;
#[cfg(target_arch = "x86_64")]
pub(crate) mod winograd;

use candle_core::{CpuStorage, Layout, Result, bail};
use std::cell::RefCell;
use std::mem::MaybeUninit;

/// A vector of `len` floats written by `fill`, with room for `extra` more,
/// without first zero-filling it (a full memory pass per output otherwise).
///
/// # Safety
/// `fill` must write every one of the `len` elements it is given.
pub(crate) unsafe fn written_vec(len: usize, extra: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut v = Vec::with_capacity(len + extra);
    fill(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: the capacity is at least `len`, and the caller guarantees that
    // `fill` initialised elements `0..len`.
    unsafe { v.set_len(len) };
    v
}

/// The contiguous f32 data of a storage/layout pair.
pub(crate) fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v.as_slice(),
        _ => bail!("{what}: expected f32 data"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("{what}: the input must be contiguous"),
    }
}

/// Number of rayon worker threads.
pub(crate) fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// `dst (m x n) = [dst +] lhs (m x k) · rhs (k x n)` with arbitrary row/column
/// strides (in elements). `parallel` lets the GEMM use rayon internally.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    (dst_rs, dst_cs): (usize, usize),
    accumulate: bool,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    let span = |rs: usize, cs: usize, r: usize, c: usize| (r - 1) * rs + (c - 1) * cs + 1;
    assert!(dst.len() >= span(dst_rs, dst_cs, m, n), "gemm: dst too small");
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    dst[i * dst_rs + j * dst_cs] = 0.0;
                }
            }
        }
        return;
    }
    assert!(lhs.len() >= span(lhs_rs, lhs_cs, m, k), "gemm: lhs too small");
    assert!(rhs.len() >= span(rhs_rs, rhs_cs, k, n), "gemm: rhs too small");
    let par = if parallel && threads() > 1 { gemm::Parallelism::Rayon(threads()) } else { gemm::Parallelism::None };
    // SAFETY: the asserts above guarantee every strided access is in bounds.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}

thread_local! {
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Runs `f` with this thread's two scratch buffers resized to `a` and `b`
/// elements (contents unspecified), reusing the allocations across calls.
pub(crate) fn with_scratch<R>(a: usize, b: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut bufs) => {
            let (x, y) = &mut *bufs;
            if x.len() < a {
                x.resize(a, 0.0);
            }
            if y.len() < b {
                y.resize(b, 0.0);
            }
            f(&mut x[..a], &mut y[..b])
        }
        // Re-entrant use (should not happen): fall back to fresh buffers.
        Err(_) => f(&mut vec![0.0; a], &mut vec![0.0; b]),
    })
}

/// `dst.copy_from_slice(src)` for the short rows of small feature maps
/// (`min(dst.len(), src.len())` values): fixed-size pieces of 16, 8, 4, 2
/// and 1 floats that the compiler keeps inline (a `memcpy` call per 28-float
/// row, or for the 12 floats after the first 16, cost a fifth of the
/// depthwise bench case).
#[inline(always)]
pub(crate) fn copy_short(dst: &mut [f32], src: &[f32]) {
    #[inline(always)]
    fn piece<const N: usize>(dst: &mut [f32], src: &[f32], i: &mut usize) {
        if let (Some(d), Some(s)) = (dst.get_mut(*i..*i + N), src.get(*i..*i + N))
            && let (Ok(d), Ok(s)) = (<&mut [f32; N]>::try_from(d), <&[f32; N]>::try_from(s))
        {
            *d = *s;
            *i += N;
        }
    }
    let n = dst.len().min(src.len());
    let mut i = 0;
    for _ in 0..n / 16 {
        piece::<16>(dst, src, &mut i);
    }
    piece::<8>(dst, src, &mut i);
    piece::<4>(dst, src, &mut i);
    piece::<2>(dst, src, &mut i);
    piece::<1>(dst, src, &mut i);
}

/// Which instruction set a kernel body is compiled for by [`per_isa!`] (the
/// same operations in the same order on every one, so the same results:
/// only the vector width differs).
#[derive(Clone, Copy)]
pub(crate) enum Isa {
    Generic,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

/// The widest instruction set this CPU runs (and the switches allow).
pub(crate) fn isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if direct::use_avx512() {
            return Isa::Avx512;
        }
        if direct::available() {
            return Isa::Avx2;
        }
    }
    Isa::Generic
}

/// Instantiates a plane function for each instruction set and dispatches on
/// [`isa`].
macro_rules! per_isa {
    ($name:ident, $body:ident, ($($arg:ident: $ty:ty),*)) => {
        fn $name(isa: $crate::kernels::Isa, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) {
                $body($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx2,fma")]
            unsafe fn avx512($($arg: $ty),*) {
                $body($($arg),*)
            }
            match isa {
                $crate::kernels::Isa::Generic => $body($($arg),*),
                // SAFETY: `isa` reports these features only where the CPU has them.
                #[cfg(target_arch = "x86_64")]
                $crate::kernels::Isa::Avx2 => unsafe { avx2($($arg),*) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                $crate::kernels::Isa::Avx512 => unsafe { avx512($($arg),*) },
            }
        }
    };
}
pub(crate) use per_isa;
