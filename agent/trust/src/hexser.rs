//! Serde helpers that carry SHA-256 digests as lower-case hex strings in JSON.

use serde::{Deserialize, Deserializer, Serializer};

fn decode<E: serde::de::Error>(text: &str) -> Result<[u8; 32], E> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out)
        .map_err(|e| E::custom(format!("not a 64-digit hex digest: {e}")))?;
    Ok(out)
}

/// One digest as a hex string.
pub(crate) mod digest {
    use super::*;

    /// Serialises a digest as 64 hex digits.
    pub(crate) fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    /// Parses 64 hex digits.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        decode(&text)
    }
}

/// A list of digests as a list of hex strings.
pub(crate) mod digests {
    use super::*;
    use serde::ser::SerializeSeq;

    /// Serialises each digest as 64 hex digits.
    pub(crate) fn serialize<S: Serializer>(list: &[[u8; 32]], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(list.len()))?;
        for bytes in list {
            seq.serialize_element(&hex::encode(bytes))?;
        }
        seq.end()
    }

    /// Parses a list of 64-hex-digit strings.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<[u8; 32]>, D::Error> {
        let texts = Vec::<std::borrow::Cow<'de, str>>::deserialize(d)?;
        texts.iter().map(|t| decode(t)).collect()
    }
}
