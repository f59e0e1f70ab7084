//! What the relay says of the other hubs, and what it means for this hub's requests, sans-IO
//! (docs/PROTOCOL.md section 10, "Across an outage").
//!
//! A hub's relay connection tells [`Paths`] what the relay says ([`Paths::handle_relay`]); in
//! return it learns whose path **came back** (this hub welcomed again after an outage: every hub
//! online; a hub that joined again), to which the request layer sends again what waits
//! (`Rpc::resend`), and whether a **new request** to a hub may be made ([`Paths::may_ask`]): not
//! to a hub the relay said left or is not online, until it joins again. A hub linked directly
//! (the LAN path) is asked whatever the relay says.
//!
//! Nothing is dropped when a hub leaves: its session and the requests waiting on it stay, each
//! until its deadline, because its path may come back.

use std::collections::HashSet;

use crate::HubId;

/// What the relay said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelaySaid {
    /// This hub was welcomed, with the hubs online.
    Welcome(Vec<HubId>),
    /// A hub joined (or reconnected).
    Joined(HubId),
    /// A hub left.
    Left(HubId),
    /// A payload to this hub was dropped: it is not online.
    Undeliverable(HubId),
}

/// The relay paths to the other hubs, as far as requests are concerned.
#[derive(Debug, Default)]
pub struct Paths {
    /// Hubs the relay said left or are not online, that have not joined since. Only the relay
    /// adds to it, naming room members or hubs this hub sent to: bounded by the room.
    offline: HashSet<HubId>,
    /// Whether this hub was welcomed before (a later welcome ends an outage).
    welcomed_before: bool,
}

impl Paths {
    /// No hub known offline, never welcomed.
    pub fn new() -> Self {
        Paths::default()
    }

    /// What the relay said; the hubs whose path came back (requests waiting for them are to be
    /// sent again), ascending.
    pub fn handle_relay(&mut self, said: &RelaySaid) -> Vec<HubId> {
        match said {
            RelaySaid::Welcome(online) => {
                for hub in online {
                    self.offline.remove(hub);
                }
                let back = if self.welcomed_before {
                    let mut back = online.clone();
                    back.sort_unstable();
                    back
                } else {
                    Vec::new()
                };
                self.welcomed_before = true;
                back
            }
            RelaySaid::Joined(hub) => {
                self.offline.remove(hub);
                vec![*hub]
            }
            RelaySaid::Left(hub) | RelaySaid::Undeliverable(hub) => {
                self.offline.insert(*hub);
                Vec::new()
            }
        }
    }

    /// Whether a new request to `hub` may be made: not while the relay says it is away, unless
    /// it is `linked` directly.
    pub fn may_ask(&self, hub: HubId, linked: bool) -> bool {
        linked || !self.offline.contains(&hub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: HubId = HubId([0xa; 16]);
    const B: HubId = HubId([0xb; 16]);
    const C: HubId = HubId([0xc; 16]);

    #[test]
    fn a_hub_that_left_is_not_asked_until_it_joins_again() {
        let mut paths = Paths::new();
        assert!(paths.may_ask(B, false), "a hub never said away is asked");
        assert_eq!(paths.handle_relay(&RelaySaid::Left(B)), vec![]);
        assert!(!paths.may_ask(B, false));
        assert!(paths.may_ask(B, true), "a hub linked directly is asked");
        assert_eq!(paths.handle_relay(&RelaySaid::Joined(B)), vec![B]);
        assert!(paths.may_ask(B, false));
        assert_eq!(paths.handle_relay(&RelaySaid::Undeliverable(C)), vec![]);
        assert!(!paths.may_ask(C, false));
    }

    #[test]
    fn a_welcome_after_an_outage_brings_every_online_hub_back() {
        let mut paths = Paths::new();
        paths.handle_relay(&RelaySaid::Left(C));
        assert_eq!(
            paths.handle_relay(&RelaySaid::Welcome(vec![B, A])),
            vec![],
            "the first welcome ends no outage"
        );
        assert_eq!(
            paths.handle_relay(&RelaySaid::Welcome(vec![C, B])),
            vec![B, C]
        );
        assert!(paths.may_ask(C, false), "online again");
    }
}
