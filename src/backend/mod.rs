//! Compute backends behind the model code, and the handles it records with: a
//! [`Device`](crate::backend::Device) (a wgpu device or the CPU),
//! [`Buffer`](crate::backend::Buffer)s on it, and [`Program`](crate::backend::Program)s of
//! ops recorded once and run each step. The two sides lie side by side, one module per op in
//! each under the same name:
//!
//! - [`gpu`](crate::backend::gpu): the wgpu layer (device and limits, the typed pipeline
//!   cache, the params arena, recorded dispatches) and each op's WGSL side (`gpu::matvec`,
//!   `gpu::attention`, ...: shader sources, params structs, bindings, launch shapes,
//!   dispatches).
//! - [`cpu`](crate::backend::cpu): the CPU kernels (SIMD chosen once per process, a
//!   persistent thread pool) and its programs of closures, run in order on the pool.
//!
//! Neither side calls the other: the kernel wrappers of `crate::kernels` take these handles,
//! open the program's side for the device ([`Program::on`](crate::backend::Program::on)) and
//! record the op there.

pub mod cpu;
pub mod gpu;

use gpu::{Caps, Gpu, GpuError, Result};

/// Where ops run and buffers live.
pub enum Device {
    Gpu(Gpu),
    Cpu(cpu::Device),
}

/// Memory an op reads or writes: a handle (clones share the memory).
#[derive(Clone)]
pub enum Buffer {
    Gpu(wgpu::Buffer),
    Cpu(cpu::Buffer),
}

/// Ops in the order they run: GPU dispatches or CPU ops, by the device of the first op
/// recorded into it (a new program is empty, of neither kind).
#[derive(Default)]
pub enum Program {
    #[default]
    Empty,
    Gpu(gpu::Program),
    Cpu(cpu::Program),
}

/// A program's side, opened for recording one op ([`Program::on`]).
pub enum On<'a> {
    Gpu(&'a mut gpu::Program, &'a Gpu),
    Cpu(&'a mut cpu::Program, &'a cpu::Device),
}

impl From<Gpu> for Device {
    fn from(gpu: Gpu) -> Device {
        Device::Gpu(gpu)
    }
}

impl Device {
    /// What the device can do (the CPU reports wide limits and no f16 storage).
    pub fn caps(&self) -> &Caps {
        match self {
            Device::Gpu(gpu) => &gpu.caps,
            Device::Cpu(cpu) => &cpu.caps,
        }
    }

    /// The wgpu device, for the GPU-only paths (the pipelined decode loop, readback staging).
    pub fn gpu(&self) -> Result<&Gpu> {
        match self {
            Device::Gpu(gpu) => Ok(gpu),
            Device::Cpu(_) => Err(GpuError::WrongBackend("a GPU path was asked of the CPU device")),
        }
    }

    /// A zero-filled buffer of `size` bytes (rounded up to whole words).
    pub fn storage(&self, label: &str, size: u64) -> Result<Buffer> {
        match self {
            Device::Gpu(gpu) => Ok(Buffer::Gpu(gpu.storage(label, size)?)),
            Device::Cpu(_) => Ok(Buffer::Cpu(cpu::Buffer::zeroed(label, size.max(4).next_multiple_of(4))?)),
        }
    }

    /// A buffer holding `bytes` (padded to a multiple of 4).
    pub fn storage_with(&self, label: &str, bytes: &[u8]) -> Result<Buffer> {
        let buffer = self.storage(label, bytes.len() as u64)?;
        self.write(&buffer, 0, bytes)?;
        Ok(buffer)
    }

    /// Writes `bytes` at byte `offset` (a multiple of 4) of `buffer`.
    pub fn write(&self, buffer: &Buffer, offset: u64, bytes: &[u8]) -> Result<()> {
        match (self, buffer) {
            (Device::Gpu(gpu), Buffer::Gpu(b)) => {
                gpu.write(b, offset, bytes);
                Ok(())
            }
            (Device::Cpu(_), Buffer::Cpu(b)) => Ok(b.write_bytes(offset, bytes)?),
            _ => Err(GpuError::WrongBackend("a buffer written through another backend's device")),
        }
    }

    /// Copies `size` bytes at `offset` of `src` to the host.
    pub async fn read(&self, src: &Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        match (self, src) {
            (Device::Gpu(gpu), Buffer::Gpu(b)) => gpu.read(b, offset, size).await,
            (Device::Cpu(_), Buffer::Cpu(b)) => Ok(b.read_bytes(offset, size)?),
            _ => Err(GpuError::WrongBackend("a buffer read through another backend's device")),
        }
    }

    /// [`Device::read`] as f32 values.
    pub async fn read_f32(&self, src: &Buffer, offset: u64, len: usize) -> Result<Vec<f32>> {
        match (self, src) {
            // The words copied once (a batched step's logits are megabytes).
            (Device::Cpu(_), Buffer::Cpu(b)) => Ok(b.read_f32(offset, len)?),
            _ => Ok(bytemuck::pod_collect_to_vec(&self.read(src, offset, len as u64 * 4).await?)),
        }
    }

    /// Blocking [`Device::read_f32`] of the first `len` values, for native callers.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_f32_blocking(&self, src: &Buffer, len: usize) -> Result<Vec<f32>> {
        pollster::block_on(self.read_f32(src, 0, len))
    }

    /// Blocking [`Device::read`] for native callers.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_blocking(&self, src: &Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        pollster::block_on(self.read(src, offset, size))
    }

    /// Why the device was lost, once it was (a CPU is never lost).
    pub fn lost(&self) -> Option<GpuError> {
        self.gpu().ok()?.lost()
    }

    /// [`Gpu::lost_after_error`]: asked after an operation failed.
    pub fn lost_after_error(&self) -> Option<GpuError> {
        self.gpu().ok()?.lost_after_error()
    }

    /// Fails with the lost-device error once the device is lost.
    pub fn check_lost(&self) -> Result<()> {
        self.lost().map_or(Ok(()), Err)
    }

    /// Memory held by live buffers ([`Gpu::memory_stats`]; `None` on the CPU and in browsers).
    pub fn memory_stats(&self) -> Option<gpu::MemoryStats> {
        self.gpu().ok()?.memory_stats()
    }

    /// The first error the device reported since the last check (the CPU reports its errors
    /// where they happen).
    pub fn check_errors(&self) -> Result<()> {
        match self {
            Device::Gpu(gpu) => gpu.check_errors(),
            Device::Cpu(_) => Ok(()),
        }
    }
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Buffer::Gpu(b) => b.fmt(f),
            Buffer::Cpu(b) => write!(f, "cpu::Buffer({:?}, {} bytes)", b.label(), b.size()),
        }
    }
}

impl Buffer {
    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        match self {
            Buffer::Gpu(b) => b.size(),
            Buffer::Cpu(b) => b.size(),
        }
    }

    /// The wgpu buffer (a GPU op's operand).
    pub fn gpu(&self) -> Result<&wgpu::Buffer> {
        match self {
            Buffer::Gpu(b) => Ok(b),
            Buffer::Cpu(_) => Err(GpuError::WrongBackend("a CPU buffer given to a GPU op")),
        }
    }

    /// The CPU buffer (a CPU op's operand).
    pub fn cpu(&self) -> Result<&cpu::Buffer> {
        match self {
            Buffer::Cpu(b) => Ok(b),
            Buffer::Gpu(_) => Err(GpuError::WrongBackend("a GPU buffer given to a CPU op")),
        }
    }

    /// The CPU buffers of `buffers`, as handles a recorded CPU op owns (they share memory).
    pub fn cpu_handles<const N: usize>(buffers: [&Buffer; N]) -> Result<[cpu::Buffer; N]> {
        let handles = buffers.iter().map(|b| b.cpu().cloned()).collect::<Result<Vec<_>>>()?;
        Ok(handles.try_into().unwrap_or_else(|_| unreachable!("N handles from N buffers")))
    }
}

impl Program {
    pub fn new() -> Program {
        Program::Empty
    }

    /// Opens the side of `dev` for recording one op: an empty program takes `dev`'s kind; a
    /// program of the other kind is an error.
    pub fn on<'a>(&'a mut self, dev: &'a Device) -> Result<On<'a>> {
        match (self.take_kind(matches!(dev, Device::Gpu(_))), dev) {
            (Program::Gpu(p), Device::Gpu(gpu)) => Ok(On::Gpu(p, gpu)),
            (Program::Cpu(p), Device::Cpu(cpu)) => Ok(On::Cpu(p, cpu)),
            _ => Err(GpuError::WrongBackend("an op recorded into a program of the other backend")),
        }
    }

    /// The GPU side, for an op that has no CPU implementation yet (`op` names it in the error).
    pub fn gpu<'a>(&'a mut self, dev: &'a Device, op: &'static str) -> Result<(&'a mut gpu::Program, &'a Gpu)> {
        match self.on(dev)? {
            On::Gpu(p, gpu) => Ok((p, gpu)),
            On::Cpu(..) => Err(GpuError::CpuUnsupported(op)),
        }
    }

    /// Appends a copy of `size` bytes from `src` at `src_offset` to `dst` at `dst_offset`
    /// (offsets and size multiples of 4): checkpoints and snapshots.
    pub fn copy(&mut self, src: &Buffer, src_offset: u64, dst: &Buffer, dst_offset: u64, size: u64) -> Result<()> {
        match self.side_of(src) {
            Program::Gpu(p) => p.copy(src.gpu()?, src_offset, dst.gpu()?, dst_offset, size),
            Program::Cpu(p) => p.copy(src.cpu()?, src_offset, dst.cpu()?, dst_offset, size)?,
            Program::Empty => unreachable!("side_of sets it"),
        }
        Ok(())
    }

    /// Appends the zeroing of `buffer` (a new sequence's recurrent states).
    pub fn clear(&mut self, buffer: &Buffer) -> Result<()> {
        match self.side_of(buffer) {
            Program::Gpu(p) => p.clear(buffer.gpu()?),
            Program::Cpu(p) => {
                let buffer = buffer.cpu()?.clone();
                p.push("clear", move |_| {
                    buffer.write()?.fill(0.0);
                    Ok(())
                });
            }
            Program::Empty => unreachable!("side_of sets it"),
        }
        Ok(())
    }

    /// The program, of `buffer`'s kind if it was empty (for ops that name no device).
    fn side_of(&mut self, buffer: &Buffer) -> &mut Program {
        self.take_kind(matches!(buffer, Buffer::Gpu(_)))
    }

    /// The program, made a GPU (`on_gpu`) or CPU one if it was empty.
    fn take_kind(&mut self, on_gpu: bool) -> &mut Program {
        if let Program::Empty = self {
            *self = if on_gpu { Program::Gpu(gpu::Program::new()) } else { Program::Cpu(cpu::Program::new()) };
        }
        self
    }

    /// GPU dispatches or CPU ops recorded (for benchmarks).
    pub fn n_dispatches(&self) -> usize {
        match self {
            Program::Empty => 0,
            Program::Gpu(p) => p.n_dispatches(),
            Program::Cpu(p) => p.len(),
        }
    }

    /// Runs the program to its end: on the GPU, encodes, submits and (natively) waits.
    pub fn run(&self, dev: &Device) -> Result<()> {
        match (self, dev) {
            (Program::Empty, _) => Ok(()),
            (Program::Gpu(p), Device::Gpu(gpu)) => p.run(gpu),
            (Program::Cpu(p), Device::Cpu(cpu)) => Ok(p.run(&cpu.pool)?),
            _ => Err(GpuError::WrongBackend("a program run on the other backend's device")),
        }
    }

    /// The GPU side, for encoding into a command encoder (the pipelined decode loop).
    pub fn as_gpu(&self) -> Option<&gpu::Program> {
        match self {
            Program::Gpu(p) => Some(p),
            _ => None,
        }
    }
}
