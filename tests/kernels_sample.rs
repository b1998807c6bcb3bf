//! GPU token selection against the CPU: argmax, and the sampled frequencies against the
//! filtered distribution (chi-square) for temperature, top-k and top-p.

mod common;
use common::*;
use webvlm::gpu::{Gpu, Program};
use webvlm::kernels::sample::{filtered_distribution, Sampler, SamplerState};

struct Rig {
    gpu: Gpu,
    sampler: Sampler,
    prog: Program,
    out: wgpu::Buffer,
}

impl Rig {
    fn new(logits: &[f32], rows: usize, row: usize) -> Rig {
        let gpu = gpu();
        let vocab = logits.len() / rows;
        let sampler = Sampler::new(&gpu, vocab as u32).unwrap();
        let buf = upload(&gpu, logits);
        let out = gpu.storage("out", 16).unwrap();
        let mut prog = Program::new();
        sampler.record(&mut prog, &gpu, &buf, (row * vocab) as u32, &out, 2).unwrap();
        Rig { gpu, sampler, prog, out }
    }

    fn draw(&self, state: &SamplerState) -> u32 {
        self.sampler.set(&self.gpu, state);
        self.prog.run(&self.gpu).unwrap();
        let bytes = self.gpu.read_blocking(&self.out, 8, 4).unwrap();
        u32::from_le_bytes(bytes.try_into().unwrap())
    }
}

#[test]
fn argmax_matches_cpu_for_odd_vocab_sizes() {
    let mut rng = Rng::new(7);
    for vocab in [1usize, 5, 4095, 4097, 49_152, 131_072] {
        let logits = rng.vec(vocab * 2);
        let rig = Rig::new(&logits, 2, 1);
        let got = rig.draw(&SamplerState::greedy()) as usize;
        assert_eq!(got, argmax(&logits[vocab..]), "vocab {vocab}");
    }
}

#[test]
fn argmax_prefers_lowest_id_on_ties() {
    let mut logits = vec![0.0f32; 9000];
    logits[8000] = 3.0;
    logits[4500] = 3.0;
    logits[10] = -5.0;
    let rig = Rig::new(&logits, 1, 0);
    assert_eq!(rig.draw(&SamplerState::greedy()), 4500);
}

/// Chi-square critical value at p = 1e-4 (Wilson-Hilferty approximation).
fn chi2_critical(df: f64) -> f64 {
    let z = 3.719;
    let a = 2.0 / (9.0 * df);
    df * (1.0 - a + z * a.sqrt()).powi(3)
}

fn check_frequencies(rig: &Rig, logits: &[f32], state: SamplerState, draws: u32) {
    let want = filtered_distribution(logits, &state);
    let mut counts = vec![0u32; logits.len()];
    for d in 0..draws {
        let t = rig.draw(&SamplerState { draw: d, ..state }) as usize;
        assert!(want[t] > 0.0, "{state:?}: drew token {t} outside the kept set");
        counts[t] += 1;
    }
    // Pool cells with small expected counts so the chi-square approximation holds.
    let (mut chi2, mut df, mut pool_e, mut pool_o) = (0.0, 0.0, 0.0, 0.0);
    for (i, &p) in want.iter().enumerate().filter(|(_, &p)| p > 0.0) {
        let e = p * draws as f64;
        if e < 5.0 {
            pool_e += e;
            pool_o += counts[i] as f64;
            continue;
        }
        chi2 += (counts[i] as f64 - e).powi(2) / e;
        df += 1.0;
    }
    if pool_e > 0.0 {
        chi2 += (pool_o - pool_e).powi(2) / pool_e;
        df += 1.0;
    }
    df -= 1.0;
    if df >= 1.0 {
        assert!(chi2 < chi2_critical(df), "{state:?}: chi2 {chi2:.1} over {df} dof");
    }
}

#[test]
fn sampled_frequencies_match_the_filtered_distribution() {
    let mut rng = Rng::new(11);
    let logits: Vec<f32> = rng.vec(40).iter().map(|x| 3.0 * x).collect();
    let rig = Rig::new(&logits, 1, 0);
    let base = SamplerState { temperature: 1.0, top_p: 1.0, seed: 1234, ..Default::default() };
    check_frequencies(&rig, &logits, base, 3000);
    check_frequencies(&rig, &logits, SamplerState { temperature: 0.6, ..base }, 3000);
    check_frequencies(&rig, &logits, SamplerState { top_k: 5, ..base }, 2000);
    check_frequencies(&rig, &logits, SamplerState { top_p: 0.7, ..base }, 2000);
    check_frequencies(&rig, &logits, SamplerState { temperature: 1.5, top_k: 12, top_p: 0.9, ..base }, 2000);
}

#[test]
fn same_seed_same_draws_other_seed_differs() {
    let mut rng = Rng::new(3);
    let logits = rng.vec(1000);
    let rig = Rig::new(&logits, 1, 0);
    let st = SamplerState { temperature: 2.0, top_p: 1.0, seed: 99, ..Default::default() };
    let a: Vec<u32> = (0..20).map(|d| rig.draw(&SamplerState { draw: d, ..st })).collect();
    let b: Vec<u32> = (0..20).map(|d| rig.draw(&SamplerState { draw: d, ..st })).collect();
    let c: Vec<u32> = (0..20).map(|d| rig.draw(&SamplerState { draw: d, seed: 100, ..st })).collect();
    assert_eq!(a, b);
    assert_ne!(a, c);
}
