//! Content hashing. Every id that names content is `sha256:<hex>` of a canonical byte string.

use sha2::{Digest, Sha256};

/// `sha256:<hex>` of `bytes`.
pub fn sha256_id(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Hash of several labelled parts; the label and length prefix keep parts from running together.
pub fn sha256_parts<'a>(parts: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> String {
    let mut h = Sha256::new();
    for (label, bytes) in parts {
        h.update((label.len() as u64).to_le_bytes());
        h.update(label.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// `sha256:<hex>` of `value` serialized as JSON, hashed while it is written (no buffer).
pub fn sha256_json(value: &impl serde::Serialize) -> String {
    let mut w = HashWriter::default();
    // Serializing plain data into a hasher cannot fail.
    serde_json::to_writer(&mut w, value).expect("plain data serializes");
    w.finish()
}

/// An `io::Write` sink that hashes what is written, so a value can be hashed while it is serialized.
#[derive(Default)]
struct HashWriter(Sha256);

impl HashWriter {
    fn finish(self) -> String {
        format!("sha256:{}", hex::encode(self.0.finalize()))
    }
}

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_do_not_run_together() {
        assert_ne!(
            sha256_parts([("a", b"bc".as_slice())]),
            sha256_parts([("ab", b"c".as_slice())])
        );
        assert_eq!(
            sha256_id(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
