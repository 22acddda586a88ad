//! A connection's pushes: every change of a subscribed service reaches the client as the whole
//! current snapshot (`NotifySubscriberRequest`), which it acks (`NotifySubscriberResponse`).
//!
//! This is the one place the Nacos front end takes pushes from the request API's
//! subscriptions (`Session::pushes`, and `note_answered` below): Nacos clients get full
//! snapshots whatever the native protocol's pushes become.
//!
//! - Coalesced per service: at most one push of a service is in flight on a connection; a
//!   change meanwhile is sent, as one fresh snapshot, when the ack comes or the ack timeout
//!   passes.
//! - Bounded: the stream's send queue is bounded in payloads and in bytes (the connection's
//!   share, [`crate::frontend::share`]); a connection that acks nothing while a push waits past
//!   the stall bound, or leaves its queue full that long, is closed (it does not read its
//!   stream).
//! - Never empty because of loading: while the node is not ready nothing is pushed; the pushes
//!   wait until it is.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::info;

use super::conn::{Connection, Registry};
use super::proto::Payload;
use crate::api::{Push, Snapshot};
use crate::frontend::nacos::convert::{self, GRPC_CACHE_MILLIS, InfoShape};
use crate::frontend::nacos::model::grpc::{NotifySubscriberRequest, ServerBody, ServerRequestHead};
use crate::frontend::nacos::model::params::clusters;
use crate::frontend::share::{Queued, Share};
use crate::hash::HashMap;
use crate::model::{ServiceName, ServiceSnapshot};

/// Payloads queued for the stream (pushes and the setup ack); when full, the push loop waits,
/// up to the stall bound. Their bytes are capped too, by the connection's share
/// (`QUEUED_BYTES_MAX`): 64 whole lists of a large service would otherwise be tens of MiB.
pub const OUTBOUND_QUEUE_MAX: usize = 64;
/// Bytes of whole lists taken from the subscriptions per wake of the push loop; what is left
/// stays marked and wakes the loop again (the native writer's budget, for the same reason: one
/// wake never encodes without bound).
const PUSH_BYTES_PER_WAKE: usize = 256 << 10;
/// While the node is not ready, how often the push loop looks again.
const NOT_READY_RECHECK: Duration = Duration::from_millis(100);

/// The snapshot of `name` a subscription answer just gave the client counts as pushed: the
/// push its subscription owes is skipped unless the service changed since.
pub fn note_answered(conn: &Connection, name: &ServiceName, snap: &Snapshot) {
    conn.session.push_queue().note_held(name, snap.revision());
}

/// The stream's send queue, within the connection's share of bytes.
#[derive(Clone)]
pub struct Outbox {
    pub tx: mpsc::Sender<Queued<Payload>>,
    pub share: Arc<Share>,
}

impl Outbox {
    /// Queues `p` once the connection's budget has room and the queue a place; false if the
    /// stream has ended.
    pub async fn send(&self, p: Payload) -> bool {
        let len = prost::Message::encoded_len(&p);
        let queued = self.share.queue(p, len).await;
        self.tx.send(queued).await.is_ok()
    }

    /// Queues `p` if the queue has a place now (the setup ack, sent on an empty queue).
    pub async fn try_send(&self, p: Payload) {
        let len = prost::Message::encoded_len(&p);
        let queued = self.share.queue(p, len).await;
        let _ = self.tx.try_send(queued);
    }
}

struct InFlight {
    name: ServiceName,
    sent: Instant,
}

/// Runs the connection's pushes until it closes.
pub async fn run(reg: Arc<Registry>, conn: Arc<Connection>, out: Outbox) {
    let api = reg.api.clone();
    let ack_timeout = reg.settings.push_ack_timeout;
    let stall = reg.settings.push_stall;
    let push_delay = Duration::from_millis(api.node().config.push_delay_ms);
    let queue = conn.session.push_queue().clone();
    let mut in_flight: HashMap<String, InFlight> = HashMap::default();
    // Services with a push in flight (not acked, within the ack timeout), and the snapshot owed
    // to each once it is.
    let mut busy: HashMap<ServiceName, Instant> = HashMap::default();
    let mut owed: HashMap<ServiceName, ServiceSnapshot> = HashMap::default();
    let mut marked = false;
    let mut next_id: u64 = 0;
    let mut last_ack = Instant::now();
    loop {
        // The next moment something times out: a busy service's ack, or the oldest unacked push
        // past the stall bound. No timer at all while nothing is in flight.
        let next_check = busy
            .values()
            .map(|sent| *sent + ack_timeout)
            .chain(in_flight.values().map(|f| f.sent + stall))
            .min();
        let check = async {
            match next_check {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = conn.stop.cancelled() => return,
            _ = queue.wait(), if !marked => {
                marked = true;
                if !push_delay.is_zero() {
                    tokio::time::sleep(push_delay).await;
                }
            }
            // Owed pushes held back while the node is not ready: look again.
            _ = tokio::time::sleep(NOT_READY_RECHECK), if marked => {}
            _ = conn.acked.notified() => {
                last_ack = Instant::now();
                for id in conn.take_acks() {
                    if let Some(f) = in_flight.remove(&id)
                        && busy.get(&f.name) == Some(&f.sent)
                    {
                        busy.remove(&f.name);
                    }
                }
            }
            _ = check => {
                let now = Instant::now();
                if in_flight.values().any(|f| now.duration_since(f.sent) >= stall) {
                    if now.duration_since(last_ack) >= stall {
                        info!(conn = conn.id(), "Nacos client does not ack its pushes; closing");
                        return reg.close(&conn, false).await;
                    }
                    // Acks come, this one's got lost: forget it.
                    in_flight.retain(|_, f| now.duration_since(f.sent) < stall);
                }
                busy.retain(|_, sent| now.duration_since(*sent) < ack_timeout);
            }
        }
        // Never an empty snapshot because this node is still loading: while it is not ready,
        // what is owed waits.
        if marked && api.is_ready() {
            marked = false;
            // The session's pushes are whole lists (it was opened full-only, see `conn.rs`).
            for push in conn.session.pushes(PUSH_BYTES_PER_WAKE) {
                if let Push::Full(snap) = push {
                    let s = snap.decode();
                    owed.insert(s.name.clone(), s);
                }
            }
        }
        let ready: Vec<ServiceName> = owed
            .keys()
            .filter(|n| !busy.contains_key(*n))
            .cloned()
            .collect();
        for name in ready {
            let snap = owed.remove(&name).expect("listed above");
            let sent = Instant::now();
            for payload in payloads(&reg, &conn, &snap, &mut next_id) {
                in_flight.insert(
                    next_id.to_string(),
                    InFlight {
                        name: name.clone(),
                        sent,
                    },
                );
                if tokio::time::timeout(stall, out.send(payload))
                    .await
                    .is_err()
                {
                    info!(
                        conn = conn.id(),
                        "Nacos client does not read its stream; closing"
                    );
                    return reg.close(&conn, false).await;
                }
            }
            busy.insert(name, sent);
        }
    }
}

/// The pushes of one snapshot: one per cluster filter the connection subscribed with.
fn payloads(
    reg: &Registry,
    conn: &Connection,
    s: &ServiceSnapshot,
    next_id: &mut u64,
) -> Vec<Payload> {
    let filters = conn.subscription(&s.name);
    filters
        .iter()
        .map(|filter| {
            *next_id += 1;
            let wanted = clusters(filter);
            let shape = InfoShape {
                grouped_name: false,
                clusters_text: filter,
                clusters: &wanted,
                healthy_only: false,
                cache_millis: GRPC_CACHE_MILLIS,
                last_ref_time: conn.next_ref_time(&s.name, reg.api.now_ms()),
            };
            let push = NotifySubscriberRequest {
                head: ServerRequestHead::new(*next_id, "naming"),
                namespace: s.name.namespace.to_string(),
                service_name: s.name.service.to_string(),
                group_name: s.name.group.to_string(),
                service_info: convert::service_info(&s.name, &s.instances, &shape),
            };
            Payload::new(NotifySubscriberRequest::TYPE, push.to_json())
        })
        .collect()
}
