//! Exact money: a fixed-point decimal with twelve decimal places.
//!
//! Every amount in prepaid is an integer count of 10⁻¹² units of the account's
//! currency, held in an `i128`. Twelve places is the SPEC's bound (per-token
//! prices such as $0.00000018 must be exact), so every valid amount is
//! represented exactly and every sum, difference and comparison is integer
//! arithmetic: exact, a few nanoseconds, never a float. Parsing and display go
//! through decimal strings; [`rust_decimal::Decimal`] converts both ways for
//! embedders that already use it.
//!
//! This type never checks business bounds (maximum magnitude, positivity):
//! those depend on configuration and on the operation, and live in
//! `ledger::validate`.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Decimal places every amount is exact to.
pub const SCALE: u32 = 12;
/// Units of 10⁻¹² in one whole currency unit.
const ONE: i128 = 1_000_000_000_000;
/// Longest decimal string [`Amount::parse`] reads: bounds the work a hostile
/// input can cause before it is refused.
pub const MAX_AMOUNT_CHARS: usize = 64;

/// An exact amount of money, in 10⁻¹² units. Copy, 16 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(i128);

/// Why a string is not an amount. The ledger maps every case to the stable
/// reason `invalid_amount`; the variant gives the sentence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("the amount is empty")]
    Empty,
    #[error("the amount is longer than {MAX_AMOUNT_CHARS} characters")]
    TooLong,
    #[error("the amount is not a decimal number (digits, one optional '.', an optional leading '-')")]
    NotANumber,
    #[error("the amount has more than {SCALE} decimal places")]
    TooManyDecimals,
    #[error("the amount is too large to represent")]
    Overflow,
}

impl Amount {
    pub const ZERO: Amount = Amount(0);

    /// From a count of 10⁻¹² units.
    pub const fn from_units(units: i128) -> Amount {
        Amount(units)
    }

    /// From whole currency units (dollars). Panics only on overflow, which no
    /// `i64` can cause.
    pub const fn whole(n: i64) -> Amount {
        Amount(n as i128 * ONE)
    }

    /// From cents: `Amount::cents(550)` is 5.50.
    pub const fn cents(n: i64) -> Amount {
        Amount(n as i128 * (ONE / 100))
    }

    /// The count of 10⁻¹² units.
    pub const fn units(self) -> i128 {
        self.0
    }

    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }

    pub const fn is_positive(self) -> bool {
        self.0 > 0
    }

    pub const fn is_negative(self) -> bool {
        self.0 < 0
    }

    pub const fn abs(self) -> Amount {
        Amount(self.0.abs())
    }

    pub fn checked_add(self, rhs: Amount) -> Option<Amount> {
        self.0.checked_add(rhs.0).map(Amount)
    }

    pub fn checked_sub(self, rhs: Amount) -> Option<Amount> {
        self.0.checked_sub(rhs.0).map(Amount)
    }

    /// `self * n`, for planning `n` purchases of one amount.
    pub fn checked_mul_int(self, n: u32) -> Option<Amount> {
        self.0.checked_mul(n as i128).map(Amount)
    }

    /// Parses `"12"`, `"12.50"`, `"-0.00000018"`. Refuses exponents, `+`,
    /// whitespace, more than twelve decimals and anything over
    /// [`MAX_AMOUNT_CHARS`]. Trailing zeros are insignificant: `"1.0"` and
    /// `"1.00"` are the same amount.
    pub fn parse(s: &str) -> Result<Amount, AmountError> {
        if s.is_empty() {
            return Err(AmountError::Empty);
        }
        if s.len() > MAX_AMOUNT_CHARS {
            return Err(AmountError::TooLong);
        }
        let (negative, digits) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (int_part, frac_part) = match digits.split_once('.') {
            Some((i, f)) => (i, f),
            None => (digits, ""),
        };
        let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
        if int_part.is_empty() && frac_part.is_empty()
            || !all_digits(int_part)
            || !all_digits(frac_part)
            || (digits.contains('.') && (int_part.is_empty() || frac_part.is_empty()))
        {
            return Err(AmountError::NotANumber);
        }
        let frac_trimmed = frac_part.trim_end_matches('0');
        if frac_trimmed.len() > SCALE as usize {
            return Err(AmountError::TooManyDecimals);
        }
        let mut units: i128 = 0;
        for b in int_part.bytes() {
            units =
                units.checked_mul(10).and_then(|u| u.checked_add((b - b'0') as i128)).ok_or(AmountError::Overflow)?;
        }
        units = units.checked_mul(ONE).ok_or(AmountError::Overflow)?;
        let mut place = ONE / 10;
        for b in frac_trimmed.bytes() {
            units += (b - b'0') as i128 * place;
            place /= 10;
        }
        Ok(Amount(if negative { -units } else { units }))
    }

    /// Exact conversion to a `rust_decimal::Decimal`.
    pub fn to_decimal(self) -> Decimal {
        Decimal::from_i128_with_scale(self.0, SCALE).normalize()
    }

    /// Exact conversion from a `Decimal`; refuses more than twelve places or
    /// a value that does not fit.
    pub fn from_decimal(d: Decimal) -> Result<Amount, AmountError> {
        let d = d.normalize();
        if d.scale() > SCALE {
            return Err(AmountError::TooManyDecimals);
        }
        let factor = 10i128.pow(SCALE - d.scale());
        d.mantissa().checked_mul(factor).map(Amount).ok_or(AmountError::Overflow)
    }
}

impl fmt::Display for Amount {
    /// Canonical text: at least two decimals, trailing zeros beyond them
    /// dropped: `5.00`, `12.50`, `0.00000018`, `-3.00`. Written from a
    /// buffer on the stack (replies format every amount they carry).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 48];
        f.write_str(self.text(&mut buf))
    }
}

impl Amount {
    /// The canonical text into `buf`, from the right: the sign, the integer
    /// digits, the point and 2 to 12 decimals (at most 41 bytes for i128).
    fn text<'a>(&self, buf: &'a mut [u8; 48]) -> &'a str {
        let abs = self.0.unsigned_abs();
        let mut int = abs / ONE as u128;
        let mut frac = (abs % ONE as u128) as u64;
        // Decimals beyond the second that are trailing zeros are dropped.
        let mut decimals = 12;
        while decimals > 2 && frac.is_multiple_of(10) {
            frac /= 10;
            decimals -= 1;
        }
        let mut at = buf.len();
        for _ in 0..decimals {
            at -= 1;
            buf[at] = b'0' + (frac % 10) as u8;
            frac /= 10;
        }
        at -= 1;
        buf[at] = b'.';
        loop {
            at -= 1;
            buf[at] = b'0' + (int % 10) as u8;
            int /= 10;
            if int == 0 {
                break;
            }
        }
        if self.0 < 0 {
            at -= 1;
            buf[at] = b'-';
        }
        // Only ASCII digits, '.' and '-' were written.
        std::str::from_utf8(&buf[at..]).unwrap_or("")
    }
}

impl FromStr for Amount {
    type Err = AmountError;
    fn from_str(s: &str) -> Result<Amount, AmountError> {
        Amount::parse(s)
    }
}

impl std::ops::Neg for Amount {
    type Output = Amount;
    fn neg(self) -> Amount {
        Amount(-self.0)
    }
}

/// Plain arithmetic is for amounts the ledger already holds: they are bounded
/// by `max_balance`, checked before anything is accepted, far inside `i128`,
/// so it cannot overflow. Input from outside goes through `checked_*`.
impl std::ops::Add for Amount {
    type Output = Amount;
    fn add(self, rhs: Amount) -> Amount {
        Amount(self.0 + rhs.0)
    }
}

impl std::ops::Sub for Amount {
    type Output = Amount;
    fn sub(self, rhs: Amount) -> Amount {
        Amount(self.0 - rhs.0)
    }
}

impl std::ops::AddAssign for Amount {
    fn add_assign(&mut self, rhs: Amount) {
        self.0 += rhs.0;
    }
}

impl std::ops::SubAssign for Amount {
    fn sub_assign(&mut self, rhs: Amount) {
        self.0 -= rhs.0;
    }
}

impl std::iter::Sum for Amount {
    /// Sums amounts the ledger already holds; they are bounded by
    /// `max_balance`, far from `i128`'s range, so this cannot overflow.
    fn sum<I: Iterator<Item = Amount>>(iter: I) -> Amount {
        Amount(iter.map(|a| a.0).sum())
    }
}

/// Text for humans (JSON, TOML): the decimal string. Binary (postcard): the
/// integer count of units, as a varint.
impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() { s.collect_str(self) } else { s.serialize_i128(self.0) }
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Amount, D::Error> {
        if d.is_human_readable() {
            let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
            Amount::parse(&text).map_err(serde::de::Error::custom)
        } else {
            i128::deserialize(d).map(Amount)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Amount {
        Amount::parse(s).unwrap()
    }

    #[test]
    fn parses_exact_decimals() {
        assert_eq!(a("5"), Amount::whole(5));
        assert_eq!(a("5.00"), Amount::cents(500));
        assert_eq!(a("0.00000018").units(), 180_000);
        assert_eq!(a("-3.5"), -Amount::cents(350));
        assert_eq!(a("0.000000000001").units(), 1);
        assert_eq!(a("1.0"), a("1.000000"));
    }

    #[test]
    fn twelve_places_accepted_thirteen_refused() {
        assert_eq!(a("1.123456789012").units(), 1_123_456_789_012);
        assert_eq!(Amount::parse("1.1234567890123"), Err(AmountError::TooManyDecimals));
        // Trailing zeros past twelve places carry no precision.
        assert_eq!(a("1.1234567890120000"), a("1.123456789012"));
    }

    #[test]
    fn refuses_what_is_not_a_number() {
        for bad in
            ["", "abc", "1e5", "+5", " 5", "5 ", "1.2.3", ".5", "5.", "-", "--1", "0x10", "1,5", "NaN", "inf", "٣"]
        {
            assert!(Amount::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(Amount::parse(&"9".repeat(65)), Err(AmountError::TooLong));
        assert_eq!(Amount::parse(&"9".repeat(40)), Err(AmountError::Overflow));
    }

    #[test]
    fn displays_money_with_at_least_two_decimals() {
        assert_eq!(a("5").to_string(), "5.00");
        assert_eq!(a("12.5").to_string(), "12.50");
        assert_eq!(a("0.00000018").to_string(), "0.00000018");
        assert_eq!(a("-3").to_string(), "-3.00");
        assert_eq!(Amount::ZERO.to_string(), "0.00");
        assert_eq!(a("1000000").to_string(), "1000000.00");
        assert_eq!(a("-0.000000000001").to_string(), "-0.000000000001");
        assert_eq!(a("0.1").to_string(), "0.10");
        // The widest values, against the plain arithmetic written out.
        for units in [i128::MAX, i128::MIN, i128::MIN + 1, 1, -1, 999_999_999_999, 1_000_000_000_001] {
            let abs = units.unsigned_abs();
            let mut frac = format!("{:012}", abs % 1_000_000_000_000);
            while frac.len() > 2 && frac.ends_with('0') {
                frac.pop();
            }
            let sign = if units < 0 { "-" } else { "" };
            let expected = format!("{sign}{}.{frac}", abs / 1_000_000_000_000);
            assert_eq!(Amount::from_units(units).to_string(), expected);
        }
    }

    #[test]
    fn decimal_round_trip_is_exact() {
        for s in ["0", "5.00", "0.00000018", "-123456789.123456789012", "1000000000000"] {
            let amount = a(s);
            let dec = amount.to_decimal();
            assert_eq!(Amount::from_decimal(dec), Ok(amount), "{s}");
            assert_eq!(dec.to_string().parse::<Amount>(), Ok(amount));
        }
        let too_fine = Decimal::from_str("0.0000000000001").unwrap();
        assert_eq!(Amount::from_decimal(too_fine), Err(AmountError::TooManyDecimals));
    }

    #[test]
    fn serde_is_text_for_humans_and_integer_for_postcard() {
        let amount = a("0.00000018");
        assert_eq!(serde_json::to_string(&amount).unwrap(), "\"0.00000018\"");
        assert_eq!(serde_json::from_str::<Amount>("\"0.00000018\"").unwrap(), amount);
        assert!(serde_json::from_str::<Amount>("\"0.0000000000001\"").is_err());
        let bytes = postcard::to_allocvec(&amount).unwrap();
        assert_eq!(postcard::from_bytes::<Amount>(&bytes).unwrap(), amount);
    }
}
