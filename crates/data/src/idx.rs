//! The IDX format of (Fashion-)MNIST: big-endian magic `0x0000_08<ndim>`,
//! `ndim` big-endian u32 dimensions, then unsigned bytes. Files may be
//! gzip-compressed (detected by the `1f 8b` magic, not the extension).

use crate::error::{Error, Result};
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::Path;

/// Largest decompressed IDX file accepted (guards against gzip bombs).
const MAX_BYTES: u64 = 1 << 30;

/// A decoded IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idx {
    /// Dimensions.
    pub dims: Vec<usize>,
    /// Row-major data.
    pub data: Vec<u8>,
}

/// Decompresses `bytes` if they are gzip, else returns them as they are.
pub fn maybe_gunzip(bytes: Vec<u8>, path: &Path) -> Result<Vec<u8>> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        GzDecoder::new(bytes.as_slice()).take(MAX_BYTES + 1).read_to_end(&mut out).map_err(|e| Error::Format {
            path: path.to_path_buf(),
            msg: format!("corrupt or truncated gzip data: {e}"),
        })?;
        if out.len() as u64 > MAX_BYTES {
            return Err(Error::Format { path: path.to_path_buf(), msg: "decompresses to more than 1 GiB".into() });
        }
        Ok(out)
    } else {
        Ok(bytes)
    }
}

/// Parses IDX bytes (already decompressed).
pub fn parse(bytes: &[u8], path: &Path) -> Result<Idx> {
    let bad = |msg: String| Error::Format { path: path.to_path_buf(), msg };
    if bytes.len() < 4 {
        return Err(bad(format!("too short for an IDX header ({} bytes)", bytes.len())));
    }
    if bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 {
        return Err(bad(format!(
            "bad IDX magic {:02x}{:02x}{:02x}{:02x} (expected 000008xx: unsigned bytes)",
            bytes[0], bytes[1], bytes[2], bytes[3]
        )));
    }
    let ndim = bytes[3] as usize;
    if ndim == 0 || ndim > 4 {
        return Err(bad(format!("IDX files with {ndim} dimensions are not supported")));
    }
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(bad("truncated IDX header".into()));
    }
    let dims: Vec<usize> = (0..ndim)
        .map(|i| u32::from_be_bytes([bytes[4 + 4 * i], bytes[5 + 4 * i], bytes[6 + 4 * i], bytes[7 + 4 * i]]) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
    let body = &bytes[header..];
    if body.len() != count {
        return Err(bad(format!("dimensions {dims:?} need {count} bytes of data, the file has {}", body.len())));
    }
    Ok(Idx { dims, data: body.to_vec() })
}

/// Reads an IDX file (gzip or raw).
pub fn read(path: &Path) -> Result<Idx> {
    let bytes = std::fs::read(path).map_err(|e| Error::Io { path: path.to_path_buf(), source: e })?;
    parse(&maybe_gunzip(bytes, path)?, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(magic: u8, dims: &[u32]) -> Vec<u8> {
        let mut v = vec![0, 0, 8, magic];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    #[test]
    fn parses_and_rejects() {
        let p = Path::new("x.idx");
        let mut ok = header(3, &[2, 2, 3]);
        ok.extend(0..12u8);
        let idx = parse(&ok, p).unwrap();
        assert_eq!(idx.dims, vec![2, 2, 3]);
        assert_eq!(idx.data.len(), 12);
        assert!(parse(&ok[..ok.len() - 1], p).unwrap_err().to_string().contains("need 12 bytes"));
        let mut bad = ok.clone();
        bad[2] = 9;
        assert!(parse(&bad, p).unwrap_err().to_string().contains("bad IDX magic"));
        assert!(parse(&[0, 0], p).is_err());
        assert!(parse(&header(0, &[]), p).is_err());
    }

    #[test]
    fn corrupt_gzip_is_an_error() {
        let p = Path::new("x.gz");
        assert!(maybe_gunzip(vec![0x1f, 0x8b, 8, 0, 1, 2, 3], p).unwrap_err().to_string().contains("gzip"));
    }

    /// Arbitrary bytes never panic.
    #[test]
    fn fuzz_arbitrary_bytes() {
        let mut state = 0x1234_5678u64;
        let p = Path::new("fuzz");
        for len in 0..400 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (state >> 56) as u8
                })
                .collect();
            let _ = parse(&bytes, p);
            let _ = maybe_gunzip(bytes.clone(), p).map(|b| parse(&b, p));
            let mut with_magic = vec![0x1f, 0x8b];
            with_magic.extend(&bytes);
            let _ = maybe_gunzip(with_magic, p);
        }
    }
}
