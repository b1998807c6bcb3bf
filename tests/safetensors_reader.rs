//! The safetensors reader against files written by the Python `safetensors` package and by
//! transformers' sharded `save_pretrained` (`scripts/make_safetensors_refs.py`): headers,
//! metadata, the shard index, and every value decoded to f32 equal to the script's `.npy`.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use webvlm::gguf::{dequantize_to_vec, GgmlType};
use webvlm::safetensors::{
    parse_header, Dtype, HeaderParser, MappedSafetensors, SafetensorsError, SafetensorsFolder, TensorEntry,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/safetensors")
}

fn expected() -> Value {
    serde_json::from_slice(&std::fs::read(fixtures().join("expected.json")).unwrap()).unwrap()
}

/// Checks `entries` (one file's) against the expected dtypes and shapes, and every float
/// tensor's decoded values against `npy/<stem>/<name>.npy`.
fn check_values<'a>(expected: &Value, stem: &str, entries: impl Iterator<Item = (&'a TensorEntry, &'a [u8])>) {
    let want = expected["tensors"].as_object().unwrap();
    let mut seen = 0;
    for (entry, bytes) in entries {
        seen += 1;
        let e = &want[&entry.name];
        assert_eq!(entry.dtype.name(), e["dtype"], "{}", entry.name);
        let shape: Vec<u64> = e["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
        assert_eq!(entry.shape, shape, "{}", entry.name);
        assert_eq!(bytes.len() as u64, entry.byte_len());
        let Some(ty) = entry.dtype.ggml_type() else { continue };
        let (npy_shape, values) = common::read_npy(&fixtures().join(format!("npy/{stem}/{}.npy", entry.name)));
        assert_eq!(npy_shape.iter().map(|&d| d as u64).collect::<Vec<_>>(), entry.shape, "{}", entry.name);
        let decoded = dequantize_to_vec(ty, bytes, entry.n_elements() as usize).unwrap();
        assert_eq!(decoded.len() as u64, entry.n_elements());
        // F16 and BF16 widen to f32 exactly: the values must be bit-identical.
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&decoded), bits(&values), "{}", entry.name);
    }
    assert_eq!(seen, want.len(), "tensor count of {stem}");
}

#[test]
fn single_file_reads_back_equal() {
    let path = fixtures().join("single.safetensors");
    let expected = expected();
    let expected = &expected["single.safetensors"];
    let file = MappedSafetensors::open(&path).unwrap();
    let header = file.header();

    let metadata: BTreeMap<String, String> = serde_json::from_value(expected["metadata"].clone()).unwrap();
    assert_eq!(header.metadata, metadata);
    assert!(header.tensors.windows(2).all(|w| w[0].end <= w[1].start), "sorted by offset, disjoint");
    check_values(expected, "single", header.tensors.iter().map(|e| (e, file.data(e).unwrap())));

    // Shapes of every rank, GGUF dims reversed, weight types and the one non-weight dtype.
    let (scale, bytes) = file.tensor("scale").unwrap();
    assert_eq!(
        (scale.shape.as_slice(), scale.n_elements(), dequantize_to_vec(GgmlType::F32, bytes, 1).unwrap()),
        (&[][..], 1, vec![0.125])
    );
    let (patch, _) = file.tensor("patch.weight").unwrap();
    assert_eq!((patch.ggml_dims(), patch.ggml_type().unwrap()), (vec![2, 2, 3, 2], GgmlType::F16));
    assert_eq!(file.tensor("embed.weight").unwrap().0.ggml_type().unwrap(), GgmlType::BF16);
    assert_eq!(file.tensor("conv.weight").unwrap().0.ggml_type().unwrap(), GgmlType::F32);
    let (ids, bytes) = file.tensor("position_ids").unwrap();
    assert!(
        matches!(ids.ggml_type(), Err(SafetensorsError::UnsupportedDtype { ref tensor, dtype: "I64" }) if tensor == "position_ids")
    );
    let ids: Vec<i64> = bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(ids, (0..7).collect::<Vec<_>>());
    assert!(matches!(file.tensor("nope"), Err(SafetensorsError::MissingTensor(n)) if n == "nope"));

    // The slice parser and the push parser in any chunking read the same header.
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&parse_header(&bytes).unwrap(), header);
    for size in [1, 7, 4096] {
        let mut parser = HeaderParser::new();
        let mut got = None;
        for chunk in bytes.chunks(size) {
            if let Some(h) = parser.feed(chunk).unwrap() {
                got = Some(h);
            }
        }
        assert_eq!(got.as_ref(), Some(header), "chunk size {size}");
        assert_eq!(parser.bytes_consumed(), header.data_start);
    }
}

#[test]
fn sharded_folder_reads_back_equal() {
    let expected = expected();
    let folder = SafetensorsFolder::open(fixtures().join("sharded")).unwrap();
    let index = folder.index().expect("a sharded folder has an index");
    let files: Vec<&str> = index.files().collect();
    let names: Vec<String> = (1..=3).map(|i| format!("model-{i:05}-of-00003.safetensors")).collect();
    assert_eq!(files, names);
    assert_eq!(folder.shards().len(), 3);

    let weight_map: BTreeMap<String, String> = serde_json::from_value(expected["weight_map"].clone()).unwrap();
    assert_eq!(index.weight_map(), &weight_map);
    assert_eq!(folder.len(), weight_map.len());
    assert_eq!(folder.tensors().count(), weight_map.len());
    for (tensor, file) in &weight_map {
        assert_eq!(index.shard_of(tensor), Some(file.as_str()));
        let (entry, bytes) = folder.tensor(tensor).unwrap();
        let shard = folder.shards().iter().find(|s| s.path().ends_with(file)).unwrap();
        assert_eq!(shard.tensor(tensor).unwrap(), (entry, bytes), "{tensor} comes from {file}");
    }
    for shard in folder.shards() {
        let name = shard.path().file_name().unwrap().to_str().unwrap();
        let stem = name.trim_end_matches(".safetensors");
        let expected = &expected[format!("sharded/{name}")];
        assert_eq!(shard.header().metadata["format"], "pt");
        check_values(expected, stem, shard.header().tensors.iter().map(|e| (e, shard.data(e).unwrap())));
    }
    let sum: u64 = folder.tensors().map(TensorEntry::byte_len).sum();
    assert_eq!(index.total_size(), Some(sum), "transformers' total_size is the sum of tensor bytes");
}

#[test]
fn folder_with_one_file() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("safetensors_reader_single");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixtures().join("single.safetensors"), dir.join("model.safetensors")).unwrap();
    let folder = SafetensorsFolder::open(&dir).unwrap();
    assert!(folder.index().is_none());
    assert_eq!(folder.len(), 8);
    let (entry, bytes) = folder.tensor("layers.0.proj.bias").unwrap();
    assert_eq!((entry.dtype, bytes.len()), (Dtype::F32, 12));
}
