//! Synthetic weights from an integer formula that any language reproduces
//! bit for bit: parity fixtures of large networks (GFNet's two ResNet-18
//! encoders hold 23 M parameters) store only their key list and outputs,
//! and the test recomputes the weights.
//!
//! For a tensor under `key` (its full name), with elements in row-major
//! order:
//!
//! ```text
//! s = fnv1a64(key as UTF-8)            (0 is replaced by 0x9E3779B97F4A7C15)
//! next(): s ^= s >> 12; s ^= s << 25; s ^= s >> 27; return s · 0x2545F4914F6CDD1D   (mod 2^64)
//! u = ((next() >> 54) − 512) / 512      (10 bits, in [−1, 1))
//! value = 1 + u/2        for keys ending in `running_var`, and 1-d `*.weight` (batch norm)
//!       = u/8            for keys ending in `running_mean`
//!       = u/16           for other 1-d tensors (biases)
//!       = u·2^(1−e)      for tensors of 2 or more dimensions, with 4^e ≤ fan-in < 4^(e+1)
//!                        (fan-in = elements / first dimension)
//! ```
//!
//! The gain of about 2 on weights (near He's initialisation) keeps the
//! signal alive through deep stacks, so a fixture's outputs depend on its
//! input.
//!
//! Every value is a dyadic rational with at most 11 significant bits, exact
//! in f16 and f32. `scripts/fixtures/gfnet.py` is the Python side.
//!
//! ```
//! let t = anytime_io::synthetic::tensor("fc.bias", &[3]).unwrap();
//! let v = t.to_vec1::<f32>().unwrap();
//! assert!(v.iter().all(|x| x.abs() <= 1.0 / 16.0));
//! assert_eq!(v, anytime_io::synthetic::tensor("fc.bias", &[3]).unwrap().to_vec1::<f32>().unwrap());
//! ```

use candle_core::{Device, Result, Tensor};

/// FNV-1a, 64 bits.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// The formula's values for `key` and `shape` (see the module docs).
pub fn values(key: &str, shape: &[usize]) -> Vec<f32> {
    let numel: usize = shape.iter().product();
    let mut s = fnv1a64(key.as_bytes());
    if s == 0 {
        s = 0x9E37_79B9_7F4A_7C15;
    }
    let mut next = move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        s.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let (scale, offset) = if key.ends_with("running_var") || (shape.len() == 1 && key.ends_with(".weight")) {
        (0.5, 1.0)
    } else if key.ends_with("running_mean") {
        (0.125, 0.0)
    } else if shape.len() < 2 {
        (0.0625, 0.0)
    } else {
        let fan_in = numel / shape[0].max(1);
        // The largest e with 4^e <= fan_in.
        let e = (0..32).take_while(|&e| 4usize.checked_pow(e + 1).is_some_and(|p| p <= fan_in)).count() as i32;
        (0.5f64.powi(e - 1), 0.0)
    };
    (0..numel)
        .map(|_| {
            let u = ((next() >> 54) as f64 - 512.0) / 512.0;
            (offset + scale * u) as f32
        })
        .collect()
}

/// The formula's tensor for `key` and `shape`, on the CPU.
pub fn tensor(key: &str, shape: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(values(key, shape), shape, &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_and_scales() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        let w = values("conv.weight", &[4, 16, 1, 1]); // fan-in 16: e = 2, scale 1/2
        assert!(w.iter().all(|x| x.abs() <= 0.5) && w.iter().any(|x| x.abs() > 0.25));
        let w = values("conv.weight", &[4, 15, 1, 1]); // fan-in 15: e = 1, scale 1
        assert!(w.iter().any(|x| x.abs() > 0.5));
        // The Python side's known answer (scripts/fixtures/gfnet.py): u = -193/512, -489/512, … at e = 4.
        assert_eq!(fnv1a64(b"policy.actor.0.weight"), 0xe8d1_ef5c_93d6_b988);
        let a = values("policy.actor.0.weight", &[2, 256]);
        assert_eq!(&a[..2], &[-193.0 / 512.0 / 8.0, -489.0 / 512.0 / 8.0]);
        let bn = values("bn.weight", &[64]);
        assert!(bn.iter().all(|x| (0.5..1.5).contains(x)));
        let var = values("bn.running_var", &[64]);
        assert!(var.iter().all(|x| (0.5..1.5).contains(x)));
        // At most 11 significant bits: the low 13 of f32's 23 mantissa bits are 0.
        for x in values("layer.weight", &[8, 300]) {
            assert_eq!(x.to_bits() & 0x1fff, 0, "{x}");
        }
        // Different keys give different streams.
        assert_ne!(values("a.weight", &[2, 2]), values("b.weight", &[2, 2]));
    }
}
