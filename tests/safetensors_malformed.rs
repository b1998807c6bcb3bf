//! Every malformed safetensors header, shard index and model folder gives its typed error,
//! the same from the slice parser and the push parser in any chunking; no input panics or
//! allocates by a size it claims.

use std::path::{Path, PathBuf};

use webvlm::error::{Classify, ErrorClass};
use webvlm::safetensors::{
    parse_header, HeaderParser, MappedSafetensors, SafetensorsError as E, SafetensorsFolder, SafetensorsHeader, ShardIndex,
    MAX_HEADER_LEN, MAX_INDEX_LEN,
};

/// A file: the 8-byte length, `json`, then `data_len` zero bytes.
fn file(json: &str, data_len: usize) -> Vec<u8> {
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(json.as_bytes());
    bytes.resize(bytes.len() + data_len, 0);
    bytes
}

/// Parses `bytes` with `parse_header` and with the push parser fed 1, 7 and 4096 bytes at
/// a time; all must agree (on the header, or on the error).
fn parse(bytes: &[u8]) -> Result<SafetensorsHeader, E> {
    let whole = parse_header(bytes);
    for size in [1, 7, 4096] {
        let mut parser = HeaderParser::new();
        let mut pushed = None;
        for chunk in bytes.chunks(size) {
            match parser.feed(chunk) {
                Ok(Some(header)) => pushed = Some(Ok(header)),
                Ok(None) => {}
                Err(e) => {
                    pushed = Some(Err(e));
                    break;
                }
            }
        }
        let pushed = pushed.unwrap_or_else(|| Err(parser.eof_error()));
        assert_eq!(format!("{pushed:?}"), format!("{whole:?}"), "chunk size {size}");
    }
    whole
}

/// The error of a file with header `json` and `data_len` data bytes, checked against the
/// file length too.
fn error(json: &str, data_len: usize) -> E {
    let bytes = file(json, data_len);
    match parse(&bytes).and_then(|h| h.validate_data(bytes.len() as u64)) {
        Ok(()) => panic!("{json} parsed"),
        Err(e) => e,
    }
}

fn entry(dtype: &str, shape: &str, offsets: &str) -> String {
    format!(r#"{{"dtype":"{dtype}","shape":{shape},"data_offsets":{offsets}}}"#)
}

#[test]
fn a_valid_header_parses() {
    let json = format!(
        r#"{{"__metadata__":{{"format":"pt","b":"x"}},"w":{},"e":{},"s":{}}}    "#,
        entry("BF16", "[2,3]", "[4,16]"),
        entry("F32", "[0,5]", "[4,4]"),
        entry("F32", "[]", "[0,4]"),
    );
    let bytes = file(&json, 16);
    let header = parse(&bytes).unwrap();
    header.validate_data(bytes.len() as u64).unwrap();
    let names: Vec<&str> = header.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["s", "e", "w"], "sorted by offset; the empty tensor overlaps nothing");
    assert_eq!(header.metadata.len(), 2);
    assert_eq!(header.data_start, 8 + json.len() as u64);
    assert_eq!(header.file_range(header.tensor("w").unwrap()), header.data_start + 4..header.data_start + 16);
    assert_eq!(header.data_len(), 16);
}

#[test]
fn truncated_files() {
    assert!(matches!(parse(&[1, 0, 0, 0, 0]), Err(E::TruncatedLength { len: 5 })));
    assert!(matches!(parse(&[]), Err(E::TruncatedLength { len: 0 })));
    let mut bytes = file(r#"{"a":1}"#, 0);
    bytes[0] = 100;
    assert!(matches!(parse(&bytes), Err(E::TruncatedHeader { header_len: 100, available: 7 })));
    // A header at the limit but only a few bytes present: nothing sized by the claim.
    let mut bytes = MAX_HEADER_LEN.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    assert!(matches!(parse(&bytes), Err(E::TruncatedHeader { available: 2, .. })));

    let json = format!(r#"{{"a":{}}}"#, entry("F32", "[4]", "[0,16]"));
    assert!(matches!(error(&json, 15), E::TruncatedData { tensor, end: 16, data_len: 15, .. } if tensor == "a"));
    let header = parse(&file(&json, 0)).unwrap();
    assert!(matches!(header.validate_data(3), Err(E::TruncatedFile { file_len: 3, .. })));
}

#[test]
fn absurd_header_length() {
    for len in [1u64 << 60, u64::MAX, MAX_HEADER_LEN + 1] {
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        assert!(matches!(parse(&bytes), Err(E::HeaderTooLarge { len: l, limit: MAX_HEADER_LEN }) if l == len));
    }
}

#[test]
fn header_not_json_object() {
    let mut bytes = file("{\"a\":\"\u{e9}\"}", 0);
    bytes[14] = 0xff;
    assert!(matches!(parse(&bytes), Err(E::HeaderNotUtf8 { valid_up_to: 6 })));
    assert!(matches!(error("{", 0), E::HeaderNotJson(_)));
    assert!(matches!(error("", 0), E::HeaderNotJson(_)));
    assert!(matches!(error("{} x", 0), E::HeaderNotJson(_)));
    assert!(matches!(error(&"[".repeat(200), 0), E::HeaderNotJson(_)), "nesting beyond serde_json's limit");
    // A long array (which would make a tree many times the header's size) is refused.
    let json = format!(r#"{{"t":{}}}"#, entry("F32", &format!("[{}]", vec!["1"; 65].join(",")), "[0,4]"));
    assert!(matches!(error(&json, 4), E::HeaderNotJson(_)));
    for json in ["[1]", "\"x\"", "3", "null"] {
        assert!(matches!(error(json, 0), E::HeaderNotObject), "{json}");
    }
}

#[test]
fn bad_tensor_entries() {
    for field in ["dtype", "shape", "data_offsets"] {
        let mut members = vec![r#""dtype":"F32""#, r#""shape":[1]"#, r#""data_offsets":[0,4]"#];
        members.retain(|m| !m.contains(field));
        let json = format!(r#"{{"t":{{{}}}}}"#, members.join(","));
        assert!(matches!(error(&json, 4), E::MissingField { tensor, field: f } if tensor == "t" && f == field), "{field}");
    }
    let cases = [
        (r#"{"t":3}"#.to_owned(), "entry"),
        (r#"{"t":{"dtype":5,"shape":[1],"data_offsets":[0,4]}}"#.to_owned(), "dtype"),
        (format!(r#"{{"t":{}}}"#, entry("F32", "\"1\"", "[0,4]")), "shape"),
        (format!(r#"{{"t":{}}}"#, entry("F32", "[-1]", "[0,4]")), "shape"),
        (format!(r#"{{"t":{}}}"#, entry("F32", "[1.5]", "[0,4]")), "shape"),
        (format!(r#"{{"t":{}}}"#, entry("F32", "[18446744073709551616]", "[0,4]")), "shape"),
        (format!(r#"{{"t":{}}}"#, entry("F32", "[1]", "[4]")), "data_offsets"),
        (format!(r#"{{"t":{}}}"#, entry("F32", "[1]", "[0,4,8]")), "data_offsets"),
        (format!(r#"{{"t":{}}}"#, entry("F32", "[1]", "[0,null]")), "data_offsets"),
        (format!(r#"{{"t":{}}}"#, entry("F32", "[1]", "{}")), "data_offsets"),
    ];
    for (json, field) in cases {
        assert!(matches!(error(&json, 4), E::WrongJsonType { tensor, field: f, .. } if tensor == "t" && f == field), "{json}");
    }
}

#[test]
fn bad_metadata() {
    assert!(matches!(error(r#"{"__metadata__":{"a":"x","b":1}}"#, 0), E::BadMetadata { key } if key == "b"));
    assert!(matches!(error(r#"{"__metadata__":["a"]}"#, 0), E::BadMetadata { key } if key == "__metadata__"));
}

#[test]
fn dtypes() {
    for dtype in ["F128", "bf16", "Q4_0", ""] {
        let json = format!(r#"{{"t":{}}}"#, entry(dtype, "[1]", "[0,4]"));
        assert!(matches!(error(&json, 4), E::UnknownDtype { tensor, dtype: d } if tensor == "t" && d == dtype));
    }
    // Known dtypes parse (a header may carry integer buffers); loading one as a weight fails.
    for (dtype, bytes) in [("I64", 8), ("F8_E4M3", 1), ("BOOL", 1), ("F64", 8), ("U8", 1)] {
        let json = format!(r#"{{"t":{}}}"#, entry(dtype, "[1]", &format!("[0,{bytes}]")));
        let header = parse(&file(&json, bytes)).unwrap();
        let err = header.tensors[0].ggml_type().unwrap_err();
        assert!(matches!(err, E::UnsupportedDtype { ref tensor, dtype: d } if tensor == "t" && d == dtype), "{err}");
    }
}

#[test]
fn shapes() {
    let json = format!(r#"{{"t":{}}}"#, entry("F32", "[1,1,1,1,1,1,1,1,1]", "[0,4]"));
    assert!(matches!(error(&json, 4), E::TooManyDims { tensor, n_dims: 9, limit: 8 } if tensor == "t"));
    for shape in ["[4294967296,4294967296,2]", "[4611686018427387904]", "[18446744073709551615,2]"] {
        let json = format!(r#"{{"t":{}}}"#, entry("F32", shape, "[0,4]"));
        assert!(matches!(error(&json, 4), E::ShapeOverflow { tensor, .. } if tensor == "t"), "{shape}");
    }
}

#[test]
fn offsets_and_lengths() {
    let json = format!(r#"{{"t":{}}}"#, entry("F32", "[1]", "[8,4]"));
    assert!(matches!(error(&json, 8), E::ReversedOffsets { tensor, begin: 8, end: 4 } if tensor == "t"));
    // Offsets near 2^64: past any data section, without overflow.
    let json = format!(r#"{{"t":{}}}"#, entry("F32", "[1]", "[18446744073709551611,18446744073709551615]"));
    assert!(matches!(error(&json, 8), E::TruncatedData { tensor, .. } if tensor == "t"));
    for (dtype, shape, offsets, bytes, expected) in [
        ("F32", "[2]", "[0,4]", 4, 8),
        ("BF16", "[2,3]", "[0,16]", 16, 12),
        ("F4", "[3]", "[0,2]", 2, 2),
        ("F32", "[0]", "[0,4]", 4, 0),
    ] {
        let json = format!(r#"{{"t":{}}}"#, entry(dtype, shape, offsets));
        let err = error(&json, 16);
        assert!(
            matches!(err, E::LengthMismatch { ref tensor, bytes: b, expected: x, .. } if tensor == "t" && b == bytes && x == expected),
            "{err}"
        );
    }
}

#[test]
fn overlapping_tensors() {
    let json = format!(r#"{{"b":{},"a":{}}}"#, entry("F32", "[2]", "[4,12]"), entry("F32", "[2]", "[0,8]"));
    assert!(matches!(error(&json, 12), E::Overlap { first, second } if first == "a" && second == "b"));
    // Contained in an earlier, longer tensor (not just the previous one).
    let json = format!(
        r#"{{"a":{},"b":{},"c":{}}}"#,
        entry("F32", "[4]", "[0,16]"),
        entry("F32", "[1]", "[4,8]"),
        entry("F32", "[1]", "[12,16]")
    );
    assert!(matches!(error(&json, 16), E::Overlap { first, second } if first == "a" && second == "b"));
}

#[test]
fn duplicate_keys() {
    let t = entry("F32", "[1]", "[0,4]");
    let u = entry("F32", "[1]", "[4,8]");
    assert!(matches!(error(&format!(r#"{{"t":{t},"t":{u}}}"#), 8), E::DuplicateKey(k) if k == "t"));
    let json = r#"{"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"data_offsets":[4,8]}}"#;
    assert!(matches!(error(json, 8), E::DuplicateKey(k) if k == "t.data_offsets"));
    let json = r#"{"__metadata__":{"a":"x","a":"y"}}"#;
    assert!(matches!(error(json, 0), E::DuplicateKey(k) if k == "__metadata__.a"));
}

#[test]
fn push_parser_fails_once() {
    let mut parser = HeaderParser::new();
    assert!(matches!(parser.feed(&file("[]", 0)), Err(E::HeaderNotObject)));
    assert!(matches!(parser.feed(b"{}"), Err(E::ParserFailed)));
}

#[test]
fn bad_indexes() {
    assert!(matches!(ShardIndex::parse(b"{"), Err(E::IndexNotJson(_))));
    let huge = vec![b' '; MAX_INDEX_LEN as usize + 1];
    assert!(matches!(ShardIndex::parse(&huge), Err(E::IndexTooLarge { limit: MAX_INDEX_LEN, .. })));
    assert!(matches!(ShardIndex::parse(b"\xff"), Err(E::IndexNotJson(_))));
    assert!(matches!(ShardIndex::parse(b"[]"), Err(E::IndexNotJson(_))));
    assert!(matches!(ShardIndex::parse(br#"{"metadata":{}}"#), Err(E::IndexNoWeightMap)));
    assert!(matches!(ShardIndex::parse(br#"{"weight_map":["a"]}"#), Err(E::IndexNoWeightMap)));
    assert!(matches!(ShardIndex::parse(br#"{"weight_map":{"a":1}}"#), Err(E::IndexBadEntry { tensor }) if tensor == "a"));
    let json = br#"{"weight_map":{"a":"x.safetensors","a":"y.safetensors"}}"#;
    assert!(matches!(ShardIndex::parse(json), Err(E::DuplicateKey(k)) if k == "weight_map.a"));
    for name in ["../model.safetensors", "/etc/passwd", "sub/model.safetensors", "..\\\\x", "C:model", ".."] {
        let json = format!(r#"{{"weight_map":{{"a":"{name}"}}}}"#);
        let err = ShardIndex::parse(json.as_bytes()).unwrap_err();
        assert!(matches!(err, E::UnsafeShardName { .. }), "{name}: {err}");
    }
}

#[test]
fn index_against_shard_headers() {
    let index = ShardIndex::parse(br#"{"weight_map":{"a":"1.safetensors","b":"1.safetensors","c":"2.safetensors"}}"#).unwrap();
    let shard = |names: &[&str]| {
        let members: Vec<String> = names
            .iter()
            .enumerate()
            .map(|(i, n)| format!(r#""{n}":{}"#, entry("F32", "[1]", &format!("[{},{}]", 4 * i, 4 * i + 4))))
            .collect();
        parse(&file(&format!("{{{}}}", members.join(",")), 4 * names.len())).unwrap()
    };
    index.check_shard("1.safetensors", &shard(&["a", "b"])).unwrap();
    index.check_shard("2.safetensors", &shard(&["c"])).unwrap();
    let err = index.check_shard("1.safetensors", &shard(&["a"])).unwrap_err();
    assert!(matches!(err, E::TensorNotInShard { ref tensor, ref file } if tensor == "b" && file == "1.safetensors"), "{err}");
    let err = index.check_shard("2.safetensors", &shard(&["c", "b"])).unwrap_err();
    assert!(matches!(err, E::UnmappedTensor { ref tensor, ref file } if tensor == "b" && file == "2.safetensors"), "{err}");
    let err = index.check_shard("2.safetensors", &shard(&["c", "z"])).unwrap_err();
    assert!(matches!(err, E::UnmappedTensor { ref tensor, .. } if tensor == "z"), "{err}");
}

/// A fresh folder under the test target's scratch space.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("safetensors_malformed").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A copy of the committed 3-shard folder.
fn sharded_copy(name: &str) -> PathBuf {
    let dir = scratch(name);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/safetensors/sharded");
    for f in std::fs::read_dir(src).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dir.join(f.file_name())).unwrap();
    }
    dir
}

fn edit_index(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let path = dir.join("model.safetensors.index.json");
    let mut index: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(index["weight_map"].as_object_mut().unwrap());
    std::fs::write(path, serde_json::to_vec(&index).unwrap()).unwrap();
}

#[test]
fn bad_folders() {
    let err = SafetensorsFolder::open(scratch("empty")).err().unwrap();
    assert!(matches!(err, E::NoModelFile { .. }), "{err}");
    assert!(matches!(err.class(), ErrorClass::ModelNotSupported));

    let dir = sharded_copy("missing_shard");
    std::fs::remove_file(dir.join("model-00002-of-00003.safetensors")).unwrap();
    let err = SafetensorsFolder::open(&dir).err().unwrap();
    assert!(matches!(err, E::MissingShard { ref file } if file == "model-00002-of-00003.safetensors"), "{err}");

    // The index moves a tensor to another shard: its new shard lacks it, its old one has
    // a tensor the index does not map there (whichever shard is checked first reports).
    let dir = sharded_copy("moved_tensor");
    edit_index(&dir, |map| {
        map.insert("model.norm.weight".into(), "model-00001-of-00003.safetensors".into());
    });
    let err = SafetensorsFolder::open(&dir).err().unwrap();
    assert!(
        matches!(err, E::TensorNotInShard { ref tensor, ref file } if tensor == "model.norm.weight" && file == "model-00001-of-00003.safetensors"),
        "{err}"
    );

    let dir = sharded_copy("unmapped_tensor");
    edit_index(&dir, |map| {
        map.remove("model.norm.weight");
    });
    let err = SafetensorsFolder::open(&dir).err().unwrap();
    assert!(
        matches!(err, E::UnmappedTensor { ref tensor, ref file } if tensor == "model.norm.weight" && file == "model-00003-of-00003.safetensors"),
        "{err}"
    );

    let dir = sharded_copy("escape");
    edit_index(&dir, |map| {
        map.insert("model.norm.weight".into(), "../sharded/model-00003-of-00003.safetensors".into());
    });
    let err = SafetensorsFolder::open(&dir).err().unwrap();
    assert!(matches!(err.root(), E::UnsafeShardName { .. }), "{err}");

    // A corrupt shard: the error names the file and keeps its typed cause.
    let dir = sharded_copy("corrupt_shard");
    let shard = dir.join("model-00003-of-00003.safetensors");
    let len = std::fs::metadata(&shard).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&shard).unwrap().set_len(len - 1).unwrap();
    let err = SafetensorsFolder::open(&dir).err().unwrap();
    assert!(matches!(err, E::InFile { ref file, .. } if file.ends_with("model-00003-of-00003.safetensors")), "{err}");
    assert!(matches!(err.root(), E::TruncatedData { .. }), "{err}");
}

#[test]
fn bad_single_files() {
    let dir = scratch("single");
    let path = dir.join("huge.safetensors");
    let mut bytes = (1u64 << 60).to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(&path, bytes).unwrap();
    let err = MappedSafetensors::open(&path).err().unwrap();
    assert!(matches!(err.root(), E::HeaderTooLarge { .. }), "{err}");
    let path = dir.join("empty.safetensors");
    std::fs::write(&path, b"").unwrap();
    let err = MappedSafetensors::open(&path).err().unwrap();
    assert!(matches!(err.root(), E::TruncatedLength { len: 0 }), "{err}");
    let err = MappedSafetensors::open(dir.join("absent.safetensors")).err().unwrap();
    assert!(matches!(err, E::Io { .. }), "{err}");
    assert!(matches!(err.class(), ErrorClass::ModelNotSupported));
}
