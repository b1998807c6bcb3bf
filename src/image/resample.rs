//! Bicubic and bilinear resampling that reproduce Pillow's `Image.resize(size, Image.BICUBIC)`
//! and `Image.resize(size, Image.BILINEAR)` on 8-bit RGB images bit for bit.
//!
//! Reference: Pillow's `libImaging/Resample.c` (`precompute_coeffs`,
//! `normalize_coeffs_8bpc`, `ImagingResampleHorizontal_8bpc`, `ImagingResampleVertical_8bpc`,
//! `ImagingResampleInner`). The bicubic filter is Keys' cubic with a = -0.5 and support 2, the
//! bilinear one the triangle `1 - |x|` with support 1; either is widened by the downscale
//! factor (antialiasing). Coefficients are computed in f64, normalised to sum 1,
//! converted to 22-bit fixed point, and each pass rounds and clips to u8: horizontal pass first
//! (only over the source rows the vertical pass reads), then the vertical pass, except that
//! Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many
//! pixels as the width. A pass whose size does not change is skipped, as in Pillow.

/// Fixed-point precision of the 8-bit coefficients (`32 - 8 - 2` in Pillow).
const PRECISION_BITS: u32 = 22;

/// A Pillow resampling filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Filter {
    /// `Image.BICUBIC` (Pixtral, Qwen2-VL processors).
    Bicubic,
    /// `Image.BILINEAR` (the Mllama processor).
    Bilinear,
}

impl Filter {
    /// The kernel's support radius before widening (Pillow's `filter->support`).
    fn support(self) -> f64 {
        match self {
            Filter::Bicubic => 2.0,
            Filter::Bilinear => 1.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Bicubic => bicubic(x),
            Filter::Bilinear => bilinear(x),
        }
    }
}

/// Pillow's `bilinear_filter`: the triangle kernel.
fn bilinear(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Keys' cubic convolution kernel with a = -0.5 (Pillow's `bicubic_filter`).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Per-output-sample source window and fixed-point weights for one axis.
struct Coeffs {
    /// Taps per output sample (the stride of `weights`).
    ksize: usize,
    /// `(first source index, tap count)` per output sample.
    bounds: Vec<(usize, usize)>,
    /// `[out][ksize]` weights in 22-bit fixed point.
    weights: Vec<i32>,
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for the box `[0, in_size)`.
fn precompute(in_size: usize, out_size: usize, filter: Filter) -> Coeffs {
    // Pillow computes `in1 - in0` in C `float`; exact for any size that fits our limits.
    let scale = in_size as f32 as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C `(int)` truncates toward zero; both ends are then clamped to the image.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = xmax.saturating_sub(xmin).min(ksize);
        let mut ww = 0.0;
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        let row = &mut weights[xx * ksize..xx * ksize + n];
        for (dst, &w) in row.iter_mut().zip(&k[..n]) {
            let w = if ww != 0.0 { w / ww } else { w };
            let fixed = w * (1u32 << PRECISION_BITS) as f64;
            *dst = if w < 0.0 { (-0.5 + fixed) as i32 } else { (0.5 + fixed) as i32 };
        }
        bounds.push((xmin, n));
    }
    Coeffs { ksize, bounds, weights }
}

/// Pillow's `clip8`: drop the fixed-point fraction and saturate to u8.
fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Horizontal pass over source rows `[row0, row0 + rows)` of a `w`-wide image.
fn horizontal(src: &[u8], w: usize, row0: usize, rows: usize, c: &Coeffs) -> Vec<u8> {
    let out_w = c.bounds.len();
    let mut out = vec![0u8; 3 * out_w * rows];
    for y in 0..rows {
        let line = &src[3 * w * (y + row0)..3 * w * (y + row0 + 1)];
        for (xx, &(xmin, n)) in c.bounds.iter().enumerate() {
            let k = &c.weights[xx * c.ksize..xx * c.ksize + n];
            let mut ss = [1i32 << (PRECISION_BITS - 1); 3];
            for (x, &kx) in k.iter().enumerate() {
                let p = &line[3 * (xmin + x)..3 * (xmin + x) + 3];
                for ch in 0..3 {
                    ss[ch] = ss[ch].wrapping_add((p[ch] as i32).wrapping_mul(kx));
                }
            }
            for ch in 0..3 {
                out[3 * (y * out_w + xx) + ch] = clip8(ss[ch]);
            }
        }
    }
    out
}

/// Vertical pass over a `w`-wide image; `c.bounds` row indices are shifted by `-row0`.
fn vertical(src: &[u8], w: usize, row0: usize, c: &Coeffs) -> Vec<u8> {
    let out_h = c.bounds.len();
    let mut out = vec![0u8; 3 * w * out_h];
    for (yy, &(ymin, n)) in c.bounds.iter().enumerate() {
        let k = &c.weights[yy * c.ksize..yy * c.ksize + n];
        for xx in 0..w {
            let mut ss = [1i32 << (PRECISION_BITS - 1); 3];
            for (y, &ky) in k.iter().enumerate() {
                let base = 3 * ((ymin + y - row0) * w + xx);
                for ch in 0..3 {
                    ss[ch] = ss[ch].wrapping_add((src[base + ch] as i32).wrapping_mul(ky));
                }
            }
            for ch in 0..3 {
                out[3 * (yy * w + xx) + ch] = clip8(ss[ch]);
            }
        }
    }
    out
}

/// Resizes an interleaved RGB8 image (`src.len() == 3 * w * h`) to `out_w × out_h` with
/// Pillow's bicubic filter. Callers guarantee all four sizes are non-zero.
pub(crate) fn resize_rgb8(src: &[u8], w: usize, h: usize, out_w: usize, out_h: usize) -> Vec<u8> {
    resize_rgb8_with(src, w, h, out_w, out_h, Filter::Bicubic)
}

/// [`resize_rgb8`] with the given filter.
///
/// Pass order follows Pillow 13: horizontal first, unless the height shrinks by more than
/// twice as many pixels as the width does (then vertical first, over the full width).
pub(crate) fn resize_rgb8_with(src: &[u8], w: usize, h: usize, out_w: usize, out_h: usize, filter: Filter) -> Vec<u8> {
    debug_assert_eq!(src.len(), 3 * w * h);
    let (need_h, need_v) = (w != out_w, h != out_h);
    if !need_h && !need_v {
        return src.to_vec();
    }
    let dy = h as i64 - out_h as i64;
    let horizontal_first = !(dy > 0 && dy > (w as i64 - out_w as i64) * 2);
    if horizontal_first {
        if !need_v {
            return horizontal(src, w, 0, h, &precompute(w, out_w, filter));
        }
        let vert = precompute(h, out_h, filter);
        if !need_h {
            return vertical(src, w, 0, &vert);
        }
        // Source rows the vertical pass reads (Pillow's ybox_first / ybox_last).
        let (y_first, y_last) = match (vert.bounds.first(), vert.bounds.last()) {
            (Some(&(f, _)), Some(&(l, n))) => (f, l + n),
            _ => (0, h),
        };
        let tmp = horizontal(src, w, y_first, y_last - y_first, &precompute(w, out_w, filter));
        vertical(&tmp, out_w, y_first, &vert)
    } else {
        let tmp = vertical(src, w, 0, &precompute(h, out_h, filter));
        if !need_h {
            return tmp;
        }
        horizontal(&tmp, w, 0, out_h, &precompute(w, out_w, filter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for filter in [Filter::Bicubic, Filter::Bilinear] {
            for (i, o) in [(100, 28), (28, 112), (1540, 1540 / 3), (7, 5)] {
                let c = precompute(i, o, filter);
                for (xx, &(_, n)) in c.bounds.iter().enumerate() {
                    let s: i32 = c.weights[xx * c.ksize..xx * c.ksize + n].iter().sum();
                    assert!((s - (1 << PRECISION_BITS)).abs() <= n as i32, "{filter:?} {i}->{o} sample {xx}: {s}");
                }
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let src = vec![77u8; 3 * 13 * 9];
        let out = resize_rgb8(&src, 13, 9, 28, 56);
        assert!(out.iter().all(|&v| v == 77));
        let out = resize_rgb8_with(&src, 13, 9, 5, 30, Filter::Bilinear);
        assert!(out.iter().all(|&v| v == 77));
    }

    #[test]
    fn bilinear_upscale_by_two_interpolates() {
        // Pillow: a 2-px row [0, 200] resized to 4 px with BILINEAR gives [0, 50, 150, 200].
        let src = [0, 0, 0, 200, 200, 200];
        let out = resize_rgb8_with(&src, 2, 1, 4, 1, Filter::Bilinear);
        assert_eq!(out.chunks(3).map(|p| p[0]).collect::<Vec<_>>(), vec![0, 50, 150, 200]);
    }
}
