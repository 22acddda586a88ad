//! The multiplexer over in-memory duplex streams: the test plays the other side of the
//! connection, reading the requests and answering (or not) as each case needs.

use super::*;
use crate::model::{Instance, InstanceKey, ServiceName, Text};
use crate::wire::{Frame, encode_frame};
use tokio::io::{AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};

const CONFIG: MuxConfig = MuxConfig {
    pending_max: 64,
    outbox_frames: 64,
    write_batch_bytes: 1 << 16,
    stream_frames: 2,
};

/// The other end of the connection.
struct Far {
    frames: FramedRead<ReadHalf<DuplexStream>, FrameCodec>,
    wr: WriteHalf<DuplexStream>,
}

impl Far {
    async fn request(&mut self) -> Frame {
        self.frames
            .next()
            .await
            .expect("a request")
            .expect("a whole frame")
    }

    async fn answer(&mut self, id: u32, flags: u16, msg: &Message) {
        self.wr
            .write_all(&encode_frame(id, flags, msg))
            .await
            .unwrap();
    }
}

struct Setup {
    mux: Arc<Mux>,
    far: Far,
    tracker: TaskTracker,
    unsolicited: Arc<Mutex<Vec<Message>>>,
}

fn setup(config: MuxConfig) -> Setup {
    let (near, far) = tokio::io::duplex(1 << 16);
    let (rd, wr) = crate::net::split(Box::new(near));
    let tracker = TaskTracker::new();
    let unsolicited: Arc<Mutex<Vec<Message>>> = Default::default();
    let u = unsolicited.clone();
    let mux = Mux::start(
        FramedRead::new(rd, FrameCodec::default()),
        wr,
        config,
        CancellationToken::new(),
        &tracker,
        move |m| u.lock().unwrap().push(m),
    );
    let (frd, fwr) = tokio::io::split(far);
    Setup {
        mux,
        far: Far {
            frames: FramedRead::new(frd, FrameCodec::default()),
            wr: fwr,
        },
        tracker,
        unsolicited,
    }
}

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn answers_find_their_requests_whatever_their_order() {
    let Setup { mux, mut far, .. } = setup(CONFIG);
    let calls: Vec<_> = (0..5u64)
        .map(|n| {
            let mux = mux.clone();
            tokio::spawn(async move { mux.call(&Message::Ping(n), SECOND).await })
        })
        .collect();
    let mut requests = Vec::new();
    for _ in 0..5 {
        let f = far.request().await;
        let Message::Ping(n) = f.message().unwrap() else {
            panic!()
        };
        requests.push((f.request_id, n));
    }
    let ids: std::collections::BTreeSet<u32> = requests.iter().map(|r| r.0).collect();
    assert_eq!(ids.len(), 5, "every request has its own id");
    assert!(!ids.contains(&0), "0 is never a request id");
    // Answered backwards.
    for &(id, n) in requests.iter().rev() {
        far.answer(id, 0, &Message::Pong(n * 10)).await;
    }
    for (n, call) in calls.into_iter().enumerate() {
        assert_eq!(call.await.unwrap(), Ok(Message::Pong(n as u64 * 10)));
    }
    assert_eq!(mux.pending(), 0);
}

#[test]
fn ids_skip_zero_and_the_ids_still_waiting() {
    let mut t = Table {
        next_id: u32::MAX - 1,
        ..Table::default()
    };
    for id in [u32::MAX, 1, 2] {
        let (tx, _) = oneshot::channel();
        t.entries.insert(
            id,
            Entry {
                waiter: Waiter::One(tx),
                seq: 0,
            },
        );
    }
    // MAX-1, then past MAX (waiting), 0 (never) and 1, 2 (waiting).
    assert_eq!(free_id(&mut t), u32::MAX - 1);
    assert_eq!(free_id(&mut t), 3);
    assert_eq!(free_id(&mut t), 4);
}

#[tokio::test(start_paused = true)]
async fn a_request_without_an_answer_times_out_and_leaves_no_entry() {
    let Setup { mux, mut far, .. } = setup(CONFIG);
    let call = mux.call(&Message::Ping(1), SECOND);
    let (r, f) = tokio::join!(call, far.request());
    assert_eq!(r, Err(MuxError::AnswerTimeout));
    assert_eq!(mux.pending(), 0);
    // A late answer is discarded; the connection serves on.
    far.answer(f.request_id, 0, &Message::Pong(1)).await;
    let again = tokio::spawn({
        let mux = mux.clone();
        async move { mux.call(&Message::Ping(2), SECOND).await }
    });
    let f = far.request().await;
    far.answer(f.request_id, 0, &Message::Pong(2)).await;
    assert_eq!(again.await.unwrap(), Ok(Message::Pong(2)));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_caller_leaves_no_entry() {
    let Setup { mux, mut far, .. } = setup(CONFIG);
    let call = tokio::spawn({
        let mux = mux.clone();
        async move { mux.call(&Message::Ping(1), Duration::from_secs(3600)).await }
    });
    far.request().await;
    assert_eq!(mux.pending(), 1);
    call.abort();
    let _ = call.await;
    assert_eq!(mux.pending(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_pending_table_is_bounded_and_a_caller_waits_for_a_slot() {
    let config = MuxConfig {
        pending_max: 2,
        ..CONFIG
    };
    let Setup { mux, mut far, .. } = setup(config);
    let spawn_call = |n: u64, timeout: Duration| {
        let mux = mux.clone();
        tokio::spawn(async move { mux.call(&Message::Ping(n), timeout).await })
    };
    let first = spawn_call(1, Duration::from_secs(60));
    let second = spawn_call(2, Duration::from_secs(60));
    let a = far.request().await;
    far.request().await;
    assert_eq!(mux.pending(), 2);
    // A third finds no slot within its deadline: it is never sent.
    assert_eq!(
        mux.call(&Message::Ping(3), SECOND).await,
        Err(MuxError::SendTimeout)
    );
    assert_eq!(mux.pending(), 2);
    // A fourth waits for a slot; the answer to the first frees one.
    let fourth = spawn_call(4, Duration::from_secs(60));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(mux.pending(), 2);
    far.answer(a.request_id, 0, &Message::Pong(1)).await;
    assert_eq!(first.await.unwrap(), Ok(Message::Pong(1)));
    let d = far.request().await;
    assert_eq!(d.message().unwrap(), Message::Ping(4));
    far.answer(d.request_id, 0, &Message::Pong(4)).await;
    assert_eq!(fourth.await.unwrap(), Ok(Message::Pong(4)));
    mux.close();
    assert_eq!(second.await.unwrap(), Err(MuxError::Closed));
}

#[tokio::test]
async fn a_streamed_answer_yields_its_frames_up_to_the_last() {
    let Setup { mux, mut far, .. } = setup(CONFIG);
    let asked = tokio::spawn({
        let mux = mux.clone();
        async move { mux.call_stream(&Message::SnapshotRequest, SECOND).await }
    });
    let f = far.request().await;
    let mut answer = asked.await.unwrap().unwrap();
    // More frames than the stream buffers: the reader waits for the consumer meanwhile.
    for n in 0..5 {
        far.answer(f.request_id, FLAG_MORE, &Message::Pong(n)).await;
    }
    far.answer(f.request_id, 0, &Message::Pong(5)).await;
    for n in 0..6 {
        assert_eq!(answer.recv().await, Some(Message::Pong(n)));
    }
    assert_eq!(answer.recv().await, None);
    assert!(!mux.is_closed(), "the stream ended, not the connection");
    assert_eq!(mux.pending(), 0);
}

#[tokio::test]
async fn an_abandoned_stream_leaves_no_entry_and_its_frames_are_discarded() {
    let Setup { mux, mut far, .. } = setup(CONFIG);
    let asked = tokio::spawn({
        let mux = mux.clone();
        async move { mux.call_stream(&Message::SnapshotRequest, SECOND).await }
    });
    let f = far.request().await;
    let answer = asked.await.unwrap().unwrap();
    assert_eq!(mux.pending(), 1);
    drop(answer);
    assert_eq!(mux.pending(), 0);
    for n in 0..5 {
        far.answer(f.request_id, FLAG_MORE, &Message::Pong(n)).await;
    }
    // The connection goes on.
    let again = tokio::spawn({
        let mux = mux.clone();
        async move { mux.call(&Message::Ping(7), SECOND).await }
    });
    let g = far.request().await;
    far.answer(g.request_id, 0, &Message::Pong(7)).await;
    assert_eq!(again.await.unwrap(), Ok(Message::Pong(7)));
}

#[tokio::test]
async fn the_end_of_the_connection_fails_everything_waiting_and_after() {
    let Setup {
        mux,
        mut far,
        tracker,
        ..
    } = setup(CONFIG);
    let one = tokio::spawn({
        let mux = mux.clone();
        async move { mux.call(&Message::Ping(1), Duration::from_secs(60)).await }
    });
    let stream = tokio::spawn({
        let mux = mux.clone();
        async move {
            mux.call_stream(&Message::SnapshotRequest, Duration::from_secs(60))
                .await
        }
    });
    far.request().await;
    far.request().await;
    let mut stream = stream.await.unwrap().unwrap();
    drop(far);
    assert_eq!(one.await.unwrap(), Err(MuxError::Closed));
    assert_eq!(stream.recv().await, None);
    assert!(mux.is_closed());
    assert_eq!(mux.pending(), 0);
    assert_eq!(
        mux.call(&Message::Ping(2), SECOND).await,
        Err(MuxError::Closed)
    );
    assert!(!mux.send(encode_frame(0, 0, &Message::Ping(3))));
    // The reader and the writer have ended.
    tracker.close();
    tokio::time::timeout(SECOND, tracker.wait()).await.unwrap();
}

#[tokio::test]
async fn close_fails_what_waits_and_ends_the_tasks() {
    let Setup {
        mux,
        mut far,
        tracker,
        ..
    } = setup(CONFIG);
    let one = tokio::spawn({
        let mux = mux.clone();
        async move { mux.call(&Message::Ping(1), Duration::from_secs(60)).await }
    });
    far.request().await;
    mux.close();
    assert_eq!(one.await.unwrap(), Err(MuxError::Closed));
    tracker.close();
    tokio::time::timeout(SECOND, tracker.wait()).await.unwrap();
    // The far side sees the connection end.
    assert!(far.frames.next().await.is_none());
}

#[tokio::test]
async fn a_frame_that_does_not_decode_ends_the_connection() {
    let Setup { mux, mut far, .. } = setup(CONFIG);
    let one = tokio::spawn({
        let mux = mux.clone();
        async move { mux.call(&Message::Ping(1), Duration::from_secs(60)).await }
    });
    let f = far.request().await;
    // A Pong with a body one byte short.
    let mut bad = encode_frame(f.request_id, 0, &Message::Pong(1)).to_vec();
    bad.pop();
    bad[3] -= 1;
    far.wr.write_all(&bad).await.unwrap();
    assert_eq!(one.await.unwrap(), Err(MuxError::Closed));
    assert!(mux.is_closed());
}

#[tokio::test]
async fn fire_and_forget_frames_go_out_and_a_full_outbox_refuses_them() {
    let config = MuxConfig {
        outbox_frames: 4,
        ..CONFIG
    };
    let Setup { mux, mut far, .. } = setup(config);
    let frame = encode_frame(0, 0, &Message::Ping(9));
    // Queued faster than the writer runs (it has not been polled yet): four fit, then no more.
    let accepted = (0..10).filter(|_| mux.send(frame.clone())).count();
    assert_eq!(accepted, 4);
    for _ in 0..4 {
        let f = far.request().await;
        assert_eq!((f.request_id, f.message().unwrap()), (0, Message::Ping(9)));
    }
    assert!(mux.send(frame));
}

#[tokio::test]
async fn frames_of_request_id_zero_go_to_the_unsolicited_handler() {
    let Setup {
        mux,
        mut far,
        unsolicited,
        ..
    } = setup(CONFIG);
    far.answer(0, 0, &Message::Ack(5)).await;
    let call = tokio::spawn({
        let mux = mux.clone();
        async move { mux.call(&Message::Ping(1), SECOND).await }
    });
    let f = far.request().await;
    far.answer(f.request_id, 0, &Message::Pong(1)).await;
    assert_eq!(call.await.unwrap(), Ok(Message::Pong(1)));
    assert_eq!(*unsolicited.lock().unwrap(), vec![Message::Ack(5)]);
}

#[tokio::test]
async fn a_request_beyond_the_wire_limits_is_refused_before_it_is_sent() {
    let Setup { mux, mut far, .. } = setup(CONFIG);
    let key = InstanceKey {
        service: ServiceName::new("public", &"g".repeat(300), "s"),
        cluster: Text::from_static("DEFAULT"),
        ip: Text::from_static("10.0.0.1"),
        port: 80,
    };
    let msg = Message::Register(crate::wire::Register {
        session_bound: false,
        instances: vec![Instance::new(key)],
    });
    match mux.call(&msg, SECOND).await {
        Err(MuxError::Unencodable { reason }) => assert!(reason.contains("group"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(mux.pending(), 0);
    // Nothing of it went out: the next frame the far side reads is the next request.
    let call = tokio::spawn({
        let mux = mux.clone();
        async move { mux.call(&Message::Ping(4), SECOND).await }
    });
    let f = far.request().await;
    assert_eq!(f.message().unwrap(), Message::Ping(4));
    far.answer(f.request_id, 0, &Message::Pong(4)).await;
    assert_eq!(call.await.unwrap(), Ok(Message::Pong(4)));
}
