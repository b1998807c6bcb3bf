//! The CPU backend's benchmark at its real size (`webvlm::backend::cpu::bench`): the thread
//! pool's per-op overhead, this machine's copy bandwidth and matvec GB/s per weight format,
//! fast and exact, at 1 and 2 threads. Run: `cargo run --release --example cpu_bench`.

use webvlm::backend::cpu::bench::{report, BenchConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("{}", report(&BenchConfig::default())?);
    Ok(())
}
