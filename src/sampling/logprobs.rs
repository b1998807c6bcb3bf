//! OpenAI `logprobs` / `top_logprobs`: the log-softmax of the model's raw logits (before
//! penalties, bias, temperature and filtering), max-subtracted with f64 accumulation.

/// OpenAI's upper bound on `top_logprobs`.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// The chosen token's log-probability and the most likely alternatives.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    /// `(id, logprob)`, most likely first, lower id first on ties.
    pub top: Vec<(u32, f32)>,
}

/// Sorting value of a logit: NaN counts as -inf.
fn value(l: f32) -> f32 {
    if l.is_nan() {
        f32::NEG_INFINITY
    } else {
        l
    }
}

/// `log p(id)` for every logit: `(l - m) - ln Σ exp(l_j - m)` in f64 with `m` the maximum.
/// A +inf maximum shares the mass among the +inf logits; with no finite or +inf logit at
/// all, every log-probability is -inf.
struct LogSoftmax {
    m: f32,
    lse: f64,
}

impl LogSoftmax {
    fn new(raw: &[f32]) -> LogSoftmax {
        let m = raw.iter().copied().map(value).fold(f32::NEG_INFINITY, f32::max);
        let mut ls = LogSoftmax { m, lse: 0.0 };
        let sum: f64 = raw.iter().map(|&l| ls.shifted(l).exp()).sum();
        ls.lse = sum.ln();
        ls
    }

    fn shifted(&self, l: f32) -> f64 {
        let l = value(l);
        if l == self.m {
            0.0
        } else {
            f64::from(l) - f64::from(self.m)
        }
    }

    fn of(&self, l: f32) -> f32 {
        if self.m == f32::NEG_INFINITY {
            return f32::NEG_INFINITY;
        }
        (self.shifted(l) - self.lse) as f32
    }
}

/// The `top_n` most likely ids (descending, lower id on ties) in one pass.
fn top_ids(raw: &[f32], top_n: usize) -> Vec<u32> {
    let mut top: Vec<u32> = Vec::with_capacity(top_n + 1);
    for (i, &l) in raw.iter().enumerate() {
        let v = value(l);
        if top.len() == top_n && top.last().is_none_or(|&j| v <= value(raw[j as usize])) {
            continue;
        }
        let at = top.partition_point(|&j| value(raw[j as usize]) >= v);
        top.insert(at, i as u32);
        top.truncate(top_n);
    }
    top
}

/// Log-probability of `token` under the raw logits and the `top_n` (clamped to
/// [`MAX_TOP_LOGPROBS`]) most likely ids. NaN logits count as -inf; a `token` outside the row
/// gets -inf.
pub fn logprobs(raw_logits: &[f32], token: u32, top_n: usize) -> TokenLogprob {
    let ls = LogSoftmax::new(raw_logits);
    let logprob = raw_logits.get(token as usize).map_or(f32::NEG_INFINITY, |&l| ls.of(l));
    let top = top_ids(raw_logits, top_n.min(MAX_TOP_LOGPROBS)).into_iter().map(|i| (i, ls.of(raw_logits[i as usize]))).collect();
    TokenLogprob { token, logprob, top }
}
