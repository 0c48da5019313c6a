//! Every numeric option goes through one of these parsers: finite, within
//! its range, with the accepted range in the message. Clap reports a
//! rejection as `invalid value 'X' for '--opt <OPT>': <why>`.

/// A real number in `lo..=hi` (or `lo < x` when `open_lo`), as `what`.
#[derive(Debug, Clone, Copy)]
pub struct Real {
    lo: f64,
    open_lo: bool,
    hi: f64,
    what: &'static str,
}

impl Real {
    /// `x` with `lo < x <= hi`.
    pub const fn above(lo: f64, hi: f64, what: &'static str) -> Self {
        Self { lo, open_lo: true, hi, what }
    }

    /// `x` with `lo <= x <= hi`.
    pub const fn within(lo: f64, hi: f64, what: &'static str) -> Self {
        Self { lo, open_lo: false, hi, what }
    }

    /// Checks `s`.
    pub fn parse(&self, s: &str) -> Result<f64, String> {
        let x: f64 = s.trim().parse().map_err(|_| format!("expected a number ({}), got '{s}'", self.range()))?;
        let low_ok = if self.open_lo { x > self.lo } else { x >= self.lo };
        if !x.is_finite() || !low_ok || x > self.hi {
            return Err(format!("{} must be {}, got {s}", self.what, self.range()));
        }
        Ok(x)
    }

    fn range(&self) -> String {
        let open = if self.open_lo { "(" } else { "[" };
        format!("in {open}{}, {}]", self.lo, self.hi)
    }
}

/// A whole number in `lo..=hi`, as `what`.
#[derive(Debug, Clone, Copy)]
pub struct Count {
    lo: usize,
    hi: usize,
    what: &'static str,
}

impl Count {
    /// `n` with `lo <= n <= hi`.
    pub const fn within(lo: usize, hi: usize, what: &'static str) -> Self {
        Self { lo, hi, what }
    }

    /// Checks `s`.
    pub fn parse(&self, s: &str) -> Result<usize, String> {
        let n: usize = s
            .trim()
            .parse()
            .map_err(|_| format!("{} must be a whole number in [{}, {}], got '{s}'", self.what, self.lo, self.hi))?;
        if n < self.lo || n > self.hi {
            return Err(format!("{} must be in [{}, {}], got {n}", self.what, self.lo, self.hi));
        }
        Ok(n)
    }
}

/// Runs `parse` on an option's text, reporting a rejection as clap does:
/// `invalid value 'X' for '--opt': <why>`.
fn clap_parse<T>(
    cmd: &clap::Command,
    arg: Option<&clap::Arg>,
    value: &std::ffi::OsStr,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, clap::Error> {
    let s = value.to_str().ok_or_else(|| clap::Error::new(clap::error::ErrorKind::InvalidUtf8).with_cmd(cmd))?;
    parse(s).map_err(|why| {
        let name = arg.map(|a| a.get_id().as_str().replace('_', "-")).unwrap_or_default();
        clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("invalid value '{s}' for '--{name}': {why}"))
            .with_cmd(cmd)
    })
}

/// Implements clap's value parser for a type with `parse(&self, &str)`.
macro_rules! value_parser {
    ($ty:ty, $value:ty) => {
        impl clap::builder::TypedValueParser for $ty {
            type Value = $value;

            fn parse_ref(
                &self,
                cmd: &clap::Command,
                arg: Option<&clap::Arg>,
                value: &std::ffi::OsStr,
            ) -> Result<$value, clap::Error> {
                clap_parse(cmd, arg, value, |s| self.parse(s))
            }
        }
    };
}

value_parser!(Real, f64);
value_parser!(Count, usize);

/// MFLOPs per image of a budget (checked against the model's range later).
pub const BUDGET: Real = Real::above(0.0, 1e9, "a budget in MFLOPs per image");
/// A budget as a fraction of the full model's cost.
pub const FRACTION: Real = Real::above(0.0, 1.0, "a fraction of the full model's cost");
/// MSDNet's q (exit proportions ∝ q^k).
pub const Q: Real = Real::within(1e-6, 1e6, "q");
/// The genetic search's cost weight.
pub const LAMBDA: Real = Real::within(0.0, 1e6, "the cost weight λ");
/// A per-image deadline in milliseconds (at most an hour).
pub const DEADLINE_MS: Real = Real::above(0.0, 3.6e6, "a deadline in milliseconds");
/// A training time limit in minutes (at most a year).
pub const MINUTES: Real = Real::above(0.0, 525_600.0, "a time limit in minutes");
/// A confidence threshold.
pub const THRESHOLD: Real = Real::within(0.0, 1.0, "a max-softmax threshold");
/// Images per batch.
pub const BATCH: Count = Count::within(1, 65_536, "a batch size");
/// A number of images.
pub const LIMIT: Count = Count::within(1, 1 << 32, "a number of images");
/// Training epochs.
pub const EPOCHS: Count = Count::within(1, 100_000, "a number of epochs");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_enforced_and_named() {
        assert_eq!(DEADLINE_MS.parse("12.5"), Ok(12.5));
        for bad in ["1e23", "0", "-1", "nan", "inf", "1e300", "abc", ""] {
            let e = DEADLINE_MS.parse(bad).unwrap_err();
            assert!(e.contains("(0, 3600000]"), "{bad}: {e}");
        }
        assert!(MINUTES.parse("1e-9").is_ok(), "tiny but positive is positive");
        assert!(FRACTION.parse("1").is_ok() && FRACTION.parse("1.01").is_err());
        assert!(THRESHOLD.parse("0").is_ok() && THRESHOLD.parse("-0.1").is_err());
        assert_eq!(BATCH.parse("64"), Ok(64));
        assert!(BATCH.parse("0").unwrap_err().contains("[1, 65536]"));
        assert!(EPOCHS.parse("-3").is_err() && EPOCHS.parse("99999999999999999999999").is_err());
    }
}
