//! The SIMD level the CPU kernels run at, chosen once per process from what the CPU reports
//! at run time (`is_x86_feature_detected!`, `is_aarch64_feature_detected!`), as llama.cpp's
//! ggml-cpu backend picks its `ggml_cpu_has_*` paths and candle its `quantized::{avx, neon}`.
//!
//! wasm32 has no run-time detection inside a module (an engine rejects a module holding an
//! instruction it lacks), so there the levels are those the build enables: `simd128`, and
//! `relaxed-simd` on top of it (`-C target-feature=+simd128,+relaxed-simd`; the page loads the
//! build its browser validates); the scalar level is always there.
//!
//! `WEBVLM_CPU_SIMD=scalar|avx2|avx512|avx512vnni|neon|simd128|relaxed` lowers the level for a
//! process (benchmarks);
//! [`with_level`] runs a closure at any level the machine has (tests compare every level).
//! Kernels read [`level`] once per op, on the calling thread, and carry it into their tasks.

use std::cell::Cell;
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// The environment variable that caps the process's level.
pub const ENV: &str = "WEBVLM_CPU_SIMD";

/// A family of kernels, each needing the CPU features it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Simd {
    /// Portable Rust, no intrinsics.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 F/BW/VL (with AVX2): the AVX2 kernels, on 256-bit vectors (ggml-cpu's
    /// choice too for the row dots: the 512-bit forms gain little where memory binds).
    Avx512,
    /// AVX-512 with VNNI (`vpdpbusd`): the AVX2 kernels with the byte dot products of Q4_0,
    /// Q4_1 and Q8_0 (`maddubs` then `madd`) in one instruction, to the same integer lanes.
    Avx512Vnni,
    /// aarch64 NEON with the dot-product extension (`sdot`): the row dots of every matvec
    /// format in both modes (`quant/neon.rs`, `legacy_neon.rs`, `kquant_neon.rs`), the fast ones
    /// to the scalar kernels' bits; the activation quantizers, the prefill matmul's tiles and the
    /// other ops run the scalar code.
    Neon,
    /// wasm32 SIMD128 (a build with `+simd128`): the row dots of every matvec format in both
    /// modes (`quant/wasm.rs`, `legacy_wasm.rs`, `kquant_wasm.rs`), the fast ones to the scalar
    /// kernels' bits, and the prefill matmul's Q4_0 / Q4_1 / Q8_0 tile (`ltile.rs`); the other
    /// ops (the activation quantizers, the K-quant and f32 tiles too) run the scalar code.
    Simd128,
    /// wasm32 SIMD128 with relaxed SIMD (a build with `+simd128,+relaxed-simd`): the SIMD128
    /// kernels with the 4-, 5- and 6-bit codes' byte dots in `i32x4.relaxed_dot_i8x16_i7x16_add_s`
    /// (the same integer sums) and the exact and float rows' products in `f32x4.relaxed_madd`.
    Relaxed,
}

/// A level the machine cannot run, or a name that is no level.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SimdError {
    #[error("this CPU cannot run SIMD level {0}")]
    Unsupported(Simd),
    #[error("unknown SIMD level {0:?} (scalar, avx2, avx512, avx512vnni, neon, simd128, relaxed)")]
    Unknown(String),
}

impl Simd {
    /// Every level this architecture has kernels for, from the most portable up.
    const LADDER: &[Simd] = if cfg!(target_arch = "x86_64") {
        &[Simd::Scalar, Simd::Avx2, Simd::Avx512, Simd::Avx512Vnni]
    } else if cfg!(target_arch = "aarch64") {
        &[Simd::Scalar, Simd::Neon]
    } else if cfg!(target_arch = "wasm32") {
        &[Simd::Scalar, Simd::Simd128, Simd::Relaxed]
    } else {
        &[Simd::Scalar]
    };

    /// Whether this CPU has the features the level needs (on wasm32: whether the build has
    /// them, see the module docs).
    pub fn is_supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        use std::arch::is_x86_feature_detected as has;
        match self {
            Simd::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Simd::Avx2 => has!("avx2") && has!("fma") && has!("f16c"),
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512 => Simd::Avx2.is_supported() && has!("avx512f") && has!("avx512bw") && has!("avx512vl"),
            #[cfg(target_arch = "x86_64")]
            Simd::Avx512Vnni => Simd::Avx512.is_supported() && has!("avx512vnni"),
            #[cfg(target_arch = "aarch64")]
            Simd::Neon => std::arch::is_aarch64_feature_detected!("neon") && std::arch::is_aarch64_feature_detected!("dotprod"),
            #[cfg(target_arch = "wasm32")]
            Simd::Simd128 => cfg!(target_feature = "simd128"),
            #[cfg(target_arch = "wasm32")]
            Simd::Relaxed => cfg!(target_feature = "simd128") && cfg!(target_feature = "relaxed-simd"),
            _ => false,
        }
    }

    /// Whether the level runs the AVX2 kernels (x86-64 levels from AVX2 up).
    pub fn avx2(self) -> bool {
        matches!(self, Simd::Avx2 | Simd::Avx512 | Simd::Avx512Vnni)
    }

    /// The levels this machine can run, scalar first, best last.
    pub fn available() -> Vec<Simd> {
        Self::LADDER.iter().copied().filter(|l| l.is_supported()).collect()
    }

    /// The best level this machine runs that does not exceed `self` (in this architecture's
    /// order; a level of another architecture caps to scalar).
    pub fn capped(self) -> Simd {
        let top = Self::LADDER.iter().position(|&l| l == self).unwrap_or(0);
        Self::LADDER[..=top].iter().rev().copied().find(|l| l.is_supported()).unwrap_or(Simd::Scalar)
    }

    fn name(self) -> &'static str {
        match self {
            Simd::Scalar => "scalar",
            Simd::Avx2 => "avx2",
            Simd::Avx512 => "avx512",
            Simd::Avx512Vnni => "avx512vnni",
            Simd::Neon => "neon",
            Simd::Simd128 => "simd128",
            Simd::Relaxed => "relaxed",
        }
    }
}

impl fmt::Display for Simd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Simd {
    type Err = SimdError;

    fn from_str(s: &str) -> Result<Simd, SimdError> {
        [Simd::Scalar, Simd::Avx2, Simd::Avx512, Simd::Avx512Vnni, Simd::Neon, Simd::Simd128, Simd::Relaxed]
            .into_iter()
            .find(|l| l.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| SimdError::Unknown(s.to_string()))
    }
}

thread_local! {
    /// [`with_level`]'s override on this thread.
    static OVERRIDE: Cell<Option<Simd>> = const { Cell::new(None) };
}

/// The process's level: the best this machine has, capped by [`ENV`] when that names a
/// level (other values are ignored).
pub fn process_level() -> Simd {
    static LEVEL: OnceLock<Simd> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        let best = Simd::available().last().copied().unwrap_or(Simd::Scalar);
        let asked = std::env::var(ENV).ok().and_then(|v| v.parse::<Simd>().ok());
        asked.map_or(best, Simd::capped)
    })
}

/// The level an op started on this thread runs at: [`with_level`]'s, else [`process_level`].
pub fn level() -> Simd {
    OVERRIDE.with(Cell::get).unwrap_or_else(process_level)
}

/// Runs `f` with [`level`] returning `level` on this thread (restored afterwards, also when
/// `f` panics). Errors when the machine cannot run `level`.
pub fn with_level<R>(level: Simd, f: impl FnOnce() -> R) -> Result<R, SimdError> {
    if !level.is_supported() {
        return Err(SimdError::Unsupported(level));
    }
    struct Restore(Option<Simd>);
    impl Drop for Restore {
        fn drop(&mut self) {
            OVERRIDE.with(|o| o.set(self.0));
        }
    }
    let _restore = Restore(OVERRIDE.with(|o| o.replace(Some(level))));
    Ok(f())
}
