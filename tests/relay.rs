#![allow(clippy::unwrap_used, clippy::expect_used)]
//! End to end: hubs over real sockets on 127.0.0.1 against the relay in real workerd and
//! against `hub relay`, one process per test. Every test runs against both (see `both!`),
//! except hibernation, which only the Durable Object does.

use std::time::Duration;

use e2e::{
    expect_event, expect_event_within, expect_message, hub, join, join_with, test_config,
    RelayKind, RelayProcess,
};
use futures_util::{SinkExt, StreamExt};
use hub_client::relay::connect_url;
use hub_client::RelayEvent;
use shared_proto::frame::{Frame, Hello, RoomStatus};
use shared_proto::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// Generates one test per relay implementation from an `async fn(RelayKind)`.
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn workerd() {
                super::$name(super::RelayKind::Workerd).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn native() {
                super::$name(super::RelayKind::Native).await
            }
        }
    };
}

both!(three_hubs_in_one_room);
async fn three_hubs_in_one_room(kind: RelayKind) {
    let relay = RelayProcess::start(kind);
    let (mut a, online) = join(&relay, "three", hub(1)).await;
    assert!(online.is_empty());
    let (mut b, online) = join(&relay, "three", hub(2)).await;
    assert_eq!(online, vec![hub(1)]);
    expect_event(&mut a, "B joined", |e| *e == RelayEvent::PeerJoined(hub(2))).await;
    let (mut c, online) = join(&relay, "three", hub(3)).await;
    assert_eq!(online, vec![hub(1), hub(2)]);
    expect_event(&mut a, "C joined", |e| *e == RelayEvent::PeerJoined(hub(3))).await;
    expect_event(&mut b, "C joined", |e| *e == RelayEvent::PeerJoined(hub(3))).await;

    // Each message reaches exactly its destination, intact, whatever its bytes.
    let big: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    a.send(hub(2), b"a->b".to_vec()).await.unwrap();
    b.send(hub(3), big.clone()).await.unwrap();
    c.send(hub(1), b"c->a".to_vec()).await.unwrap();
    assert_eq!(expect_message(&mut b, hub(1)).await, b"a->b");
    assert_eq!(expect_message(&mut c, hub(2)).await, big);
    assert_eq!(expect_message(&mut a, hub(3)).await, b"c->a");

    // A burst keeps its order.
    for i in 0..200u32 {
        a.send(hub(3), i.to_be_bytes().to_vec()).await.unwrap();
    }
    for i in 0..200u32 {
        assert_eq!(expect_message(&mut c, hub(1)).await, i.to_be_bytes());
    }

    // A hub that is not online is reported, not silently dropped.
    a.send(hub(9), b"nobody".to_vec()).await.unwrap();
    expect_event(&mut a, "undeliverable", |e| {
        *e == RelayEvent::Undeliverable(hub(9))
    })
    .await;

    // Leaving is seen by the others.
    c.shutdown().await;
    expect_event(&mut a, "C left", |e| *e == RelayEvent::PeerLeft(hub(3))).await;
    expect_event(&mut b, "C left", |e| *e == RelayEvent::PeerLeft(hub(3))).await;
    a.request_status().await.unwrap();
    let status = expect_event(&mut a, "status", |e| matches!(e, RelayEvent::Status(_))).await;
    assert!(matches!(
        status,
        RelayEvent::Status(RoomStatus { online: 2, .. })
    ));
}

both!(rooms_are_isolated);
async fn rooms_are_isolated(kind: RelayKind) {
    let relay = RelayProcess::start(kind);
    let (mut x1, _) = join(&relay, "cluster-x", hub(1)).await;
    let (x2, _) = join(&relay, "cluster-x", hub(2)).await;
    expect_event(&mut x1, "x2 joined", |e| {
        *e == RelayEvent::PeerJoined(hub(2))
    })
    .await;
    // The same hub id in another cluster is another hub: it replaces nobody and sees nobody.
    let (mut y1, online) = join(&relay, "cluster-y", hub(1)).await;
    assert!(online.is_empty(), "cluster-y sees {online:?}");
    y1.send(hub(2), b"cross".to_vec()).await.unwrap();
    expect_event(&mut y1, "undeliverable", |e| {
        *e == RelayEvent::Undeliverable(hub(2))
    })
    .await;
    // x1 is still connected and was told nothing about cluster-y.
    x2.send(hub(1), b"still here".to_vec()).await.unwrap();
    let mut seen = Vec::new();
    loop {
        let e = expect_event(&mut x1, "message", |_| true).await;
        if let RelayEvent::Message { payload, .. } = &e {
            assert_eq!(payload, b"still here");
            break;
        }
        seen.push(e);
    }
    assert!(seen.is_empty(), "x1 saw events from another room: {seen:?}");
}

/// A raw WebSocket to the relay, for sending what a well-behaved client never would.
async fn raw(
    relay: &RelayProcess,
    cluster: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = connect_url(&relay.url(), cluster).unwrap();
    tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap()
        .0
}

/// Reads until a close frame and returns its code.
async fn close_code<S>(ws: &mut S) -> u16
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let wait = async {
        while let Some(msg) = ws.next().await {
            if let Ok(Message::Close(Some(frame))) = msg {
                return u16::from(frame.code);
            }
        }
        panic!("stream ended without a close frame");
    };
    tokio::time::timeout(Duration::from_secs(15), wait)
        .await
        .expect("close frame within 15 s")
}

both!(bad_input_closes_only_the_offender);
async fn bad_input_closes_only_the_offender(kind: RelayKind) {
    let relay = RelayProcess::start(kind);
    let (mut a, _) = join(&relay, "bad", hub(1)).await;
    let (mut b, _) = join(&relay, "bad", hub(2)).await;

    // A member that sends a malformed frame is closed with 4000; the others see it leave.
    let mut evil = raw(&relay, "bad").await;
    let hello = Frame::Hello(Hello::new(hub(7))).to_message();
    evil.send(Message::Binary(hello.into())).await.unwrap();
    expect_event(&mut a, "evil joined", |e| {
        *e == RelayEvent::PeerJoined(hub(7))
    })
    .await;
    evil.send(Message::Binary(vec![0xee, 0, 0, 0, 1, 0].into()))
        .await
        .unwrap();
    assert_eq!(close_code(&mut evil).await, CloseCode::ProtocolError.code());
    expect_event(&mut a, "evil left", |e| *e == RelayEvent::PeerLeft(hub(7))).await;

    // Each kind of bad input gets its documented code.
    let mut s = raw(&relay, "bad").await;
    let send = Frame::Send {
        dst: hub(1),
        payload: b"x",
    }
    .to_message();
    s.send(Message::Binary(send.into())).await.unwrap();
    assert_eq!(close_code(&mut s).await, CloseCode::HelloRequired.code());

    let mut s = raw(&relay, "bad").await;
    let mut h = Hello::new(hub(8));
    h.version = 2;
    s.send(Message::Binary(Frame::Hello(h).to_message().into()))
        .await
        .unwrap();
    assert_eq!(
        close_code(&mut s).await,
        CloseCode::UnsupportedVersion.code()
    );

    let mut s = raw(&relay, "bad").await;
    s.send(Message::text("hello?")).await.unwrap();
    assert_eq!(close_code(&mut s).await, CloseCode::ProtocolError.code());

    let mut s = raw(&relay, "bad").await;
    let hello = Frame::Hello(Hello::new(hub(9))).to_message();
    s.send(Message::Binary(hello.into())).await.unwrap();
    let oversized = Frame::Send {
        dst: hub(1),
        payload: &vec![0u8; 64 * 1024 + 1],
    }
    .to_message();
    s.send(Message::Binary(oversized.into())).await.unwrap();
    assert_eq!(close_code(&mut s).await, CloseCode::TooLarge.code());

    // A keepalive is answered without a hello.
    let mut s = raw(&relay, "bad").await;
    s.send(Message::text("ping")).await.unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .unwrap();
    assert!(matches!(pong, Some(Ok(Message::Text(t))) if t.as_str() == "pong"));

    // Through all of it, the well-behaved hubs kept talking.
    a.send(hub(2), b"fine".to_vec()).await.unwrap();
    assert_eq!(expect_message(&mut b, hub(1)).await, b"fine");
    b.send(hub(1), b"fine too".to_vec()).await.unwrap();
    assert_eq!(expect_message(&mut a, hub(2)).await, b"fine too");
}

both!(duplicate_hub_id_replaces_the_old_connection);
async fn duplicate_hub_id_replaces_the_old_connection(kind: RelayKind) {
    let relay = RelayProcess::start(kind);
    let (mut old, _) = join(&relay, "dup", hub(1)).await;
    let (other, _) = join(&relay, "dup", hub(2)).await;
    let (mut new, _) = join(&relay, "dup", hub(1)).await;
    // The old connection is told why, and does not come back to fight over the id.
    let ev = expect_event(&mut old, "disconnect", |e| {
        matches!(e, RelayEvent::Disconnected { .. })
    })
    .await;
    assert_eq!(
        ev,
        RelayEvent::Disconnected {
            code: Some(CloseCode::Replaced),
            reason: "replaced by a newer connection with the same hub id".into(),
            retry_in: None
        }
    );
    other
        .send(hub(1), b"to the new one".to_vec())
        .await
        .unwrap();
    assert_eq!(expect_message(&mut new, hub(2)).await, b"to the new one");
}

both!(hubs_reconnect_after_the_relay_is_killed);
async fn hubs_reconnect_after_the_relay_is_killed(kind: RelayKind) {
    let mut relay = RelayProcess::start(kind);
    let (mut a, _) = join(&relay, "restart", hub(1)).await;
    let (mut b, _) = join(&relay, "restart", hub(2)).await;
    relay.kill();
    for c in [&mut a, &mut b] {
        expect_event(c, "disconnect", |e| {
            matches!(
                e,
                RelayEvent::Disconnected {
                    retry_in: Some(_),
                    ..
                }
            )
        })
        .await;
    }
    relay.restart();
    for c in [&mut a, &mut b] {
        expect_event(c, "reconnect", |e| {
            matches!(e, RelayEvent::Connected { .. })
        })
        .await;
    }
    // Whichever came back second saw the other online; both can talk again.
    a.send(hub(2), b"after restart".to_vec()).await.unwrap();
    let got = expect_event(&mut b, "message", |e| {
        matches!(e, RelayEvent::Message { .. })
    })
    .await;
    assert_eq!(
        got,
        RelayEvent::Message {
            from: hub(1),
            payload: b"after restart".to_vec()
        }
    );
}

/// The Durable Object hibernates when idle; the hubs' keepalives are answered without waking
/// it (or the hubs would time out), and routing goes on afterwards from the socket attachments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workerd_room_hibernates_and_still_routes() {
    let relay = RelayProcess::start(RelayKind::Workerd);
    let mut cfg_a = test_config(&relay, "sleepy", hub(1));
    cfg_a.keepalive = Duration::from_secs(2);
    let mut cfg_b = test_config(&relay, "sleepy", hub(2));
    cfg_b.keepalive = Duration::from_secs(2);
    let (mut a, _) = join_with(cfg_a).await;
    let (b, _) = join_with(cfg_b).await;
    a.request_status().await.unwrap();
    let RelayEvent::Status(before) =
        expect_event(&mut a, "status", |e| matches!(e, RelayEvent::Status(_))).await
    else {
        unreachable!()
    };

    // Idle long enough for workerd to evict the object. Keepalives go on (every 2 s; a hub gives
    // up after 6 s without an answer): no disconnect may happen.
    let idle = Duration::from_secs(35);
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(idle, async {
        while let Some(e) = a.next_event().await {
            seen.push(e);
        }
    })
    .await;
    assert!(seen.is_empty(), "events while idle: {seen:?}");

    b.send(hub(1), b"good morning".to_vec()).await.unwrap();
    assert_eq!(expect_message(&mut a, hub(2)).await, b"good morning");
    a.request_status().await.unwrap();
    let RelayEvent::Status(after) =
        expect_event_within(&mut a, "status", Duration::from_secs(15), |e| {
            matches!(e, RelayEvent::Status(_))
        })
        .await
    else {
        unreachable!()
    };
    assert_eq!(after.online, 2, "both hubs restored from attachments");
    assert!(
        after.instance_started_ms > before.instance_started_ms,
        "the room did not hibernate: same instance ({before:?} -> {after:?})\n{}",
        relay.log()
    );
}

/// One plain HTTP/1.1 request; returns the status code and body.
fn http(relay: &RelayProcess, method: &str, path: &str, extra: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = relay.url().trim_start_matches("http://").to_owned();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: relay\r\nconnection: close\r\n{extra}\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp[9..12].parse().unwrap();
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

both!(http_surface_matches_the_protocol);
async fn http_surface_matches_the_protocol(kind: RelayKind) {
    let relay = RelayProcess::start(kind);
    let (status, body) = http(&relay, "GET", "/", "");
    assert_eq!(status, 200);
    assert!(body.contains("relay protocol v1"), "{body}");
    assert_eq!(http(&relay, "GET", "/nope", "").0, 404);
    assert_eq!(http(&relay, "GET", "/v1/clusters/a.b/connect", "").0, 400);
    let (status, body) = http(&relay, "GET", "/v1/clusters/ok/connect", "");
    assert_eq!(status, 426);
    assert!(body.contains("WebSocket upgrade"), "{body}");
    assert_eq!(
        http(
            &relay,
            "POST",
            "/v1/clusters/ok/connect",
            "content-length: 0\r\n"
        )
        .0,
        426
    );
}
