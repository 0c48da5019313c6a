//! Recognising a weight file by its first bytes.

use std::fmt;

/// The on-disk formats [`load_tensors`](crate::load_tensors) reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A safetensors file: an 8-byte little-endian header length, a JSON header, raw data.
    Safetensors,
    /// A `torch.save` zip archive (PyTorch >= 1.6): `<root>/data.pkl` plus `<root>/data/<key>`.
    PyTorchZip,
    /// The legacy (pre-1.6) `torch.save` stream: pickles of the magic number, the protocol
    /// version, the system information and the object, the list of storage keys, then each
    /// storage's element count and bytes.
    PyTorchLegacy,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Safetensors => "safetensors",
            Format::PyTorchZip => "PyTorch zip checkpoint",
            Format::PyTorchLegacy => "legacy PyTorch checkpoint",
        })
    }
}

/// What the first bytes of a file say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Detected {
    /// A format this crate reads.
    Known(Format),
    /// The legacy (pre-1.6) `torch.save` format: a bare pickle stream that starts with torch's
    /// magic number.
    LegacyTorch,
    /// Anything else.
    Unknown,
}

/// The legacy serialization starts with `pickle.dumps(0x1950a86a20f9469cfc6c, protocol=2)`.
pub(crate) const LEGACY_TORCH_MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";

/// Classifies a file by its first bytes.
pub(crate) fn detect(bytes: &[u8]) -> Detected {
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        Detected::Known(Format::PyTorchZip)
    } else if bytes.get(8) == Some(&b'{') {
        Detected::Known(Format::Safetensors)
    } else if bytes.starts_with(LEGACY_TORCH_MAGIC) {
        Detected::LegacyTorch
    } else {
        Detected::Unknown
    }
}

/// Up to the first 16 bytes of `bytes` in hex, for error messages.
pub(crate) fn hex_head(bytes: &[u8]) -> String {
    let head: String = bytes.iter().take(16).map(|b| format!("{b:02x}")).collect();
    if head.is_empty() { "none, the file is empty".into() } else { head }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_by_content() {
        assert_eq!(detect(b"PK\x03\x04rest"), Detected::Known(Format::PyTorchZip));
        assert_eq!(detect(b"PK\x05\x06"), Detected::Known(Format::PyTorchZip));
        assert_eq!(detect(b"\x02\x00\x00\x00\x00\x00\x00\x00{}"), Detected::Known(Format::Safetensors));
        assert_eq!(detect(LEGACY_TORCH_MAGIC), Detected::LegacyTorch);
        assert_eq!(detect(b"\x80\x02}q\x00."), Detected::Unknown);
        assert_eq!(detect(b""), Detected::Unknown);
    }

    #[test]
    fn hex_head_is_bounded() {
        assert_eq!(hex_head(&[0xab; 40]).len(), 32);
        assert_eq!(hex_head(b"PK"), "504b");
        assert!(hex_head(b"").contains("empty"));
    }
}
