//! The fuzz targets' checks, written once: `fuzz/` runs them under
//! libFuzzer (`cargo +nightly fuzz run NAME`) and `tests/fuzz_corpus.rs`
//! runs them on stable over the checked-in corpus and a fixed number of
//! seeded random inputs.
//!
//! Each target takes arbitrary bytes, runs one of the sans-I/O parsers of
//! [`crate::proto`] on them (or on something built from them), and panics
//! when an invariant does not hold; a parser that panics by itself is a
//! finding too. What each target promises is said at its function:
//! [`request`], [`body`], [`path`], [`proxy_protocol`], [`frame_tracker`],
//! [`tls_session`]. Nothing here is used by the proxy itself; it imports
//! only from `proto` and the layers below it.

mod body;
mod path;
mod proxy;
mod request;
mod tls;
mod ws;

pub use body::body;
pub use path::path;
pub use proxy::proxy_protocol;
pub use request::request;
pub use tls::tls_session;
pub use ws::frame_tracker;

/// A target: runs its checks on one input, panics when one fails.
pub type Target = fn(&[u8]);

/// Every target by its name (the name of its corpus folder and of its
/// `fuzz/fuzz_targets` file).
pub const TARGETS: &[(&str, Target)] = &[
    ("request", request),
    ("body", body),
    ("path", path),
    ("proxy_protocol", proxy_protocol),
    ("frame_tracker", frame_tracker),
    ("tls_session", tls_session),
];

/// Fuzz bytes read as a stream of choices; past the end every read gives
/// zeros, so any input is a complete description of a case.
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    /// Up to `n` bytes (fewer at the end).
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        taken
    }

    /// Everything left.
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// A tiny xorshift64: reproducible choices without a dependency (the cuts
/// here, `tests/fuzz_corpus.rs`'s inputs, the tracker's tests). Its state
/// must not be 0.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
}

/// Cut points for feeding `len` bytes in pieces: ascending, the last one
/// `len`, at most `max` of them, chosen by `seed` (so that one input always
/// gives the same pieces). Pieces may be empty.
fn cuts(len: usize, seed: u64, max: usize) -> Vec<usize> {
    let mut rng = Rng(seed | 1);
    let count = rng.below(max);
    let mut out = Vec::with_capacity(count + 1);
    while out.len() < count {
        let c = rng.below(len + 1);
        out.push(c);
        // Small pieces as often as large ones, anywhere: header bytes
        // split one by one are where trackers lose their place.
        if rng.next_u64() & 1 == 0 && out.len() < count {
            out.push((c + 1 + rng.below(3)).min(len));
        }
    }
    out.push(len);
    out.sort_unstable();
    out
}

/// FNV-1a: a seed from the input itself, for the pieces it is fed in (and,
/// in `tests/fuzz_corpus.rs`, from a target's name).
pub fn seed_of(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_are_ascending_and_end_at_the_length() {
        for seed in 0..200 {
            for len in [0, 1, 5, 100] {
                let c = cuts(len, seed, 8);
                assert!(c.windows(2).all(|w| w[0] <= w[1]));
                assert_eq!(c.last(), Some(&len));
                assert!(c.len() <= 8);
            }
        }
    }

    #[test]
    fn input_reads_zeros_past_the_end() {
        let mut i = Input::new(&[1, 2, 3]);
        assert_eq!(i.u16(), 0x0201);
        assert_eq!(i.take(5), &[3]);
        assert!(i.is_empty());
        assert_eq!((i.byte(), i.u32()), (0, 0));
    }
}
