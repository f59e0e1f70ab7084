//! Pairing guests: a hub without a certificate, admitted to reach one member (its token's
//! issuer) with a few small messages, for a short time; no member sees it.

use super::{send_one, Action, ConnId, ConnState, MemberInfo, Outbox, Room, RoomError};
use crate::relay::frame::{Frame, HubId, PROTOCOL_VERSION};

/// Most pairing guests a room holds at once.
pub const MAX_GUESTS: usize = 8;

/// Largest payload a pairing guest may send.
pub const MAX_GUEST_PAYLOAD: usize = 4096;

/// Most `Send` frames one pairing guest may send.
pub const MAX_GUEST_SENDS: u32 = 4;

/// Most pairing guests a room admits in any [`GUEST_WINDOW_MS`]; past that, guests are refused
/// with `1013` until older admissions leave the window. Each guest can make the issuer do a
/// Noise handshake, so their rate is bounded, not only their number.
pub const MAX_GUEST_ADMISSIONS: usize = 30;

/// The window of [`MAX_GUEST_ADMISSIONS`].
pub const GUEST_WINDOW_MS: u64 = 60_000;

/// How long a pairing guest may stay; then it is closed with `4021`.
pub const GUEST_LIFETIME_MS: u64 = 60_000;

/// A pairing guest: a hub without a certificate, admitted to reach one member (its token's
/// issuer) with a few small messages.
#[derive(Debug, Clone, Copy)]
pub(super) struct Guest {
    pub(super) conn: ConnId,
    pub(super) info: MemberInfo,
}

impl Room {
    /// Admits a pairing guest: it sees only its issuer, and no member sees it.
    pub(super) fn admit_guest(
        &mut self,
        conn: ConnId,
        now_ms: u64,
        hub: HubId,
        issuer: HubId,
        out: &mut Vec<Action>,
    ) -> Result<(), RoomError> {
        if self.members.contains_key(&hub) || self.guests.contains_key(&hub) {
            return Err(RoomError::HubIdInUse);
        }
        if !self.members.contains_key(&issuer) {
            return Err(RoomError::IssuerOffline(issuer));
        }
        // Guests past their lifetime leave first (the relay's timer may not have fired yet).
        self.handle_timeout(now_ms, out);
        if self.guests.len() >= MAX_GUESTS {
            return Err(RoomError::TooManyGuests);
        }
        while self
            .guest_admissions
            .front()
            .is_some_and(|&t| now_ms.saturating_sub(t) >= GUEST_WINDOW_MS)
        {
            self.guest_admissions.pop_front();
        }
        if self.guest_admissions.len() >= MAX_GUEST_ADMISSIONS {
            return Err(RoomError::GuestRate);
        }
        self.guest_admissions.push_back(now_ms);
        let member = MemberInfo {
            hub,
            fingerprint: [0; 32],
            key_hash: [0; 32],
            issuer: None,
            guest_of: Some(issuer),
            admitted_ms: now_ms,
            sends: 0,
        };
        self.guests.insert(hub, Guest { conn, info: member });
        let deadline = now_ms.saturating_add(GUEST_LIFETIME_MS);
        self.insert(
            conn,
            ConnState::Guest { hub, issuer },
            Some(deadline),
            now_ms,
        );
        out.push(Action::Admitted { conn, member });
        let welcome = Frame::Welcome {
            version: PROTOCOL_VERSION,
            online: vec![issuer],
        };
        out.push(send_one(conn, &welcome));
        Ok(())
    }

    /// A pairing guest's `Send`: to its issuer only, small, few, and in time.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn guest_send(
        &mut self,
        conn: ConnId,
        now_ms: u64,
        hub: HubId,
        issuer: HubId,
        dst: HubId,
        payload: &[u8],
        outbox: &mut Outbox,
        out: &mut Vec<Action>,
    ) -> Result<(), RoomError> {
        let limit = |reason: &'static str| Err(RoomError::GuestLimit(reason));
        let Some(guest) = self.guests.get_mut(&hub) else {
            return limit("unknown pairing guest");
        };
        if now_ms >= guest.info.admitted_ms.saturating_add(GUEST_LIFETIME_MS) {
            return limit("pairing time is up");
        }
        if dst != issuer {
            return limit("a pairing guest talks only to the hub that issued its token");
        }
        if payload.len() > MAX_GUEST_PAYLOAD {
            return Err(RoomError::GuestTooLarge);
        }
        if guest.info.sends >= MAX_GUEST_SENDS {
            return limit("a pairing guest sends at most 4 messages");
        }
        guest.info.sends += 1;
        // The count must survive a hibernation, or a restored guest could start again.
        out.push(Action::Admitted {
            conn,
            member: guest.info,
        });
        match self.members.get(&issuer).copied() {
            Some(to) => {
                // The issuer hears first who left: a guest may have taken the id of a member
                // that just went, and what it sends must not pass for that member's.
                self.flush_presence_to(to, outbox, out);
                outbox.push(to, &Frame::Recv { src: hub, payload }, out);
            }
            None => outbox.push(conn, &Frame::Undeliverable(dst), out),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::room::testing::*;

    /// A guest that takes the id of a member that just left (its leaving not announced yet: the
    /// presence window) reaches the issuer only after the issuer was told the member left, so
    /// what it sends cannot pass for that member's.
    #[test]
    fn the_issuer_hears_who_left_before_a_guest_using_that_id() {
        let mut r = Room::new(RoomConfig {
            presence_window_ms: PRESENCE_WINDOW_MS,
            ..RoomConfig::new(ca().cluster_id(), 42)
        });
        let _ = join(&mut r, 1, hub(1));
        let _ = join(&mut r, 2, hub(2));
        // The joins are announced; hub 2 leaves within the window: not announced yet.
        let mut out = Vec::new();
        r.handle_timeout(NOW + PRESENCE_WINDOW_MS, &mut out);
        let mut out = Vec::new();
        r.handle_disconnect(ConnId(2), NOW + PRESENCE_WINDOW_MS + 1, &mut out);
        assert!(sent_to(&out, ConnId(1)).is_empty(), "announced at once");
        let at = NOW + PRESENCE_WINDOW_MS + 2;
        let _ = guest_join(&mut r, 10, hub(2), hub(1), at);
        let mut out = Vec::new();
        r.handle_message(ConnId(10), at, &send(hub(1), b"garbage"), &mut out);
        let frames: Vec<Frame<'_>> = sent_to(&out, ConnId(1)).into_iter().flatten().collect();
        assert_eq!(
            frames,
            vec![
                Frame::PeerLeft(vec![hub(2)]),
                Frame::Recv {
                    src: hub(2),
                    payload: b"garbage"
                }
            ]
        );
    }

    #[test]
    fn a_pairing_guest_reaches_only_its_issuer_and_no_member_sees_it() {
        let mut r = room();
        let _ = join(&mut r, 1, hub(1));
        let _ = join(&mut r, 2, hub(2));
        let out = guest_join(&mut r, 10, hub(0xa0), hub(1), NOW);
        // It sees only its issuer; no member hears of it.
        assert_eq!(
            sent_to(&out, ConnId(10)),
            vec![vec![Frame::Welcome {
                version: 1,
                online: vec![hub(1)]
            }]]
        );
        assert!(sent_to(&out, ConnId(1)).is_empty() && sent_to(&out, ConnId(2)).is_empty());
        assert!(
            matches!(out[0], Action::Admitted { member, .. } if member.guest_of == Some(hub(1)))
        );
        assert_eq!(r.online().collect::<Vec<_>>(), vec![hub(1), hub(2)]);

        // Guest -> issuer and issuer -> guest flow.
        let mut out = Vec::new();
        r.handle_message(ConnId(10), NOW, &send(hub(1), b"request"), &mut out);
        assert_eq!(
            sent_to(&out, ConnId(1)),
            vec![vec![Frame::Recv {
                src: hub(0xa0),
                payload: b"request"
            }]]
        );
        let mut out = Vec::new();
        r.handle_message(ConnId(1), NOW, &send(hub(0xa0), b"answer"), &mut out);
        assert_eq!(
            sent_to(&out, ConnId(10)),
            vec![vec![Frame::Recv {
                src: hub(1),
                payload: b"answer"
            }]]
        );
        // Another member cannot reach the guest.
        let mut out = Vec::new();
        r.handle_message(ConnId(2), NOW, &send(hub(0xa0), b"hi"), &mut out);
        assert_eq!(
            sent_to(&out, ConnId(2)),
            vec![vec![Frame::Undeliverable(hub(0xa0))]]
        );
        assert!(sent_to(&out, ConnId(10)).is_empty());
        // The guest cannot reach another member, nor ask for status.
        let mut out = Vec::new();
        r.handle_message(ConnId(10), NOW, &send(hub(2), b"x"), &mut out);
        assert_eq!(closes(&out), vec![(ConnId(10), CloseCode::GuestLimit)]);
        assert!(sent_to(&out, ConnId(2)).is_empty());
        let _ = guest_join(&mut r, 11, hub(0xa1), hub(1), NOW);
        let mut out = Vec::new();
        r.handle_message(
            ConnId(11),
            NOW,
            &Frame::StatusRequest.to_message().unwrap(),
            &mut out,
        );
        assert_eq!(closes(&out), vec![(ConnId(11), CloseCode::ProtocolError)]);
    }

    #[test]
    fn a_pairing_guest_is_limited_in_size_count_and_time() {
        let mut r = room();
        let _ = join(&mut r, 1, hub(1));
        let _ = guest_join(&mut r, 10, hub(0xa0), hub(1), NOW);
        let mut out = Vec::new();
        let big = vec![0u8; MAX_GUEST_PAYLOAD + 1];
        r.handle_message(ConnId(10), NOW, &send(hub(1), &big), &mut out);
        assert_eq!(closes(&out), vec![(ConnId(10), CloseCode::TooLarge)]);
        assert!(sent_to(&out, ConnId(1)).is_empty());

        let _ = guest_join(&mut r, 11, hub(0xa1), hub(1), NOW);
        for _ in 0..MAX_GUEST_SENDS {
            let mut out = Vec::new();
            r.handle_message(ConnId(11), NOW, &send(hub(1), b"x"), &mut out);
            assert!(closes(&out).is_empty());
        }
        let mut out = Vec::new();
        r.handle_message(ConnId(11), NOW, &send(hub(1), b"x"), &mut out);
        assert_eq!(closes(&out), vec![(ConnId(11), CloseCode::GuestLimit)]);

        let _ = guest_join(&mut r, 12, hub(0xa2), hub(1), NOW);
        let mut out = Vec::new();
        let late = NOW + GUEST_LIFETIME_MS + 1;
        r.handle_message(ConnId(12), late, &send(hub(1), b"x"), &mut out);
        assert_eq!(closes(&out), vec![(ConnId(12), CloseCode::GuestLimit)]);
    }

    #[test]
    fn guests_are_refused_without_their_issuer_and_closed_when_it_leaves() {
        let mut r = room();
        let out = guest_join(&mut r, 10, hub(0xa0), hub(1), NOW);
        assert_eq!(closes(&out), vec![(ConnId(10), CloseCode::IssuerOffline)]);
        let _ = join(&mut r, 1, hub(1));
        // A guest may not take a member's id.
        let out = guest_join(&mut r, 11, hub(1), hub(1), NOW);
        assert_eq!(closes(&out), vec![(ConnId(11), CloseCode::ProtocolError)]);
        let _ = guest_join(&mut r, 12, hub(0xa2), hub(1), NOW);
        let mut out = Vec::new();
        r.handle_disconnect(ConnId(1), NOW, &mut out);
        assert_eq!(closes(&out), vec![(ConnId(12), CloseCode::IssuerOffline)]);
        assert_eq!(r.connections(), 0, "every socket was closed and forgotten");
    }

    #[test]
    fn guests_are_bounded_and_stale_ones_make_room() {
        let mut r = room();
        let _ = join(&mut r, 1, hub(1));
        for i in 0..MAX_GUESTS as u64 {
            let out = guest_join(&mut r, 10 + i, hub(0xa0 + i as u8), hub(1), NOW);
            assert!(closes(&out).is_empty());
        }
        let out = guest_join(&mut r, 30, hub(0xc0), hub(1), NOW);
        assert_eq!(closes(&out), vec![(ConnId(30), CloseCode::TryAgainLater)]);
        // Once the others' time is up, a new guest evicts them.
        let out = guest_join(&mut r, 31, hub(0xc1), hub(1), NOW + GUEST_LIFETIME_MS + 1);
        assert_eq!(closes(&out).len(), MAX_GUESTS);
        assert!(closes(&out)
            .iter()
            .all(|(c, code)| c.0 < 30 && *code == CloseCode::GuestLimit));
        assert_eq!(
            sent_to(&out, ConnId(31)).len(),
            1,
            "the new guest is welcomed"
        );
    }

    #[test]
    fn guest_admissions_are_rate_limited() {
        let mut r = room();
        let _ = join(&mut r, 1, hub(1));
        // Guests that come and go quickly still count against the rate.
        for i in 0..MAX_GUEST_ADMISSIONS as u64 {
            let at = NOW + i;
            let out = guest_join(&mut r, 100 + i, hub(0x80 + i as u8), hub(1), at);
            assert!(closes(&out).is_empty(), "guest {i}");
            let mut out = Vec::new();
            r.handle_disconnect(ConnId(100 + i), NOW, &mut out);
        }
        let out = guest_join(&mut r, 200, hub(0xf0), hub(1), NOW + 100);
        assert_eq!(closes(&out), vec![(ConnId(200), CloseCode::TryAgainLater)]);
        // A minute after the first ones, room again.
        let out = guest_join(&mut r, 201, hub(0xf1), hub(1), NOW + GUEST_WINDOW_MS + 1);
        assert!(closes(&out).is_empty());
    }

    /// What the guest rule needs is stored with the socket (`Admitted`, again after every
    /// send) and restored: a restored guest keeps its message count and expires on time. A
    /// restore once set its admission time to 0, which skipped the lifetime check, and its
    /// count to 0.
    /// A room rebuilt after a hibernation from member 1 (socket 1) and `guest` (socket 10), as
    /// their attachments stored them.
    fn woken_with(guest: MemberInfo) -> Room {
        let mut woken = room();
        let mut out = Vec::new();
        woken.restore(
            ConnId(1),
            NOW,
            Some(hub(1)),
            Some(member(1)),
            NOW + 2,
            &mut out,
        );
        woken.restore(
            ConnId(10),
            NOW,
            Some(guest.hub),
            Some(guest),
            NOW + 2,
            &mut out,
        );
        woken
    }

    #[test]
    fn a_restored_guest_keeps_its_count_and_its_lifetime() {
        let mut r = room();
        let _ = join(&mut r, 1, hub(1));
        let out = guest_join(&mut r, 10, hub(0xa0), hub(1), NOW);
        let mut stored = stored_member(&out, ConnId(10));
        assert_eq!((stored.admitted_ms, stored.sends), (NOW, 0));
        for i in 1..MAX_GUEST_SENDS {
            let mut out = Vec::new();
            r.handle_message(ConnId(10), NOW + 1, &send(hub(1), b"x"), &mut out);
            stored = stored_member(&out, ConnId(10));
            assert_eq!(stored.sends, i);
        }
        // Hibernation: a new room from what was stored.
        let mut woken = woken_with(stored);
        let mut out = Vec::new();
        woken.handle_message(ConnId(10), NOW + 3, &send(hub(1), b"after"), &mut out);
        assert_eq!(
            sent_to(&out, ConnId(1)),
            vec![vec![Frame::Recv {
                src: hub(0xa0),
                payload: b"after"
            }]]
        );
        // That was its last message.
        let mut out = Vec::new();
        woken.handle_message(ConnId(10), NOW + 4, &send(hub(1), b"one more"), &mut out);
        assert_eq!(closes(&out), vec![(ConnId(10), CloseCode::GuestLimit)]);

        // Another restored guest is closed when its time, counted from its admission, is up.
        let mut woken = woken_with(MemberInfo { sends: 0, ..stored });
        assert_eq!(woken.poll_timeout(), Some(NOW + GUEST_LIFETIME_MS));
        let mut out = Vec::new();
        woken.handle_timeout(NOW + GUEST_LIFETIME_MS - 1, &mut out);
        assert!(out.is_empty());
        woken.handle_timeout(NOW + GUEST_LIFETIME_MS, &mut out);
        assert_eq!(closes(&out), vec![(ConnId(10), CloseCode::GuestLimit)]);
        assert_eq!(woken.poll_timeout(), None);
    }
}
