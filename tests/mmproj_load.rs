//! Loading the Pixtral vision encoder + projector from an mmproj GGUF written by llama.cpp's
//! converter (`tests/fixtures/tiny_mistral3_tekken/mmproj.gguf`): the config, every tensor's
//! shape on the GPU, and the typed errors for wrong files (built in memory with `GgufWriter`).

use crate::common;
use common::gpu;

use webvlm::gguf::{parse_header, GgmlType, GgufError, GgufWriter, MetaValue};
use webvlm::model::vision::pixtral::{PixtralConfig, PixtralWeights};
use webvlm::model::ModelError;
use webvlm::source::{GgufBytes, LoadError, TensorSource};

fn fixture_path(rel: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_mistral3_tekken").join(rel)
}

fn fixture_bytes() -> Vec<u8> {
    std::fs::read(fixture_path("mmproj.gguf")).expect("mmproj fixture")
}

fn fixture() -> GgufBytes {
    GgufBytes::parse(fixture_bytes()).expect("mmproj fixture parses")
}

/// One tensor of a rewritten file: name, GGUF dims, type, data.
type Tensor = (String, Vec<u64>, GgmlType, Vec<u8>);

/// The fixture rewritten through `GgufWriter` with `kv` applied to each key/value pair
/// (`None` drops it) and `tensor` to each tensor (`None` drops it).
fn rewrite(kv: impl Fn(&str, &MetaValue) -> Option<MetaValue>, tensor: impl Fn(Tensor) -> Option<Tensor>) -> GgufBytes {
    let bytes = fixture_bytes();
    let header = parse_header(&bytes).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in header.metadata.iter() {
        if let Some(v) = kv(k, v) {
            w.add_kv(k, v);
        }
    }
    for t in &header.tensors {
        let r = header.absolute_range(t).unwrap();
        let data = bytes[r.start as usize..r.end as usize].to_vec();
        if let Some((name, dims, ty, data)) = tensor((t.name.clone(), t.dims.clone(), t.ty, data)) {
            w.add_tensor(name, &dims, ty, data).unwrap();
        }
    }
    GgufBytes::parse(w.write().unwrap()).unwrap()
}

fn with_kv(key: &'static str, value: MetaValue) -> GgufBytes {
    rewrite(move |k, v| Some(if k == key { value.clone() } else { v.clone() }), Some)
}

fn load(src: &GgufBytes) -> Result<PixtralWeights, LoadError> {
    let cfg = PixtralConfig::from_metadata(src.metadata()).expect("config");
    PixtralWeights::load(&gpu(), src, &cfg)
}

#[test]
fn fixture_config_values() {
    let src = fixture();
    let c = PixtralConfig::from_metadata(src.metadata()).unwrap();
    assert_eq!(c.projector_type, "pixtral");
    assert_eq!((c.hidden, c.n_layer, c.n_head, c.head_dim, c.n_ff), (32, 3, 2, 16, 48));
    assert_eq!((c.patch_size, c.merge_size, c.image_size), (14, 2, 1540));
    assert_eq!((c.patch_dim(), c.merged_dim(), c.q_dim()), (588, 128, 32));
    assert!((c.norm_eps - 1e-5).abs() < 1e-9, "eps {}", c.norm_eps);
    assert_eq!(c.rope_theta, 10_000.0);
    let close = |a: [f32; 3], b: [f32; 3]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
    assert!(close(c.image_mean, [0.481_454_66, 0.457_827_5, 0.408_210_73]), "{:?}", c.image_mean);
    assert!(close(c.image_std, [0.268_629_54, 0.261_302_6, 0.275_777_1]), "{:?}", c.image_std);
    // The projector's output width is the text model's hidden size.
    let text = GgufBytes::parse(std::fs::read(fixture_path("model.gguf")).unwrap()).unwrap();
    assert_eq!(c.text_hidden, text.metadata().get_u32("mistral3.embedding_length").unwrap());
    assert_eq!(c.text_hidden, 16);
}

#[test]
fn fixture_weights_load_with_every_tensor_shaped() {
    let src = fixture();
    let gpu = gpu();
    let cfg = PixtralConfig::from_metadata(src.metadata()).unwrap();
    let w = PixtralWeights::load(&gpu, &src, &cfg).unwrap();
    let shape = |g: &webvlm::kernels::quant::Weight| (g.rows, g.cols);
    assert_eq!(shape(&w.patch_embd), (32, 588));
    assert_eq!(w.layers.len(), 3);
    for l in &w.layers {
        for m in [&l.wq, &l.wk, &l.wv, &l.wo] {
            assert_eq!(shape(m), (32, 32), "{}", m.label);
        }
        assert_eq!(shape(&l.w_gate), (48, 32));
        assert_eq!(shape(&l.w_up), (48, 32));
        assert_eq!(shape(&l.w_down), (32, 48));
        assert_eq!((l.ln1.size(), l.ln2.size()), (32 * 4, 32 * 4));
        assert_eq!(l.wq.ty, GgmlType::F16);
    }
    assert_eq!(shape(&w.mm_patch_merger), (32, 128));
    assert_eq!(shape(&w.mm_1), (16, 32));
    assert_eq!(shape(&w.mm_2), (16, 16));
    assert_eq!((w.pre_ln.size(), w.mm_input_norm.size()), (32 * 4, 32 * 4));

    // Every tensor of the file is used: 2 + 9 per block + 4 projector tensors, and the GPU
    // holds exactly the file's bytes (F16 matrices and F32 norms are stored as they are).
    let header = parse_header(&fixture_bytes()).unwrap();
    assert_eq!(header.tensors.len(), 2 + 9 * 3 + 4);
    let file_bytes: u64 = header.tensors.iter().map(|t| t.n_bytes().unwrap()).sum();
    assert_eq!(w.bytes_on_gpu(), file_bytes);

    // Norm vectors arrive as the file's f32 values.
    let info = src.tensor_info("v.pre_ln.weight").unwrap();
    let want = webvlm::gguf::dequantize_to_vec(info.ty, &src.tensor_data("v.pre_ln.weight").unwrap(), 32).unwrap();
    assert_eq!(gpu.read_f32_blocking(&w.pre_ln, 32).unwrap(), want);
}

#[test]
fn wrong_projector_type_is_typed_error() {
    let src = with_kv("clip.projector_type", MetaValue::String("llava".into()));
    match PixtralConfig::from_metadata(src.metadata()) {
        Err(ModelError::UnsupportedProjector { projector, .. }) => assert_eq!(projector, "llava"),
        other => panic!("expected UnsupportedProjector, got {other:?}"),
    }
}

#[test]
fn text_model_is_not_a_vision_projector() {
    let src = with_kv("general.architecture", MetaValue::String("mistral3".into()));
    assert!(matches!(PixtralConfig::from_metadata(src.metadata()), Err(ModelError::NotVisionProjector(a)) if a == "mistral3"));
    let text = GgufBytes::parse(std::fs::read(fixture_path("model.gguf")).unwrap()).unwrap();
    assert!(matches!(PixtralConfig::from_metadata(text.metadata()), Err(ModelError::NotVisionProjector(_))));
}

#[test]
fn bad_config_values_are_typed_errors() {
    let src = rewrite(|k, v| (k != "clip.vision.embedding_length").then(|| v.clone()), Some);
    assert!(matches!(
        PixtralConfig::from_metadata(src.metadata()),
        Err(ModelError::Metadata(GgufError::MissingKey(k))) if k == "clip.vision.embedding_length"
    ));
    // 3 heads do not divide 32.
    let src = with_kv("clip.vision.attention.head_count", MetaValue::U32(3));
    assert!(matches!(PixtralConfig::from_metadata(src.metadata()), Err(ModelError::Invalid(_))));
    let src = with_kv("clip.vision.patch_size", MetaValue::U32(16));
    assert!(matches!(PixtralConfig::from_metadata(src.metadata()), Err(ModelError::Invalid(_))));
}

#[test]
fn missing_tensor_is_typed_error() {
    let src = rewrite(|_, v| Some(v.clone()), |t| (t.0 != "v.blk.1.ffn_up.weight").then_some(t));
    match load(&src) {
        Err(LoadError::Missing(name)) => assert_eq!(name, "v.blk.1.ffn_up.weight"),
        Err(e) => panic!("expected Missing, got {e:?}"),
        Ok(_) => panic!("expected Missing, loaded"),
    }
    let src = rewrite(|_, v| Some(v.clone()), |t| (t.0 != "mm.2.weight").then_some(t));
    assert!(matches!(load(&src), Err(LoadError::Missing(n)) if n == "mm.2.weight"));
}

#[test]
fn wrong_shape_is_typed_error() {
    // mm.1 transposed: same bytes, dims [16, 32] instead of [32, 16].
    let transpose = |name: &'static str| {
        move |(n, mut dims, ty, data): Tensor| {
            if n == name {
                dims.reverse();
            }
            Some((n, dims, ty, data))
        }
    };
    let src = rewrite(|_, v| Some(v.clone()), transpose("mm.1.weight"));
    match load(&src) {
        Err(LoadError::Shape { name, .. }) => assert_eq!(name, "mm.1.weight"),
        Err(e) => panic!("expected Shape, got {e:?}"),
        Ok(_) => panic!("expected Shape, loaded"),
    }
    // The 4-D patch embedding in the wrong order.
    let src = rewrite(|_, v| Some(v.clone()), transpose("v.patch_embd.weight"));
    assert!(matches!(load(&src), Err(LoadError::Shape { name, .. }) if name == "v.patch_embd.weight"));
    // A norm of the wrong length (one f32 short).
    let src = rewrite(
        |_, v| Some(v.clone()),
        |(n, dims, ty, data)| {
            if n == "v.blk.2.ln2.weight" {
                Some((n, vec![dims[0] - 1], ty, data[..data.len() - 4].to_vec()))
            } else {
                Some((n, dims, ty, data))
            }
        },
    );
    assert!(matches!(load(&src), Err(LoadError::Shape { name, .. }) if name == "v.blk.2.ln2.weight"));
}
