//! The vision encoders the bench times, behind one interface: which synthetic mmproj to build
//! ([`VisionSpec`]: Pixtral + Mistral 3 projector, or the Qwen3.5 encoder + merger), the
//! preprocessed size of a source image under each encoder's size rule, and per loaded
//! encoder ([`Encoder`]) its shapes, FLOPs and activation bytes per image (the memory plan's).

use webvlm::backend::gpu::Result as GpuResult;
use webvlm::backend::{Device, Program};
use webvlm::image::qwen::{smart_resize, QwenPreprocess};
use webvlm::image::{output_size, PixelImage, DEFAULT_MAX_EDGE};
use webvlm::kernels::matmul::MatmulCompute;
use webvlm::model::memory_plan::{vision_scratch_bytes, EncoderConfig};
use webvlm::model::synthetic::{synthetic_pixtral_mmproj, synthetic_qwen_vl_mmproj, QwenVisionShape, VisionShape};
use webvlm::model::vision::pixtral::{Pixtral, PixtralConfig};
use webvlm::model::vision::qwen_vl::{QwenVl, QwenVlConfig};
use webvlm::model::vision::ImageFeatures;
use webvlm::model::PlanLimits;
use webvlm::source::{GgufBytes, LoadQuant};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Which synthetic encoder to build.
#[derive(Clone, Copy, Debug)]
pub enum VisionSpec {
    Pixtral(VisionShape),
    Qwen(QwenVisionShape),
}

impl VisionSpec {
    /// The tiny encoder of the same kind (same kernels; compiles the pipelines).
    pub fn tiny(self) -> VisionSpec {
        match self {
            VisionSpec::Pixtral(_) => VisionSpec::Pixtral(VisionShape::tiny()),
            VisionSpec::Qwen(_) => VisionSpec::Qwen(QwenVisionShape::tiny()),
        }
    }

    /// Encoder blocks.
    pub fn n_layer(self) -> u32 {
        match self {
            VisionSpec::Pixtral(s) => s.n_layer,
            VisionSpec::Qwen(s) => s.n_layer,
        }
    }

    /// Fewer blocks (the same work per block).
    pub fn with_layers(self, n_layer: Option<u32>) -> VisionSpec {
        match (self, n_layer) {
            (VisionSpec::Pixtral(s), Some(n)) => VisionSpec::Pixtral(VisionShape { n_layer: n, ..s }),
            (VisionSpec::Qwen(s), Some(n)) => VisionSpec::Qwen(QwenVisionShape { n_layer: n, ..s }),
            (spec, None) => spec,
        }
    }

    pub fn build(self, seed: u64) -> Res<GgufBytes> {
        Ok(match self {
            VisionSpec::Pixtral(s) => synthetic_pixtral_mmproj(&s, seed)?,
            VisionSpec::Qwen(s) => synthetic_qwen_vl_mmproj(&s, seed)?,
        })
    }

    /// The `(width, height)` a `width x height` source image is preprocessed to: Pixtral's
    /// resize to multiples of 28 within 1540 (512 → 532), or the Qwen processor's
    /// `smart_resize` to multiples of 32 within its default pixel bounds (512 → 512).
    pub fn processed(self, width: u32, height: u32) -> Res<(u32, u32)> {
        Ok(match self {
            VisionSpec::Pixtral(_) => {
                let (h, w) = output_size(height, width, DEFAULT_MAX_EDGE);
                (w, h)
            }
            VisionSpec::Qwen(_) => {
                let p = QwenPreprocess::default();
                let (h, w) = smart_resize(height, width, p.factor(), p.min_pixels, p.max_pixels)?;
                (w, h)
            }
        })
    }

    /// A small preprocessed image size every encoder of this kind takes (the warm-up's).
    pub fn warm_size(self) -> (u32, u32) {
        match self {
            VisionSpec::Pixtral(_) => (56, 56),
            VisionSpec::Qwen(_) => (64, 64),
        }
    }
}

/// A loaded encoder.
pub enum Encoder {
    Pixtral(Pixtral),
    Qwen(QwenVl),
}

/// The shapes printed with the figures.
pub struct EncoderShape {
    pub hidden: u32,
    pub n_layer: u32,
    pub n_head: u32,
    pub head_dim: u32,
    pub n_ff: u32,
    pub text_hidden: u32,
    pub patch_size: u32,
}

impl Encoder {
    pub fn load(dev: &Device, spec: VisionSpec, src: &GgufBytes, quant: LoadQuant) -> Res<Encoder> {
        Ok(match spec {
            VisionSpec::Pixtral(_) => Encoder::Pixtral(Pixtral::load(dev, src, quant)?),
            VisionSpec::Qwen(_) => Encoder::Qwen(QwenVl::load(dev, src, quant)?),
        })
    }

    pub fn set_compute(&mut self, compute: MatmulCompute) {
        match self {
            Encoder::Pixtral(e) => e.compute = compute,
            Encoder::Qwen(e) => e.compute = compute,
        }
    }

    pub fn compute(&self) -> MatmulCompute {
        match self {
            Encoder::Pixtral(e) => e.compute,
            Encoder::Qwen(e) => e.compute,
        }
    }

    pub fn encode(&self, dev: &Device, image: &PixelImage) -> GpuResult<ImageFeatures> {
        match self {
            Encoder::Pixtral(e) => e.encode(dev, image),
            Encoder::Qwen(e) => e.encode(dev, image),
        }
    }

    pub fn record_pass(&self, dev: &Device, image: &PixelImage) -> GpuResult<Program> {
        match self {
            Encoder::Pixtral(e) => e.record_pass(dev, image),
            Encoder::Qwen(e) => e.record_pass(dev, image),
        }
    }

    pub fn weight_bytes(&self) -> u64 {
        match self {
            Encoder::Pixtral(e) => e.weights.bytes_on_gpu(),
            Encoder::Qwen(e) => e.weights.bytes_on_gpu(),
        }
    }

    pub fn shape(&self) -> EncoderShape {
        match self {
            Encoder::Pixtral(e) => {
                let c = &e.cfg;
                EncoderShape {
                    hidden: c.hidden,
                    n_layer: c.n_layer,
                    n_head: c.n_head,
                    head_dim: c.head_dim,
                    n_ff: c.n_ff,
                    text_hidden: c.text_hidden,
                    patch_size: c.patch_size,
                }
            }
            Encoder::Qwen(e) => {
                let c = &e.cfg;
                EncoderShape {
                    hidden: c.hidden,
                    n_layer: c.n_layer,
                    n_head: c.n_head,
                    head_dim: c.head_dim,
                    n_ff: c.n_ff,
                    text_hidden: c.text_hidden,
                    patch_size: c.patch_size,
                }
            }
        }
    }

    /// FLOPs of one image of `n` patches ([`pixtral_flops`], [`qwen_flops`]).
    pub fn flops(&self, n: u64) -> f64 {
        match self {
            Encoder::Pixtral(e) => pixtral_flops(&e.cfg, n),
            Encoder::Qwen(e) => qwen_flops(&e.cfg, n),
        }
    }

    /// Bytes one encode of a preprocessed `height x width` image allocates: the memory plan's
    /// vision scratch for it (every buffer of the pass, pixels and features included).
    pub fn activation_bytes(&self, dev: &Device, height: u32, width: u32) -> Res<u64> {
        let cfg = match self {
            Encoder::Pixtral(e) => EncoderConfig::Pixtral(&e.cfg),
            Encoder::Qwen(e) => EncoderConfig::QwenVl(&e.cfg),
        };
        Ok(vision_scratch_bytes(cfg, height, width, PlanLimits::from_caps(dev.caps()))?)
    }
}

/// Multiply-adds ×2 of one Pixtral image of `n` patches (`m = n / 4` merged), from the shapes:
///
/// - patch embedding: `2·n·(3·14·14)·d`;
/// - per layer: q, k, v, o `4 · 2·n·d·q_dim`; attention over all patch pairs, QKᵀ and PV,
///   `2 · 2·n²·q_dim` (every head sees every patch: non-causal); SiLU-gated FFN
///   `3 · 2·n·d·ff`;
/// - projector: patch merger `2·m·(4d)·d`, `mm.1` `2·m·d·t`, `mm.2` `2·m·t·t`.
///
/// Norms, RoPE, softmax, SiLU and GELU (O(n·d) each) are left out.
pub fn pixtral_flops(c: &PixtralConfig, n: u64) -> f64 {
    let (d, q, ff, t) = (c.hidden as f64, c.q_dim() as f64, c.n_ff as f64, c.text_hidden as f64);
    let (n, m) = (n as f64, (n / 4) as f64);
    let patch = 2.0 * n * c.patch_dim() as f64 * d;
    let layer = 4.0 * 2.0 * n * d * q + 2.0 * 2.0 * n * n * q + 3.0 * 2.0 * n * d * ff;
    let proj = 2.0 * m * c.merged_dim() as f64 * d + 2.0 * m * d * t + 2.0 * m * t * t;
    patch + c.n_layer as f64 * layer + proj
}

/// Multiply-adds ×2 of one Qwen image of `n` patches (`m = n / 4` merged):
///
/// - patch embedding: two temporal slices, `2 · 2·n·(3·16·16)·d`;
/// - per layer: fused qkv `2·n·d·3d`, proj `2·n·d·d`; attention over all patch pairs
///   `2 · 2·n²·d`; GELU MLP `2 · 2·n·d·ff`;
/// - merger: fc1 `2·m·(4d)·(4d)`, fc2 `2·m·(4d)·t`.
///
/// Norms, RoPE, softmax, GELU and the position interpolation (O(n·d) each) are left out.
pub fn qwen_flops(c: &QwenVlConfig, n: u64) -> f64 {
    let (d, ff, t, md) = (c.hidden as f64, c.n_ff as f64, c.text_hidden as f64, c.merged_dim() as f64);
    let (n, m) = (n as f64, (n / 4) as f64);
    let patch = 2.0 * 2.0 * n * c.patch_dim() as f64 * d;
    let layer = 2.0 * n * d * 3.0 * d + 2.0 * n * d * d + 2.0 * 2.0 * n * n * d + 2.0 * 2.0 * n * d * ff;
    patch + c.n_layer as f64 * layer + 2.0 * m * md * md + 2.0 * m * md * t
}

#[cfg(test)]
mod tests {
    use super::*;
    use webvlm::source::TensorSource;

    #[test]
    fn flops_of_a_512_image_at_3b_shapes() {
        let src = synthetic_pixtral_mmproj(&VisionShape::tiny(), 1).unwrap();
        let mut c = PixtralConfig::from_metadata(src.metadata()).unwrap();
        let s = VisionShape::ministral3_3b();
        (c.hidden, c.n_layer, c.n_head, c.head_dim, c.n_ff, c.text_hidden) =
            (s.hidden, s.n_layer, s.n_head, s.head_dim, s.n_ff, s.text_hidden);
        // 532x532 → 38x38 patches.
        let n = 1444u64;
        let (d, ff) = (1024.0, 4096.0);
        let nf = n as f64;
        let layer = 8.0 * nf * d * d + 4.0 * nf * nf * d + 6.0 * nf * d * ff;
        let expected = 2.0 * nf * 588.0 * d + 24.0 * layer + 2.0 * 361.0 * (4096.0 * d + d * 3072.0 + 3072.0 * 3072.0);
        assert!((pixtral_flops(&c, n) - expected).abs() < 1.0);
        assert!((1.3e12..1.5e12).contains(&expected), "{expected}");
    }

    #[test]
    fn qwen_sizes_of_a_512_image() {
        let spec = VisionSpec::Qwen(QwenVisionShape::qwen35_4b());
        assert_eq!(spec.processed(512, 512).unwrap(), (512, 512));
        assert_eq!(VisionSpec::Pixtral(VisionShape::tiny()).processed(512, 512).unwrap(), (532, 532));
    }
}
