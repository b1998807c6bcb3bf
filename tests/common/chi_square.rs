//! Chi-square goodness of fit for the sampler tests (CPU and GPU): the statistic with small
//! cells pooled, and critical values.

/// Upper-tail probability of the standard normal, `1/2 - ∫_0^z φ`, by composite Simpson.
fn normal_upper_tail(z: f64) -> f64 {
    let phi = |t: f64| (-0.5 * t * t).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let n = 2000;
    let h = z / n as f64;
    let inner: f64 = (1..n).map(|i| phi(i as f64 * h) * if i % 2 == 1 { 4.0 } else { 2.0 }).sum();
    0.5 - h / 3.0 * (phi(0.0) + inner + phi(z))
}

/// The `z` with upper-tail probability `p`, by bisection on [0, 10].
pub fn normal_quantile_upper(p: f64) -> f64 {
    let (mut lo, mut hi) = (0.0, 10.0);
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if normal_upper_tail(mid) > p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Chi-square critical value at upper-tail probability `p` (Wilson–Hilferty: `(X/df)^(1/3)`
/// is approximately normal with mean `1 - 2/(9 df)` and variance `2/(9 df)`).
pub fn chi2_critical(df: f64, p: f64) -> f64 {
    let a = 2.0 / (9.0 * df);
    df * (1.0 - a + normal_quantile_upper(p) * a.sqrt()).powi(3)
}

/// The chi-square statistic of `counts` against the probabilities `want` (cells with
/// probability 0 left out; cells expected below 5 pooled into one, so the approximation
/// holds) and its degrees of freedom.
pub fn chi_square(counts: &[u32], want: &[f64]) -> (f64, f64) {
    let draws: u32 = counts.iter().sum();
    let (mut chi2, mut cells, mut pool_e, mut pool_o) = (0.0, 0.0, 0.0, 0.0);
    for (i, &p) in want.iter().enumerate().filter(|(_, &p)| p > 0.0) {
        let e = p * draws as f64;
        if e < 5.0 {
            pool_e += e;
            pool_o += counts[i] as f64;
            continue;
        }
        chi2 += (counts[i] as f64 - e).powi(2) / e;
        cells += 1.0;
    }
    if pool_e > 0.0 {
        chi2 += (pool_o - pool_e).powi(2) / pool_e;
        cells += 1.0;
    }
    (chi2, cells - 1.0)
}
