//! Recorded dispatches. A [`Program`] is built once (per model and context for decode, per
//! chunk length for prefill) with its bind groups and params, then encoded into a single
//! compute pass each time it runs: no allocation and no bind-group creation per step.

use std::rc::Rc;

use super::pipeline::KernelSpec;
#[cfg(not(target_arch = "wasm32"))]
use super::profile::{role, Profiler};
#[cfg(not(target_arch = "wasm32"))]
use super::Readback;
use super::{Gpu, GpuError, ParamSlot, ParamsArena, Pipeline, Result};

/// One binding of a dispatch, in the kernel's declared order.
#[derive(Clone, Copy)]
pub enum Arg<'a> {
    /// A whole buffer.
    Buf(&'a wgpu::Buffer),
    /// `size` bytes at `offset` (offset aligned to the device's storage or uniform offset
    /// alignment, as the binding is).
    Range(&'a wgpu::Buffer, u64, u64),
    /// A params slot from a [`ParamsArena`].
    Params(&'a ParamSlot),
}

/// A pipeline, its bind group and its grid.
pub struct Dispatch {
    pub pipeline: Rc<Pipeline>,
    pub bind_group: wgpu::BindGroup,
    pub workgroups: [u32; 3],
    /// Its launch shape, where the kernel describes it (for `webvlm bench`).
    pub launch: Option<Launch>,
}

/// The launch shape of a dispatch as its kernel describes it: invocations per workgroup and
/// the weight the whole grid reads once, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub invocations: u32,
    pub weight: Option<WeightRead>,
}

/// The weight a dispatch reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightRead {
    pub label: String,
    /// Bytes of the weight (part) the whole grid fetches: each byte once per group of tokens
    /// a matvec thread takes, once per tile of tokens in a matmul.
    pub bytes: u64,
    /// Activation bytes each workgroup reads (its input rows): re-read by every workgroup,
    /// small enough to stay in cache.
    pub activation_bytes: u64,
}

impl Launch {
    /// A launch of `invocations` per workgroup that reads no weight.
    pub fn threads(invocations: u32) -> Launch {
        Launch { invocations, weight: None }
    }
}

impl Dispatch {
    /// Workgroups of the grid.
    pub fn n_workgroups(&self) -> u64 {
        self.workgroups.iter().map(|&n| n as u64).product()
    }
}

impl Dispatch {
    pub fn encode(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline.compute);
        pass.set_bind_group(0, &self.bind_group, &[]);
        let [x, y, z] = self.workgroups;
        pass.dispatch_workgroups(x, y, z);
    }
}

/// One recorded operation: a dispatch, or a buffer copy or clear between compute passes.
pub enum Op {
    Dispatch(Dispatch),
    Copy { src: wgpu::Buffer, src_offset: u64, dst: wgpu::Buffer, dst_offset: u64, size: u64 },
    Clear(wgpu::Buffer),
}

/// An ordered list of operations plus the params arena their uniforms live in.
#[derive(Default)]
pub struct Program {
    pub ops: Vec<Op>,
    pub params: ParamsArena,
}

impl Program {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores a params struct in this program's arena.
    pub fn params<T: bytemuck::Pod>(&mut self, gpu: &Gpu, value: &T) -> ParamSlot {
        self.params.push(gpu, value)
    }

    /// Appends a dispatch of `spec` over `workgroups` with `args` bound in order.
    pub fn push(&mut self, gpu: &Gpu, spec: &KernelSpec, args: &[Arg<'_>], workgroups: [u32; 3]) -> Result<()> {
        let pipeline = gpu.pipeline(spec)?;
        let bind_group = bind(gpu, &pipeline, args)?;
        self.ops.push(Op::Dispatch(Dispatch { pipeline, bind_group, workgroups, launch: None }));
        Ok(())
    }

    /// Describes the launch of the last dispatch (see [`Launch`]).
    pub fn set_launch(&mut self, launch: Launch) {
        if let Some(Op::Dispatch(d)) = self.ops.last_mut() {
            d.launch = Some(launch);
        }
    }

    /// Appends a copy of `size` bytes (offsets and size multiples of 4).
    pub fn copy(&mut self, src: &wgpu::Buffer, src_offset: u64, dst: &wgpu::Buffer, dst_offset: u64, size: u64) {
        self.ops.push(Op::Copy { src: src.clone(), src_offset, dst: dst.clone(), dst_offset, size });
    }

    /// Appends the zeroing of `buffer`.
    pub fn clear(&mut self, buffer: &wgpu::Buffer) {
        self.ops.push(Op::Clear(buffer.clone()));
    }

    /// Number of compute dispatches (for benchmarks).
    pub fn n_dispatches(&self) -> usize {
        self.ops.iter().filter(|op| matches!(op, Op::Dispatch(_))).count()
    }

    /// Appends a dispatch whose params struct is stored first and bound as argument 0.
    pub fn push_with_params<T: bytemuck::Pod>(
        &mut self,
        gpu: &Gpu,
        spec: &KernelSpec,
        params: &T,
        args: &[Arg<'_>],
        workgroups: [u32; 3],
    ) -> Result<()> {
        let slot = self.params(gpu, params);
        let mut all = Vec::with_capacity(args.len() + 1);
        all.push(Arg::Params(&slot));
        all.extend_from_slice(args);
        self.push(gpu, spec, &all, workgroups)
    }

    /// Records every operation into `encoder`: consecutive dispatches share one compute pass.
    pub fn encode(&self, encoder: &mut wgpu::CommandEncoder) {
        let mut ops = self.ops.iter().peekable();
        while ops.peek().is_some() {
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: None });
                while let Some(Op::Dispatch(d)) = ops.peek() {
                    d.encode(&mut pass);
                    ops.next();
                }
            }
            if let Some(op) = ops.next() {
                encode_transfer(op, encoder);
            }
        }
    }

    /// Encodes, submits and (natively) waits: for tests and one-off work.
    pub fn run(&self, gpu: &Gpu) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(profiler) = gpu.profiler().filter(|p| p.is_on()) {
            return self.run_profiled(gpu, profiler);
        }
        let mut encoder = gpu.device.create_command_encoder(&Default::default());
        self.encode(&mut encoder);
        gpu.queue.submit([encoder.finish()]);
        gpu.check_errors()
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Program {
    /// [`Program::run`] with each dispatch in a compute pass of its own whose start and end
    /// the GPU writes into a query set, the times added to `profiler` (waits for each chunk).
    fn run_profiled(&self, gpu: &Gpu, profiler: &Profiler) -> Result<()> {
        // Dispatches per submission: two queries each (wgpu's query sets hold 4096 at most).
        const CHUNK: usize = 2048;
        let period = gpu.queue.get_timestamp_period() as f64;
        let mut ops = self.ops.iter().peekable();
        while ops.peek().is_some() {
            let desc =
                wgpu::QuerySetDescriptor { label: Some("profile"), ty: wgpu::QueryType::Timestamp, count: 2 * CHUNK as u32 };
            let set = gpu.device.create_query_set(&desc);
            let mut encoder = gpu.device.create_command_encoder(&Default::default());
            let mut kernels = Vec::new();
            while let Some(op) = (kernels.len() < CHUNK).then(|| ops.next()).flatten() {
                let Op::Dispatch(d) = op else {
                    encode_transfer(op, &mut encoder);
                    continue;
                };
                let i = 2 * kernels.len() as u32;
                let writes = wgpu::ComputePassTimestampWrites {
                    query_set: &set,
                    beginning_of_pass_write_index: Some(i),
                    end_of_pass_write_index: Some(i + 1),
                };
                d.encode(
                    &mut encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes: Some(writes) }),
                );
                let weight = d.launch.as_ref().and_then(|l| l.weight.as_ref()).map_or(String::new(), |w| role(&w.label));
                kernels.push(format!("{} {} {weight}", d.pipeline.label, d.pipeline.entry).trim_end().to_string());
            }
            if kernels.is_empty() {
                gpu.queue.submit([encoder.finish()]);
                gpu.check_errors()?;
                continue;
            }
            let bytes = 16 * kernels.len() as u64;
            let resolved = gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("profile"),
                size: bytes,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            encoder.resolve_query_set(&set, 0..2 * kernels.len() as u32, &resolved, 0);
            let mut readback = Readback::new(gpu, bytes);
            readback.copy_from(&mut encoder, &resolved, 0, bytes);
            readback.map(bytes, gpu.queue.submit([encoder.finish()]));
            let stamps: Vec<u64> = bytemuck::pod_collect_to_vec(&pollster::block_on(readback.read(gpu))?);
            for (kernel, pair) in kernels.into_iter().zip(stamps.chunks_exact(2)) {
                profiler.add(kernel, pair[1].saturating_sub(pair[0]) as f64 * period);
            }
        }
        Ok(())
    }
}

/// Records a copy or clear (a dispatch records nothing here).
fn encode_transfer(op: &Op, encoder: &mut wgpu::CommandEncoder) {
    match op {
        Op::Copy { src, src_offset, dst, dst_offset, size } => {
            encoder.copy_buffer_to_buffer(src, *src_offset, dst, *dst_offset, *size)
        }
        Op::Clear(buffer) => encoder.clear_buffer(buffer, 0, None),
        Op::Dispatch(_) => {}
    }
}

/// Creates the bind group of `args` for `pipeline`.
pub fn bind(gpu: &Gpu, pipeline: &Pipeline, args: &[Arg<'_>]) -> Result<wgpu::BindGroup> {
    if args.len() != pipeline.bindings.len() {
        return Err(GpuError::BindingCount {
            label: pipeline.label.to_string(),
            expected: pipeline.bindings.len(),
            got: args.len(),
        });
    }
    let entries: Vec<wgpu::BindGroupEntry> = args
        .iter()
        .enumerate()
        .map(|(i, arg)| wgpu::BindGroupEntry {
            binding: i as u32,
            resource: match *arg {
                Arg::Buf(b) => b.as_entire_binding(),
                Arg::Range(b, offset, size) => {
                    wgpu::BindingResource::Buffer(wgpu::BufferBinding { buffer: b, offset, size: wgpu::BufferSize::new(size) })
                }
                Arg::Params(slot) => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &slot.buffer,
                    offset: slot.offset,
                    size: wgpu::BufferSize::new(slot.size),
                }),
            },
        })
        .collect();
    let group = gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(pipeline.label),
        layout: &pipeline.layout,
        entries: &entries,
    });
    gpu.check_errors()?;
    Ok(group)
}
