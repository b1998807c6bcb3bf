//! Adapter and device creation, capability detection, buffers and readback.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use super::pipeline::{KernelSpec, Pipeline, PipelineCache};
use super::{GpuError, Result};

/// What the device can do, read once at creation.
#[derive(Clone, Debug)]
pub struct Caps {
    /// `shader-f16` was requested and granted: f16 kernel variants may be used.
    pub f16: bool,
    /// KV caches may be stored as f16 (every wgpu device: packed in u32 words; the CPU
    /// backend keeps f32 caches).
    pub kv_f16: bool,
    /// Subgroup operations were requested and granted (native only for now).
    pub subgroups: bool,
    pub max_storage_binding: u64,
    pub max_buffer: u64,
    pub max_workgroup_invocations: u32,
    pub max_workgroup_storage: u32,
    pub max_storage_buffers_per_stage: u32,
    pub min_uniform_offset_alignment: u32,
    pub max_uniform_binding: u64,
    /// Adapter name, driver and backend, for reports.
    pub adapter: String,
    pub backend: String,
    /// A CPU implementation (lavapipe, SwiftShader, WARP).
    pub software: bool,
    /// The launch shapes the kernels take (from `software` unless forced).
    pub geometry: Geometry,
    /// Prompt tokens per prefill chunk: on GPUs 512 gives every prefill matmul several output
    /// tiles along the tokens too (3B shapes: 192 workgroups or more per matrix) and reads each
    /// weight once per 512 tokens; CPU adapters gain nothing from longer chunks, and 128 keeps
    /// their scratch small. The CPU backend takes 512: it decodes each panel of weight rows
    /// once per chunk.
    pub prefill_chunk: u32,
    /// The CPU backend keeps a repacked copy of its quantized matrices for their products
    /// (`cpu::Repacked::at_level`, fast mode): memory the plan counts.
    pub repacked_weights: bool,
}

/// Launch shapes of the kernels: the same math in two shapes.
///
/// - `Gpu`: many small workgroups (a decode matvec gives each workgroup 4 rows, so a
///   3072-row matrix launches 768 of them), enough to keep 128 compute units busy; tree
///   reductions in workgroup memory.
/// - `Cpu`: CPU implementations (lavapipe, SwiftShader) run workgroups on a few threads, where
///   every workgroup and barrier costs and memory coalescing does not matter: fewer, wider
///   workgroups (whole rows per thread on the matvec's block path).
///
/// Chosen from the adapter; forced with [`GpuOptions::geometry`] (natively also by the
/// `WEBVLM_GEOMETRY=gpu|cpu` environment variable, so that the whole test suite runs the GPU
/// shape on lavapipe).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Geometry {
    Gpu,
    Cpu,
}

impl std::str::FromStr for Geometry {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "gpu" => Ok(Geometry::Gpu),
            "cpu" => Ok(Geometry::Cpu),
            _ => Err(format!("unknown geometry {s:?} (gpu, cpu)")),
        }
    }
}

impl Geometry {
    /// `WEBVLM_GEOMETRY`, when set (native only).
    fn from_env() -> Option<Geometry> {
        #[cfg(not(target_arch = "wasm32"))]
        if let Ok(v) = std::env::var("WEBVLM_GEOMETRY") {
            return v.parse().ok();
        }
        None
    }

    pub fn name(self) -> &'static str {
        match self {
            Geometry::Gpu => "gpu",
            Geometry::Cpu => "cpu",
        }
    }
}

/// What to ask of the adapter.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// Use `shader-f16` when the adapter has it.
    pub allow_f16: bool,
    /// Use subgroup operations when the adapter has them (ignored on the web for now).
    pub allow_subgroups: bool,
    /// Force a kernel geometry (`None`: from the adapter, or `WEBVLM_GEOMETRY` natively).
    pub geometry: Option<Geometry>,
    /// Time each kernel with timestamp queries where the adapter has them (natively;
    /// [`Gpu::profiler`]).
    pub profile: bool,
}

impl Default for GpuOptions {
    fn default() -> Self {
        Self { allow_f16: true, allow_subgroups: true, geometry: None, profile: false }
    }
}

/// GPU memory held by a device's live buffers ([`Gpu::memory_stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemoryStats {
    /// Buffers allocated and not yet freed.
    pub live_buffers: u64,
    /// Their bytes as allocated by the driver (sizes rounded up to its alignment).
    pub buffer_bytes: u64,
}

/// The device, its queue, its capabilities and the pipeline cache.
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub caps: Caps,
    pipelines: RefCell<PipelineCache>,
    errors: Arc<Mutex<Vec<GpuError>>>,
    /// Why the device was lost, once its device-lost callback ran.
    lost: Arc<Mutex<Option<String>>>,
    /// Every buffer made by [`Gpu::buffer`], for [`BufferRegistry::destroy_all`].
    buffers: BufferRegistry,
    #[cfg(not(target_arch = "wasm32"))]
    profiler: Option<super::profile::Profiler>,
}

/// The buffers a [`Gpu`] created ([`Gpu::buffer`]), so that unloading frees their memory at
/// once ([`BufferRegistry::destroy_all`]). In the browser, wgpu's WebGPU backend never calls
/// `GPUBuffer.destroy()`: a dropped buffer's memory stays allocated until JS garbage
/// collection reaches its `GPUBuffer` object, so a model unloaded or switched would hold its
/// GPU memory for a while (phones kill tabs near 1.5 GB). The registry keeps weak references
/// to those objects (a buffer dropped earlier is still collected as before), pruned of
/// collected ones whenever the list has doubled: one push per buffer created, at load and
/// per request, nothing per token. Natively a dropped buffer is freed at once (wgpu-core
/// counts its references), so nothing is kept and `destroy_all` has nothing to do.
/// A cheap handle: clones share the list, and it outlives the `Gpu` (a load that failed
/// half-way dropped its `Gpu` with the model it was building).
#[derive(Clone, Default)]
pub struct BufferRegistry {
    #[cfg(target_arch = "wasm32")]
    inner: Rc<RefCell<WebBuffers>>,
}

#[cfg(target_arch = "wasm32")]
#[derive(Default)]
struct WebBuffers {
    live: Vec<js_sys::WeakRef>,
    /// Length at which collected entries are dropped next.
    prune_at: usize,
}

impl BufferRegistry {
    #[cfg(target_arch = "wasm32")]
    fn add(&self, buffer: &wgpu::Buffer) {
        use wasm_bindgen::JsCast;
        let Some(object) = buffer.as_webgpu() else { return };
        let mut b = self.inner.borrow_mut();
        if b.live.len() >= b.prune_at {
            b.live.retain(|w| w.deref().is_some());
            b.prune_at = (2 * b.live.len()).max(256);
        }
        b.live.push(js_sys::WeakRef::new(object.unchecked_ref::<js_sys::Object>()));
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn add(&self, _buffer: &wgpu::Buffer) {}

    /// Destroys every buffer created so far and not yet collected (`GPUBuffer.destroy()`: its
    /// memory is freed now, work already submitted still completes) and forgets them; returns
    /// how many. Nothing may use them afterwards: this is for unloading, right before the
    /// engine that owns them is dropped. Does nothing natively (see [`BufferRegistry`]).
    pub fn destroy_all(&self) -> usize {
        #[cfg(target_arch = "wasm32")]
        {
            use wasm_bindgen::JsCast;
            let live = std::mem::take(&mut self.inner.borrow_mut().live);
            let mut destroyed = 0;
            for buffer in live.iter().filter_map(|w| w.deref()) {
                buffer.unchecked_into::<wgpu::webgpu::GpuBuffer>().destroy();
                destroyed += 1;
            }
            destroyed
        }
        #[cfg(not(target_arch = "wasm32"))]
        0
    }
}

impl Caps {
    /// Largest buffer one storage binding may see: weights are split into parts of this size.
    pub fn part_limit(&self) -> u64 {
        self.max_storage_binding.min(self.max_buffer)
    }
}

impl GpuError {
    /// The device is gone: every later GPU operation fails too.
    pub fn is_device_lost(&self) -> bool {
        matches!(self, GpuError::DeviceLost(_))
    }
}

/// An adapter seen by [`Gpu::probe`].
#[derive(Clone, Debug)]
pub struct Adapter {
    pub name: String,
    pub software: bool,
}

/// The adapter [`Gpu::new`] opens: high-performance preference, native backends narrowed by
/// `WGPU_BACKEND`.
async fn best_adapter() -> Result<wgpu::Adapter> {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::PRIMARY.with_env();
    let instance = wgpu::Instance::new(desc);
    let options = wgpu::RequestAdapterOptions { power_preference: wgpu::PowerPreference::HighPerformance, ..Default::default() };
    instance.request_adapter(&options).await.map_err(|e| GpuError::NoAdapter(e.to_string()))
}

/// A CPU implementation of the GPU API. Browsers report only a fallback adapter as a CPU:
/// SwiftShader (and Mesa's llvmpipe/lavapipe) are recognised by name too.
fn is_software(info: &wgpu::AdapterInfo) -> bool {
    let name = info.name.to_ascii_lowercase();
    info.device_type == wgpu::DeviceType::Cpu || ["swiftshader", "llvmpipe", "lavapipe"].iter().any(|n| name.contains(n))
}

impl Gpu {
    /// Opens the best adapter with its own limits. Native backends can be narrowed with
    /// `WGPU_BACKEND` (e.g. `vulkan`).
    pub async fn new(options: GpuOptions) -> Result<Gpu> {
        Self::from_adapter(&best_adapter().await?, options).await
    }

    /// The adapter [`Gpu::new`] would open, without opening a device on it: its name and
    /// whether it is a software implementation (what `--backend auto` decides on).
    pub async fn probe() -> Result<Adapter> {
        let info = best_adapter().await?.get_info();
        Ok(Adapter { software: is_software(&info), name: info.name })
    }

    /// Blocking [`Gpu::probe`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn probe_blocking() -> Result<Adapter> {
        pollster::block_on(Self::probe())
    }

    /// Blocking [`Gpu::new`] for native callers (CLI, tests, benchmarks).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new_blocking(options: GpuOptions) -> Result<Gpu> {
        pollster::block_on(Self::new(options))
    }

    async fn from_adapter(adapter: &wgpu::Adapter, options: GpuOptions) -> Result<Gpu> {
        let available = adapter.features();
        let mut features = wgpu::Features::empty();
        if options.allow_f16 && available.contains(wgpu::Features::SHADER_F16) {
            features |= wgpu::Features::SHADER_F16;
        }
        // wgpu cannot request the browser's `subgroups` feature yet, and naga rejects `enable subgroups;`.
        let web = cfg!(target_arch = "wasm32");
        if options.allow_subgroups && !web && available.contains(wgpu::Features::SUBGROUP) {
            features |= wgpu::Features::SUBGROUP;
        }
        let profile = options.profile && !web && available.contains(wgpu::Features::TIMESTAMP_QUERY);
        if profile {
            features |= wgpu::Features::TIMESTAMP_QUERY;
        }
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("webvlm"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| GpuError::RequestDevice(e.to_string()))?;

        let errors = Arc::new(Mutex::new(Vec::new()));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let e = match e {
                wgpu::Error::OutOfMemory { .. } => GpuError::OutOfMemory(e.to_string()),
                _ => GpuError::Device(e.to_string()),
            };
            if let Ok(mut v) = sink.lock() {
                v.push(e);
            }
        }));

        let info = adapter.get_info();
        let software = is_software(&info);
        let geometry =
            options.geometry.or_else(Geometry::from_env).unwrap_or(if software { Geometry::Cpu } else { Geometry::Gpu });
        let caps = Caps {
            kv_f16: true,
            f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            max_storage_binding: limits.max_storage_buffer_binding_size,
            max_buffer: limits.max_buffer_size,
            max_workgroup_invocations: limits.max_compute_invocations_per_workgroup,
            max_workgroup_storage: limits.max_compute_workgroup_storage_size,
            max_storage_buffers_per_stage: limits.max_storage_buffers_per_shader_stage,
            min_uniform_offset_alignment: limits.min_uniform_buffer_offset_alignment,
            max_uniform_binding: limits.max_uniform_buffer_binding_size,
            adapter: format!("{} ({})", info.name, info.driver_info).trim().to_string(),
            backend: format!("{:?}", info.backend),
            software,
            geometry,
            prefill_chunk: match geometry {
                Geometry::Gpu => 512,
                Geometry::Cpu => 128,
            },
            repacked_weights: false,
        };
        let lost = Arc::new(Mutex::new(None));
        let flag = lost.clone();
        device.set_device_lost_callback(move |reason, message| {
            if let Ok(mut l) = flag.lock() {
                // The first reason stays (a loss forced by [`DeviceLoss::lose`] records its own).
                l.get_or_insert_with(|| lost_reason(reason, &message));
            }
        });
        let buffers = BufferRegistry::default();
        Ok(Gpu {
            device,
            queue,
            caps,
            pipelines: RefCell::new(PipelineCache::default()),
            errors,
            lost,
            buffers,
            #[cfg(not(target_arch = "wasm32"))]
            profiler: profile.then(Default::default),
        })
    }

    /// Whether programs run now are timed per kernel (never in the browser).
    pub fn profiling(&self) -> bool {
        #[cfg(not(target_arch = "wasm32"))]
        return self.profiler().is_some_and(|p| p.is_on());
        #[cfg(target_arch = "wasm32")]
        false
    }

    /// The per-kernel timer, where [`GpuOptions::profile`] asked for one and the adapter
    /// has timestamp queries: every [`super::Program::run`] is then timed.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn profiler(&self) -> Option<&super::profile::Profiler> {
        self.profiler.as_ref()
    }

    /// A handle that loses this device on purpose ([`DeviceLoss::lose`]), for tests of what
    /// follows a lost device (a driver reset, a GPU process crash). It can be kept and used
    /// while the engine that owns this `Gpu` is borrowed (e.g. from a token callback).
    pub fn device_loss(&self) -> DeviceLoss {
        DeviceLoss { device: self.device.clone(), lost: self.lost.clone() }
    }

    /// Loses the device now (`wgpu::Device::destroy`): see [`Gpu::device_loss`].
    pub fn destroy_device_for_tests(&self) {
        self.device_loss().lose();
    }

    /// The lost-device error if the device is lost, asked after a GPU operation failed.
    /// Natively, wgpu runs the device-lost callback only from a poll once the queue is
    /// drained, so this waits for the queue first (wgpu panics in `poll` on device errors
    /// other than a timeout: caught). In the browser the `lost` promise resolves on its own.
    pub fn lost_after_error(&self) -> Option<GpuError> {
        #[cfg(not(target_arch = "wasm32"))]
        if self.lost().is_none() {
            let wait = wgpu::PollType::wait_indefinitely();
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.device.poll(wait)));
        }
        self.lost()
    }

    /// Fails with the lost-device error once the device is lost (checked before GPU work,
    /// so that a lost device fails a request at once rather than in the middle of it).
    pub fn check_lost(&self) -> Result<()> {
        self.lost().map_or(Ok(()), Err)
    }

    /// GPU memory held by live buffers, counted by wgpu-hal (wgpu's `counters` feature,
    /// enabled for native builds): every buffer this device allocated and has not freed,
    /// readback and staging buffers included. wgpu frees a dropped buffer once the
    /// submissions using it are done, so this polls the device first (without waiting).
    /// `None` in the browser, where wgpu's WebGPU backend has no counters (the package's
    /// worker counts `GPUDevice.createBuffer` itself: `js/host.js`).
    pub fn memory_stats(&self) -> Option<MemoryStats> {
        if cfg!(target_arch = "wasm32") {
            return None;
        }
        let _ = self.device.poll(wgpu::PollType::Poll);
        let hal = self.device.get_internal_counters().hal;
        Some(MemoryStats { live_buffers: hal.buffers.read().max(0) as u64, buffer_bytes: hal.buffer_memory.read().max(0) as u64 })
    }

    /// Returns and clears the device errors reported since the last call.
    pub fn take_errors(&self) -> Vec<GpuError> {
        self.errors.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default()
    }

    /// The pipeline for `spec`, compiled on first use.
    pub fn pipeline(&self, spec: &KernelSpec) -> Result<Rc<Pipeline>> {
        self.pipelines.borrow_mut().get(&self.device, spec, || self.take_errors().into_iter().next())
    }

    /// How many compiled shader modules have `text` in their source (which kernel variants
    /// ran: the tests check that a subgroup variant compiled subgroup shuffles).
    pub fn compiled_modules_containing(&self, text: &str) -> usize {
        self.pipelines.borrow().modules_containing(text)
    }

    /// The lost-device error, once the device-lost callback has run.
    pub fn lost(&self) -> Option<GpuError> {
        let reason = self.lost.lock().ok()?.clone()?;
        Some(GpuError::DeviceLost(reason))
    }

    /// Fails when the device was lost, else with the first device error reported since the
    /// last check.
    pub fn check_errors(&self) -> Result<()> {
        if let Some(e) = self.lost() {
            return Err(e);
        }
        match self.take_errors().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Creates a buffer on the device and records it in [`Gpu::buffers`]: every buffer of
    /// the engine is made here, so that unloading can free them all at once.
    pub fn buffer(&self, descriptor: &wgpu::BufferDescriptor) -> wgpu::Buffer {
        let buffer = self.device.create_buffer(descriptor);
        self.buffers.add(&buffer);
        buffer
    }

    /// The buffers this device created ([`BufferRegistry::destroy_all`] frees them at once).
    pub fn buffers(&self) -> BufferRegistry {
        self.buffers.clone()
    }

    /// A zero-filled storage buffer (also usable as a copy source and destination, and on
    /// CPU adapters as a uniform buffer: the matvec reads its x through uniform windows).
    pub fn storage(&self, label: &str, size: u64) -> Result<wgpu::Buffer> {
        self.check_size(label, size)?;
        let mut usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        if self.caps.geometry == Geometry::Cpu {
            usage |= wgpu::BufferUsages::UNIFORM;
        }
        Ok(self.buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: size.max(4).next_multiple_of(4),
            usage,
            mapped_at_creation: false,
        }))
    }

    /// A storage buffer holding `bytes` (padded to a multiple of 4).
    pub fn storage_with(&self, label: &str, bytes: &[u8]) -> Result<wgpu::Buffer> {
        let buffer = self.storage(label, bytes.len() as u64)?;
        self.write(&buffer, 0, bytes);
        Ok(buffer)
    }

    /// Writes `bytes` at `offset`, padding the tail to a multiple of 4 as WebGPU requires.
    pub fn write(&self, buffer: &wgpu::Buffer, offset: u64, bytes: &[u8]) {
        if bytes.len().is_multiple_of(4) {
            self.queue.write_buffer(buffer, offset, bytes);
        } else {
            let mut padded = bytes.to_vec();
            padded.resize(bytes.len().next_multiple_of(4), 0);
            self.queue.write_buffer(buffer, offset, &padded);
        }
    }

    fn check_size(&self, label: &str, size: u64) -> Result<()> {
        let limit = self.caps.max_buffer.min(self.caps.max_storage_binding);
        if size > limit {
            return Err(GpuError::BufferTooLarge { label: label.into(), size, limit });
        }
        Ok(())
    }

    /// Copies `size` bytes at `offset` of `src` to the host. Allocates a staging buffer, so
    /// it is for tests and load-time work; what is read again and again goes through a
    /// [`Readback`] kept by the caller ([`Gpu::read_with`]).
    pub async fn read(&self, src: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        self.read_with(&mut Readback::new(self, size), src, offset, size).await
    }

    /// [`Gpu::read`] through `readback`, a staging buffer of at least `size` bytes.
    pub async fn read_with(&self, readback: &mut Readback, src: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        let mut encoder = self.device.create_command_encoder(&Default::default());
        readback.copy_from(&mut encoder, src, offset, size);
        let index = self.queue.submit([encoder.finish()]);
        readback.map(size, index);
        readback.read(self).await
    }

    /// [`Gpu::read`] as f32 values.
    pub async fn read_f32(&self, src: &wgpu::Buffer, offset: u64, len: usize) -> Result<Vec<f32>> {
        let bytes = self.read(src, offset, len as u64 * 4).await?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// Blocking [`Gpu::read_f32`] for native callers.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_f32_blocking(&self, src: &wgpu::Buffer, len: usize) -> Result<Vec<f32>> {
        pollster::block_on(self.read_f32(src, 0, len))
    }

    /// Blocking byte read for native callers.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_blocking(&self, src: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        pollster::block_on(self.read(src, offset, size))
    }
}

/// Loses a device on purpose (tests): [`Gpu::device_loss`].
#[derive(Clone)]
pub struct DeviceLoss {
    device: wgpu::Device,
    lost: Arc<Mutex<Option<String>>>,
}

impl DeviceLoss {
    /// Destroys the device (WebGPU's `GPUDevice.destroy()`). Natively, wgpu runs the
    /// device-lost callback only once the queue is drained by a later poll; the loss is
    /// recorded here at once, as that callback would record it, so the next check sees it.
    pub fn lose(&self) {
        self.device.destroy();
        if let Ok(mut l) = self.lost.lock() {
            l.get_or_insert_with(|| lost_reason(wgpu::DeviceLostReason::Destroyed, ""));
        }
    }
}

/// The lost-device reason as [`GpuError::DeviceLost`] shows it.
fn lost_reason(reason: wgpu::DeviceLostReason, message: &str) -> String {
    let reason = match reason {
        wgpu::DeviceLostReason::Destroyed => "destroyed",
        _ => "unknown",
    };
    match message.trim() {
        "" => reason.to_string(),
        m => format!("{reason}: {m}"),
    }
}

/// A persistent host-readable staging buffer: a step copies its few result bytes here in its
/// command encoder, [`Readback::map`] requests the map right after that step's submit, and
/// [`Readback::read`] awaits it, possibly after later steps were submitted.
///
/// The map is requested before any later submit because a browser resolves a map only once
/// all the work submitted before the request is done; natively, the read waits for the
/// step's own submission, not for the device to go idle.
pub struct Readback {
    staging: wgpu::Buffer,
    /// The map requested and not yet read (or abandoned).
    pending: Option<PendingMap>,
}

struct PendingMap {
    rx: futures_channel::oneshot::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>,
    size: u64,
    /// The submission that fills the buffer (what a native read waits for).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    submission: wgpu::SubmissionIndex,
}

impl Readback {
    pub fn new(gpu: &Gpu, size: u64) -> Readback {
        let staging = gpu.buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: size.max(4).next_multiple_of(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Readback { staging, pending: None }
    }

    /// Records the copy of `size` bytes of `src` at `offset` into the staging buffer. A map
    /// still pending from an earlier use is abandoned first (the buffer must be unmapped to
    /// be copied into).
    pub fn copy_from(&mut self, enc: &mut wgpu::CommandEncoder, src: &wgpu::Buffer, offset: u64, size: u64) {
        self.cancel();
        enc.copy_buffer_to_buffer(src, offset, &self.staging, 0, size.next_multiple_of(4));
    }

    /// Requests the map of the first `size` bytes, right after `submission` (the submit that
    /// filled the buffer) and before any later submit.
    pub fn map(&mut self, size: u64, submission: wgpu::SubmissionIndex) {
        self.cancel();
        let padded = size.max(4).next_multiple_of(4);
        let (tx, rx) = futures_channel::oneshot::channel();
        self.staging.map_async(wgpu::MapMode::Read, 0..padded, move |r| {
            let _ = tx.send(r);
        });
        self.pending = Some(PendingMap { rx, size, submission });
    }

    /// Awaits the map requested by [`Readback::map`] and returns its bytes.
    pub async fn read(&mut self, gpu: &Gpu) -> Result<Vec<u8>> {
        let Some(pending) = &mut self.pending else {
            return Err(GpuError::Readback("read without a requested map".into()));
        };
        #[cfg(not(target_arch = "wasm32"))]
        {
            // A lost device never completes the map: fail at once. wgpu panics in `poll` on
            // device errors other than a timeout (a real loss found by the wait itself).
            gpu.check_lost()?;
            let wait = wgpu::PollType::Wait { submission_index: Some(pending.submission.clone()), timeout: None };
            let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| gpu.device.poll(wait)));
            match polled {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(lost_or(gpu, GpuError::Readback(e.to_string())).await),
                Err(_) => return Err(lost_or(gpu, GpuError::Readback("the device poll failed".into())).await),
            }
        }
        // Awaited through a borrow: if this future is dropped here, `pending` stays recorded
        // and the next use of the buffer abandons the map.
        let mapped = (&mut pending.rx).await;
        let size = pending.size;
        self.pending = None;
        match mapped {
            Err(_) => return Err(GpuError::Readback("map callback dropped".into())),
            Ok(Err(e)) => return Err(lost_or(gpu, GpuError::Readback(e.to_string())).await),
            Ok(Ok(())) => {}
        }
        let padded = size.max(4).next_multiple_of(4);
        let bytes = {
            let view = match self.staging.get_mapped_range(0..padded) {
                Ok(view) => view,
                Err(e) => return Err(lost_or(gpu, GpuError::Readback(e.to_string())).await),
            };
            view[..size as usize].to_vec()
        };
        self.staging.unmap();
        gpu.check_errors()?;
        Ok(bytes)
    }

    /// Abandons a requested map that will not be read (a pending map is aborted, a completed
    /// one unmapped); does nothing when none is pending.
    pub fn cancel(&mut self) {
        if self.pending.take().is_some() {
            self.staging.unmap();
        }
    }
}

/// `error`, or the lost-device error when a failed map or poll was the device going away.
/// A browser rejects pending maps before it resolves the device's `lost` promise; waiting
/// for the queue (which resolves even on a lost device) lets the callback run first.
/// Natively, [`Gpu::lost_after_error`] polls for it.
async fn lost_or(gpu: &Gpu, error: GpuError) -> GpuError {
    #[cfg(target_arch = "wasm32")]
    if gpu.lost().is_none() {
        let (tx, rx) = futures_channel::oneshot::channel();
        gpu.queue.on_submitted_work_done(move || {
            let _ = tx.send(());
        });
        let _ = rx.await;
    }
    gpu.lost_after_error().unwrap_or(error)
}
