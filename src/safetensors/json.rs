//! A JSON tree that keeps every key of an object in order, duplicates included.
//!
//! `serde_json::Value` keeps only the last of two equal keys, so a header listing a tensor
//! twice (or an entry with two `data_offsets`) would be read silently as whichever came
//! last, while another reader may take the first. Parsing into [`Node`] lets the header and
//! index readers refuse duplicates instead. Only the shapes those readers need are kept:
//! numbers other than non-negative integers become [`Node::Other`]. Arrays and objects are
//! capped ([`MAX_ARRAY_LEN`], [`MAX_MEMBERS`]) so that a header at the length limit cannot
//! make the tree many times its own size (a `[0,0,...]` is 2 bytes of text per 32-byte node).

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// Most items of one array: shapes have at most `MAX_DIMS`, offsets two.
pub(crate) const MAX_ARRAY_LEN: usize = 64;
/// Most members of one object (a header's tensors, an index's weight map).
pub(crate) const MAX_MEMBERS: usize = 1 << 20;

/// A parsed JSON value.
#[derive(Debug, PartialEq)]
pub(crate) enum Node {
    /// An object's members in file order, duplicate keys kept.
    Object(Vec<(String, Node)>),
    Array(Vec<Node>),
    String(String),
    /// A non-negative integer that fits u64.
    Uint(u64),
    /// Anything else (null, bool, negative or fractional number), by kind.
    Other(&'static str),
}

impl Node {
    /// Parses JSON text.
    pub(crate) fn parse(text: &str) -> Result<Node, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The first repeated key of an object, if any (None for non-objects).
    pub(crate) fn duplicate_key(members: &[(String, Node)]) -> Option<&str> {
        let mut seen = std::collections::HashSet::with_capacity(members.len());
        members.iter().map(|(k, _)| k.as_str()).find(|k| !seen.insert(*k))
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Other("a bool"))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(u64::try_from(v).map_or(Node::Other("a negative number"), Node::Uint))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Uint(v))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Other("a non-integer number"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Other("null"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            if items.len() == MAX_ARRAY_LEN {
                return Err(de::Error::custom(format_args!("array longer than {MAX_ARRAY_LEN} items")));
            }
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut members = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Node>()? {
            if members.len() == MAX_MEMBERS {
                return Err(de::Error::custom(format_args!("object with more than {MAX_MEMBERS} members")));
            }
            members.push((k, v));
        }
        Ok(Node::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::{Node, MAX_ARRAY_LEN};

    #[test]
    fn keeps_duplicate_keys_in_order() {
        let Node::Object(members) = Node::parse(r#"{"a": 1, "b": [2, -3, 0.5, null, true], "a": "x"}"#).unwrap() else {
            panic!("not an object");
        };
        assert_eq!(members.len(), 3);
        assert_eq!(members[0], ("a".to_owned(), Node::Uint(1)));
        assert_eq!(
            members[1].1,
            Node::Array(vec![
                Node::Uint(2),
                Node::Other("a negative number"),
                Node::Other("a non-integer number"),
                Node::Other("null"),
                Node::Other("a bool"),
            ])
        );
        assert_eq!(Node::duplicate_key(&members), Some("a"));
    }

    #[test]
    fn caps_array_length() {
        let items = |n: usize| format!("[{}]", vec!["0"; n].join(","));
        assert!(Node::parse(&items(MAX_ARRAY_LEN)).is_ok());
        let err = Node::parse(&items(MAX_ARRAY_LEN + 1)).unwrap_err();
        assert!(err.to_string().contains("array longer than 64"), "{err}");
    }
}
