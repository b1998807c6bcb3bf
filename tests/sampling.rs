//! CPU sampling (`webvlm::sampling`): the filtered distribution against a sort-based
//! reference, sampled frequencies against it (chi-square), seeded reproducibility, penalties
//! and bias by hand, masks, logprobs against a naive log-softmax, stop strings over streamed
//! deltas, parameter validation. CPU only.

use crate::common;
use common::chi_square::{chi2_critical, chi_square, normal_quantile_upper};
use common::Rng;
use webvlm::sampling::{
    fold_seed, logprobs, rand01, SampleError, Sampler, SamplingParams, StopStep, StopStrings, MAX_STOP_BYTES,
};

#[test]
fn chi2_critical_values_match_tables() {
    // Tabulated chi-square quantiles at p = 0.001 (e.g. NIST/SEMATECH e-Handbook, 1.3.6.7.4).
    for (df, table) in [(10.0, 29.588), (20.0, 45.315), (30.0, 59.703)] {
        let got = chi2_critical(df, 0.001);
        // Wilson–Hilferty is within 1% here, and errs high (conservative) in this tail.
        assert!(got >= table && got < 1.01 * table, "df {df}: {got} vs {table}");
    }
    assert!((normal_quantile_upper(0.025) - 1.959964).abs() < 1e-5);
}

/// Draws `draws` tokens (accepting each) and asserts a chi-square goodness of fit to
/// `distribution` at p = 0.001, pooling cells expected below 5.
fn check_frequencies(logits: &[f32], params: SamplingParams, draws: u32) {
    let mut s = Sampler::new(params.clone(), &[]);
    let want: Vec<f64> = s.distribution(logits, None).iter().map(|&p| p as f64).collect();
    let mut counts = vec![0u32; logits.len()];
    for _ in 0..draws {
        let t = s.sample(logits, None) as usize;
        assert!(want[t] > 0.0, "{params:?}: drew {t} outside the kept set");
        counts[t] += 1;
        s.accept(t as u32);
    }
    let (chi2, df) = chi_square(&counts, &want);
    assert!(df >= 1.0, "{params:?}: only {} cells, nothing to test", df + 1.0);
    let crit = chi2_critical(df, 0.001);
    assert!(chi2 < crit, "{params:?}: chi2 {chi2:.1} over {df} dof, critical {crit:.1}");
}

fn base(seed: u64) -> SamplingParams {
    SamplingParams { seed: Some(seed), ..Default::default() }
}

#[test]
fn sampled_frequencies_match_the_distribution() {
    let logits: Vec<f32> = Rng::new(11).vec(40).iter().map(|x| 3.0 * x).collect();
    check_frequencies(&logits, base(1), 20_000);
    check_frequencies(&logits, SamplingParams { temperature: 0.5, ..base(2) }, 20_000);
    check_frequencies(&logits, SamplingParams { temperature: 1.7, top_k: 8, ..base(3) }, 20_000);
    check_frequencies(&logits, SamplingParams { top_p: 0.8, ..base(4) }, 20_000);
    check_frequencies(&logits, SamplingParams { min_p: 0.1, ..base(5) }, 20_000);
    let all = SamplingParams { temperature: 0.8, top_k: 20, top_p: 0.9, min_p: 0.05, ..base(6) };
    check_frequencies(&logits, all, 20_000);
}

// ---- distribution against a reference ---------------------------------------------------

/// Straightforward f64 reference: scale by 1/T, keep logits >= the k-th largest, keep the
/// most likely tokens until their renormalised mass reaches p (plus ties), drop
/// p < min_p * p_max, renormalise.
fn reference(logits: &[f32], t: f32, k: u32, top_p: f32, min_p: f32) -> Vec<f64> {
    let x: Vec<f64> = logits.iter().map(|&l| l as f64 / t as f64).collect();
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[b].partial_cmp(&x[a]).unwrap().then(a.cmp(&b)));
    let mut keep = vec![true; x.len()];
    if k > 0 && (k as usize) < x.len() {
        let kth = x[idx[k as usize - 1]];
        keep.iter_mut().zip(&x).for_each(|(kp, &xi)| *kp = xi >= kth);
    }
    let softmax = |keep: &[bool]| {
        let m = x.iter().zip(keep).filter(|(_, &k)| k).map(|(&v, _)| v).fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = x.iter().zip(keep).map(|(&v, &k)| if k { (v - m).exp() } else { 0.0 }).collect();
        let z: f64 = e.iter().sum();
        e.iter().map(|v| v / z).collect::<Vec<f64>>()
    };
    if top_p < 1.0 {
        let p = softmax(&keep);
        let (mut cum, mut last) = (0.0, f64::INFINITY);
        for &i in idx.iter().filter(|&&i| keep[i]) {
            cum += p[i];
            last = x[i];
            if cum >= top_p as f64 {
                break;
            }
        }
        keep.iter_mut().zip(&x).for_each(|(kp, &xi)| *kp &= xi >= last);
    }
    if min_p > 0.0 {
        let p = softmax(&keep);
        let pmax = p.iter().cloned().fold(0.0, f64::max);
        keep.iter_mut().zip(&p).for_each(|(kp, &pi)| *kp &= pi >= min_p as f64 * pmax);
    }
    softmax(&keep)
}

#[test]
fn distribution_matches_a_sort_based_reference() {
    let mut rng = Rng::new(5);
    let mut rows: Vec<Vec<f32>> = [16, 40, 64].iter().map(|&n| rng.vec(n).iter().map(|x| 4.0 * x).collect()).collect();
    // Ties around every cut: a plateau of equal logits at several levels.
    rows.push((0..48).map(|i| (i % 6) as f32 * 0.75).collect());
    let mut checked = 0;
    for row in &rows {
        for t in [1.0, 0.7, 1.6] {
            for k in [0, 1, 5, 9, 63] {
                for top_p in [1.0, 0.5, 0.9] {
                    for min_p in [0.0, 0.05, 0.3] {
                        let params = SamplingParams { temperature: t, top_k: k, top_p, min_p, ..base(0) };
                        let got = Sampler::new(params.clone(), &[]).distribution(row, None);
                        let want = reference(row, t, k, top_p, min_p);
                        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                            assert_eq!(g > 0.0, w > 0.0, "{params:?}: support differs at {i}");
                            assert!((g as f64 - w).abs() < 1e-6, "{params:?}: p[{i}] {g} vs {w}");
                        }
                        checked += 1;
                    }
                }
            }
        }
    }
    assert_eq!(checked, 4 * 3 * 5 * 3 * 3);
}

#[test]
fn top_p_reaches_into_a_long_tail() {
    // One dominant token and 20000 tail tokens holding most of the mass together: the nucleus
    // must extend into tokens far below the maximum's weight.
    let mut rng = Rng::new(17);
    let row: Vec<f32> = (0..20_001).map(|i| if i == 7 { 0.0 } else { -10.0 + 0.5 * rng.uniform() }).collect();
    for top_p in [0.6, 0.9, 0.99] {
        let params = SamplingParams { top_p, ..base(0) };
        let got = Sampler::new(params, &[]).distribution(&row, None);
        let want = reference(&row, 1.0, 0, top_p, 0.0);
        let kept = want.iter().filter(|&&w| w > 0.0).count();
        assert!(kept > 100, "top_p {top_p}: the nucleus should reach the tail ({kept} kept)");
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g > 0.0, w > 0.0, "top_p {top_p}: support differs at {i}");
            assert!((g as f64 - w).abs() < 1e-7, "top_p {top_p}: p[{i}] {g} vs {w}");
        }
    }
}

// ---- seeds, draws, greedy ---------------------------------------------------------------

fn sequence(logits: &[f32], params: SamplingParams, n: usize) -> Vec<u32> {
    let mut s = Sampler::new(params, &[]);
    (0..n)
        .map(|_| {
            let t = s.sample(logits, None);
            s.accept(t);
            t
        })
        .collect()
}

#[test]
fn no_seed_draws_a_fresh_one_per_sampler() {
    let p = SamplingParams { temperature: 1.0, ..Default::default() };
    assert_eq!(p.seed, None);
    let seeds: Vec<u32> = (0..4).map(|_| Sampler::new(p.clone(), &[]).seed()).collect();
    assert!(seeds.iter().any(|&s| s != seeds[0]), "{seeds:?}");
}

#[test]
fn same_seed_same_sequence_other_seed_differs() {
    let logits = Rng::new(3).vec(64);
    let p = SamplingParams { temperature: 1.5, top_p: 0.95, ..base(42) };
    let a = sequence(&logits, p.clone(), 50);
    assert_eq!(a, sequence(&logits, p.clone(), 50));
    assert_ne!(a, sequence(&logits, SamplingParams { seed: Some(43), ..p }, 50));
}

#[test]
fn draw_is_the_inverse_cdf_of_the_counter_rng() {
    // Two equally likely tokens: id 0 exactly when rand01(seed, draw) < 1/2.
    let seed = 0x1234_5678_9abc_def0u64;
    let mut s = Sampler::new(base(seed), &[]);
    assert_eq!(s.seed(), fold_seed(seed));
    assert_eq!(fold_seed(seed), 0x1234_5678 ^ 0x9abc_def0);
    for d in 0..200 {
        assert_eq!(s.draw(), d);
        let want = u32::from(rand01(s.seed(), d) >= 0.5);
        let t = s.sample(&[0.25, 0.25], None);
        assert_eq!(t, want, "draw {d}");
        s.accept(t);
    }
}

#[test]
fn rand01_is_uniform_in_unit_interval() {
    let mut bins = [0u32; 16];
    for d in 0..32_000 {
        let u = rand01(7, d);
        assert!((0.0..1.0).contains(&u));
        bins[(u * 16.0) as usize] += 1;
    }
    let chi2: f64 = bins.iter().map(|&c| (c as f64 - 2000.0).powi(2) / 2000.0).sum();
    assert!(chi2 < chi2_critical(15.0, 0.001), "chi2 {chi2}");
}

#[test]
fn greedy_takes_the_lowest_id_on_ties_after_bias() {
    let logits = [1.0, 5.0, 2.0, 5.0, 3.0];
    let greedy = SamplingParams { temperature: 0.0, ..base(0) };
    assert_eq!(Sampler::new(greedy.clone(), &[]).sample(&logits, None), 1);
    let biased = SamplingParams { logit_bias: vec![(4, 2.0)], ..greedy.clone() };
    assert_eq!(Sampler::new(biased, &[]).sample(&logits, None), 1, "tie 5.0 at 1, 3, 4");
    let biased = SamplingParams { logit_bias: vec![(4, 2.5)], ..greedy };
    let s = Sampler::new(biased, &[]);
    assert_eq!(s.distribution(&logits, None), vec![0.0, 0.0, 0.0, 0.0, 1.0]);
}

// ---- penalties, bias, masks -------------------------------------------------------------

#[test]
fn penalties_and_bias_follow_the_documented_formulas() {
    let params = SamplingParams {
        repetition_penalty: 2.0,
        frequency_penalty: 0.5,
        presence_penalty: 0.25,
        logit_bias: vec![(5, 1.5), (0, -100.0), (99, 7.0)],
        ..base(0)
    };
    let mut s = Sampler::new(params, &[0, 1, 0]);
    for t in [3, 3, 2] {
        s.accept(t);
    }
    let mut logits = [2.0, -1.0, 0.5, 3.0, -2.0, 0.0];
    s.adjust(&mut logits);
    // 0: prompt only, 2/2 - 100 | 1: prompt only, -1*2 | 2: 0.5/2 - (1*0.5 + 0.25)
    // 3: 3/2 - (2*0.5 + 0.25)  | 4: unseen | 5: 0 + 1.5 | id 99 outside the row: ignored.
    assert_eq!(logits, [-99.0, -2.0, -0.5, 0.25, -2.0, 1.5]);
}

fn mask(ids: &[usize], words: usize) -> Vec<u32> {
    let mut m = vec![0u32; words];
    ids.iter().for_each(|&t| m[t / 32] |= 1 << (t % 32));
    m
}

#[test]
fn masks_restrict_greedy_sampling_and_distribution() {
    let logits: Vec<f32> = (0..70).map(|i| (i % 7) as f32).collect();
    let allowed = mask(&[3, 33, 65], 3);
    let greedy = Sampler::new(SamplingParams { temperature: 0.0, ..base(0) }, &[]).sample(&logits, Some(&allowed));
    assert_eq!(greedy, 33, "logits 3, 5, 2");
    let mut s = Sampler::new(base(9), &[]);
    let p = s.distribution(&logits, Some(&allowed));
    let z = 3f64.exp() + 5f64.exp() + 2f64.exp();
    for (i, &pi) in p.iter().enumerate() {
        let want = match i {
            3 => 3f64.exp() / z,
            33 => 5f64.exp() / z,
            65 => 2f64.exp() / z,
            _ => 0.0,
        };
        assert!((pi as f64 - want).abs() < 1e-6, "p[{i}] {pi} vs {want}");
    }
    for _ in 0..300 {
        let t = s.sample(&logits, Some(&allowed));
        assert!([3, 33, 65].contains(&t));
        s.accept(t);
    }
    // A one-word mask leaves ids from 32 on masked: greedy skips 33 (logit 5) for 3.
    let short = &mask(&[3, 33], 2)[..1];
    assert_eq!(Sampler::new(SamplingParams { temperature: 0.0, ..base(0) }, &[]).sample(&logits, Some(short)), 3);
}

#[test]
fn nothing_to_sample_is_an_error_or_the_documented_fallback() {
    let logits = [1.0f32, 2.0, 3.0, f32::NEG_INFINITY, 4.0];
    for temperature in [0.0, 1.0] {
        let mut s = Sampler::new(SamplingParams { temperature, ..base(0) }, &[]);
        let none = mask(&[], 1);
        assert_eq!(s.try_sample(&logits, Some(&none)), Err(SampleError::NoCandidates));
        assert_eq!(s.sample(&logits, Some(&none)), 0);
        assert!(s.distribution(&logits, Some(&none)).iter().all(|&p| p == 0.0));
        // The only allowed id has a -inf logit: fall back to it.
        assert_eq!(s.sample(&logits, Some(&mask(&[3], 1))), 3);
        assert_eq!(s.sample(&[f32::NEG_INFINITY; 4], None), 0);
        assert_eq!(s.sample(&[], None), 0);
        assert_eq!(s.sample(&[f32::NAN, -3.0, f32::NAN], None), 1, "NaN counts as -inf");
    }
}

// ---- logprobs ---------------------------------------------------------------------------

fn naive_log_softmax(x: &[f32]) -> Vec<f64> {
    let z: f64 = x.iter().map(|&v| (v as f64).exp()).sum();
    x.iter().map(|&v| v as f64 - z.ln()).collect()
}

#[test]
fn logprobs_match_a_naive_log_softmax() {
    let logits: Vec<f32> = Rng::new(8).vec(64).iter().map(|x| 6.0 * x).collect();
    let want = naive_log_softmax(&logits);
    let mut total = 0.0;
    for t in 0..64u32 {
        let lp = logprobs(&logits, t, 0);
        assert!((lp.logprob as f64 - want[t as usize]).abs() < 1e-5, "token {t}");
        assert!(lp.top.is_empty());
        total += (lp.logprob as f64).exp();
    }
    assert!((total - 1.0).abs() < 1e-5, "sum of probabilities {total}");
    let lp = logprobs(&logits, 7, 50);
    assert_eq!(lp.top.len(), 20, "top_logprobs is clamped to 20");
    let mut order: Vec<usize> = (0..64).collect();
    order.sort_by(|&a, &b| want[b].partial_cmp(&want[a]).unwrap());
    for (&(id, l), &i) in lp.top.iter().zip(&order) {
        assert_eq!(id as usize, i);
        assert!((l as f64 - want[i]).abs() < 1e-5);
    }
}

#[test]
fn logprobs_are_stable_and_order_ties_by_id() {
    let lp = logprobs(&[1000.0, 999.0, -1e30], 0, 3);
    let want = -(1.0 + (-1.0f64).exp()).ln();
    assert!((lp.logprob as f64 - want).abs() < 1e-6, "{}", lp.logprob);
    assert_eq!(lp.top.iter().map(|t| t.0).collect::<Vec<_>>(), [0, 1, 2]);
    let ties = logprobs(&[1.0, 3.0, 3.0, 2.0, 3.0], 2, 3);
    assert_eq!(ties.top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2, 4]);
    assert!(ties.top.iter().all(|t| t.1 == ties.logprob));
    let odd = logprobs(&[f32::NAN, 0.0, f32::NEG_INFINITY], 1, 3);
    assert_eq!((odd.logprob, odd.top.iter().map(|t| t.0).collect::<Vec<_>>()), (0.0, vec![1, 0, 2]));
    assert_eq!(logprobs(&[0.0, 1.0], 5, 0).logprob, f32::NEG_INFINITY, "token outside the row");
    assert!(logprobs(&[f32::NEG_INFINITY; 3], 0, 2).top.iter().all(|t| t.1 == f32::NEG_INFINITY));
}

// ---- stop strings -----------------------------------------------------------------------

fn stops(s: &[&str]) -> StopStrings {
    StopStrings::new(s.iter().map(|s| s.to_string()).collect()).unwrap()
}

/// Feeds `deltas`, returns everything emitted (plus `finish` if no stop) and whether it stopped.
fn stream(m: &mut StopStrings, deltas: &[&str]) -> (String, bool) {
    let mut out = String::new();
    for d in deltas {
        let StopStep { emit, stopped } = m.push(d);
        out.push_str(&emit);
        if stopped {
            return (out, true);
        }
    }
    out.push_str(&m.finish());
    (out, false)
}

#[test]
fn stop_string_split_into_single_chars_is_caught() {
    let text = "The answer is 42.</answer> and more";
    let mut m = stops(&["</answer>"]);
    let mut out = String::new();
    for (i, c) in text.char_indices() {
        let step = m.push(&c.to_string());
        out.push_str(&step.emit);
        if i < 17 {
            assert_eq!(out, text[..=i], "released at once while no prefix of the stop");
        }
        if step.stopped {
            assert_eq!(i, 25, "stops on the closing '>'");
            break;
        }
    }
    assert_eq!(out, "The answer is 42.");
    assert_eq!(m.push("tail"), StopStep { emit: String::new(), stopped: true });
}

#[test]
fn stop_strings_respect_multibyte_chars() {
    assert_eq!(stream(&mut stops(&["世界"]), &["你好", "世", "界!"]), ("你好".into(), true));
    assert_eq!(stream(&mut stops(&["é!"]), &["caf", "é", " ok"]), ("café ok".into(), false));
    // "è" shares its first byte with "é": no holdback, no split inside the char.
    let mut m = stops(&["éa"]);
    assert_eq!(m.push("è").emit, "è");
    assert_eq!(stream(&mut m, &["xé", "a"]), ("x".into(), true));
}

#[test]
fn overlapping_stop_strings_stop_where_the_first_completes() {
    let mut m = stops(&["abcd", "bc"]);
    assert_eq!(m.push("xab").emit, "x");
    assert_eq!(m.push("c"), StopStep { emit: "a".into(), stopped: true });
    assert_eq!(stream(&mut stops(&["abcd", "bc"]), &["xabcd"]), ("xa".into(), true));
    assert_eq!(stream(&mut stops(&["abc", "bc"]), &["zabc"]), ("z".into(), true));
}

/// Where a stop must cut `text`: the smallest end of any occurrence, the longest stop there.
fn reference_cut(text: &str, stops: &[&str]) -> Option<usize> {
    (1..=text.len()).find_map(|end| stops.iter().filter(|s| text[..end].ends_with(*s)).map(|s| end - s.len()).min())
}

#[test]
fn every_split_of_a_text_gives_the_same_result() {
    let list = ["abcd", "bc", "cab"];
    for text in ["xxabcabcdyy", "xxacabyy", "abdabcxx", "nothing"] {
        let want = reference_cut(text, &list).map_or((text.to_string(), false), |c| (text[..c].to_string(), true));
        for cuts in 0u32..1 << (text.len() - 1) {
            let mut deltas = Vec::new();
            let mut start = 0;
            for i in 1..text.len() {
                if cuts >> (i - 1) & 1 == 1 {
                    deltas.push(&text[start..i]);
                    start = i;
                }
            }
            deltas.push(&text[start..]);
            assert_eq!(stream(&mut stops(&list), &deltas), want, "{text:?} as {deltas:?}");
        }
    }
}

#[test]
fn stop_at_start_mismatch_release_and_finish() {
    assert_eq!(stream(&mut stops(&["Hello"]), &["Hel", "lo world"]), (String::new(), true));
    let mut m = stops(&["abcd"]);
    assert_eq!(m.push("ab").emit, "", "a possible start is held");
    assert_eq!(m.push("x").emit, "abx", "released once it cannot match");
    assert_eq!(m.push("abcab").emit, "abc", "only the longest live prefix is held");
    assert_eq!(m.finish(), "ab", "finish releases the held text");
    assert_eq!(stream(&mut stops(&[]), &["a", "b"]), ("ab".into(), false));
}

// ---- validation -------------------------------------------------------------------------

#[test]
fn invalid_parameters_name_the_parameter() {
    let vocab = 100;
    assert_eq!(SamplingParams::default().validate(vocab), Ok(()));
    assert!(!SamplingParams::default().needs_cpu());
    let d = SamplingParams::default;
    let cases: Vec<(SamplingParams, &str)> = vec![
        (SamplingParams { temperature: 2.5, ..d() }, "temperature"),
        (SamplingParams { temperature: -0.1, ..d() }, "temperature"),
        (SamplingParams { temperature: f32::NAN, ..d() }, "temperature"),
        (SamplingParams { top_p: 0.0, ..d() }, "top_p"),
        (SamplingParams { top_p: 1.01, ..d() }, "top_p"),
        (SamplingParams { min_p: 1.5, ..d() }, "min_p"),
        (SamplingParams { frequency_penalty: 2.1, ..d() }, "frequency_penalty"),
        (SamplingParams { presence_penalty: -2.5, ..d() }, "presence_penalty"),
        (SamplingParams { presence_penalty: f32::INFINITY, ..d() }, "presence_penalty"),
        (SamplingParams { repetition_penalty: 0.0, ..d() }, "repetition_penalty"),
        (SamplingParams { repetition_penalty: 11.0, ..d() }, "repetition_penalty"),
        (SamplingParams { logit_bias: vec![(100, 1.0)], ..d() }, "logit_bias"),
        (SamplingParams { logit_bias: vec![(5, 100.5)], ..d() }, "logit_bias"),
        (SamplingParams { logit_bias: vec![(5, f32::NAN)], ..d() }, "logit_bias"),
        (SamplingParams { logit_bias: vec![(5, 1.0), (5, 2.0)], ..d() }, "logit_bias"),
    ];
    for (params, name) in cases {
        let err = params.validate(vocab).expect_err(name);
        assert_eq!(err.param, name, "{params:?}: {err}");
    }
    let edges = SamplingParams {
        temperature: 2.0,
        top_p: 1.0,
        min_p: 1.0,
        frequency_penalty: -2.0,
        presence_penalty: 2.0,
        repetition_penalty: 10.0,
        logit_bias: vec![(99, -100.0), (0, 100.0)],
        ..d()
    };
    assert_eq!(edges.validate(vocab), Ok(()));
    assert!(edges.needs_cpu());
    assert!(SamplingParams { min_p: 0.1, ..d() }.needs_cpu());
    assert!(SamplingParams { repetition_penalty: 1.1, ..d() }.needs_cpu());
    assert!(!SamplingParams { temperature: 0.3, top_k: 5, top_p: 0.5, ..d() }.needs_cpu());
}

#[test]
fn invalid_stop_lists_are_rejected() {
    let bad = |v: Vec<String>| StopStrings::new(v).expect_err("invalid").param;
    assert_eq!(bad(vec!["a".into(); 5]), "stop");
    assert_eq!(bad(vec!["a".into(), String::new()]), "stop");
    assert_eq!(bad(vec!["x".repeat(MAX_STOP_BYTES + 1)]), "stop");
    assert!(StopStrings::new(vec!["a".into(); 4]).is_ok());
    assert!(StopStrings::new(vec!["x".repeat(MAX_STOP_BYTES)]).is_ok());
}
