//! Flag groups that several subcommands share (each flag is defined once, here, and
//! flattened into the subcommands that take it), and the typed values they parse to.

use std::path::PathBuf;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Args, ValueEnum};
use webvlm::backend::cpu::{self, Mode};
use webvlm::backend::gpu::{Geometry, Gpu, GpuOptions};
use webvlm::backend::Device;
use webvlm::engine::{GenerateOptions, SamplingPreset};
use webvlm::model::synthetic::{MllamaShape, MllamaTextShape, Qwen35Shape, QwenVisionShape, SyntheticShape, VisionShape};
use webvlm::model::{ContextOptions, MemoryBudget};
use webvlm::sampling::SamplingParams;
use webvlm::source::LoadQuant;

/// `--model`: a GGUF file or a Hugging Face model folder to read.
#[derive(Args, Debug)]
pub struct ModelArg {
    /// The model: a GGUF file (a split model: its first part), or a Hugging Face model folder
    /// (config.json, tokenizer.json, safetensors)
    #[arg(long, value_name = "M.gguf|DIR")]
    pub model: PathBuf,
}

/// The model files and how the engine runs them (generate, logits, chat, batch).
#[derive(Args, Debug)]
#[command(next_help_heading = "Model and engine")]
pub struct EngineArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// Requantize the model's float (F32/F16/BF16) matrices at load time, e.g. a Hugging Face
    /// folder's BF16 weights (less GPU memory; keep: the file's types; auto: a GGUF keeps its
    /// types, a folder takes Q8_0, or 4-bit where --gpu-memory is too small for Q8_0)
    #[arg(long, value_name = "Q", default_value = "auto", value_parser = text_quant())]
    pub quant: AutoQuant,
    /// The vision projector (llama.cpp's mmproj GGUF), needed for images
    #[arg(long, value_name = "P.gguf")]
    pub mmproj: Option<PathBuf>,
    /// Requantize the mmproj matrices at load time (less GPU memory; keep: the file's types)
    #[arg(long, value_name = "Q", default_value = "keep", value_parser = load_quant())]
    pub vision_quant: LoadQuant,
    /// Context size in tokens (KV cache entries)
    #[arg(long, value_name = "N", default_value_t = ContextOptions::default().max_ctx)]
    pub ctx: u32,
    /// Most prompt tokens per prefill step [default: 512 in the GPU launch shape, 128 in the CPU one]
    #[arg(long, value_name = "N")]
    pub chunk: Option<u32>,
    /// f16 prefill matmuls wherever the adapter has shader-f16 [default: on GPUs that have it,
    /// not on CPU adapters]
    #[arg(long, conflicts_with_all = ["kv_f32", "no_f16"])]
    pub f16: bool,
    /// f32 prefill matmuls (keeps the f16 KV cache)
    #[arg(long, conflicts_with = "kv_f32")]
    pub no_f16: bool,
    /// f32 KV cache: all-f32 math that matches transformers' f32 logits [default: f16 cache]
    #[arg(long)]
    pub kv_f32: bool,
    /// Longest image edge after preprocessing (Pixtral: rounded up to multiples of 28; Qwen-VL:
    /// the area within its square): smaller, fewer image tokens [default 1540, at most the
    /// model's image size]
    #[arg(long, value_name = "N")]
    pub image_max_edge: Option<u32>,
    /// Qwen-VL encoders: the smallest resized image area in pixels (smart_resize's min_pixels)
    /// [default: the processor's, 65536]
    #[arg(long, value_name = "N")]
    pub image_min_area: Option<u64>,
    /// Qwen-VL encoders: the largest resized image area in pixels (smart_resize's max_pixels):
    /// smaller, fewer image tokens [default: the processor's, 16777216, within the square of
    /// the image edge]
    #[arg(long, value_name = "N")]
    pub image_max_area: Option<u64>,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// GPU memory for the prompt cache's saved prefixes (256M, 1G; 0: keep only the live
    /// sequence) [default: 256M]
    #[arg(long, value_name = "BYTES", value_parser = cache_bytes)]
    pub prompt_cache: Option<u64>,
    #[command(flatten)]
    pub budget: BudgetArg,
}

/// Where a model runs (generate, logits, chat, batch, serve, soak).
#[derive(Args, Debug)]
#[command(next_help_heading = "Device")]
pub struct DeviceArgs {
    /// Kernel launch shapes: gpu (many small workgroups) or cpu (few wide ones, for CPU
    /// adapters) [default: from the adapter]
    #[arg(long, value_name = "G")]
    pub geometry: Option<Geometry>,
    /// Where the model runs: gpu (wgpu: Vulkan, Metal, DX12), cpu (webvlm's CPU backend), or
    /// auto: the GPU on a hardware adapter, the CPU backend where the only adapter is a
    /// software one (lavapipe, llvmpipe, SwiftShader, WARP) or there is none; --geometry
    /// asks for the GPU
    #[arg(long, value_name = "B", default_value = "auto")]
    pub backend: BackendArg,
    /// CPU backend: threads [default: the machine's cores]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// CPU backend: activations quantized to 8 bits per block (fast, as llama.cpp's CPU
    /// backend) or kept f32 (exact)
    #[arg(long, value_name = "M", default_value = "fast")]
    pub cpu_mode: CpuModeArg,
    /// CPU backend: copy a GGUF's matrices into memory rather than use them where they lie in
    /// the memory-mapped file (as llama.cpp's --no-mmap)
    #[arg(long)]
    pub no_mmap: bool,
}

/// `--prompt-cache`: a memory size as `--gpu-memory` takes it, or 0.
fn cache_bytes(s: &str) -> Result<u64, String> {
    match s.trim() {
        "0" => Ok(0),
        _ => match s.parse::<MemoryBudget>()? {
            MemoryBudget::Bytes(b) => Ok(b),
            MemoryBudget::Unknown => Err(format!("not a memory size: {s:?}")),
        },
    }
}

/// `--gpu-memory`: the memory budget the memory plan checks before loading.
#[derive(Args, Debug)]
pub struct BudgetArg {
    /// Memory the model may use (8G, 12GiB, 512M), on the GPU or, on the CPU backend, in RAM:
    /// a model that does not fit at --ctx is refused before any weight is loaded, with the
    /// largest context that fits [default: on the GPU no total limit (the adapter's buffer
    /// limits are always checked), on the CPU backend the RAM available now]
    #[arg(long, value_name = "BYTES")]
    pub gpu_memory: Option<MemoryBudget>,
}

impl BudgetArg {
    /// The budget on `dev`.
    pub fn budget(&self, dev: &Device) -> MemoryBudget {
        self.gpu_memory.unwrap_or_else(|| match dev {
            Device::Gpu(_) => MemoryBudget::default_for_target(),
            Device::Cpu(_) => MemoryBudget::available_ram(),
        })
    }
}

/// `--image`, repeatable (generate, logits).
#[derive(Args, Debug)]
pub struct ImageArgs {
    /// An image file (PNG, JPEG, WebP, GIF); repeat for several
    #[arg(long = "image", value_name = "F")]
    pub images: Vec<PathBuf>,
}

impl ImageArgs {
    /// Images need `--mmproj` unless the model is a folder that holds its own encoder
    /// (Llama 3.2 Vision): a usage error (exit code 2) otherwise.
    pub fn check(&self, engine: &EngineArgs) {
        if !self.images.is_empty() && engine.mmproj.is_none() && !engine.model.model.is_dir() {
            let message = "--image needs --mmproj <P.gguf> (or a model folder with its own vision encoder)\n";
            clap::Error::raw(clap::error::ErrorKind::MissingRequiredArgument, message).exit();
        }
    }
}

/// How `generate` picks tokens and when it stops. A setting not given takes the model's
/// published default (its `generation_config.json` or GGUF `general.sampling.*` keys), as
/// `serve` and the browser do, else greedy decoding of up to 256 tokens.
#[derive(Args, Debug)]
#[command(next_help_heading = "Sampling")]
pub struct SamplingArgs {
    /// Most tokens to generate [default: the model's, else 256]
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<u32>,
    /// Sampling temperature; 0 is greedy decoding [default: the model's, else 0]
    #[arg(long, value_name = "T")]
    pub temperature: Option<f32>,
    /// Keep the K most likely tokens; 0 keeps all [default: the model's, else 0]
    #[arg(long, value_name = "K")]
    pub top_k: Option<u32>,
    /// Keep the most likely tokens up to probability P; 1 keeps all [default: the model's, else 1]
    #[arg(long, value_name = "P")]
    pub top_p: Option<f32>,
    /// Drop tokens less likely than P times the most likely one; 0 keeps all [default: the
    /// model's, else 0]
    #[arg(long, value_name = "P")]
    pub min_p: Option<f32>,
    /// Divide the logits of tokens already in the prompt or reply by R; 1 is off [default: the
    /// model's, else 1]
    #[arg(long, value_name = "R")]
    pub repetition_penalty: Option<f32>,
    /// Seed of the sampler (the same seed, settings and prompt give the same text) [default:
    /// a fresh one per run, printed on stderr]
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Text that ends generation (not printed); repeat for several
    #[arg(long, value_name = "TEXT")]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    /// The options of a run on a model published with `defaults`
    /// ([`SamplingPreset::resolve`], as the chat API resolves a request's).
    pub fn options(&self, defaults: &SamplingPreset) -> GenerateOptions {
        self.requested().resolve(defaults, self.base())
    }

    /// The settings given on the command line.
    pub fn requested(&self) -> SamplingPreset {
        SamplingPreset {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            max_tokens: self.max_tokens,
        }
    }

    /// The options before the model's defaults and the given settings: greedy, the seed, the
    /// stop strings.
    pub fn base(&self) -> GenerateOptions {
        GenerateOptions {
            sampling: SamplingParams { temperature: 0.0, seed: self.seed, ..Default::default() },
            stop: self.stop.clone(),
            ..Default::default()
        }
    }
}

/// `--backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    Auto,
    Gpu,
    Cpu,
}

/// `--cpu-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CpuModeArg {
    Fast,
    Exact,
}

impl DeviceArgs {
    /// The device `--backend`, `--geometry`, `--threads` and `--cpu-mode` ask for.
    pub fn device(&self) -> Result<Device, Box<dyn std::error::Error>> {
        self.device_with(GpuOptions::default())
    }

    /// [`DeviceArgs::device`] with the other GPU `options` given (`--geometry` still sets its own).
    pub fn device_with(&self, options: GpuOptions) -> Result<Device, Box<dyn std::error::Error>> {
        let gpu = || Gpu::new_blocking(GpuOptions { geometry: self.geometry, ..options.clone() });
        Ok(match self.backend {
            BackendArg::Gpu => Device::Gpu(gpu()?),
            BackendArg::Cpu => self.cpu_device()?,
            // The adapter alone decides: no device is opened on a software one.
            BackendArg::Auto => match Gpu::probe_blocking().map(|a| (a.software && self.geometry.is_none(), a)) {
                Ok((false, _)) => match gpu() {
                    Ok(g) => Device::Gpu(g),
                    Err(e) => {
                        eprintln!("backend auto: the GPU did not open ({e}): running on the CPU backend");
                        self.cpu_device()?
                    }
                },
                Ok((true, adapter)) => {
                    eprintln!("backend auto: {} is a software adapter: running on the CPU backend", adapter.name);
                    self.cpu_device()?
                }
                Err(e) => {
                    eprintln!("backend auto: no GPU ({e}): running on the CPU backend");
                    self.cpu_device()?
                }
            },
        })
    }

    /// Why `dev` (from [`DeviceArgs::device`]) is the device: for `info` and `/health`.
    pub fn why(&self, dev: &Device) -> String {
        match (self.backend, dev) {
            (BackendArg::Gpu, _) => "--backend gpu".into(),
            (BackendArg::Cpu, _) => "--backend cpu".into(),
            (BackendArg::Auto, Device::Gpu(g)) if g.caps.software => "auto: --geometry asks for the GPU".into(),
            (BackendArg::Auto, Device::Gpu(_)) => "auto: a hardware GPU adapter".into(),
            (BackendArg::Auto, Device::Cpu(_)) => "auto: no hardware GPU adapter, only a software one or none".into(),
        }
    }

    fn cpu_device(&self) -> Result<Device, cpu::PoolError> {
        let threads = self.threads.map_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()), usize::from);
        let mode = match self.cpu_mode {
            CpuModeArg::Fast => Mode::Fast,
            CpuModeArg::Exact => Mode::Exact,
        };
        let mut dev = cpu::Device::new(threads, mode)?;
        dev.map_weights = !self.no_mmap;
        Ok(Device::Cpu(dev))
    }
}

/// The shapes of a synthetic model (synthetic, bench).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Shape {
    // Ministral 3 3B's exact shapes.
    #[value(name = "3b")]
    Ministral3b,
    // A model of the same structure, about 1 MB.
    Tiny,
    // Mistral Small 3.1 24B's exact shapes (use --layers: 40 blocks take ~14 GB).
    #[value(name = "mistral-small-24b")]
    MistralSmall24b,
    // Qwen3.5's released sizes (hybrid DeltaNet + attention, with their vision encoders).
    #[value(name = "qwen3.5-0.8b")]
    Qwen35_0_8b,
    #[value(name = "qwen3.5-2b")]
    Qwen35_2b,
    #[value(name = "qwen3.5-4b")]
    Qwen35_4b,
    #[value(name = "qwen3.5-9b")]
    Qwen35_9b,
    // A Qwen3.5 of the same structure within 128-dim heads, a few MB.
    #[value(name = "qwen3.5-tiny")]
    Qwen35Tiny,
    // Llama 3.2 11B Vision's exact shapes (Mllama: cross-attention decoder + tiled encoder).
    #[value(name = "llama3.2-11b-vision")]
    Llama32_11bVision,
    // A Mllama of the same structure, a few MB.
    #[value(name = "llama3.2-vision-tiny")]
    Llama32VisionTiny,
}

/// What a [`Shape`] builds: a `mistral3` decoder (Ministral 3 or Mistral Small) and Pixtral mmproj, a `qwen35` decoder
/// and a Qwen vision mmproj, or an `mllama` model (decoder and encoder in one file).
#[derive(Clone, Copy, Debug)]
pub enum ShapeModel {
    Ministral(SyntheticShape, VisionShape),
    Qwen35(Qwen35Shape, QwenVisionShape),
    Mllama(MllamaShape),
}

impl ShapeModel {
    /// Decoder blocks.
    pub fn n_layer(self) -> u32 {
        match self {
            ShapeModel::Ministral(s, _) => s.n_layer,
            ShapeModel::Qwen35(s, _) => s.n_layer,
            ShapeModel::Mllama(s) => s.text.n_layer,
        }
    }

    /// The same model with `n_layer` decoder blocks (Mllama: the first `n_layer` of its
    /// pattern, cross-attention layers included where they fall).
    pub fn with_layers(self, n_layer: u32) -> ShapeModel {
        match self {
            ShapeModel::Ministral(s, v) => ShapeModel::Ministral(SyntheticShape { n_layer, ..s }, v),
            ShapeModel::Qwen35(s, v) => ShapeModel::Qwen35(Qwen35Shape { n_layer, ..s }, v),
            ShapeModel::Mllama(s) => ShapeModel::Mllama(MllamaShape { text: MllamaTextShape { n_layer, ..s.text }, ..s }),
        }
    }
}

impl Shape {
    pub fn model(self) -> ShapeModel {
        match self {
            Shape::Ministral3b => ShapeModel::Ministral(SyntheticShape::ministral3_3b(), VisionShape::ministral3_3b()),
            Shape::Tiny => ShapeModel::Ministral(SyntheticShape::tiny(), VisionShape::tiny()),
            Shape::MistralSmall24b => {
                ShapeModel::Ministral(SyntheticShape::mistral_small_24b(), VisionShape::mistral_small_24b())
            }
            Shape::Qwen35_0_8b => ShapeModel::Qwen35(Qwen35Shape::qwen35_0_8b(), QwenVisionShape::qwen35_0_8b()),
            Shape::Qwen35_2b => ShapeModel::Qwen35(Qwen35Shape::qwen35_2b(), QwenVisionShape::qwen35_2b()),
            Shape::Qwen35_4b => ShapeModel::Qwen35(Qwen35Shape::qwen35_4b(), QwenVisionShape::qwen35_4b()),
            Shape::Qwen35_9b => ShapeModel::Qwen35(Qwen35Shape::qwen35_9b(), QwenVisionShape::qwen35_9b()),
            Shape::Qwen35Tiny => ShapeModel::Qwen35(Qwen35Shape::tiny(), QwenVisionShape::tiny()),
            Shape::Llama32_11bVision => ShapeModel::Mllama(MllamaShape::llama32_11b_vision()),
            Shape::Llama32VisionTiny => ShapeModel::Mllama(MllamaShape::tiny()),
        }
    }

    /// The model's name in the figures.
    pub fn label(self) -> &'static str {
        match self {
            Shape::Ministral3b => "synthetic Ministral 3 3B",
            Shape::Tiny => "synthetic tiny mistral3",
            Shape::MistralSmall24b => "synthetic Mistral Small 3.1 24B",
            Shape::Qwen35_0_8b => "synthetic Qwen3.5-0.8B",
            Shape::Qwen35_2b => "synthetic Qwen3.5-2B",
            Shape::Qwen35_4b => "synthetic Qwen3.5-4B",
            Shape::Qwen35_9b => "synthetic Qwen3.5-9B",
            Shape::Qwen35Tiny => "synthetic tiny qwen35",
            Shape::Llama32_11bVision => "synthetic Llama 3.2 11B Vision",
            Shape::Llama32VisionTiny => "synthetic tiny mllama",
        }
    }

    /// A real model's size (slow on a CPU adapter: one timed repetition, warmed up on the
    /// tiny shape of its family).
    pub fn is_big(self) -> bool {
        !matches!(self, Shape::Tiny | Shape::Qwen35Tiny | Shape::Llama32VisionTiny)
    }
}

/// `--quant`: `None` for `auto` (the memory plan chooses). An alias, so that clap takes the
/// value as given rather than as an optional flag.
pub type AutoQuant = Option<LoadQuant>;

/// `--quant`'s values: `auto` or a [`load_quant`] value.
pub fn text_quant() -> impl TypedValueParser<Value = AutoQuant> {
    PossibleValuesParser::new(["auto", "keep", "none", "q8_0", "q4_0", "q4_1", "q4_k"]).try_map(|s| {
        if s == "auto" {
            Ok(None)
        } else {
            s.parse::<LoadQuant>().map(Some)
        }
    })
}

/// `--vision-quant`'s values, parsed by `LoadQuant`'s `FromStr`.
pub fn load_quant() -> impl TypedValueParser<Value = LoadQuant> {
    PossibleValuesParser::new([
        PossibleValue::new("keep").alias("none"),
        PossibleValue::new("q8_0"),
        PossibleValue::new("q4_0"),
        PossibleValue::new("q4_1"),
        PossibleValue::new("q4_k"),
    ])
    .try_map(|s| s.parse::<LoadQuant>())
}
