//! Penalties, logit bias, masks, temperature / top-k / top-p / min-p and a seeded
//! inverse-CDF draw over one logits row, on the CPU.
//!
//! Order of operations (each step exactly as documented on [`Sampler::adjust`] and
//! [`Sampler::sample`]): repetition penalty (transformers / vLLM), frequency and presence
//! penalties (OpenAI), logit bias (OpenAI), mask, then either argmax or transformers' warper
//! order temperature → top-k → top-p, then min-p, then the draw.
//!
//! Min-p comes last, as in llama.cpp's default chain (`top_k; …; top_p; min_p; …`) and
//! transformers' warper list; vLLM V1 applies it before top-k/top-p instead. Its
//! probabilities are taken after temperature (transformers, vLLM; llama.cpp's chain puts
//! temperature last). Since the most likely token survives every cut and min-p only compares
//! with it, min-p last just intersects the top-k/top-p set, which stays exactly the GPU's.
//!
//! Top-k and top-p mirror `shaders/sample.wgsl`: thresholds on the order-preserving integer
//! key of the f32 logit, so every token tied with the cut is kept; top-p keeps the smallest
//! set of most likely top-k survivors whose renormalised mass reaches `p`. The draw uses the
//! shader's counter RNG and walks the kept tokens in id order, so the CPU and GPU pick the
//! same id unless `u` lies within float rounding of a CDF boundary.

use std::collections::{BTreeMap, BTreeSet};

use super::SamplingParams;

/// Why [`Sampler::try_sample`] found nothing to draw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SampleError {
    /// Every token is masked out, or every logit is -inf or NaN after adjustment.
    #[error("no token can be sampled: every logit is masked, -inf or NaN")]
    NoCandidates,
}

/// The request seed as the GPU sampler's `u32` (the fold `GenerateOptions` uses:
/// `seed ^ (seed >> 32)`, low 32 bits).
pub fn fold_seed(seed: u64) -> u32 {
    (seed ^ (seed >> 32)) as u32
}

/// Uniform in [0, 1) from `(seed, draw)`: `rand01` of `shaders/sample.wgsl` bit for bit
/// (PCG-style hash, wrapping u32 arithmetic, top 24 bits over 2^24).
pub fn rand01(seed: u32, draw: u32) -> f32 {
    let mut x = seed.wrapping_mul(747_796_405).wrapping_add(draw.wrapping_mul(2_891_336_453)).wrapping_add(12345);
    x = ((x >> ((x >> 28) + 4)) ^ x).wrapping_mul(277_803_737);
    x ^= x >> 22;
    x ^= draw.wrapping_mul(0x9e37_79b9);
    x = (x ^ (x >> 16)).wrapping_mul(0x7feb_352d);
    x = (x ^ (x >> 15)).wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    (x >> 8) as f32 / 16_777_216.0
}

/// Order-preserving map f32 -> u32 (`key` in the shader): -0.0 sorts just below +0.0.
fn key(x: f32) -> u32 {
    let b = x.to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// A logit that can be drawn: not NaN, not -inf.
fn live(x: f32) -> bool {
    x > f32::NEG_INFINITY
}

/// Bit `t` of an allowed-token mask; ids past the mask's end are not allowed.
fn allowed_bit(mask: &[u32], t: usize) -> bool {
    mask.get(t / 32).is_some_and(|w| (w >> (t % 32)) & 1 == 1)
}

/// Largest live logit by key, lowest id on ties (the shader's argmax, NaN skipped).
fn argmax(row: &[f32]) -> Option<u32> {
    let mut best: Option<(u32, u32)> = None;
    for (i, &l) in row.iter().enumerate().filter(|(_, &l)| live(l)) {
        if best.is_none_or(|(k, _)| key(l) > k) {
            best = Some((key(l), i as u32));
        }
    }
    best.map(|(_, i)| i)
}

/// Live ids packed as `(!key << 32) | id`: ascending order is descending logit, then
/// ascending id.
fn packed_live(row: &[f32]) -> Vec<u64> {
    row.iter().enumerate().filter(|(_, &l)| live(l)).map(|(i, &l)| (u64::from(!key(l)) << 32) | i as u64).collect()
}

fn packed_key(e: u64) -> u32 {
    !((e >> 32) as u32)
}

fn packed_id(e: u64) -> usize {
    (e & 0xffff_ffff) as usize
}

/// Temperature-scaled weights relative to the maximum `m`: `exp((l - m) / T)`, with the
/// shader's f32 `(l - m) * (1 / T)` and the exponential in f64; the maximum weighs 1, and
/// weights never decrease with the logit.
struct Weights {
    m: f32,
    inv_t: f32,
}

impl Weights {
    fn of(&self, l: f32) -> f64 {
        if l == self.m {
            1.0
        } else {
            f64::from((l - self.m) * self.inv_t).exp()
        }
    }
}

/// Top-k: the candidates whose key is at least the k-th largest (ties kept), by selection.
fn top_k(mut cand: Vec<u64>, k: usize) -> Vec<u64> {
    if k == 0 || k >= cand.len() {
        return cand;
    }
    let kth = packed_key(*cand.select_nth_unstable(k - 1).1);
    cand.retain(|&e| packed_key(e) >= kth);
    cand
}

/// Top-p: the smallest key such that the candidates at or above it hold at least `top_p` of
/// the candidates' mass (so ties with the last token needed are kept).
///
/// The nucleus ends on a token of weight >= `tau` whenever the tokens of weight >= `tau`
/// (a prefix in descending order, closed under ties) already hold the goal, so only those are
/// sorted; `tau` is lowered until that holds (at 0, everything is sorted).
fn top_p_cut(cand: &[u64], row: &[f32], w: &Weights, top_p: f32) -> u32 {
    let weight = |e: u64| w.of(row[packed_id(e)]);
    let weights: Vec<f64> = cand.iter().map(|&e| weight(e)).collect();
    let goal = weights.iter().sum::<f64>() * f64::from(top_p);
    for tau in [1e-4, 1e-8, 0.0] {
        let heavy = cand.iter().zip(&weights).filter(|&(_, &wi)| wi >= tau);
        if tau > 0.0 && heavy.clone().map(|(_, &wi)| wi).sum::<f64>() < goal {
            continue;
        }
        let mut head: Vec<u64> = heavy.map(|(&e, _)| e).collect();
        head.sort_unstable();
        let mut mass = 0.0;
        for (j, &e) in head.iter().enumerate() {
            mass += weight(e);
            let group_ends = head.get(j + 1).is_none_or(|&next| packed_key(next) != packed_key(e));
            if mass >= goal && group_ends {
                return packed_key(e);
            }
        }
        return head.last().map_or(0, |&e| packed_key(e));
    }
    0
}

/// The smallest key top-k and top-p keep (0 keeps every live token).
fn cut_key(p: &SamplingParams, row: &[f32], w: &Weights) -> u32 {
    let use_p = p.top_p < 1.0;
    if p.top_k == 0 && !use_p {
        return 0;
    }
    let cand = top_k(packed_live(row), p.top_k as usize);
    if use_p {
        top_p_cut(&cand, row, w, p.top_p)
    } else {
        cand.iter().map(|&e| packed_key(e)).min().unwrap_or(0)
    }
}

/// Kept `(id, weight)` pairs in id order after temperature, top-k, top-p and min-p; weights
/// are unnormalised and positive. Empty when no logit is live.
fn filter(p: &SamplingParams, row: &[f32]) -> Vec<(u32, f64)> {
    let Some(best) = argmax(row) else { return Vec::new() };
    let w = Weights { m: row[best as usize], inv_t: 1.0 / p.temperature };
    let cut = cut_key(p, row, &w);
    // p_i >= min_p * p_max  <=>  w_i >= min_p, as the maximum weighs 1 and survives every cut.
    let min_w = if p.min_p > 0.0 { f64::from(p.min_p.min(1.0)) } else { 0.0 };
    row.iter()
        .enumerate()
        .filter(|(_, &l)| live(l) && key(l) >= cut)
        .map(|(i, &l)| (i as u32, w.of(l)))
        .filter(|&(_, wi)| wi > 0.0 && wi >= min_w)
        .collect()
}

/// Inverse CDF in id order: the first kept id whose running mass exceeds `u * total`.
fn draw(kept: &[(u32, f64)], u: f32) -> Option<u32> {
    let total: f64 = kept.iter().map(|&(_, w)| w).sum();
    let x = f64::from(u) * total;
    let mut acc = 0.0;
    for &(id, w) in kept {
        acc += w;
        if x < acc {
            return Some(id);
        }
    }
    kept.last().map(|&(id, _)| id)
}

/// One request's token selection: its settings, the tokens seen so far (for penalties) and
/// the draw counter (`SamplerState::draw` on the GPU path: 0 for the first generated token,
/// +1 per [`Sampler::accept`]).
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    seed: u32,
    draw: u32,
    /// Prompt and generated tokens (repetition penalty).
    seen: BTreeSet<u32>,
    /// Generated tokens and their counts (frequency and presence penalties).
    counts: BTreeMap<u32, u32>,
    /// Reused copy of the logits row.
    scratch: Vec<f32>,
}

impl Sampler {
    /// A sampler for a request whose prompt is `prompt` (ids the repetition penalty sees).
    /// `params` should have passed [`SamplingParams::validate`]; out-of-range values do not
    /// panic (a NaN or non-positive temperature selects greedy decoding).
    /// Without a seed in `params`, one is drawn ([`super::random_seed`]).
    pub fn new(params: SamplingParams, prompt: &[u32]) -> Sampler {
        let seed = fold_seed(params.seed.unwrap_or_else(super::random_seed));
        Sampler { params, seed, draw: 0, seen: prompt.iter().copied().collect(), counts: BTreeMap::new(), scratch: Vec::new() }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The folded seed (`SamplerState::seed`).
    pub fn seed(&self) -> u32 {
        self.seed
    }

    /// Index of the next draw (`SamplerState::draw`).
    pub fn draw(&self) -> u32 {
        self.draw
    }

    fn greedy(&self) -> bool {
        let t = self.params.temperature;
        t.is_nan() || t <= 0.0
    }

    /// Records a generated token (penalty counts) and advances the draw counter.
    pub fn accept(&mut self, token: u32) {
        *self.counts.entry(token).or_insert(0) += 1;
        self.seen.insert(token);
        self.draw = self.draw.wrapping_add(1);
    }

    /// Applies penalties and bias in place, in this order, to ids inside the row (others
    /// are ignored), in f32:
    /// 1. repetition penalty `r` over every id in the prompt or generated so far
    ///    (transformers / vLLM): `l > 0 → l / r`, else `l * r`;
    /// 2. OpenAI's `l -= c * frequency_penalty + (c > 0) * presence_penalty`, with `c` the
    ///    id's count among generated tokens only (evaluated as `l - (c * f + p)`);
    /// 3. `l += bias` for each `logit_bias` entry.
    pub fn adjust(&self, logits: &mut [f32]) {
        let r = self.params.repetition_penalty;
        if r != 1.0 {
            for &t in &self.seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 { *l / r } else { *l * r };
                }
            }
        }
        let (f, p) = (self.params.frequency_penalty, self.params.presence_penalty);
        if f != 0.0 || p != 0.0 {
            for (&t, &c) in &self.counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= c as f32 * f + p;
                }
            }
        }
        for &(t, bias) in &self.params.logit_bias {
            if let Some(l) = logits.get_mut(t as usize) {
                *l += bias;
            }
        }
    }

    /// `adjust`, then -inf for every id whose bit in `allowed` is 0 (bit `t` is
    /// `allowed[t / 32] >> (t % 32) & 1`; ids past the mask's end are masked).
    fn prepare(&self, row: &mut [f32], allowed: Option<&[u32]>) {
        self.adjust(row);
        if let Some(mask) = allowed {
            for (t, l) in row.iter_mut().enumerate() {
                if !allowed_bit(mask, t) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
    }

    /// Chooses the next token without consuming the draw (call [`Sampler::accept`] with the
    /// token kept). After [`Sampler::adjust`] and the mask: temperature 0 → argmax (lowest id
    /// on ties); otherwise temperature, top-k, top-p, min-p (see the module docs), then the
    /// first id in id order whose cumulative mass exceeds `rand01(seed, draw) * total`.
    /// NaN logits count as -inf. Errors when no token is left.
    pub fn try_sample(&mut self, logits: &[f32], allowed: Option<&[u32]>) -> Result<u32, SampleError> {
        let mut row = std::mem::take(&mut self.scratch);
        row.clear();
        row.extend_from_slice(logits);
        self.prepare(&mut row, allowed);
        let picked = if self.greedy() { argmax(&row) } else { draw(&filter(&self.params, &row), rand01(self.seed, self.draw)) };
        self.scratch = row;
        picked.ok_or(SampleError::NoCandidates)
    }

    /// [`Sampler::try_sample`], falling back when no token is left (every id masked, or
    /// every logit -inf / NaN) to the lowest id the mask allows, or 0 without one.
    pub fn sample(&mut self, logits: &[f32], allowed: Option<&[u32]>) -> u32 {
        self.try_sample(logits, allowed).unwrap_or_else(|_| {
            let first = allowed.and_then(|m| (0..logits.len()).find(|&t| allowed_bit(m, t)));
            first.unwrap_or(0) as u32
        })
    }

    /// The probabilities the next draw uses, one per id: after adjustment, mask and every
    /// filter, renormalised over the kept ids (zero elsewhere); one-hot at the argmax when
    /// greedy; all zero when no token is left.
    pub fn distribution(&self, logits: &[f32], allowed: Option<&[u32]>) -> Vec<f32> {
        let mut row = logits.to_vec();
        self.prepare(&mut row, allowed);
        let mut probs = vec![0.0; row.len()];
        if self.greedy() {
            if let Some(i) = argmax(&row) {
                probs[i as usize] = 1.0;
            }
            return probs;
        }
        let kept = filter(&self.params, &row);
        let total: f64 = kept.iter().map(|&(_, w)| w).sum();
        for (id, w) in kept {
            probs[id as usize] = (w / total) as f32;
        }
        probs
    }
}
