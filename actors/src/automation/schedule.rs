//! Cron schedules (croner: five fields, or six with seconds), read in the tenant's zone.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

/// A schedule checked at creation.
pub fn parse(expr: &str) -> Result<croner::Cron, String> {
    if expr.len() > 120 {
        return Err("a schedule is at most 120 characters".into());
    }
    // Croner's default parser: five fields, or six with seconds first (seven with a year).
    expr.parse::<croner::Cron>()
        .map_err(|e| format!("not a cron expression: {e}"))
}

/// The first time after `after` the schedule fires, in UTC; `None` when it never does.
pub fn next_after(expr: &str, tz: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let cron = parse(expr).ok()?;
    cron.find_next_occurrence(&after.with_timezone(&tz), false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn nine_in_the_morning_is_nine_in_the_tenants_zone() {
        let tz: Tz = "America/Sao_Paulo".parse().unwrap();
        let after = Utc.with_ymd_and_hms(2026, 12, 3, 8, 0, 0).unwrap();
        // 09:00 in São Paulo (UTC-3) is 12:00 UTC.
        assert_eq!(
            next_after("0 9 * * *", tz, after),
            Some(Utc.with_ymd_and_hms(2026, 12, 3, 12, 0, 0).unwrap())
        );
        assert_eq!(
            next_after("0 9 * * *", chrono_tz::UTC, after),
            Some(Utc.with_ymd_and_hms(2026, 12, 3, 9, 0, 0).unwrap())
        );
        // Weekdays only: Saturday 5 December → Monday 7 December.
        let sat = Utc.with_ymd_and_hms(2026, 12, 5, 10, 0, 0).unwrap();
        assert_eq!(
            next_after("0 9 * * 1-5", chrono_tz::UTC, sat),
            Some(Utc.with_ymd_and_hms(2026, 12, 7, 9, 0, 0).unwrap())
        );
    }

    #[test]
    fn bad_expressions_are_refused() {
        assert!(parse("every day").is_err());
        assert!(parse("61 * * * *").is_err());
        assert!(parse("*/5 * * * * *").is_ok(), "six fields: with seconds");
    }
}
