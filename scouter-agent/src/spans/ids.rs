//! Trace and span identifiers (W3C trace-context sizes), hex on the wire and in the store.

use std::fmt;
use std::str::FromStr;

use rand::RngCore;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {kind} id {value:?}: expected {digits} lowercase hex digits, not all zero")]
pub struct InvalidId {
    kind: &'static str,
    digits: usize,
    value: String,
}

macro_rules! hex_id {
    ($name:ident, $bytes:literal, $kind:literal) => {
        #[doc = concat!("A ", $kind, " id: ", stringify!($bytes), " bytes, never all zero when valid.")]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub [u8; $bytes]);

        impl $name {
            /// A fresh random, valid id.
            pub fn random() -> Self {
                let mut bytes = [0u8; $bytes];
                while bytes == [0; $bytes] {
                    rand::thread_rng().fill_bytes(&mut bytes);
                }
                Self(bytes)
            }

            pub fn is_valid(self) -> bool {
                self.0 != [0; $bytes]
            }

            pub fn to_hex(self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.to_hex())
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let invalid = || InvalidId { kind: $kind, digits: $bytes * 2, value: s.to_owned() };
                if s.len() != $bytes * 2 || s.bytes().any(|b| b.is_ascii_uppercase()) {
                    return Err(invalid());
                }
                let mut bytes = [0u8; $bytes];
                hex::decode_to_slice(s, &mut bytes).map_err(|_| invalid())?;
                let id = Self(bytes);
                if id.is_valid() {
                    Ok(id)
                } else {
                    Err(invalid())
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.to_hex())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hex_id!(TraceId, 16, "trace");
hex_id!(SpanId, 8, "span");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = TraceId::random();
        assert_eq!(id.to_hex().parse::<TraceId>().unwrap(), id);
        let span = SpanId::random();
        assert_eq!(span.to_string().len(), 16);
        assert_eq!(span.to_hex().parse::<SpanId>().unwrap(), span);
    }

    #[test]
    fn rejects_bad_ids() {
        assert!("00000000000000000000000000000000".parse::<TraceId>().is_err());
        assert!("0af7651916cd43dd8448eb211c80319".parse::<TraceId>().is_err());
        assert!("0AF7651916CD43DD8448EB211C80319C".parse::<TraceId>().is_err());
        assert!("zzf7651916cd43dd8448eb211c80319c".parse::<TraceId>().is_err());
        assert!("b7ad6b7169203331".parse::<SpanId>().is_ok());
    }
}
