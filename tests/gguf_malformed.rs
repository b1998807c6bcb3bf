//! Hostile and malformed GGUF input: every case must give its specific typed error,
//! never a panic, and never an allocation sized by an unchecked field (a tracking
//! allocator records the largest single allocation of the test's thread).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use webvlm::gguf::quant::random_blocks;
use webvlm::gguf::*;

struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; only records sizes in a const-initialized
// thread-local, which never allocates.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|m| m.set(m.get().max(layout.size())));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = LARGEST.try_with(|m| m.set(m.get().max(new_size)));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// Parses `bytes` as a whole file and as a stream (chunks of 1 and 5, unknown length),
/// asserting no allocation over 1 MiB; returns the whole-file error.
fn parse_err(bytes: &[u8]) -> GgufError {
    LARGEST.with(|m| m.set(0));
    let err = parse_header(bytes).expect_err("malformed input must fail");
    for chunk in [1, 5] {
        let mut p = GgufHeaderParser::new();
        let mut streamed = None;
        for c in bytes.chunks(chunk) {
            match p.feed(c) {
                Ok(h) => assert!(h.is_none() || streamed.is_none()),
                Err(e) => {
                    streamed = Some(e);
                    break;
                }
            }
        }
        if streamed.is_some() {
            assert!(matches!(p.feed(b"x"), Err(GgufError::ParserFailed)));
        }
    }
    let largest = LARGEST.with(|m| m.get());
    assert!(largest < 1 << 20, "allocated {largest} bytes for {err}");
    err
}

/// Hand-built header bytes.
struct Raw(Vec<u8>);

impl Raw {
    fn new(n_tensors: u64, n_kv: u64) -> Self {
        let mut r = Raw(b"GGUF".to_vec());
        r.u32(3).u64(n_tensors).u64(n_kv);
        r
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn bytes(&mut self) -> Vec<u8> {
        let mut v = self.0.clone();
        v.resize(v.len() + 256, 0);
        v
    }
}

fn valid_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", MetaValue::String("llama".into()));
    w.add_kv("a.f32s", MetaValue::Array { elem: ValueType::F32, items: vec![MetaValue::F32(1.0); 5] });
    let inner = MetaValue::Array { elem: ValueType::String, items: vec![MetaValue::String("tok".into())] };
    w.add_kv("a.nested", MetaValue::Array { elem: ValueType::Array, items: vec![inner.clone(), inner] });
    w.add_kv("a.u64", MetaValue::U64(7)).add_kv("a.bool", MetaValue::Bool(false));
    w.add_tensor("a", &[64, 2], GgmlType::Q8_0, random_blocks(GgmlType::Q8_0, 4, 1)).unwrap();
    w.add_tensor("b", &[256], GgmlType::Q4_K, random_blocks(GgmlType::Q4_K, 1, 2)).unwrap();
    w.write().unwrap()
}

fn header_end(bytes: &[u8]) -> usize {
    let mut p = GgufHeaderParser::new();
    p.feed(bytes).unwrap().expect("complete header");
    p.bytes_consumed() as usize
}

#[test]
fn truncated_at_every_byte_of_the_header() {
    let bytes = valid_file();
    let end = header_end(&bytes);
    for cut in 0..end {
        let e = parse_err(&bytes[..cut]);
        assert!(matches!(e, GgufError::Truncated { .. }), "cut {cut}: {e}");
        // A stream that ends there reports truncation too.
        let mut p = GgufHeaderParser::new();
        assert!(p.feed(&bytes[..cut]).unwrap().is_none(), "cut {cut}");
        assert!(matches!(p.eof_error(), GgufError::Truncated { offset, .. } if offset == cut as u64));
    }
    // Header complete but tensor data cut short.
    let h = parse_header(&bytes).unwrap();
    let data_end = (h.data_offset + h.data_len().unwrap()) as usize;
    parse_header(&bytes[..data_end]).unwrap();
    for cut in [end, data_end - 1] {
        assert!(matches!(parse_header(&bytes[..cut]), Err(GgufError::OutOfRange { .. })), "cut {cut}");
    }
}

#[test]
fn absurd_counts_and_lengths() {
    let e = parse_err(&Raw::new(u64::MAX, 0).bytes());
    assert!(matches!(e, GgufError::AbsurdCount { field: "tensor count", value: u64::MAX, .. }), "{e}");
    let e = parse_err(&Raw::new(0, 1 << 40).bytes());
    assert!(matches!(e, GgufError::AbsurdCount { field: "metadata count", value: 0x100_0000_0000, .. }), "{e}");
    // Plausible count, file far too short for it.
    let e = parse_err(&Raw::new(0, 1000).bytes());
    assert!(matches!(e, GgufError::Truncated { .. }), "{e}");
    let e = parse_err(&Raw::new(0, 1).u64(u64::MAX).bytes());
    assert!(matches!(e, GgufError::StringTooLong { len: u64::MAX, .. }), "{e}");
    let e = parse_err(&Raw::new(0, 1).str("k").u32(8).u64(u64::MAX).bytes());
    assert!(matches!(e, GgufError::StringTooLong { len: u64::MAX, .. }), "{e}");
    let e = parse_err(&Raw::new(0, 1).str("k").u32(8).u64(1 << 20).bytes());
    assert!(matches!(e, GgufError::Truncated { .. }), "{e}");
    for len in [u64::MAX, 1 << 40] {
        let e = parse_err(&Raw::new(0, 1).str("k").u32(9).u32(0).u64(len).bytes());
        assert!(matches!(e, GgufError::AbsurdCount { field: "array length", .. }), "{e}");
    }
    let e = parse_err(&Raw::new(0, 1).str("k").u32(9).u32(8).u64(1 << 27).bytes());
    assert!(matches!(e, GgufError::Truncated { .. }), "{e}");
    // Millions of one-byte elements (tens of bytes each in memory): the budget over all arrays.
    let n = MAX_METADATA_ELEMENTS + 1;
    let mut many = Raw::new(0, 1);
    many.str("k").u32(9).u32(0).u64(n);
    let mut bytes = many.bytes();
    bytes.resize(bytes.len() + n as usize, 1);
    let e = parse_err(&bytes);
    assert!(matches!(e, GgufError::AbsurdCount { field: "metadata array elements", .. }), "{e}");
    let mut deep = Raw::new(0, 1);
    deep.str("k").u32(9);
    for _ in 0..12 {
        deep.u32(9).u64(1);
    }
    let e = parse_err(&deep.bytes());
    assert!(matches!(e, GgufError::NestingTooDeep { .. }), "{e}");
}

fn one_tensor(dims: &[u64], type_id: u32, offset: u64) -> Vec<u8> {
    let mut r = Raw::new(1, 0);
    r.str("t").u32(dims.len() as u32);
    for &d in dims {
        r.u64(d);
    }
    r.u32(type_id).u64(offset);
    r.bytes()
}

#[test]
fn bad_tensor_infos() {
    let e = parse_err(&one_tensor(&[1; 99], 0, 0));
    assert!(matches!(e, GgufError::TooManyDims { n_dims: 99, .. }), "{e}");
    let e = parse_err(&one_tensor(&[4, 0], 0, 0));
    assert!(matches!(e, GgufError::ZeroDim { index: 1, .. }), "{e}");
    let e = parse_err(&one_tensor(&[u64::MAX, 2], 0, 0));
    assert!(matches!(e, GgufError::DimsOverflow { .. }), "{e}");
    let e = parse_err(&one_tensor(&[1 << 21, 1 << 20], 0, 0));
    assert!(matches!(e, GgufError::DimsOverflow { .. }), "more than 2^40 elements: {e}");
    let e = parse_err(&one_tensor(&[33], GgmlType::Q4_0.id(), 0));
    assert!(matches!(e, GgufError::NotBlockMultiple { n: 33, .. }), "{e}");
    for id in [4, 31, 1000, u32::MAX] {
        let e = parse_err(&one_tensor(&[32], id, 0));
        assert!(matches!(e, GgufError::UnknownTensorType { id: i, .. } if i == id), "{e}");
    }
    let e = parse_err(&one_tensor(&[32], 0, 16));
    assert!(matches!(e, GgufError::MisalignedOffset { offset: 16, alignment: 32, .. }), "{e}");
    let e = parse_err(&one_tensor(&[32], 0, 1 << 20));
    assert!(matches!(e, GgufError::OutOfRange { .. }), "past EOF: {e}");
    let e = parse_err(&one_tensor(&[4], 0, u64::MAX - 31));
    assert!(matches!(e, GgufError::OutOfRange { .. }), "offset + size overflows: {e}");
}

#[test]
fn overlapping_and_duplicate_tensors() {
    let mut w = GgufWriter::new();
    w.add_raw_tensor_info("x", &[16], 0, 0).add_raw_tensor_info("y", &[16], 0, 32);
    w.append_raw_data(&[0; 128]);
    let e = parse_err(&w.write().unwrap());
    assert!(matches!(&e, GgufError::Overlap { first, second } if first == "x" && second == "y"), "{e}");
    let mut w = GgufWriter::new();
    w.add_raw_tensor_info("x", &[8], 0, 0).add_raw_tensor_info("x", &[8], 0, 32);
    w.append_raw_data(&[0; 128]);
    let e = parse_err(&w.write().unwrap());
    assert!(matches!(&e, GgufError::DuplicateTensor(n) if n == "x"), "{e}");
    // Within bounds and disjoint: accepted.
    let mut w = GgufWriter::new();
    w.add_raw_tensor_info("x", &[8], 0, 0).add_raw_tensor_info("y", &[8], 0, 32);
    w.append_raw_data(&[0; 64]);
    parse_header(&w.write().unwrap()).unwrap();
}

#[test]
fn bad_metadata() {
    for id in [13, 100, u32::MAX] {
        let e = parse_err(&Raw::new(0, 1).str("k").u32(id).bytes());
        assert!(matches!(e, GgufError::UnknownValueType { id: i, .. } if i == id), "{e}");
        let e = parse_err(&Raw::new(0, 1).str("k").u32(9).u32(id).u64(1).bytes());
        assert!(matches!(e, GgufError::UnknownValueType { id: i, .. } if i == id), "array element: {e}");
    }
    let mut r = Raw::new(0, 1);
    r.u64(2).0.extend_from_slice(&[0xff, 0xfe]);
    let e = parse_err(&r.bytes());
    assert!(matches!(e, GgufError::InvalidUtf8 { offset: 32 }), "{e}");
    let mut r = Raw::new(0, 1);
    r.str("k").u32(7).0.push(2);
    let e = parse_err(&r.bytes());
    assert!(matches!(e, GgufError::InvalidBool { value: 2, .. }), "{e}");
    let e = parse_err(&Raw::new(0, 2).str("k").u32(4).u32(1).str("k").u32(4).u32(2).bytes());
    assert!(matches!(&e, GgufError::DuplicateKey(k) if k == "k"), "{e}");
}

#[test]
fn bad_alignment() {
    for a in [0u32, 3, 48] {
        let mut w = GgufWriter::new();
        w.add_kv("general.alignment", MetaValue::U32(a));
        let e = parse_err(&w.write().unwrap());
        assert!(matches!(e, GgufError::BadAlignment(v) if v == u64::from(a)), "{e}");
    }
    let mut w = GgufWriter::new();
    w.add_kv("general.alignment", MetaValue::String("32".into()));
    let e = parse_err(&w.write().unwrap());
    assert!(matches!(e, GgufError::WrongType { .. }), "{e}");
    assert!(GgufWriter::new().set_alignment(3).is_err());
}

#[test]
fn bad_magic_versions_and_endianness() {
    let mut good = Raw::new(0, 0).bytes();
    let e = parse_err(b"GGML\x03\0\0\0");
    assert!(matches!(e, GgufError::BadMagic(m) if &m == b"GGML"), "{e}");
    let e = parse_err(b"\0\0\0\0\0\0\0\0");
    assert!(matches!(e, GgufError::BadMagic(_)), "{e}");
    for v in [0u32, 1, 4, 99, u32::MAX] {
        good[4..8].copy_from_slice(&v.to_le_bytes());
        let e = parse_err(&good);
        assert!(matches!(e, GgufError::UnsupportedVersion(x) if x == v), "{e}");
    }
    for v in [2u32, 3] {
        let mut be = b"GGUF".to_vec();
        be.extend_from_slice(&v.to_be_bytes());
        be.extend_from_slice(&0u64.to_be_bytes());
        be.extend_from_slice(&0u64.to_be_bytes());
        let e = parse_err(&be);
        assert!(matches!(e, GgufError::BigEndian(x) if x == v), "{e}");
    }
    assert!(parse_header(&Raw::new(0, 0).0).is_ok(), "empty model is valid");
}
