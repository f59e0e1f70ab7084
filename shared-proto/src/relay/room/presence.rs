//! Presence: who joined and left, gathered per [`PRESENCE_WINDOW_MS`] and announced to every
//! member in one message, and to a member ahead of a payload from a hub whose join it has not
//! heard of yet.

use std::collections::HashMap;

use super::{Action, ConnId, Outbox, Room};
use crate::relay::frame::{Frame, HubId, MAX_ROOM_MEMBERS};

/// Presence changes (joins, leaves) in this window after an announcement are gathered and
/// announced together at its end: one message per member, however many hubs came back.
pub const PRESENCE_WINDOW_MS: u64 = 100;

/// Most presence changes gathered before they are announced, window or not.
pub const MAX_PRESENCE_LOG: usize = 4096;

/// A presence change, as the log keeps it until it is announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    Joined,
    Left,
}

/// Presence changes not yet told to every member. Each member's [`Conn::seen`] is the index
/// from which it still has to be told.
#[derive(Debug, Default)]
pub(super) struct Presence {
    pub(super) log: Vec<(HubId, Change)>,
    /// When the gathered changes are announced.
    pub(super) due: Option<u64>,
    pub(super) last_flush_ms: Option<u64>,
}

impl Room {
    /// Tells the members that `hub` joined or left: at once if nothing was announced within
    /// [`PRESENCE_WINDOW_MS`], else with the other changes of that window at its end.
    pub(super) fn announce(&mut self, hub: HubId, change: Change, out: &mut Vec<Action>) {
        let now_ms = self.now_ms;
        let window = self.config.presence_window_ms;
        let presence = &mut self.presence;
        presence.log.push((hub, change));
        let window_end = presence
            .last_flush_ms
            .map_or(0, |t| t.saturating_add(window));
        if presence.log.len() >= MAX_PRESENCE_LOG
            || (presence.due.is_none() && now_ms >= window_end)
        {
            self.flush_presence(now_ms, out);
        } else if presence.due.is_none() {
            presence.due = Some(window_end);
        }
    }

    /// Announces every gathered presence change to the members that have not been told it:
    /// one message each, with the hubs that left in one `PeerLeft` frame and those that joined
    /// in one `PeerJoined` frame.
    pub(super) fn flush_presence(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        let mut messages: HashMap<usize, Vec<u8>> = HashMap::new();
        for &conn in self.members.values() {
            let Some(seen) = self.conns.get(&conn).map(|c| c.seen) else {
                continue;
            };
            if seen >= self.presence.log.len() {
                continue;
            }
            let message = messages
                .entry(seen)
                .or_insert_with(|| presence_message(&self.presence.log[seen..]));
            if !message.is_empty() {
                out.push(Action::Send {
                    conn,
                    message: message.clone(),
                });
            }
        }
        for c in self.conns.values_mut() {
            c.seen = 0;
        }
        self.presence.log.clear();
        self.presence.due = None;
        self.presence.last_flush_ms = Some(now_ms);
    }

    /// Tells one member the presence changes it has not been told yet, ahead of a payload
    /// for it (which may come from a hub whose join is among them).
    pub(super) fn flush_presence_to(
        &mut self,
        conn: ConnId,
        outbox: &mut Outbox,
        out: &mut Vec<Action>,
    ) {
        let len = self.presence.log.len();
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.seen >= len {
            return;
        }
        let (left, joined) = net_presence(&self.presence.log[c.seen..]);
        c.seen = len;
        for frame in presence_frames(left, joined) {
            outbox.push(conn, &frame, out);
        }
    }
}

/// What a member must be told of `log` (oldest first): the hubs that left (or left and came
/// back) and the hubs that are online at its end after a change, each once, in log order.
pub(super) fn net_presence(log: &[(HubId, Change)]) -> (Vec<HubId>, Vec<HubId>) {
    // Per hub: its first and last change.
    let mut order: Vec<HubId> = Vec::new();
    let mut ends: HashMap<HubId, (Change, Change)> = HashMap::new();
    for &(hub, change) in log {
        ends.entry(hub)
            .and_modify(|e| e.1 = change)
            .or_insert_with(|| {
                order.push(hub);
                (change, change)
            });
    }
    let mut left = Vec::new();
    let mut joined = Vec::new();
    for hub in order {
        let Some(&(first, last)) = ends.get(&hub) else {
            continue;
        };
        // A hub that was online before (its first change is a leave) or is gone at the end.
        if first == Change::Left || last == Change::Left {
            left.push(hub);
        }
        if last == Change::Joined {
            joined.push(hub);
        }
    }
    (left, joined)
}

/// `PeerLeft` then `PeerJoined` frames for these hubs, at most [`MAX_ROOM_MEMBERS`] a frame.
pub(super) fn presence_frames(left: Vec<HubId>, joined: Vec<HubId>) -> Vec<Frame<'static>> {
    let lists = |hubs: Vec<HubId>| {
        hubs.chunks(MAX_ROOM_MEMBERS)
            .map(<[HubId]>::to_vec)
            .collect::<Vec<_>>()
    };
    let mut frames: Vec<Frame<'static>> = lists(left).into_iter().map(Frame::PeerLeft).collect();
    frames.extend(lists(joined).into_iter().map(Frame::PeerJoined));
    frames
}

/// The presence frames for `log` as one message: the log holds at most [`MAX_PRESENCE_LOG`]
/// changes, 16 bytes each, far below [`MAX_MESSAGE`].
pub(super) fn presence_message(log: &[(HubId, Change)]) -> Vec<u8> {
    let (left, joined) = net_presence(log);
    let mut message = Vec::new();
    for frame in presence_frames(left, joined) {
        // Non-empty and within the member limit by construction.
        let _ = frame.encode(&mut message);
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::room::testing::*;

    #[test]
    fn join_gets_welcome_and_others_see_presence() {
        let mut r = room();
        let out = join(&mut r, 1, hub(1));
        assert!(matches!(
            out[1],
            Action::Admitted { conn: ConnId(1), member } if member.hub == hub(1)
        ));
        assert_eq!(
            sent_to(&out, ConnId(1)),
            vec![vec![Frame::Welcome {
                version: 1,
                online: vec![]
            }]]
        );
        let out = join(&mut r, 2, hub(2));
        assert_eq!(
            sent_to(&out, ConnId(2)),
            vec![vec![Frame::Welcome {
                version: 1,
                online: vec![hub(1)]
            }]]
        );
        assert_eq!(
            sent_to(&out, ConnId(1)),
            vec![vec![Frame::PeerJoined(vec![hub(2)])]]
        );
        assert_eq!(r.online().collect::<Vec<_>>(), vec![hub(1), hub(2)]);
    }

    /// Joins and leaves within the window after an announcement are announced together at its
    /// end: one message per member, leaves first, each hub once; a payload from a hub a member
    /// has not been told of yet comes after its announcement.
    #[test]
    fn presence_changes_of_a_moment_are_announced_together() {
        let mut r = Room::new(RoomConfig::new(ca().cluster_id(), 42));
        let _ = join_at(&mut r, 1, hub(1), NOW);
        let t = NOW + PRESENCE_WINDOW_MS;
        // Nothing was announced within the window: hub 2's join goes out at once.
        let out = join_at(&mut r, 2, hub(2), t);
        assert_eq!(
            sent_to(&out, ConnId(1)),
            vec![vec![Frame::PeerJoined(vec![hub(2)])]]
        );
        assert_eq!(r.poll_timeout(), None);
        // Within the window: gathered.
        let mut out = join_at(&mut r, 3, hub(3), t + 10);
        out.extend(join_at(&mut r, 4, hub(4), t + 20));
        r.handle_disconnect(ConnId(2), NOW + 30, &mut out);
        out.extend(join_at(&mut r, 5, hub(2), t + 40));
        assert!(sent_to(&out, ConnId(1)).is_empty());
        assert_eq!(r.poll_timeout(), Some(t + PRESENCE_WINDOW_MS));
        // Hub 3 sends to hub 1 before the window ends: hub 1 hears of hub 3 first.
        let mut out = Vec::new();
        r.handle_message(ConnId(3), NOW + 50, &send(hub(1), b"hi"), &mut out);
        assert_eq!(
            sent_to(&out, ConnId(1)),
            vec![vec![
                Frame::PeerLeft(vec![hub(2)]),
                Frame::PeerJoined(vec![hub(3), hub(4), hub(2)]),
                Frame::Recv {
                    src: hub(3),
                    payload: b"hi"
                }
            ]]
        );
        // The window ends: each member that has not been told hears what it missed.
        let mut out = Vec::new();
        r.handle_timeout(t + PRESENCE_WINDOW_MS, &mut out);
        assert!(sent_to(&out, ConnId(1)).is_empty(), "told already");
        assert_eq!(
            sent_to(&out, ConnId(3)),
            vec![vec![
                Frame::PeerLeft(vec![hub(2)]),
                Frame::PeerJoined(vec![hub(4), hub(2)])
            ]]
        );
        assert_eq!(
            sent_to(&out, ConnId(4)),
            vec![vec![
                Frame::PeerLeft(vec![hub(2)]),
                Frame::PeerJoined(vec![hub(2)])
            ]]
        );
        assert!(
            sent_to(&out, ConnId(5)).is_empty(),
            "the new hub 2 knows from its Welcome"
        );
        assert_eq!(r.poll_timeout(), None);
        // 500 hubs coming back at once: each member gets one message per window, not 500.
        let mut out = Vec::new();
        for i in 0..500u64 {
            let h = HubId([
                (i >> 8) as u8 + 0x10,
                i as u8,
                9,
                9,
                9,
                9,
                9,
                9,
                9,
                9,
                9,
                9,
                9,
                9,
                9,
                9,
            ]);
            out.extend(join_at(&mut r, 100 + i, h, t + 1_000));
        }
        r.handle_timeout(t + 2_000, &mut out);
        let to_first: Vec<_> = sent_to(&out, ConnId(1));
        assert_eq!(
            to_first.len(),
            2,
            "the first join at once, then the other 499 together"
        );
        assert!(matches!(&to_first[1][..], [Frame::PeerJoined(hubs)] if hubs.len() == 499));
    }

    #[test]
    fn leave_is_broadcast_and_routing_stops() {
        let mut r = room();
        let _ = join(&mut r, 1, hub(1));
        let _ = join(&mut r, 2, hub(2));
        let mut out = Vec::new();
        r.handle_disconnect(ConnId(2), NOW, &mut out);
        assert_eq!(
            sent_to(&out, ConnId(1)),
            vec![vec![Frame::PeerLeft(vec![hub(2)])]]
        );
        let mut out = Vec::new();
        r.handle_message(ConnId(1), NOW, &send(hub(2), b"x"), &mut out);
        assert_eq!(
            sent_to(&out, ConnId(1)),
            vec![vec![Frame::Undeliverable(hub(2))]]
        );
    }
}
