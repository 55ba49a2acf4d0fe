//! UTC calendar days and months, as the ledger keys them, computed with integer arithmetic
//! (no formatting or parsing on the request path).

use std::time::SystemTime;

/// (year, month 1-12, day 1-31) of a count of days since 1970-01-01, proleptic Gregorian.
/// Howard Hinnant's `civil_from_days`.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a UTC instant (instants before it count as day 0).
fn days(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| {
        i64::try_from(d.as_secs() / 86_400).unwrap_or(i64::MAX / 2)
    })
}

/// `YYYY-MM-DD` of a UTC instant.
pub fn day(t: SystemTime) -> String {
    formatted(days(t))
}

/// `YYYY-MM-DD` of a count of days since 1970-01-01 (the ledger groups usage by it).
pub fn day_of_number(n: u64) -> String {
    formatted(i64::try_from(n).unwrap_or(i64::MAX / 2))
}

/// `YYYY-MM-DD` of the day `back` days before the day of `now` (1970-01-01 at the earliest):
/// the first day of a report over the last `back + 1` days.
pub fn days_before(now: SystemTime, back: u64) -> String {
    formatted(
        days(now)
            .saturating_sub(i64::try_from(back).unwrap_or(i64::MAX))
            .max(0),
    )
}

fn formatted(days: i64) -> String {
    let (y, m, d) = civil(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `year * 12 + month - 1` of a UTC instant: consecutive months are consecutive numbers.
pub fn month_index(t: SystemTime) -> u32 {
    let (y, m, _) = civil(days(t));
    u32::try_from(y * 12 + i64::from(m) - 1).unwrap_or(u32::MAX)
}

/// `YYYY-MM` of a month index.
pub fn month_label(index: u32) -> String {
    format!("{:04}-{:02}", index / 12, index % 12 + 1)
}

/// The first instant of the month with this index.
pub fn month_start(index: u32) -> SystemTime {
    let (year, month) = (i64::from(index / 12), i64::from(index % 12 + 1));
    // days_from_civil, the inverse of `civil`.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    SystemTime::UNIX_EPOCH
        + std::time::Duration::from_secs(u64::try_from(days.max(0)).unwrap_or(0) * 86_400)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn days_and_months_in_utc() {
        let t = humantime::parse_rfc3339("2026-11-30T23:59:59Z").unwrap();
        assert_eq!(day(t), "2026-11-30");
        let next = t + Duration::from_secs(1);
        assert_eq!(day(next), "2026-12-01");
        assert_eq!(month_index(next), month_index(t) + 1);
        assert_eq!(month_label(month_index(t)), "2026-11");
        let jan = humantime::parse_rfc3339("2027-01-01T00:00:00Z").unwrap();
        assert_eq!(month_index(jan), month_index(next) + 1);
        assert_eq!(month_start(month_index(jan)), jan);
        let leap = humantime::parse_rfc3339("2028-02-29T12:00:00Z").unwrap();
        assert_eq!(day(leap), "2028-02-29");
        assert_eq!(
            month_start(month_index(leap)),
            humantime::parse_rfc3339("2028-02-01T00:00:00Z").unwrap()
        );
    }

    #[test]
    fn days_before_counts_back_whole_days_and_stops_at_the_epoch() {
        let t = humantime::parse_rfc3339("2026-12-02T00:00:01Z").unwrap();
        assert_eq!(days_before(t, 0), day(t));
        assert_eq!(days_before(t, 1), "2026-12-01");
        assert_eq!(days_before(t, 29), "2026-11-03");
        assert_eq!(days_before(t, 365), "2025-12-02");
        assert_eq!(days_before(t, u64::MAX), "1970-01-01");
        assert_eq!(day_of_number(0), "1970-01-01");
        assert_eq!(day_of_number(20_424), "2025-12-02");
    }

    #[test]
    fn agrees_with_the_formatted_date_for_every_day_of_three_centuries() {
        let mut t = SystemTime::UNIX_EPOCH;
        for _ in 0..(300 * 366) {
            let text = humantime::format_rfc3339_seconds(t).to_string();
            assert_eq!(day(t), text[..10]);
            t += Duration::from_secs(86_400);
        }
    }
}
