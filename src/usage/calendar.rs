//! UTC calendar days and months, as the ledger keys them.

use std::time::SystemTime;

/// `YYYY-MM-DD` of a UTC instant.
pub fn day(t: SystemTime) -> String {
    let mut s = humantime::format_rfc3339_seconds(t).to_string();
    s.truncate(10);
    s
}

/// `year * 12 + month - 1` of a UTC instant: consecutive months are consecutive numbers.
pub fn month_index(t: SystemTime) -> u32 {
    month_index_of_day(&day(t)).unwrap_or(0)
}

/// The month index of a `YYYY-MM-DD` or `YYYY-MM` string.
fn month_index_of_day(day: &str) -> Option<u32> {
    let year: u32 = day.get(0..4)?.parse().ok()?;
    let month: u32 = day.get(5..7)?.parse().ok()?;
    Some(year * 12 + month - 1)
}

/// `YYYY-MM` of a month index.
pub fn month_label(index: u32) -> String {
    format!("{:04}-{:02}", index / 12, index % 12 + 1)
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
    }
}
