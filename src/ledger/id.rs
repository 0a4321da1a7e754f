//! Validated names: account ids, idempotency keys, free text, currencies.
//!
//! Each type can only be built through its checking constructor, so a value
//! of the type is proof that the input was within bounds. The inner strings
//! are `Arc<str>`: the shell copies ids and references into events, replies
//! and journal records, and an `Arc` clone is one atomic increment.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize};

use super::reason::Reason;

/// Longest account id, in bytes (SPEC: 1 to 64 bytes of `[A-Za-z0-9._:-]`).
pub const MAX_ACCOUNT_ID_BYTES: usize = 64;
/// Longest idempotency key, in bytes (printable ASCII, no spaces).
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;
/// Longest caller reference or operator reason, in bytes of UTF-8.
pub const MAX_TEXT_BYTES: usize = 256;

/// An account id chosen by the platform, e.g. `org_8f2c`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct AccountId(Arc<str>);

impl AccountId {
    pub fn new(s: &str) -> Result<AccountId, Reason> {
        let ok_byte = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-');
        if s.is_empty() || s.len() > MAX_ACCOUNT_ID_BYTES || !s.bytes().all(ok_byte) {
            return Err(Reason::InvalidAccountId);
        }
        Ok(AccountId(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The account's shard among `shards` (at least 1): `stable_hash(id)
    /// mod shards`, the one placement the node's routing and the store's
    /// log both use.
    pub fn shard(&self, shards: u64) -> u64 {
        super::hash::stable_hash(self.0.as_bytes()) % shards.max(1)
    }
}

/// A client-chosen idempotency key: 1 to 128 bytes of printable ASCII
/// (`!` to `~`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct IdemKey(Arc<str>);

impl IdemKey {
    pub fn new(s: &str) -> Result<IdemKey, Reason> {
        if s.is_empty() || s.len() > MAX_IDEMPOTENCY_KEY_BYTES || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Reason::InvalidIdempotencyKey);
        }
        Ok(IdemKey(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Free text from a caller: a request or job reference, a model name, an
/// operator's reason. 1 to 256 bytes of UTF-8 without control characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Text(Arc<str>);

impl Text {
    /// Checks `s`; the refusal is [`Reason::InvalidText`] naming `field`.
    pub fn new(field: &'static str, s: &str) -> Result<Text, Reason> {
        if s.is_empty() || s.len() > MAX_TEXT_BYTES || s.chars().any(char::is_control) {
            return Err(Reason::InvalidText { field });
        }
        Ok(Text(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An ISO 4217-style currency code: three ASCII capital letters. USD by
/// default. An account's currency never changes; amounts carry none of their
/// own, so every amount on an account is in its currency.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency([u8; 3]);

impl Currency {
    pub const USD: Currency = Currency(*b"USD");

    pub fn new(s: &str) -> Result<Currency, Reason> {
        match s.as_bytes() {
            [a, b, c] if [a, b, c].iter().all(|x| x.is_ascii_uppercase()) => Ok(Currency([*a, *b, *c])),
            _ => Err(Reason::InvalidCurrency),
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII capitals get in (see `new`).
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl Default for Currency {
    fn default() -> Currency {
        Currency::USD
    }
}

macro_rules! text_like {
    ($($ty:ident),*) => {$(
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
text_like!(AccountId, IdemKey, Text, Currency);

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

// Deserializing re-runs the checks: bytes from disk or the wire are input too.
impl<'de> Deserialize<'de> for AccountId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        AccountId::new(&s).map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for IdemKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        IdemKey::new(&s).map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Text::new("text", &s).map_err(serde::de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Currency::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_id_is_1_to_64_bytes_of_the_allowed_set() {
        assert!(AccountId::new("org_8f2c").is_ok());
        assert!(AccountId::new("a.b_c:d-E9").is_ok());
        assert!(AccountId::new(&"a".repeat(64)).is_ok());
        assert_eq!(AccountId::new(&"a".repeat(65)), Err(Reason::InvalidAccountId));
        assert_eq!(AccountId::new(""), Err(Reason::InvalidAccountId));
        for bad in ["org 1", "org/1", "örg", "org\n", "a@b", "a*b"] {
            assert_eq!(AccountId::new(bad), Err(Reason::InvalidAccountId), "{bad:?}");
        }
    }

    #[test]
    fn idempotency_key_is_1_to_128_printable_ascii_bytes() {
        assert!(IdemKey::new("req-1/2?x=y").is_ok());
        assert!(IdemKey::new(&"k".repeat(128)).is_ok());
        assert_eq!(IdemKey::new(&"k".repeat(129)), Err(Reason::InvalidIdempotencyKey));
        assert_eq!(IdemKey::new(""), Err(Reason::InvalidIdempotencyKey));
        assert_eq!(IdemKey::new("a b"), Err(Reason::InvalidIdempotencyKey));
        assert_eq!(IdemKey::new("ключ"), Err(Reason::InvalidIdempotencyKey));
    }

    #[test]
    fn text_is_1_to_256_bytes_without_control_characters() {
        assert!(Text::new("reference", "job 42 · llama-3").is_ok());
        assert!(Text::new("reference", &"x".repeat(256)).is_ok());
        let too_long = Text::new("reference", &"x".repeat(257));
        assert_eq!(too_long, Err(Reason::InvalidText { field: "reference" }));
        assert!(Text::new("reason", "").is_err());
        assert!(Text::new("reason", "a\u{0}b").is_err());
    }

    #[test]
    fn currency_is_three_capitals() {
        assert_eq!(Currency::new("EUR").unwrap().as_str(), "EUR");
        for bad in ["usd", "US", "USDT", "U$D", ""] {
            assert_eq!(Currency::new(bad), Err(Reason::InvalidCurrency));
        }
    }

    #[test]
    fn deserializing_checks_again() {
        assert!(serde_json::from_str::<AccountId>("\"org 1\"").is_err());
        assert!(serde_json::from_str::<AccountId>("\"org_1\"").is_ok());
        assert!(serde_json::from_str::<Currency>("\"usd\"").is_err());
    }
}
