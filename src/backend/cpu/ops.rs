//! What the CPU ops other than matvec ([`super::norm`], [`super::elementwise`], [`super::rope`],
//! [`super::attention`]) share: their [`ShapeError`] and the split of an output slice into
//! disjoint chunks, one pool task each (as ggml-cpu ops split rows over `ith`/`nth`).

use std::sync::{Mutex, PoisonError};

use super::pool::ThreadPool;

/// Slices or parameters that do not fit an op's shape.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("{op}: {what} has {got} elements, expected {want}")]
    Len { op: &'static str, what: &'static str, got: usize, want: usize },
    #[error("{op}: {msg}")]
    Invalid { op: &'static str, msg: String },
}

/// `Err(Len)` unless `got == want`.
pub(crate) fn check_len(op: &'static str, what: &'static str, got: usize, want: usize) -> Result<(), ShapeError> {
    if got == want {
        Ok(())
    } else {
        Err(ShapeError::Len { op, what, got, want })
    }
}

/// `Err(Len)` unless `got >= want`.
pub(crate) fn check_min_len(op: &'static str, what: &'static str, got: usize, want: usize) -> Result<(), ShapeError> {
    if got >= want {
        Ok(())
    } else {
        Err(ShapeError::Len { op, what, got, want })
    }
}

pub(crate) fn invalid(op: &'static str, msg: String) -> ShapeError {
    ShapeError::Invalid { op, msg }
}

/// Elements per task below which splitting costs more than it saves.
const MIN_TASK_ELEMS: usize = 8192;

/// Rows of `dim` elements per task for `rows` rows: about four tasks per thread (so that uneven
/// threads balance), but at least [`MIN_TASK_ELEMS`] elements each.
pub(crate) fn rows_per_task(pool: &ThreadPool, rows: usize, dim: usize) -> usize {
    let by_tasks = rows.div_ceil(4 * pool.threads());
    let by_size = MIN_TASK_ELEMS.div_ceil(dim.max(1));
    by_tasks.max(by_size).clamp(1, rows.max(1))
}

/// Runs `f(i, chunk)` on the pool for each `chunk` (index `i`) of `y.chunks_mut(chunk)`.
pub(crate) fn for_each_chunk<F>(pool: &ThreadPool, y: &mut [f32], chunk: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync,
{
    // One uncontended lock per task hands each task its own `&mut` chunk without `unsafe`.
    let chunks: Vec<Mutex<&mut [f32]>> = y.chunks_mut(chunk.max(1)).map(Mutex::new).collect();
    pool.run(chunks.len(), &|i| {
        let mut c = chunks[i].lock().unwrap_or_else(PoisonError::into_inner);
        f(i, &mut c)
    });
}

/// Hints the CPU to bring `x`'s cache line into L1 (where the instruction exists).
pub(crate) fn prefetch<T>(x: &T) {
    // SAFETY: a prefetch of a valid address (it cannot fault anyway).
    #[cfg(target_arch = "x86_64")]
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((x as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}
