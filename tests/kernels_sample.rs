//! GPU token selection against the CPU: argmax, the top-k / top-p cut against the filtered
//! distribution's kept set, and the sampled frequencies against the filtered distribution
//! (chi-square) for temperature, top-k and top-p, at small and at Ministral's vocabulary.

use crate::common;
use common::chi_square::{chi2_critical, chi_square};
use common::*;
use webvlm::backend::{Buffer, Device, Program};
use webvlm::kernels::sample::{filtered_distribution, Sampler, SamplerState};

struct Rig {
    gpu: Device,
    sampler: Sampler,
    prog: Program,
    out: Buffer,
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
        self.sampler.set(&self.gpu, state).unwrap();
        self.prog.run(&self.gpu).unwrap();
        let bytes = self.gpu.read_blocking(&self.out, 8, 4).unwrap();
        u32::from_le_bytes(bytes.try_into().unwrap())
    }

    /// The smallest logit the last draw kept (`None`: all).
    fn cut(&self) -> Option<f32> {
        pollster::block_on(self.sampler.read_cut(&self.gpu)).unwrap()
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

fn check_frequencies(rig: &Rig, logits: &[f32], state: SamplerState, draws: u32) {
    let want = filtered_distribution(logits, &state);
    let mut counts = vec![0u32; logits.len()];
    for d in 0..draws {
        let t = rig.draw(&SamplerState { draw: d, ..state }) as usize;
        assert!(want[t] > 0.0, "{state:?}: drew token {t} outside the kept set");
        counts[t] += 1;
    }
    let (chi2, df) = chi_square(&counts, &want);
    if df >= 1.0 {
        assert!(chi2 < chi2_critical(df, 1e-4), "{state:?}: chi2 {chi2:.1} over {df} dof");
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

/// Language-model-like logits: a broad body (sd 1.5) and 40 candidate tokens raised by 8 to 16.
fn lm_like_logits(rng: &mut Rng, vocab: usize) -> Vec<f32> {
    let mut l: Vec<f32> = (0..vocab).map(|_| 1.5 * (rng.uniform() + rng.uniform() + rng.uniform())).collect();
    for _ in 0..40 {
        l[rng.below(vocab as u64) as usize] += 12.0 + 4.0 * rng.uniform();
    }
    l
}

/// How close a draw is to a place where float rounding alone can change the pick: the
/// smallest distance (in probability) from `u` to a boundary of the id-order CDF, or from
/// `top_p` to the cumulative mass of a prefix of the sorted distribution (the top-p cut).
fn boundary_distance(logits: &[f32], st: &SamplerState, u: f32) -> f64 {
    let mut best = f64::INFINITY;
    let mut cdf = 0.0;
    for &pi in filtered_distribution(logits, st).iter().filter(|&&pi| pi > 0.0) {
        cdf += pi;
        best = best.min((cdf - u as f64).abs());
    }
    if st.top_p < 1.0 {
        let full = filtered_distribution(logits, &SamplerState { top_p: 1.0, ..*st });
        let mut sorted: Vec<f64> = full.into_iter().filter(|&q| q > 0.0).collect();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let mut mass = 0.0;
        for q in sorted {
            mass += q;
            best = best.min((mass - st.top_p as f64).abs());
        }
    }
    best
}

/// The CPU sampler (`webvlm::sampling`, as the engine uses it for min-p, penalties and bias)
/// picks the GPU's id for plain temperature / top-k / top-p settings: 200 (logits, settings,
/// seed, draw) cases on Ministral's 131072-token vocabulary. A mismatch is tolerated only
/// within float rounding of a boundary, and at most 2 of them.
#[test]
fn cpu_sampler_picks_the_gpu_token() {
    use webvlm::sampling::{fold_seed, rand01, Sampler, SamplingParams};
    let vocab = 131_072;
    let mut rng = Rng::new(2024);
    let mut mismatches = Vec::new();
    for row in 0..4 {
        let logits = lm_like_logits(&mut rng, vocab);
        let rig = Rig::new(&logits, 1, 0);
        for case in 0..50 {
            let params = SamplingParams {
                temperature: [0.6, 0.8, 1.0, 1.2, 0.3][case % 5],
                top_k: [0, 50, 0, 1000][case % 4],
                top_p: [0.9, 1.0, 0.95, 0.8, 1.0, 0.5][case % 6],
                seed: Some(rng.next_u64()),
                ..Default::default()
            };
            let draw = rng.below(500) as u32;
            let st = SamplerState {
                temperature: params.temperature,
                top_k: params.top_k,
                top_p: params.top_p,
                seed: fold_seed(params.seed.unwrap()),
                draw,
                ..Default::default()
            };
            let mut cpu = Sampler::new(params, &[]);
            (0..draw).for_each(|_| cpu.accept(0));
            let (want, got) = (rig.draw(&st), cpu.sample(&logits, None));
            if want != got {
                mismatches.push((row, case, want, got, boundary_distance(&logits, &st, rand01(st.seed, draw))));
            }
        }
    }
    // The shader's f32 sums run ~1000 roundings deep (512 ids per thread, a 256-wide prefix
    // sum, the owner's rescan): ~sqrt(1000) * 2^-24 ≈ 2e-6 of the total typically, 6e-5 at worst.
    eprintln!("CPU/GPU mismatches (row, case, gpu id, cpu id, boundary distance): {mismatches:?}");
    assert!(mismatches.len() <= 2 && mismatches.iter().all(|m| m.4 < 1e-5), "{mismatches:?}");
}

/// Argmax skips NaN and -inf (even a NaN whose bits would sort above every float), keeps the
/// lowest id on ties across workgroups, and gives id 0 when no logit is live.
#[test]
fn argmax_skips_dead_logits_and_breaks_ties_low() {
    let vocab = 131_072;
    let mut logits = vec![-1.0f32; vocab];
    logits[3] = f32::NAN;
    logits[4] = f32::from_bits(0x7fff_ffff);
    logits[70_000] = 5.0;
    logits[130_000] = 5.0;
    logits[9] = f32::NEG_INFINITY;
    let rig = Rig::new(&logits, 1, 0);
    assert_eq!(rig.draw(&SamplerState::greedy()), 70_000);
    let t1 = SamplerState { temperature: 1.0, top_p: 1.0, top_k: 1, ..Default::default() };
    // top_k = 1 keeps the two tied maxima only; temperature sampling never draws a dead logit.
    for d in 0..8 {
        let got = rig.draw(&SamplerState { draw: d, ..t1 });
        assert!(got == 70_000 || got == 130_000, "drew {got}");
    }
    assert_eq!(rig.cut(), Some(5.0));

    let dead: Vec<f32> = (0..5000).map(|i| if i % 2 == 0 { f32::NAN } else { f32::NEG_INFINITY }).collect();
    let rig = Rig::new(&dead, 1, 0);
    assert_eq!(rig.draw(&SamplerState::greedy()), 0);
    assert_eq!(rig.draw(&SamplerState { top_p: 0.5, top_k: 3, ..t1 }), 0);
    assert_eq!(filtered_distribution(&dead, &t1)[0], 1.0);

    let flat = vec![0.25f32; 5000];
    let rig = Rig::new(&flat, 1, 0);
    assert_eq!(rig.draw(&SamplerState::greedy()), 0);
}

/// Asserts that the GPU's cut keeps exactly the CPU reference's kept set: the live tokens at
/// or above it (`None`: every live token).
fn assert_same_kept_set(logits: &[f32], st: &SamplerState, cut: Option<f32>) {
    let p = filtered_distribution(logits, st);
    let kept = |l: f32| l > f32::NEG_INFINITY && cut.is_none_or(|c| l >= c);
    let wrong: Vec<usize> = (0..logits.len()).filter(|&i| (p[i] > 0.0) != kept(logits[i])).collect();
    assert!(
        wrong.is_empty(),
        "{st:?}: cut {cut:?} disagrees with the CPU on {} ids, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
}

/// A top-p halfway between two consecutive cumulative masses of the top-k survivors, at
/// about `frac` of the mass: far (in units of one token's mass) from any rounding-sensitive
/// boundary, so the GPU's fixed-point and the CPU's f64 sums must pick the same cut.
fn mid_p(logits: &[f32], st: &SamplerState, frac: f64) -> f32 {
    let mut q: Vec<f64> =
        filtered_distribution(logits, &SamplerState { top_p: 1.0, ..*st }).into_iter().filter(|&q| q > 0.0).collect();
    q.sort_by(|a, b| b.total_cmp(a));
    let mut cum = 0.0;
    for w in q.windows(2) {
        if cum + w[0] >= frac {
            return (cum + w[0] + 0.5 * w[1]) as f32;
        }
        cum += w[0];
    }
    0.5
}

/// Ministral-sized rows (131072 logits, 128 workgroups per pass) whose cuts sit where the
/// radix select is easiest to get wrong: the cut key is the lowest of its bin at every digit
/// (2.0 = key 0xc0000000) with the next-lower float right below it, top-k inside a tie, and
/// top-p inside a long flat tail. The GPU must keep exactly the CPU reference's set.
#[test]
fn large_vocab_cuts_match_the_cpu_reference() {
    let vocab = 131_072;
    let mut rng = Rng::new(5);
    let below_two = f32::from_bits(2.0f32.to_bits() - 1);
    // A body in [-4, 0), 2.0s, floats just below 2.0, and a few larger logits.
    let mut l: Vec<f32> = (0..vocab).map(|_| -4.0 * rng.uniform()).collect();
    for (i, v) in [(10, 6.0), (20, 3.0), (65_535, 3.0), (30, 2.0), (1024, 2.0), (50_000, 2.0), (131_071, 2.0)] {
        l[i] = v;
    }
    for i in [1023, 65_536, 100_000] {
        l[i] = below_two;
    }
    let at_two = 7;
    let rig = Rig::new(&l, 1, 0);
    let base = SamplerState { temperature: 1.0, top_p: 1.0, seed: 77, ..Default::default() };
    let check = |rig: &Rig, l: &[f32], st: SamplerState| {
        let got = rig.draw(&st);
        assert!(filtered_distribution(l, &st)[got as usize] > 0.0, "{st:?}: drew {got} outside the kept set");
        assert_same_kept_set(l, &st, rig.cut());
    };
    let n = vocab as u32;
    for top_k in [at_two, at_two - 1, at_two - 4, at_two + 1, at_two + 3, at_two + 4, 1, 2, 1000, n - 1, n, 0] {
        check(&rig, &l, SamplerState { top_k, ..base });
    }
    assert_eq!(rig.cut(), None, "top_k = 0 is off");
    check(&rig, &l, SamplerState { top_p: 0.0, ..base });
    assert_eq!(rig.cut(), Some(6.0), "top_p = 0 keeps the maximum");
    for frac in [0.2, 0.5, 0.9, 0.97, 0.999] {
        check(&rig, &l, SamplerState { top_p: mid_p(&l, &base, frac), ..base });
        let st = SamplerState { top_k: at_two + 2, temperature: 0.7, ..base };
        check(&rig, &l, SamplerState { top_p: mid_p(&l, &st, frac), ..st });
    }

    // One token holding ~half the mass over a flat tail of distinct logits in [0, 1): top-p
    // cuts thousands of tokens deep, where each token adds ~5e-6 of the mass.
    let mut tail: Vec<f32> = (0..vocab).map(|i| i as f32 / vocab as f32).collect();
    tail[1234] = (vocab as f32).ln() + 0.5;
    let rig = Rig::new(&tail, 1, 0);
    for frac in [0.3, 0.6, 0.75, 0.99] {
        check(&rig, &tail, SamplerState { top_p: mid_p(&tail, &base, frac), ..base });
        let st = SamplerState { top_k: 70_000, temperature: 2.0, ..base };
        check(&rig, &tail, SamplerState { top_p: mid_p(&tail, &st, frac), ..st });
    }
    // All-equal logits: every k and every p keep the whole tie.
    let flat = vec![-3.5f32; vocab];
    let rig = Rig::new(&flat, 1, 0);
    for st in [SamplerState { top_k: 5, ..base }, SamplerState { top_p: 0.1, ..base }] {
        check(&rig, &flat, st);
    }
}

/// Sampled frequencies at 131072 logits through every multi-workgroup pass: top-k with ties
/// at a bucket boundary (2.0 and the float below), top-p cutting into a flat tail of ~6% of
/// the mass (pooled by the chi-square), both combined.
#[test]
fn large_vocab_frequencies_match_the_filtered_distribution() {
    let vocab = 131_072;
    let mut rng = Rng::new(8);
    let mut l: Vec<f32> = (0..vocab).map(|_| -10.0 - 2.0 * rng.uniform()).collect();
    let below_two = f32::from_bits(2.0f32.to_bits() - 1);
    for (i, v) in [(100, 3.0), (40_000, 2.5), (40_001, 2.0), (99_000, 2.0), (131_071, 2.0), (7, below_two), (65_536, below_two)] {
        l[i] = v;
    }
    let rig = Rig::new(&l, 1, 0);
    let base = SamplerState { temperature: 1.0, top_p: 1.0, seed: 4321, ..Default::default() };
    check_frequencies(&rig, &l, SamplerState { top_k: 5, ..base }, 300);
    check_frequencies(&rig, &l, SamplerState { top_k: 6, temperature: 0.5, ..base }, 300);
    check_frequencies(&rig, &l, SamplerState { top_p: 0.6, ..base }, 300);
    check_frequencies(&rig, &l, SamplerState { top_p: 0.97, top_k: 50_000, temperature: 1.3, ..base }, 300);
}
