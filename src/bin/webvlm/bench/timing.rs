//! Wall-clock timing of recorded programs: warm-up runs (the first run compiles nothing, the
//! pipelines exist already, but caches and lazily allocated driver memory settle), then
//! repetitions of N back-to-back submits followed by one wait; the median repetition counts.

use std::time::Instant;

use webvlm::backend::{Device, Program};

/// How long to measure.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Target wall time of one repetition, seconds (sets N).
    pub rep_seconds: f64,
    /// Repetitions; the median is reported.
    pub reps: usize,
    /// Most submits in one repetition.
    pub max_iters: usize,
}

impl Budget {
    pub fn new(quick: bool) -> Budget {
        if quick {
            Budget { rep_seconds: 0.02, reps: 2, max_iters: 20 }
        } else {
            Budget { rep_seconds: 0.3, reps: 5, max_iters: 1000 }
        }
    }
}

/// Seconds per run of a program: median and best repetition.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub median: f64,
    pub min: f64,
    /// Submits per repetition.
    pub iters: usize,
    pub reps: usize,
}

/// Blocks until every submitted command buffer has finished (the CPU runs each program to
/// its end).
pub fn wait(dev: &Device) -> Result<(), Box<dyn std::error::Error>> {
    if let Device::Gpu(gpu) = dev {
        gpu.device.poll(wgpu::PollType::wait_indefinitely())?;
    }
    dev.check_errors()?;
    Ok(())
}

/// Runs `prog` `iters` times (on the GPU one command buffer each, submitted) and waits;
/// returns the seconds.
pub fn run_n(dev: &Device, prog: &Program, iters: usize) -> Result<f64, Box<dyn std::error::Error>> {
    let start = Instant::now();
    for _ in 0..iters {
        match (dev, prog.as_gpu()) {
            (Device::Gpu(gpu), Some(p)) => {
                let mut encoder = gpu.device.create_command_encoder(&Default::default());
                p.encode(&mut encoder);
                gpu.queue.submit([encoder.finish()]);
            }
            _ => prog.run(dev)?,
        }
    }
    wait(dev)?;
    Ok(start.elapsed().as_secs_f64())
}

/// Times `prog`: one warm-up run, then `budget.reps` repetitions of N submits and a wait.
pub fn time_program(gpu: &Device, prog: &Program, budget: Budget) -> Result<Timing, Box<dyn std::error::Error>> {
    let first = run_n(gpu, prog, 1)?;
    let iters = ((budget.rep_seconds / first.max(1e-6)).round() as usize).clamp(1, budget.max_iters);
    // A second warm-up when a run is short, so that clocks and caches settle.
    if first < budget.rep_seconds {
        run_n(gpu, prog, iters.min(8))?;
    }
    let mut samples = Vec::with_capacity(budget.reps);
    for _ in 0..budget.reps.max(1) {
        samples.push(run_n(gpu, prog, iters)? / iters as f64);
    }
    Ok(Timing { median: median(&mut samples), min: samples[0], iters, reps: samples.len() })
}

/// The median of `v` (sorted in place; `v[0]` is then the minimum). `v` must not be empty.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// A figure at `full` blocks from the line through two measured depths `(blocks, value)`:
/// the per-block cost is the slope, the rest the intercept. A line that gives a non-positive
/// or non-finite figure (the timing noise exceeds the per-block cost, or a negative slope
/// reaches below zero) is an error naming both measurements, never a printed figure.
pub fn scaled_to(what: &str, full: u32, (n0, y0): (u32, f64), (n1, y1): (u32, f64)) -> Result<f64, String> {
    let slope = (y1 - y0) / (f64::from(n1) - f64::from(n0));
    let y = y1 + slope * (f64::from(full) - f64::from(n1));
    match y.is_finite() && y > 0.0 {
        true => Ok(y),
        false => Err(format!(
            "{what} scaled to {full} blocks is {y:.3e} from {y0:.3e} at {n0} blocks and {y1:.3e} at {n1}: the timing \
             noise exceeds the per-block cost (time more blocks, or more repetitions)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::scaled_to;

    #[test]
    fn a_scaled_figure_is_the_line_through_both_depths_and_never_negative() {
        assert_eq!(scaled_to("t", 40, (10, 2.0), (20, 3.0)), Ok(5.0));
        // Noise made the deeper run faster: the line falls below zero at the full depth.
        let err = scaled_to("prefill seconds", 40, (2, 1.0), (4, 0.5)).unwrap_err();
        assert!(err.contains("prefill seconds") && err.contains("noise"), "{err}");
        assert!(scaled_to("t", 40, (4, 1.0), (4, 1.0)).is_err(), "two runs at one depth give no line");
    }
}
