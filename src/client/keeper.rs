//! What keeps a client connected and its registrations alive, behind the [`super::Client`]
//! calls: the current connection and failover to the next server, the token presented on each
//! connection, the redo after a reconnect (instances and subscriptions), the batched heartbeats,
//! and the routing of pushes into the subscriptions' cache.

use super::*;

impl Inner {
    /// The current connection, waiting for the maintainer to (re)establish one.
    pub(super) async fn current(&self) -> Result<Arc<Conn>, ClientError> {
        let mut rx = self.conn.subscribe();
        let ms = self.config.request_timeout.as_millis() as u64;
        let wait = async {
            loop {
                if self.closed.is_cancelled() {
                    return Err(ClientError::Closed);
                }
                if let Some(c) = rx.borrow_and_update().clone()
                    && !c.is_closed()
                {
                    return Ok(c);
                }
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return Err(ClientError::Closed) },
                    _ = self.closed.cancelled() => return Err(ClientError::Closed),
                }
            }
        };
        tokio::time::timeout(self.config.request_timeout, wait)
            .await
            .map_err(|_| ClientError::Timeout {
                what: "waiting for a connection",
                ms,
            })?
    }

    /// Sends a request, retrying on the next connection while the error is one another node
    /// might not have, until the request deadline.
    pub(super) async fn call(&self, msg: &Message) -> Result<Message, ClientError> {
        let deadline = tokio::time::Instant::now() + self.config.request_timeout;
        loop {
            let conn = self.current().await?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let result = match conn.call(msg, left.max(Duration::from_millis(1))).await {
                Ok(Message::Error(e)) => Err(ClientError::from_body(e)),
                other => other,
            };
            let err = match result {
                Ok(m) => return Ok(m),
                Err(e) => e,
            };
            if matches!(err, ClientError::Timeout { .. }) || err.wants_failover() {
                // A wedged or unwilling node: drop the link, the maintainer moves on.
                conn.close();
            }
            if !err.is_retryable() || tokio::time::Instant::now() >= deadline {
                return Err(err);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Tries every server once, starting at `start`; the first ready one that accepts the
    /// token wins. If none did and one refused the token, that refusal is the error (a wrong
    /// token is not a reason to keep dialing, but one node may not have a new token yet).
    pub(super) async fn dial_from(&self, start: usize) -> Result<(Arc<Conn>, usize), ClientError> {
        let n = self.config.servers.len();
        let mut last = String::new();
        let mut refused = None;
        for i in 0..n {
            let idx = (start + i) % n;
            let addr = &self.config.servers[idx];
            match Conn::open(
                &*self.config.dialer,
                addr,
                &self.config.client_name,
                self.config.connect_timeout,
                self.push_sink(),
                &self.tasks,
                &self.closed,
            )
            .await
            {
                Ok(c) if c.hello.ready || !self.config.require_ready => {
                    match self.present_token(&c).await {
                        Ok(()) => return Ok((c, idx)),
                        Err(e) => {
                            c.close();
                            last = format!("{addr}: {e}");
                            if is_auth_refusal(&e) {
                                refused = Some(e);
                            }
                        }
                    }
                }
                Ok(c) => {
                    c.close();
                    last = format!("{addr}: node not ready");
                }
                // A connect failure already names the address.
                Err(ClientError::NoServer { last: l, .. }) => last = l,
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(refused.unwrap_or(ClientError::NoServer { tried: n, last }))
    }

    /// Presents the configured token on a new connection (nothing without one).
    pub(super) async fn present_token(&self, conn: &Conn) -> Result<(), ClientError> {
        let Some(token) = &self.config.token else {
            return Ok(());
        };
        let auth = Message::Auth(token.clone());
        match conn.call(&auth, self.config.connect_timeout).await? {
            Message::Ack(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Where the pushes of a new connection go: the local cache, which tells them from those
    /// of earlier connections.
    pub(super) fn push_sink(&self) -> PushSink {
        let subs = self.subs.clone();
        let conn = 1 + self
            .conns_opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Arc::new(move |push: Pushed| subs.take(conn, push))
    }

    /// Subscribes again the services whose pushes lost continuity (see [`cache`]), so that the
    /// node pushes their whole lists; retried until that list has come (a reconnect's redo
    /// subscribes everything anyway).
    pub(super) async fn resubscribe(
        self: Arc<Self>,
        mut names: mpsc::UnboundedReceiver<ServiceName>,
    ) {
        loop {
            let name = tokio::select! {
                _ = self.closed.cancelled() => return,
                n = names.recv() => match n {
                    Some(n) => n,
                    None => return,
                },
            };
            while self.subs.is_resyncing(&name) && !self.closed.is_cancelled() {
                match self.call(&Message::Subscribe(name.clone())).await {
                    Ok(Message::Ack(_)) => break,
                    other => {
                        debug!(service = %name, answer = ?other, "subscribing again failed; retrying");
                        tokio::select! {
                            _ = self.closed.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        }
                    }
                }
            }
        }
    }

    /// Keeps a connection up: when it drops, dials the next servers, then redoes registrations
    /// and subscriptions on the new one.
    pub(super) async fn maintain(self: Arc<Self>, mut conn: Arc<Conn>, mut at: usize) {
        let mut backoff = Duration::from_millis(50);
        loop {
            tokio::select! {
                _ = self.closed.cancelled() => { conn.close(); return; }
                _ = conn.closed.cancelled() => {}
            }
            self.conn.send_replace(None);
            info!(server = %conn.addr, "connection lost; reconnecting");
            loop {
                if self.closed.is_cancelled() {
                    return;
                }
                match self.dial_from(at + 1).await {
                    Ok((c, idx)) => {
                        at = idx;
                        conn = c;
                        backoff = Duration::from_millis(50);
                        break;
                    }
                    Err(e) => {
                        debug!(error = %e, "reconnect round failed");
                        tokio::select! {
                            _ = self.closed.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
            if let Err(e) = self.redo(&conn).await {
                warn!(error = %e, server = %conn.addr, "redo failed; reconnecting");
                conn.close();
                continue;
            }
            info!(server = %conn.addr, node = conn.hello.node_id, "reconnected");
            self.conn.send_replace(Some(conn.clone()));
        }
    }

    /// Registers every held instance and subscribes every service again on a new connection.
    pub(super) async fn redo(&self, conn: &Conn) -> Result<(), ClientError> {
        let held: Vec<Held> = self.held.lock().unwrap().values().cloned().collect();
        for bound in [true, false] {
            let batch: Vec<Instance> = held
                .iter()
                .filter(|h| h.session_bound == bound)
                .map(|h| h.instance.clone())
                .collect();
            for chunk in instance_frames(&batch) {
                let msg = Message::Register(Register {
                    session_bound: bound,
                    instances: chunk.to_vec(),
                });
                let r = expect_ack(conn.call(&msg, self.config.request_timeout).await?);
                tolerate_refusal(r, "registering again")?;
            }
        }
        let names: Vec<ServiceName> = self.subs.names();
        for name in names {
            let r = expect_ack(
                conn.call(&Message::Subscribe(name), self.config.request_timeout)
                    .await?,
            );
            tolerate_refusal(r, "subscribing again")?;
        }
        Ok(())
    }

    /// Beats every held instance, batched; re-registers the keys the node does not know.
    pub(super) async fn beat_once(&self, conn: &Conn) -> Result<usize, ClientError> {
        // Keys only: the instances themselves are needed just for the few the node forgot.
        let held: Vec<InstanceKey> = self.held.lock().unwrap().keys().cloned().collect();
        if held.is_empty() {
            let _ = conn
                .call(&Message::Ping(0), self.config.request_timeout)
                .await?;
            return Ok(0);
        }
        let mut unknown = Vec::new();
        for chunk in key_frames(&held, BEAT_KEYS_MAX) {
            match conn
                .call(&Message::Beat(chunk.to_vec()), self.config.request_timeout)
                .await?
            {
                Message::BeatAck(idx) => {
                    let map = self.held.lock().unwrap();
                    for i in idx {
                        if let Some(h) = chunk.get(i as usize).and_then(|k| map.get(k)) {
                            unknown.push(h.clone());
                        }
                    }
                }
                other => return Err(unexpected(other)),
            }
        }
        let n = unknown.len();
        for bound in [true, false] {
            // Held right now: a key deregistered since this round's answer (rounds overlap,
            // see `heartbeats`) must not be registered again.
            let again: Vec<Instance> = {
                let held = self.held.lock().unwrap();
                unknown
                    .iter()
                    .filter(|h| h.session_bound == bound && held.contains_key(&h.instance.key))
                    .map(|h| h.instance.clone())
                    .collect()
            };
            for chunk in instance_frames(&again) {
                let msg = Message::Register(Register {
                    session_bound: bound,
                    instances: chunk.to_vec(),
                });
                expect_ack(conn.call(&msg, self.config.request_timeout).await?)?;
            }
        }
        if n > 0 {
            info!(
                count = n,
                "node did not know some instances; registered them again"
            );
        }
        Ok(n)
    }

    /// The heartbeat loop: one batched Beat per interval (the shortest beat interval any held
    /// instance asked for), or a Ping when nothing is held.
    ///
    /// A round does not wait for the one before it to be answered: a node answers a beat only
    /// once the owners it forwards to have, and one owner that crashed without closing its
    /// connections holds that answer for the node's forward timeout — longer than a short lease
    /// allows the instances the node owns itself to go unrenewed. At most
    /// [`BEAT_ROUNDS_IN_FLIGHT_MAX`] rounds are outstanding; a tick beyond that is skipped.
    pub(super) async fn heartbeats(self: Arc<Self>) {
        let in_flight = Arc::new(tokio::sync::Semaphore::new(BEAT_ROUNDS_IN_FLIGHT_MAX));
        let mut last = tokio::time::Instant::now();
        loop {
            let shortest = self.min_beat_ms.load(std::sync::atomic::Ordering::Relaxed);
            let interval = Duration::from_millis(shortest).min(self.config.beat_interval);
            tokio::select! {
                _ = self.closed.cancelled() => return,
                // Registered: the interval may be shorter now; recompute it.
                _ = self.beat_wake.notified() => continue,
                _ = tokio::time::sleep_until(last + interval) => {}
            }
            last = tokio::time::Instant::now();
            let conn = self.conn.borrow().clone();
            let Some(conn) = conn else { continue };
            let Ok(round) = in_flight.clone().try_acquire_owned() else {
                debug!("heartbeat skipped: earlier rounds are still unanswered");
                continue;
            };
            let this = self.clone();
            self.tasks.spawn(async move {
                if let Err(e) = this.beat_once(&conn).await {
                    debug!(error = %e, "heartbeat failed");
                    if matches!(e, ClientError::Timeout { .. }) {
                        conn.close();
                    }
                }
                drop(round);
            });
        }
    }
}
