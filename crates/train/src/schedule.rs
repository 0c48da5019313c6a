//! Learning-rate schedules: multistep and cosine, with optional linear warm-up.

use serde::{Deserialize, Serialize};

/// A learning-rate schedule over `epochs`, evaluated at fractional epochs
/// (`epoch + batch / batches_per_epoch`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Peak learning rate.
    pub lr: f64,
    /// Decay shape.
    pub kind: ScheduleKind,
    /// Epochs of linear warm-up from 0 to `lr` (0 for none).
    #[serde(default)]
    pub warmup_epochs: f64,
}

/// How the learning rate decays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ScheduleKind {
    /// Multiply by `gamma` at each milestone, given as fractions of the run
    /// (MSDNet: `[0.5, 0.75]`, gamma 0.1), applied per whole epoch.
    Multistep {
        /// Milestones as fractions of the total epochs, increasing, in (0, 1).
        milestones: Vec<f64>,
        /// Decay factor.
        gamma: f64,
    },
    /// Half-cosine from `lr` to 0 over the run, per batch.
    Cosine,
    /// Half-cosine from `lr` to 0 within each cycle of `cycle_epochs`
    /// (after the warm-up), restarting at `lr`: warm restarts (SGDR), and the
    /// cyclic schedule of stochastic weight averaging, which averages the
    /// weights at the cycles' ends.
    CosineCycles {
        /// Epochs per cycle, > 0.
        cycle_epochs: f64,
    },
}

impl Schedule {
    /// Checks the values.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(format!("learning rate must be > 0, got {}", self.lr));
        }
        if !(self.warmup_epochs >= 0.0 && self.warmup_epochs.is_finite()) {
            return Err(format!("warm-up must be >= 0 epochs, got {}", self.warmup_epochs));
        }
        if let ScheduleKind::Multistep { milestones, gamma } = &self.kind {
            if milestones.windows(2).any(|w| w[0] >= w[1]) || milestones.iter().any(|m| !(0.0..1.0).contains(m)) {
                return Err(format!("milestones must increase within (0, 1), got {milestones:?}"));
            }
            if !(*gamma > 0.0 && *gamma <= 1.0) {
                return Err(format!("gamma must be in (0, 1], got {gamma}"));
            }
        }
        if let ScheduleKind::CosineCycles { cycle_epochs } = self.kind
            && !(cycle_epochs > 0.0 && cycle_epochs.is_finite())
        {
            return Err(format!("a cosine cycle must last > 0 epochs, got {cycle_epochs}"));
        }
        Ok(())
    }

    /// The learning rate at fractional epoch `t` of a run of `epochs`.
    pub fn lr_at(&self, t: f64, epochs: usize) -> f64 {
        let total = epochs.max(1) as f64;
        if t < self.warmup_epochs {
            return self.lr * (t + 1e-9).min(self.warmup_epochs) / self.warmup_epochs;
        }
        match &self.kind {
            ScheduleKind::Multistep { milestones, gamma } => {
                let epoch = t.floor();
                let passed = milestones.iter().filter(|m| epoch >= (*m * total).round()).count();
                self.lr * gamma.powi(passed as i32)
            }
            ScheduleKind::Cosine => {
                let span = (total - self.warmup_epochs).max(1e-9);
                let x = ((t - self.warmup_epochs) / span).clamp(0.0, 1.0);
                0.5 * self.lr * (1.0 + (std::f64::consts::PI * x).cos())
            }
            ScheduleKind::CosineCycles { cycle_epochs } => {
                let x = ((t - self.warmup_epochs).max(0.0) / cycle_epochs).fract();
                0.5 * self.lr * (1.0 + (std::f64::consts::PI * x).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multistep_like_msdnet() {
        let s = Schedule {
            lr: 0.1,
            kind: ScheduleKind::Multistep { milestones: vec![0.5, 0.75], gamma: 0.1 },
            warmup_epochs: 0.0,
        };
        assert_eq!(s.lr_at(0.0, 300), 0.1);
        assert_eq!(s.lr_at(149.9, 300), 0.1);
        assert!((s.lr_at(150.0, 300) - 0.01).abs() < 1e-12);
        assert!((s.lr_at(225.5, 300) - 0.001).abs() < 1e-12);
    }

    #[test]
    fn cosine_with_warmup() {
        let s = Schedule { lr: 0.2, kind: ScheduleKind::Cosine, warmup_epochs: 2.0 };
        assert!((s.lr_at(1.0, 12) - 0.1).abs() < 1e-6);
        assert!((s.lr_at(2.0, 12) - 0.2).abs() < 1e-12);
        assert!((s.lr_at(7.0, 12) - 0.1).abs() < 1e-12);
        assert!(s.lr_at(12.0, 12).abs() < 1e-12);
        assert!(s.validate().is_ok());
        let bad = Schedule {
            lr: 0.1,
            kind: ScheduleKind::Multistep { milestones: vec![0.7, 0.5], gamma: 0.1 },
            warmup_epochs: 0.0,
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn cosine_cycles_restart() {
        let s = Schedule { lr: 0.04, kind: ScheduleKind::CosineCycles { cycle_epochs: 2.0 }, warmup_epochs: 0.0 };
        assert!((s.lr_at(0.0, 6) - 0.04).abs() < 1e-12);
        assert!((s.lr_at(1.0, 6) - 0.02).abs() < 1e-12);
        assert!(s.lr_at(1.999_999, 6) < 1e-6);
        assert!((s.lr_at(2.0, 6) - 0.04).abs() < 1e-12);
        assert!((s.lr_at(5.0, 6) - 0.02).abs() < 1e-12);
        assert!(s.validate().is_ok());
        let bad = Schedule { kind: ScheduleKind::CosineCycles { cycle_epochs: 0.0 }, ..s };
        assert!(bad.validate().is_err());
    }
}
