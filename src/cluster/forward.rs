//! The write path: registers, deregisters, beats and lapses of client sessions, each applied
//! here for the keys this node owns and forwarded to the owners of the rest, batched per owner
//! and within a bounded budget of forwards in flight.

use std::sync::Arc;

use futures_util::future::join_all;
use thiserror::Error;
use tracing::warn;

use super::link::PeerError;
use super::stats::Stats;
use super::{Cluster, FORWARD_TIMEOUT};
use crate::hash::HashSet;
use crate::model::{Instance, InstanceKey, NodeId};
use crate::wire::{ErrorBody, ErrorCode, Message};

/// Why a write forwarded to its owner did not complete.
#[derive(Debug, Clone, Error)]
pub enum ForwardError {
    #[error("too many forwards in flight")]
    Overloaded,
    #[error("owner node {owner} is unreachable")]
    Unreachable { owner: NodeId },
    #[error("forward to owner node {owner} failed: {reason}")]
    Failed { owner: NodeId, reason: String },
    /// The owner answered with an Error frame.
    #[error("owner node {owner} refused the forward: {}", error.message)]
    Refused { owner: NodeId, error: ErrorBody },
}

/// What an owner's refusal of a forwarded write means for the client whose write it was: the
/// conditions a client acts on (try another node, retry later) keep their meaning across the
/// forward; anything else is the owner's own refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerRefusal {
    NotReady,
    ShuttingDown,
    Overloaded,
    Timeout,
    Other,
}

impl ForwardError {
    /// For a refusal by the owner: what it means, and the owner's words.
    pub fn owner_refusal(&self) -> Option<(NodeId, OwnerRefusal, &str)> {
        let ForwardError::Refused { owner, error } = self else {
            return None;
        };
        let refusal = match error.kind() {
            Some(ErrorCode::NotReady) => OwnerRefusal::NotReady,
            Some(ErrorCode::ShuttingDown) => OwnerRefusal::ShuttingDown,
            Some(ErrorCode::Overloaded) => OwnerRefusal::Overloaded,
            Some(ErrorCode::Timeout) => OwnerRefusal::Timeout,
            _ => OwnerRefusal::Other,
        };
        Some((*owner, refusal, &error.message))
    }
}

impl Cluster {
    /// Sends one forward to `owner`, holding a slot of the bounded in-flight budget.
    pub(super) async fn forward(
        &self,
        owner: NodeId,
        msg: Message,
    ) -> Result<Message, ForwardError> {
        let _slot = self
            .forwards
            .try_acquire()
            .map_err(|_| ForwardError::Overloaded)?;
        Stats::add(&self.stats.forwards, 1);
        self.metrics.peer(owner).forwards_sent.inc();
        let link = self
            .member_by_id(owner)
            .and_then(|m| m.data_link())
            .ok_or_else(|| {
                Stats::add(&self.stats.forward_errors, 1);
                self.metrics.peer(owner).forward_errors.inc();
                ForwardError::Unreachable { owner }
            })?;
        match link.call(&msg, FORWARD_TIMEOUT).await {
            Ok(Message::Error(error)) | Err(PeerError::Remote(error)) => {
                Stats::add(&self.stats.forward_errors, 1);
                self.metrics.peer(owner).forward_errors.inc();
                Err(ForwardError::Refused { owner, error })
            }
            Ok(answer) => Ok(answer),
            Err(other) => {
                Stats::add(&self.stats.forward_errors, 1);
                self.metrics.peer(owner).forward_errors.inc();
                Err(ForwardError::Failed {
                    owner,
                    reason: other.to_string(),
                })
            }
        }
    }

    /// Splits items by owner: this node's are returned under its own id. (A few owners at
    /// most, one for a single-instance request: a list beats a map.)
    fn by_owner<T>(
        &self,
        items: impl IntoIterator<Item = (usize, T)>,
        key: impl Fn(&T) -> (&str, u16),
    ) -> Vec<(NodeId, Vec<(usize, T)>)> {
        let o = self.store.ownership();
        let mut groups: Vec<(NodeId, Vec<(usize, T)>)> = Vec::new();
        for (i, item) in items {
            let (ip, port) = key(&item);
            let owner = o.owner(ip, port);
            match groups.iter_mut().find(|(id, _)| *id == owner) {
                Some((_, group)) => group.push((i, item)),
                None => groups.push((owner, vec![(i, item)])),
            }
        }
        groups
    }

    /// Registers instances at their owners (this node's directly, the rest forwarded, batched
    /// per owner and gathered with other forwards to it, see [`gather`]); answers once every
    /// owner has applied its share.
    pub async fn register(
        self: &Arc<Self>,
        instances: &[Instance],
        session: u64,
    ) -> Result<u32, ForwardError> {
        let me = self.config.node_id;
        let groups = self.by_owner(instances.iter().enumerate(), |i| (&i.key.ip, i.key.port));
        let mut remote = Vec::new();
        for (owner, items) in groups {
            if owner == me {
                for (_, inst) in items {
                    self.store.register(inst, session);
                }
            } else {
                // A register (a client's redo after a reconnect, say) is as good a sign of life
                // as a beat (see `Cluster::beat`).
                self.store
                    .note_client_beats(items.iter().map(|(_, i)| &i.key));
                let batch: Vec<Instance> = items.into_iter().map(|(_, i)| i.clone()).collect();
                remote.push(self.forward_register(owner, session, batch));
            }
        }
        for r in join_all(remote).await {
            r?;
        }
        Ok(instances.len() as u32)
    }

    pub async fn deregister(&self, keys: &[InstanceKey]) -> Result<u32, ForwardError> {
        let me = self.config.node_id;
        let mut removed = 0;
        let mut remote = Vec::new();
        for (owner, items) in self.by_owner(keys.iter().enumerate(), |k| (&k.ip, k.port)) {
            if owner == me {
                removed += items
                    .iter()
                    .filter(|(_, k)| self.store.deregister(k))
                    .count() as u32;
            } else {
                let batch = items.into_iter().map(|(_, k)| k.clone()).collect();
                remote.push(async move {
                    let answer = self.forward(owner, Message::FwdDeregister(batch)).await?;
                    expect_ack(owner, answer)
                });
            }
        }
        for r in join_all(remote).await {
            removed += r?;
        }
        Ok(removed)
    }

    /// Beats keys at their owners; answers the indexes (into `keys`) the owners do not know.
    pub async fn beat(&self, keys: &[InstanceKey]) -> Result<Vec<u16>, ForwardError> {
        let me = self.config.node_id;
        let mut unknown = Vec::new();
        let mut remote = Vec::new();
        for (owner, items) in self.by_owner(keys.iter().enumerate(), |k| (&k.ip, k.port)) {
            let idx: Vec<usize> = items.iter().map(|(i, _)| *i).collect();
            if owner == me {
                let mine: Vec<&InstanceKey> = items.iter().map(|(_, k)| *k).collect();
                unknown.extend(
                    self.store
                        .beat_batch(&mine)
                        .into_iter()
                        .map(|j| idx[j as usize] as u16),
                );
            } else {
                // The client beats here: evidence that it is alive even if the owner cannot be
                // reached (see `Store::merge`).
                self.store.note_client_beats(items.iter().map(|(_, k)| *k));
                let batch = items.into_iter().map(|(_, k)| k.clone()).collect();
                remote.push(async move {
                    (
                        owner,
                        idx,
                        self.forward(owner, Message::FwdBeat(batch)).await,
                    )
                });
            }
        }
        for (owner, idx, r) in join_all(remote).await {
            match r? {
                Message::BeatAck(sub) => {
                    let gone: HashSet<usize> = sub.iter().map(|&j| j as usize).collect();
                    unknown.extend(
                        idx.iter()
                            .enumerate()
                            .filter(|(j, _)| gone.contains(j))
                            .map(|(_, &i)| i as u16),
                    );
                }
                other => return Err(unexpected(owner, other)),
            }
        }
        unknown.sort_unstable();
        Ok(unknown)
    }

    /// A client session dropped: tell each owner to lapse its share (best effort; an owner
    /// that misses it still expires the instances by their lease).
    pub async fn lapse_session(&self, session: u64, keys: Vec<InstanceKey>) {
        let me = self.config.node_id;
        let mut remote = Vec::new();
        for (owner, items) in self.by_owner(keys.into_iter().enumerate(), |k| (&k.ip, k.port)) {
            if owner == me {
                for (_, k) in &items {
                    self.store.lapse_session(k, session);
                }
            } else {
                // Beats of these keys no longer come through here.
                for (_, k) in &items {
                    self.store.note_session_gone(k, session);
                }
                let batch: Vec<InstanceKey> = items.into_iter().map(|(_, k)| k).collect();
                for chunk in batch.chunks(crate::model::BATCH_INSTANCES_MAX) {
                    remote.push(self.forward(
                        owner,
                        Message::FwdLapse {
                            session,
                            keys: chunk.to_vec(),
                        },
                    ));
                }
            }
        }
        for r in join_all(remote).await {
            if let Err(e) = r {
                warn!(error = %e, "could not tell an owner that a session dropped");
            }
        }
    }
}

/// An owner answered a forward with a message that is not the answer to it.
fn unexpected(owner: NodeId, m: Message) -> ForwardError {
    ForwardError::Failed {
        owner,
        reason: format!("answered with {:?}", m.opcode()),
    }
}

pub(super) fn expect_ack(owner: NodeId, m: Message) -> Result<u32, ForwardError> {
    match m {
        Message::Ack(n) => Ok(n),
        other => Err(unexpected(owner, other)),
    }
}
