//! Weights: a 2-D GGUF tensor `[rows = output features][cols = input features]`, on the CPU
//! in its file layout, on the GPU uploaded in a layout that the decoders of
//! `shaders/quant.wgsl` (`backend::gpu::quant`) read with aligned `u32` loads, split by rows
//! into parts that each fit one storage binding. Block formats: ggml's
//! `ggml-common.h` (`block_q8_0` ... `block_q6_K`) and `dequantize_row_*` in `ggml-quants.c`.
//!
//! GPU layout, per part (one `array<u32>` holding rows `[row_offset, row_offset + rows)`):
//!
//! | GGUF type                         | GPU layout                                         |
//! |-----------------------------------|----------------------------------------------------|
//! | F32                               | row-major f32                                      |
//! | F16, BF16 with even `cols`        | row-major 16-bit values, two per word (unchanged)  |
//! | F16, BF16 with odd `cols`         | converted to F32 (exact)                           |
//! | Q4_1 (20 B), Q4_K (144 B), Q5_K (176 B) | GGUF blocks unchanged, row-major (4-byte aligned) |
//! | Q4_0 (18 B), Q8_0 (34 B), Q6_K (210 B)  | every block's body without its f16 `d` (16, 32, 208 B) in block order, then the f16 `d` of every block in the same order, starting at word `scale_base` |
//!
//! The repack is a pure byte permutation ([`repack`], inverted by [`unpack`]), so the GPU sees
//! exactly the GGUF values.

use std::cell::RefCell;
use std::rc::Rc;

use super::shapes::{Epilogue, Output};
use crate::backend::cpu::{self, ProgramError};
use crate::backend::gpu::GpuError;
use crate::backend::{Buffer, Device};
use crate::gguf::GgmlType;

/// Largest part in bytes, whatever the device allows: keeps every word index below 2^31.
const MAX_PART_BYTES: u64 = 1 << 31;

/// Errors of weight upload.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    /// The GGUF type has no GPU decoder.
    #[error("weight type {0} is not supported on the GPU")]
    Unsupported(GgmlType),
    /// The byte length does not match `rows x cols` of the type.
    #[error("weight of {rows}x{cols} {ty} needs {expected} bytes, got {got}")]
    SizeMismatch { ty: GgmlType, rows: u32, cols: u32, expected: u64, got: u64 },
    /// `cols` is not a multiple of the type's block size, or a dimension is zero.
    #[error("weight of {rows}x{cols} {ty}: columns must be a non-zero multiple of {block}")]
    BadShape { ty: GgmlType, rows: u32, cols: u32, block: usize },
    /// Not even one row fits the part size limit.
    #[error("one row of {row_bytes} bytes (plus 4 bytes of scale padding) exceeds the part limit of {limit} bytes")]
    RowTooLarge { row_bytes: u64, limit: u64 },
    /// A row write outside the weight, of partial rows, or breaking the scale alignment.
    #[error("{label}: cannot write {bytes} bytes at row {row0}")]
    BadWrite { label: String, row0: u32, bytes: u64 },
    /// Buffer creation failed.
    #[error(transparent)]
    Gpu(#[from] GpuError),
}

/// How the GPU decodes a weight; the discriminant is `WTYPE` in `shaders/quant.wgsl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum WeightFormat {
    F32 = 0,
    F16 = 1,
    BF16 = 2,
    Q8_0 = 3,
    Q4_0 = 4,
    Q4_1 = 5,
    Q4_K = 6,
    Q5_K = 7,
    Q6_K = 8,
}

impl WeightFormat {
    /// The GPU format of a GGUF type with `cols` columns (`None`: unsupported).
    pub fn of(ty: GgmlType, cols: usize) -> Option<WeightFormat> {
        use WeightFormat as W;
        Some(match ty {
            GgmlType::F32 => W::F32,
            GgmlType::F16 | GgmlType::BF16 if cols % 2 == 1 => W::F32,
            GgmlType::F16 => W::F16,
            GgmlType::BF16 => W::BF16,
            GgmlType::Q8_0 => W::Q8_0,
            GgmlType::Q4_0 => W::Q4_0,
            GgmlType::Q4_1 => W::Q4_1,
            GgmlType::Q4_K => W::Q4_K,
            GgmlType::Q5_K => W::Q5_K,
            GgmlType::Q6_K => W::Q6_K,
            _ => return None,
        })
    }

    /// The `WTYPE` code.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// Elements per block (1 for plain types).
    pub fn block(self) -> usize {
        use WeightFormat as W;
        match self {
            W::F32 | W::F16 | W::BF16 => 1,
            W::Q8_0 | W::Q4_0 | W::Q4_1 => 32,
            W::Q4_K | W::Q5_K | W::Q6_K => 256,
        }
    }

    /// Whether the f16 scale is moved out of the block into a trailing array.
    pub fn split_scale(self) -> bool {
        matches!(self, WeightFormat::Q8_0 | WeightFormat::Q4_0 | WeightFormat::Q6_K)
    }

    /// Bytes per GPU row of `cols` elements, without split scales.
    pub(crate) fn row_body_bytes(self, cols: usize) -> usize {
        use WeightFormat as W;
        let blocks = cols / self.block();
        match self {
            W::F32 => cols * 4,
            W::F16 | W::BF16 => cols * 2,
            W::Q8_0 => blocks * 32,
            W::Q4_0 => blocks * 16,
            W::Q4_1 => blocks * 20,
            W::Q4_K => blocks * 144,
            W::Q5_K => blocks * 176,
            W::Q6_K => blocks * 208,
        }
    }

    /// Byte offset of the f16 `d` inside a GGUF block of a split type.
    fn scale_pos(self) -> usize {
        if self == WeightFormat::Q6_K {
            208
        } else {
            0
        }
    }
}

/// A part of a weight after [`repack`].
#[derive(Clone, Debug, PartialEq)]
pub struct Packed {
    pub format: WeightFormat,
    /// GPU bytes, a multiple of 4.
    pub bytes: Vec<u8>,
    /// Word offset of the f16 scale array (split types), else 0.
    pub scale_base: u32,
}

/// Rearranges GGUF `src` holding whole rows of `cols` elements of `ty` into the GPU layout
/// (module docs). Pure and lossless; `src` must hold a whole number of rows.
pub fn repack(ty: GgmlType, cols: usize, src: &[u8]) -> Result<Packed, WeightError> {
    let format = WeightFormat::of(ty, cols).ok_or(WeightError::Unsupported(ty))?;
    let mut bytes = Vec::new();
    let mut scale_base = 0;
    if format == WeightFormat::F32 && ty != GgmlType::F32 {
        // Odd-length F16/BF16 rows: widen each value exactly.
        bytes.reserve(src.len() * 2);
        for c in src.chunks_exact(2) {
            let h = u16::from_le_bytes([c[0], c[1]]);
            let v = if ty == GgmlType::F16 { half::f16::from_bits(h).to_f32() } else { f32::from_bits((h as u32) << 16) };
            bytes.extend_from_slice(&v.to_le_bytes());
        }
    } else if format.split_scale() {
        let bsize = ty.type_size();
        let blocks = src.len() / bsize;
        let pos = format.scale_pos();
        bytes.reserve(blocks * bsize + 2);
        for b in src.chunks_exact(bsize) {
            bytes.extend_from_slice(&b[..pos]);
            bytes.extend_from_slice(&b[pos + 2..]);
        }
        scale_base = (bytes.len() / 4) as u32;
        for b in src.chunks_exact(bsize) {
            bytes.extend_from_slice(&b[pos..pos + 2]);
        }
    } else {
        bytes.extend_from_slice(src);
    }
    bytes.resize(bytes.len().next_multiple_of(4), 0);
    Ok(Packed { format, bytes, scale_base })
}

/// The inverse of [`repack`]: GGUF bytes of `n_elems` elements of `ty` from a packed part.
pub fn unpack(ty: GgmlType, packed: &Packed, n_elems: usize) -> Vec<u8> {
    let format = packed.format;
    let src = &packed.bytes;
    if format == WeightFormat::F32 && ty != GgmlType::F32 {
        src[..n_elems * 4]
            .chunks_exact(4)
            .flat_map(|c| {
                let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                let h = if ty == GgmlType::F16 { half::f16::from_f32(v).to_bits() } else { (v.to_bits() >> 16) as u16 };
                h.to_le_bytes()
            })
            .collect()
    } else if format.split_scale() {
        let bsize = ty.type_size();
        let (body, pos) = (bsize - 2, format.scale_pos());
        let blocks = n_elems / format.block();
        let scales = &src[packed.scale_base as usize * 4..];
        let mut out = Vec::with_capacity(blocks * bsize);
        for i in 0..blocks {
            let b = &src[i * body..(i + 1) * body];
            out.extend_from_slice(&b[..pos]);
            out.extend_from_slice(&scales[i * 2..i * 2 + 2]);
            out.extend_from_slice(&b[pos..]);
        }
        out
    } else {
        src[..n_elems * ty.type_size() / ty.block_size()].to_vec()
    }
}

/// Rows `[row_offset, row_offset + rows)` of a weight in one storage buffer.
#[derive(Clone)]
pub struct WeightPart {
    pub buffer: Buffer,
    pub row_offset: u32,
    pub rows: u32,
    /// Word offset of the f16 scale array (split types), else 0.
    pub scale_base: u32,
    pub bytes: u64,
}

/// One GPU buffer of a weight as [`plan_parts`] lays it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartPlan {
    pub row_offset: u32,
    pub rows: u32,
    /// Bytes of the packed rows (without the split scale array).
    pub body_bytes: u64,
    /// Bytes of the buffer: the rows and their split scales padded to 4.
    pub bytes: u64,
}

/// How a `rows x cols` weight of GGUF type `ty` is laid out on the GPU: its format and its
/// parts of at most `part_limit` bytes, in row order. A pure function of the shape (the
/// memory plan sizes weights from file headers with it; [`Weight::allocate`] allocates
/// exactly these parts).
pub fn plan_parts(ty: GgmlType, rows: u32, cols: u32, part_limit: u64) -> Result<(WeightFormat, Vec<PartPlan>), WeightError> {
    let format = WeightFormat::of(ty, cols as usize).ok_or(WeightError::Unsupported(ty))?;
    let block = ty.block_size();
    if rows == 0 || cols == 0 || !(cols as usize).is_multiple_of(block) {
        return Err(WeightError::BadShape { ty, rows, cols, block });
    }
    let body = format.row_body_bytes(cols as usize) as u64;
    let scales = if format.split_scale() { (cols as usize / block * 2) as u64 } else { 0 };
    // 4 bytes of slack for the scale array's padding.
    let limit = part_limit.min(MAX_PART_BYTES);
    let mut rows_per_part = (limit.saturating_sub(4) / (body + scales)).min(rows as u64) as u32;
    if rows_per_part > 1 && rows_per_part < rows {
        rows_per_part &= !1;
    }
    if rows_per_part == 0 {
        return Err(WeightError::RowTooLarge { row_bytes: body + scales, limit });
    }
    let mut parts = Vec::new();
    let mut row_offset = 0u32;
    while row_offset < rows {
        let n = rows_per_part.min(rows - row_offset);
        let body_bytes = body * n as u64;
        let bytes = body_bytes + (scales * n as u64).next_multiple_of(4);
        parts.push(PartPlan { row_offset, rows: n, body_bytes, bytes });
        row_offset += n;
    }
    Ok((format, parts))
}

/// The format and GGUF row bytes of a `rows x cols` CPU weight of `ty`.
fn cpu_shape(ty: GgmlType, rows: u32, cols: u32) -> Result<(WeightFormat, u64), WeightError> {
    let format = WeightFormat::of(ty, cols as usize).ok_or(WeightError::Unsupported(ty))?;
    let block = ty.block_size();
    if rows == 0 || cols == 0 || !(cols as usize).is_multiple_of(block) {
        return Err(WeightError::BadShape { ty, rows, cols, block });
    }
    Ok((format, (cols as usize / block * ty.type_size()) as u64))
}

/// A CPU weight's buffers as a recorded op captures them, borrowed as one [`cpu::Weight`]
/// while the op runs.
pub(crate) struct CpuWeight {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    /// Each part's buffer and the bytes of its rows.
    parts: Vec<(cpu::Buffer, usize)>,
    repacked: Rc<RefCell<Option<CpuPacked>>>,
}

impl CpuWeight {
    pub(crate) fn of(w: &Weight) -> Result<CpuWeight, GpuError> {
        let parts = w.parts.iter().map(|p| Ok((p.buffer.cpu()?.clone(), p.bytes as usize))).collect::<Result<_, GpuError>>()?;
        Ok(CpuWeight { ty: w.ty, rows: w.rows as usize, cols: w.cols as usize, parts, repacked: w.cpu_packed.clone() })
    }

    /// `w` (this weight, borrowed) repacked for a fast-mode product into `out`, where the
    /// repacked form is faster ([`cpu::Repacked::takes`]; a SiLU-gated product takes its
    /// panels from both halves only where each half is whole panels):
    /// made at the first such product and kept until a part is written again. `None` where
    /// it does not apply or the memory for it was refused, which is not asked again until a
    /// part is written (the product then reads the rows as they are: the same bits for Q4_K
    /// and Q6_K, within rounding for the 32-element formats, `cpu::repacked`).
    pub(crate) fn packed(
        &self,
        pool: &cpu::ThreadPool,
        w: &cpu::Weight,
        mode: cpu::Mode,
        out: Output,
    ) -> Option<Rc<cpu::Repacked>> {
        let gated_halves_whole = out.epilogue != Epilogue::SiluMul || (self.rows / 2).is_multiple_of(cpu::matmul::ROWS);
        if !cpu::Repacked::takes(self.ty, cpu::simd::level()) || mode != cpu::Mode::Fast || !gated_halves_whole {
            return None;
        }
        let writes = || self.parts.iter().map(|(b, _)| b.writes());
        let mut cached = self.repacked.borrow_mut();
        match &*cached {
            // Every product of every step asks: compared in place, nothing allocated.
            Some(p) if p.writes.iter().copied().eq(writes()) => p.weight.clone(),
            _ => {
                // A refusal is kept too: the next products do not ask again.
                let weight = cpu::Repacked::pack(pool, w).ok().map(Rc::new);
                *cached = Some(CpuPacked { writes: writes().collect(), weight: weight.clone() });
                weight
            }
        }
    }

    /// Runs `f` on the weight, its buffers borrowed meanwhile.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&cpu::Weight) -> Result<R, ProgramError>) -> Result<R, ProgramError> {
        let held = self.parts.iter().map(|(b, _)| b.bytes()).collect::<Result<Vec<_>, _>>()?;
        let rows: Vec<&[u8]> = held.iter().zip(&self.parts).map(|(h, &(_, n))| &h[..n]).collect();
        let w = cpu::Weight::stacked(self.ty, self.cols, rows[0], &rows[1..])?;
        if w.rows() != self.rows {
            let bytes = w.len();
            return Err(cpu::MatvecError::WeightBytes {
                ty: self.ty,
                rows: self.rows,
                cols: self.cols,
                bytes,
                block: self.ty.block_size(),
            }
            .into());
        }
        f(&w)
    }
}

/// A 2-D weight on the GPU: `[rows][cols]`, `cols` = GGUF `dims[0]` (the input features).
/// Cloning shares the GPU buffers.
#[derive(Clone)]
pub struct Weight {
    pub label: String,
    /// The GGUF type it was uploaded from.
    pub ty: GgmlType,
    /// How the kernels decode it.
    pub format: WeightFormat,
    pub rows: u32,
    pub cols: u32,
    /// Row ranges, each in its own buffer, in row order.
    pub parts: Vec<WeightPart>,
    /// On the CPU backend, the weight repacked for its products where that is faster (see
    /// [`CpuWeight::packed`]), made at its first product; shared by clones.
    cpu_packed: Rc<RefCell<Option<CpuPacked>>>,
}

/// A repacked CPU weight (`None`: its memory was refused) and its parts' write counts when
/// it was made.
struct CpuPacked {
    writes: Vec<u64>,
    weight: Option<Rc<cpu::Repacked>>,
}

impl Weight {
    /// Uploads GGUF `bytes` of a `rows x cols` tensor of `ty`, splitting it by rows into parts
    /// no larger than the device's storage binding limit.
    pub fn upload(dev: &Device, label: &str, ty: GgmlType, rows: u32, cols: u32, bytes: &[u8]) -> Result<Weight, WeightError> {
        Self::upload_with_part_limit(dev, label, ty, rows, cols, bytes, dev.caps().part_limit())
    }

    /// [`Weight::upload`] with parts of at most `part_limit` bytes (tests force splits).
    pub fn upload_with_part_limit(
        dev: &Device,
        label: &str,
        ty: GgmlType,
        rows: u32,
        cols: u32,
        bytes: &[u8],
        part_limit: u64,
    ) -> Result<Weight, WeightError> {
        let w = Self::allocate(dev, label, ty, rows, cols, part_limit)?;
        if bytes.len() as u64 != w.src_row_bytes() * rows as u64 {
            let expected = w.src_row_bytes() * rows as u64;
            return Err(WeightError::SizeMismatch { ty, rows, cols, expected, got: bytes.len() as u64 });
        }
        w.write_rows(dev, 0, bytes)?;
        Ok(w)
    }

    /// The zeroed GPU parts of a `rows x cols` weight of `ty`, each at most `part_limit`
    /// bytes, to be filled by [`Weight::write_rows`] (the streaming loader writes the
    /// rows as they arrive). Parts hold an even number of rows, so that every write of an
    /// even number of rows keeps the split scale arrays 4-byte aligned.
    pub fn allocate(
        dev: &Device,
        label: &str,
        ty: GgmlType,
        rows: u32,
        cols: u32,
        part_limit: u64,
    ) -> Result<Weight, WeightError> {
        if let Device::Cpu(_) = dev {
            return Self::allocate_cpu(dev, label, ty, rows, cols);
        }
        let (format, planned) = plan_parts(ty, rows, cols, part_limit)?;
        let mut parts = Vec::with_capacity(planned.len());
        for p in planned {
            let buffer = dev.storage(&format!("{label}[{}..{}]", p.row_offset, p.row_offset + p.rows), p.bytes)?;
            let scale_base = if format.split_scale() { (p.body_bytes / 4) as u32 } else { 0 };
            parts.push(WeightPart { buffer, row_offset: p.row_offset, rows: p.rows, scale_base, bytes: p.bytes });
        }
        Ok(Weight { label: label.to_string(), ty, format, rows, cols, parts, cpu_packed: Rc::default() })
    }

    /// A weight in CPU memory: the GGUF bytes as they are (the CPU kernels read every format
    /// in its file layout), in one part.
    fn allocate_cpu(dev: &Device, label: &str, ty: GgmlType, rows: u32, cols: u32) -> Result<Weight, WeightError> {
        let (format, row_bytes) = cpu_shape(ty, rows, cols)?;
        let bytes = row_bytes * rows as u64;
        let buffer = dev.storage(label, bytes)?;
        let part = WeightPart { buffer, row_offset: 0, rows, scale_base: 0, bytes };
        Ok(Weight { label: label.to_string(), ty, format, rows, cols, parts: vec![part], cpu_packed: Rc::default() })
    }

    /// A CPU weight whose rows are used where they lie: `parts` (a name, a row count and the
    /// mapped GGUF bytes of those rows of `ty`), stacked in order.
    pub fn mapped(label: &str, ty: GgmlType, cols: u32, parts: Vec<(&str, u32, cpu::Mapped)>) -> Result<Weight, WeightError> {
        let rows = parts.iter().try_fold(0u32, |sum, p| sum.checked_add(p.1));
        let rows = rows.ok_or(WeightError::BadShape { ty, rows: u32::MAX, cols, block: ty.block_size() })?;
        let (format, row_bytes) = cpu_shape(ty, rows, cols)?;
        let mut row_offset = 0;
        let mut mapped = Vec::with_capacity(parts.len());
        for (name, n, bytes) in parts {
            let expected = row_bytes * n as u64;
            if bytes.bytes().len() as u64 != expected {
                return Err(WeightError::SizeMismatch { ty, rows: n, cols, expected, got: bytes.bytes().len() as u64 });
            }
            let buffer = Buffer::Cpu(cpu::Buffer::mapped(name, bytes));
            mapped.push(WeightPart { buffer, row_offset, rows: n, scale_base: 0, bytes: expected });
            row_offset += n;
        }
        Ok(Weight { label: label.to_string(), ty, format, rows, cols, parts: mapped, cpu_packed: Rc::default() })
    }

    /// Whether every part is mapped file memory (a CPU weight used where it lies).
    pub fn is_mapped(&self) -> bool {
        self.parts.iter().all(|p| matches!(&p.buffer, Buffer::Cpu(b) if b.is_mapped()))
    }

    /// GGUF bytes of one row.
    pub fn src_row_bytes(&self) -> u64 {
        (self.cols as usize / self.ty.block_size() * self.ty.type_size()) as u64
    }

    /// Repacks GGUF `bytes` holding whole rows from `row0` and queues their writes into the
    /// parts. Split types (Q4_0, Q8_0, Q6_K) with an odd number of blocks per row need an
    /// even `row0`, and an even row count unless the write ends the weight.
    pub fn write_rows(&self, dev: &Device, row0: u32, bytes: &[u8]) -> Result<(), WeightError> {
        let src_row = self.src_row_bytes() as usize;
        let n = (bytes.len() / src_row) as u32;
        let bad = || WeightError::BadWrite { label: self.label.clone(), row0, bytes: bytes.len() as u64 };
        if !bytes.len().is_multiple_of(src_row) || row0.checked_add(n).is_none_or(|end| end > self.rows) {
            return Err(bad());
        }
        let gpu = match dev {
            Device::Gpu(gpu) => gpu,
            // The file's bytes as they are.
            Device::Cpu(_) => {
                let part = self.parts[0].buffer.cpu()?;
                return Ok(part.write_bytes(row0 as u64 * src_row as u64, bytes).map_err(GpuError::from)?);
            }
        };
        let body = self.format.row_body_bytes(self.cols as usize) as u64;
        let scales = (self.cols as usize / self.format.block() * 2) as u64;
        for part in &self.parts {
            let (lo, hi) = (row0.max(part.row_offset), (row0 + n).min(part.row_offset + part.rows));
            if lo >= hi {
                continue;
            }
            let src = &bytes[(lo - row0) as usize * src_row..(hi - row0) as usize * src_row];
            let packed = repack(self.ty, self.cols as usize, src)?;
            let local = (lo - part.row_offset) as u64;
            if !self.format.split_scale() {
                gpu.write(part.buffer.gpu()?, local * body, &packed.bytes);
                continue;
            }
            let split = packed.scale_base as usize * 4;
            let (scale_at, ends_part) = (part.scale_base as u64 * 4 + local * scales, hi == part.row_offset + part.rows);
            if !scale_at.is_multiple_of(4) || !(ends_part || ((hi - lo) as u64 * scales).is_multiple_of(4)) {
                return Err(bad());
            }
            gpu.write(part.buffer.gpu()?, local * body, &packed.bytes[..split]);
            gpu.write(part.buffer.gpu()?, scale_at, &packed.bytes[split..]);
        }
        Ok(())
    }

    /// Bytes held in GPU buffers.
    pub fn bytes_on_gpu(&self) -> u64 {
        self.parts.iter().map(|p| p.bytes).sum()
    }
}
