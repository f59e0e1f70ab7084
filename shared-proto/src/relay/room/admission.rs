//! Admission: a socket's `Hello` (a member's login or a pairing guest's request), a member
//! admitted (its Welcome, the hub it replaces), a room rebuilt after a hibernation, and the
//! revocation lists members publish.

use super::guests::{Guest, GUEST_LIFETIME_MS};
use super::presence::Change;
use super::{
    send_one, Action, ConnId, ConnState, MemberInfo, Outbox, Room, RoomError, HELLO_TIMEOUT_MS,
};
use crate::relay::close::CloseCode;
use crate::relay::frame::{Frame, Hello, HubId, PROTOCOL_VERSION};
use crate::trust::login::{verify_login, LOGIN_EXTENSION, PAIRING_EXTENSION};
use crate::trust::rotation::Successor;
use crate::trust::{RevocationList, TrustError};

pub(super) const REPLACED_REASON: &str = "replaced by a newer connection with the same hub id";

impl Room {
    /// The `Hello` of a socket whose connect URL named `named` (if it named one): a member's
    /// login, or a pairing guest's request.
    pub(super) fn hello(
        &mut self,
        conn: ConnId,
        now_ms: u64,
        named: Option<HubId>,
        hello: &Hello<'_>,
        out: &mut Vec<Action>,
    ) -> Result<(), RoomError> {
        if hello.version != PROTOCOL_VERSION {
            return Err(RoomError::UnsupportedVersion(hello.version));
        }
        if named.is_some_and(|named| hello.hub != named) {
            return Err(RoomError::NotTheNamedHub);
        }
        // Before any signature check: only the penalized hub's own id is refused.
        if let Some(p) = self.penalized.get(&hello.hub) {
            if now_ms < p.until_ms {
                return Err(RoomError::Penalized(p.until_ms - now_ms));
            }
        }
        if let Some(s) = &self.successor {
            if now_ms > s.grace_until_ms() {
                return Err(RoomError::Moved(s.new_cluster()));
            }
        }
        if let Some(issuer) = pairing_issuer(hello)? {
            return self.admit_guest(conn, now_ms, hello.hub, issuer, out);
        }
        let (peer, login) = verify_login(
            hello,
            &self.config.cluster,
            now_ms,
            self.revocations.as_ref(),
            &mut self.replays,
        )?;
        let member = MemberInfo {
            hub: peer.hub_id(),
            fingerprint: peer.fingerprint(),
            key_hash: peer.key_hash(),
            issuer: peer.issuer_ids(),
            guest_of: None,
            admitted_ms: now_ms,
            sends: 0,
        };
        out.push(Action::RememberLogin(login));
        self.admit(conn, now_ms, member, out)
    }

    pub(super) fn admit(
        &mut self,
        conn: ConnId,
        now_ms: u64,
        member: MemberInfo,
        out: &mut Vec<Action>,
    ) -> Result<(), RoomError> {
        let hub = member.hub;
        let replaced = self.members.get(&hub).copied();
        if replaced.is_none() && self.members.len() >= self.config.max_members {
            return Err(RoomError::RoomFull(self.config.max_members));
        }
        if let Some(old) = replaced {
            // The newer connection wins: the old one is closed and told why. Its later
            // disconnect is a no-op because it is no longer in `conns`.
            self.forget(old);
            out.push(Action::Close {
                conn: old,
                code: CloseCode::Replaced,
                reason: REPLACED_REASON.into(),
            });
        }
        let idle = self.idle_deadline(now_ms);
        self.insert(conn, ConnState::Member(member), idle, now_ms);
        self.members.insert(hub, conn);
        out.push(Action::Admitted { conn, member });
        // The others learn of it (now or with this moment's other joins); it learns of them
        // from its Welcome, so nothing gathered so far, its own join included, is for it.
        let told = self.presence.log.len() + 1;
        if let Some(c) = self.conns.get_mut(&conn) {
            c.seen = told;
        }
        self.announce(hub, Change::Joined, out);

        let online: Vec<HubId> = self
            .members
            .keys()
            .filter(|h| **h != hub)
            .copied()
            .collect();
        let mut welcome = Outbox::default();
        let frame = Frame::Welcome {
            version: PROTOCOL_VERSION,
            online,
        };
        welcome.push(conn, &frame, out);
        if let Some(list) = &self.revocations {
            welcome.push(conn, &Frame::RevocationList(list.bytes()), out);
        }
        if let Some(successor) = &self.successor {
            welcome.push(conn, &Frame::Successor(successor.bytes()), out);
        }
        welcome.flush(out);
        Ok(())
    }

    /// Puts back a socket that was open before the room was rebuilt (after a hibernation): when
    /// it was accepted, the hub its connect URL named (if any), and the hub it was admitted as,
    /// if any (as last stored through [`Action::Admitted`]). The hubs saw no change, so nothing
    /// is announced; deadlines count from the stored times, so a restored socket gets no more
    /// time than it had. Give the room its stored revocation list first
    /// ([`Room::set_revocations`]): a member it revokes (revoked just before the hibernation, its
    /// close not carried out) is closed, not restored.
    ///
    /// If two sockets claim one hub (a replacement whose close was not seen yet), the higher
    /// `ConnId` wins, as the newer connection did, and the other is closed as replaced.
    pub fn restore(
        &mut self,
        conn: ConnId,
        accepted_ms: u64,
        named: Option<HubId>,
        member: Option<MemberInfo>,
        now_ms: u64,
        out: &mut Vec<Action>,
    ) {
        self.tick(now_ms);
        let Some(member) = member else {
            let deadline = accepted_ms.saturating_add(HELLO_TIMEOUT_MS);
            self.insert(
                conn,
                ConnState::AwaitingHello(named),
                Some(deadline),
                now_ms,
            );
            return;
        };
        let hub = member.hub;
        if let Some(issuer) = member.guest_of {
            self.guests.insert(hub, Guest { conn, info: member });
            let deadline = member.admitted_ms.saturating_add(GUEST_LIFETIME_MS);
            self.insert(
                conn,
                ConnState::Guest { hub, issuer },
                Some(deadline),
                now_ms,
            );
            return;
        }
        if self
            .revocations
            .as_ref()
            .is_some_and(|l| member.revoked_by(l))
        {
            out.push(Action::Close {
                conn,
                code: CloseCode::Revoked,
                reason: "certificate revoked".into(),
            });
            return;
        }
        let idle = self.idle_deadline(now_ms);
        let loser = match self.members.get(&hub) {
            Some(&other) if other > conn => conn,
            Some(&other) => {
                self.forget(other);
                self.insert(conn, ConnState::Member(member), idle, now_ms);
                self.members.insert(hub, conn);
                other
            }
            None => {
                self.insert(conn, ConnState::Member(member), idle, now_ms);
                self.members.insert(hub, conn);
                return;
            }
        };
        out.push(Action::Close {
            conn: loser,
            code: CloseCode::Replaced,
            reason: REPLACED_REASON.into(),
        });
    }

    /// Gives the room a stored revocation list (when it is rebuilt). Ignored unless it verifies
    /// for this cluster and is newer than the one held; returns whether it was taken.
    pub fn set_revocations(&mut self, bytes: &[u8]) -> bool {
        match RevocationList::verify(bytes, &self.config.cluster)
            .and_then(|v| v.supersede(self.revocations.as_ref()))
        {
            Ok(v) => {
                self.revocations = Some(v);
                true
            }
            Err(_) => false,
        }
    }

    /// Gives the room its stored successor document (when it is rebuilt). Ignored unless it
    /// verifies for this cluster and the room keeps none; returns whether it was taken.
    pub fn set_successor(&mut self, bytes: &[u8]) -> bool {
        if self.successor.is_some() {
            return false;
        }
        match Successor::verify(bytes, &self.config.cluster) {
            Ok(s) => {
                self.successor = Some(s);
                true
            }
            Err(_) => false,
        }
    }

    /// A member published the old CA's successor document: the first is kept, stored and
    /// delivered to every other member (and with each `Welcome` from then on); the same again is
    /// ignored, another refused.
    pub(super) fn publish_successor(
        &mut self,
        conn: ConnId,
        doc: &[u8],
        out: &mut Vec<Action>,
    ) -> Result<(), RoomError> {
        if let Some(held) = &self.successor {
            return if held.bytes() == doc {
                Ok(())
            } else {
                Err(RoomError::Successor(TrustError::NotNewer(
                    "successor document (the room keeps another)",
                )))
            };
        }
        let successor =
            Successor::verify(doc, &self.config.cluster).map_err(RoomError::Successor)?;
        out.push(Action::StoreSuccessor {
            bytes: successor.bytes().to_vec(),
        });
        let frame = Frame::Successor(successor.bytes());
        for &member in self.members.values() {
            if member != conn {
                out.push(send_one(member, &frame));
            }
        }
        self.successor = Some(successor);
        Ok(())
    }

    /// A member published a revocation list: keep it if newer, enforce it, deliver it.
    pub(super) fn publish_revocations(
        &mut self,
        conn: ConnId,
        doc: &[u8],
        outbox: &mut Outbox,
        out: &mut Vec<Action>,
    ) -> Result<(), RoomError> {
        let list =
            RevocationList::verify(doc, &self.config.cluster).map_err(RoomError::Revocations)?;
        // A list signed by an admin that it or the held list revokes is refused, newer or not.
        list.check_signer(self.revocations.as_ref())
            .map_err(RoomError::Revocations)?;
        if let Some(held) = &self.revocations {
            if list.version() <= held.version() {
                // Not newer. If the room holds a strictly newer one, the sender learns it.
                if list.version() < held.version() {
                    outbox.push(conn, &Frame::RevocationList(held.bytes()), out);
                }
                return Ok(());
            }
        }
        out.push(Action::StoreRevocations {
            bytes: list.bytes().to_vec(),
        });
        let revoked: Vec<ConnId> = self
            .conns
            .iter()
            .filter_map(|(c, s)| match s.state {
                ConnState::Member(m) if m.revoked_by(&list) => Some(*c),
                _ => None,
            })
            .collect();
        for c in revoked {
            self.close(c, CloseCode::Revoked, "certificate revoked".into(), out);
        }
        // The members learn who left (the revoked hubs among them) before they get the list.
        if !self.presence.log.is_empty() {
            self.flush_presence(self.now_ms, out);
        }
        let frame = Frame::RevocationList(list.bytes());
        for &member in self.members.values() {
            out.push(send_one(member, &frame));
        }
        self.revocations = Some(list);
        Ok(())
    }
}

/// The issuer named by a `Hello`'s pairing extension, if it has one (and no login).
pub(super) fn pairing_issuer(hello: &Hello<'_>) -> Result<Option<HubId>, RoomError> {
    let Some(ext) = hello
        .extensions
        .iter()
        .find(|e| e.kind == PAIRING_EXTENSION)
    else {
        return Ok(None);
    };
    if hello.extensions.iter().any(|e| e.kind == LOGIN_EXTENSION) {
        return Err(RoomError::LoginAndPairing);
    }
    let id: [u8; 16] = ext
        .data
        .try_into()
        .map_err(|_| RoomError::BadPairingExtension)?;
    Ok(Some(HubId(id)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::room::testing::*;

    /// A socket's `Hello` must name the hub its connect URL named: the keep-out check made on
    /// the URL cannot be passed by naming an innocent hub there.
    #[test]
    fn the_hello_names_the_hub_of_the_connect_url() {
        let mut r = room();
        let mut out = Vec::new();
        r.handle_connect(ConnId(1), NOW, Some(hub(2)), &mut out);
        r.handle_message(ConnId(1), NOW, &hello(hub(1)), &mut out);
        assert_eq!(closes(&out), vec![(ConnId(1), CloseCode::ProtocolError)]);
        assert_eq!(r.conn_of(&hub(1)), None);
        // Restored before its Hello, it keeps the name it connected with.
        let mut r = room();
        let mut out = Vec::new();
        r.restore(ConnId(1), NOW, Some(hub(2)), None, NOW, &mut out);
        r.handle_message(ConnId(1), NOW, &hello(hub(1)), &mut out);
        assert_eq!(closes(&out), vec![(ConnId(1), CloseCode::ProtocolError)]);
        let out = join(&mut r, 2, hub(1));
        assert!(closes(&out).is_empty());
        assert_eq!(r.conn_of(&hub(1)), Some(ConnId(2)));
        // A connect URL that names no hub (protocol 1 as first written): any hub's Hello, also
        // after a rebuild.
        let mut r = room();
        let mut out = Vec::new();
        r.handle_connect(ConnId(1), NOW, None, &mut out);
        r.handle_message(ConnId(1), NOW, &hello(hub(3)), &mut out);
        assert!(closes(&out).is_empty(), "{out:?}");
        assert_eq!(r.conn_of(&hub(3)), Some(ConnId(1)));
        r.restore(ConnId(2), NOW, None, None, NOW, &mut out);
        r.handle_message(ConnId(2), NOW, &hello(hub(4)), &mut out);
        assert_eq!(r.conn_of(&hub(4)), Some(ConnId(2)));
    }

    #[test]
    fn duplicate_hub_id_replaces_the_older_connection() {
        let mut r = room();
        let _ = join(&mut r, 1, hub(1));
        let _ = join(&mut r, 2, hub(2));
        let out = join(&mut r, 3, hub(1));
        assert_eq!(closes(&out), vec![(ConnId(1), CloseCode::Replaced)]);
        assert_eq!(r.conn_of(&hub(1)), Some(ConnId(3)));
        assert_eq!(
            sent_to(&out, ConnId(2)),
            vec![vec![Frame::PeerJoined(vec![hub(1)])]]
        );
        // The replaced socket's close arrives later: nobody sees hub 1 leave.
        let mut out = Vec::new();
        r.handle_disconnect(ConnId(1), NOW, &mut out);
        assert!(out.is_empty());
        assert_eq!(r.conn_of(&hub(1)), Some(ConnId(3)));
        // Traffic for hub 1 goes to the new socket.
        let mut out = Vec::new();
        r.handle_message(ConnId(2), NOW, &send(hub(1), b"z"), &mut out);
        assert_eq!(sent_to(&out, ConnId(3)).len(), 1);
    }

    #[test]
    fn hello_rules() {
        let mut r = room();
        let mut out = Vec::new();
        r.handle_connect(ConnId(1), NOW, Some(hub(1)), &mut Vec::new());
        r.handle_message(ConnId(1), NOW, &send(hub(2), b"x"), &mut out);
        assert_eq!(closes(&out), vec![(ConnId(1), CloseCode::HelloRequired)]);

        let mut out = Vec::new();
        r.handle_connect(ConnId(2), NOW, Some(hub(2)), &mut Vec::new());
        let c = creds(hub(2));
        let ext = c.login(NOW, &mut StdRng::seed_from_u64(99));
        let mut h = c.hello(&ext);
        h.version = 9;
        r.handle_message(
            ConnId(2),
            NOW,
            &Frame::Hello(h).to_message().unwrap(),
            &mut out,
        );
        assert_eq!(
            closes(&out),
            vec![(ConnId(2), CloseCode::UnsupportedVersion)]
        );

        let _ = join(&mut r, 3, hub(3));
        let mut out = Vec::new();
        r.handle_message(ConnId(3), NOW, &hello(hub(3)), &mut out);
        assert_eq!(closes(&out), vec![(ConnId(3), CloseCode::ProtocolError)]);

        // Relay-to-hub frames from a hub are refused.
        let _ = join(&mut r, 4, hub(4));
        let mut out = Vec::new();
        r.handle_message(
            ConnId(4),
            NOW,
            &Frame::PeerLeft(vec![hub(1)]).to_message().unwrap(),
            &mut out,
        );
        assert_eq!(closes(&out), vec![(ConnId(4), CloseCode::ProtocolError)]);

        let mut out = Vec::new();
        r.handle_connect(ConnId(5), NOW, Some(hub(5)), &mut Vec::new());
        r.handle_text(ConnId(5), &mut out);
        assert_eq!(closes(&out), vec![(ConnId(5), CloseCode::ProtocolError)]);
        assert_eq!(r.connections(), 0);
    }

    #[test]
    fn room_full() {
        let mut r = Room::new(RoomConfig {
            max_members: 2,
            presence_window_ms: 0,
            ..RoomConfig::new(ca().cluster_id(), 0)
        });
        let _ = join(&mut r, 1, hub(1));
        let _ = join(&mut r, 2, hub(2));
        let out = join(&mut r, 3, hub(3));
        assert_eq!(closes(&out), vec![(ConnId(3), CloseCode::RoomFull)]);
        // A replacement is not a new member.
        let out = join(&mut r, 4, hub(2));
        assert_eq!(closes(&out), vec![(ConnId(2), CloseCode::Replaced)]);
    }

    #[test]
    fn admission_requires_a_valid_login() {
        let mut r = room();
        // No login.
        let mut out = Vec::new();
        r.handle_connect(ConnId(1), NOW, Some(hub(1)), &mut Vec::new());
        r.handle_message(
            ConnId(1),
            NOW,
            &Frame::Hello(Hello::new(hub(1))).to_message().unwrap(),
            &mut out,
        );
        assert_eq!(
            closes(&out),
            vec![(ConnId(1), CloseCode::CertificateRequired)]
        );
        // A replayed login.
        let msg = hello(hub(2));
        let mut out = Vec::new();
        r.handle_connect(ConnId(2), NOW, Some(hub(2)), &mut Vec::new());
        r.handle_message(ConnId(2), NOW, &msg, &mut out);
        assert!(closes(&out).is_empty());
        let mut out = Vec::new();
        r.handle_connect(ConnId(3), NOW, Some(hub(2)), &mut Vec::new());
        r.handle_message(ConnId(3), NOW, &msg, &mut out);
        assert_eq!(closes(&out), vec![(ConnId(3), CloseCode::ReplayedLogin)]);
        // Another cluster's room refuses this cluster's hubs.
        let mut other = Room::new(RoomConfig::new(
            ClusterCa::from_secret(&[7; 32]).cluster_id(),
            0,
        ));
        let mut out = Vec::new();
        other.handle_connect(ConnId(1), NOW, Some(hub(1)), &mut Vec::new());
        other.handle_message(ConnId(1), NOW, &hello(hub(1)), &mut out);
        assert_eq!(closes(&out), vec![(ConnId(1), CloseCode::ForeignCluster)]);
    }

    #[test]
    fn a_newer_revocation_list_closes_revoked_members_and_reaches_everyone() {
        let mut r = room();
        for i in 1..=3 {
            let _ = join(&mut r, i, hub(i as u8));
        }
        let v2 = revoking(2, hub(3));
        let mut out = Vec::new();
        r.handle_message(
            ConnId(1),
            NOW,
            &Frame::RevocationList(&v2).to_message().unwrap(),
            &mut out,
        );
        assert_eq!(closes(&out), vec![(ConnId(3), CloseCode::Revoked)]);
        assert!(out.contains(&Action::StoreRevocations { bytes: v2.clone() }));
        // The revoked hub is closed without the list (docs/PROTOCOL.md section 8).
        assert!(sent_to(&out, ConnId(3)).is_empty());
        for c in [1, 2] {
            assert!(sent_to(&out, ConnId(c)).contains(&vec![Frame::RevocationList(&v2)]));
        }
        assert_eq!(r.online().collect::<Vec<_>>(), vec![hub(1), hub(2)]);
        // The revoked hub cannot come back.
        let out = join(&mut r, 4, hub(3));
        assert_eq!(closes(&out), vec![(ConnId(4), CloseCode::Revoked)]);
        // A hub that joins later receives the list with its welcome.
        let out = join(&mut r, 5, hub(5));
        let frames = &sent_to(&out, ConnId(5))[0];
        assert_eq!(frames[1], Frame::RevocationList(&v2));
        // An older list is ignored, and its sender is sent the newer one.
        let v1 = revoking(1, hub(2));
        let mut out = Vec::new();
        r.handle_message(
            ConnId(2),
            NOW,
            &Frame::RevocationList(&v1).to_message().unwrap(),
            &mut out,
        );
        assert!(closes(&out).is_empty());
        assert_eq!(
            sent_to(&out, ConnId(2)),
            vec![vec![Frame::RevocationList(&v2)]]
        );
        assert_eq!(r.revocations().unwrap().version(), 2);
        // A list signed by another CA is a protocol violation.
        let forged = RevocationList {
            version: 9,
            issued_at_ms: NOW,
            entries: vec![],
        }
        .sign(&ClusterCa::from_secret(&[8; 32]))
        .unwrap();
        let mut out = Vec::new();
        r.handle_message(
            ConnId(2),
            NOW,
            &Frame::RevocationList(&forged).to_message().unwrap(),
            &mut out,
        );
        assert_eq!(closes(&out), vec![(ConnId(2), CloseCode::ProtocolError)]);
        assert_eq!(r.revocations().unwrap().version(), 2);
    }

    /// docs/PROTOCOL.md sections 7 and 8: a hub whose certificate an admin issued logs in with
    /// its chain; the admin's revocation list counts until the founder revokes the admin, which
    /// closes the admin and every hub it certified, and refuses the admin's later lists.
    #[test]
    fn an_admins_chain_and_lists_count_until_the_admin_is_revoked() {
        use crate::trust::cert::tests::{admin, DAY_MS};
        use crate::trust::login::Credentials;
        use crate::trust::Revocation;
        use ed25519_dalek::SigningKey;
        let second = admin(&ca(), 50, NOW + 365 * DAY_MS);
        let login = |conn: u64, creds: &Credentials, r: &mut Room| {
            let ext = creds.login(NOW, &mut StdRng::seed_from_u64(conn));
            let mut out = Vec::new();
            r.handle_connect(ConnId(conn), NOW, Some(creds.hub_id), &mut out);
            let hello = Frame::Hello(creds.hello(&ext)).to_message().unwrap();
            r.handle_message(ConnId(conn), NOW, &hello, &mut out);
            closes(&out)
        };
        let admin_creds = Credentials {
            ca_key: ca().public_key(),
            cert_der: second.admin_certificate().unwrap().der().to_vec(),
            hub_id: hub(50),
            identity: SigningKey::from_bytes(&[50; 32]),
        };
        let identity = SigningKey::from_bytes(&[6; 32]);
        let mut req = crate::trust::cert::tests::request(6, &identity);
        req.hub_id = hub(6);
        let certified = Credentials {
            ca_key: ca().public_key(),
            cert_der: second.issue(&req, &mut StdRng::seed_from_u64(2)).unwrap(),
            hub_id: hub(6),
            identity,
        };
        let mut r = room();
        for i in 1..=2 {
            let _ = join(&mut r, i, hub(i as u8));
        }
        assert!(login(50, &admin_creds, &mut r).is_empty());
        assert!(
            login(6, &certified, &mut r).is_empty(),
            "the chain is admitted"
        );
        let publish = |r: &mut Room, conn: u64, list: &[u8]| {
            let mut out = Vec::new();
            let msg = Frame::RevocationList(list).to_message().unwrap();
            r.handle_message(ConnId(conn), NOW, &msg, &mut out);
            closes(&out)
        };
        // The admin revokes hub 1.
        let by_admin = RevocationList {
            version: 2,
            issued_at_ms: NOW,
            entries: vec![Revocation {
                fingerprint: crate::trust::fingerprint(&creds(hub(1)).cert_der),
                key_hash: [0; 32],
                revoked_at_ms: NOW,
                reason: "lost".into(),
            }],
        };
        let signed = by_admin.sign(&second).unwrap();
        assert_eq!(
            publish(&mut r, 50, &signed),
            vec![(ConnId(1), CloseCode::Revoked)]
        );
        // The founder revokes the admin by its key.
        let mut founders = by_admin.clone();
        founders.version = 3;
        founders.entries.push(Revocation {
            fingerprint: [0; 32],
            key_hash: crate::trust::key_hash(&SigningKey::from_bytes(&[50; 32]).verifying_key()),
            revoked_at_ms: NOW,
            reason: "admin retired".into(),
        });
        let mut closed = publish(&mut r, 2, &founders.sign(&ca()).unwrap());
        closed.sort_by_key(|(c, _)| c.0);
        assert_eq!(
            closed,
            vec![
                (ConnId(6), CloseCode::Revoked),
                (ConnId(50), CloseCode::Revoked)
            ]
        );
        // The admin's later list, passed on by a member, is refused; the founder's stays.
        let later = RevocationList {
            version: 9,
            issued_at_ms: NOW,
            entries: vec![],
        }
        .sign(&second)
        .unwrap();
        assert_eq!(
            publish(&mut r, 2, &later),
            vec![(ConnId(2), CloseCode::ProtocolError)]
        );
        assert_eq!(r.revocations().unwrap().version(), 3);
        assert!(!r.set_revocations(&later));
        // Neither the admin nor the hub it certified can log in again.
        assert_eq!(
            login(7, &certified, &mut r),
            vec![(ConnId(7), CloseCode::Revoked)]
        );
    }

    /// docs/PROTOCOL.md section 9, "Rotation of the CA key": the old room keeps the first
    /// successor document a member publishes, delivers it to the others and with each welcome
    /// during the grace period, refuses another, and refuses every login after the grace period
    /// with `4022`, naming the new cluster; a rebuilt room keeps it.
    #[test]
    fn the_old_room_hands_out_its_successor_then_refuses_logins() {
        use crate::trust::rotation::Successor;
        use crate::trust::Manifest;
        let new = ClusterCa::from_secret(&[43; 32]);
        let successor = |grace_until_ms| {
            Successor {
                new_ca_key: new.public_key(),
                grace_until_ms,
                manifest: Manifest {
                    epoch: 2,
                    issued_at_ms: NOW,
                    members: vec![],
                }
                .sign(&new)
                .unwrap(),
                revocations: None,
                certificates: vec![],
            }
            .sign(&ca(), NOW)
            .unwrap()
        };
        let doc = successor(NOW + 60_000);
        let mut r = room();
        for i in 1..=2 {
            let _ = join(&mut r, i, hub(i as u8));
        }
        let mut out = Vec::new();
        let msg = Frame::Successor(&doc).to_message().unwrap();
        r.handle_message(ConnId(1), NOW, &msg, &mut out);
        assert!(closes(&out).is_empty());
        assert!(out.contains(&Action::StoreSuccessor { bytes: doc.clone() }));
        assert_eq!(sent_to(&out, ConnId(2)), vec![vec![Frame::Successor(&doc)]]);
        assert!(sent_to(&out, ConnId(1)).is_empty());
        // The same again is nothing; another is refused.
        let mut out = Vec::new();
        r.handle_message(ConnId(1), NOW, &msg, &mut out);
        assert!(out.is_empty());
        let other = successor(NOW + 120_000);
        let mut out = Vec::new();
        let msg = Frame::Successor(&other).to_message().unwrap();
        r.handle_message(ConnId(2), NOW, &msg, &mut out);
        assert_eq!(closes(&out), vec![(ConnId(2), CloseCode::ProtocolError)]);
        assert_eq!(r.successor().unwrap().bytes(), &doc[..]);
        // A hub that logs in during the grace period is welcomed with it.
        let out = join(&mut r, 3, hub(3));
        let frames = &sent_to(&out, ConnId(3))[0];
        assert_eq!(frames.last(), Some(&Frame::Successor(&doc)));
        // After it, every login is refused, naming the new cluster.
        let mut out = Vec::new();
        r.handle_connect(ConnId(4), NOW + 61_000, Some(hub(4)), &mut out);
        let hello = Frame::Hello(
            creds(hub(4)).hello(&creds(hub(4)).login(NOW + 61_000, &mut StdRng::seed_from_u64(4))),
        )
        .to_message()
        .unwrap();
        r.handle_message(ConnId(4), NOW + 61_000, &hello, &mut out);
        assert_eq!(closes(&out), vec![(ConnId(4), CloseCode::Moved)]);
        assert!(out.iter().any(|a| matches!(
            a,
            Action::Close { reason, .. } if reason.contains(new.cluster_id().as_str())
        )));
        // A rebuilt room takes the stored one, and only it.
        let mut woken = room();
        assert!(woken.set_successor(&doc));
        assert!(!woken.set_successor(&other));
        assert!(!room().set_successor(b"garbage"));
        // A document signed by another CA is refused.
        let mut r = room();
        let _ = join(&mut r, 1, hub(1));
        let foreign = Successor::verify(&doc, &ca().cluster_id()).unwrap();
        assert_eq!(foreign.new_cluster(), new.cluster_id());
        let mut forged = doc.clone();
        let at = forged.len() - 1;
        forged[at] ^= 1;
        let mut out = Vec::new();
        let msg = Frame::Successor(&forged).to_message().unwrap();
        r.handle_message(ConnId(1), NOW, &msg, &mut out);
        assert_eq!(closes(&out), vec![(ConnId(1), CloseCode::ProtocolError)]);
    }

    #[test]
    fn remembered_logins_cannot_be_replayed_after_a_rebuild() {
        let mut r = room();
        let msg = hello(hub(1));
        let mut out = Vec::new();
        r.handle_connect(ConnId(1), NOW, Some(hub(1)), &mut Vec::new());
        r.handle_message(ConnId(1), NOW, &msg, &mut out);
        let remembered: Vec<LoginNonce> = out
            .iter()
            .filter_map(|a| match a {
                Action::RememberLogin(l) => Some(*l),
                _ => None,
            })
            .collect();
        assert_eq!(remembered.len(), 1);
        assert!(!r.is_idle(NOW));
        // The room is evicted and rebuilt from storage.
        let mut woken = room();
        for l in remembered {
            woken.remember_login(l);
        }
        let mut out = Vec::new();
        woken.handle_connect(ConnId(2), NOW, Some(hub(1)), &mut Vec::new());
        woken.handle_message(ConnId(2), NOW + 1_000, &msg, &mut out);
        assert_eq!(closes(&out), vec![(ConnId(2), CloseCode::ReplayedLogin)]);
        // Once the login can no longer pass the skew check, nothing needs remembering.
        assert!(woken.is_idle(NOW + crate::trust::login::MAX_SKEW_MS + 10_000));
    }

    #[test]
    fn a_stored_list_is_enforced_after_a_rebuild() {
        let mut r = room();
        assert!(r.set_revocations(&revoking(3, hub(1))));
        assert!(!r.set_revocations(&revoking(2, hub(2))));
        assert!(!r.set_revocations(b"garbage"));
        let out = join(&mut r, 1, hub(1));
        assert_eq!(closes(&out), vec![(ConnId(1), CloseCode::Revoked)]);
    }

    /// A member revoked just before a hibernation (the list stored, its close not carried out)
    /// is closed when the room is rebuilt, not restored; the others are.
    #[test]
    fn a_rebuilt_room_does_not_restore_a_revoked_member() {
        let mut woken = room();
        assert!(woken.set_revocations(&revoking(3, hub(1))));
        let mut out = Vec::new();
        woken.restore(ConnId(1), NOW, None, Some(member(2)), NOW, &mut out);
        let revoked = MemberInfo {
            fingerprint: crate::trust::fingerprint(&creds(hub(1)).cert_der),
            ..member(1)
        };
        woken.restore(ConnId(2), NOW, None, Some(revoked), NOW, &mut out);
        assert_eq!(closes(&out), vec![(ConnId(2), CloseCode::Revoked)]);
        assert_eq!(woken.conn_of(&hub(1)), None);
        assert_eq!(woken.conn_of(&hub(2)), Some(ConnId(1)));
    }

    #[test]
    fn status_and_restore_after_hibernation() {
        let mut r = room();
        let _ = join(&mut r, 1, hub(1));
        let _ = join(&mut r, 2, hub(2));
        // Rebuild from what the relay stored per socket: same routing, no presence noise.
        let mut woken = Room::new(RoomConfig::new(ca().cluster_id(), 99));
        let mut out = Vec::new();
        woken.restore(ConnId(1), NOW, Some(hub(1)), Some(member(1)), NOW, &mut out);
        woken.restore(ConnId(2), NOW, Some(hub(2)), Some(member(2)), NOW, &mut out);
        woken.restore(ConnId(3), NOW, Some(hub(3)), None, NOW, &mut out);
        assert!(out.is_empty());
        woken.handle_message(ConnId(1), NOW, &send(hub(2), b"p"), &mut out);
        assert_eq!(sent_to(&out, ConnId(2)).len(), 1);
        let mut out = Vec::new();
        woken.handle_message(
            ConnId(2),
            NOW,
            &Frame::StatusRequest.to_message().unwrap(),
            &mut out,
        );
        assert_eq!(
            sent_to(&out, ConnId(2)),
            vec![vec![Frame::Status(RoomStatus {
                online: 2,
                instance_started_ms: 99
            })]]
        );
        // Two sockets claiming one hub: the newer one wins, whatever the order.
        let mut r = room();
        let mut out = Vec::new();
        r.restore(ConnId(7), NOW, Some(hub(1)), Some(member(1)), NOW, &mut out);
        r.restore(ConnId(5), NOW, Some(hub(1)), Some(member(1)), NOW, &mut out);
        r.restore(ConnId(8), NOW, Some(hub(2)), Some(member(2)), NOW, &mut out);
        r.restore(ConnId(9), NOW, Some(hub(2)), Some(member(2)), NOW, &mut out);
        assert_eq!(r.conn_of(&hub(1)), Some(ConnId(7)));
        assert_eq!(r.conn_of(&hub(2)), Some(ConnId(9)));
        assert_eq!(
            closes(&out),
            vec![
                (ConnId(5), CloseCode::Replaced),
                (ConnId(8), CloseCode::Replaced)
            ]
        );
        assert_eq!(r.connections(), 2);
    }
}
