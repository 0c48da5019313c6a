//! Raw little-endian tensor bytes to `f32` CPU tensors, shared by both file formats.

use candle_core::{DType, Device, Tensor, bail};

/// Tensors as a file stores them: key and decoded tensor, in file order.
pub(crate) type NamedTensors = Vec<(String, Tensor)>;

/// Decodes `bytes`, laid out as a contiguous little-endian `dtype` tensor of `shape`, into an
/// `f32` CPU tensor.
///
/// # Shapes
/// `bytes` must hold exactly `shape.iter().product()` elements of `dtype`; the result has `shape`.
///
/// # Errors
/// When `dtype` is not a float type or the byte count does not match the shape.
pub(crate) fn decode_f32(bytes: &[u8], dtype: DType, shape: &[usize]) -> candle_core::Result<Tensor> {
    if !dtype.is_float() {
        bail!("cannot decode {dtype:?} data as a float tensor");
    }
    let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    let expected = numel.and_then(|n| n.checked_mul(dtype.size_in_bytes()));
    if expected != Some(bytes.len()) {
        bail!("{} bytes cannot hold a {dtype:?} tensor of shape {shape:?}", bytes.len());
    }
    Tensor::from_raw_buffer(bytes, dtype, shape, &Device::Cpu)?.to_dtype(DType::F32)
}

/// Whether `key` with `shape` is a BatchNorm `num_batches_tracked` counter (an integer scalar),
/// which loading drops: no module reads it at inference.
pub(crate) fn is_batch_counter(key: &str, shape: &[usize]) -> bool {
    shape.is_empty() && (key == "num_batches_tracked" || key.ends_with(".num_batches_tracked"))
}

/// The PyTorch name of a float dtype, for error messages.
pub(crate) fn torch_name(dtype: DType) -> String {
    match dtype {
        DType::F32 => "float32".into(),
        DType::F64 => "float64".into(),
        DType::F16 => "float16".into(),
        DType::BF16 => "bfloat16".into(),
        DType::I64 => "int64".into(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_float_dtype_to_f32() {
        // Little-endian bit patterns of [1.0, -2.5] in each dtype
        // (f16 1.0 = 0x3c00, bf16 -2.5 = 0xc020, ...).
        let cases: [(DType, &[u8]); 4] = [
            (DType::F32, &[0, 0, 0x80, 0x3f, 0, 0, 0x20, 0xc0]),
            (DType::F64, &[0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 0, 0, 0, 0, 0, 0, 0x04, 0xc0]),
            (DType::F16, &[0x00, 0x3c, 0x00, 0xc1]),
            (DType::BF16, &[0x80, 0x3f, 0x20, 0xc0]),
        ];
        for (dtype, bytes) in cases {
            let t = decode_f32(bytes, dtype, &[2]).unwrap();
            assert_eq!(t.dtype(), DType::F32);
            assert_eq!(t.to_vec1::<f32>().unwrap(), [1.0, -2.5], "{dtype:?}");
        }
    }

    #[test]
    fn rejects_wrong_lengths_and_integer_dtypes() {
        let err = decode_f32(&[0; 7], DType::F32, &[2]).unwrap_err().to_string();
        assert!(err.contains("7 bytes cannot hold"), "{err}");
        assert!(decode_f32(&[0; 8], DType::F32, &[usize::MAX, 2]).is_err());
        let err = decode_f32(&[0; 8], DType::I64, &[1]).unwrap_err().to_string();
        assert!(err.contains("I64"), "{err}");
    }

    #[test]
    fn batch_counter_needs_the_name_and_a_scalar_shape() {
        assert!(is_batch_counter("bn.num_batches_tracked", &[]));
        assert!(is_batch_counter("num_batches_tracked", &[]));
        assert!(!is_batch_counter("bn.num_batches_tracked", &[1]));
        assert!(!is_batch_counter("bn.my_num_batches_tracked", &[]));
    }
}
