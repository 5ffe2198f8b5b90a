//! Deterministic arm assignment.
//!
//! A user's bucket is a stable hash of (campaign id, user id) — or (global salt, user id) for the
//! global control group — into 0..10 000. The user is in the arm when the bucket is below the
//! configured share in basis points, so the same user lands in the same arm across restarts, nodes
//! and edits of other fields, and changing the share only moves the users at the boundary.

use sha2::{Digest, Sha256};

use crate::rules::{Campaign, Global, Percent};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arm {
    Treatment,
    Holdout,
    /// The global control group: never messaged by any campaign.
    Control,
}

impl Arm {
    pub fn as_str(self) -> &'static str {
        match self {
            Arm::Treatment => "treatment",
            Arm::Holdout => "holdout",
            Arm::Control => "control",
        }
    }
}

/// A bucket in 0..10 000 from the SHA-256 of the parts (separated so `("a","bc")` ≠ `("ab","c")`).
pub fn bucket(parts: &[&str]) -> u32 {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    let digest = h.finalize();
    let n = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
    (n % 10_000) as u32
}

fn within(share: Percent, bucket: u32) -> bool {
    bucket < share.basis_points
}

pub fn in_control_group(global: &Global, salt: &str, user_id: &str) -> bool {
    within(global.control_group, bucket(&["control", salt, user_id]))
}

pub fn assign(campaign: &Campaign, global: &Global, salt: &str, user_id: &str) -> Arm {
    if in_control_group(global, salt, user_id) {
        Arm::Control
    } else if within(campaign.holdout, bucket(&["holdout", &campaign.id, user_id])) {
        Arm::Holdout
    } else {
        Arm::Treatment
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_stable_and_spread() {
        assert_eq!(bucket(&["holdout", "c", "u1"]), bucket(&["holdout", "c", "u1"]));
        assert_ne!(bucket(&["a", "bc"]), bucket(&["ab", "c"]));
        let below = (0..100_000)
            .filter(|i| bucket(&["x", &i.to_string()]) < 1_000)
            .count();
        // 10% of 100k: 3 standard deviations is ±285.
        assert!((9_715..=10_285).contains(&below), "{below}");
    }

    #[test]
    fn raising_the_share_only_adds_users() {
        let ids: Vec<String> = (0..5_000).map(|i| format!("user-{i}")).collect();
        let at = |bp| -> Vec<bool> {
            ids.iter()
                .map(|u| within(Percent { basis_points: bp }, bucket(&["holdout", "c", u])))
                .collect()
        };
        let (ten, fifteen) = (at(1_000), at(1_500));
        assert!(ten.iter().zip(&fifteen).all(|(a, b)| !a || *b));
    }
}
