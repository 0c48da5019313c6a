//! Helpers shared by the unit tests.

use std::io::{Cursor, Read, Write};
use std::path::PathBuf;

use candle_core::Tensor;

/// A file under `crates/io/testdata/`.
pub(crate) fn testdata(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata")).join(name)
}

/// A file under the workspace's `tests/fixtures/`.
pub(crate) fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures")).join(name)
}

/// `tensors` serialised as safetensors (with their own dtypes) in memory.
pub(crate) fn safetensors_bytes(tensors: &[(String, Tensor)]) -> Vec<u8> {
    safetensors::serialize(tensors.iter().map(|(k, t)| (k.as_str(), t)), None).unwrap()
}

/// The zip archive `zip` with each entry's bytes passed through `edit(name, bytes)` (`None`
/// drops the entry), stored uncompressed as torch.save does, with valid checksums.
pub(crate) fn rezip(zip: &[u8], mut edit: impl FnMut(&str, Vec<u8>) -> Option<Vec<u8>>) -> Vec<u8> {
    let mut archive = crate::pth::open_archive(zip).unwrap();
    let mut out = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).unwrap();
        let name = entry.name().unwrap().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        if let Some(bytes) = edit(&name, bytes) {
            out.start_file(name.as_str(), options).unwrap();
            out.write_all(&bytes).unwrap();
        }
    }
    out.finish().unwrap().into_inner()
}

/// A small deterministic generator (SplitMix64) for the fuzz tests: failures reproduce exactly.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}
