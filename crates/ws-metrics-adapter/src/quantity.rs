//! Canonical Kubernetes `resource.Quantity` strings (DecimalSI format) for values kept as integer
//! milli-units, byte-for-byte what `resource.NewMilliQuantity(milli, resource.DecimalSI).String()`
//! prints in Go; plus the conversion of float samples into milli-units.

/// Largest magnitude accepted by [`milli_from_f64`]: 9.2e15, so that the value in milli-units
/// (at most 9.2e18) fits an `i64` (whose limit is about 9.223e18).
const MAX_ABS_VALUE: f64 = 9.2e15;

/// Formats a value given in milli-units as the canonical DecimalSI Quantity string the Go stack
/// emits.
///
/// The value is `milli × 10⁻³`. Trailing zeros of the mantissa move into the exponent, then the
/// exponent is lowered to a multiple of three (scaling the mantissa by 10 or 100) and written as an
/// SI suffix: `m` (10⁻³), none, `k`, `M`, `G`, `T`, `P` (10¹⁵, the largest an `i64` of milli-units
/// reaches). Examples: `1500` → `"1500m"`, `1_000_000` → `"1k"`, `120_000_000` → `"120k"`,
/// `0` → `"0"`, `-3000` → `"-3"`. Never panics, including for `i64::MIN` and `i64::MAX`.
#[must_use]
pub(crate) fn format_milli(milli: i64) -> String {
    if milli == 0 {
        return "0".to_owned();
    }
    // i128 keeps the magnitude of i64::MIN and the ×100 scaling below free of overflow.
    let negative = milli < 0;
    let mut mantissa = i128::from(milli).abs();
    let mut exponent: i32 = -3;
    while mantissa % 10 == 0 {
        mantissa /= 10;
        exponent += 1;
    }
    // Go's `%` truncates toward zero, hence the paired remainders.
    match exponent % 3 {
        1 | -2 => {
            mantissa *= 10;
            exponent -= 1;
        }
        2 | -1 => {
            mantissa *= 100;
            exponent -= 2;
        }
        _ => {}
    }
    let sign = if negative { "-" } else { "" };
    match si_suffix(exponent) {
        Some(suffix) => format!("{sign}{mantissa}{suffix}"),
        // Unreachable for an i64 of milli-units (exponent stays within -3..=15); Go falls back
        // to the exponent form in this case too.
        None => format!("{sign}{mantissa}e{exponent}"),
    }
}

/// The DecimalSI suffix for a power of ten that is a multiple of three.
fn si_suffix(exponent: i32) -> Option<&'static str> {
    Some(match exponent {
        -9 => "n",
        -6 => "u",
        -3 => "m",
        0 => "",
        3 => "k",
        6 => "M",
        9 => "G",
        12 => "T",
        15 => "P",
        18 => "E",
        _ => return None,
    })
}

/// Converts a float sample value to milli-units, rounding to the nearest milli; `None` for NaN,
/// ±Inf or values outside ±9.2e15 (so that milli fits i64 with headroom).
///
/// A milli-unit is the finest precision kept: `0.0004` becomes `0` and `0.0006` becomes `1`
/// (halfway cases round away from zero). The bounds are inclusive: `±9.2e15` is accepted.
#[must_use]
pub(crate) fn milli_from_f64(value: f64) -> Option<i64> {
    if !value.is_finite() || value.abs() > MAX_ABS_VALUE {
        return None;
    }
    // |value × 1000| <= 9.2e18 < i64::MAX (≈9.223e18), and the value is rounded first, so the
    // cast neither saturates nor truncates.
    #[allow(clippy::cast_possible_truncation)]
    let milli = (value * 1000.0).round() as i64;
    Some(milli)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Test-only parser of `[-]digits[suffix]` back into milli-units.
    fn parse_milli(s: &str) -> Option<i128> {
        let (negative, rest) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let digits_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (digits, suffix) = rest.split_at(digits_end);
        if digits.is_empty() {
            return None;
        }
        let mantissa: i128 = digits.parse().ok()?;
        // Power of ten of the suffix, relative to milli-units.
        let power = match suffix {
            "m" => 0,
            "" => 3,
            "k" => 6,
            "M" => 9,
            "G" => 12,
            "T" => 15,
            "P" => 18,
            "E" => 21,
            _ => return None,
        };
        let magnitude = mantissa.checked_mul(10i128.checked_pow(power)?)?;
        Some(if negative { -magnitude } else { magnitude })
    }

    /// Splits a formatted quantity into its mantissa digits and suffix.
    fn split(s: &str) -> (&str, &str) {
        let unsigned = s.strip_prefix('-').unwrap_or(s);
        let end = unsigned
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(unsigned.len());
        unsigned.split_at(end)
    }

    /// Independent formulation: the largest power of 1000 dividing the milli value picks the suffix.
    fn reference_format(milli: i64) -> String {
        if milli == 0 {
            return "0".to_owned();
        }
        let mut mantissa = i128::from(milli);
        let mut suffixes = ["m", "", "k", "M", "G", "T", "P", "E"].iter();
        let mut suffix = suffixes.next().copied().unwrap_or_default();
        while mantissa % 1000 == 0 {
            mantissa /= 1000;
            suffix = suffixes.next().copied().unwrap_or_default();
        }
        format!("{mantissa}{suffix}")
    }

    #[test]
    fn the_required_vectors_format_as_go_does() {
        let cases: &[(i64, &str)] = &[
            (0, "0"),
            (7_000, "7"),
            (10_000, "10"),
            (412_000, "412"),
            (1_000_000, "1k"),
            (12_000_000, "12k"),
            (120_000_000, "120k"),
            (1_500_000, "1500"),
            (1_234_567_000, "1234567"),
            (2_000_000_000, "2M"),
            (-3_000, "-3"),
            (1_500, "1500m"),
            (500, "500m"),
            (2_250, "2250m"),
            (1_001, "1001m"),
            (1, "1m"),
            (-1, "-1m"),
            (100, "100m"),
            (10, "10m"),
            (-1_500, "-1500m"),
            (3_000_000_000_000, "3G"),
            (4_000_000_000_000_000, "4T"),
            (5_000_000_000_000_000_000, "5P"),
            (10_000_000_000_000_000, "10T"),
            (-120_000_000, "-120k"),
            (i64::MAX, "9223372036854775807m"),
            (i64::MIN, "-9223372036854775808m"),
        ];
        for &(milli, want) in cases {
            assert_eq!(format_milli(milli), want, "format_milli({milli})");
        }
    }

    #[test]
    fn float_values_convert_to_the_nearest_milli() {
        let cases: &[(f64, Option<i64>)] = &[
            (0.0, Some(0)),
            (-0.0, Some(0)),
            (7.0, Some(7_000)),
            (1.5, Some(1_500)),
            (0.5, Some(500)),
            (2.25, Some(2_250)),
            (1.001, Some(1_001)),
            (-3.0, Some(-3_000)),
            (0.0004, Some(0)),
            (0.0006, Some(1)),
            (-0.0006, Some(-1)),
            (9.2e15, Some(9_200_000_000_000_000_000)),
            (-9.2e15, Some(-9_200_000_000_000_000_000)),
            (9.3e15, None),
            (-9.3e15, None),
            (f64::NAN, None),
            (f64::INFINITY, None),
            (f64::NEG_INFINITY, None),
            (f64::MAX, None),
        ];
        for &(value, want) in cases {
            assert_eq!(milli_from_f64(value), want, "milli_from_f64({value})");
        }
    }

    #[test]
    fn a_value_finer_than_a_milli_is_lost_and_formats_as_zero() {
        let milli = milli_from_f64(0.0004);
        assert_eq!(milli, Some(0));
        assert_eq!(milli.map(format_milli).as_deref(), Some("0"));
    }

    #[test]
    fn the_test_parser_reads_back_known_strings() {
        assert_eq!(parse_milli("1500m"), Some(1_500));
        assert_eq!(parse_milli("-120k"), Some(-120_000_000));
        assert_eq!(parse_milli("0"), Some(0));
        assert_eq!(parse_milli("2Ki"), None);
        assert_eq!(parse_milli("k"), None);
    }

    proptest! {
        #[test]
        fn formatting_then_parsing_gives_back_the_same_milli_value(milli in any::<i64>()) {
            let text = format_milli(milli);
            prop_assert_eq!(parse_milli(&text), Some(i128::from(milli)), "text {}", text);
        }

        #[test]
        fn the_output_is_canonical(milli in any::<i64>()) {
            let text = format_milli(milli);
            let (digits, suffix) = split(&text);
            prop_assert!(["m", "", "k", "M", "G", "T", "P"].contains(&suffix), "suffix of {}", text);
            if milli == 0 {
                prop_assert_eq!(text.as_str(), "0");
            } else {
                prop_assert!(!digits.starts_with('0'), "leading zero in {}", text);
                // A mantissa ending in 000 could have taken the next bigger suffix.
                prop_assert!(!digits.ends_with("000"), "non-canonical {}", text);
                prop_assert_eq!(text.starts_with('-'), milli < 0);
            }
        }

        #[test]
        fn the_output_agrees_with_dividing_by_the_largest_power_of_a_thousand(
            milli in prop_oneof![
                any::<i64>(),
                (-999i64..1000, 0u32..=18)
                    .prop_map(|(m, p)| 10i64.checked_pow(p).and_then(|x| x.checked_mul(m)).unwrap_or(m)),
            ]
        ) {
            prop_assert_eq!(format_milli(milli), reference_format(milli));
        }

        #[test]
        fn float_conversion_stays_within_half_a_milli(value in -9.2e12f64..9.2e12) {
            let milli = milli_from_f64(value);
            prop_assert!(milli.is_some());
            let milli = milli.unwrap_or_default();
            // Precision of the float itself at this magnitude, plus the half-milli rounding.
            #[allow(clippy::cast_precision_loss)]
            let error = (milli as f64 / 1000.0 - value).abs();
            prop_assert!(error <= 0.0005 + value.abs() * f64::EPSILON * 4.0,
                "{} -> {} (error {})", value, milli, error);
        }
    }
}
