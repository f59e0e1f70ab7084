//! Fair shares: each member's token buckets (frames and bytes sent, bytes received), what a
//! member over its limit is told, and how a flooder is closed and kept out.

use super::{Action, ConnId, Outbox, Room, RoomError};
use crate::relay::frame::{Frame, HubId};
use crate::relay::rate::{
    Limits, TokenBucket, CLOSE_AFTER_MS, EPISODE_GAP_MS, MAX_PENALIZED, MAX_PENALTY_MS,
    NOTICE_INTERVAL_MS, PENALTY_MEMORY_MS, PENALTY_MS,
};

/// A member's share of the relay: what it may send and be sent, and how it was told.
#[derive(Debug, Clone, Copy)]
pub(super) struct MemberRate {
    pub(super) send_frames: TokenBucket,
    pub(super) send_bytes: TokenBucket,
    pub(super) recv_bytes: TokenBucket,
    /// Frames dropped since the last notice.
    pub(super) dropped: u32,
    /// No notice before then.
    pub(super) next_notice_ms: u64,
    /// When the current episode of drops began (the first notice of it).
    pub(super) episode_start: Option<u64>,
    /// Frames and bytes dropped for its own limit in the current episode.
    pub(super) episode_frames: u64,
    pub(super) episode_bytes: u64,
    pub(super) last_drop_ms: u64,
    /// Its own limit lets a frame through again then.
    pub(super) throttled_until: u64,
}

impl MemberRate {
    pub(super) fn new(limits: &Limits, now_ms: u64) -> Self {
        MemberRate {
            send_frames: TokenBucket::new(limits.send_frames, now_ms),
            send_bytes: TokenBucket::new(limits.send_bytes, now_ms),
            recv_bytes: TokenBucket::new(limits.recv_bytes, now_ms),
            dropped: 0,
            next_notice_ms: 0,
            episode_start: None,
            episode_frames: 0,
            episode_bytes: 0,
            last_drop_ms: 0,
            throttled_until: 0,
        }
    }

    /// Takes a frame of `bytes` from the sender's buckets; the wait if it may not send it.
    pub(super) fn send(&mut self, bytes: u64, now_ms: u64) -> Result<(), u64> {
        let frames = self.send_frames.check(1, now_ms);
        let bytes_ok = self.send_bytes.check(bytes, now_ms);
        match (frames, bytes_ok) {
            (Ok(()), Ok(())) => {
                self.send_frames.take_with_debt(1, now_ms);
                self.send_bytes.take_with_debt(bytes, now_ms);
                Ok(())
            }
            (Err(a), Err(b)) => Err(a.max(b)),
            (Err(wait), _) | (_, Err(wait)) => Err(wait),
        }
    }
}

/// A hub closed for its rate: refused until `until_ms`; `strikes` times so far.
#[derive(Debug, Clone, Copy)]
pub(super) struct Penalty {
    pub(super) until_ms: u64,
    pub(super) strikes: u32,
}

impl Room {
    /// How much longer `hub` is kept out (ms), if it was closed with `4009` and its time is not
    /// up: the relay answers its connect with [`path::KEPT_OUT_STATUS`] and opens no socket.
    ///
    /// [`path::KEPT_OUT_STATUS`]: crate::relay::path::KEPT_OUT_STATUS
    #[must_use]
    pub fn kept_out(&self, hub: &HubId, now_ms: u64) -> Option<u64> {
        self.penalized
            .get(hub)
            .filter(|p| now_ms < p.until_ms)
            .map(|p| p.until_ms - now_ms)
    }

    /// When `conn`, a member over its own rate limit, may send a frame again (Unix ms): `None`
    /// if it may now. `hub relay` reads nothing more from it until then, so that a flood waits
    /// in the sender's TCP buffers rather than costing the relay.
    pub fn throttled_until(&self, conn: ConnId, now_ms: u64) -> Option<u64> {
        let until = self.conns.get(&conn)?.rate?.throttled_until;
        (until > now_ms).then_some(until)
    }

    /// A frame of `conn` was dropped because `limited`'s limit (its own if `own` gives the
    /// frame's size, else its receiver's) lets it through only in `wait` ms: counted, told (at
    /// most every [`NOTICE_INTERVAL_MS`]), and past [`CLOSE_AFTER_MS`] of this, or past a
    /// burst of its own limit dropped, closed.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn dropped(
        &mut self,
        conn: ConnId,
        limited: HubId,
        wait: u64,
        own: Option<u64>,
        now_ms: u64,
        outbox: &mut Outbox,
        out: &mut Vec<Action>,
    ) -> Result<(), RoomError> {
        let limits = self.config.limits;
        let Some(rate) = self.conns.get_mut(&conn).and_then(|c| c.rate.as_mut()) else {
            return Ok(());
        };
        rate.dropped = rate.dropped.saturating_add(1);
        let episode = match rate.episode_start {
            Some(start) if now_ms.saturating_sub(rate.last_drop_ms) < EPISODE_GAP_MS => start,
            _ => {
                rate.episode_frames = 0;
                rate.episode_bytes = 0;
                now_ms
            }
        };
        rate.episode_start = Some(episode);
        rate.last_drop_ms = now_ms;
        if now_ms.saturating_sub(episode) >= CLOSE_AFTER_MS {
            return Err(RoomError::RateLimited);
        }
        if let Some(bytes) = own {
            rate.episode_frames += 1;
            rate.episode_bytes += bytes;
            if rate.episode_frames > limits.send_frames.burst
                || rate.episode_bytes > limits.send_bytes.burst
            {
                return Err(RoomError::Flooding);
            }
        }
        // Never more than a minute: the limits refill far faster than that.
        let wait = wait.min(60_000);
        if own.is_some() {
            rate.throttled_until = rate.throttled_until.max(now_ms.saturating_add(wait));
        }
        if now_ms >= rate.next_notice_ms {
            let frame = Frame::RateLimited {
                limited,
                retry_after_ms: wait as u32,
                dropped: rate.dropped,
            };
            rate.dropped = 0;
            rate.next_notice_ms = now_ms.saturating_add(wait.max(NOTICE_INTERVAL_MS));
            outbox.push(conn, &frame, out);
        }
        Ok(())
    }

    /// `hub` was closed with `4009`: it is refused for [`PENALTY_MS`], doubled for each time
    /// again within [`PENALTY_MEMORY_MS`] (at most [`MAX_PENALTY_MS`]). The relay is asked to
    /// keep it ([`Action::Penalized`]), so that a room rebuilt after a hibernation still keeps
    /// the hub out, and doubles its next penalty ([`Room::restore_penalty`]).
    pub(super) fn penalize(&mut self, hub: HubId, now_ms: u64, out: &mut Vec<Action>) {
        self.penalized
            .retain(|_, p| now_ms < p.until_ms.saturating_add(PENALTY_MEMORY_MS));
        let strikes = self.penalized.get(&hub).map_or(1, |p| p.strikes + 1);
        let penalty = PENALTY_MS
            .saturating_mul(1 << (strikes - 1).min(16))
            .min(MAX_PENALTY_MS);
        if self.penalized.len() >= MAX_PENALIZED && !self.penalized.contains_key(&hub) {
            let first = self
                .penalized
                .iter()
                .min_by_key(|(_, p)| p.until_ms)
                .map(|(h, _)| *h);
            if let Some(first) = first {
                self.penalized.remove(&first);
            }
        }
        let until_ms = now_ms.saturating_add(penalty);
        self.penalized.insert(hub, Penalty { until_ms, strikes });
        out.push(Action::Penalized {
            hub,
            until_ms,
            strikes,
        });
    }

    /// Gives the room a penalty stored before it was rebuilt (from [`Action::Penalized`]):
    /// ignored once it is past remembering at `now_ms`, or when the room remembers as many as it
    /// keeps.
    pub fn restore_penalty(&mut self, hub: HubId, until_ms: u64, strikes: u32, now_ms: u64) {
        if now_ms >= until_ms.saturating_add(PENALTY_MEMORY_MS)
            || (self.penalized.len() >= MAX_PENALIZED && !self.penalized.contains_key(&hub))
        {
            return;
        }
        let strikes = strikes.max(1);
        self.penalized.insert(hub, Penalty { until_ms, strikes });
    }

    /// Whether the room remembers no penalty that still counts at `now_ms` (a relay may then
    /// forget the penalties it stored).
    pub fn penalties_expired(&self, now_ms: u64) -> bool {
        self.penalized
            .values()
            .all(|p| now_ms >= p.until_ms.saturating_add(PENALTY_MEMORY_MS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::room::testing::*;

    /// One member sending past its limit loses the frames past it and is told, once per
    /// notice interval, with the count; the others' frames go through; a member that goes on
    /// past its limit for 5 s is closed with 4009, and nobody else is; it is then kept out for
    /// 10 s.
    #[test]
    fn a_flooder_is_limited_and_told_and_nobody_else_is() {
        let mut r = frame_limited_room(100, 50);
        for i in 1..=4 {
            let _ = join(&mut r, i, hub(i as u8));
        }
        let frames = |n: usize| -> Vec<u8> { (0..n).flat_map(|_| send(hub(2), b"x")).collect() };
        // Hub 1 sends 60 frames to hub 2 in one message: 50 pass, 10 are dropped, one notice.
        let mut out = Vec::new();
        r.handle_message(ConnId(1), NOW, &frames(60), &mut out);
        assert_eq!(recvs(&out, ConnId(2)), 50);
        // 100 frames a second: the next one in 10 ms.
        assert_eq!(notices(&out, ConnId(1)), vec![(hub(1), 10, 1)]);
        assert_eq!(r.throttled_until(ConnId(1), NOW), Some(NOW + 10));
        // Hub 3 and hub 4 are not limited by it.
        let mut out = Vec::new();
        r.handle_message(ConnId(3), NOW, &send(hub(4), b"ping"), &mut out);
        r.handle_message(ConnId(4), NOW, &send(hub(3), b"pong"), &mut out);
        r.handle_message(ConnId(3), NOW, &send(hub(2), b"hi"), &mut out);
        assert_eq!(recvs(&out, ConnId(4)), 1);
        assert_eq!(recvs(&out, ConnId(3)), 1);
        assert_eq!(recvs(&out, ConnId(2)), 1);
        assert!(notices(&out, ConnId(3)).is_empty() && notices(&out, ConnId(4)).is_empty());
        // The next notice carries the drops since the last one.
        let mut out = Vec::new();
        r.handle_message(ConnId(1), NOW + 300, &frames(31), &mut out);
        assert_eq!(recvs(&out, ConnId(2)), 30, "refilled: 30 pass");
        assert_eq!(notices(&out, ConnId(1)), vec![(hub(1), 10, 9 + 1)]);
        // Still a little past its limit 5 s after the first notice: closed as rate-limited.
        let mut at = NOW + 300;
        let mut closed = Vec::new();
        while closed.is_empty() && at < NOW + 10_000 {
            at += 200;
            let mut out = Vec::new();
            r.handle_message(ConnId(1), at, &frames(21), &mut out);
            closed = closes(&out);
        }
        assert_eq!(closed, vec![(ConnId(1), CloseCode::RateLimited)]);
        assert!(
            (NOW + 5_000..NOW + 5_200).contains(&at),
            "closed at {}",
            at - NOW
        );
        assert_eq!(r.online().collect::<Vec<_>>(), vec![hub(2), hub(3), hub(4)]);
        // Kept out for 10 s, then welcome again.
        let out = join_at(&mut r, 5, hub(1), at + 9_000);
        assert_eq!(closes(&out), vec![(ConnId(5), CloseCode::RateLimited)]);
        let out = join_at(&mut r, 6, hub(1), at + 10_000);
        assert!(closes(&out).is_empty());
        assert_eq!(r.hub_of(ConnId(6)), Some(hub(1)));
    }

    /// A flood (a burst of its limit dropped at once) is closed at once, and each time again
    /// keeps the hub out twice as long.
    #[test]
    fn a_flood_is_closed_at_once_and_kept_out_longer_each_time() {
        let mut r = frame_limited_room(100, 50);
        let _ = join(&mut r, 2, hub(2));
        let flood: Vec<u8> = (0..200).flat_map(|_| send(hub(2), b"x")).collect();
        let mut at = NOW;
        for (conn, kept_out) in [(10, 10_000), (20, 20_000), (30, 40_000)] {
            let _ = join_at(&mut r, conn, hub(1), at);
            let mut out = Vec::new();
            r.handle_message(ConnId(conn), at, &flood, &mut out);
            assert_eq!(closes(&out), vec![(ConnId(conn), CloseCode::RateLimited)]);
            assert_eq!(
                recvs(&out, ConnId(2)),
                50,
                "its burst, and not a frame more"
            );
            // Its connect is refused before a socket opens, until its time is up.
            assert_eq!(r.kept_out(&hub(1), at), Some(kept_out));
            assert_eq!(r.kept_out(&hub(1), at + kept_out - 1), Some(1));
            assert_eq!(r.kept_out(&hub(1), at + kept_out), None);
            // And a socket that opened anyway has its Hello refused.
            let refused = join_at(&mut r, conn + 1, hub(1), at + kept_out - 1);
            assert_eq!(
                closes(&refused),
                vec![(ConnId(conn + 1), CloseCode::RateLimited)]
            );
            at += kept_out;
        }
        // Another hub is not kept out for it.
        assert_eq!(r.kept_out(&hub(3), NOW + 1), None);
        let out = join_at(&mut r, 40, hub(3), NOW + 1);
        assert!(closes(&out).is_empty());
    }

    /// A penalty is handed to the relay to keep; a room rebuilt from it (after a hibernation)
    /// keeps the hub out as before, and doubles its next penalty.
    #[test]
    fn penalties_survive_a_rebuild() {
        let mut r = frame_limited_room(100, 50);
        let _ = join(&mut r, 2, hub(2));
        let flood: Vec<u8> = (0..200).flat_map(|_| send(hub(2), b"x")).collect();
        let _ = join(&mut r, 10, hub(1));
        let mut out = Vec::new();
        r.handle_message(ConnId(10), NOW, &flood, &mut out);
        let stored: Vec<(HubId, u64, u32)> = out
            .iter()
            .filter_map(|a| match a {
                Action::Penalized {
                    hub,
                    until_ms,
                    strikes,
                } => Some((*hub, *until_ms, *strikes)),
                _ => None,
            })
            .collect();
        assert_eq!(stored, vec![(hub(1), NOW + 10_000, 1)]);

        let mut woken = frame_limited_room(100, 50);
        let (h, until, strikes) = stored[0];
        woken.restore_penalty(h, until, strikes, NOW + 1);
        assert_eq!(woken.kept_out(&hub(1), NOW + 1), Some(9_999));
        // Flooding again once let in: kept out twice as long.
        let at = NOW + 10_000;
        let _ = join_at(&mut woken, 2, hub(2), at);
        let _ = join_at(&mut woken, 20, hub(1), at);
        let mut out = Vec::new();
        woken.handle_message(ConnId(20), at, &flood, &mut out);
        assert_eq!(woken.kept_out(&hub(1), at), Some(20_000));
        assert!(!woken.penalties_expired(at));
        // A stored penalty past remembering is ignored.
        let mut later = frame_limited_room(100, 50);
        later.restore_penalty(h, until, strikes, until + PENALTY_MEMORY_MS);
        assert_eq!(later.kept_out(&hub(1), until - 1), None);
        assert!(later.penalties_expired(until + PENALTY_MEMORY_MS));
    }

    /// A member that stops when told starts a new episode: it is never closed.
    #[test]
    fn a_member_that_backs_off_is_never_closed() {
        let mut r = frame_limited_room(100, 10);
        let _ = join(&mut r, 1, hub(1));
        let _ = join(&mut r, 2, hub(2));
        let burst: Vec<u8> = (0..11).flat_map(|_| send(hub(2), b"x")).collect();
        for second in 0..20 {
            let mut out = Vec::new();
            r.handle_message(ConnId(1), NOW + second * 1_100, &burst, &mut out);
            assert_eq!(notices(&out, ConnId(1)).len(), 1, "second {second}");
            assert!(closes(&out).is_empty(), "second {second}");
        }
    }

    /// Many senders within their own limits cannot push one receiver past its limit: the
    /// frames past it are dropped, and each sender is told whose limit it was.
    #[test]
    fn a_receiver_is_sent_no_more_than_its_limit() {
        use crate::relay::rate::Rate;
        let mut r = limited_room(Limits {
            send_frames: Rate::new(1 << 20, 1 << 20),
            send_bytes: Rate::new(1 << 30, 1 << 30),
            recv_bytes: Rate::new(10_000, 1_000),
        });
        for i in 1..=3 {
            let _ = join(&mut r, i, hub(i as u8));
        }
        let payload = [0u8; 79]; // 100 bytes on the wire
        let mut out = Vec::new();
        for _ in 0..6 {
            r.handle_message(ConnId(1), NOW, &send(hub(3), &payload), &mut out);
            r.handle_message(ConnId(2), NOW, &send(hub(3), &payload), &mut out);
        }
        assert_eq!(recvs(&out, ConnId(3)), 10);
        assert_eq!(notices(&out, ConnId(2)), vec![(hub(3), 10, 1)]);
        assert_eq!(notices(&out, ConnId(1)), vec![(hub(3), 10, 1)]);
        // A receiver's limit does not hold its senders' reading.
        assert_eq!(r.throttled_until(ConnId(1), NOW), None);
        // Hub 1 to hub 2 is not affected.
        let mut out = Vec::new();
        r.handle_message(ConnId(1), NOW, &send(hub(2), &payload), &mut out);
        assert_eq!(recvs(&out, ConnId(2)), 1);
    }
}
