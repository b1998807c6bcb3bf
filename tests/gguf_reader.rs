//! GGUF reader round trips: writer → parser for every metadata type, v2/v3, default and
//! custom alignment, tensors of every type, chunked feeding, split files, memory maps,
//! and (when present) the gguf-py dequantization fixtures and converter-made models.

use webvlm::gguf::quant::{dequantize_to_vec, quantize_q8_0, random_blocks};
use webvlm::gguf::*;

fn arr(elem: ValueType, items: Vec<MetaValue>) -> MetaValue {
    MetaValue::Array { elem, items }
}

/// One value of every type, including empty, nested and string arrays.
fn every_value() -> Vec<(&'static str, MetaValue)> {
    use MetaValue as V;
    vec![
        ("t.u8", V::U8(200)),
        ("t.i8", V::I8(-100)),
        ("t.u16", V::U16(60000)),
        ("t.i16", V::I16(-30000)),
        ("t.u32", V::U32(4_000_000_000)),
        ("t.i32", V::I32(-2_000_000_000)),
        ("t.f32", V::F32(1.5e-5)),
        ("t.bool", V::Bool(true)),
        ("t.string", V::String("héllo ✓ [IMG]".into())),
        ("t.empty_string", V::String(String::new())),
        ("t.u64", V::U64(u64::MAX)),
        ("t.i64", V::I64(i64::MIN)),
        ("t.f64", V::F64(-1e300)),
        ("t.arr_f32", arr(ValueType::F32, vec![V::F32(0.5), V::F32(-2.0)])),
        ("t.arr_str", arr(ValueType::String, vec![V::String("<s>".into()), V::String("Ġa".into())])),
        ("t.arr_i32", arr(ValueType::I32, vec![V::I32(1), V::I32(-3)])),
        ("t.arr_empty", arr(ValueType::U64, vec![])),
        ("t.arr_bool", arr(ValueType::Bool, vec![V::Bool(false), V::Bool(true)])),
        (
            "t.nested",
            arr(
                ValueType::Array,
                vec![
                    arr(ValueType::U8, vec![V::U8(1), V::U8(2)]),
                    arr(ValueType::U8, vec![]),
                    arr(ValueType::U8, vec![V::U8(3)]),
                ],
            ),
        ),
        (
            "t.nested3",
            arr(ValueType::Array, vec![arr(ValueType::Array, vec![arr(ValueType::String, vec![V::String("x".into())])])]),
        ),
    ]
}

/// A file with every metadata type and one tensor of each given type.
fn sample(version: u32, alignment: Option<u32>, types: &[GgmlType]) -> (Vec<u8>, Vec<(String, Vec<u8>)>) {
    let (w, tensors) = sample_writer(version, alignment, types);
    (w.write().unwrap(), tensors)
}

fn sample_writer(version: u32, alignment: Option<u32>, types: &[GgmlType]) -> (GgufWriter, Vec<(String, Vec<u8>)>) {
    let mut w = GgufWriter::new();
    w.set_version(version);
    w.add_kv("general.architecture", MetaValue::String("llama".into()));
    if let Some(a) = alignment {
        w.set_alignment(a).unwrap();
    }
    for (k, v) in every_value() {
        w.add_kv(k, v);
    }
    let mut tensors = Vec::new();
    for (i, &ty) in types.iter().enumerate() {
        let name = format!("blk.{i}.{}.weight", ty.name().to_lowercase());
        let data = random_blocks(ty, 2 * 3, i as u64);
        w.add_tensor(&name, &[2 * ty.block_size() as u64, 3], ty, data.clone()).unwrap();
        tensors.push((name, data));
    }
    (w, tensors)
}

fn check_tensors(bytes: &[u8], h: &GgufHeader, tensors: &[(String, Vec<u8>)]) {
    assert_eq!(h.tensors.len(), tensors.len());
    assert_eq!(h.data_offset % h.alignment, 0);
    for (name, data) in tensors {
        let t = h.tensor(name).unwrap();
        assert_eq!(t.offset % h.alignment, 0);
        assert_eq!(t.n_bytes().unwrap(), data.len() as u64);
        let r = h.absolute_range(t).unwrap();
        assert_eq!(&bytes[r.start as usize..r.end as usize], &data[..], "{name}");
    }
}

#[test]
fn every_metadata_type_round_trips() {
    let (bytes, _) = sample(3, None, &[]);
    let h = parse_header(&bytes).unwrap();
    assert_eq!(h.version, 3);
    let keys: Vec<&str> = h.metadata.iter().map(|(k, _)| k).collect();
    let mut want = vec!["general.architecture"];
    want.extend(every_value().iter().map(|(k, _)| *k));
    assert_eq!(keys, want, "file order preserved");
    for (k, v) in every_value() {
        assert_eq!(h.metadata.get(k), Some(&v), "{k}");
    }
    let m = &h.metadata;
    assert_eq!(m.architecture().unwrap(), "llama");
    assert_eq!(m.get_u32(&arch_key("t", "u16")).unwrap(), 60000);
    assert!(matches!(m.get_f32("t.f64"), Err(GgufError::ValueOutOfRange { .. })), "-1e300 overflows f32");
    assert_eq!(m.get_f32("t.f32").unwrap(), 1.5e-5);
    assert_eq!(m.get_str_array("t.arr_str").unwrap(), vec!["<s>", "Ġa"]);
    assert_eq!(m.get_i32_array("t.arr_i32").unwrap(), vec![1, -3]);
    assert_eq!(m.get_f32_array("t.arr_f32").unwrap(), vec![0.5, -2.0]);
    assert!(m.get_bool("t.bool").unwrap());
    assert_eq!(m.get_opt_u64("t.missing").unwrap(), None);
    assert!(matches!(m.get_str_array("t.arr_i32"), Err(GgufError::WrongType { .. })));
}

#[test]
fn versions_2_and_3_and_alignments() {
    let types = [GgmlType::F32, GgmlType::Q4_K, GgmlType::F16];
    for version in [2, 3] {
        for alignment in [None, Some(1), Some(64), Some(4096)] {
            let (bytes, tensors) = sample(version, alignment, &types);
            let h = parse_header(&bytes).unwrap();
            assert_eq!(h.version, version);
            assert_eq!(h.alignment, alignment.map_or(32, u64::from));
            check_tensors(&bytes, &h, &tensors);
            h.validate_data(bytes.len() as u64).unwrap();
        }
    }
}

#[test]
fn streamed_writing_gives_the_same_bytes() {
    for alignment in [None, Some(1), Some(4096)] {
        for trailing_zeros in [false, true] {
            let (mut w, _) = sample_writer(3, alignment, &GgmlType::ALL);
            w.add_zero_tensor("zeros", &[256, 2], GgmlType::Q4_K).unwrap();
            w.add_tensor("after", &[2], GgmlType::F32, [1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
            if trailing_zeros {
                w.add_zero_tensor("last", &[40], GgmlType::F16).unwrap();
            } else {
                w.add_raw_tensor_info("raw", &[4], GgmlType::F32.id(), 1 << 20);
                w.append_raw_data(&[7; 40]);
            }
            let mut streamed = std::io::Cursor::new(Vec::new());
            w.write_to(&mut streamed).unwrap();
            assert_eq!(streamed.into_inner(), w.write().unwrap(), "alignment {alignment:?}");
        }
    }
}

#[test]
fn tensors_of_every_type() {
    let (bytes, tensors) = sample(3, None, &GgmlType::ALL);
    let h = parse_header(&bytes).unwrap();
    check_tensors(&bytes, &h, &tensors);
    for t in &h.tensors {
        assert_eq!(t.n_elements(), 6 * t.ty.block_size() as u64);
        assert_eq!(t.shape_str(), format!("[{}, 3]", 2 * t.ty.block_size()));
        assert_eq!(t.row_len(), 2 * t.ty.block_size() as u64);
        assert_eq!(t.n_rows(), 3);
    }
}

#[test]
fn chunked_feeding_gives_identical_headers() {
    let (bytes, _) = sample(3, Some(64), &[GgmlType::Q6_K, GgmlType::BF16, GgmlType::Q8_0]);
    let whole = parse_header(&bytes).unwrap();
    for chunk in [1, 2, 7, 13, 4096, bytes.len()] {
        for known_len in [false, true] {
            let mut p = if known_len { GgufHeaderParser::with_file_len(bytes.len() as u64) } else { GgufHeaderParser::new() };
            let mut got = None;
            for c in bytes.chunks(chunk) {
                if let Some(h) = p.feed(c).unwrap() {
                    assert!(got.is_none(), "header returned once");
                    got = Some(h);
                }
            }
            assert!(p.is_complete());
            assert_eq!(got.as_ref(), Some(&whole), "chunk {chunk}, known length {known_len}");
            assert!(p.bytes_consumed() <= whole.data_offset);
            assert!(whole.data_offset - p.bytes_consumed() < whole.alignment);
            assert!(p.feed(b"more").unwrap().is_none());
        }
    }
}

#[test]
fn header_without_tensor_data_streams() {
    // A streaming caller may feed only the header prefix; with no known length the parser
    // does not need the data section.
    let (bytes, _) = sample(3, None, &[GgmlType::F32]);
    let h = parse_header(&bytes).unwrap();
    let mut p = GgufHeaderParser::new();
    let got = p.feed(&bytes[..p_len(&bytes)]).unwrap().unwrap();
    assert_eq!(got, h);
}

fn p_len(bytes: &[u8]) -> usize {
    let mut p = GgufHeaderParser::new();
    for (i, b) in bytes.iter().enumerate() {
        if p.feed(std::slice::from_ref(b)).unwrap().is_some() {
            return i + 1;
        }
    }
    panic!("no header");
}

/// Three split parts of one model, each with two tensors.
fn split_parts(count: u64, total_override: Option<u64>) -> Vec<Vec<u8>> {
    (0..count)
        .map(|no| {
            let mut w = GgufWriter::new();
            if no == 0 {
                w.add_kv("general.architecture", MetaValue::String("llama".into()));
                w.add_kv(KEY_SPLIT_TENSORS_COUNT, MetaValue::I32(total_override.unwrap_or(2 * count) as i32));
            }
            w.add_kv(KEY_SPLIT_NO, MetaValue::U16(no as u16));
            w.add_kv(KEY_SPLIT_COUNT, MetaValue::U16(count as u16));
            for j in 0..2 {
                let data = random_blocks(GgmlType::Q8_0, 2, no * 10 + j);
                w.add_tensor(format!("blk.{no}.t{j}"), &[64], GgmlType::Q8_0, data).unwrap();
            }
            w.write().unwrap()
        })
        .collect()
}

#[test]
fn split_files_merge_into_one_index() {
    let parts = split_parts(3, None);
    let headers: Vec<_> = parts.iter().map(|p| parse_header(p).unwrap()).collect();
    let files = GgufModelFiles::new(headers.clone()).unwrap();
    assert_eq!(files.index().len(), 6);
    assert_eq!(files.metadata().architecture().unwrap(), "llama");
    let lens: Vec<u64> = parts.iter().map(|p| p.len() as u64).collect();
    files.validate_file_lens(&lens).unwrap();
    for no in 0..3u64 {
        for j in 0..2 {
            let (info, loc) = files.tensor(&format!("blk.{no}.t{j}")).unwrap();
            assert_eq!(loc.file, no as usize);
            let bytes = &parts[loc.file][loc.range.start as usize..loc.range.end as usize];
            assert_eq!(bytes, &random_blocks(GgmlType::Q8_0, 2, no * 10 + j)[..]);
            assert_eq!(info.ty, GgmlType::Q8_0);
        }
        assert_eq!(files.index().locations_in_file(no as usize).len(), 2);
    }
    assert!(matches!(files.tensor("nope"), Err(GgufError::MissingTensor(_))));
    assert_eq!(files.tensors().count(), 6);

    assert!(matches!(GgufModelFiles::new(headers[..2].to_vec()), Err(GgufError::MissingSplit { no: 2, count: 3 })));
    let swapped = vec![headers[1].clone(), headers[0].clone(), headers[2].clone()];
    assert!(matches!(GgufModelFiles::new(swapped), Err(GgufError::SplitMismatch(_))));
    let dup = vec![headers[0].clone(), headers[1].clone(), headers[1].clone()];
    assert!(matches!(GgufModelFiles::new(dup), Err(GgufError::SplitMismatch(_))));
    let four: Vec<_> = split_parts(4, None).iter().map(|p| parse_header(p).unwrap()).collect();
    let mixed = vec![headers[0].clone(), headers[1].clone(), four[2].clone()];
    assert!(matches!(GgufModelFiles::new(mixed), Err(GgufError::SplitMismatch(_))));
    let wrong_total: Vec<_> = split_parts(3, Some(5)).iter().map(|p| parse_header(p).unwrap()).collect();
    assert!(matches!(GgufModelFiles::new(wrong_total), Err(GgufError::SplitMismatch(_))));
    // The same tensor name in two parts.
    let mut w = GgufWriter::new();
    w.add_kv(KEY_SPLIT_NO, MetaValue::U16(2)).add_kv(KEY_SPLIT_COUNT, MetaValue::U16(3));
    w.add_tensor("blk.0.t0", &[32], GgmlType::Q8_0, random_blocks(GgmlType::Q8_0, 1, 0)).unwrap();
    let clash = parse_header(&w.write().unwrap()).unwrap();
    let with_clash = vec![headers[0].clone(), headers[1].clone(), clash];
    assert!(matches!(GgufModelFiles::new(with_clash), Err(GgufError::DuplicateTensor(n)) if n == "blk.0.t0"));
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("webvlm-gguf-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn mapped_single_and_split_files() {
    let dir = temp_dir("mmap");
    let x: Vec<f32> = (0..64).map(|i| (i as f32 - 30.0) / 7.0).collect();
    let q = quantize_q8_0(&x).unwrap();
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", MetaValue::String("llama".into()));
    w.add_tensor("token_embd.weight", &[32, 2], GgmlType::Q8_0, q.clone()).unwrap();
    let single = dir.join("single.gguf");
    std::fs::write(&single, w.write().unwrap()).unwrap();
    let m = MappedGguf::open(&single).unwrap();
    let (info, bytes) = m.tensor("token_embd.weight").unwrap();
    assert_eq!(bytes, &q[..]);
    let y = dequantize_to_vec(info.ty, bytes, info.n_elements() as usize).unwrap();
    assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() < 0.05));
    assert_eq!(m.metadata().architecture().unwrap(), "llama");
    assert!(matches!(m.tensor("nope"), Err(GgufError::MissingTensor(_))));

    let parts = split_parts(3, None);
    for (i, p) in parts.iter().enumerate() {
        std::fs::write(dir.join(format!("model-{:05}-of-00003.gguf", i + 1)), p).unwrap();
    }
    let first = dir.join("model-00001-of-00003.gguf");
    let m = MappedGguf::open(&first).unwrap();
    assert_eq!(m.paths().len(), 3);
    assert_eq!(m.tensors().count(), 6);
    let (_, bytes) = m.tensor("blk.2.t1").unwrap();
    assert_eq!(bytes, &random_blocks(GgmlType::Q8_0, 2, 21)[..]);

    std::fs::remove_file(dir.join("model-00003-of-00003.gguf")).unwrap();
    assert!(matches!(MappedGguf::open(&first), Err(GgufError::MissingSplit { no: 2, count: 3 })));
    // A truncated file fails validation instead of slicing out of bounds.
    std::fs::write(dir.join("model-00003-of-00003.gguf"), &parts[2][..parts[2].len() - 40]).unwrap();
    assert!(matches!(MappedGguf::open(&first), Err(GgufError::OutOfRange { .. })));
    assert!(matches!(MappedGguf::open(dir.join("absent.gguf")), Err(GgufError::Io { .. })));
    std::fs::remove_dir_all(&dir).ok();
}

/// Reads a little-endian float32 C-order `.npy` file.
fn read_npy_f32(bytes: &[u8]) -> Vec<f32> {
    assert_eq!(&bytes[..6], b"\x93NUMPY", "npy magic");
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "float32 little-endian: {header}");
    assert!(header.contains("'fortran_order': False"), "{header}");
    bytes[start + header_len..].chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[test]
fn dequantize_matches_gguf_py_fixtures() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quant");
    let entries = std::fs::read_dir(&dir).expect("tests/fixtures/quant (committed)");
    let mut checked = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("bin") {
            continue;
        }
        let stem = path.file_stem().unwrap().to_string_lossy().to_string();
        let ty = GgmlType::ALL.into_iter().find(|t| t.name().eq_ignore_ascii_case(&stem));
        let (Some(ty), Ok(npy)) = (ty, std::fs::read(path.with_extension("npy"))) else {
            continue;
        };
        let want = read_npy_f32(&npy);
        let got = dequantize_to_vec(ty, &std::fs::read(&path).unwrap(), want.len()).unwrap();
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{ty} element {i}: {a} vs {b}");
        }
        checked += 1;
    }
    let expected =
        std::fs::read_dir(&dir).unwrap().flatten().filter(|e| e.path().extension().is_some_and(|x| x == "bin")).count();
    assert_eq!(checked, expected, "every .bin fixture names a type and has its .npy");
    eprintln!("checked {checked} fixture types");
}

/// The converter-made fixture models (`tests/fixtures/*/model.gguf` with `cases.json`)
/// parse, stream in chunks to the same header, and agree with gguf-py's view of their
/// metadata and tensor shapes recorded in `cases.json`.
#[test]
fn fixture_models_match_gguf_py_metadata() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let dirs = std::fs::read_dir(&root).expect("tests/fixtures (committed)");
    let mut checked = 0;
    for dir in dirs.flatten().map(|d| d.path()) {
        let (model, cases) = (dir.join("model.gguf"), dir.join("cases.json"));
        let (Ok(bytes), Ok(cases)) = (std::fs::read(&model), std::fs::read(&cases)) else {
            continue;
        };
        let cases: serde_json::Value = serde_json::from_slice(&cases).unwrap();
        // Folders whose cases come from elsewhere (a Hugging Face folder beside its GGUF)
        // record no gguf-py metadata.
        let Some(want_metadata) = cases["gguf_metadata"].as_object() else { continue };
        let whole = parse_header(&bytes).unwrap();
        let mut p = GgufHeaderParser::new();
        let streamed = bytes.chunks(4093).find_map(|c| p.feed(c).unwrap()).unwrap();
        assert_eq!(streamed, whole);
        let mapped = MappedGguf::open(&model).unwrap();
        let m = mapped.metadata();
        for (key, want) in want_metadata {
            match want {
                serde_json::Value::String(s) => assert_eq!(m.get_str(key).unwrap(), s, "{key}"),
                serde_json::Value::Bool(b) => assert_eq!(m.get_bool(key).unwrap(), *b, "{key}"),
                serde_json::Value::Number(n) if n.is_f64() => {
                    let got = m.get_f32(key).unwrap();
                    assert!((got as f64 - n.as_f64().unwrap()).abs() <= 1e-6 * got.abs() as f64, "{key}");
                }
                serde_json::Value::Number(n) => {
                    assert_eq!(m.get_u64(key).unwrap(), n.as_u64().unwrap(), "{key}")
                }
                _ => {}
            }
        }
        let tensors = cases["gguf_tensors"].as_array().unwrap();
        assert_eq!(tensors.len(), mapped.tensors().count());
        for t in tensors {
            let (info, data) = mapped.tensor(t["name"].as_str().unwrap()).unwrap();
            assert_eq!(info.ty.name(), t["type"].as_str().unwrap());
            let shape: Vec<u64> = t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect();
            assert_eq!(info.dims, shape, "{}", info.name);
            let y = dequantize_to_vec(info.ty, data, info.n_elements() as usize).unwrap();
            assert!(y.iter().all(|v| v.is_finite()), "{}", info.name);
        }
        checked += 1;
    }
    eprintln!("checked {checked} fixture models");
    assert!(checked >= 10, "only {checked} fixture models have a model.gguf with gguf-py metadata");
}
