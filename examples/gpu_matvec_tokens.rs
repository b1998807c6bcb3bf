//! The GPU matvec's time per token when N tokens go through the same weights (a batched
//! decode step's products), on the system adapter: SmolLM2-135M's three matrix shapes
//! (`ffn_up`/`ffn_gate` 1536x576, `ffn_down` 576x1536, `attn_output` 576x576) with random
//! weights, 30 dispatches of each in one submit, the median of 5 runs.
//! Run: `cargo run --release --example gpu_matvec_tokens` (about 10 s on lavapipe); the
//! environment's `TY` picks the format (`q4_1`, the default, `q8_0` or `q4_k`), `NS` the
//! token counts (default `1,2,4,8,16`) and `SHAPES=3b` Ministral 3 3B's matrices in place of
//! SmolLM2's (`ffn_up` 9216x3072, `ffn_down` 3072x9216, `attn_output` 3072x4096; minutes).

use std::time::Instant;

use webvlm::backend::gpu::{Gpu, GpuOptions};
use webvlm::backend::{Device, Program};
use webvlm::gguf::{random_blocks, GgmlType, SplitMix64};
use webvlm::kernels::{matvec, quant::Weight};

const SMOLLM2: [(u32, u32); 3] = [(1536, 576), (576, 1536), (576, 576)];
const MINISTRAL_3B: [(u32, u32); 3] = [(9216, 3072), (3072, 9216), (3072, 4096)];
const DISPATCHES: usize = 30;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let gpu = Gpu::new_blocking(GpuOptions::default())?;
    println!("{} ({:?} geometry)", gpu.caps.adapter, gpu.caps.geometry);
    let dev: Device = gpu.into();
    let ty = match std::env::var("TY").as_deref() {
        Ok("q8_0") => GgmlType::Q8_0,
        Ok("q4_k") => GgmlType::Q4_K,
        _ => GgmlType::Q4_1,
    };
    let shapes = if std::env::var("SHAPES").as_deref() == Ok("3b") { MINISTRAL_3B } else { SMOLLM2 };
    let counts = std::env::var("NS").unwrap_or_else(|_| "1,2,4,8,16".into());
    let mut rng = SplitMix64::new(3);
    for n in counts.split(',').map(str::parse::<u32>) {
        let n = n?;
        let mut line = String::new();
        let mut total = 0.0;
        for (rows, cols) in shapes {
            let blocks = rows as usize * cols as usize / ty.block_size();
            let w = Weight::upload(&dev, "w", ty, rows, cols, &random_blocks(ty, blocks, 7))?;
            let x: Vec<f32> = (0..cols * n).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let x = dev.storage_with("x", bytemuck::cast_slice(&x))?;
            let y = dev.storage("y", (rows * n) as u64 * 4)?;
            let mut prog = Program::new();
            for _ in 0..DISPATCHES {
                matvec::record(&mut prog, &dev, &w, &x, &y, n)?;
            }
            run(&dev, &prog)?;
            let mut times: Vec<f64> = (0..5).map(|_| run(&dev, &prog)).collect::<Result<_, _>>()?;
            times.sort_by(f64::total_cmp);
            let seconds = times[2] / DISPATCHES as f64;
            total += seconds;
            line += &format!("  {rows}x{cols} {:.3} ms", seconds * 1e3);
        }
        println!("{ty:?} N = {n:2}: {:.3} ms, {:.3} ms per token |{line}", total * 1e3, total * 1e3 / n as f64);
    }
    Ok(())
}

/// Seconds of one submit of `prog`, waited for.
fn run(dev: &Device, prog: &Program) -> Result<f64, Box<dyn std::error::Error>> {
    let (Device::Gpu(gpu), Some(p)) = (dev, prog.as_gpu()) else { return Err("not a GPU program".into()) };
    let start = Instant::now();
    let mut encoder = gpu.device.create_command_encoder(&Default::default());
    p.encode(&mut encoder);
    gpu.queue.submit([encoder.finish()]);
    gpu.device.poll(wgpu::PollType::wait_indefinitely())?;
    dev.check_errors()?;
    Ok(start.elapsed().as_secs_f64())
}
