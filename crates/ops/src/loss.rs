//! Classification losses and accuracy: cross-entropy with label smoothing,
//! KL divergence at a temperature for (self-)distillation, and a top-1
//! correct count. All are built from differentiable Candle ops on a
//! numerically stable log-softmax.

use candle_core::{D, DType, Result, Tensor, bail};

/// Log-softmax over the last dimension, stable for large logits (the max is
/// subtracted first; it is detached since its gradient cancels).
///
/// # Shapes
/// `[N, K]` → `[N, K]`.
fn log_softmax(logits: &Tensor) -> Result<Tensor> {
    let shifted = logits.broadcast_sub(&logits.max_keepdim(D::Minus1)?.detach())?;
    let log_sum = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&log_sum)
}

/// The batch size and class count of `logits` checked against `targets`
/// `[N]` u32, whose classes must all be below K.
fn check_targets(logits: &Tensor, targets: &Tensor, what: &str) -> Result<(usize, usize)> {
    let &[n, k] = logits.dims() else { bail!("{what}: logits must be [N, K], got {:?}", logits.dims()) };
    if targets.dims() != [n] {
        bail!("{what}: targets {:?} do not match logits {:?} (expected [{n}])", targets.dims(), logits.dims())
    }
    if targets.dtype() != DType::U32 {
        bail!("{what}: targets must be u32 class indices, got {:?}", targets.dtype())
    }
    if let Some(&bad) = targets.to_vec1::<u32>()?.iter().find(|&&t| t as usize >= k) {
        bail!("{what}: target class {bad} is out of range for {k} classes")
    }
    Ok((n, k))
}

/// Mean cross-entropy of `logits` against class indices `targets`, with
/// label smoothing `label_smoothing` (ε) as PyTorch's
/// `F.cross_entropy(logits, targets, label_smoothing=ε)`:
/// `(1 - ε) · CE + ε · mean_k(-log p_k)`, averaged over the batch.
///
/// # Shapes
/// `logits` `[N, K]`, `targets` `[N]` (u32) → scalar.
///
/// # Errors
/// On mismatched shapes, non-u32 targets, a target `>= K`, an empty batch,
/// or ε outside `[0, 1)`.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor, label_smoothing: f64) -> Result<Tensor> {
    let (n, _) = check_targets(logits, targets, "cross_entropy")?;
    if n == 0 {
        bail!("cross_entropy: the batch is empty")
    }
    if !(0.0..1.0).contains(&label_smoothing) {
        bail!("cross_entropy: label smoothing must be in [0, 1), got {label_smoothing}")
    }
    let log_p = log_softmax(logits)?;
    let nll = log_p.gather(&targets.unsqueeze(1)?, 1)?.neg()?.mean_all()?;
    if label_smoothing == 0.0 {
        return Ok(nll);
    }
    let uniform = log_p.neg()?.mean_all()?;
    (nll * (1.0 - label_smoothing))? + (uniform * label_smoothing)?
}

/// Distillation loss `T² · KL(softmax(teacher / T) || softmax(student / T))`,
/// summed over classes and averaged over the batch — PyTorch's
/// `F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction='batchmean') * T * T`,
/// as IMTA / SCAN self-distillation uses.
///
/// The teacher is **not** detached here, so gradients flow into it too:
/// callers distilling from a network's own last exit pass
/// `teacher.detach()`.
///
/// # Shapes
/// `student`, `teacher` `[N, K]` → scalar.
///
/// # Errors
/// On mismatched or non-`[N, K]` shapes, an empty batch, or `t <= 0`.
pub fn kl_div_with_temperature(student: &Tensor, teacher: &Tensor, t: f64) -> Result<Tensor> {
    if student.dims() != teacher.dims() || student.rank() != 2 {
        bail!(
            "kl_div_with_temperature: student {:?} and teacher {:?} must both be [N, K]",
            student.dims(),
            teacher.dims()
        )
    }
    let n = student.dim(0)?;
    if n == 0 {
        bail!("kl_div_with_temperature: the batch is empty")
    }
    if !(t > 0.0 && t.is_finite()) {
        bail!("kl_div_with_temperature: the temperature must be finite and > 0, got {t}")
    }
    let log_p = log_softmax(&(student / t)?)?;
    let log_q = log_softmax(&(teacher / t)?)?;
    let kl = (log_q.exp()? * (log_q - log_p)?)?.sum_all()?;
    kl * (t * t / n as f64)
}

/// Number of samples whose top-1 prediction (first maximum on ties) equals
/// the target; 0 for an empty batch.
///
/// # Shapes
/// `logits` `[N, K]`, `targets` `[N]` (u32).
///
/// # Errors
/// On mismatched shapes, non-u32 targets or a target `>= K`.
pub fn correct_count(logits: &Tensor, targets: &Tensor) -> Result<usize> {
    let (n, _) = check_targets(logits, targets, "correct_count")?;
    if n == 0 {
        return Ok(0);
    }
    let hits = logits.argmax(D::Minus1)?.eq(targets)?.to_dtype(DType::U32)?.sum_all()?;
    Ok(hits.to_scalar::<u32>()? as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{grad_check, rand_tensor};
    use candle_core::Device;

    // logits = torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.2, 0.1, -1.0, 2.0], [-0.5, 4.0, 1.0, 0.0]])
    // teacher = torch.tensor([[0.0, 1.0, 2.0, -1.0], [1.5, -0.5, 0.0, 0.5], [2.0, 2.0, -2.0, 1.0]])
    // targets = torch.tensor([3, 0, 2])
    fn case() -> Result<(Tensor, Tensor, Tensor)> {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[1.0f32, -2.0, 0.5, 3.0], [0.2, 0.1, -1.0, 2.0], [-0.5, 4.0, 1.0, 0.0]], &dev)?;
        let teacher = Tensor::new(&[[0.0f32, 1.0, 2.0, -1.0], [1.5, -0.5, 0.0, 0.5], [2.0, 2.0, -2.0, 1.0]], &dev)?;
        let targets = Tensor::new(&[3u32, 0, 2], &dev)?;
        Ok((logits, teacher, targets))
    }

    fn close(what: &str, got: &Tensor, want: f32) -> Result<()> {
        let got = got.to_scalar::<f32>()?;
        assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs()), "{what}: {got} vs {want}");
        Ok(())
    }

    #[test]
    fn cross_entropy_matches_torch() -> Result<()> {
        let (logits, _, targets) = case()?;
        // F.cross_entropy(logits, targets) -> 1.7964617013931274
        close("plain", &cross_entropy(&logits, &targets, 0.0)?, 1.796_461_7)?;
        // F.cross_entropy(logits, targets, label_smoothing=0.1) -> 1.8672950267791748
        close("smoothed", &cross_entropy(&logits, &targets, 0.1)?, 1.867_295)?;
        // Stable log-softmax: exp(1000) overflows f32, yet CE([1000, 0], 1) = 1000.
        let huge = Tensor::new(&[[1000f32, 0.0]], &Device::Cpu)?;
        close("huge", &cross_entropy(&huge, &Tensor::new(&[1u32], &Device::Cpu)?, 0.0)?, 1000.0)?;
        Ok(())
    }

    #[test]
    fn kl_matches_torch() -> Result<()> {
        let (logits, teacher, _) = case()?;
        // F.kl_div(F.log_softmax(logits/T, 1), F.softmax(teacher/T, 1), reduction='batchmean') * T * T
        // T=1 -> 1.5169721841812134, T=4 -> 2.0739831924438477
        close("T=1", &kl_div_with_temperature(&logits, &teacher, 1.0)?, 1.516_972_2)?;
        close("T=4", &kl_div_with_temperature(&logits, &teacher, 4.0)?, 2.073_983_2)?;
        close("self", &kl_div_with_temperature(&logits, &logits, 2.0)?, 0.0)?;
        Ok(())
    }

    #[test]
    fn gradients_pass_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let x = (rand_tensor(&[3, 5], 4, &dev)? * 3.0)?;
        let other = (rand_tensor(&[3, 5], 5, &dev)? * 3.0)?;
        let targets = Tensor::new(&[4u32, 0, 2], &dev)?;
        for eps in [0.0, 0.2] {
            grad_check(&x, |t| cross_entropy(t, &targets, eps), 1e-3)?;
        }
        // Both the student and the (undetached) teacher receive gradients.
        grad_check(&x, |t| kl_div_with_temperature(t, &other, 3.0), 1e-3)?;
        grad_check(&x, |t| kl_div_with_temperature(&other, t, 3.0), 1e-3)?;
        Ok(())
    }

    #[test]
    fn correct_count_counts_top1_hits() -> Result<()> {
        let (logits, _, targets) = case()?;
        // Predictions are 3, 3, 1: only the first is right.
        assert_eq!(correct_count(&logits, &targets)?, 1);
        assert_eq!(correct_count(&logits, &Tensor::new(&[3u32, 3, 1], &Device::Cpu)?)?, 3);
        Ok(())
    }

    #[test]
    fn bad_inputs_are_errors() -> Result<()> {
        let (logits, teacher, targets) = case()?;
        let dev = Device::Cpu;
        let msg = |r: Result<Tensor>| r.map(|_| ()).unwrap_err().to_string();
        assert!(
            msg(cross_entropy(&logits, &Tensor::new(&[3u32, 0, 4], &dev)?, 0.0)).contains("class 4 is out of range")
        );
        assert!(msg(cross_entropy(&logits, &Tensor::new(&[3u32, 0], &dev)?, 0.0)).contains("do not match"));
        assert!(msg(cross_entropy(&logits, &targets.to_dtype(DType::F32)?, 0.0)).contains("u32"));
        assert!(msg(cross_entropy(&logits, &targets, 1.0)).contains("label smoothing"));
        assert!(msg(cross_entropy(&logits.flatten_all()?, &targets, 0.0)).contains("[N, K]"));
        assert!(msg(kl_div_with_temperature(&logits, &teacher, 0.0)).contains("temperature"));
        assert!(msg(kl_div_with_temperature(&logits, &teacher.narrow(1, 0, 3)?, 1.0)).contains("[N, K]"));
        assert!(correct_count(&logits, &Tensor::new(&[9u32, 0, 1], &dev)?).is_err());
        Ok(())
    }
}
