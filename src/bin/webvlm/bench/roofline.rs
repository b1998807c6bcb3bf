//! Kernel figures: the copy kernel (attainable read+write GB/s), a read-only reduction, the
//! pure-FMA kernel (peak GFLOP/s), the cost of an empty-ish dispatch, and the matvec kernels
//! at Ministral 3 3B shapes with their fraction of the copy figure. On the CPU backend the
//! same four figures come from `backend::cpu::bench` on the device's own thread pool (the
//! dispatch is an empty op on every thread).

use serde_json::{json, Value};

use webvlm::backend::{cpu, Device, Program};
use webvlm::gguf::{random_blocks, GgmlType, SplitMix64};
use webvlm::kernels::{bench as k, matvec, quant::Weight};

use super::timing::{time_program, Budget, Timing};
use super::Out;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The adapter's attainable figures, the denominators of every fraction.
#[derive(Clone, Copy, Debug)]
pub struct Roofline {
    pub copy_gbps: f64,
    pub read_gbps: f64,
    pub fma_gflops: f64,
    pub dispatch_us: f64,
}

/// Weight shapes `[rows][cols]` of Ministral 3 3B: FFN up/gate, FFN down, LM head.
pub const MINISTRAL_SHAPES: [(&str, u32, u32); 3] =
    [("ffn_up 9216x3072", 9216, 3072), ("ffn_down 3072x9216", 3072, 9216), ("lm_head 131072x3072", 131072, 3072)];
/// `--quick` shapes: the same aspect ratios, a few MB each.
const QUICK_SHAPES: [(&str, u32, u32); 3] =
    [("quick 1024x512", 1024, 512), ("quick 512x1024", 512, 1024), ("quick 4096x512", 4096, 512)];

/// In-cache matvec shape `[rows][cols]`: every format's weight (at most 6 MiB, F32) stays in
/// the CPU's caches across back-to-back runs (2 MiB L2 + 32 MiB L3 on the test machine), with
/// enough row groups for every core. `--quick`: a smaller one.
const CACHED_SHAPE: (u32, u32) = (512, 3072);
const QUICK_CACHED_SHAPE: (u32, u32) = (256, 512);
/// Dispatches of the in-cache matvec per submit: amortizes the submit, not the dispatch.
const CACHED_DISPATCHES: usize = 16;

/// The matvec formats benchmarked: the four, SmolLM2's Q4_1, and F32 (no decoding:
/// separates the cost of dequantization from the kernel's structure; not at the LM head shape).
const TYPES: [GgmlType; 6] = [GgmlType::Q4_K, GgmlType::Q6_K, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::F32];

pub fn roofline(dev: &Device, out: &Out, quick: bool, budget: Budget) -> Res<Roofline> {
    match dev {
        Device::Gpu(_) => gpu_roofline(dev, out, quick, budget),
        Device::Cpu(cpu) => cpu_roofline(cpu, out, quick),
    }
}

/// The CPU's figures, measured on the pool the model runs on (buffers larger than the
/// caches unless `quick`).
fn cpu_roofline(dev: &cpu::Device, out: &Out, quick: bool) -> Res<Roofline> {
    use cpu::bench::{copy_bandwidth, fma_peak, pool_overhead, read_bandwidth};
    let (bytes, min_time) = if quick { (16 << 20, 0.01) } else { (256 << 20, 0.3) };
    let min_time = std::time::Duration::from_secs_f64(min_time);
    let pool = &dev.pool;
    let copy_gbps = 2.0 * copy_bandwidth(pool, bytes, min_time)?;
    out.emit(json!({ "kind": "copy", "bytes_read": bytes, "bytes_written": bytes, "gbps": copy_gbps }));
    out.note(&format!("copy              {copy_gbps:8.2} GB/s (read+write of {} MiB)", bytes >> 20));
    let read_gbps = read_bandwidth(pool, bytes, min_time)?;
    out.emit(json!({ "kind": "read", "bytes_read": bytes, "gbps": read_gbps, "fraction_of_copy": read_gbps / copy_gbps }));
    out.note(&format!("read-only         {read_gbps:8.2} GB/s ({:.2} of copy)", read_gbps / copy_gbps));
    let fma_gflops = fma_peak(pool, min_time)?;
    out.emit(json!({ "kind": "fma", "gflops": fma_gflops, "simd": cpu::simd::level().to_string() }));
    out.note(&format!("FMA peak          {fma_gflops:8.2} GFLOP/s ({})", cpu::simd::level()));
    let (dispatch_us, idle_us) = pool_overhead(pool, if quick { 100 } else { 20_000 });
    out.emit(json!({
        "kind": "dispatch_overhead", "threads": pool.threads(), "us_per_dispatch": dispatch_us, "us_after_idle": idle_us,
    }));
    out.note(&format!(
        "empty op          {dispatch_us:8.2} us on {} threads back to back, {idle_us:.1} us after 1 ms idle",
        pool.threads()
    ));
    Ok(Roofline { copy_gbps, read_gbps, fma_gflops, dispatch_us })
}

fn gpu_roofline(dev: &Device, out: &Out, quick: bool, budget: Budget) -> Res<Roofline> {
    let limit = dev.caps().max_storage_binding.min(dev.caps().max_buffer).min(256 << 20);
    let bytes = if quick { 16 << 20 } else { limit } / 16 * 16;
    let n_vec4 = bytes / 16;
    let src = dev.storage("bench src", bytes)?;
    let dst = dev.storage("bench dst", bytes)?;
    let mut fill = vec![0u8; bytes as usize];
    SplitMix64::new(7).fill_bytes(&mut fill);
    dev.write(&src, 0, &fill)?;
    drop(fill);

    let mut prog = Program::new();
    k::record_copy(&mut prog, dev, &src, &dst, n_vec4)?;
    let t = time_program(dev, &prog, budget)?;
    let copy_gbps = 2.0 * bytes as f64 / t.median / 1e9;
    out.emit(json!({
        "kind": "copy", "bytes_read": bytes, "bytes_written": bytes, "seconds": t.median,
        "gbps": copy_gbps, "gbps_best": 2.0 * bytes as f64 / t.min / 1e9, "iters": t.iters, "reps": t.reps,
    }));
    out.note(&format!("copy kernel       {:8.2} GB/s (read+write of {} MiB)", copy_gbps, bytes >> 20));

    let mut prog = Program::new();
    k::record_read(&mut prog, dev, &src, &dst, n_vec4)?;
    let t = time_program(dev, &prog, budget)?;
    let read_gbps = bytes as f64 / t.median / 1e9;
    out.emit(json!({
        "kind": "read", "bytes_read": bytes, "seconds": t.median, "gbps": read_gbps,
        "fraction_of_copy": read_gbps / copy_gbps, "iters": t.iters, "reps": t.reps,
    }));
    out.note(&format!("read-only kernel  {:8.2} GB/s ({:.2} of copy)", read_gbps, read_gbps / copy_gbps));

    let invocations = if quick { 1 << 14 } else { 1 << 18 };
    let iters = if quick { 256 } else { 2048 };
    let mut prog = Program::new();
    let flops = k::record_fma(&mut prog, dev, &src, &dst, invocations, iters)?;
    let t = time_program(dev, &prog, budget)?;
    let fma_gflops = flops as f64 / t.median / 1e9;
    out.emit(json!({
        "kind": "fma", "invocations": invocations, "iterations": iters, "chains": k::FMA_CHAINS,
        "flops": flops, "seconds": t.median, "gflops": fma_gflops, "iters": t.iters, "reps": t.reps,
    }));
    out.note(&format!("pure-FMA kernel   {:8.2} GFLOP/s", fma_gflops));

    // Dispatch overhead: many one-workgroup copies in one compute pass.
    let n_disp = 256;
    let mut prog = Program::new();
    for _ in 0..n_disp {
        k::record_copy(&mut prog, dev, &src, &dst, 256)?;
    }
    let t = time_program(dev, &prog, budget)?;
    let dispatch_us = t.median / n_disp as f64 * 1e6;
    out.emit(json!({
        "kind": "dispatch_overhead", "dispatches": n_disp, "bytes_per_dispatch": 256 * 32,
        "seconds": t.median, "us_per_dispatch": dispatch_us,
    }));
    out.note(&format!("tiny dispatch     {:8.1} us each ({n_disp} in one pass)", dispatch_us));
    Ok(Roofline { copy_gbps, read_gbps, fma_gflops, dispatch_us })
}

/// Seconds of one `y = W x` (one token) for a random `[rows][cols]` weight of type `ty`,
/// `dispatches` back-to-back in one submit; the weight's bytes on the GPU and the dispatches.
fn time_matvec(
    dev: &Device,
    ty: GgmlType,
    name: &str,
    rows: u32,
    cols: u32,
    dispatches: usize,
    budget: Budget,
) -> Res<(f64, u64, usize, Timing)> {
    let n_blocks = rows as usize * cols as usize / ty.block_size();
    let w = Weight::upload(dev, name, ty, rows, cols, &random_blocks(ty, n_blocks, rows as u64 ^ cols as u64))?;
    let mut rng = SplitMix64::new(3);
    let x: Vec<f32> = (0..cols).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let xb = dev.storage_with("bench x", bytemuck::cast_slice(&x))?;
    let yb = dev.storage("bench y", rows as u64 * 4)?;
    let mut prog = Program::new();
    for _ in 0..dispatches {
        matvec::record(&mut prog, dev, &w, &xb, &yb, 1)?;
    }
    let t = time_program(dev, &prog, budget)?;
    Ok((t.median / dispatches as f64, w.bytes_on_gpu(), prog.n_dispatches() / dispatches, t))
}

/// Times `y = W x` for one token for every type at every shape, and once per type on a
/// weight that stays in the CPU's caches (`cached_*` fields on each of the type's lines): if
/// the in-cache GB/s is about the full-size GB/s, the kernel is bound by its instructions
/// (dequantization, loads), not by memory bandwidth.
pub fn matvecs(dev: &Device, out: &Out, roof: &Roofline, quick: bool, budget: Budget) -> Res<Vec<Value>> {
    let shapes = if quick { QUICK_SHAPES } else { MINISTRAL_SHAPES };
    let (c_rows, c_cols) = if quick { QUICK_CACHED_SHAPE } else { CACHED_SHAPE };
    let mut rows_out = Vec::new();
    for ty in TYPES {
        let (c_secs, c_weight, _, _) = time_matvec(dev, ty, "in-cache", c_rows, c_cols, CACHED_DISPATCHES, budget)?;
        let c_bytes = c_weight + 4 * c_cols as u64 + 4 * c_rows as u64;
        let c_gbps = c_bytes as f64 / c_secs / 1e9;
        let c_gflops = 2.0 * c_rows as f64 * c_cols as f64 / c_secs / 1e9;
        out.note(&format!(
            "matvec {:<5} {:<20} {:8.3} ms {:7.2} GB/s = {:4.0}% of copy  {:7.2} GFLOP/s = {:4.0}% of FMA peak",
            format!("{ty:?}"),
            format!("in-cache {c_rows}x{c_cols}"),
            c_secs * 1e3,
            c_gbps,
            100.0 * c_gbps / roof.copy_gbps,
            c_gflops,
            100.0 * c_gflops / roof.fma_gflops
        ));
        for (name, rows, cols) in shapes {
            if ty == GgmlType::F32 && name.starts_with("lm_head") {
                continue;
            }
            let (secs, weight_bytes, dispatches, t) = time_matvec(dev, ty, name, rows, cols, 1, budget)?;
            let bytes = weight_bytes + 4 * cols as u64 + 4 * rows as u64;
            let gbps = bytes as f64 / secs / 1e9;
            let gflops = 2.0 * rows as f64 * cols as f64 / secs / 1e9;
            let v = json!({
                "kind": "matvec", "type": format!("{ty:?}"), "shape": name, "rows": rows, "cols": cols,
                "weight_bytes": weight_bytes, "bytes": bytes, "dispatches": dispatches,
                "seconds": secs, "gbps": gbps, "fraction_of_copy": gbps / roof.copy_gbps,
                "fraction_of_read": gbps / roof.read_gbps, "gflops": gflops,
                "fraction_of_fma": gflops / roof.fma_gflops,
                "cached_rows": c_rows, "cached_cols": c_cols, "cached_weight_bytes": c_weight,
                "cached_seconds": c_secs, "cached_gbps": c_gbps, "cached_fraction_of_copy": c_gbps / roof.copy_gbps,
                "cached_gflops": c_gflops, "cached_fraction_of_fma": c_gflops / roof.fma_gflops,
                "cached_speedup": c_gbps / gbps, "iters": t.iters, "reps": t.reps,
            });
            out.note(&format!(
                "matvec {:<5} {:<20} {:8.3} ms {:7.2} GB/s = {:4.0}% of copy  {:7.2} GFLOP/s = {:4.0}% of FMA peak  (in cache: {:.2}x)",
                format!("{ty:?}"),
                name,
                secs * 1e3,
                gbps,
                100.0 * gbps / roof.copy_gbps,
                gflops,
                100.0 * gflops / roof.fma_gflops,
                c_gbps / gbps
            ));
            out.emit(v.clone());
            rows_out.push(v);
        }
    }
    Ok(rows_out)
}
