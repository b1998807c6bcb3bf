//! A short fuzzing run of every target of `webvlm::fuzz` on the stable toolchain, for CI: each
//! target's seeds (`fuzz/seeds/TARGET/` and the fixtures listed in `fuzz/seeds/TARGET.fixtures`)
//! and a few hundred mutants of them (byte flips, interesting values, insertions, deletions,
//! truncations, splices), drawn from a fixed seed so that a failure reproduces. The long
//! coverage-guided runs are `scripts/fuzz.sh` (libFuzzer); a crash they find becomes a seed
//! here. Prints the executions per target.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use webvlm::fuzz::TARGETS;
use webvlm::gguf::SplitMix64;

/// Mutants per target, and the time after which a target stops early.
const MUTANTS: usize = 10_000;
const TIME_CAP: Duration = Duration::from_secs(20);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The seeds of `target`: its folder's files, then the fixtures its list names.
fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let root = repo();
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(root.join("fuzz/seeds").join(target)) {
        Ok(dir) => dir.map(|e| e.expect("seed entry").path()).collect(),
        Err(_) => Vec::new(),
    };
    paths.sort();
    if let Ok(list) = std::fs::read_to_string(root.join(format!("fuzz/seeds/{target}.fixtures"))) {
        paths.extend(list.lines().filter(|l| !l.trim().is_empty()).map(|l| root.join(l.trim())));
    }
    paths.iter().map(|p| (display(p), std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))).collect()
}

fn display(p: &Path) -> String {
    p.strip_prefix(repo()).unwrap_or(p).display().to_string()
}

/// One to four random edits of `input` (with `other`, another seed, for splices).
fn mutate(rng: &mut SplitMix64, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    let mut below = |n: usize| if n == 0 { 0 } else { (rng.next_u64() % n as u64) as usize };
    for _ in 0..1 + below(4) {
        let at = below(out.len() + 1);
        match below(7) {
            0 if at < out.len() => out[at] ^= 1 << below(8),
            1 if at < out.len() => out[at] = [0x00, 0xFF, 0x7F, 0x80, 0x01, 0x20, b'{', b'"'][below(8)],
            2 => {
                let n = 1 + below(8);
                out.splice(at..at, (0..n).map(|_| below(256) as u8));
            }
            3 => {
                let end = (at + 1 + below(64)).min(out.len());
                out.drain(at..end);
            }
            4 => out.truncate(at),
            5 if !other.is_empty() => {
                let from = below(other.len());
                let end = (from + 1 + below(256)).min(other.len());
                out.splice(at..at, other[from..end].iter().copied());
            }
            // A 4- or 8-byte little-endian field set to a large count (GGUF / safetensors lengths).
            _ if at + 8 <= out.len() => {
                let value = [u64::MAX, 1 << 32, 1 << 40, u32::MAX as u64, 0][below(5)];
                let width = if below(2) == 0 { 4 } else { 8 };
                out[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
            }
            _ => {}
        }
    }
    out
}

#[test]
fn every_fuzz_target_survives_its_seeds_and_their_mutants() {
    let mut rng = SplitMix64::new(0x5eed);
    for &(name, target) in TARGETS {
        let seeds = seeds(name);
        assert!(!seeds.is_empty(), "{name}: no seeds");
        let start = Instant::now();
        for (path, bytes) in &seeds {
            eprintln!("{name}: seed {path}");
            target(bytes);
        }
        let mut runs = seeds.len();
        for i in 0..MUTANTS {
            if start.elapsed() > TIME_CAP {
                break;
            }
            let (_, input) = &seeds[i % seeds.len()];
            let (_, other) = &seeds[(i / seeds.len() + 1) % seeds.len()];
            let mutant = mutate(&mut rng, input, other);
            if std::panic::catch_unwind(|| target(&mutant)).is_err() {
                let path = std::env::temp_dir().join(format!("webvlm-fuzz-smoke-{name}-{i}.bin"));
                std::fs::write(&path, &mutant).expect("write the failing input");
                panic!(
                    "{name}: mutant {i} panicked; input saved to {} (run it with `cargo +nightly fuzz run {name} FILE` in fuzz/)",
                    path.display()
                );
            }
            runs += 1;
        }
        println!("fuzz smoke {name}: {runs} executions in {:.1} s", start.elapsed().as_secs_f64());
    }
}
