//! Dates as HTTP writes them (IMF-fixdate: `Last-Modified`,
//! `If-Modified-Since`), and the proleptic Gregorian calendar behind them,
//! which the access log's RFC 3339 times use too.

const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
/// 9999-12-31T23:59:59Z: the last second with a four-digit year.
const LAST_DATE: i64 = 253_402_300_799;

/// `secs` since the epoch as an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37
/// GMT`), clamped to years 1970..=9999.
pub fn http_date(secs: i64) -> String {
    let secs = secs.clamp(0, LAST_DATE);
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday.
    let weekday = DAYS[(days + 4).rem_euclid(7) as usize];
    format!(
        "{weekday}, {day:02} {} {year:04} {:02}:{:02}:{:02} GMT",
        MONTHS[month as usize - 1],
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// An IMF-fixdate (exactly `Www, DD Mon YYYY HH:MM:SS GMT`) as seconds since
/// the epoch. The weekday must be a day's name but is not checked against
/// the date; a second of 60 (a leap second) is accepted.
pub fn parse_http_date(value: &[u8]) -> Option<i64> {
    let v: &[u8; 29] = value.try_into().ok()?;
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        v[range].iter().try_fold(0i64, |acc, &b| {
            b.is_ascii_digit().then(|| acc * 10 + i64::from(b - b'0'))
        })
    };
    let punct = [
        (3, b','),
        (4, b' '),
        (7, b' '),
        (11, b' '),
        (16, b' '),
        (19, b':'),
        (22, b':'),
    ];
    if !punct.iter().all(|&(i, c)| v[i] == c) || &v[25..] != b" GMT" {
        return None;
    }
    DAYS.iter().position(|d| d.as_bytes() == &v[..3])?;
    let month = MONTHS.iter().position(|m| m.as_bytes() == &v[8..11])? as u32 + 1;
    let (day, year) = (num(5..7)?, num(12..16)?);
    let (hour, minute, second) = (num(17..19)?, num(20..22)?, num(23..25)?);
    if day < 1 || day > i64::from(days_in_month(year, month)) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day as u32);
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`: eras of 400 years, years starting in March).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400); // [0, 399]
    let mp = i64::from((month + 9) % 12); // March = 0
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The inverse of `days_from_civil`: (year, month 1-12, day 1-31).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // March = 0
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_format_and_parse_on_known_values() {
        let known = [
            (784_111_777, "Sun, 06 Nov 1994 08:49:37 GMT"),
            (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT"),
            (951_868_799, "Tue, 29 Feb 2000 23:59:59 GMT"),
            (1_709_251_199, "Thu, 29 Feb 2024 23:59:59 GMT"),
            (4_107_542_400, "Mon, 01 Mar 2100 00:00:00 GMT"),
            (LAST_DATE, "Fri, 31 Dec 9999 23:59:59 GMT"),
        ];
        for (secs, text) in known {
            assert_eq!(http_date(secs), text);
            assert_eq!(parse_http_date(text.as_bytes()), Some(secs), "{text}");
        }
        assert_eq!(http_date(-5), "Thu, 01 Jan 1970 00:00:00 GMT", "clamped");
        assert_eq!(
            http_date(i64::MAX),
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "clamped"
        );
        // Every day of a few centuries goes round.
        for days in (-1000..200_000).step_by(7) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn only_imf_fixdate_parses() {
        for bad in [
            &b"Sunday, 06-Nov-94 08:49:37 GMT"[..], // RFC 850
            b"Sun Nov  6 08:49:37 1994",            // asctime
            b"Sun, 06 Nov 1994 08:49:37 UTC",
            b"sun, 06 Nov 1994 08:49:37 GMT",
            b"Sun, 06 nov 1994 08:49:37 GMT",
            b"Sun, 6 Nov 1994 08:49:37 GMT",
            b"Sun, 06 Nov 1994 08:49:37 GMT ",
            b"Sun, 06 Nov 1994 8:49:37 GMT",
            b"Sun, 31 Nov 1994 08:49:37 GMT",
            b"Sun, 29 Feb 1900 08:49:37 GMT",
            b"Sun, 00 Nov 1994 08:49:37 GMT",
            b"Sun, 06 Nov 1994 24:00:00 GMT",
            b"Sun, 06 Nov 1994 23:60:00 GMT",
            b"Sun, 06 Nov 1994 23:59:61 GMT",
            b"Sun, 06 Nov +994 08:49:37 GMT",
            b"Sun; 06 Nov 1994 08:49:37 GMT",
            b"",
            b"yesterday",
        ] {
            assert_eq!(
                parse_http_date(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn civil_from_days_agrees_with_counting_days() {
        let (mut y, mut m, mut d) = (1970, 1, 1);
        for days in 0..200_000 {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            d += 1;
            if d > len {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }
}
