//! Every kernel module, assembled as the GPU side assembles it (prefixes, `common.wgsl`, the
//! family source), parses and validates in naga, wgpu's shader compiler on native adapters,
//! with no device: all entry points, both KV-cache readers, both matmul precisions in both shapes,
//! both subgroup preludes of matvec and attention, both views of matvec's x (storage, a uniform
//! window), and both step preludes of RoPE and decode attention (one sequence's step, a step
//! per row).

use super::attention::{self, ATTN_COMMON, DECODE, DECODE_CPU, PREFILL, PREFILL_GPU, SEQ_ONE, SEQ_ROWS, STEP};
use super::matmul::compute_prelude;
use super::matvec::XView;
use super::quant::QUANT_WGSL;
use super::KernelSpec;
use crate::kernels::shapes::{KvDtype, MatmulCompute};
use wgpu::naga;

fn modules() -> Vec<KernelSpec> {
    let spec = |label: &'static str, source: &'static str| KernelSpec::new(label, source, "", &[]);
    let mut specs = vec![
        spec("bench", super::bench::SHADER),
        spec("gated_delta_net", super::delta_net::SHADER),
        spec("elementwise", super::elementwise::SHADER),
        spec("norm", super::norm::SHADER),
        spec("sample", super::sample::SHADER),
        spec("vision", super::vision::SHADER),
        spec("vision_qwen", super::vision_qwen::SHADER),
        spec("vision_mllama", super::vision_mllama::SHADER),
        spec("embedding", super::embedding::SHADER).with_prefix(QUANT_WGSL),
        spec("rope", super::rope::SHADER).with_prefix(STEP).with_prefix(SEQ_ONE),
        spec("rope", super::rope::SHADER).with_prefix(STEP).with_prefix(SEQ_ROWS),
        spec("gdn_prep", super::gdn_prep::SHADER).with_prefix(STEP),
    ];
    for prelude in [super::matvec::NO_SUBGROUPS, super::matvec::SUBGROUPS] {
        for x in [
            XView::Storage,
            XView::Uniform(4096),
            XView::PerToken { tokens: 2, vec4s: 2304 },
            XView::PerToken { tokens: 8, vec4s: 768 },
        ] {
            specs.push(
                spec("matvec", super::matvec::SHADER).with_prefix(QUANT_WGSL).with_prefix(x.declaration()).with_prefix(prelude),
            );
        }
    }
    for compute in [MatmulCompute::F32, MatmulCompute::F16] {
        for shape in [super::matmul::SHAPE_CPU, super::matmul::SHAPE_GPU] {
            let matmul = spec("matmul", super::matmul::SHADER).with_prefix(QUANT_WGSL);
            specs.push(matmul.with_prefix(shape).with_prefix(compute_prelude(compute)));
        }
    }
    for kv in [KvDtype::F32, KvDtype::F16] {
        let attn =
            |label, source| spec(label, source).with_prefix(attention::kv_reader(kv)).with_prefix(ATTN_COMMON).with_prefix(STEP);
        specs.push(attn("attention_prefill", PREFILL).with_prefix(attention::WIDTH_128));
        for prelude in [attention::NO_SUBGROUPS, attention::SUBGROUPS] {
            for width in [attention::WIDTH_128, attention::WIDTH_256] {
                for tile in [attention::TILE_1024, attention::TILE_512] {
                    specs.push(
                        attn("attention_prefill_gpu", PREFILL_GPU).with_prefix(tile).with_prefix(width).with_prefix(prelude),
                    );
                }
                for seq_of in [SEQ_ONE, SEQ_ROWS] {
                    specs.push(attn("attention_decode", DECODE).with_prefix(width).with_prefix(prelude).with_prefix(seq_of));
                    if prelude == attention::NO_SUBGROUPS {
                        specs.push(attn("attention_decode_rows", DECODE_CPU).with_prefix(width).with_prefix(seq_of));
                    }
                }
            }
        }
    }
    specs
}

#[test]
fn every_kernel_module_validates() {
    // What a WebGPU device grants (`unpack2x16float` and friends are core WGSL), plus
    // `shader-f16` for matmul's f16 prelude, and subgroups for the native matvec and attention
    // preludes only (every other module must validate without them).
    use naga::valid::Capabilities as C;
    let web = C::default() | C::SHADER_FLOAT16_IN_FLOAT32 | C::SHADER_FLOAT16;
    for spec in modules() {
        let native = spec.sources.iter().any(|part| part == super::matvec::SUBGROUPS || part == attention::SUBGROUPS);
        let caps = if native { web | C::SUBGROUP } else { web };
        let code = spec.sources.concat();
        let module =
            naga::front::wgsl::parse_str(&code).unwrap_or_else(|e| panic!("{}: {}", spec.label, e.emit_to_string(&code)));
        let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps);
        if native {
            validator
                .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
                .subgroup_operations(naga::valid::SubgroupOperationSet::all());
        }
        validator.validate(&module).unwrap_or_else(|e| panic!("{}: {}", spec.label, e.emit_to_string(&code)));
    }
}
