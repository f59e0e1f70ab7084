//! Who may see and call an app: its sharing policy (default deny) and the calling hub's trust
//! level, checked on the hub that runs the app for every list and every call.

use super::CallErrorCode;
use crate::trust::{TrustLevel, VerifiedPeer};
use crate::HubId;

/// Which other hubs' callers may see and call an app. A new app is [`Sharing::LocalOnly`].
///
/// Written (stored, and in the CLI) as `local`, `cluster`, `roles:a,b`, `hubs:ID,ID` or
/// `principals:ann@desk,bob@*`.
///
/// A principal is an operator's name as the hub that forwards the call knows it (an API token's
/// name there): the same name on two hubs is two principals. So a principals policy names each
/// with its hub, `NAME@HUB`, where `HUB` is that hub's name (as its certificate says) or id, or
/// `*` for any hub of the cluster. A name without `@HUB` (stored by a release that had no hubs
/// in principals) matches no call from another hub.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Sharing {
    /// Only this hub's own agents.
    #[default]
    LocalOnly,
    /// Every hub of the cluster.
    Cluster,
    /// Hubs whose certificate carries one of these roles.
    Roles(Vec<String>),
    /// These hubs.
    Hubs(Vec<HubId>),
    /// Calls made for these operator principals (`NAME@HUB`, see above): the envelope's
    /// principal, qualified by the hub that signed it.
    Principals(Vec<String>),
}

/// Any hub, in a qualified principal (`ann@*`).
pub const ANY_HUB: &str = "*";

/// What a tool says of itself (MCP tool annotations). An absent hint is `false`: a tool is
/// read-only or destructive only if it says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ToolHints {
    /// `readOnlyHint`: the tool does not change its environment.
    pub read_only: bool,
    /// `destructiveHint`: the tool may destroy or overwrite.
    pub destructive: bool,
}

/// A tool's kind as the operator pins it (`hub apps share NAME --tool-kind TOOL=KIND`), in place
/// of what the app's own annotations say: what a tool is, for the trust it needs, is the
/// operator's call, not the app's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ToolKind {
    /// Changes nothing (`read_only` hubs may call it).
    ReadOnly,
    /// Acts (`agent_dispatch`).
    Write,
    /// May destroy or overwrite (`full`).
    Destructive,
}

impl ToolKind {
    /// Every kind.
    pub const ALL: [ToolKind; 3] = [ToolKind::ReadOnly, ToolKind::Write, ToolKind::Destructive];

    /// Its name: `read_only`, `write` or `destructive`.
    pub fn as_str(self) -> &'static str {
        match self {
            ToolKind::ReadOnly => "read_only",
            ToolKind::Write => "write",
            ToolKind::Destructive => "destructive",
        }
    }

    /// The hints it stands for.
    pub fn hints(self) -> ToolHints {
        ToolHints {
            read_only: self == ToolKind::ReadOnly,
            destructive: self == ToolKind::Destructive,
        }
    }
}

impl ToolHints {
    /// The kind these hints make a tool (read-only wins over destructive, as in
    /// [`trust_needed`]).
    pub fn kind(self) -> ToolKind {
        if self.read_only {
            ToolKind::ReadOnly
        } else if self.destructive {
            ToolKind::Destructive
        } else {
            ToolKind::Write
        }
    }
}

impl std::fmt::Display for ToolKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ToolKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ToolKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a tool kind: read_only, write or destructive"))
    }
}

/// Who asks: the calling hub as its certificate says, and the principal its envelope names.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The calling hub.
    pub hub: HubId,
    /// Its name, as its certificate says.
    pub hub_name: &'a str,
    /// Its certificate's trust level.
    pub trust: TrustLevel,
    /// Its certificate's roles.
    pub roles: &'a [String],
    /// The principal the call is made for, as the calling hub signed it (none when a listing
    /// carried no signed principal).
    pub principal: Option<&'a str>,
}

impl<'a> Caller<'a> {
    /// The calling hub as its verified certificate says, for `principal` (as its envelope signed
    /// it; none for a listing that signed none).
    pub fn of(cert: &'a VerifiedPeer, principal: Option<&'a str>) -> Self {
        Caller {
            hub: cert.hub_id(),
            hub_name: cert.name(),
            trust: cert.trust(),
            roles: cert.roles(),
            principal,
        }
    }

    /// Whether a policy's principal entry (`NAME@HUB`) names this caller's principal.
    fn is(&self, entry: &str) -> bool {
        let (Some(principal), Some((name, hub))) = (self.principal, entry.rsplit_once('@')) else {
            return false;
        };
        name == principal && (hub == ANY_HUB || hub == self.hub_name || hub == self.hub.to_string())
    }
}

impl Sharing {
    /// Whether `caller` (another hub) may see the app. For [`Sharing::Principals`], a listing
    /// with no principal sees nothing.
    pub fn admits(&self, caller: &Caller<'_>) -> bool {
        match self {
            Sharing::LocalOnly => false,
            Sharing::Cluster => true,
            Sharing::Roles(roles) => caller.roles.iter().any(|r| roles.contains(r)),
            Sharing::Hubs(hubs) => hubs.contains(&caller.hub),
            Sharing::Principals(names) => names.iter().any(|n| caller.is(n)),
        }
    }

    /// Refuses a principals policy with a principal that names no hub: what a new policy must
    /// say (an old one, stored before, still loads).
    pub fn require_qualified(&self) -> Result<(), UnqualifiedPrincipal> {
        match self.unqualified_principals().first() {
            Some(name) => Err(UnqualifiedPrincipal((*name).to_owned())),
            None => Ok(()),
        }
    }

    /// The principals of a principals policy that name no hub (`ann` rather than `ann@desk`):
    /// they match no call from another hub. Empty for every other policy.
    pub fn unqualified_principals(&self) -> Vec<&str> {
        match self {
            Sharing::Principals(names) => names
                .iter()
                .filter(|n| !n.contains('@'))
                .map(String::as_str)
                .collect(),
            _ => Vec::new(),
        }
    }
}

impl std::fmt::Display for Sharing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list =
            |f: &mut std::fmt::Formatter<'_>, kind, items: &mut dyn Iterator<Item = String>| {
                write!(f, "{kind}:{}", items.collect::<Vec<_>>().join(","))
            };
        match self {
            Sharing::LocalOnly => f.write_str("local"),
            Sharing::Cluster => f.write_str("cluster"),
            Sharing::Roles(r) => list(f, "roles", &mut r.iter().cloned()),
            Sharing::Hubs(h) => list(f, "hubs", &mut h.iter().map(HubId::to_string)),
            Sharing::Principals(p) => list(f, "principals", &mut p.iter().cloned()),
        }
    }
}

/// A principal in a new policy that does not name its hub.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "principal {0:?} names no hub: write {0}@HUB, with the name or id of the hub whose token it \
     is, or {0}@* for that name on any hub"
)]
pub struct UnqualifiedPrincipal(pub String);

/// Text that is not a sharing policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a sharing policy is local, cluster, roles:A,B, hubs:ID,ID or principals:A,B (lists not empty)"
)]
pub struct ParseSharingError;

impl std::str::FromStr for Sharing {
    type Err = ParseSharingError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let items = |rest: &str| -> Result<Vec<String>, ParseSharingError> {
            let v: Vec<String> = rest.split(',').map(|i| i.trim().to_owned()).collect();
            if v.iter().any(String::is_empty) {
                return Err(ParseSharingError);
            }
            Ok(v)
        };
        match s.split_once(':') {
            None if s == "local" => Ok(Sharing::LocalOnly),
            None if s == "cluster" => Ok(Sharing::Cluster),
            Some(("roles", rest)) => Ok(Sharing::Roles(items(rest)?)),
            Some(("principals", rest)) => Ok(Sharing::Principals(items(rest)?)),
            Some(("hubs", rest)) => items(rest)?
                .iter()
                .map(|h| h.parse().map_err(|_| ParseSharingError))
                .collect::<Result<_, _>>()
                .map(Sharing::Hubs),
            _ => Err(ParseSharingError),
        }
    }
}

/// The trust level a caller needs for a tool: `read_only` for a read-only tool,
/// `agent_dispatch` for one that acts, `full` for a destructive one; never less than the app's
/// `require_trust`.
pub fn trust_needed(hints: ToolHints, require_trust: Option<TrustLevel>) -> TrustLevel {
    let by_tool = match hints.kind() {
        ToolKind::ReadOnly => TrustLevel::ReadOnly,
        ToolKind::Write => TrustLevel::AgentDispatch,
        ToolKind::Destructive => TrustLevel::Full,
    };
    require_trust.map_or(by_tool, |r| r.max(by_tool))
}

/// Whether `caller` may call a tool with `hints` of an app shared by `sharing` with
/// `require_trust`: [`CallErrorCode::NotShared`] or [`CallErrorCode::TrustTooLow`] if not.
pub fn check_call(
    sharing: &Sharing,
    require_trust: Option<TrustLevel>,
    hints: ToolHints,
    caller: &Caller<'_>,
) -> Result<(), CallErrorCode> {
    if !sharing.admits(caller) {
        return Err(CallErrorCode::NotShared);
    }
    if caller.trust < trust_needed(hints, require_trust) {
        return Err(CallErrorCode::TrustTooLow);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use CallErrorCode::{NotShared, TrustTooLow};
    use TrustLevel::{AgentDispatch, Full, ReadOnly};

    const ME: HubId = HubId([5; 16]);

    /// Every sharing mode against callers that it should and should not admit, and every trust
    /// level against every kind of tool.
    #[test]
    fn sharing_policies_read_back_as_written() {
        for text in [
            "local",
            "cluster",
            "roles:laptop,phone",
            "principals:ann@desk,bob@*",
            &format!("hubs:{ME}"),
        ] {
            let sharing: Sharing = text.parse().unwrap();
            assert_eq!(sharing.to_string(), text);
        }
        let old: Sharing = "principals:ann,bob@desk".parse().unwrap();
        assert_eq!(old.unqualified_principals(), vec!["ann"]);
        assert_eq!(
            old.require_qualified(),
            Err(UnqualifiedPrincipal("ann".into()))
        );
        let new: Sharing = "principals:ann@desk,bob@*".parse().unwrap();
        assert_eq!(new.require_qualified(), Ok(()));
        assert!(Sharing::Cluster.unqualified_principals().is_empty());
        for bad in [
            "",
            "roles:",
            "roles:a,,b",
            "hubs:xyz",
            "everyone",
            "cluster:x",
        ] {
            assert_eq!(bad.parse::<Sharing>(), Err(ParseSharingError), "{bad}");
        }
    }

    #[test]
    fn each_sharing_mode_and_trust_level_allows_exactly_what_it_should() {
        let laptop = vec!["laptop".to_owned()];
        let phone = vec!["phone".to_owned()];
        let caller = |roles: &'static [String], principal, hub| Caller {
            hub,
            hub_name: "desk",
            trust: Full,
            roles,
            principal,
        };
        let laptop: &'static [String] = Box::leak(laptop.into_boxed_slice());
        let phone: &'static [String] = Box::leak(phone.into_boxed_slice());
        let other = HubId([6; 16]);
        let principals = |p: &[&str]| Sharing::Principals(p.iter().map(|p| (*p).into()).collect());
        let rows: [(Sharing, Caller<'_>, bool); 15] = [
            (Sharing::LocalOnly, caller(laptop, Some("ann"), ME), false),
            (Sharing::Cluster, caller(&[], None, other), true),
            (
                Sharing::Roles(vec!["laptop".into()]),
                caller(laptop, None, other),
                true,
            ),
            (
                Sharing::Roles(vec!["laptop".into()]),
                caller(phone, None, other),
                false,
            ),
            (Sharing::Hubs(vec![ME]), caller(&[], None, ME), true),
            (Sharing::Hubs(vec![ME]), caller(&[], None, other), false),
            // A principal is qualified by the hub that signs for it: by name, id, or any hub.
            (
                principals(&["ann@desk"]),
                caller(&[], Some("ann"), other),
                true,
            ),
            (
                principals(&[&format!("ann@{other}")]),
                caller(&[], Some("ann"), other),
                true,
            ),
            (
                principals(&["ann@*"]),
                caller(&[], Some("ann"), other),
                true,
            ),
            (
                principals(&["ann@laptop"]),
                caller(&[], Some("ann"), other),
                false,
            ),
            (
                principals(&[&format!("ann@{ME}")]),
                caller(&[], Some("ann"), other),
                false,
            ),
            (
                principals(&["ann@desk"]),
                caller(&[], Some("bob"), other),
                false,
            ),
            (principals(&["ann@desk"]), caller(&[], None, other), false),
            // Unqualified (an older release's policy): no remote caller.
            (principals(&["ann"]), caller(&[], Some("ann"), other), false),
            (Sharing::Roles(vec![]), caller(laptop, None, other), false),
        ];
        for (sharing, who, admitted) in rows {
            let want = if admitted { Ok(()) } else { Err(NotShared) };
            assert_eq!(
                check_call(&sharing, None, ToolHints::default(), &who),
                want,
                "{sharing:?} {who:?}"
            );
        }

        let read = ToolHints {
            read_only: true,
            destructive: false,
        };
        let act = ToolHints::default();
        let destroy = ToolHints {
            read_only: false,
            destructive: true,
        };
        let table = [
            (ReadOnly, [Ok(()), Err(TrustTooLow), Err(TrustTooLow)]),
            (AgentDispatch, [Ok(()), Ok(()), Err(TrustTooLow)]),
            (Full, [Ok(()), Ok(()), Ok(())]),
        ];
        for (trust, want) in table {
            let who = Caller {
                hub: other,
                hub_name: "desk",
                trust,
                roles: &[],
                principal: None,
            };
            for (hints, want) in [read, act, destroy].into_iter().zip(want) {
                assert_eq!(
                    check_call(&Sharing::Cluster, None, hints, &who),
                    want,
                    "{trust} {hints:?}"
                );
            }
        }
        // The app's own floor tightens it.
        let who = Caller {
            hub: other,
            hub_name: "desk",
            trust: AgentDispatch,
            roles: &[],
            principal: None,
        };
        assert_eq!(
            check_call(&Sharing::Cluster, Some(Full), read, &who),
            Err(TrustTooLow)
        );
        assert_eq!(
            check_call(&Sharing::Cluster, Some(AgentDispatch), read, &who),
            Ok(())
        );
    }
}
