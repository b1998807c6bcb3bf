//! What a vision encoder gives the text model: one row of text-model embedding per image
//! token, on the GPU.

use crate::backend::gpu::Result as GpuResult;
use crate::backend::{Buffer, Device};

/// An image's identity: the SHA-256 of its preprocessing settings and its bytes. It keys the
/// engine's image cache and, as [`ImageFeatures::content`], the prompt cache's image positions.
pub type ImageDigest = [u8; 32];

/// The projector output of one image, on the GPU: `[n_tokens][dim]` f32, merged patches in
/// row-major order over a `rows x cols` grid (the image's `[IMG]` tokens, in prompt order).
pub struct ImageFeatures {
    pub buffer: Buffer,
    pub rows: u32,
    pub cols: u32,
    pub dim: u32,
    /// The SHA-256 of the image file and preprocessing settings, when known (set by the
    /// engine's image cache): the prompt cache reuses KV entries of image positions only
    /// with it.
    pub content: Option<ImageDigest>,
}

impl ImageFeatures {
    pub fn n_tokens(&self) -> u32 {
        self.rows * self.cols
    }

    /// Bytes held on the GPU.
    pub fn bytes(&self) -> u64 {
        self.buffer.size()
    }

    /// Reads the features back (tests, debugging).
    pub async fn read(&self, dev: &Device) -> GpuResult<Vec<f32>> {
        dev.read_f32(&self.buffer, 0, (self.n_tokens() * self.dim) as usize).await
    }
}
