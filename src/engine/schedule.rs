//! When a message goes out: the rule's send time in the user's time zone, moved out of quiet hours.
//! Local times that do not exist (a DST gap) move forward to the first minute that does; local
//! times that happen twice (a DST overlap) take the first. A `traits.timezone` that is not an IANA
//! name falls back to the default; [`UnknownTimezones`] makes sure that is logged once per user.

use std::{collections::HashSet, sync::Mutex};

use chrono::{DateTime, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

use crate::rules::{QuietHours, SendTime};

/// The user's time zone from `traits.timezone`, or the default when absent or not an IANA name.
/// The flag tells whether the default was used because the name was invalid.
pub fn user_timezone(name: Option<&str>, default: Tz) -> (Tz, bool) {
    match name.map(str::parse::<Tz>) {
        Some(Ok(tz)) => (tz, false),
        Some(Err(_)) => (default, true),
        None => (default, false),
    }
}

/// The users already warned about an unknown time zone in this process, so a user with a bad
/// `traits.timezone` produces one `UnknownTimezone` warning, not one per decision. Bounded: once
/// `capacity` users are remembered, further ones are no longer logged (the metric still counts
/// them), so a flood of bad data cannot grow memory or the logs without limit.
#[derive(Debug)]
pub struct UnknownTimezones {
    warned: Mutex<HashSet<String>>,
    capacity: usize,
}

impl Default for UnknownTimezones {
    fn default() -> Self {
        UnknownTimezones::with_capacity(100_000)
    }
}

impl UnknownTimezones {
    pub fn with_capacity(capacity: usize) -> Self {
        UnknownTimezones {
            warned: Mutex::new(HashSet::new()),
            capacity,
        }
    }

    /// Records that `user` has the unknown time zone `name`; logs `UnknownTimezone` the first time
    /// for this user. Returns whether it logged.
    pub fn report(&self, user: &str, name: &str, fallback: Tz) -> bool {
        metrics::counter!("nudge_unknown_timezone_decisions_total").increment(1);
        let first = {
            let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
            if warned.len() >= self.capacity || warned.contains(user) {
                false
            } else {
                warned.insert(user.to_string())
            }
        };
        if first {
            tracing::warn!(
                user = %user,
                timezone = %name,
                fallback = %fallback.name(),
                "UnknownTimezone: traits.timezone is not an IANA time zone; using the default (logged once per user)"
            );
        }
        first
    }
}

/// The instant of a local wall-clock time, resolving DST gaps and overlaps.
pub fn resolve_local(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    let mut probe = local;
    // A gap is at most a few hours (usually one); step minute by minute to its end.
    for _ in 0..(4 * 60) {
        match tz.from_local_datetime(&probe) {
            LocalResult::Single(t) => return t.with_timezone(&Utc),
            LocalResult::Ambiguous(first, _) => return first.with_timezone(&Utc),
            LocalResult::None => probe += Duration::minutes(1),
        }
    }
    Utc.from_utc_datetime(&local)
}

/// When a `send_time` asks for the message to go, before quiet hours. `predicted` falls back to
/// `immediate` until a send-time model is in service.
pub fn requested_time(send_time: SendTime, now: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
    match send_time {
        SendTime::Immediate | SendTime::Predicted => now,
        SendTime::At(time) => next_local(time, now, tz),
    }
}

/// The slots a predicted send time chooses from: `now`, then the start of every following local
/// hour up to `now + within`, leaving out those inside quiet hours, one per local hour of week
/// (the first; a window longer than a week does not offer an hour twice). Each is
/// `(when, local hour of week)`, Monday 00:00 = 0. Empty when every slot is quiet.
pub fn predicted_slots(
    now: DateTime<Utc>,
    within: Duration,
    quiet: Option<QuietHours>,
    tz: Tz,
) -> Vec<(DateTime<Utc>, usize)> {
    let end = now + within.max(Duration::zero());
    let mut slots: Vec<(DateTime<Utc>, usize)> = Vec::new();
    let mut seen = [false; 168];
    let mut at = now;
    while at <= end && slots.len() < 168 {
        if outside_quiet_hours(at, quiet, tz) == at {
            let h = crate::ml::features::hour_of_week(at.timestamp_millis(), tz);
            if !seen[h] {
                seen[h] = true;
                slots.push((at, h));
            }
        }
        // The next local hour boundary (time zones with half-hour offsets included).
        let local = at.with_timezone(&tz);
        let into_hour = Duration::minutes(i64::from(local.minute()))
            + Duration::seconds(i64::from(local.second()))
            + Duration::nanoseconds(i64::from(local.nanosecond()));
        at = at - into_hour + Duration::hours(1);
    }
    slots
}

/// The next instant at or after `now` when the user's clock shows `time`.
pub fn next_local(time: NaiveTime, now: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
    let today: NaiveDate = now.with_timezone(&tz).date_naive();
    (0..3)
        .map(|d| resolve_local(tz, (today + Duration::days(d)).and_time(time)))
        .find(|t| *t >= now)
        .unwrap_or(now)
}

/// Moves `at` to the end of the quiet window when it falls inside it (user's local time).
pub fn outside_quiet_hours(at: DateTime<Utc>, quiet: Option<QuietHours>, tz: Tz) -> DateTime<Utc> {
    let Some(q) = quiet else { return at };
    let local = at.with_timezone(&tz);
    let t = local.time();
    let date = local.date_naive();
    let wraps = q.from > q.to;
    let inside = if wraps {
        t >= q.from || t < q.to
    } else {
        t >= q.from && t < q.to
    };
    if !inside {
        return at;
    }
    // In the evening part of a window that wraps midnight, it ends tomorrow morning.
    let end_date = if wraps && t >= q.from {
        date + Duration::days(1)
    } else {
        date
    };
    let end = end_date.and_time(q.to);
    match tz.from_local_datetime(&end) {
        // The window ends at a local time that happens twice: the first one, unless `at` is
        // already past it (in the repeated hour), then the second.
        LocalResult::Ambiguous(first, second) => {
            let (first, second) = (first.with_timezone(&Utc), second.with_timezone(&Utc));
            if first >= at { first } else { second.max(at) }
        }
        _ => resolve_local(tz, end).max(at),
    }
}

#[cfg(test)]
mod tests {
    use chrono_tz::{America::New_York, Asia::Kolkata, Europe::Berlin};

    use super::*;

    fn hm(h: u32, m: u32) -> NaiveTime {
        NaiveTime::from_hms_opt(h, m, 0).unwrap()
    }

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn next_local_time_in_three_zones() {
        let now = utc("2026-03-10T12:00:00Z");
        assert_eq!(next_local(hm(9, 30), now, New_York), utc("2026-03-10T13:30:00Z"));
        assert_eq!(next_local(hm(9, 30), now, Berlin), utc("2026-03-11T08:30:00Z"));
        assert_eq!(next_local(hm(18, 0), now, Kolkata), utc("2026-03-10T12:30:00Z"));
    }

    #[test]
    fn dst_gap_moves_forward_and_overlap_takes_first() {
        // New York springs forward at 02:00 on 2026-03-08: 02:30 does not exist.
        assert_eq!(
            resolve_local(
                New_York,
                NaiveDate::from_ymd_opt(2026, 3, 8).unwrap().and_time(hm(2, 30))
            ),
            utc("2026-03-08T07:00:00Z")
        );
        // Berlin falls back at 03:00 on 2026-10-25: 02:30 happens twice.
        assert_eq!(
            resolve_local(
                Berlin,
                NaiveDate::from_ymd_opt(2026, 10, 25).unwrap().and_time(hm(2, 30))
            ),
            utc("2026-10-25T00:30:00Z")
        );
    }

    #[test]
    fn quiet_hours_wrap_midnight() {
        let q = Some(QuietHours {
            from: hm(21, 0),
            to: hm(8, 0),
        });
        // 22:00 in Berlin (winter, UTC+1) → 08:00 next day.
        assert_eq!(
            outside_quiet_hours(utc("2026-01-05T21:00:00Z"), q, Berlin),
            utc("2026-01-06T07:00:00Z")
        );
        // 03:00 local → 08:00 the same day.
        assert_eq!(
            outside_quiet_hours(utc("2026-01-05T02:00:00Z"), q, Berlin),
            utc("2026-01-05T07:00:00Z")
        );
        // Noon is allowed.
        assert_eq!(
            outside_quiet_hours(utc("2026-01-05T11:00:00Z"), q, Berlin),
            utc("2026-01-05T11:00:00Z")
        );
        // Kolkata is +05:30: 23:00 UTC is 04:30 local → 08:00 local = 02:30 UTC.
        assert_eq!(
            outside_quiet_hours(utc("2026-01-05T23:00:00Z"), q, Kolkata),
            utc("2026-01-06T02:30:00Z")
        );
    }

    fn night() -> Option<QuietHours> {
        Some(QuietHours {
            from: hm(21, 0),
            to: hm(8, 0),
        })
    }

    #[test]
    fn quiet_hours_on_spring_forward_nights_end_at_local_eight() {
        // New York, 2026-03-08: 01:30 EST (06:30Z) is quiet; 08:00 that morning is already EDT
        // (UTC−4), so the first allowed minute is 12:00Z, not 13:00Z.
        assert_eq!(
            outside_quiet_hours(utc("2026-03-08T06:30:00Z"), night(), New_York),
            utc("2026-03-08T12:00:00Z")
        );
        // From the evening before (22:00 EST = 03:00Z) across the gap to the same minute.
        assert_eq!(
            outside_quiet_hours(utc("2026-03-08T03:00:00Z"), night(), New_York),
            utc("2026-03-08T12:00:00Z")
        );
        // Berlin, 2026-03-29: 01:30 CET (00:30Z) → 08:00 CEST (UTC+2) = 06:00Z.
        assert_eq!(
            outside_quiet_hours(utc("2026-03-29T00:30:00Z"), night(), Berlin),
            utc("2026-03-29T06:00:00Z")
        );
    }

    #[test]
    fn quiet_hours_on_fall_back_nights_end_at_local_eight() {
        // New York, 2026-11-01: 01:30 happens twice; both are quiet; 08:00 is EST (UTC−5).
        for at in ["2026-11-01T05:30:00Z", "2026-11-01T06:30:00Z"] {
            assert_eq!(
                outside_quiet_hours(utc(at), night(), New_York),
                utc("2026-11-01T13:00:00Z"),
                "{at}"
            );
        }
        // Berlin, 2026-10-25: 02:30 CEST (00:30Z) and 02:30 CET (01:30Z) → 08:00 CET = 07:00Z.
        for at in ["2026-10-25T00:30:00Z", "2026-10-25T01:30:00Z"] {
            assert_eq!(
                outside_quiet_hours(utc(at), night(), Berlin),
                utc("2026-10-25T07:00:00Z"),
                "{at}"
            );
        }
    }

    #[test]
    fn quiet_hours_ending_in_a_gap_or_an_overlap() {
        // A window ending at 02:30, which New York skips on 2026-03-08: the first allowed minute
        // is 03:00 EDT (07:00Z).
        let short = Some(QuietHours {
            from: hm(22, 0),
            to: hm(2, 30),
        });
        assert_eq!(
            outside_quiet_hours(utc("2026-03-08T06:00:00Z"), short, New_York),
            utc("2026-03-08T07:00:00Z")
        );
        // A window ending at 01:30 on 2026-11-01, which New York has twice: the first (05:30Z)…
        let shorter = Some(QuietHours {
            from: hm(22, 0),
            to: hm(1, 30),
        });
        assert_eq!(
            outside_quiet_hours(utc("2026-11-01T04:00:00Z"), shorter, New_York),
            utc("2026-11-01T05:30:00Z")
        );
        // …unless the message is due in the repeated hour before the second 01:30 (01:10 EST).
        assert_eq!(
            outside_quiet_hours(utc("2026-11-01T06:10:00Z"), shorter, New_York),
            utc("2026-11-01T06:30:00Z")
        );
    }

    #[test]
    fn send_time_in_the_gap_and_in_the_overlap() {
        // `send_time: "02:30"` on the night New York skips 02:00–03:00: sent at 03:00 EDT.
        assert_eq!(
            next_local(hm(2, 30), utc("2026-03-08T05:00:00Z"), New_York),
            utc("2026-03-08T07:00:00Z")
        );
        // Berlin skips 02:00–03:00 on 2026-03-29: 03:00 CEST = 01:00Z.
        assert_eq!(
            next_local(hm(2, 30), utc("2026-03-28T23:00:00Z"), Berlin),
            utc("2026-03-29T01:00:00Z")
        );
        // Berlin has 02:30 twice on 2026-10-25: the first, CEST (00:30Z).
        assert_eq!(
            next_local(hm(2, 30), utc("2026-10-24T22:00:00Z"), Berlin),
            utc("2026-10-25T00:30:00Z")
        );
        // New York has 01:30 twice on 2026-11-01: the first, EDT (05:30Z).
        assert_eq!(
            next_local(hm(1, 30), utc("2026-11-01T03:00:00Z"), New_York),
            utc("2026-11-01T05:30:00Z")
        );
        // Kolkata has no DST and a half-hour offset: 02:30 IST is 21:00Z the day before.
        assert_eq!(
            next_local(hm(2, 30), utc("2026-03-08T12:00:00Z"), Kolkata),
            utc("2026-03-08T21:00:00Z")
        );
    }

    #[test]
    fn kolkata_quiet_hours_use_the_half_hour_offset() {
        // 21:00 IST is 15:30Z: 15:29Z is allowed, 15:30Z moves to 08:00 IST = 02:30Z next day.
        assert_eq!(
            outside_quiet_hours(utc("2026-03-08T15:29:00Z"), night(), Kolkata),
            utc("2026-03-08T15:29:00Z")
        );
        assert_eq!(
            outside_quiet_hours(utc("2026-03-08T15:30:00Z"), night(), Kolkata),
            utc("2026-03-09T02:30:00Z")
        );
    }

    #[test]
    fn unknown_time_zones_fall_back_and_warn_once_per_user() {
        assert_eq!(user_timezone(Some("Mars/Olympus_Mons"), Berlin), (Berlin, true));
        assert_eq!(user_timezone(Some("Asia/Kolkata"), Berlin), (Kolkata, false));
        assert_eq!(user_timezone(None, Berlin), (Berlin, false));
        let seen = UnknownTimezones::with_capacity(2);
        assert!(seen.report("u1", "Mars/Olympus_Mons", Berlin));
        assert!(!seen.report("u1", "Mars/Olympus_Mons", Berlin), "once per user");
        assert!(seen.report("u2", "EST5EDT6", Berlin));
        assert!(!seen.report("u3", "nowhere", Berlin), "bounded: the set is full");
        assert!(!seen.report("u2", "EST5EDT6", Berlin));
    }
}
