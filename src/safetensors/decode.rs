//! CPU decoding of F32/F16/BF16 tensor bytes to `f32`, for tests and host-side math.
//!
//! Reference: IEEE 754 binary16 and bfloat16 (the upper half of a binary32), converted
//! exactly by the `half` crate; safetensors stores elements little-endian.

use half::{bf16, f16};

use super::dtype::Dtype;
use super::error::SafetensorsError;

/// Decodes little-endian `bytes` of `dtype` (F32, F16 or BF16) to `f32`, exactly. Any other
/// dtype gives `UnsupportedDtype` with an empty tensor name (the caller knows which tensor).
pub fn decode_f32(dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>, SafetensorsError> {
    let ragged = || SafetensorsError::RaggedBytes { dtype: dtype.name(), bytes: bytes.len() };
    let size = match dtype {
        Dtype::F32 => 4,
        Dtype::F16 | Dtype::BF16 => 2,
        _ => return Err(SafetensorsError::UnsupportedDtype { tensor: String::new(), dtype: dtype.name() }),
    };
    if !bytes.len().is_multiple_of(size) {
        return Err(ragged());
    }
    let chunks = bytes.chunks_exact(size);
    Ok(match dtype {
        Dtype::F32 => chunks.map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        Dtype::F16 => chunks.map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        _ => chunks.map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_each_weight_type() {
        assert_eq!(decode_f32(Dtype::F32, &1.5f32.to_le_bytes()).unwrap(), [1.5]);
        // 0x3C00 is 1.0 in binary16; 0xC040 is -3.0 in bfloat16.
        assert_eq!(decode_f32(Dtype::F16, &[0x00, 0x3C]).unwrap(), [1.0]);
        assert_eq!(decode_f32(Dtype::BF16, &[0x40, 0xC0, 0x00, 0x00]).unwrap(), [-3.0, 0.0]);
        assert!(matches!(decode_f32(Dtype::F32, &[0; 6]), Err(SafetensorsError::RaggedBytes { bytes: 6, .. })));
        assert!(matches!(decode_f32(Dtype::I64, &[0; 8]), Err(SafetensorsError::UnsupportedDtype { .. })));
    }
}
