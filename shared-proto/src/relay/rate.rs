//! Fair sharing of a relay: token buckets, and the limits every relay applies per member.
//!
//! The room ([`crate::relay::room`]) gives each member three buckets: the frames and the bytes
//! it may send, and the bytes it may be sent. A frame past its sender's buckets, or past its
//! receiver's, is dropped and the sender is told with a `RateLimited` frame. A sender that goes
//! on past its limit for [`CLOSE_AFTER_MS`] after being told, or floods (more than a burst of its
//! own limit dropped in one episode), is closed with `4009` and kept out of the room for
//! [`PENALTY_MS`] (doubling for each time again, up to [`MAX_PENALTY_MS`]): on the Worker every
//! message costs the room whether it is dropped or not, so a flood must end, and a reconnect must
//! not bring a fresh burst. The hub client paces itself below the same limits ([`Pacer`]), so a
//! hub that follows the protocol is never limited by its own sending.
//!
//! Buckets count in thousandths of a unit so that integer refills lose nothing between calls.

/// Frames a member may send per second (sustained).
pub const SEND_FRAMES_PER_S: u64 = 4096;
/// Frames a member may send at once after a quiet period.
pub const SEND_FRAMES_BURST: u64 = 8192;
/// Bytes (frames as on the wire) a member may send per second (sustained).
pub const SEND_BYTES_PER_S: u64 = 8 * 1024 * 1024;
/// Bytes a member may send at once after a quiet period.
pub const SEND_BYTES_BURST: u64 = 16 * 1024 * 1024;
/// Bytes a member may be sent per second, from all senders together (sustained).
pub const RECV_BYTES_PER_S: u64 = 16 * 1024 * 1024;
/// Bytes a member may be sent at once after a quiet period.
pub const RECV_BYTES_BURST: u64 = 32 * 1024 * 1024;
/// A member is told again that it is rate-limited at most this often.
pub const NOTICE_INTERVAL_MS: u64 = 250;
/// Drops less than this far apart belong to one episode of being over the limit.
pub const EPISODE_GAP_MS: u64 = 1_000;
/// A member still over its limit this long after it was first told is closed with `4009`.
pub const CLOSE_AFTER_MS: u64 = 5_000;
/// How long a hub closed with `4009` is refused (with `4009`) when it logs in again, the first
/// time; each time again within [`PENALTY_MEMORY_MS`] doubles it.
pub const PENALTY_MS: u64 = 10_000;
/// The longest a hub is kept out.
pub const MAX_PENALTY_MS: u64 = 300_000;
/// How long a room remembers a hub it closed with `4009` after its penalty ends.
pub const PENALTY_MEMORY_MS: u64 = 600_000;
/// Most hubs a room remembers as penalized; past that, the one whose penalty ends first is
/// forgotten.
pub const MAX_PENALIZED: usize = 1024;

const MILLI: u64 = 1000;

/// A sustained rate and the burst allowed above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Units per second.
    pub per_s: u64,
    /// Units available at once (the bucket's size).
    pub burst: u64,
}

impl Rate {
    /// A rate of `per_s` units a second with a bucket of `burst`.
    pub const fn new(per_s: u64, burst: u64) -> Self {
        Rate { per_s, burst }
    }
}

/// The limits a room applies to each member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Frames a member sends.
    pub send_frames: Rate,
    /// Bytes a member sends.
    pub send_bytes: Rate,
    /// Bytes a member is sent.
    pub recv_bytes: Rate,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            send_frames: Rate::new(SEND_FRAMES_PER_S, SEND_FRAMES_BURST),
            send_bytes: Rate::new(SEND_BYTES_PER_S, SEND_BYTES_BURST),
            recv_bytes: Rate::new(RECV_BYTES_PER_S, RECV_BYTES_BURST),
        }
    }
}

/// A token bucket on the caller's clock (Unix ms). It starts full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    rate: Rate,
    /// Thousandths of a unit; negative while in debt ([`TokenBucket::take_with_debt`]).
    level: i64,
    last_ms: u64,
}

impl TokenBucket {
    /// A full bucket at `now_ms`.
    pub fn new(rate: Rate, now_ms: u64) -> Self {
        TokenBucket {
            rate,
            level: milli(rate.burst),
            last_ms: now_ms,
        }
    }

    /// The bucket's rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    fn refill(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        if elapsed == 0 {
            return;
        }
        self.last_ms = now_ms;
        // per_s units a second is per_s thousandths of a unit a millisecond.
        let add = i64::try_from(elapsed.saturating_mul(self.rate.per_s)).unwrap_or(i64::MAX);
        self.level = self.level.saturating_add(add).min(milli(self.rate.burst));
    }

    /// Takes `cost` units if the bucket holds them; otherwise takes nothing and returns how long
    /// until it will ([`TokenBucket::check`]).
    pub fn try_take(&mut self, cost: u64, now_ms: u64) -> Result<(), u64> {
        self.check(cost, now_ms)?;
        self.level -= milli(cost);
        Ok(())
    }

    /// Whether the bucket holds `cost` units; if not, how long until it will (ms, at least 1;
    /// `u64::MAX` if it never will: a cost above the burst, or a zero rate).
    pub fn check(&mut self, cost: u64, now_ms: u64) -> Result<(), u64> {
        self.refill(now_ms);
        let cost = milli(cost);
        if self.level >= cost {
            return Ok(());
        }
        if cost > milli(self.rate.burst) || self.rate.per_s == 0 {
            return Err(u64::MAX);
        }
        let missing = cost.abs_diff(self.level);
        Err(missing.div_ceil(self.rate.per_s).max(1))
    }

    /// Takes `cost` units even if that leaves the bucket in debt (a pacer that may send one
    /// batch past its level and then waits for it to be paid back).
    pub fn take_with_debt(&mut self, cost: u64, now_ms: u64) {
        self.refill(now_ms);
        self.level = self.level.saturating_sub(milli(cost));
    }

    /// When the bucket is out of debt: `None` if it is now.
    pub fn ready_at(&mut self, now_ms: u64) -> Option<u64> {
        self.refill(now_ms);
        if self.level >= 0 {
            return None;
        }
        if self.rate.per_s == 0 {
            return Some(u64::MAX);
        }
        let wait = self.level.unsigned_abs().div_ceil(self.rate.per_s).max(1);
        Some(now_ms.saturating_add(wait))
    }

    /// Empties the bucket at `now_ms` (nothing more until it refills).
    pub fn drain(&mut self, now_ms: u64) {
        self.refill(now_ms);
        self.level = self.level.min(0);
    }

    /// Changes the rate, keeping the level (cut to the new burst).
    pub fn set_rate(&mut self, rate: Rate, now_ms: u64) {
        self.refill(now_ms);
        self.rate = rate;
        self.level = self.level.min(milli(rate.burst));
    }
}

fn milli(units: u64) -> i64 {
    i64::try_from(units.saturating_mul(MILLI)).unwrap_or(i64::MAX)
}

/// How much of the relay's limits a hub uses while it has not been told it is rate-limited:
/// a margin for the relay seeing frames closer together than they were sent.
pub const PACE: (u64, u64) = (7, 8);
/// How much of the relay's burst a hub uses at once. The rest is slack for the relay: frames
/// that waited in a busy relay (a Durable Object handles one event at a time) reach the room
/// closer together than they were sent, and must still fit its bucket.
pub const PACE_BURST: (u64, u64) = (1, 4);
/// How much it uses for [`SLOW_FOR_MS`] after being told.
pub const SLOW_PACE: (u64, u64) = (1, 2);
/// How long a hub stays at [`SLOW_PACE`] after a `RateLimited` frame.
pub const SLOW_FOR_MS: u64 = 10_000;

/// The relay's `rate` at `pace`, with [`PACE_BURST`] of its burst.
fn paced(rate: Rate, (n, d): (u64, u64)) -> Rate {
    let (bn, bd) = PACE_BURST;
    Rate::new(rate.per_s * n / d, rate.burst * bn / bd)
}

/// A hub's pacing of what it sends to the relay: below the relay's limits, slower for a while
/// after the relay said it is rate-limited, and not at all until the `retry_after` it was given.
#[derive(Debug, Clone)]
pub struct Pacer {
    limits: Limits,
    frames: TokenBucket,
    bytes: TokenBucket,
    /// Sends wait until then (a `RateLimited` frame's retry time).
    paused_until: u64,
    /// Slowed down until then.
    slow_until: u64,
}

impl Pacer {
    /// A pacer for the relay's `limits`, at `now_ms`.
    pub fn new(limits: Limits, now_ms: u64) -> Self {
        Pacer {
            limits,
            frames: TokenBucket::new(paced(limits.send_frames, PACE), now_ms),
            bytes: TokenBucket::new(paced(limits.send_bytes, PACE), now_ms),
            paused_until: 0,
            slow_until: 0,
        }
    }

    fn set_pace(&mut self, pace: (u64, u64), now_ms: u64) {
        self.frames
            .set_rate(paced(self.limits.send_frames, pace), now_ms);
        self.bytes
            .set_rate(paced(self.limits.send_bytes, pace), now_ms);
    }

    /// When the next frame may go: `None` if now.
    pub fn ready_at(&mut self, now_ms: u64) -> Option<u64> {
        if self.slow_until != 0 && now_ms >= self.slow_until {
            self.slow_until = 0;
            self.set_pace(PACE, now_ms);
        }
        [
            (self.paused_until > now_ms).then_some(self.paused_until),
            self.frames.ready_at(now_ms),
            self.bytes.ready_at(now_ms),
        ]
        .into_iter()
        .flatten()
        .max()
    }

    /// Counts a frame of `wire_len` bytes as sent.
    pub fn sent(&mut self, wire_len: usize, now_ms: u64) {
        self.frames.take_with_debt(1, now_ms);
        self.bytes.take_with_debt(wire_len as u64, now_ms);
    }

    /// The relay said this hub is rate-limited: send nothing for `retry_after_ms`, then at
    /// [`SLOW_PACE`] for [`SLOW_FOR_MS`].
    pub fn rate_limited(&mut self, retry_after_ms: u64, now_ms: u64) {
        self.paused_until = self.paused_until.max(now_ms.saturating_add(retry_after_ms));
        self.slow_until = now_ms.saturating_add(SLOW_FOR_MS);
        self.set_pace(SLOW_PACE, now_ms);
        self.frames.drain(now_ms);
        self.bytes.drain(now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_starts_full_refills_at_its_rate_and_says_when() {
        let mut b = TokenBucket::new(Rate::new(1000, 100), 0);
        assert_eq!(b.try_take(100, 0), Ok(()));
        // Empty: one unit comes back every millisecond.
        assert_eq!(b.try_take(10, 0), Err(10));
        assert_eq!(b.try_take(10, 9), Err(1));
        assert_eq!(b.try_take(10, 10), Ok(()));
        // Never more than the burst, however long it rests.
        assert_eq!(b.try_take(101, 1_000_000), Err(u64::MAX));
        assert_eq!(b.try_take(100, 1_000_000), Ok(()));
    }

    #[test]
    fn fractions_of_a_unit_are_kept_between_refills() {
        // 500 a second is half a unit a millisecond: 1,000 calls a ms apart make 500 units.
        let mut b = TokenBucket::new(Rate::new(500, 1), 0);
        assert_eq!(b.try_take(1, 0), Ok(()));
        let mut got = 0;
        for t in 1..=1000 {
            if b.try_take(1, t).is_ok() {
                got += 1;
            }
        }
        assert_eq!(got, 500);
    }

    #[test]
    fn debt_is_paid_back_before_the_next_send() {
        let mut b = TokenBucket::new(Rate::new(1000, 10), 0);
        b.take_with_debt(30, 0);
        assert_eq!(b.ready_at(0), Some(20));
        assert_eq!(b.ready_at(19), Some(20));
        assert_eq!(b.ready_at(20), None);
    }

    #[test]
    fn a_pacer_stays_below_the_limits_and_slows_when_told() {
        let limits = Limits {
            send_frames: Rate::new(1000, 100),
            send_bytes: Rate::new(1_000_000, 1_000_000),
            recv_bytes: Rate::new(1_000_000, 1_000_000),
        };
        let mut pacer = Pacer::new(limits, 0);
        // Sending whenever allowed for 10 s stays at 7/8 of the frame rate (plus a quarter of
        // the burst).
        let (mut now, mut sent) = (0, 0u64);
        while now < 10_000 {
            match pacer.ready_at(now) {
                None => {
                    pacer.sent(10, now);
                    sent += 1;
                }
                Some(at) => now = at,
            }
        }
        assert!((8_750..=8_750 + 25).contains(&sent), "{sent}");
        // Told: nothing for the retry time, then half the rate for ten seconds.
        pacer.rate_limited(500, now);
        assert_eq!(pacer.ready_at(now), Some(now + 500));
        let start = now + 500;
        let (mut now, mut sent) = (start, 0u64);
        while now < start + 5_000 {
            match pacer.ready_at(now) {
                None => {
                    pacer.sent(10, now);
                    sent += 1;
                }
                Some(at) => now = at,
            }
        }
        assert!((2_400..=2_600).contains(&sent), "{sent}");
        // Then back to the usual pace.
        assert!(pacer.ready_at(start + 20_000).is_none());
        assert_eq!(pacer.frames.rate(), Rate::new(875, 25));
    }
}
