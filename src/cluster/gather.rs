//! Registers forwarded to one owner at about the same time, gathered into one FwdRegister frame.
//!
//! A client that pipelines single-instance Register frames makes its node forward each one: a
//! peer frame, a decode and an answer at the owner, a request-table entry and a wake-up at the
//! forwarding node, per instance. Here the first forward to an owner (for one session) opens a
//! batch and a task that sends it after one pass of the scheduler; the forwards that arrive
//! meanwhile join it. Each caller gets the owner's answer to the frame its instances went in.
//!
//! Order is unaffected: writes of one connection to the same key never run at once (the
//! session's in-flight claims), so no frame holds two writes of one key.

use std::sync::{Arc, Mutex};

use futures_util::future::join_all;
use tokio::sync::oneshot;

use super::Cluster;
use super::forward::{ForwardError, expect_ack};
use crate::hash::HashMap;
use crate::model::NodeId;
use crate::model::{BATCH_INSTANCES_MAX, Instance};
use crate::wire::Message;

/// A gathered frame stays below this many bytes of instances (a single forward larger than it
/// goes alone; it came in a client frame, so it fits in a peer frame).
const GATHER_BYTES_MAX: usize = 1 << 20;

/// Forwards waiting for their batch to be sent, by owner and session.
#[derive(Default)]
pub(super) struct Gather {
    open: Mutex<HashMap<(NodeId, u64), Vec<Waiting>>>,
}

struct Waiting {
    instances: Vec<Instance>,
    done: oneshot::Sender<Result<(), ForwardError>>,
}

/// One FwdRegister frame of a batch, and whom to tell its answer.
#[derive(Default)]
struct Frame {
    instances: Vec<Instance>,
    bytes: usize,
    done: Vec<oneshot::Sender<Result<(), ForwardError>>>,
}

impl Cluster {
    /// Registers `instances` (all owned by `owner`) at their owner, in a frame shared with the
    /// other forwards to it of the same moment; answers once the owner has answered that frame.
    pub(super) async fn forward_register(
        self: &Arc<Self>,
        owner: NodeId,
        session: u64,
        instances: Vec<Instance>,
    ) -> Result<(), ForwardError> {
        let (done, answer) = oneshot::channel();
        let opened = {
            let mut open = self.gather.open.lock().unwrap();
            let batch = open.entry((owner, session)).or_default();
            batch.push(Waiting { instances, done });
            batch.len() == 1
        };
        if opened {
            // Its own task: the batch must be sent even if this caller's future is dropped.
            let cluster = self.clone();
            self.tracker
                .spawn(async move { cluster.send_gathered(owner, session).await });
        }
        answer.await.unwrap_or_else(|_| {
            Err(ForwardError::Failed {
                owner,
                reason: "the gathered forward was dropped unanswered".into(),
            })
        })
    }

    async fn send_gathered(self: Arc<Self>, owner: NodeId, session: u64) {
        // Let the writes that are ready to run add their forwards first.
        tokio::task::yield_now().await;
        let waiting = self
            .gather
            .open
            .lock()
            .unwrap()
            .remove(&(owner, session))
            .unwrap_or_default();
        let cluster = &self;
        let sends = frames_of(waiting).into_iter().map(|frame| async move {
            let msg = Message::FwdRegister {
                session,
                instances: frame.instances,
            };
            let answer = cluster
                .forward(owner, msg)
                .await
                .and_then(|m| expect_ack(owner, m));
            for done in frame.done {
                let _ = done.send(answer.as_ref().map(|_| ()).map_err(Clone::clone));
            }
        });
        join_all(sends).await;
    }
}

/// Packs whole forwards into frames within the FwdRegister limits, in arrival order.
fn frames_of(waiting: Vec<Waiting>) -> Vec<Frame> {
    let mut frames = vec![Frame::default()];
    for w in waiting {
        let bytes: usize = w.instances.iter().map(Instance::encoded_len).sum();
        let last = frames.last().expect("never empty");
        let full = last.instances.len() + w.instances.len() > BATCH_INSTANCES_MAX
            || last.bytes + bytes > GATHER_BYTES_MAX;
        if full && !last.done.is_empty() {
            frames.push(Frame::default());
        }
        let frame = frames.last_mut().expect("never empty");
        frame.instances.extend(w.instances);
        frame.bytes += bytes;
        frame.done.push(w.done);
    }
    frames.retain(|f| !f.done.is_empty());
    frames
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{InstanceKey, ServiceName, Text};

    fn waiting(n: usize, meta_bytes: usize) -> Waiting {
        let instances = (0..n)
            .map(|i| {
                let key = InstanceKey {
                    service: ServiceName::new("public", "DEFAULT_GROUP", "svc"),
                    cluster: Text::from_static("DEFAULT"),
                    ip: Text::from(format!("10.0.{}.{}", i / 256, i % 256)),
                    port: 80,
                };
                let mut inst = Instance::new(key);
                if meta_bytes > 0 {
                    inst.metadata = vec![(Text::from("k"), Text::from("v".repeat(meta_bytes)))];
                }
                inst
            })
            .collect();
        Waiting {
            instances,
            done: oneshot::channel().0,
        }
    }

    fn shape(frames: &[Frame]) -> Vec<(usize, usize)> {
        frames
            .iter()
            .map(|f| (f.done.len(), f.instances.len()))
            .collect()
    }

    #[test]
    fn forwards_share_a_frame_up_to_the_instance_limit() {
        let w = (0..5).map(|_| waiting(1, 0)).collect();
        assert_eq!(shape(&frames_of(w)), vec![(5, 5)]);
        // 3 × 1500 instances: the third would pass 4096, so it starts a frame of its own.
        let w = (0..3).map(|_| waiting(1500, 0)).collect();
        assert_eq!(shape(&frames_of(w)), vec![(2, 3000), (1, 1500)]);
    }

    #[test]
    fn forwards_share_a_frame_up_to_the_byte_limit() {
        // Each forward carries ~400 KiB of metadata: two fit under 1 MiB, a third does not.
        let w = (0..5).map(|_| waiting(1, 400 << 10)).collect();
        assert_eq!(shape(&frames_of(w)), vec![(2, 2), (2, 2), (1, 1)]);
        // One forward above the limit still goes, alone.
        let w = vec![waiting(3, 400 << 10), waiting(1, 0)];
        assert_eq!(shape(&frames_of(w)), vec![(1, 3), (1, 1)]);
    }

    #[test]
    fn encoded_len_is_the_length_of_the_encoding() {
        for w in [waiting(3, 0), waiting(2, 1000)] {
            for i in &w.instances {
                let mut out = bytes::BytesMut::new();
                i.encode(&mut out);
                assert_eq!(i.encoded_len(), out.len());
            }
        }
    }
}
