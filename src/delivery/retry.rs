//! Retries: one typed policy (attempts, initial and max interval, factor, jitter) and the tables
//! that classify a transport's answer into "delivered", "try again later" or "give up".
//!
//! Nothing else in delivery loops or sleeps on failure: a failed attempt is written back to the
//! outbox with the next attempt time this policy computes, and the row is claimed again when due.

use std::time::Duration;

use rand::Rng;

/// How often and how soon a failed message is tried again.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included; after the last failed one the message is `failed`.
    pub max_attempts: u32,
    /// Delay after the first failed attempt.
    pub initial: Duration,
    /// Longest delay between two attempts, jitter included.
    pub max: Duration,
    /// Each delay is the previous one times this (≥ 1).
    pub factor: f64,
    /// Spread as a fraction (0.2 = ±20 %), so a burst of failures does not retry in lockstep.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    /// 8 attempts over about 2 hours: 30 s, 1 m, 2 m, 4 m, 8 m, 16 m, 32 m between them.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            initial: Duration::from_secs(30),
            max: Duration::from_secs(3600),
            factor: 2.0,
            jitter: 0.2,
        }
    }
}

/// What to do with a message after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextAttempt {
    /// Try again after this delay.
    After(Duration),
    /// No attempts left.
    GiveUp,
}

impl RetryPolicy {
    /// Checks the policy makes sense; the message says which field is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("retry.max_attempts must be at least 1".into());
        }
        if !(self.factor.is_finite() && self.factor >= 1.0) {
            return Err(format!("retry.factor must be a number ≥ 1, not {}", self.factor));
        }
        if !(self.jitter.is_finite() && (0.0..1.0).contains(&self.jitter)) {
            return Err(format!("retry.jitter must be in [0, 1), not {}", self.jitter));
        }
        if self.initial > self.max {
            return Err(format!(
                "retry.initial ({:?}) must not exceed retry.max ({:?})",
                self.initial, self.max
            ));
        }
        Ok(())
    }

    /// The delay after failed attempt number `attempt` (1-based), before jitter:
    /// `initial · factor^(attempt-1)`, capped at `max`. Monotone in `attempt`, never overflows.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(1024) as i32;
        let secs = self.initial.as_secs_f64() * self.factor.powi(exponent);
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            return self.max;
        }
        Duration::try_from_secs_f64(secs).map_or(self.max, |d| d.min(self.max))
    }

    /// [`backoff`](Self::backoff) spread by ± `jitter`, still at most `max`.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let base = self.backoff(attempt);
        if self.jitter <= 0.0 || base.is_zero() {
            return base;
        }
        let spread = rng.gen_range(-self.jitter..=self.jitter);
        base.mul_f64(1.0 + spread).min(self.max)
    }

    /// The decision after failed attempt number `attempt`. A server's own hint (`Retry-After`)
    /// is honoured when longer than our backoff, within `max`.
    pub fn after_failure(&self, attempt: u32, hint: Option<Duration>, rng: &mut impl Rng) -> NextAttempt {
        if attempt >= self.max_attempts {
            return NextAttempt::GiveUp;
        }
        let delay = self.delay(attempt, rng);
        NextAttempt::After(hint.map_or(delay, |h| h.min(self.max).max(delay)))
    }
}

/// A transport's answer, by what delivery does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    Retry,
    GiveUp,
    /// Give up, and never mail this address again: the receiving server said it does not exist
    /// (a hard bounce, enhanced status 5.1.x).
    HardBounce,
}

/// An SMTP reply as the server sent it: the code, the enhanced status code (RFC 3463) when the
/// text starts with one that agrees with the code's class, and the text of every line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpReply {
    pub code: u16,
    /// `(class, subject, detail)`, e.g. `(5, 1, 1)` for `5.1.1`.
    pub enhanced: Option<(u8, u16, u16)>,
    /// The lines' text after the code (and separator), joined with a space.
    pub text: String,
}

impl SmtpReply {
    /// Parses a reply from the wire: one line `550 5.1.1 text`, or several lines
    /// `550-5.1.1 first` … `550 5.1.1 last` (every line but the last has `-` after the code).
    /// `None` when the first line does not start with a three-digit code.
    pub fn parse(raw: &str) -> Option<SmtpReply> {
        let mut code = None;
        let mut texts = Vec::new();
        for line in raw
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| !l.is_empty())
        {
            let digits = line.get(..3).filter(|d| d.bytes().all(|b| b.is_ascii_digit()))?;
            let n: u16 = digits.parse().ok()?;
            if *code.get_or_insert(n) != n {
                return None;
            }
            texts.push(line.get(4..).unwrap_or_default().trim());
        }
        Some(SmtpReply::new(code?, &texts.join(" ")))
    }

    /// A reply from its code and text (as lettre hands them over, lines joined).
    pub fn new(code: u16, text: &str) -> SmtpReply {
        let text = text.trim();
        let enhanced = text
            .split_whitespace()
            .next()
            .and_then(parse_enhanced)
            .filter(|(class, _, _)| u16::from(*class) == code / 100);
        SmtpReply {
            code,
            enhanced,
            text: text.to_string(),
        }
    }

    /// What to do with the message: [`classify_smtp_reply`] by code, and a hard bounce when a
    /// 5xx reply carries enhanced status 5.1.x about the recipient (bad destination mailbox or
    /// domain; 5.1.7 and 5.1.8 are about *our* sender address and only fail the message). A 550
    /// with another or no enhanced code (spam or policy refusals use 550 too) only fails it.
    pub fn verdict(&self) -> Verdict {
        match (classify_smtp_reply(self.code), self.enhanced) {
            (Verdict::GiveUp, Some((5, 1, detail))) if !matches!(detail, 7 | 8) => Verdict::HardBounce,
            (v, _) => v,
        }
    }
}

/// `5.1.1` → `(5, 1, 1)`: class 2, 4 or 5, subject and detail of 1–3 digits (RFC 3463 §2).
fn parse_enhanced(word: &str) -> Option<(u8, u16, u16)> {
    let mut parts = word.split('.');
    let class: u8 = parts.next()?.parse().ok()?;
    let number = |p: Option<&str>| -> Option<u16> {
        let p = p?;
        (1..=3).contains(&p.len()).then_some(())?;
        p.parse().ok()
    };
    let subject = number(parts.next())?;
    let detail = number(parts.next())?;
    (parts.next().is_none() && matches!(class, 2 | 4 | 5)).then_some((class, subject, detail))
}

/// SMTP reply codes (RFC 5321 §4.2.1): 2xx/3xx positive, 4xx transient (greylisting, mailbox
/// busy, 421 service closing), 5xx permanent (no such user, policy rejection). Anything outside
/// 200–599 is a misbehaving server, which may recover: retry.
pub fn classify_smtp_reply(code: u16) -> Verdict {
    match code {
        200..=399 => Verdict::Delivered,
        400..=499 => Verdict::Retry,
        500..=599 => Verdict::GiveUp,
        _ => Verdict::Retry,
    }
}

/// HTTP statuses from a push gateway: 2xx delivered; 408, 429 and 5xx (the gateway is busy or
/// down) retried; other 4xx (bad token, bad request, unauthorised) given up. 1xx and 3xx should
/// never reach us (redirects are followed): they point at a misconfigured URL, which an operator
/// can fix, so retry.
pub fn classify_http_status(status: u16) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        408 | 429 => Verdict::Retry,
        400..=499 => Verdict::GiveUp,
        _ => Verdict::Retry,
    }
}

#[cfg(test)]
mod tests {
    use rand::{SeedableRng, rngs::StdRng};

    use super::*;

    #[test]
    fn backoff_is_monotone_capped_and_never_overflows() {
        let policies = [
            RetryPolicy::default(),
            RetryPolicy {
                factor: 10.0,
                ..RetryPolicy::default()
            },
            RetryPolicy {
                factor: 1.0,
                ..RetryPolicy::default()
            },
            RetryPolicy {
                initial: Duration::ZERO,
                ..RetryPolicy::default()
            },
            RetryPolicy {
                initial: Duration::from_secs(u64::MAX / 4),
                max: Duration::MAX,
                factor: 1e300,
                ..RetryPolicy::default()
            },
        ];
        for p in &policies {
            let mut previous = Duration::ZERO;
            for attempt in (0..200).chain([1000, 100_000, u32::MAX - 1, u32::MAX]) {
                let b = p.backoff(attempt);
                assert!(b >= previous, "{p:?}: attempt {attempt} went down");
                assert!(b <= p.max, "{p:?}: attempt {attempt} above max");
                previous = b;
            }
        }
        let p = RetryPolicy::default();
        assert_eq!(p.backoff(1), Duration::from_secs(30));
        assert_eq!(p.backoff(2), Duration::from_secs(60));
        assert_eq!(p.backoff(8), Duration::from_secs(3600));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let p = RetryPolicy::default();
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 1..40 {
            let base = p.backoff(attempt).as_secs_f64();
            for _ in 0..50 {
                let d = p.delay(attempt, &mut rng).as_secs_f64();
                assert!(d >= base * 0.8 - 1e-9 && d <= (base * 1.2).min(3600.0) + 1e-9);
            }
        }
    }

    #[test]
    fn gives_up_after_the_last_attempt_and_honours_hints() {
        let p = RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(
            p.after_failure(1, None, &mut rng),
            NextAttempt::After(Duration::from_secs(30))
        );
        assert_eq!(
            p.after_failure(1, Some(Duration::from_secs(90)), &mut rng),
            NextAttempt::After(Duration::from_secs(90))
        );
        assert_eq!(
            p.after_failure(1, Some(Duration::from_secs(999_999)), &mut rng),
            NextAttempt::After(Duration::from_secs(3600))
        );
        assert_eq!(
            p.after_failure(7, None, &mut rng),
            NextAttempt::After(Duration::from_secs(1920))
        );
        assert_eq!(p.after_failure(8, None, &mut rng), NextAttempt::GiveUp);
        assert_eq!(p.after_failure(u32::MAX, None, &mut rng), NextAttempt::GiveUp);
    }

    #[test]
    fn validation_names_the_field() {
        let bad = RetryPolicy {
            max_attempts: 0,
            ..RetryPolicy::default()
        };
        assert!(bad.validate().unwrap_err().contains("max_attempts"));
        let bad = RetryPolicy {
            factor: 0.5,
            ..RetryPolicy::default()
        };
        assert!(bad.validate().unwrap_err().contains("factor"));
        let bad = RetryPolicy {
            jitter: f64::NAN,
            ..RetryPolicy::default()
        };
        assert!(bad.validate().unwrap_err().contains("jitter"));
        assert!(RetryPolicy::default().validate().is_ok());
    }

    #[test]
    fn smtp_reply_table() {
        use Verdict::*;
        let table = [
            (250, Delivered),
            (251, Delivered),
            (354, Delivered),
            (421, Retry), // service not available, closing channel
            (450, Retry), // mailbox unavailable (busy, greylisted)
            (451, Retry), // local error in processing
            (452, Retry), // insufficient storage
            (454, Retry), // temporary authentication failure
            (500, GiveUp),
            (501, GiveUp),
            (503, GiveUp),
            (530, GiveUp),
            (535, GiveUp),
            (550, GiveUp), // no such mailbox
            (551, GiveUp),
            (552, GiveUp),
            (553, GiveUp),
            (554, GiveUp),
            (0, Retry),
            (199, Retry),
            (600, Retry),
            (999, Retry),
        ];
        for (code, want) in table {
            assert_eq!(classify_smtp_reply(code), want, "SMTP {code}");
        }
        for code in 400..500 {
            assert_eq!(classify_smtp_reply(code), Retry, "SMTP {code}");
        }
        for code in 500..600 {
            assert_eq!(classify_smtp_reply(code), GiveUp, "SMTP {code}");
        }
    }

    /// Replies as real servers send them (Gmail, Outlook, Postfix, Exim, greylisting milters),
    /// multi-line replies included, with what delivery must do about each.
    #[test]
    fn smtp_replies_as_servers_send_them() {
        use Verdict::*;
        let table: &[(&str, Verdict)] = &[
            ("250 2.0.0 OK 1700000000 a1si123 - gsmtp", Delivered),
            ("250 Ok: queued as 4BQXyZ1abc", Delivered),
            ("251 2.1.5 User not local; will forward", Delivered),
            ("354 End data with <CR><LF>.<CR><LF>", Delivered),
            ("421 4.7.0 Try again later, closing connection.", Retry),
            (
                "421-4.7.28 Our system has detected an unusual rate of\r\n421-4.7.28 unsolicited mail.\r\n421 4.7.28 Try again later.",
                Retry,
            ),
            (
                "450 4.2.0 <ann@example.com>: Recipient address rejected: Greylisted",
                Retry,
            ),
            (
                "450 4.1.1 <ann@example.com>: Recipient address rejected: unverified address",
                Retry,
            ),
            ("451 4.3.0 Mail server temporarily rejected message.", Retry),
            ("451 4.7.1 Please try again later", Retry),
            ("451-4.3.0 Multiple\r\n451 4.3.0 lines", Retry),
            (
                "452 4.2.2 The email account that you tried to reach is over quota.",
                Retry,
            ),
            ("452 4.5.3 Too many recipients", Retry),
            ("454 4.7.0 TLS not available due to local problem", Retry),
            ("455 4.5.2 Server unable to accommodate parameters", Retry),
            ("471 4.7.0 Local anti-virus failure", Retry),
            ("500 5.5.1 Unrecognized command", GiveUp),
            ("501 5.1.7 Bad sender address syntax", GiveUp),
            ("550 5.1.8 Sender address domain does not exist", GiveUp),
            ("503 5.5.1 Bad sequence of commands", GiveUp),
            ("530 5.7.0 Must issue a STARTTLS command first", GiveUp),
            ("535 5.7.8 Username and Password not accepted", GiveUp),
            (
                "550-5.1.1 The email account that you tried to reach does not exist. Please try\r\n550-5.1.1 double-checking the recipient's email address for typos or\r\n550 5.1.1 unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser",
                HardBounce,
            ),
            (
                "550 5.1.1 <nobody@example.com>: Recipient address rejected: User unknown in local recipient table",
                HardBounce,
            ),
            (
                "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
                HardBounce,
            ),
            (
                "550 5.1.2 Host unknown (Name server: example.invalid: host not found)",
                HardBounce,
            ),
            (
                "550 5.1.6 Recipient addresses in this domain not accepted",
                HardBounce,
            ),
            (
                "553 5.1.3 The recipient address is not a valid RFC-5321 address.",
                HardBounce,
            ),
            ("550 5.7.1 Message rejected as spam by Content Filtering.", GiveUp),
            (
                "550-5.7.26 This mail is unauthenticated, which poses a security risk\r\n550 5.7.26 to the sender and Gmail users.",
                GiveUp,
            ),
            ("550 No such user here", GiveUp),
            ("550 Requested action not taken: mailbox unavailable", GiveUp),
            (
                "551 5.1.6 User not local; please try <bob@elsewhere.example>",
                HardBounce,
            ),
            ("552 5.2.2 Mailbox full", GiveUp),
            (
                "552 5.3.4 Message size exceeds fixed maximum message size",
                GiveUp,
            ),
            (
                "554 5.7.1 Service unavailable; Client host blocked using zen.spamhaus.org",
                GiveUp,
            ),
            ("554 Transaction failed", GiveUp),
            ("556 5.1.10 Recipient address has null MX", HardBounce),
            // The enhanced class must agree with the reply's: a 4xx never bounces.
            ("450 5.1.1 mismatched class", Retry),
            ("550 4.1.1 mismatched class", GiveUp),
            ("550 5.1 not an enhanced code", GiveUp),
            ("550 5.1.1234 detail too long", GiveUp),
        ];
        assert!(table.len() >= 30);
        for (raw, want) in table {
            let reply = SmtpReply::parse(raw).unwrap_or_else(|| panic!("unparsable: {raw}"));
            assert_eq!(reply.verdict(), *want, "{raw:?} parsed as {reply:?}");
        }
        let multi = SmtpReply::parse(table[5].0).unwrap();
        assert_eq!(multi.code, 421);
        assert_eq!(multi.enhanced, Some((4, 7, 28)));
        assert!(multi.text.ends_with("4.7.28 Try again later."), "{}", multi.text);
        assert_eq!(SmtpReply::parse("hello"), None);
        assert_eq!(SmtpReply::parse("550-5.1.1 a\r\n451 4.3.0 b"), None);
        assert_eq!(SmtpReply::parse(""), None);
    }

    proptest::proptest! {
        /// Backoff never goes down as attempts go up, never passes its cap, never panics.
        #[test]
        fn backoff_is_monotone_up_to_its_cap(
            initial_ms in 0u64..=u64::MAX / 2,
            max_ms in 0u64..=u64::MAX / 2,
            factor in 1.0f64..1e6,
            a in 0u32..=u32::MAX,
            b in 0u32..=u32::MAX,
        ) {
            let p = RetryPolicy {
                initial: Duration::from_millis(initial_ms.min(max_ms)),
                max: Duration::from_millis(max_ms),
                factor,
                ..RetryPolicy::default()
            };
            let (lo, hi) = (a.min(b), a.max(b));
            let (d_lo, d_hi) = (p.backoff(lo), p.backoff(hi));
            proptest::prop_assert!(d_lo <= d_hi, "{:?} at {} > {:?} at {}", d_lo, lo, d_hi, hi);
            proptest::prop_assert!(d_hi <= p.max);
            if p.initial <= p.max && lo >= 1 {
                proptest::prop_assert!(d_lo >= p.initial.min(p.max));
            }
        }

        /// With jitter, the delay stays within ± jitter of the backoff and under the cap.
        #[test]
        fn jittered_delay_stays_in_bounds(
            attempt in 1u32..=u32::MAX,
            jitter in 0.0f64..0.99,
            seed in proptest::prelude::any::<u64>(),
        ) {
            let p = RetryPolicy { jitter, ..RetryPolicy::default() };
            let mut rng = StdRng::seed_from_u64(seed);
            let base = p.backoff(attempt).as_secs_f64();
            let d = p.delay(attempt, &mut rng).as_secs_f64();
            proptest::prop_assert!(d <= p.max.as_secs_f64() + 1e-9);
            proptest::prop_assert!(d >= base * (1.0 - jitter) - 1e-6);
        }
    }

    #[test]
    fn http_status_table() {
        use Verdict::*;
        let table = [
            (200, Delivered),
            (201, Delivered),
            (204, Delivered),
            (301, Retry),
            (400, GiveUp),
            (401, GiveUp),
            (403, GiveUp),
            (404, GiveUp),
            (408, Retry),
            (410, GiveUp),
            (413, GiveUp),
            (429, Retry),
            (500, Retry),
            (502, Retry),
            (503, Retry),
            (504, Retry),
        ];
        for (status, want) in table {
            assert_eq!(classify_http_status(status), want, "HTTP {status}");
        }
    }
}
