//! Timestamps found in messages, to milliseconds since the Unix epoch.
//!
//! Numbers (and numeric text) are taken as milliseconds, as ThingsBoard does.
//! Text is read as ISO 8601 / RFC 3339 (`2024-01-31T12:00:00.250+02:00`,
//! a space instead of `T`, `Z` or an offset; no offset means UTC), or as a
//! numeric date `31.01.2024 12:00:00`, `01/31/2024`, `2024/01/31` with an
//! optional time and offset. `dayfirst` and `yearfirst` decide ambiguous
//! numeric dates as they do for the Python gateway's `dateutil`. A two-digit
//! year is 20yy.
//!
//! The Python gateway reads a naive time in the gateway machine's local time
//! zone; tbgw reads it as UTC so that the result does not depend on the host.

use crate::json::Json;

/// Options for reading dates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DateOrder {
    pub dayfirst: bool,
    pub yearfirst: bool,
}

/// Read a timestamp from a JSON value.
pub fn from_json(v: &Json, order: DateOrder) -> Result<i64, String> {
    match v {
        Json::Int(i) => Ok(*i),
        Json::Float(f) if f.is_finite() && f.abs() < 9.0e18 => Ok(*f as i64),
        Json::Str(s) => from_text(s, order),
        other => Err(format!("{} is not a timestamp", other.kind())),
    }
}

/// Read a timestamp from text.
pub fn from_text(s: &str, order: DateOrder) -> Result<i64, String> {
    let t = s.trim();
    // Numbers first, but without trying to read every date as one.
    let numeric = t.bytes().enumerate().all(|(i, b)| {
        b.is_ascii_digit() || b == b'.' || (i == 0 && (b == b'-' || b == b'+')) || b == b'e' || b == b'E'
    });
    if numeric {
        if let Ok(i) = t.parse::<i64>() {
            return Ok(i);
        }
        if let Ok(f) = t.parse::<f64>()
            && f.is_finite()
            && f.abs() < 9.0e18
        {
            return Ok(f as i64);
        }
    }
    parse_datetime(t, order)
        .ok_or_else(|| format!("`{t}` is not a timestamp (expected milliseconds or an ISO 8601 date)"))
}

fn parse_datetime(s: &str, order: DateOrder) -> Option<i64> {
    let mut cur = Cursor { s: s.as_bytes(), pos: 0 };
    let (year, month, day) = parse_date(&mut cur, order)?;
    let mut ms_of_day = 0i64;
    let mut offset_min = 0i64;
    if !cur.done() {
        match cur.peek()? {
            b'T' | b't' | b' ' => {
                cur.pos += 1;
                while cur.peek() == Some(b' ') {
                    cur.pos += 1;
                }
                ms_of_day = parse_time(&mut cur)?;
                while cur.peek() == Some(b' ') {
                    cur.pos += 1;
                }
                if !cur.done() {
                    offset_min = parse_offset(&mut cur)?;
                }
            }
            _ => return None,
        }
    }
    if !cur.done() {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(days * 86_400_000 + ms_of_day - offset_min * 60_000)
}

struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn done(&self) -> bool {
        self.pos >= self.s.len()
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }
    /// Up to `max` digits; returns the value and how many were read.
    fn digits(&mut self, max: usize) -> Option<(i64, usize)> {
        let start = self.pos;
        let mut v = 0i64;
        while self.pos - start < max
            && let Some(d @ b'0'..=b'9') = self.peek()
        {
            v = v * 10 + i64::from(d - b'0');
            self.pos += 1;
        }
        let n = self.pos - start;
        (n > 0).then_some((v, n))
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
}

fn parse_date(cur: &mut Cursor, order: DateOrder) -> Option<(i64, u32, u32)> {
    let (a, na) = cur.digits(4)?;
    let sep = cur.peek()?;
    if !matches!(sep, b'-' | b'/' | b'.') {
        return None;
    }
    cur.pos += 1;
    let (b, _) = cur.digits(2)?;
    if !cur.eat(sep) {
        return None;
    }
    let (c, nc) = cur.digits(4)?;
    let year = |v: i64, n: usize| if n <= 2 { 2000 + v } else { v };
    let (y, m, d) = if na == 4 {
        // 2024-01-31, 2024/01/31
        (a, b, c)
    } else if nc == 4 {
        if order.dayfirst { (c, b, a) } else { (c, a, b) }
    } else if order.yearfirst {
        let y = year(a, na);
        if order.dayfirst { (y, c, b) } else { (y, b, c) }
    } else if order.dayfirst {
        (year(c, nc), b, a)
    } else {
        (year(c, nc), a, b)
    };
    let (m, d) = (u32::try_from(m).ok()?, u32::try_from(d).ok()?);
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
        return None;
    }
    Some((y, m, d))
}

fn parse_time(cur: &mut Cursor) -> Option<i64> {
    let (h, _) = cur.digits(2)?;
    if !cur.eat(b':') {
        return None;
    }
    let (m, _) = cur.digits(2)?;
    let mut sec = 0;
    let mut ms = 0;
    if cur.eat(b':') {
        sec = cur.digits(2)?.0;
        if cur.eat(b'.') || cur.eat(b',') {
            let (frac, n) = cur.digits(9)?;
            ms = frac * 1000 / 10i64.pow(n as u32);
            // Digits beyond nanoseconds carry no meaning here.
            while matches!(cur.peek(), Some(b'0'..=b'9')) {
                cur.pos += 1;
            }
        }
    }
    // 23:59:60 (a leap second) is read as the last millisecond of the minute.
    if h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let sec_ms = if sec == 60 { 59_999 } else { sec * 1000 + ms };
    Some(h * 3_600_000 + m * 60_000 + sec_ms)
}

fn parse_offset(cur: &mut Cursor) -> Option<i64> {
    let rest = &cur.s[cur.pos..];
    if rest.eq_ignore_ascii_case(b"z") || rest.eq_ignore_ascii_case(b"utc") || rest.eq_ignore_ascii_case(b"gmt") {
        cur.pos = cur.s.len();
        return Some(0);
    }
    let sign = match cur.peek()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    cur.pos += 1;
    let (h, nh) = cur.digits(2)?;
    let m = if cur.eat(b':') {
        cur.digits(2)?.0
    } else if nh == 2 {
        cur.digits(2).map_or(0, |(m, _)| m)
    } else {
        0
    };
    (h <= 23 && m <= 59).then_some(sign * (h * 60 + m))
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: DateOrder = DateOrder { dayfirst: false, yearfirst: false };

    fn t(s: &str) -> Option<i64> {
        from_text(s, DEFAULT).ok()
    }

    #[test]
    fn numbers_are_milliseconds() {
        assert_eq!(t("1700000000000"), Some(1_700_000_000_000));
        assert_eq!(t(" 1700000000000.9 "), Some(1_700_000_000_000));
        assert_eq!(from_json(&Json::Int(5), DEFAULT), Ok(5));
    }

    #[test]
    fn iso_8601_forms() {
        assert_eq!(t("1970-01-01"), Some(0));
        assert_eq!(t("2023-11-14T22:13:20Z"), Some(1_700_000_000_000));
        assert_eq!(t("2023-11-14T22:13:20"), Some(1_700_000_000_000));
        assert_eq!(t("2023-11-14 22:13:20.250"), Some(1_700_000_000_250));
        assert_eq!(t("2023-11-15T00:13:20+02:00"), Some(1_700_000_000_000));
        assert_eq!(t("2023-11-14T17:13:20-0500"), Some(1_700_000_000_000));
        assert_eq!(t("2023-11-14T22:13:20.123456789Z"), Some(1_700_000_000_123));
        assert_eq!(t("2024-02-29T00:00:00Z"), Some(1_709_164_800_000));
        assert_eq!(t("1969-12-31T23:59:59Z"), Some(-1000));
    }

    #[test]
    fn numeric_dates_follow_dayfirst() {
        let dayfirst = DateOrder { dayfirst: true, yearfirst: false };
        assert_eq!(t("01/02/2024"), t("2024-01-02"));
        assert_eq!(from_text("01/02/2024", dayfirst).ok(), t("2024-02-01"));
        assert_eq!(from_text("14.11.2023 22:13:20", dayfirst), Ok(1_700_000_000_000));
        assert_eq!(t("2024/01/31 10:00"), t("2024-01-31T10:00:00Z"));
        let yearfirst = DateOrder { dayfirst: false, yearfirst: true };
        assert_eq!(from_text("24/01/31", yearfirst).ok(), t("2024-01-31"));
    }

    #[test]
    fn refuses_impossible_dates() {
        assert_eq!(t("2023-02-29"), None);
        assert_eq!(t("2023-13-01"), None);
        assert_eq!(t("2023-01-01T24:00:00"), None);
        assert_eq!(t("2023-01-01T10:00:00 garbage"), None);
        assert_eq!(t("yesterday"), None);
        assert!(from_text("yesterday", DEFAULT).unwrap_err().contains("not a timestamp"));
    }
}
