//! The canonical encoding of everything a device signs.
//!
//! A payload is a sequence of fields, each written as a 4-byte big-endian
//! length followed by its bytes. The first field is always a domain tag that
//! names the payload's purpose and version (`sesame.answer.v1`, ...), so a
//! signature made for one purpose can never be replayed as another, and no
//! two different field lists encode to the same bytes (unlike `a|b|c` joins).
//! Integers are fixed-width big-endian inside their field.

/// Builder of one canonical payload.
#[derive(Debug, Clone)]
pub struct Canonical {
    buf: Vec<u8>,
}

impl Canonical {
    /// Starts a payload with its domain tag.
    pub fn new(domain: &str) -> Self {
        let mut c = Canonical {
            buf: Vec::with_capacity(256),
        };
        c.push(domain.as_bytes());
        c
    }

    fn push(&mut self, bytes: &[u8]) {
        // Inputs are bounded far below 4 GiB by the API limits; saturate rather than wrap.
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(bytes);
    }

    pub fn bytes(mut self, bytes: &[u8]) -> Self {
        self.push(bytes);
        self
    }

    pub fn str(self, s: &str) -> Self {
        self.bytes(s.as_bytes())
    }

    pub fn u8(self, v: u8) -> Self {
        self.bytes(&[v])
    }

    pub fn i64(self, v: i64) -> Self {
        self.bytes(&v.to_be_bytes())
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_boundaries_are_unambiguous() {
        let a = Canonical::new("t").str("ab").str("c").finish();
        let b = Canonical::new("t").str("a").str("bc").finish();
        assert_ne!(a, b);
    }

    #[test]
    fn domain_separates() {
        let a = Canonical::new("sesame.answer.v1").str("x").finish();
        let b = Canonical::new("sesame.enroll.v1").str("x").finish();
        assert_ne!(a, b);
    }

    #[test]
    fn layout_is_length_prefixed_big_endian() {
        let p = Canonical::new("d").u8(7).i64(1).finish();
        assert_eq!(
            p,
            vec![0, 0, 0, 1, b'd', 0, 0, 0, 1, 7, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1]
        );
    }
}
