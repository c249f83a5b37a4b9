//! Applies the guard's rules through the storage trait.
//!
//! Every admission is a read-decide-write with a compare-and-set on the
//! user's versioned record (a lightweight transaction in ScyllaDB, the single
//! writer in the embedded store), retried when another request for the same
//! user won the race: concurrent requests on any number of replicas can never
//! admit more than the limit. Refusals that only time can lift (prompt limit,
//! mute, lock) are cached locally until they lift, so a flood of refused
//! requests for one user costs no storage call.

use std::collections::HashMap;
use std::sync::Arc;

use dashmap::DashMap;
use sesame_core::model::{ChallengeStatus, PendingSlot, UserGuardState};
use sesame_core::time::UnixMillis;
use sesame_core::{ChallengeId, TenantId};
use sesame_storage::{Storage, StorageError};

use crate::rules::{self, Escalation, GuardPolicy, Refusal};

/// Attempts of one read-decide-write before giving up under contention.
const MAX_CAS_ATTEMPTS: usize = 16;
/// Cached refusals kept at most (then the cache is cleared: it is only an optimisation).
const REFUSAL_CACHE_MAX: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("refused: {}", .0.reason())]
    Refused(Refusal),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("too many concurrent requests for one user")]
    Contention,
}

/// What the guard allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// Repeated denials: the challenge must use number matching.
    pub number_match_forced: bool,
    /// The pending challenge this one replaces: the caller cancels it once
    /// its own challenge is out, or hands it back to [`UserGuard::release`].
    pub replaced: Option<PendingSlot>,
}

/// The challenge in a user's pending slot, as storage sees it.
enum Slot {
    Free,
    /// Stored and still pending.
    Live,
    /// Admitted by another request that has not stored it yet.
    Unstored,
}

pub struct UserGuard {
    storage: Arc<dyn Storage>,
    default_policy: GuardPolicy,
    tenant_policies: HashMap<TenantId, GuardPolicy>,
    refusals: DashMap<(TenantId, String), Refusal>,
}

impl UserGuard {
    pub fn new(
        storage: Arc<dyn Storage>,
        default_policy: GuardPolicy,
        tenant_policies: HashMap<TenantId, GuardPolicy>,
    ) -> Self {
        UserGuard {
            storage,
            default_policy,
            tenant_policies,
            refusals: DashMap::new(),
        }
    }

    pub fn policy(&self, tenant: &TenantId) -> &GuardPolicy {
        self.tenant_policies
            .get(tenant)
            .unwrap_or(&self.default_policy)
    }

    fn cached_refusal(&self, key: &(TenantId, String), now: UnixMillis) -> Option<Refusal> {
        let hit = self.refusals.get(key).map(|r| r.clone())?;
        if hit.retry_at() > now {
            Some(hit)
        } else {
            self.refusals.remove_if(key, |_, r| r.retry_at() <= now);
            None
        }
    }

    fn cache_refusal(&self, key: (TenantId, String), refusal: &Refusal) {
        // A pending challenge can be answered at any moment: never cache that.
        if matches!(refusal, Refusal::Pending { .. }) {
            return;
        }
        if self.refusals.len() >= REFUSAL_CACHE_MAX {
            self.refusals.clear();
        }
        self.refusals.insert(key, refusal.clone());
    }

    /// The pending slot's state. A slot whose challenge is not stored (yet)
    /// counts as pending: between admission and storing, a concurrent request
    /// must not slip through. The caller releases the slot if it fails.
    async fn slot(&self, state: &UserGuardState, now: UnixMillis) -> Result<Slot, GuardError> {
        match &state.pending {
            Some(p) if p.expires_at > now => {
                match self.storage.get_challenge(&p.challenge_id).await? {
                    None => Ok(Slot::Unstored),
                    Some(c) if c.status(now) == ChallengeStatus::Pending => Ok(Slot::Live),
                    Some(_) => Ok(Slot::Free),
                }
            }
            _ => Ok(Slot::Free),
        }
    }

    /// Undoes an admission whose challenge was never created (storage or
    /// queue refused, or an idempotent retry returned an earlier challenge):
    /// gives the prompt back and puts back the slot it took — the replaced
    /// challenge's, if it replaced one, so that challenge keeps blocking.
    pub async fn release(
        &self,
        tenant: &TenantId,
        user: &str,
        challenge_id: &ChallengeId,
        admitted_at: UnixMillis,
        replaced: Option<PendingSlot>,
    ) -> Result<(), GuardError> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (version, mut state) = self.storage.get_user_guard(tenant, user).await?;
            if state.pending.as_ref().map(|p| &p.challenge_id) != Some(challenge_id) {
                return Ok(());
            }
            state.pending = replaced.clone();
            if let Some(i) = state.pushes.iter().position(|t| *t == admitted_at) {
                state.pushes.remove(i);
            }
            if self
                .storage
                .put_user_guard(tenant, user, version, &state)
                .await?
            {
                return Ok(());
            }
        }
        Err(GuardError::Contention)
    }

    /// Admits a new challenge for `user`, or says why not. With
    /// `replace_pending`, a still-pending challenge does not block: it is
    /// returned in [`Admission::replaced`] for the caller to cancel (the
    /// prompt limit, mute and lock still apply).
    pub async fn admit(
        &self,
        tenant: &TenantId,
        user: &str,
        challenge_id: &ChallengeId,
        expires_at: UnixMillis,
        now: UnixMillis,
        replace_pending: bool,
    ) -> Result<Admission, GuardError> {
        let storage = &self.storage;
        self.admit_with(
            tenant,
            user,
            challenge_id,
            expires_at,
            now,
            replace_pending,
            |version, state, _| async move {
                Ok(storage
                    .put_user_guard(tenant, user, version, &state)
                    .await?
                    .then_some(()))
            },
        )
        .await
        .map(|(admission, ())| admission)
    }

    /// [`UserGuard::admit`] with the caller's own write: `write(version,
    /// state, admission)` must store `state` only if the record is still at
    /// `version` (a compare-and-set), and answer `None` when it was not (the
    /// guard then reads again and decides again) or `Some` with what it
    /// wrote. This lets the challenge go into the same storage write as
    /// the record ([`Storage::create_challenge_guarded`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn admit_with<T, F, Fut>(
        &self,
        tenant: &TenantId,
        user: &str,
        challenge_id: &ChallengeId,
        expires_at: UnixMillis,
        now: UnixMillis,
        replace_pending: bool,
        mut write: F,
    ) -> Result<(Admission, T), GuardError>
    where
        F: FnMut(u64, UserGuardState, &Admission) -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>, GuardError>>,
    {
        let key = (tenant.clone(), user.to_owned());
        if let Some(r) = self.cached_refusal(&key, now) {
            return Err(GuardError::Refused(r));
        }
        let policy = self.policy(tenant);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (version, mut state) = self.storage.get_user_guard(tenant, user).await?;
            rules::prune(&mut state, now, policy);
            // Without the one-pending rule the slot decides nothing: skip the read.
            let slot = if policy.one_pending {
                self.slot(&state, now).await?
            } else {
                Slot::Free
            };
            let live = !matches!(slot, Slot::Free);
            let mut replaced = None;
            match rules::decide(&state, now, policy, live) {
                Ok(()) => {}
                // Replace only a stored challenge: one admitted but not yet
                // stored could otherwise still be stored and pushed after
                // being "replaced", leaving two live.
                Err(Refusal::Pending { .. }) if replace_pending && matches!(slot, Slot::Live) => {
                    if let Err(r) = rules::decide(&state, now, policy, false) {
                        self.cache_refusal(key, &r);
                        return Err(GuardError::Refused(r));
                    }
                    replaced = state.pending.clone();
                }
                Err(r) => {
                    self.cache_refusal(key, &r);
                    return Err(GuardError::Refused(r));
                }
            }
            let admission = Admission {
                number_match_forced: rules::number_match_forced(&state, now, policy),
                replaced,
            };
            rules::admit(&mut state, now, policy, challenge_id, expires_at);
            if let Some(written) = write(version, state, &admission).await? {
                return Ok((admission, written));
            }
        }
        Err(GuardError::Contention)
    }

    /// Records a denial (`fraud`: "this wasn't me") and returns the escalations.
    pub async fn record_denial(
        &self,
        tenant: &TenantId,
        user: &str,
        now: UnixMillis,
        fraud: bool,
    ) -> Result<Vec<Escalation>, GuardError> {
        let policy = self.policy(tenant);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (version, mut state) = self.storage.get_user_guard(tenant, user).await?;
            let escalations = rules::record_denial(&mut state, now, policy, fraud);
            if self
                .storage
                .put_user_guard(tenant, user, version, &state)
                .await?
            {
                let key = (tenant.clone(), user.to_owned());
                // The longest-lasting restriction goes into the cache.
                let refusal = match (state.muted_until > now, state.locked_until > now) {
                    (_, true) if state.locked_until >= state.muted_until => Some(Refusal::Locked {
                        until: state.locked_until,
                    }),
                    (true, _) => Some(Refusal::Muted {
                        until: state.muted_until,
                    }),
                    _ => None,
                };
                if let Some(r) = refusal {
                    self.cache_refusal(key, &r);
                }
                return Ok(escalations);
            }
        }
        Err(GuardError::Contention)
    }

    /// The user's guard state as of `now` (pruned), for the tenant to see.
    pub async fn status(
        &self,
        tenant: &TenantId,
        user: &str,
        now: UnixMillis,
    ) -> Result<UserGuardState, GuardError> {
        let (_, mut state) = self.storage.get_user_guard(tenant, user).await?;
        rules::prune(&mut state, now, self.policy(tenant));
        Ok(state)
    }
}
