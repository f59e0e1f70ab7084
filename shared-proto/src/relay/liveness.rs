//! Whether a hub's path to its relay is alive, sans-IO: when to send a keepalive probe (the text
//! `ping`, which the relay answers `pong`, on Cloudflare without waking the room) and when to
//! give the socket up as dead (docs/PROTOCOL.md section 12).
//!
//! A path that carries nothing is not asked much: one probe per [`Settings::idle_ms`], answered
//! within [`Settings::idle_answer_ms`]. A path something waits on is asked at once: when frames
//! went out and nothing came back for [`Settings::quiet_ms`], or a request of this hub waits for
//! its answer and the relay said nothing for as long, a probe goes out, and a probe unanswered
//! for [`Settings::answer_ms`] ends the path. So a dead path under a waiting call is found in
//! `quiet_ms + answer_ms` (4 s by default), not after missed idle keepalives. A change of the
//! host's addresses or routes ([`Liveness::handle_network_changed`]) asks at once.
//!
//! The transport tells it what it sends ([`Liveness::handle_sent`]) and hears
//! ([`Liveness::handle_heard`]), sleeps until [`Liveness::poll_timeout`], then calls
//! [`Liveness::handle_timeout`] and does what it returns.

/// How eagerly the path is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// A probe goes out after this long with nothing heard, when nothing waits.
    pub idle_ms: u64,
    /// ... and must be answered within this long.
    pub idle_answer_ms: u64,
    /// A probe goes out after this long with nothing heard, when something waits (frames sent
    /// since the relay last said anything, or a request waiting for its answer).
    pub quiet_ms: u64,
    /// ... and must be answered within this long.
    pub answer_ms: u64,
}

impl Settings {
    /// A hub's defaults: idle probes every 25 s (answered within 10 s), eager probes after 2 s of
    /// silence (answered within 2 s).
    pub const HUB: Settings = Settings {
        idle_ms: 25_000,
        idle_answer_ms: 10_000,
        quiet_ms: 2_000,
        answer_ms: 2_000,
    };

    /// With idle probes every `idle_ms` (a hidden phone: one a minute).
    pub fn with_idle(self, idle_ms: u64) -> Settings {
        Settings { idle_ms, ..self }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings::HUB
    }
}

/// What the transport must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send a keepalive probe (the text `ping`).
    Probe,
    /// The path is dead: close the socket and reconnect.
    Dead {
        /// How long the relay has said nothing.
        silent_ms: u64,
    },
}

/// One relay socket's liveness (see the module docs).
#[derive(Debug, Clone)]
pub struct Liveness {
    settings: Settings,
    last_heard_ms: u64,
    /// Since when the relay owes an answer: the first send after it last said anything, or when
    /// a waiting request was last seen with nothing heard.
    owed_since_ms: Option<u64>,
    /// The probe out, and when it must be answered.
    probe_deadline_ms: Option<u64>,
    /// When a change of the network last asked the path (at most once per `quiet_ms`, so that a
    /// host whose routes churn does not probe without end).
    network_asked_ms: Option<u64>,
}

impl Liveness {
    /// A socket that opened at `now_ms`.
    pub fn new(settings: Settings, now_ms: u64) -> Self {
        Liveness {
            settings,
            last_heard_ms: now_ms,
            owed_since_ms: None,
            probe_deadline_ms: None,
            network_asked_ms: None,
        }
    }

    /// Idle probes every `idle_ms` from now on (a page that was hidden or shown: a hidden phone
    /// probes once a minute, `Settings::with_idle`).
    pub fn set_idle(&mut self, idle_ms: u64) {
        self.settings.idle_ms = idle_ms;
    }

    /// Frames (not a probe) went out at `now_ms`.
    pub fn handle_sent(&mut self, now_ms: u64) {
        self.owed_since_ms.get_or_insert(now_ms);
    }

    /// Something (a message, a probe's answer) came from the relay at `now_ms`; `waiting` says
    /// whether a request of this hub still waits for its answer.
    pub fn handle_heard(&mut self, now_ms: u64, waiting: bool) {
        self.last_heard_ms = now_ms;
        self.probe_deadline_ms = None;
        self.owed_since_ms = waiting.then_some(now_ms);
    }

    /// The host's addresses or routes changed: ask the path at once (a probe with the short
    /// answer window), unless one is already out or a change asked it less than `quiet_ms` ago.
    pub fn handle_network_changed(&mut self, now_ms: u64) {
        if self
            .network_asked_ms
            .is_some_and(|at| now_ms < at.saturating_add(self.settings.quiet_ms))
        {
            return;
        }
        self.network_asked_ms = Some(now_ms);
        self.owed_since_ms = Some(now_ms.saturating_sub(self.settings.quiet_ms));
    }

    /// When [`Liveness::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> u64 {
        if let Some(deadline) = self.probe_deadline_ms {
            return deadline;
        }
        let idle = self.last_heard_ms.saturating_add(self.settings.idle_ms);
        match self.owed_since_ms {
            Some(since) => idle.min(since.saturating_add(self.settings.quiet_ms)),
            None => idle,
        }
    }

    /// Time passed to `now_ms`; `waiting` says whether a request of this hub waits for its
    /// answer. Returns what to do, if anything.
    pub fn handle_timeout(&mut self, now_ms: u64, waiting: bool) -> Option<Action> {
        if let Some(deadline) = self.probe_deadline_ms {
            if now_ms >= deadline {
                return Some(Action::Dead {
                    silent_ms: now_ms.saturating_sub(self.last_heard_ms),
                });
            }
            return None;
        }
        if waiting {
            self.owed_since_ms.get_or_insert(now_ms);
        }
        let owed_due = self
            .owed_since_ms
            .is_some_and(|since| now_ms >= since.saturating_add(self.settings.quiet_ms));
        let answer_ms = if owed_due {
            self.settings.answer_ms
        } else if now_ms >= self.last_heard_ms.saturating_add(self.settings.idle_ms) {
            self.settings.idle_answer_ms
        } else {
            return None;
        };
        self.probe_deadline_ms = Some(now_ms.saturating_add(answer_ms));
        Some(Action::Probe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_000_000;

    /// Runs `liveness` from `from_ms` to `to_ms` in virtual time, the relay answering probes
    /// after `rtt_ms` if `answers`, and returns the actions with their times.
    fn run(
        liveness: &mut Liveness,
        from_ms: u64,
        to_ms: u64,
        waiting: bool,
        answers: bool,
        rtt_ms: u64,
    ) -> Vec<(u64, Action)> {
        let mut now = from_ms;
        let mut answer_at = None;
        let mut seen = Vec::new();
        while now < to_ms {
            let next = liveness.poll_timeout().min(answer_at.unwrap_or(u64::MAX));
            assert!(next >= now, "a deadline in the past: {next} < {now}");
            now = next.min(to_ms);
            if answer_at.is_some_and(|at| at <= now) {
                answer_at = None;
                liveness.handle_heard(now, waiting);
                continue;
            }
            if now == to_ms {
                break;
            }
            match liveness.handle_timeout(now, waiting) {
                Some(Action::Probe) => {
                    seen.push((now, Action::Probe));
                    if answers {
                        answer_at = Some(now + rtt_ms);
                    }
                }
                Some(dead @ Action::Dead { .. }) => {
                    seen.push((now, dead));
                    break;
                }
                None => {}
            }
        }
        seen
    }

    #[test]
    fn an_idle_path_is_probed_once_per_interval_and_lives() {
        let mut l = Liveness::new(Settings::HUB.with_idle(60_000), T0);
        let seen = run(&mut l, T0, T0 + 3_600_000, false, true, 300);
        // One a minute, each counted from the answer before it (300 ms): 59 in the hour.
        assert_eq!(seen.len(), 59, "{seen:?}");
        assert!(seen.iter().all(|(_, a)| *a == Action::Probe));
        assert_eq!(seen[0].0, T0 + 60_000);
        assert_eq!(seen[1].0, T0 + 120_300, "the next counts from the answer");
    }

    #[test]
    fn a_page_hidden_midway_slows_its_idle_probes_to_one_a_minute() {
        let mut l = Liveness::new(Settings::HUB, T0);
        let shown = run(&mut l, T0, T0 + 600_000, false, true, 0);
        assert_eq!(shown.len(), 23, "every 25 s while shown: {shown:?}");
        l.set_idle(60_000);
        let hidden = run(&mut l, T0 + 600_000, T0 + 4_200_000, false, true, 0);
        // A minute after the last answer (at 575 s), then one a minute: 60 in the hour.
        assert_eq!(hidden[0].0, T0 + 635_000);
        assert_eq!(hidden.len(), 60, "{}", hidden.len());
        let gaps: Vec<u64> = hidden.windows(2).map(|w| w[1].0 - w[0].0).collect();
        assert!(gaps.iter().all(|g| *g == 60_000), "{gaps:?}");
    }

    #[test]
    fn a_dead_idle_path_is_found_at_its_relaxed_pace() {
        let mut l = Liveness::new(Settings::HUB, T0);
        let seen = run(&mut l, T0, T0 + 120_000, false, false, 0);
        assert_eq!(
            seen,
            vec![
                (T0 + 25_000, Action::Probe),
                (T0 + 35_000, Action::Dead { silent_ms: 35_000 })
            ]
        );
    }

    #[test]
    fn frames_with_nothing_back_on_a_dead_path_are_found_within_5_s() {
        let mut l = Liveness::new(Settings::HUB, T0);
        l.handle_heard(T0 + 10_000, false);
        l.handle_sent(T0 + 10_500);
        l.handle_sent(T0 + 11_000); // a later send does not push the probe back
        let seen = run(&mut l, T0 + 11_000, T0 + 60_000, false, false, 0);
        assert_eq!(
            seen,
            vec![
                (T0 + 12_500, Action::Probe),
                (T0 + 14_500, Action::Dead { silent_ms: 4_500 })
            ]
        );
    }

    #[test]
    fn frames_answered_in_time_cost_no_probe() {
        let mut l = Liveness::new(Settings::HUB, T0);
        l.handle_sent(T0 + 100);
        l.handle_heard(T0 + 400, false);
        assert_eq!(l.poll_timeout(), T0 + 400 + 25_000);
        assert_eq!(l.handle_timeout(T0 + 2_100, false), None);
    }

    #[test]
    fn a_waiting_request_keeps_the_path_asked_and_finds_it_dead_within_5_s() {
        let mut l = Liveness::new(Settings::HUB, T0);
        l.handle_sent(T0);
        // The relay answers: the call waits on, and the path is asked every 2 s of silence.
        let seen = run(&mut l, T0, T0 + 10_000, true, true, 50);
        let times: Vec<u64> = seen.iter().map(|(t, _)| *t - T0).collect();
        assert_eq!(times, vec![2_000, 4_050, 6_100, 8_150]);
        // Then the path dies under the call: found within 5 s of the last thing heard.
        let heard = T0 + 8_200;
        let seen = run(&mut l, T0 + 10_000, T0 + 60_000, true, false, 0);
        let (at, dead) = seen.last().copied().expect("an action");
        assert!(matches!(dead, Action::Dead { .. }), "{seen:?}");
        assert!(
            at - heard <= 5_000,
            "dead found {} ms after silence",
            at - heard
        );
    }

    #[test]
    fn a_network_change_asks_at_once() {
        let mut l = Liveness::new(Settings::HUB, T0);
        l.handle_heard(T0 + 1_000, false);
        l.handle_network_changed(T0 + 3_000);
        assert_eq!(l.poll_timeout(), T0 + 3_000);
        assert_eq!(l.handle_timeout(T0 + 3_000, false), Some(Action::Probe));
        assert_eq!(l.poll_timeout(), T0 + 5_000, "answered within 2 s, or dead");
        assert_eq!(
            l.handle_timeout(T0 + 5_000, false),
            Some(Action::Dead { silent_ms: 4_000 })
        );
    }

    #[test]
    fn a_churning_network_asks_at_most_once_per_quiet_interval() {
        let mut l = Liveness::new(Settings::HUB, T0);
        let mut probes = 0;
        // A change every 100 ms for 10 s, every probe answered at once.
        for i in 0..100 {
            let now = T0 + i * 100;
            l.handle_network_changed(now);
            if l.poll_timeout() <= now && l.handle_timeout(now, false) == Some(Action::Probe) {
                probes += 1;
                l.handle_heard(now, false);
            }
        }
        assert_eq!(probes, 5, "one probe per 2 s of changes");
    }
}
