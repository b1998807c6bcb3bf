//! GGUF metadata: an ordered key → value map with typed getters.
//!
//! Reference: GGUF spec (`ggml/docs/gguf.md`, "Standardized key-value pairs"). Getters
//! convert between compatible types (any integer that fits, floats from integers) and
//! report typed errors for absent keys, wrong types and out-of-range values.

use std::collections::HashMap;

use super::error::GgufError;
use super::value::MetaValue;

/// Builds the key `"{arch}.{suffix}"`, e.g. `arch_key("llama", "block_count")`.
pub fn arch_key(arch: &str, suffix: &str) -> String {
    format!("{arch}.{suffix}")
}

/// Metadata key/value pairs in file order, with lookup by key.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata {
    entries: Vec<(String, MetaValue)>,
    index: HashMap<String, usize>,
}

fn wrong(key: &str, expected: &'static str, v: &MetaValue) -> GgufError {
    GgufError::WrongType { key: key.to_owned(), expected, found: v.value_type().name() }
}

fn int_to<T: TryFrom<i128>>(key: &str, v: &MetaValue, target: &'static str) -> Result<T, GgufError> {
    let i = v.as_i128().ok_or_else(|| wrong(key, target, v))?;
    T::try_from(i).map_err(|_| GgufError::ValueOutOfRange { key: key.to_owned(), value: i.to_string(), target })
}

fn to_f32(key: &str, v: &MetaValue) -> Result<f32, GgufError> {
    let f = v.as_f64().ok_or_else(|| wrong(key, "number", v))?;
    let g = f as f32;
    if f.is_finite() && !g.is_finite() {
        return Err(GgufError::ValueOutOfRange { key: key.to_owned(), value: f.to_string(), target: "f32" });
    }
    Ok(g)
}

impl Metadata {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a pair; a key already present is a `DuplicateKey` error.
    pub fn insert(&mut self, key: String, value: MetaValue) -> Result<(), GgufError> {
        if self.index.contains_key(&key) {
            return Err(GgufError::DuplicateKey(key));
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, value));
        Ok(())
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The pairs in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &MetaValue)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The raw value of a key.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    /// Whether the key is present.
    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    fn require(&self, key: &str) -> Result<&MetaValue, GgufError> {
        self.get(key).ok_or_else(|| GgufError::MissingKey(key.to_owned()))
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str, GgufError> {
        self.get_str("general.architecture")
    }

    /// A string value.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| wrong(key, "string", v))
    }

    /// Any integer value that fits `u32`.
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        int_to(key, self.require(key)?, "u32")
    }

    /// Any integer value that fits `u64`.
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        int_to(key, self.require(key)?, "u64")
    }

    /// Any integer value that fits `i64`.
    pub fn get_i64(&self, key: &str) -> Result<i64, GgufError> {
        int_to(key, self.require(key)?, "i64")
    }

    /// A float or integer value as `f32`; a finite value beyond the f32 range is an error.
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        to_f32(key, self.require(key)?)
    }

    /// A bool value.
    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        match self.require(key)? {
            MetaValue::Bool(b) => Ok(*b),
            v => Err(wrong(key, "bool", v)),
        }
    }

    fn items(&self, key: &str, expected: &'static str) -> Result<&[MetaValue], GgufError> {
        let v = self.require(key)?;
        v.as_array().ok_or_else(|| wrong(key, expected, v))
    }

    /// An array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        let items = self.items(key, "array of string")?;
        items.iter().map(|v| v.as_str().ok_or_else(|| wrong(key, "array of string", v))).collect()
    }

    /// An array of numbers as `f32`.
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>, GgufError> {
        let items = self.items(key, "array of number")?;
        items.iter().map(|v| to_f32(key, v)).collect()
    }

    /// An array of integers that each fit `i32`.
    pub fn get_i32_array(&self, key: &str) -> Result<Vec<i32>, GgufError> {
        let items = self.items(key, "array of integer")?;
        items.iter().map(|v| int_to(key, v, "i32")).collect()
    }

    fn opt<'a, T>(&'a self, key: &str, f: impl FnOnce(&'a Self) -> Result<T, GgufError>) -> Result<Option<T>, GgufError> {
        if self.contains(key) {
            f(self).map(Some)
        } else {
            Ok(None)
        }
    }

    /// `get_str`, or `None` when absent.
    pub fn get_opt_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.opt(key, |m| m.get_str(key))
    }

    /// `get_u32`, or `None` when absent.
    pub fn get_opt_u32(&self, key: &str) -> Result<Option<u32>, GgufError> {
        self.opt(key, |m| m.get_u32(key))
    }

    /// `get_u64`, or `None` when absent.
    pub fn get_opt_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.opt(key, |m| m.get_u64(key))
    }

    /// `get_f32`, or `None` when absent.
    pub fn get_opt_f32(&self, key: &str) -> Result<Option<f32>, GgufError> {
        self.opt(key, |m| m.get_f32(key))
    }

    /// `get_bool`, or `None` when absent.
    pub fn get_opt_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        self.opt(key, |m| m.get_bool(key))
    }

    /// `get_str_array`, or `None` when absent.
    pub fn get_opt_str_array(&self, key: &str) -> Result<Option<Vec<&str>>, GgufError> {
        self.opt(key, |m| m.get_str_array(key))
    }

    /// `get_f32_array`, or `None` when absent.
    pub fn get_opt_f32_array(&self, key: &str) -> Result<Option<Vec<f32>>, GgufError> {
        self.opt(key, |m| m.get_f32_array(key))
    }

    /// `get_i32_array`, or `None` when absent.
    pub fn get_opt_i32_array(&self, key: &str) -> Result<Option<Vec<i32>>, GgufError> {
        self.opt(key, |m| m.get_i32_array(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::value::ValueType;

    #[test]
    fn getters_convert_and_report_typed_errors() {
        let mut m = Metadata::new();
        m.insert("a.u8".into(), MetaValue::U8(7)).unwrap();
        m.insert("a.neg".into(), MetaValue::I32(-1)).unwrap();
        m.insert("a.big".into(), MetaValue::U64(1 << 40)).unwrap();
        m.insert("a.f".into(), MetaValue::F64(0.5)).unwrap();
        m.insert("a.s".into(), MetaValue::String("x".into())).unwrap();
        let ints = (0..3).map(MetaValue::I16).collect();
        m.insert("a.arr".into(), MetaValue::Array { elem: ValueType::I16, items: ints }).unwrap();
        assert_eq!(m.get_u32("a.u8").unwrap(), 7);
        assert_eq!(m.get_f32("a.u8").unwrap(), 7.0);
        assert_eq!(m.get_f32("a.f").unwrap(), 0.5);
        assert_eq!(m.get_u64("a.big").unwrap(), 1 << 40);
        assert_eq!(m.get_i32_array("a.arr").unwrap(), vec![0, 1, 2]);
        assert_eq!(m.get_f32_array("a.arr").unwrap(), vec![0.0, 1.0, 2.0]);
        assert!(matches!(m.get_u32("a.neg"), Err(GgufError::ValueOutOfRange { .. })));
        assert!(matches!(m.get_u32("a.big"), Err(GgufError::ValueOutOfRange { .. })));
        assert!(matches!(m.get_u32("a.s"), Err(GgufError::WrongType { found: "string", .. })));
        assert!(matches!(m.get_str("nope"), Err(GgufError::MissingKey(_))));
        assert_eq!(m.get_opt_str("nope").unwrap(), None);
        assert!(m.get_opt_bool("a.s").is_err());
        assert!(matches!(m.insert("a.s".into(), MetaValue::Bool(true)), Err(GgufError::DuplicateKey(_))));
        assert_eq!(arch_key("llama", "block_count"), "llama.block_count");
    }
}
