//! Wall-clock text: the `Date` header and the access log's timestamp, each
//! formatted at most once per second.

use std::time::{SystemTime, UNIX_EPOCH};

/// Cached renderings of the current second.
#[derive(Debug, Default)]
pub(crate) struct Clock {
    secs: u64,
    http: String,
    log: String,
}

impl Clock {
    fn refresh(&mut self) {
        let now = SystemTime::now();
        let secs = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if secs != self.secs || self.http.is_empty() {
            self.secs = secs;
            self.http = httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(secs));
            self.log = clf_date(secs);
        }
    }

    /// The current time as an HTTP-date (`Sun, 06 Nov 1994 08:49:37 GMT`).
    pub(crate) fn http_date(&mut self) -> &str {
        self.refresh();
        &self.http
    }

    /// The current time for the common log format (`06/Nov/1994:08:49:37 +0000`).
    pub(crate) fn log_date(&mut self) -> &str {
        self.refresh();
        &self.log
    }
}

/// Seconds since the epoch as `dd/Mon/yyyy:hh:mm:ss +0000` (UTC).
pub(crate) fn clf_date(secs: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{d:02}/{}/{y:04}:{:02}:{:02}:{:02} +0000",
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month 1..=12, day 1..=31), proleptic
/// Gregorian (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clf_dates() {
        assert_eq!(clf_date(0), "01/Jan/1970:00:00:00 +0000");
        assert_eq!(clf_date(784_111_777), "06/Nov/1994:08:49:37 +0000");
        assert_eq!(clf_date(951_782_400), "29/Feb/2000:00:00:00 +0000");
        assert_eq!(clf_date(4_107_542_399), "28/Feb/2100:23:59:59 +0000");
        assert_eq!(clf_date(4_133_980_799), "31/Dec/2100:23:59:59 +0000");
    }

    #[test]
    fn clf_dates_agree_with_http_dates() {
        // Same day, month and year as httpdate's rendering, for a spread of days.
        for secs in (0..5_000_000_000u64).step_by(7_777_777) {
            let http = httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(secs));
            // "Sun, 06 Nov 1994 08:49:37 GMT"
            let parts: Vec<&str> = http.split(' ').collect();
            let want = format!("{}/{}/{}:{} +0000", parts[1], parts[2], parts[3], parts[4]);
            assert_eq!(clf_date(secs), want);
        }
    }

    #[test]
    fn http_date_is_imf_fixdate() {
        let mut c = Clock::default();
        let d = c.http_date().to_string();
        assert!(d.ends_with(" GMT") && d.len() == 29, "{d}");
    }
}
