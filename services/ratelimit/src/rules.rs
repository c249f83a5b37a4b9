//! The per-user guard's rules, as pure functions of (state, now, policy), so
//! they can be tested exhaustively with explicit time.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sesame_core::model::{PendingSlot, UserGuardState};
use sesame_core::time::UnixMillis;
use sesame_core::ChallengeId;

/// Thresholds, per tenant. Defaults follow the design brief (§3): one
/// pending challenge, 5 prompts per trailing 10 minutes, number matching
/// forced after 3 denials in 15 minutes, prompts locked for an hour after 6
/// denials in 60 minutes, 20 minutes of silence after "this wasn't me".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuardPolicy {
    /// At most one pending challenge per user.
    pub one_pending: bool,
    /// Prompts (challenges that reach the user's phones) per window.
    pub max_prompts: u32,
    pub prompt_window_secs: u64,
    /// Denials within `escalate_window_secs` that force number matching.
    pub force_number_match_after: u32,
    pub escalate_window_secs: u64,
    /// Denials within `lock_window_secs` that lock prompts for `lock_secs`.
    pub lock_after: u32,
    pub lock_window_secs: u64,
    pub lock_secs: u64,
    /// Silence after "this wasn't me".
    pub fraud_mute_secs: u64,
}

impl Default for GuardPolicy {
    fn default() -> Self {
        GuardPolicy {
            one_pending: true,
            max_prompts: 5,
            prompt_window_secs: 600,
            force_number_match_after: 3,
            escalate_window_secs: 900,
            lock_after: 6,
            lock_window_secs: 3600,
            lock_secs: 3600,
            fraud_mute_secs: 1200,
        }
    }
}

fn ms(secs: u64) -> i64 {
    i64::try_from(Duration::from_secs(secs).as_millis()).unwrap_or(i64::MAX)
}

impl GuardPolicy {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_prompts == 0 {
            return Err("max_prompts must be at least 1".into());
        }
        if self.prompt_window_secs == 0 {
            return Err("prompt_window_secs must be at least 1".into());
        }
        const YEAR: u64 = 366 * 86_400;
        for (name, v) in [
            ("prompt_window_secs", self.prompt_window_secs),
            ("escalate_window_secs", self.escalate_window_secs),
            ("lock_window_secs", self.lock_window_secs),
            ("lock_secs", self.lock_secs),
            ("fraud_mute_secs", self.fraud_mute_secs),
        ] {
            if v > YEAR {
                return Err(format!("{name} is {v}; at most a year ({YEAR}) is allowed"));
            }
        }
        Ok(())
    }

    /// The longest window any rule looks back over.
    pub fn longest_window_ms(&self) -> i64 {
        ms(self
            .prompt_window_secs
            .max(self.escalate_window_secs)
            .max(self.lock_window_secs))
    }
}

/// Why a new challenge is refused, and from when it may be asked again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Another challenge is still pending for this user.
    Pending {
        challenge_id: ChallengeId,
        retry_at: UnixMillis,
    },
    /// The user already got `max_prompts` prompts in the trailing window.
    TooManyPrompts { retry_at: UnixMillis },
    /// The user reported fraud ("this wasn't me").
    Muted { until: UnixMillis },
    /// Too many denials.
    Locked { until: UnixMillis },
}

impl Refusal {
    pub fn retry_at(&self) -> UnixMillis {
        match self {
            Refusal::Pending { retry_at, .. } | Refusal::TooManyPrompts { retry_at } => *retry_at,
            Refusal::Muted { until } | Refusal::Locked { until } => *until,
        }
    }

    /// Stable, label-safe name for metrics and error details.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Pending { .. } => "USER_CHALLENGE_PENDING",
            Refusal::TooManyPrompts { .. } => "USER_PROMPT_LIMIT",
            Refusal::Muted { .. } => "USER_MUTED_AFTER_FRAUD_REPORT",
            Refusal::Locked { .. } => "USER_LOCKED_AFTER_DENIALS",
        }
    }
}

/// What changed after a denial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escalation {
    /// Number matching is now forced for this user.
    NumberMatchForced,
    /// Prompts locked until then.
    Locked { until: UnixMillis },
    /// "This wasn't me": prompts muted until then.
    Muted { until: UnixMillis },
}

/// Drops timestamps no rule can look at any more.
pub fn prune(state: &mut UserGuardState, now: UnixMillis, policy: &GuardPolicy) {
    let horizon = now.saturating_sub(policy.longest_window_ms());
    state.pushes.retain(|t| *t > horizon);
    state.denials.retain(|t| *t > horizon);
    if state.pending.as_ref().is_some_and(|p| p.expires_at <= now) {
        state.pending = None;
    }
}

fn count_since(times: &[UnixMillis], since: UnixMillis) -> usize {
    times.iter().filter(|t| **t > since).count()
}

/// Whether number matching must be used for this user now.
pub fn number_match_forced(state: &UserGuardState, now: UnixMillis, policy: &GuardPolicy) -> bool {
    policy.force_number_match_after > 0
        && count_since(
            &state.denials,
            now.saturating_sub(ms(policy.escalate_window_secs)),
        ) >= policy.force_number_match_after as usize
}

/// Decides on a new challenge. `pending_live` says whether the challenge in
/// the pending slot (if any) is still pending: the slot is not cleared when a
/// challenge is answered, so the caller checks the challenge itself.
pub fn decide(
    state: &UserGuardState,
    now: UnixMillis,
    policy: &GuardPolicy,
    pending_live: bool,
) -> Result<(), Refusal> {
    if state.locked_until > now {
        return Err(Refusal::Locked {
            until: state.locked_until,
        });
    }
    if state.muted_until > now {
        return Err(Refusal::Muted {
            until: state.muted_until,
        });
    }
    if let Some(p) = state.pending.as_ref().filter(|_| policy.one_pending) {
        if pending_live && p.expires_at > now {
            return Err(Refusal::Pending {
                challenge_id: p.challenge_id.clone(),
                retry_at: p.expires_at,
            });
        }
    }
    let window = ms(policy.prompt_window_secs);
    let mut in_window: Vec<UnixMillis> = state
        .pushes
        .iter()
        .copied()
        .filter(|t| *t > now.saturating_sub(window))
        .collect();
    if in_window.len() >= policy.max_prompts as usize {
        in_window.sort_unstable();
        // Free again when enough of the oldest ones leave the window.
        let k = in_window.len() - policy.max_prompts as usize;
        return Err(Refusal::TooManyPrompts {
            retry_at: in_window[k].saturating_add(window),
        });
    }
    Ok(())
}

/// Records an admitted challenge (call only after `decide` said yes).
pub fn admit(
    state: &mut UserGuardState,
    now: UnixMillis,
    policy: &GuardPolicy,
    challenge_id: &ChallengeId,
    expires_at: UnixMillis,
) {
    prune(state, now, policy);
    state.pushes.push(now);
    state.pending = Some(PendingSlot {
        challenge_id: challenge_id.clone(),
        expires_at,
    });
}

/// Records a denial; `fraud` for "this wasn't me". Returns every
/// escalation it caused (forced number matching, lock, mute), in that order.
pub fn record_denial(
    state: &mut UserGuardState,
    now: UnixMillis,
    policy: &GuardPolicy,
    fraud: bool,
) -> Vec<Escalation> {
    prune(state, now, policy);
    let forced_before = number_match_forced(state, now, policy);
    state.denials.push(now);
    let mut escalations = Vec::new();
    if !forced_before && number_match_forced(state, now, policy) {
        escalations.push(Escalation::NumberMatchForced);
    }
    if policy.lock_after > 0
        && state.locked_until <= now
        && count_since(
            &state.denials,
            now.saturating_sub(ms(policy.lock_window_secs)),
        ) >= policy.lock_after as usize
    {
        state.locked_until = now.saturating_add(ms(policy.lock_secs));
        escalations.push(Escalation::Locked {
            until: state.locked_until,
        });
    }
    if fraud {
        state.muted_until = state
            .muted_until
            .max(now.saturating_add(ms(policy.fraud_mute_secs)));
        escalations.push(Escalation::Muted {
            until: state.muted_until,
        });
    }
    escalations
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn admit_at(s: &mut UserGuardState, now: i64, p: &GuardPolicy) -> Result<(), Refusal> {
        decide(s, now, p, false)?;
        admit(s, now, p, &ChallengeId::generate(), now + 2 * MIN);
        Ok(())
    }

    #[test]
    fn sixth_prompt_in_ten_minutes_is_refused_until_the_first_leaves() {
        let p = GuardPolicy::default();
        let mut s = UserGuardState::default();
        for i in 0..5 {
            admit_at(&mut s, i * MIN, &p).unwrap();
        }
        let r = admit_at(&mut s, 5 * MIN, &p).unwrap_err();
        assert_eq!(r, Refusal::TooManyPrompts { retry_at: 10 * MIN });
        // One millisecond before the window has moved past t = 0, the first
        // prompt still counts (the window is (now - 10 min, now]).
        assert!(admit_at(&mut s, 10 * MIN - 1, &p).is_err());
        admit_at(&mut s, 10 * MIN, &p).unwrap();
        assert!(admit_at(&mut s, 10 * MIN + 1, &p).is_err());
    }

    #[test]
    fn one_pending_challenge() {
        let p = GuardPolicy::default();
        let mut s = UserGuardState::default();
        let id = ChallengeId::generate();
        decide(&s, 0, &p, true).unwrap();
        admit(&mut s, 0, &p, &id, 2 * MIN);
        assert_eq!(
            decide(&s, MIN, &p, true),
            Err(Refusal::Pending {
                challenge_id: id,
                retry_at: 2 * MIN
            })
        );
        // Answered (not live) or expired: the slot is free.
        decide(&s, MIN, &p, false).unwrap();
        decide(&s, 2 * MIN, &p, true).unwrap();
    }

    #[test]
    fn denials_escalate() {
        let p = GuardPolicy::default();
        let mut s = UserGuardState::default();
        assert_eq!(record_denial(&mut s, 0, &p, false), vec![]);
        assert_eq!(record_denial(&mut s, MIN, &p, false), vec![]);
        assert_eq!(
            record_denial(&mut s, 2 * MIN, &p, false),
            vec![Escalation::NumberMatchForced]
        );
        assert!(number_match_forced(&s, 3 * MIN, &p));
        assert!(
            !number_match_forced(&s, 16 * MIN, &p),
            "forced only within 15 min"
        );
        for i in 3..5 {
            record_denial(&mut s, i * MIN, &p, false);
        }
        let e = record_denial(&mut s, 5 * MIN, &p, true);
        assert_eq!(
            e,
            vec![
                Escalation::Locked { until: 65 * MIN },
                Escalation::Muted { until: 25 * MIN }
            ],
            "a fraud report that also locks reports both"
        );
        assert_eq!(
            decide(&s, 6 * MIN, &p, false),
            Err(Refusal::Locked { until: 65 * MIN })
        );
        decide(&s, 65 * MIN, &p, false).unwrap();
    }

    #[test]
    fn fraud_report_mutes() {
        let p = GuardPolicy::default();
        let mut s = UserGuardState::default();
        assert_eq!(
            record_denial(&mut s, 0, &p, true),
            vec![Escalation::Muted { until: 20 * MIN }]
        );
        assert_eq!(
            decide(&s, MIN, &p, false),
            Err(Refusal::Muted { until: 20 * MIN })
        );
        decide(&s, 20 * MIN, &p, false).unwrap();
    }

    #[test]
    fn prune_keeps_state_small() {
        let p = GuardPolicy::default();
        let mut s = UserGuardState::default();
        for i in 0..1000 {
            let _ = admit_at(&mut s, i * MIN, &p);
            record_denial(&mut s, i * MIN, &p, false);
        }
        assert!(
            s.pushes.len() <= 60 && s.denials.len() <= 60,
            "{} {}",
            s.pushes.len(),
            s.denials.len()
        );
    }
}
