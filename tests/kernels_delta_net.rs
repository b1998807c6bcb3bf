//! Gated delta rule: the GPU recurrence against the f64 CPU recurrence, and the CPU chunked
//! form (torch's algorithm) against the CPU recurrence, over chunk boundaries, both k-head
//! mappings, head dims 16 and 128, nonzero initial states; bad shapes give errors; all of them
//! against transformers' own functions on the committed `delta_rule` cases.

use crate::common;
use common::*;
use webvlm::backend::gpu::GpuError;
use webvlm::backend::{Buffer, Device, Program};
use webvlm::kernels::delta_net::{self, DeltaNetBuffers, DeltaNetLayout, KHeads};

/// GPU f32 recurrence vs the f64 reference, relative L2 over all outputs / the final state.
const TOL_GPU: f32 = 1e-5;
/// CPU chunked vs CPU recurrent (both f64, outputs rounded to f32 once).
const TOL_CHUNKED_REF: f32 = 1e-6;

/// Random inputs of `n_tok` tokens: mixed rows, g in [-3, 0], beta in (0, 1), initial state.
struct Case {
    layout: DeltaNetLayout,
    n_tok: usize,
    qkv: Vec<f32>,
    g: Vec<f32>,
    beta: Vec<f32>,
    state: Vec<f32>,
}

impl Case {
    fn new(layout: DeltaNetLayout, n_tok: usize, seed: u64) -> Case {
        let mut rng = Rng::new(seed);
        let hv = layout.n_v_heads as usize;
        let qkv = rng.vec(layout.qkv_len(n_tok));
        let g = (0..n_tok * hv).map(|_| 1.5 * (rng.uniform() - 1.0)).collect();
        let beta = (0..n_tok * hv).map(|_| 0.5 + 0.49 * rng.uniform()).collect();
        let state = rng.vec(layout.state_len()).iter().map(|x| 0.5 * x).collect();
        Case { layout, n_tok, qkv, g, beta, state }
    }

    /// Outputs and final state of the CPU recurrence.
    fn recurrent_ref(&self) -> (Vec<f32>, Vec<f32>) {
        let mut s = self.state.clone();
        let o = delta_net::gated_delta_rule_recurrent_ref(&self.layout, self.n_tok, &self.qkv, &self.g, &self.beta, &mut s);
        (o, s)
    }

    fn chunked_ref(&self) -> (Vec<f32>, Vec<f32>) {
        let mut s = self.state.clone();
        let o = delta_net::gated_delta_rule_chunked_ref(&self.layout, self.n_tok, &self.qkv, &self.g, &self.beta, &mut s);
        (o, s)
    }
}

/// GPU buffers of a case: inputs uploaded, the state a copy of the initial one.
struct GpuCase {
    qkv: Buffer,
    g: Buffer,
    beta: Buffer,
    state: Buffer,
    out: Buffer,
}

impl GpuCase {
    fn new(gpu: &Device, c: &Case) -> GpuCase {
        GpuCase {
            qkv: upload(gpu, &c.qkv),
            g: upload(gpu, &c.g),
            beta: upload(gpu, &c.beta),
            state: upload(gpu, &c.state),
            out: gpu.storage("out", 4 * c.layout.out_len(c.n_tok) as u64).unwrap(),
        }
    }

    fn buffers(&self) -> DeltaNetBuffers<'_> {
        DeltaNetBuffers { qkv: &self.qkv, g: &self.g, beta: &self.beta, state: &self.state, out: &self.out }
    }

    fn read(&self, gpu: &Device, c: &Case) -> (Vec<f32>, Vec<f32>) {
        let out = gpu.read_f32_blocking(&self.out, c.layout.out_len(c.n_tok)).unwrap();
        (out, gpu.read_f32_blocking(&self.state, c.layout.state_len()).unwrap())
    }
}

fn run_recurrent(gpu: &Device, c: &Case) -> (Vec<f32>, Vec<f32>) {
    let bufs = GpuCase::new(gpu, c);
    let mut prog = Program::new();
    delta_net::record_recurrent(&mut prog, gpu, &c.layout, c.n_tok, &bufs.buffers()).unwrap();
    prog.run(gpu).unwrap();
    bufs.read(gpu, c)
}

fn run_chunked(gpu: &Device, c: &Case) -> (Vec<f32>, Vec<f32>) {
    let bufs = GpuCase::new(gpu, c);
    let scratch = gpu.storage("scratch", 4 * delta_net::chunked_scratch_len(&c.layout, c.n_tok) as u64).unwrap();
    let mut prog = Program::new();
    delta_net::record_chunked(&mut prog, gpu, &c.layout, c.n_tok, &bufs.buffers(), &scratch).unwrap();
    prog.run(gpu).unwrap();
    bufs.read(gpu, c)
}

/// (Hk, Hv, d, k-head mapping) of the shapes under test.
const SHAPES: [(u32, u32, u32, KHeads); 5] = [
    (2, 4, 16, KHeads::Tiled),
    (2, 4, 16, KHeads::Grouped),
    (2, 2, 16, KHeads::Grouped),
    (2, 2, 32, KHeads::Tiled),
    (1, 2, 128, KHeads::Tiled),
];

/// The recurrent kernel (in the adapter's geometry) against the CPU recurrence; 1000 tokens
/// take several dispatches, each going on from the state the one before left (llvmpipe stops
/// a shader's loops after 65535 iterations, which one dispatch of them reached).
#[test]
fn gpu_recurrent_matches_cpu_recurrence() {
    let gpu = gpu();
    for (hk, hv, d, map) in SHAPES {
        let layout = DeltaNetLayout::conv_rows(hk, hv, d, d, map);
        let lens: &[usize] = if d == 128 { &[1, 65, 200, 1000] } else { &[1, 63, 64, 65, 200] };
        for &n in lens {
            let c = Case::new(layout, n, 7 + n as u64);
            let (want_o, want_s) = c.recurrent_ref();
            let (o, s) = run_recurrent(&gpu, &c);
            let (eo, es) = (rel_l2(&o, &want_o), rel_l2(&s, &want_s));
            eprintln!("recurrent Hk={hk} Hv={hv} d={d} {map:?} T={n}: out {eo:.2e}, state {es:.2e}");
            assert!(eo <= TOL_GPU && es <= TOL_GPU, "Hk={hk} Hv={hv} d={d} {map:?} T={n}: out {eo:.2e}, state {es:.2e}");
        }
    }
}

#[test]
fn gpu_chunked_matches_cpu_recurrence() {
    let gpu = gpu();
    for (hk, hv, d, map) in SHAPES {
        let layout = DeltaNetLayout::conv_rows(hk, hv, d, d, map);
        let lens: &[usize] = if d == 128 { &[1, 65, 200] } else { &[1, 63, 64, 65, 200] };
        for &n in lens {
            let c = Case::new(layout, n, 50 + n as u64);
            let (want_o, want_s) = c.recurrent_ref();
            let (o, s) = run_chunked(&gpu, &c);
            let (eo, es) = (rel_l2(&o, &want_o), rel_l2(&s, &want_s));
            eprintln!("chunked Hk={hk} Hv={hv} d={d} {map:?} T={n}: out {eo:.2e}, state {es:.2e}");
            assert!(eo <= TOL_GPU && es <= TOL_GPU, "Hk={hk} Hv={hv} d={d} {map:?} T={n}: out {eo:.2e}, state {es:.2e}");
        }
    }
}

/// Chunked prefill of 70 tokens, then three single-token decode steps on the state it left
/// (d_k = 32, d_v = 40: partial column blocks in both kernels),
/// equal the recurrence over all 73 tokens.
#[test]
fn decode_after_chunked_prefill_continues_the_recurrence() {
    let gpu = gpu();
    let layout = DeltaNetLayout::conv_rows(2, 4, 32, 40, KHeads::Tiled);
    let (n_prefill, n_all) = (70, 73);
    let all = Case::new(layout, n_all, 11);
    let (want_o, want_s) = all.recurrent_ref();
    let hv = layout.n_v_heads as usize;
    let stride = layout.row_stride as usize;
    let window = |c: &Case, t0: usize, n: usize| Case {
        layout,
        n_tok: n,
        qkv: c.qkv[t0 * stride..t0 * stride + layout.qkv_len(n)].to_vec(),
        g: c.g[t0 * hv..(t0 + n) * hv].to_vec(),
        beta: c.beta[t0 * hv..(t0 + n) * hv].to_vec(),
        state: c.state.clone(),
    };
    let prefill = window(&all, 0, n_prefill);
    let (mut o, mut s) = run_chunked(&gpu, &prefill);
    for t in n_prefill..n_all {
        let step = Case { state: s, ..window(&all, t, 1) };
        let (o1, s1) = run_recurrent(&gpu, &step);
        o.extend(o1);
        s = s1;
    }
    let (eo, es) = (rel_l2(&o, &want_o), rel_l2(&s, &want_s));
    eprintln!("prefill {n_prefill} + decode: out {eo:.2e}, state {es:.2e}");
    assert!(eo <= TOL_GPU && es <= TOL_GPU, "out {eo:.2e}, state {es:.2e}");
    // The decode outputs alone (the last three rows) too.
    let tail = (n_all - n_prefill) * hv * layout.d_v as usize;
    assert!(rel_l2(&o[o.len() - tail..], &want_o[want_o.len() - tail..]) <= TOL_GPU);
}

#[test]
fn cpu_chunked_matches_cpu_recurrence() {
    for (hk, hv, d, map) in SHAPES {
        let layout = DeltaNetLayout::conv_rows(hk, hv, d, d, map);
        let lens: &[usize] = if d == 128 { &[1, 64, 65] } else { &[1, 63, 64, 65, 200] };
        for &n in lens {
            let c = Case::new(layout, n, 100 + n as u64);
            let (want_o, want_s) = c.recurrent_ref();
            let (o, s) = c.chunked_ref();
            let (eo, es) = (rel_l2(&o, &want_o), rel_l2(&s, &want_s));
            eprintln!("chunked ref Hk={hk} Hv={hv} d={d} {map:?} T={n}: out {eo:.2e}, state {es:.2e}");
            assert!(eo <= TOL_CHUNKED_REF && es <= TOL_CHUNKED_REF, "d={d} T={n}: out {eo:.2e}, state {es:.2e}");
        }
    }
}

/// The two mappings differ when Hv > Hk (so the test above can tell them apart), and a
/// different v-head window (rows with extra columns, q/k/v not packed) is honoured.
#[test]
fn head_mapping_and_row_windows() {
    let gpu = gpu();
    let tiled = DeltaNetLayout::conv_rows(2, 4, 16, 16, KHeads::Tiled);
    assert_eq!((0..4).map(|h| tiled.k_head(h)).collect::<Vec<_>>(), [0, 1, 0, 1]);
    let grouped = DeltaNetLayout { k_heads: KHeads::Grouped, ..tiled };
    assert_eq!((0..4).map(|h| grouped.k_head(h)).collect::<Vec<_>>(), [0, 0, 1, 1]);
    let c = Case::new(tiled, 5, 3);
    let other = Case { layout: grouped, ..Case::new(tiled, 5, 3) };
    assert!(rel_l2(&c.recurrent_ref().0, &other.recurrent_ref().0) > 1e-2);
    // v first, then k, then q, in rows 10 floats wider than needed.
    let shuffled = DeltaNetLayout { row_stride: 2 * 32 + 64 + 10, v_offset: 3, k_offset: 67, q_offset: 99 + 5, ..tiled };
    let c = Case::new(shuffled, 9, 4);
    let (want_o, want_s) = c.recurrent_ref();
    let (o, s) = run_recurrent(&gpu, &c);
    assert!(rel_l2(&o, &want_o) <= TOL_GPU && rel_l2(&s, &want_s) <= TOL_GPU);
}

#[test]
fn bad_shapes_are_errors() {
    let gpu = gpu();
    let good = DeltaNetLayout::conv_rows(2, 4, 16, 16, KHeads::Tiled);
    let c = Case::new(good, 4, 1);
    let bufs = GpuCase::new(&gpu, &c);
    let record = |layout: &DeltaNetLayout, n_tok: usize, b: &DeltaNetBuffers<'_>| {
        delta_net::record_recurrent(&mut Program::new(), &gpu, layout, n_tok, b)
    };
    let shape_err = |r: webvlm::backend::gpu::Result<()>, what: &str| {
        assert!(matches!(r, Err(GpuError::Shape(_))), "{what}: {:?}", r.err());
    };
    record(&good, 4, &bufs.buffers()).unwrap();
    shape_err(record(&DeltaNetLayout { n_v_heads: 3, ..good }, 4, &bufs.buffers()), "Hv not a multiple of Hk");
    shape_err(record(&DeltaNetLayout { n_k_heads: 0, ..good }, 4, &bufs.buffers()), "no k heads");
    shape_err(record(&DeltaNetLayout { d_k: 256, ..good }, 4, &bufs.buffers()), "d_k > 128");
    shape_err(record(&DeltaNetLayout { d_v: 0, ..good }, 4, &bufs.buffers()), "d_v = 0");
    shape_err(record(&DeltaNetLayout { v_offset: 70, ..good }, 4, &bufs.buffers()), "v past the row");
    shape_err(record(&good, 0, &bufs.buffers()), "no tokens");
    shape_err(record(&good, 5, &bufs.buffers()), "more tokens than rows");
    let small = gpu.storage("small", 16).unwrap();
    shape_err(record(&good, 4, &DeltaNetBuffers { state: &small, ..bufs.buffers() }), "small state");
    shape_err(record(&good, 4, &DeltaNetBuffers { g: &small, ..bufs.buffers() }), "small g");
    shape_err(record(&good, 4, &DeltaNetBuffers { beta: &small, ..bufs.buffers() }), "small beta");
    shape_err(record(&good, 4, &DeltaNetBuffers { out: &small, ..bufs.buffers() }), "small out");
    let chunked = |scratch: &Buffer| delta_net::record_chunked(&mut Program::new(), &gpu, &good, 4, &bufs.buffers(), scratch);
    let scratch = gpu.storage("scratch", 4 * delta_net::chunked_scratch_len(&good, 4) as u64).unwrap();
    chunked(&scratch).unwrap();
    shape_err(chunked(&small), "small scratch");
    let r =
        delta_net::record_chunked(&mut Program::new(), &gpu, &DeltaNetLayout { d_k: 129, ..good }, 4, &bufs.buffers(), &scratch);
    shape_err(r, "chunked d_k > 128");
}

/// Transformers' own `torch_recurrent_gated_delta_rule` and `torch_chunk_gated_delta_rule`
/// (`tests/fixtures/delta_rule`, made by `scripts/make_qwen35_models.py`: H = 2 heads of 16,
/// q and k already one per v head, a nonzero initial state, T = 1, 65, 130): the CPU
/// references and both GPU kernels give torch's outputs and final states.
#[test]
fn matches_transformers_delta_rule() {
    #[derive(serde::Deserialize)]
    struct Cases {
        cases: Vec<TorchCase>,
    }
    #[derive(serde::Deserialize)]
    struct TorchCase {
        name: String,
        #[serde(rename = "T")]
        t: usize,
        #[serde(rename = "H")]
        h: u32,
        d_k: u32,
        d_v: u32,
        files: std::collections::HashMap<String, String>,
    }
    let root = fixture("delta_rule");
    let cases: Cases = serde_json::from_str(&std::fs::read_to_string(root.join("cases.json")).unwrap()).unwrap();
    assert_eq!(cases.cases.len(), 3);
    let gpu = gpu();
    for tc in &cases.cases {
        let npy = |key: &str| read_npy(&root.join(&tc.files[key])).1;
        let layout = DeltaNetLayout::conv_rows(tc.h, tc.h, tc.d_k, tc.d_v, KHeads::Grouped);
        let (q, k, v) = (npy("q"), npy("k"), npy("v"));
        let (qk, vw) = ((tc.h * tc.d_k) as usize, (tc.h * tc.d_v) as usize);
        let qkv = (0..tc.t).flat_map(|t| [&q[t * qk..][..qk], &k[t * qk..][..qk], &v[t * vw..][..vw]].concat()).collect();
        let c = Case { layout, n_tok: tc.t, qkv, g: npy("g"), beta: npy("beta"), state: npy("initial_state") };
        let (want_o, want_s) = (npy("out_recurrent"), npy("state_recurrent"));
        // torch's chunked form agrees with its recurrence (a check of the fixture itself).
        assert!(rel_l2(&npy("out_chunk"), &want_o) <= TOL_GPU, "{}: torch chunked vs recurrent", tc.name);
        let runs = [
            ("CPU recurrent", c.recurrent_ref()),
            ("CPU chunked", c.chunked_ref()),
            ("GPU recurrent", run_recurrent(&gpu, &c)),
            ("GPU chunked", run_chunked(&gpu, &c)),
        ];
        for (label, (o, s)) in runs {
            let (eo, es) = (rel_l2(&o, &want_o), rel_l2(&s, &want_s));
            eprintln!("{} {label} vs transformers: out {eo:.2e}, state {es:.2e}", tc.name);
            assert!(eo <= TOL_GPU && es <= TOL_GPU, "{} {label}: out {eo:.2e}, state {es:.2e}", tc.name);
        }
    }
}
