//! The room's table of sockets and their deadlines: no `Hello` in time, a pairing guest's time
//! up, a member idle past the idle timeout; the one earliest deadline the relay waits for.

use super::limits::MemberRate;
use super::{Action, Conn, ConnId, ConnState, Room, HELLO_TIMEOUT_MS};
use crate::relay::close::CloseCode;

impl Room {
    /// The earliest deadline of the room (Unix ms): call [`Room::handle_timeout`] then, or
    /// sooner. `None`: no deadline (nothing but members, no idle timeout, no presence change
    /// waiting to be announced).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<u64> {
        let socket = self.timers.first().map(|&(at, _)| at);
        match (socket, self.presence.due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Closes every socket whose deadline is at or before `now_ms`: no `Hello` in time (`4003`),
    /// a pairing guest's time up (`4021`), a member idle past the idle timeout (`4008`); and
    /// announces the presence changes gathered, when their window ends.
    pub fn handle_timeout(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        self.tick(now_ms);
        self.expire(now_ms, out);
        if self.presence.due.is_some_and(|due| due <= now_ms) {
            self.flush_presence(now_ms, out);
        }
    }

    pub(super) fn expire(&mut self, now_ms: u64, out: &mut Vec<Action>) {
        while let Some(&(at, conn)) = self.timers.first() {
            if at > now_ms {
                break;
            }
            let Some(state) = self.conns.get(&conn).map(|c| c.state) else {
                self.timers.remove(&(at, conn));
                continue;
            };
            let (code, reason) = match state {
                ConnState::AwaitingHello(_) => (
                    CloseCode::HelloTimeout,
                    format!("no Hello within {} s", HELLO_TIMEOUT_MS / 1000),
                ),
                ConnState::Guest { .. } => (CloseCode::GuestLimit, "pairing time is up".into()),
                ConnState::Member(_) => (
                    CloseCode::IdleTimeout,
                    format!(
                        "nothing received for {} s",
                        self.config.idle_timeout_ms.unwrap_or_default() / 1000
                    ),
                ),
            };
            self.close(conn, code, reason, out);
        }
    }

    /// A member was heard from: its idle deadline moves (in steps of an eighth of the timeout,
    /// at most a second, so that a busy member does not reorder the timers on every message).
    pub(super) fn touch(&mut self, conn: ConnId, now_ms: u64) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if !matches!(c.state, ConnState::Member(_)) {
            return;
        }
        let step = self
            .config
            .idle_timeout_ms
            .map_or(1000, |t| (t / 8).clamp(1, 1000));
        if let (Some(new), Some(old)) = (self.idle_deadline(now_ms), c.deadline) {
            if new >= old.saturating_add(step) {
                self.set_deadline(conn, Some(new));
            }
        }
    }

    pub(super) fn idle_deadline(&self, now_ms: u64) -> Option<u64> {
        self.config
            .idle_timeout_ms
            .map(|t| now_ms.saturating_add(t))
    }

    /// Adds (or replaces) a socket with its state and deadline.
    pub(super) fn insert(
        &mut self,
        conn: ConnId,
        state: ConnState,
        deadline: Option<u64>,
        now_ms: u64,
    ) {
        self.forget(conn);
        if matches!(state, ConnState::AwaitingHello(_)) {
            self.pending += 1;
        }
        let rate = matches!(state, ConnState::Member(_))
            .then(|| MemberRate::new(&self.config.limits, now_ms));
        let seen = self.presence.log.len();
        self.conns.insert(
            conn,
            Conn {
                state,
                deadline,
                rate,
                seen,
            },
        );
        if let Some(at) = deadline {
            self.timers.insert((at, conn));
        }
    }

    /// Removes a socket and its deadline; returns its state.
    pub(super) fn forget(&mut self, conn: ConnId) -> Option<ConnState> {
        let c = self.conns.remove(&conn)?;
        if let Some(at) = c.deadline {
            self.timers.remove(&(at, conn));
        }
        if matches!(c.state, ConnState::AwaitingHello(_)) {
            self.pending -= 1;
        }
        Some(c.state)
    }

    pub(super) fn set_deadline(&mut self, conn: ConnId, deadline: Option<u64>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if let Some(at) = c.deadline {
            self.timers.remove(&(at, conn));
        }
        c.deadline = deadline;
        if let Some(at) = deadline {
            self.timers.insert((at, conn));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::room::testing::*;

    /// Every deadline is the room's: a guest is held its whole lifetime (the native relay once
    /// closed it at 10 s, as a socket without Hello), a socket without Hello is closed at 10 s,
    /// a member idle past the idle timeout is closed, and activity moves that deadline.
    #[test]
    fn deadlines_hello_guest_and_idle() {
        let mut config = RoomConfig::new(ca().cluster_id(), 42);
        config.idle_timeout_ms = Some(IDLE_TIMEOUT_MS);
        let mut r = Room::new(config);
        let _ = join(&mut r, 1, hub(1));
        assert_eq!(r.poll_timeout(), Some(NOW + IDLE_TIMEOUT_MS));
        let _ = guest_join(&mut r, 10, hub(0xa0), hub(1), NOW);
        let mut out = Vec::new();
        r.handle_connect(ConnId(20), NOW, Some(hub(20)), &mut out);
        assert_eq!(r.poll_timeout(), Some(NOW + HELLO_TIMEOUT_MS));

        // At 10 s the silent socket goes, and only it.
        let mut out = Vec::new();
        r.handle_timeout(NOW + HELLO_TIMEOUT_MS, &mut out);
        assert_eq!(closes(&out), vec![(ConnId(20), CloseCode::HelloTimeout)]);
        // At 15 s the guest is still there and reaches its issuer.
        let mut out = Vec::new();
        r.handle_timeout(NOW + 15_000, &mut out);
        assert!(out.is_empty());
        r.handle_message(ConnId(10), NOW + 15_000, &send(hub(1), b"still"), &mut out);
        assert_eq!(sent_to(&out, ConnId(1)).len(), 1);
        // The member keeps itself alive with a keepalive at 59 s.
        r.handle_keepalive(ConnId(1), NOW + 59_000);
        let mut out = Vec::new();
        r.handle_timeout(NOW + GUEST_LIFETIME_MS, &mut out);
        assert_eq!(closes(&out), vec![(ConnId(10), CloseCode::GuestLimit)]);
        let mut out = Vec::new();
        r.handle_timeout(NOW + IDLE_TIMEOUT_MS, &mut out);
        assert!(out.is_empty(), "the keepalive moved the idle deadline");
        assert_eq!(r.poll_timeout(), Some(NOW + 59_000 + IDLE_TIMEOUT_MS));
        r.handle_timeout(NOW + 59_000 + IDLE_TIMEOUT_MS, &mut out);
        assert_eq!(closes(&out), vec![(ConnId(1), CloseCode::IdleTimeout)]);
        assert_eq!(r.connections(), 0);
        assert_eq!(r.poll_timeout(), None);
    }

    /// Sockets that have not said Hello are capped; the one past the cap is refused at once and
    /// the others keep their place.
    #[test]
    fn sockets_awaiting_hello_are_capped() {
        let mut r = room();
        let mut out = Vec::new();
        for i in 0..MAX_PENDING as u64 {
            r.handle_connect(ConnId(i), NOW, Some(hub(1)), &mut out);
        }
        assert!(out.is_empty());
        r.handle_connect(ConnId(9999), NOW, Some(hub(2)), &mut out);
        assert_eq!(closes(&out), vec![(ConnId(9999), CloseCode::TryAgainLater)]);
        assert_eq!(r.connections(), MAX_PENDING);
        // One says Hello: a place is free again.
        let mut out = Vec::new();
        r.handle_message(ConnId(0), NOW, &hello(hub(1)), &mut out);
        r.handle_connect(ConnId(10_000), NOW, Some(hub(2)), &mut out);
        assert!(closes(&out).is_empty());
        // Past their deadline they all go.
        let mut out = Vec::new();
        r.handle_timeout(NOW + HELLO_TIMEOUT_MS, &mut out);
        assert_eq!(closes(&out).len(), MAX_PENDING);
        assert_eq!(r.online().collect::<Vec<_>>(), vec![hub(1)]);
    }
}
