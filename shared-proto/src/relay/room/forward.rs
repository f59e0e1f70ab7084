//! A member's `Send`: the one rule that decides where it goes and what it costs
//! ([`Room::plan_send`]), carried out by `handle_message` and by the fast path
//! [`Room::forward`], which passes the runtime's own buffer on with its routing header
//! rewritten.

use super::limits::MemberRate;
use super::{Action, ConnId, ConnState, Outbox, Room, RoomError};
use crate::relay::frame::{recv_header, single_send, Frame, HubId, ROUTING_HEADER_LEN};
use crate::relay::rate::TokenBucket;

/// Where [`Room::forward`] sends a message, and the routing header it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    /// The receiver's socket.
    pub conn: ConnId,
    /// The `Recv` header that replaces the message's first [`ROUTING_HEADER_LEN`] bytes.
    pub header: [u8; ROUTING_HEADER_LEN],
}

/// What [`Room::plan_send`] decides of a member's `Send` that its sender's limit lets through:
/// the sender's rate once charged, and where it goes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Delivery {
    pub(super) sender: Option<MemberRate>,
    pub(super) to: Target,
}

/// Where a member's `Send` goes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Target {
    /// A member: its socket, its receive bucket once charged (or the wait its limit imposes),
    /// and whether it has been told every presence change (a payload must not reach it before
    /// the join of its sender).
    Member {
        conn: ConnId,
        receiver: Result<Option<TokenBucket>, u64>,
        told: bool,
    },
    /// A pairing guest of the sender's.
    Guest(ConnId),
    /// Nobody by that id: the sender is told `Undeliverable`.
    Nobody,
}

impl Room {
    /// The fast path of [`Room::handle_message`], for the message a busy room sees most: exactly
    /// one `Send` frame from a member to another member online, within every limit, with no
    /// presence change to tell the receiver first. `head` is the message's first bytes (at least
    /// [`ROUTING_HEADER_LEN`]) and `len` its length: the payload is not needed. The relay then
    /// passes the message's own bytes on to [`Forward::conn`] with [`Forward::header`] in place
    /// of their first [`ROUTING_HEADER_LEN`], rather than copying the payload into a new message.
    ///
    /// `None`, with nothing changed, for any other message: the caller hands the whole message
    /// to [`Room::handle_message`], which decides (and refuses, limits or reports) as always.
    pub fn forward(
        &mut self,
        conn: ConnId,
        now_ms: u64,
        head: &[u8],
        len: usize,
    ) -> Option<Forward> {
        let dst = single_send(head, len)?;
        let src = match self.conns.get(&conn)?.state {
            ConnState::Member(member) => member.hub,
            _ => return None,
        };
        // The one rule of a member's `Send` (`plan_send`); only the plain case is taken here.
        let Ok(Delivery {
            sender: Some(sender),
            to:
                Target::Member {
                    conn: to,
                    receiver: Ok(Some(receiver)),
                    told: true,
                },
        }) = self.plan_send(conn, src, dst, len as u64, now_ms)
        else {
            return None;
        };
        self.charge(conn, Some(sender), to, Some(receiver));
        self.tick(now_ms);
        self.touch(conn, now_ms);
        Some(Forward {
            conn: to,
            header: recv_header(src, len - ROUTING_HEADER_LEN),
        })
    }

    /// The one rule of a member's `Send` of `cost` bytes to `dst`, shared by
    /// [`Room::handle_message`] and [`Room::forward`]: the sender's own limit first, then where it
    /// goes (a member, a pairing guest of the sender's, or nobody) and, for a member, the
    /// receiver's limit and whether it has heard of every presence change. Computed on copies:
    /// nothing changes until the plan is carried out ([`Room::charge`]).
    pub(super) fn plan_send(
        &self,
        conn: ConnId,
        src: HubId,
        dst: HubId,
        cost: u64,
        now_ms: u64,
    ) -> Result<Delivery, u64> {
        let mut sender = self.conns.get(&conn).and_then(|c| c.rate);
        if let Some(rate) = sender.as_mut() {
            // The sender's own limit: the wait it imposes, if it does.
            rate.send(cost, now_ms)?;
        }
        let to = match self.members.get(&dst).copied() {
            Some(to) => {
                let receiver = self.conns.get(&to);
                let mut bucket = receiver.and_then(|c| c.rate).map(|r| r.recv_bytes);
                let taken = match bucket.as_mut() {
                    Some(b) => b.try_take(cost, now_ms).map(|()| bucket),
                    None => Ok(None),
                };
                Target::Member {
                    conn: to,
                    receiver: taken,
                    told: receiver.is_some_and(|c| c.seen >= self.presence.log.len()),
                }
            }
            // Only the guest's issuer reaches it.
            None => match self.guests.get(&dst) {
                Some(g) if g.info.guest_of == Some(src) => Target::Guest(g.conn),
                _ => Target::Nobody,
            },
        };
        Ok(Delivery { sender, to })
    }

    /// Carries out the charges of a plan: the sender's new rate, the receiver's new bucket.
    pub(super) fn charge(
        &mut self,
        conn: ConnId,
        sender: Option<MemberRate>,
        to: ConnId,
        receiver: Option<TokenBucket>,
    ) {
        if let (Some(new), Some(rate)) = (
            sender,
            self.conns.get_mut(&conn).and_then(|c| c.rate.as_mut()),
        ) {
            *rate = new;
        }
        if let (Some(new), Some(rate)) = (
            receiver,
            self.conns.get_mut(&to).and_then(|c| c.rate.as_mut()),
        ) {
            rate.recv_bytes = new;
        }
    }

    /// A member's `Send` frame, by [`Room::plan_send`]'s rule: routed (presence first), or
    /// dropped for the sender's or the receiver's limit (and said so), or reported
    /// undeliverable.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn member_send(
        &mut self,
        conn: ConnId,
        src: HubId,
        dst: HubId,
        payload: &[u8],
        cost: u64,
        now_ms: u64,
        outbox: &mut Outbox,
        out: &mut Vec<Action>,
    ) -> Result<(), RoomError> {
        let Delivery { sender, to } = match self.plan_send(conn, src, dst, cost, now_ms) {
            Err(wait) => {
                let dropped = self.dropped(conn, src, wait, Some(cost), now_ms, outbox, out);
                if dropped.is_err() {
                    self.penalize(src, now_ms, out);
                }
                return dropped;
            }
            Ok(delivery) => delivery,
        };
        match to {
            Target::Member {
                conn: to,
                receiver: Ok(receiver),
                ..
            } => {
                self.charge(conn, sender, to, receiver);
                self.flush_presence_to(to, outbox, out);
                outbox.push(to, &Frame::Recv { src, payload }, out);
                Ok(())
            }
            Target::Member {
                receiver: Err(wait),
                ..
            } => {
                // The sender's share is spent; the receiver's limit drops the frame.
                self.charge(conn, sender, conn, None);
                self.dropped(conn, dst, wait, None, now_ms, outbox, out)
            }
            Target::Guest(guest) => {
                self.charge(conn, sender, conn, None);
                outbox.push(guest, &Frame::Recv { src, payload }, out);
                Ok(())
            }
            Target::Nobody => {
                self.charge(conn, sender, conn, None);
                outbox.push(conn, &Frame::Undeliverable(dst), out);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::room::testing::*;

    #[test]
    fn a_single_send_is_forwarded_as_the_recv_the_room_would_build() {
        let (mut fast, mut slow) = (room(), room());
        for r in [&mut fast, &mut slow] {
            let _ = join(r, 1, hub(1));
            let _ = join(r, 2, hub(2));
        }
        for len in [0, 1, 1000, crate::relay::frame::MAX_PAYLOAD] {
            let message = send(hub(2), &vec![0x5a; len]);
            let (to, bytes) = forwarded(&mut fast, 1, NOW + 1, &message).expect("forwarded");
            let mut out = Vec::new();
            slow.handle_message(ConnId(1), NOW + 1, &message, &mut out);
            assert_eq!(to, ConnId(2));
            assert_eq!(
                out,
                vec![Action::Send {
                    conn: ConnId(2),
                    message: bytes
                }],
                "payload of {len} bytes"
            );
        }
    }

    #[test]
    fn forward_leaves_to_handle_message_what_it_must_decide() {
        let mut r = room();
        let _ = join(&mut r, 1, hub(1));
        let _ = join(&mut r, 2, hub(2));
        let _ = guest_join(&mut r, 10, hub(0xa0), hub(1), NOW);
        let mut out = Vec::new();
        r.handle_connect(ConnId(11), NOW, Some(hub(0xb0)), &mut out);
        let two = [send(hub(2), b"a"), send(hub(2), b"b")].concat();
        let mut truncated = send(hub(2), b"abc");
        truncated.pop();
        let declined: [(&str, u64, Vec<u8>); 8] = [
            ("two frames in one message", 1, two),
            ("a hub not in the room", 1, send(hub(9), b"x")),
            ("a guest, even from its issuer", 1, send(hub(0xa0), b"x")),
            ("from a guest", 10, send(hub(1), b"x")),
            ("from a socket without Hello", 11, send(hub(1), b"x")),
            (
                "a status request",
                1,
                Frame::StatusRequest.to_message().unwrap(),
            ),
            ("a length that is not the message's", 1, truncated),
            (
                "a frame type other than Send",
                1,
                Frame::Recv {
                    src: hub(2),
                    payload: b"x",
                }
                .to_message()
                .unwrap(),
            ),
        ];
        for (what, conn, message) in declined {
            assert_eq!(
                r.forward(ConnId(conn), NOW, &message, message.len()),
                None,
                "{what}"
            );
        }
        // A payload over the limit: the header says so, whatever follows.
        let mut head = send(hub(2), b"")[..ROUTING_HEADER_LEN].to_vec();
        let body = (HUB_ID_LEN + crate::relay::frame::MAX_PAYLOAD + 1) as u32;
        head[1..FRAME_HEADER_LEN].copy_from_slice(&body.to_be_bytes());
        assert_eq!(
            r.forward(ConnId(1), NOW, &head, FRAME_HEADER_LEN + body as usize),
            None
        );
        assert!(forwarded(&mut r, 1, NOW, &send(hub(2), b"x")).is_some());
    }

    #[test]
    fn forward_waits_for_the_receiver_to_hear_of_new_members() {
        let mut r = Room::new(RoomConfig::new(ca().cluster_id(), 42));
        let _ = join_at(&mut r, 1, hub(1), NOW);
        let _ = join_at(&mut r, 2, hub(2), NOW + PRESENCE_WINDOW_MS);
        let _ = join_at(&mut r, 3, hub(3), NOW + PRESENCE_WINDOW_MS + 10);
        // Hub 1 has not been told of hub 3 yet: the room's own path tells it first.
        let message = send(hub(1), b"hi");
        assert_eq!(
            forwarded(&mut r, 3, NOW + PRESENCE_WINDOW_MS + 20, &message),
            None
        );
        let mut out = Vec::new();
        r.handle_message(ConnId(3), NOW + PRESENCE_WINDOW_MS + 20, &message, &mut out);
        assert_eq!(
            sent_to(&out, ConnId(1)),
            vec![vec![
                Frame::PeerJoined(vec![hub(3)]),
                Frame::Recv {
                    src: hub(3),
                    payload: b"hi"
                }
            ]]
        );
        // Told: now the fast path takes it.
        assert!(forwarded(&mut r, 3, NOW + PRESENCE_WINDOW_MS + 30, &message).is_some());
    }

    #[test]
    fn forward_charges_the_limits_and_declines_past_them() {
        use crate::relay::rate::Rate;
        // 50 frames in a burst per sender; 2,000 bytes in a burst per receiver.
        let mut r = limited_room(Limits {
            send_frames: Rate::new(100, 50),
            send_bytes: Rate::new(1 << 30, 1 << 30),
            recv_bytes: Rate::new(1, 2000),
        });
        let _ = join(&mut r, 1, hub(1));
        let _ = join(&mut r, 2, hub(2));
        // More than hub 2 may ever be sent at once: declined, after hub 1's own check passed,
        // and hub 1 is not charged for it.
        let big = send(hub(2), &[0; 3000]);
        for _ in 0..60 {
            assert_eq!(forwarded(&mut r, 1, NOW, &big), None);
        }
        let message = send(hub(2), b"x");
        for i in 0..50 {
            assert!(forwarded(&mut r, 1, NOW, &message).is_some(), "frame {i}");
        }
        // The 51st is over the burst: declined, and the room's own path limits and tells.
        assert_eq!(forwarded(&mut r, 1, NOW, &message), None);
        let mut out = Vec::new();
        r.handle_message(ConnId(1), NOW, &message, &mut out);
        assert_eq!(recvs(&out, ConnId(2)), 0);
        assert_eq!(notices(&out, ConnId(1)), vec![(hub(1), 10, 1)]);
    }
}
