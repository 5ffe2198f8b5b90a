//! Frequency caps over rolling windows, checked against given send times.

use chrono::{DateTime, Utc};

use crate::rules::{Cap, CapChannel, Channel};

/// The first cap that one more `channel` message at `at` would exceed, given the user's earlier
/// sends as (channel, time). Campaign caps count only that campaign's sends: pass them filtered.
pub fn exceeded<'c>(
    caps: &'c [Cap],
    sends: &[(Channel, DateTime<Utc>)],
    channel: Channel,
    at: DateTime<Utc>,
) -> Option<&'c Cap> {
    caps.iter().find(|cap| {
        let applies = match cap.channel {
            CapChannel::Any => true,
            CapChannel::Only(c) => c == channel,
        };
        applies && {
            let used = sends
                .iter()
                .filter(|(c, t)| {
                    *t > at - cap.per
                        && *t <= at
                        && (cap.channel == CapChannel::Any || cap.channel == CapChannel::Only(*c))
                })
                .count();
            used >= cap.max as usize
        }
    })
}

pub fn describe(cap: &Cap) -> String {
    let channel = match cap.channel {
        CapChannel::Any => "any".to_string(),
        CapChannel::Only(c) => c.to_string(),
    };
    format!(
        "{channel}: max {} per {}",
        cap.max,
        crate::rules::duration::format_duration(cap.per)
    )
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;

    #[test]
    fn counts_only_the_window_and_channel() {
        let now = Utc::now();
        let caps = vec![
            Cap {
                channel: CapChannel::Only(Channel::Email),
                max: 2,
                per: Duration::days(1),
            },
            Cap {
                channel: CapChannel::Any,
                max: 3,
                per: Duration::days(1),
            },
        ];
        let old = (Channel::Email, now - Duration::days(2));
        let push = (Channel::Push, now - Duration::hours(1));
        let email = (Channel::Email, now - Duration::hours(2));
        assert!(exceeded(&caps, &[old, push, email], Channel::Email, now).is_none());
        assert_eq!(
            exceeded(&caps, &[email, email], Channel::Email, now),
            Some(&caps[0])
        );
        assert!(exceeded(&caps, &[email, email], Channel::Push, now).is_none());
        assert_eq!(
            exceeded(&caps, &[email, push, push], Channel::Push, now),
            Some(&caps[1])
        );
    }
}
