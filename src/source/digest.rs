//! A streamed file checked against the SHA-256 its source published (a corrupt or truncated
//! download fails the load instead of loading wrong weights).

use sha2::{Digest, Sha256};

use super::LoadError;

/// The published digest and the hash of the bytes pushed so far.
pub(super) struct Sha256Check {
    want: [u8; 32],
    hasher: Sha256,
}

impl Sha256Check {
    pub(super) fn new(want: [u8; 32]) -> Sha256Check {
        Sha256Check { want, hasher: Sha256::new() }
    }

    pub(super) fn update(&mut self, chunk: &[u8]) {
        self.hasher.update(chunk);
    }

    /// Fails unless the bytes pushed hash to the published digest.
    pub(super) fn finish(self) -> Result<(), LoadError> {
        let got: [u8; 32] = self.hasher.finalize().into();
        if got == self.want {
            return Ok(());
        }
        let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        Err(LoadError::Checksum { want: hex(&self.want), got: hex(&got) })
    }
}
