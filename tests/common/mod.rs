//! Shared test helpers: the GPU (a missing adapter fails the test), seeded random data,
//! error measures and a `.npy` reader.
#![allow(dead_code)]

pub mod cache;
pub mod chi_square;
pub mod smollm2;

use webvlm::backend::gpu::{Gpu, GpuOptions};
use webvlm::backend::{Buffer, Device};

/// The test adapter (lavapipe in CI) as a device. Panics when there is none: GPU tests must
/// not skip.
pub fn gpu() -> Device {
    Device::Gpu(Gpu::new_blocking(GpuOptions::default()).expect("a GPU adapter is required (install mesa-vulkan-drivers)"))
}

/// The CPU backend's device: two threads, exact (f32) activations.
pub fn cpu() -> Device {
    cpu_in(webvlm::backend::cpu::Mode::Exact)
}

/// The CPU backend's device on two threads in `mode` (fast: 8-bit activations).
pub fn cpu_in(mode: webvlm::backend::cpu::Mode) -> Device {
    Device::Cpu(webvlm::backend::cpu::Device::new(2, mode).expect("a CPU thread pool"))
}

/// Whether `--backend auto` (the CLI's default) takes the CPU backend here: the only GPU
/// adapter is a software one (lavapipe in CI).
pub fn auto_takes_the_cpu() -> bool {
    gpu().caps().software
}

/// Deterministic random numbers for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.uniform()).collect()
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// ||a - b|| / ||b||.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt() as f32
}

/// Largest |a - b|.
pub fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

pub fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &x)| if x > best.1 { (i, x) } else { best }).0
}

pub fn upload(gpu: &Device, data: &[f32]) -> Buffer {
    gpu.storage_with("test", bytemuck::cast_slice(data)).unwrap()
}

/// A `.npy` array of f32, f16 or i32 (little-endian, C order) as f32 with its shape.
pub fn read_npy(path: &std::path::Path) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..6], b"\x93NUMPY", "not a .npy file");
    let (header_len, start) = if bytes[6] == 1 {
        (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
    } else {
        (u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize, 12)
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
    assert!(header.contains("'fortran_order': False"), "fortran order unsupported");
    let shape_str = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let shape: Vec<usize> = shape_str.split(',').filter_map(|s| s.trim().parse().ok()).collect();
    let data = &bytes[start + header_len..];
    let values = if header.contains("'<f4'") {
        bytemuck::pod_collect_to_vec::<u8, f32>(data)
    } else if header.contains("'<f2'") {
        data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()
    } else if header.contains("'<i4'") {
        bytemuck::pod_collect_to_vec::<u8, i32>(data).into_iter().map(|v| v as f32).collect()
    } else {
        panic!("unsupported dtype in {header}");
    };
    (shape, values)
}

pub fn fixture(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel)
}

/// Runs the `webvlm` binary, failing the test with its stderr when it fails.
pub fn run_cli(args: &[&str]) -> std::process::Output {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_webvlm")).args(args).output().expect("the webvlm binary runs");
    assert!(out.status.success(), "webvlm {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

/// A fresh path in the temp directory for a test's output file: in a directory of this test
/// process's own, removed when the process exits.
pub fn temp_path(name: &str) -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| {
        extern "C" {
            fn atexit(f: extern "C" fn()) -> std::ffi::c_int;
        }
        extern "C" fn remove() {
            if let Some(dir) = DIR.get() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        // SAFETY: registers a function of the C runtime's signature; it runs once, at exit.
        assert_eq!(unsafe { atexit(remove) }, 0, "atexit refused the temp directory's removal");
        std::env::temp_dir().join(format!("webvlm-test-{}", std::process::id()))
    });
    std::fs::create_dir_all(dir).unwrap();
    dir.join(name)
}

/// The tiny VLM fixture (Tekken tokenizer, random weights) with its mmproj, as an engine with
/// a 512-token context.
pub fn tiny_vlm_engine() -> webvlm::engine::Engine {
    use webvlm::engine::Engine;
    use webvlm::gguf::MappedGguf;
    use webvlm::model::ContextOptions;
    use webvlm::source::{Eager, LoadQuant};
    let model = MappedGguf::open(fixture(TINY_VLM).join("model.gguf")).unwrap();
    let proj = MappedGguf::open(fixture(TINY_VLM).join("mmproj.gguf")).unwrap();
    let opts = ContextOptions { max_ctx: 512, max_chunk: 16, ..Default::default() };
    Engine::builder(gpu()).context(opts).vision(&mut Eager(&proj), LoadQuant::Keep).load(&mut Eager(&model)).unwrap()
}

pub const TINY_VLM: &str = "tiny_mistral3_tekken";

/// The GGUF file at `path` with `template` as its `tokenizer.chat_template`, in memory.
pub fn gguf_with_template(path: &std::path::Path, template: &str) -> webvlm::source::GgufBytes {
    use webvlm::gguf::{parse_header, GgufWriter, MetaValue};
    let bytes = std::fs::read(path).unwrap();
    let header = parse_header(&bytes).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in header.metadata.iter() {
        if k != "tokenizer.chat_template" {
            w.add_kv(k, v.clone());
        }
    }
    w.add_kv("tokenizer.chat_template", MetaValue::String(template.into()));
    for t in &header.tensors {
        let r = header.absolute_range(t).unwrap();
        w.add_tensor(t.name.clone(), &t.dims, t.ty, bytes[r.start as usize..r.end as usize].to_vec()).unwrap();
    }
    webvlm::source::GgufBytes::parse(w.write().unwrap()).unwrap()
}

/// Image URLs in the API tests are file names in the tiny VLM's fixture directory.
pub fn read_tiny_vlm_image(url: &str) -> Result<Vec<u8>, webvlm::engine::EngineError> {
    std::fs::read(fixture(TINY_VLM).join(url)).map_err(|e| webvlm::engine::EngineError::BadImageUrl(format!("{url}: {e}")))
}
