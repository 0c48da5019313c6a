//! Reading a reference (PyTorch) run's configuration: either the parsed
//! argparse namespace (`args`, as the fixtures' `config.json` stores it) or
//! the command line itself (`cli_args`, a list of strings or one string),
//! read with the reference `args.py` rules and defaults.
//!
//! Only what a model needs is interpreted; the training options of the
//! reference parser are accepted and ignored, so a user can paste the exact
//! command they trained with. An option the reference parser does not know is
//! an error, as it is for argparse.

use crate::error::ConfigError;
use serde_json::Value;
use std::collections::BTreeMap;

/// One option of a reference `argparse` parser.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OptSpec {
    /// Every spelling, e.g. `["--weight-decay", "--wd"]`.
    pub names: &'static [&'static str],
    /// The namespace attribute, e.g. `weight_decay`.
    pub dest: &'static str,
    /// `store_true` options take no value.
    pub flag: bool,
    /// Allowed values (`choices=`), empty when free.
    pub choices: &'static [&'static str],
}

/// Shorthand for a value option.
pub(crate) const fn opt(names: &'static [&'static str], dest: &'static str) -> OptSpec {
    OptSpec { names, dest, flag: false, choices: &[] }
}

/// Shorthand for a value option with `choices`.
pub(crate) const fn choice(
    names: &'static [&'static str],
    dest: &'static str,
    choices: &'static [&'static str],
) -> OptSpec {
    OptSpec { names, dest, flag: false, choices }
}

/// Shorthand for a `store_true` option.
pub(crate) const fn flag(names: &'static [&'static str], dest: &'static str) -> OptSpec {
    OptSpec { names, dest, flag: true, choices: &[] }
}

/// Options every reference parser (MSDNet and RANet alike) shares: experiment,
/// data and optimisation settings.
pub(crate) const COMMON: &[OptSpec] = &[
    opt(&["--save"], "save"),
    flag(&["--resume"], "resume"),
    opt(&["--evalmode"], "evalmode"),
    opt(&["--evaluate-from"], "evaluate_from"),
    opt(&["--print-freq", "-p"], "print_freq"),
    opt(&["--seed"], "seed"),
    opt(&["--gpu"], "gpu"),
    choice(&["--data"], "data", &["cifar10", "cifar100", "ImageNet"]),
    opt(&["--data-root"], "data_root"),
    flag(&["--use-valid"], "use_valid"),
    opt(&["--workers", "-j"], "workers"),
    opt(&["--reduction"], "reduction"),
    opt(&["--epochs"], "epochs"),
    opt(&["--start-epoch"], "start_epoch"),
    opt(&["--batch-size", "-b"], "batch_size"),
    choice(&["--optimizer"], "optimizer", &["sgd", "rmsprop", "adam"]),
    opt(&["--lr", "--learning-rate"], "lr"),
    choice(&["--lr-type"], "lr_type", &["cosine", "multistep"]),
    opt(&["--decay-rate"], "decay_rate"),
    opt(&["--momentum"], "momentum"),
    opt(&["--weight-decay", "--wd"], "weight_decay"),
];

/// A reference namespace: attribute name → value, as JSON.
#[derive(Debug, Clone, Default)]
pub struct Namespace {
    values: BTreeMap<String, Value>,
}

/// Splits a command line as a POSIX shell would for simple quoting
/// (single quotes, double quotes, backslash escapes).
pub(crate) fn shell_split(line: &str) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(ch) = chars.next() {
        match ch {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(ConfigError::Cli("unterminated single quote".into())),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c) => cur.push(c),
                            None => return Err(ConfigError::Cli("trailing backslash".into())),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(ConfigError::Cli("unterminated double quote".into())),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') | None => {}
                    Some(c) => cur.push(c),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

impl Namespace {
    /// The namespace stored as a JSON object (`config.json`'s `args`).
    pub fn from_json(v: &Value) -> Result<Self, ConfigError> {
        match v {
            Value::Object(m) => Ok(Self { values: m.iter().map(|(k, v)| (k.clone(), v.clone())).collect() }),
            _ => Err(ConfigError::Invalid("`args` must be a JSON object".into())),
        }
    }

    /// Parses a command line with the given option table. A leading
    /// `python`, `python3` and script name are skipped. Long options may be
    /// abbreviated to a unique prefix, as argparse allows.
    pub(crate) fn from_cli(tokens: &[String], specs: &[&[OptSpec]]) -> Result<Self, ConfigError> {
        let all: Vec<&OptSpec> = specs.iter().flat_map(|s| s.iter()).collect();
        let lookup = |name: &str| -> Result<&OptSpec, ConfigError> {
            if let Some(s) = all.iter().find(|s| s.names.contains(&name)) {
                return Ok(s);
            }
            let matches: Vec<&&OptSpec> = if name.starts_with("--") {
                all.iter().filter(|s| s.names.iter().any(|n| n.starts_with("--") && n.starts_with(name))).collect()
            } else {
                Vec::new()
            };
            match matches.as_slice() {
                [one] => Ok(one),
                [] => Err(ConfigError::Cli(format!("unrecognized argument: {name}"))),
                many => Err(ConfigError::Cli(format!(
                    "ambiguous option: {name} could match {}",
                    many.iter().map(|s| s.names[0]).collect::<Vec<_>>().join(", ")
                ))),
            }
        };
        let mut toks = tokens.iter().map(String::as_str).peekable();
        // Skip "python main.py" or "main.py" before the first option.
        while let Some(t) = toks.peek() {
            if t.starts_with('-') {
                break;
            }
            if t.starts_with("python") || t.ends_with(".py") {
                toks.next();
            } else {
                return Err(ConfigError::Cli(format!("unrecognized argument: {t}")));
            }
        }
        let mut values = BTreeMap::new();
        while let Some(tok) = toks.next() {
            if !tok.starts_with('-') || tok == "-" {
                return Err(ConfigError::Cli(format!("unrecognized argument: {tok}")));
            }
            let (name, inline) = match tok.split_once('=') {
                Some((n, v)) if n.starts_with("--") => (n, Some(v)),
                _ => (tok, None),
            };
            let spec = lookup(name)?;
            if spec.flag {
                if inline.is_some() {
                    return Err(ConfigError::Cli(format!("argument {name}: ignored explicit argument")));
                }
                values.insert(spec.dest.to_string(), Value::Bool(true));
                continue;
            }
            let value = match inline {
                Some(v) => v.to_string(),
                None => match toks.next() {
                    Some(v)
                        if !(v.starts_with('-')
                            && v.len() > 1
                            && !v[1..].starts_with(|c: char| c.is_ascii_digit() || c == '.')) =>
                    {
                        v.to_string()
                    }
                    _ => return Err(ConfigError::Cli(format!("argument {name}: expected one argument"))),
                },
            };
            if !spec.choices.is_empty() && !spec.choices.contains(&value.as_str()) {
                return Err(ConfigError::Cli(format!(
                    "argument {name}: invalid choice: '{value}' (choose from {})",
                    spec.choices.iter().map(|c| format!("'{c}'")).collect::<Vec<_>>().join(", ")
                )));
            }
            values.insert(spec.dest.to_string(), Value::String(value));
        }
        Ok(Self { values })
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.values.get(key).filter(|v| !v.is_null())
    }

    /// A string attribute, or `default`.
    pub fn str_or(&self, key: &str, default: &str) -> Result<String, ConfigError> {
        match self.get(key) {
            None => Ok(default.to_string()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v) => Err(ConfigError::Invalid(format!("{key}: expected a string, got {v}"))),
        }
    }

    /// An optional string attribute.
    pub fn str_opt(&self, key: &str) -> Result<Option<String>, ConfigError> {
        self.get(key).map(|_| self.str_or(key, "")).transpose()
    }

    /// An integer attribute (`type=int`), or `default`.
    pub fn int_or(&self, key: &str, default: i64) -> Result<i64, ConfigError> {
        let bad = |v: &dyn std::fmt::Display| ConfigError::Invalid(format!("{key}: invalid int value: '{v}'"));
        match self.get(key) {
            None => Ok(default),
            Some(Value::Number(n)) => n.as_i64().ok_or_else(|| bad(n)),
            Some(Value::String(s)) => s.trim().parse().map_err(|_| bad(s)),
            Some(v) => Err(bad(v)),
        }
    }

    /// A non-negative integer attribute, or `default`.
    pub fn usize_or(&self, key: &str, default: usize) -> Result<usize, ConfigError> {
        let v = self.int_or(key, default as i64)?;
        usize::try_from(v).map_err(|_| ConfigError::Invalid(format!("{key} must not be negative, got {v}")))
    }

    /// A float attribute (`type=float`), or `default`.
    pub fn float_or(&self, key: &str, default: f64) -> Result<f64, ConfigError> {
        let bad = |v: &dyn std::fmt::Display| ConfigError::Invalid(format!("{key}: invalid float value: '{v}'"));
        match self.get(key) {
            None => Ok(default),
            Some(Value::Number(n)) => n.as_f64().ok_or_else(|| bad(n)),
            Some(Value::String(s)) => s.trim().parse().map_err(|_| bad(s)),
            Some(v) => Err(bad(v)),
        }
    }

    /// A `type=bool` attribute: on the command line any non-empty string is
    /// true (so `--bottleneck False` is true, as in the reference).
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::String(s)) => Ok(!s.is_empty()),
            Some(Value::Number(n)) => Ok(n.as_f64() != Some(0.0)),
            Some(v) => Err(ConfigError::Invalid(format!("{key}: expected a boolean, got {v}"))),
        }
    }

    /// A dash-separated integer list (`"1-2-4"`) or a JSON array, or `default`.
    pub fn list_or(&self, key: &str, default: &str) -> Result<Vec<usize>, ConfigError> {
        let bad = |v: &dyn std::fmt::Display| {
            ConfigError::Invalid(format!("{key}: expected positive integers like '1-2-4', got '{v}'"))
        };
        let parse = |s: &str| -> Result<Vec<usize>, ConfigError> {
            s.split('-').map(|p| p.trim().parse::<usize>().map_err(|_| bad(&s))).collect()
        };
        match self.get(key) {
            None => parse(default),
            Some(Value::String(s)) => parse(s),
            Some(Value::Array(a)) => {
                a.iter().map(|v| v.as_u64().and_then(|x| usize::try_from(x).ok()).ok_or_else(|| bad(v))).collect()
            }
            Some(v) => Err(bad(v)),
        }
    }
}

/// Reads a reference-style configuration object: `{"args": {...}}` or
/// `{"cli_args": [...] | "..."}`. Returns `None` when `v` has neither key.
pub(crate) fn reference_namespace(v: &Value, specs: &[&[OptSpec]]) -> Result<Option<Namespace>, ConfigError> {
    if let Some(args) = v.get("args") {
        return Namespace::from_json(args).map(Some);
    }
    match v.get("cli_args") {
        None => Ok(None),
        Some(Value::String(s)) => Namespace::from_cli(&shell_split(s)?, specs).map(Some),
        Some(Value::Array(a)) => {
            let toks = a
                .iter()
                .map(|t| t.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| ConfigError::Invalid("cli_args must be a list of strings or one string".into()))?;
            Namespace::from_cli(&toks, specs).map(Some)
        }
        Some(_) => Err(ConfigError::Invalid("cli_args must be a list of strings or one string".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECS: &[OptSpec] =
        &[opt(&["--nBlocks"], "nBlocks"), opt(&["--nChannels"], "nChannels"), opt(&["--grFactor"], "grFactor")];

    fn cli(s: &str) -> Result<Namespace, ConfigError> {
        Namespace::from_cli(&shell_split(s)?, &[COMMON, SPECS])
    }

    #[test]
    fn parses_a_pasted_command() {
        let ns = cli("python main.py --data-root /x --data cifar100 --nBlocks=5 --grFactor '1-2-4' -b 64 --use-valid")
            .unwrap();
        assert_eq!(ns.str_or("data", "").unwrap(), "cifar100");
        assert_eq!(ns.usize_or("nBlocks", 1).unwrap(), 5);
        assert_eq!(ns.list_or("grFactor", "1").unwrap(), vec![1, 2, 4]);
        assert!(ns.bool_or("use_valid", false).unwrap());
        assert_eq!(ns.usize_or("nChannels", 32).unwrap(), 32);
    }

    #[test]
    fn abbreviations_and_errors() {
        assert_eq!(cli("--nB 3").unwrap().usize_or("nBlocks", 1).unwrap(), 3);
        assert!(cli("--n 3").unwrap_err().to_string().contains("ambiguous"));
        assert!(cli("--frobnicate 1").unwrap_err().to_string().contains("unrecognized argument: --frobnicate"));
        assert!(cli("--data mnist").unwrap_err().to_string().contains("invalid choice: 'mnist'"));
        assert!(cli("--nBlocks").unwrap_err().to_string().contains("expected one argument"));
        assert!(cli("--nBlocks x").unwrap().usize_or("nBlocks", 1).unwrap_err().to_string().contains("invalid int"));
        assert!(shell_split("--data 'cifar").is_err());
    }

    #[test]
    fn negative_numbers_are_values() {
        assert_eq!(cli("--seed -3").unwrap().int_or("seed", 0).unwrap(), -3);
    }
}
