//! [`WeightMeta`]: what a weight file says about how it was made, stored in the safetensors
//! header metadata (a string-to-string map).
//!
//! Each field has its own header key (`architecture`, `config`, `dataset`, `exit_accuracy`,
//! `exit_mflops`, `training_command`, `commit`); strings are stored as they are and the
//! structured fields as JSON. `extra` entries are stored under their own names, so metadata
//! written by other tools (e.g. `format=pt`) reads back as `extra`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::safetensors_io;

const ARCHITECTURE: &str = "architecture";
const CONFIG: &str = "config";
const DATASET: &str = "dataset";
const EXIT_ACCURACY: &str = "exit_accuracy";
const EXIT_MFLOPS: &str = "exit_mflops";
const TRAINING_COMMAND: &str = "training_command";
const COMMIT: &str = "commit";
/// Header keys owned by [`WeightMeta`] fields, which `extra` may not use.
const FIELDS: [&str; 7] = [ARCHITECTURE, CONFIG, DATASET, EXIT_ACCURACY, EXIT_MFLOPS, TRAINING_COMMAND, COMMIT];

/// Provenance and quality of a weight set, saved with it by
/// [`save_safetensors`](crate::save_safetensors).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WeightMeta {
    /// Model family, e.g. `msdnet`.
    pub architecture: String,
    /// The model configuration, as the model crate serialises it.
    pub config: serde_json::Value,
    /// Training data set, e.g. `cifar100`.
    pub dataset: String,
    /// Top-1 accuracy of each exit, in forward order, as a fraction in `[0, 1]`.
    pub exit_accuracy: Vec<f64>,
    /// Cumulative cost of each exit in millions of multiply-accumulates, in forward order.
    pub exit_mflops: Vec<f64>,
    /// The command line that trained the weights.
    pub training_command: String,
    /// The source revision that trained the weights.
    pub commit: String,
    /// Any other string entries.
    pub extra: BTreeMap<String, String>,
}

impl WeightMeta {
    /// The header metadata map for this value; `path` is named in errors.
    ///
    /// # Errors
    /// [`Error::BadMeta`] for an `extra` key that is also a field name, or a non-finite number.
    pub(crate) fn to_metadata(&self, path: &Path) -> Result<BTreeMap<String, String>> {
        let bad =
            |field: &str, problem: String| Error::BadMeta { path: path.to_owned(), field: field.to_owned(), problem };
        if let Some(key) = self.extra.keys().find(|k| FIELDS.contains(&k.as_str())) {
            return Err(bad(key, "this `extra` key is reserved for the WeightMeta field of that name".into()));
        }
        let numbers = |field: &str, values: &[f64]| match values.iter().position(|v| !v.is_finite()) {
            Some(i) => Err(bad(field, format!("value {} at index {i} is not finite", values[i]))),
            None => serde_json::to_string(values).map_err(|e| bad(field, e.to_string())),
        };
        let mut map = self.extra.clone();
        map.insert(ARCHITECTURE.into(), self.architecture.clone());
        map.insert(CONFIG.into(), self.config.to_string());
        map.insert(DATASET.into(), self.dataset.clone());
        map.insert(EXIT_ACCURACY.into(), numbers(EXIT_ACCURACY, &self.exit_accuracy)?);
        map.insert(EXIT_MFLOPS.into(), numbers(EXIT_MFLOPS, &self.exit_mflops)?);
        map.insert(TRAINING_COMMAND.into(), self.training_command.clone());
        map.insert(COMMIT.into(), self.commit.clone());
        Ok(map)
    }

    /// Reads the value back from header metadata read from `path`. Missing fields keep their
    /// defaults; keys that are not fields go to `extra`.
    ///
    /// # Errors
    /// [`Error::BadMeta`] when a structured field is not the JSON it should be.
    pub(crate) fn from_metadata(path: &Path, metadata: &BTreeMap<String, String>) -> Result<Self> {
        fn json<T: serde::de::DeserializeOwned>(path: &Path, field: &str, text: &str) -> Result<T> {
            serde_json::from_str(text).map_err(|e| Error::BadMeta {
                path: path.to_owned(),
                field: field.to_owned(),
                problem: format!("not valid JSON of the expected type: {e}"),
            })
        }
        let mut meta = Self::default();
        for (key, value) in metadata {
            match key.as_str() {
                ARCHITECTURE => meta.architecture = value.clone(),
                CONFIG => meta.config = json(path, key, value)?,
                DATASET => meta.dataset = value.clone(),
                EXIT_ACCURACY => meta.exit_accuracy = json(path, key, value)?,
                EXIT_MFLOPS => meta.exit_mflops = json(path, key, value)?,
                TRAINING_COMMAND => meta.training_command = value.clone(),
                COMMIT => meta.commit = value.clone(),
                _ => {
                    meta.extra.insert(key.clone(), value.clone());
                }
            }
        }
        Ok(meta)
    }
}

/// Reads the [`WeightMeta`] of the safetensors file at `path` from its header alone, without
/// loading any tensor.
///
/// # Errors
/// An I/O error, [`Error::Truncated`] or [`Error::BadHeader`] when the file has no valid
/// safetensors header, or [`Error::BadMeta`] when a structured field is not valid JSON.
pub fn read_meta(path: impl AsRef<Path>) -> Result<WeightMeta> {
    let path = path.as_ref();
    WeightMeta::from_metadata(path, &safetensors_io::read_metadata(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> WeightMeta {
        WeightMeta {
            architecture: "ranet".into(),
            config: serde_json::json!({"scale_list": [1, 2, 3], "stepmode": "lg"}),
            dataset: "cifar10".into(),
            exit_accuracy: vec![0.81, 0.9, 0.925],
            exit_mflops: vec![3.557, 10.332, 15.875],
            training_command: "anytime train --arch ranet".into(),
            commit: "0123abcd".into(),
            extra: BTreeMap::from([("format".into(), "pt".into())]),
        }
    }

    #[test]
    fn metadata_round_trip_keeps_every_field() {
        let meta = full();
        let map = meta.to_metadata(Path::new("m")).unwrap();
        assert_eq!(map["architecture"], "ranet");
        assert_eq!(map["exit_accuracy"], "[0.81,0.9,0.925]");
        assert_eq!(map["format"], "pt");
        assert_eq!(WeightMeta::from_metadata(Path::new("m"), &map).unwrap(), meta);
    }

    #[test]
    fn foreign_metadata_lands_in_extra() {
        let map =
            BTreeMap::from([("format".to_owned(), "pt".to_owned()), ("dataset".to_owned(), "cifar100".to_owned())]);
        let meta = WeightMeta::from_metadata(Path::new("m"), &map).unwrap();
        assert_eq!(meta.dataset, "cifar100");
        assert_eq!(meta.extra, BTreeMap::from([("format".to_owned(), "pt".to_owned())]));
        assert!(meta.architecture.is_empty() && meta.exit_accuracy.is_empty());
    }

    #[test]
    fn unstorable_values_are_errors() {
        let mut meta = full();
        meta.extra.insert("commit".into(), "x".into());
        let err = meta.to_metadata(Path::new("w.safetensors")).unwrap_err().to_string();
        assert!(err.contains("w.safetensors") && err.contains("`commit`") && err.contains("reserved"), "{err}");

        let meta = WeightMeta { exit_mflops: vec![1.0, f64::NAN], ..full() };
        let err = meta.to_metadata(Path::new("w")).unwrap_err().to_string();
        assert!(err.contains("index 1 is not finite"), "{err}");
    }

    #[test]
    fn malformed_json_fields_are_errors() {
        let map = BTreeMap::from([("exit_accuracy".to_owned(), "[0.5, oops]".to_owned())]);
        let err = WeightMeta::from_metadata(Path::new("w"), &map).unwrap_err();
        assert!(matches!(&err, Error::BadMeta { field, .. } if field == "exit_accuracy"), "{err}");
    }

    #[test]
    fn serde_json_form_fills_defaults() {
        let meta: WeightMeta = serde_json::from_str(r#"{"architecture": "msdnet"}"#).unwrap();
        assert_eq!(meta, WeightMeta { architecture: "msdnet".into(), ..WeightMeta::default() });
    }
}
