//! The CPU side of a recorded program: [`Buffer`]s (the CPU's buffer handles) and a
//! [`Program`] of ops run in the order they were recorded, the twin of `gpu::Program`.
//!
//! As a GPU program binds buffers when it is recorded and reads their contents when it runs,
//! a CPU op is a closure over buffer handles that borrows their memory only while it runs: a
//! step's positions, token ids or masks written into a buffer between runs are what the next
//! run reads, so one recording serves every step.
//!
//! Borrows are checked when an op runs: an op borrows its inputs shared and its output
//! exclusively, so the same buffer as an input and the output of one op is an
//! [`ProgramError::Aliased`] error rather than undefined behaviour; an op that updates a
//! buffer in place (a residual add, a KV-cache row, a recurrent state) borrows it once,
//! exclusively. Buffers hold f32 words; byte offsets and sizes follow the GPU's (multiples of 4).
//!
//! A buffer either owns its memory or is [`Mapped`]: read-only bytes of a memory-mapped model
//! file, which the weight kernels read where they lie (no copy, and the pages are the file's:
//! the kernel can drop and re-read them, and several processes share them).

use std::cell::{Cell, Ref, RefCell, RefMut};
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;

use super::pool::ThreadPool;
use crate::backend::gpu::GpuError;

/// Read-only bytes shared with the memory that holds them, a memory-mapped file: `range` of
/// `owner`, which lives as long as any handle does.
#[derive(Clone)]
pub struct Mapped {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    range: Range<usize>,
}

impl Mapped {
    /// `range` of `owner`; `None` when it is out of bounds or does not start 4-byte aligned
    /// (the f32 ops read buffers as words).
    pub fn new(owner: Arc<dyn AsRef<[u8]> + Send + Sync>, range: Range<usize>) -> Option<Mapped> {
        let bytes = (*owner).as_ref();
        let aligned = (bytes.as_ptr() as usize + range.start).is_multiple_of(4);
        (range.start <= range.end && range.end <= bytes.len() && aligned).then_some(Mapped { owner, range })
    }

    pub fn bytes(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.range.clone()]
    }
}

/// A buffer's memory.
enum Memory {
    Owned(Vec<f32>),
    Mapped(Mapped),
}

impl Memory {
    fn bytes(&self) -> &[u8] {
        match self {
            Memory::Owned(words) => bytemuck::cast_slice(words),
            Memory::Mapped(m) => m.bytes(),
        }
    }
}

/// CPU memory an op reads or writes: a handle (clones share the memory), as a `wgpu::Buffer`
/// is.
#[derive(Clone)]
pub struct Buffer {
    label: Rc<str>,
    memory: Rc<RefCell<Memory>>,
    /// How many times its words were handed out for writing (what a form derived from its
    /// bytes, such as a repacked weight, was made from).
    writes: Rc<Cell<u64>>,
}

impl Buffer {
    /// `bytes` bytes (a multiple of 4) of zeros.
    pub fn zeroed(label: &str, bytes: u64) -> Result<Buffer, ProgramError> {
        let words = words_of(label, bytes)?;
        let mut memory = Vec::new();
        memory.try_reserve_exact(words).map_err(|_| ProgramError::OutOfMemory { label: label.into(), bytes })?;
        memory.resize(words, 0.0);
        Ok(Self::of(label, Memory::Owned(memory)))
    }

    /// A buffer holding `values`.
    pub fn from_f32(label: &str, values: &[f32]) -> Buffer {
        Self::of(label, Memory::Owned(values.to_vec()))
    }

    /// A read-only buffer of `bytes`, used where they lie.
    pub fn mapped(label: &str, bytes: Mapped) -> Buffer {
        Self::of(label, Memory::Mapped(bytes))
    }

    fn of(label: &str, memory: Memory) -> Buffer {
        Buffer { label: label.into(), memory: Rc::new(RefCell::new(memory)), writes: Rc::default() }
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        self.memory.borrow().bytes().len() as u64
    }

    /// Whether it is [`Mapped`] memory.
    pub fn is_mapped(&self) -> bool {
        matches!(*self.memory.borrow(), Memory::Mapped(_))
    }

    /// Its bytes, shared (a weight's rows).
    pub fn bytes(&self) -> Result<Ref<'_, [u8]>, ProgramError> {
        let memory = self.memory.try_borrow().map_err(|_| self.aliased())?;
        Ok(Ref::map(memory, Memory::bytes))
    }

    /// Its words, shared (an op's input; the host reading results between runs).
    pub fn read(&self) -> Result<Ref<'_, [f32]>, ProgramError> {
        let unaligned = || ProgramError::Unaligned { label: self.label.to_string(), bytes: self.size() };
        let bytes = self.bytes()?;
        bytemuck::try_cast_slice::<u8, f32>(&bytes).map_err(|_| unaligned())?;
        Ok(Ref::map(bytes, |b| bytemuck::cast_slice(b)))
    }

    /// Its words, exclusively (an op's output; the host writing a step's inputs).
    pub fn write(&self) -> Result<RefMut<'_, [f32]>, ProgramError> {
        let memory = self.memory.try_borrow_mut().map_err(|_| self.aliased())?;
        self.writes.set(self.writes.get() + 1);
        RefMut::filter_map(memory, |m| match m {
            Memory::Owned(words) => Some(words.as_mut_slice()),
            Memory::Mapped(_) => None,
        })
        .map_err(|_| ProgramError::ReadOnly { label: self.label.to_string() })
    }

    /// The first `n` words, shared; an error when the buffer is shorter.
    pub fn read_n(&self, n: usize) -> Result<Ref<'_, [f32]>, ProgramError> {
        self.check_len(n)?;
        Ok(Ref::map(self.read()?, |w| &w[..n]))
    }

    /// The first `n` words, exclusively; an error when the buffer is shorter.
    pub fn write_n(&self, n: usize) -> Result<RefMut<'_, [f32]>, ProgramError> {
        self.check_len(n)?;
        Ok(RefMut::map(self.write()?, |w| &mut w[..n]))
    }

    /// The first `n` words as u32 (token ids, positions, masks), shared.
    pub fn read_u32(&self, n: usize) -> Result<Ref<'_, [u32]>, ProgramError> {
        Ok(Ref::map(self.read_n(n)?, |w| bytemuck::cast_slice(w)))
    }

    /// Copies `bytes` to byte `offset` (any offset: weights stream in rows of any length).
    pub fn write_bytes(&self, offset: u64, bytes: &[u8]) -> Result<(), ProgramError> {
        let end = offset.saturating_add(bytes.len() as u64);
        if end > self.size() {
            return Err(ProgramError::OutOfRange { label: self.label.to_string(), end, size: self.size() });
        }
        let mut words = self.write()?;
        let memory: &mut [u8] = bytemuck::cast_slice_mut(&mut words[..]);
        memory[offset as usize..end as usize].copy_from_slice(bytes);
        Ok(())
    }

    /// `size` bytes from byte `offset` (both multiples of 4).
    pub fn read_bytes(&self, offset: u64, size: u64) -> Result<Vec<u8>, ProgramError> {
        let (at, n) = (words_of(&self.label, offset)?, words_of(&self.label, size)?);
        self.check_len(at + n)?;
        Ok(self.bytes()?[4 * at..4 * (at + n)].to_vec())
    }

    /// `len` words from byte `offset` (a multiple of 4).
    pub fn read_f32(&self, offset: u64, len: usize) -> Result<Vec<f32>, ProgramError> {
        let at = words_of(&self.label, offset)?;
        Ok(self.read_n(at.saturating_add(len))?[at..].to_vec())
    }

    fn check_len(&self, words: usize) -> Result<(), ProgramError> {
        let size = self.size();
        if words as u64 * 4 > size {
            return Err(ProgramError::OutOfRange { label: self.label.to_string(), end: words as u64 * 4, size });
        }
        Ok(())
    }

    fn aliased(&self) -> ProgramError {
        ProgramError::Aliased { label: self.label.to_string() }
    }

    /// How many times its words were handed out for writing: a form derived from its bytes
    /// is stale once this moves.
    pub fn writes(&self) -> u64 {
        self.writes.get()
    }

    /// Whether both handles name the same memory.
    pub fn same(&self, other: &Buffer) -> bool {
        Rc::ptr_eq(&self.memory, &other.memory)
    }
}

/// The words in `bytes`, which must be a multiple of 4.
fn words_of(label: &str, bytes: u64) -> Result<usize, ProgramError> {
    if !bytes.is_multiple_of(4) {
        return Err(ProgramError::Unaligned { label: label.into(), bytes });
    }
    usize::try_from(bytes / 4).map_err(|_| ProgramError::OutOfMemory { label: label.into(), bytes })
}

/// What a recorded op does when the program runs.
type Run = Box<dyn Fn(&ThreadPool) -> Result<(), ProgramError>>;

/// One recorded op: its name (for errors) and what it does.
struct Op {
    name: &'static str,
    run: Run,
}

/// Ops in the order they run.
#[derive(Default)]
pub struct Program {
    ops: Vec<Op>,
}

impl Program {
    pub fn new() -> Program {
        Program::default()
    }

    /// Appends an op: `run` borrows the buffers it captured when the program runs.
    pub fn push(&mut self, name: &'static str, run: impl Fn(&ThreadPool) -> Result<(), ProgramError> + 'static) {
        self.ops.push(Op { name, run: Box::new(run) });
    }

    /// Appends a copy of `size` bytes from `src` at `src_offset` to `dst` at `dst_offset`
    /// (`gpu::Program::copy`'s twin: checkpoints and snapshots); `src` and `dst` may be the same
    /// buffer when the ranges do not overlap.
    pub fn copy(&mut self, src: &Buffer, src_offset: u64, dst: &Buffer, dst_offset: u64, size: u64) -> Result<(), ProgramError> {
        let (from, to, len) =
            (words_of(src.label(), src_offset)?, words_of(dst.label(), dst_offset)?, words_of(src.label(), size)?);
        let (src, dst) = (src.clone(), dst.clone());
        self.push("copy", move |_| {
            // A range of `buffer`, whose borrowed words are `words`, starting at word `at`.
            let range = |buffer: &Buffer, words: usize, at: usize| {
                let end = at + len;
                let past =
                    || ProgramError::OutOfRange { label: buffer.label().into(), end: end as u64 * 4, size: words as u64 * 4 };
                if end <= words {
                    Ok(at..end)
                } else {
                    Err(past())
                }
            };
            if src.same(&dst) {
                let mut words = dst.write()?;
                let (input, output) = (range(&src, words.len(), from)?, range(&dst, words.len(), to)?);
                if input.start < output.end && output.start < input.end {
                    return Err(ProgramError::Aliased { label: dst.label().into() });
                }
                words.copy_within(input, output.start);
                return Ok(());
            }
            let (words, mut out) = (src.read()?, dst.write()?);
            let (input, output) = (range(&src, words.len(), from)?, range(&dst, out.len(), to)?);
            out[output].copy_from_slice(&words[input]);
            Ok(())
        });
        Ok(())
    }

    /// Ops recorded.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Runs every op in order on `pool`; the first failure stops the run and names its op.
    pub fn run(&self, pool: &ThreadPool) -> Result<(), ProgramError> {
        for (index, op) in self.ops.iter().enumerate() {
            (op.run)(pool).map_err(|e| ProgramError::Op { index, name: op.name, source: Box::new(e) })?;
        }
        Ok(())
    }
}

impl From<ProgramError> for GpuError {
    /// The model code's error: an allocation failure is the device's memory running out, as
    /// on the GPU.
    fn from(e: ProgramError) -> GpuError {
        match e.is_out_of_memory() {
            true => GpuError::OutOfMemory(e.to_string()),
            false => GpuError::Cpu(e.to_string()),
        }
    }
}

impl ProgramError {
    /// Whether the allocator refused memory: a buffer's, or an op's own.
    fn is_out_of_memory(&self) -> bool {
        match self {
            ProgramError::OutOfMemory { .. } => true,
            ProgramError::Matvec(e) => e.is_out_of_memory(),
            ProgramError::Vision(e) => e.is_out_of_memory(),
            ProgramError::Op { source, .. } => source.is_out_of_memory(),
            _ => false,
        }
    }
}

/// A program that cannot be built or run as asked.
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error("buffer {label:?}: {bytes} bytes is not a whole number of 4-byte words")]
    Unaligned { label: String, bytes: u64 },
    #[error("buffer {label:?}: cannot allocate {bytes} bytes")]
    OutOfMemory { label: String, bytes: u64 },
    #[error("buffer {label:?} is read-only (mapped from a file)")]
    ReadOnly { label: String },
    #[error("buffer {label:?} is both read and written by one op (name it once, as an in-place operand)")]
    Aliased { label: String },
    #[error("buffer {label:?}: a range ending at byte {end} is past its {size} bytes")]
    OutOfRange { label: String, end: u64, size: u64 },
    #[error(transparent)]
    Shape(#[from] super::ShapeError),
    #[error(transparent)]
    Matvec(#[from] super::MatvecError),
    #[error(transparent)]
    Vision(#[from] super::vision::VisionError),
    #[error("op {index} ({name}): {source}")]
    Op { index: usize, name: &'static str, source: Box<ProgramError> },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::quant::QuantError;

    /// An op's refused allocation, however deep in the op's error, is the device's memory
    /// running out (the typed too-small error upstream); other failures are not.
    #[test]
    fn an_ops_refused_allocation_is_out_of_memory() {
        let oom = ProgramError::Matvec(super::super::MatvecError::Quant(QuantError::OutOfMemory { bytes: usize::MAX }));
        let op = ProgramError::Op { index: 3, name: "matmul", source: Box::new(oom) };
        assert!(matches!(GpuError::from(op), GpuError::OutOfMemory(m) if m.contains("cannot allocate")));
        let shape = ProgramError::Matvec(super::super::MatvecError::OddGated(3));
        assert!(matches!(GpuError::from(shape), GpuError::Cpu(_)));
    }
}
