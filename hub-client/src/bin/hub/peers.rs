//! `hub peers`, `hub status`, `hub ping` through a running hub: through its API when it runs,
//! from the store when it does not.

use anyhow::{bail, Context, Result};
use hub_client::api::PeerView;
use hub_client::node::home::Home;
use hub_client::node::store::{MANIFEST, REVOCATIONS};
use hub_client::unix_ms;
use shared_proto::HubId;

use crate::api_client::Api;
use crate::args::PeersCommand;
use crate::cluster::{publish, utc};

pub(crate) fn ago(ms: Option<u64>) -> String {
    match ms {
        None => "never".into(),
        Some(t) => {
            let s = unix_ms().saturating_sub(t) / 1000;
            match s {
                0..=59 => format!("{s}s ago"),
                60..=3599 => format!("{}m ago", s / 60),
                3600..=86_399 => format!("{}h ago", s / 3600),
                _ => format!("{}d ago", s / 86_400),
            }
        }
    }
}

pub(crate) fn print_peers(peers: &[PeerView]) {
    if peers.is_empty() {
        println!("no peers");
        return;
    }
    println!(
        "{:<32}  {:<16}  {:<8}  {:<6}  {:<14}  {:<10}  {:<9}  score",
        "ID", "NAME", "ONLINE", "PATH", "TRUST", "LAST SEEN", "state"
    );
    for p in peers {
        let online = match p.online {
            Some(true) => "yes",
            Some(false) => "no",
            None => "?",
        };
        let path = p.path.as_deref().unwrap_or("-");
        let state = if p.suspended_at.is_some() {
            "suspended"
        } else {
            "active"
        };
        let score = p.trust_score.map_or("?".to_owned(), |s| s.to_string());
        println!(
            "{:<32}  {:<16}  {:<8}  {path:<6}  {:<14}  {:<10}  {state:<9}  {score}",
            p.id,
            p.name,
            online,
            p.trust_level,
            ago(p.last_seen_at),
        );
    }
}

pub(crate) async fn peers_command(home: &Home, cmd: PeersCommand) -> Result<()> {
    let api = Api::find(home).await?;
    match (cmd, api) {
        (PeersCommand::List, Some(api)) => print_peers(&api.peers().await?),
        (PeersCommand::List, None) => {
            let peers: Vec<PeerView> = home
                .hub_store()?
                .active_peers()?
                .into_iter()
                .map(|p| PeerView::new(p, None))
                .collect();
            eprintln!("(the hub is not running: online state unknown)");
            print_peers(&peers);
        }
        (PeersCommand::Show { id }, Some(api)) => {
            println!("{}", serde_json::to_string_pretty(&api.peer(id).await?)?);
        }
        (PeersCommand::Show { id }, None) => {
            let peer = home
                .hub_store()?
                .peer(id)?
                .with_context(|| format!("no peer {id}"))?;
            let view = PeerView::new(peer, None);
            println!("{}", serde_json::to_string_pretty(&view)?);
        }
        (PeersCommand::Revoke { id, reason }, Some(api)) => {
            let out = api.revoke(id, &reason).await?;
            println!(
                "revoked {id}; revocation list version {} published",
                out.revocation_version
            );
        }
        (PeersCommand::Revoke { id, reason }, None) => {
            let peer = home
                .hub_store()?
                .peer(id)?
                .filter(|p| p.revoked_at.is_none())
                .with_context(|| format!("no active peer {id}"))?;
            let list = home.revoke_peer(&peer, reason)?;
            println!(
                "revoked {id}; signed revocation list version {}",
                list.version()
            );
            publish(home, &list).await?;
        }
        (PeersCommand::SetTrust { id, level, roles }, Some(api)) => {
            let t = api.set_trust(id, level, roles).await?;
            println!(
                "{id} is {} with roles {} (manifest epoch {}); it takes a certificate under \
                 these terms as soon as it hears",
                t.trust_level,
                t.roles.join(","),
                t.manifest_epoch
            );
        }
        (PeersCommand::SetTrust { id, level, roles }, None) => {
            let store = home.hub_store()?;
            let (roles, manifest) =
                hub_client::node::audit::set_trust(home, &store, id, level, roles)?;
            println!(
                "{id} is {level} with roles {} (manifest epoch {}); the hub is not running: \
                 its peers hear of it when it runs",
                roles.join(","),
                manifest.serial
            );
        }
        (PeersCommand::Suspend { id }, Some(api)) => {
            api.suspend(id, true).await?;
            println!("suspended {id}: its calls are refused until `hub peers resume {id}`");
        }
        (PeersCommand::Resume { id }, Some(api)) => {
            api.suspend(id, false).await?;
            println!("resumed {id}");
        }
        (PeersCommand::Suspend { id }, None) => {
            if !home.hub_store()?.set_suspended(id, Some(unix_ms()))? {
                bail!("no active peer {id}");
            }
            println!("suspended {id}: its calls are refused until `hub peers resume {id}`");
        }
        (PeersCommand::Resume { id }, None) => {
            if !home.hub_store()?.set_suspended(id, None)? {
                bail!("no active peer {id}");
            }
            println!("resumed {id}");
        }
    }
    Ok(())
}

pub(crate) async fn status(home: &Home) -> Result<()> {
    if let Some(api) = Api::find(home).await? {
        let s = api.status().await?;
        let (Some(hub_id), Some(name), Some(cluster), Some(relay)) =
            (s.hub_id, s.name, s.cluster_id, s.relay)
        else {
            println!(
                "running, not a member of a cluster yet (POST /api/federation/pair or hub join)"
            );
            return Ok(());
        };
        println!("hub:          {hub_id} ({name})");
        println!("cluster:      {cluster}");
        println!("running:      yes");
        let state = match (relay.connected, relay.rtt_ms) {
            (true, Some(rtt)) => format!("connected, round trip {rtt:.2} ms"),
            (true, None) => "connected".to_owned(),
            (false, _) => format!(
                "disconnected ({})",
                relay.last_error.as_deref().unwrap_or("connecting")
            ),
        };
        println!("relay:        {} {state}", relay.url);
        if let Some(limited) = relay.rate_limited {
            println!(
                "rate-limited: {} time(s) by the relay, {} frame(s) dropped, last {:.1} s ago",
                limited.times,
                limited.dropped,
                limited.last_ms_ago as f64 / 1000.0
            );
        }
        println!("peers online: {}", s.peers_online.unwrap_or_default());
        match s.lan {
            Some(lan) if lan.enabled => {
                let linked = lan.peers.iter().filter(|p| p.linked).count();
                println!(
                    "lan:          listening on {}, {} hub(s) found, {linked} linked",
                    lan.listen.as_deref().unwrap_or("?"),
                    lan.peers.len()
                );
                for p in &lan.peers {
                    let state = if p.linked { "linked" } else { "found" };
                    println!("  {}  {state:<6}  {}", p.hub_id, p.addrs.join(" "));
                }
            }
            _ => println!("lan:          off"),
        }
        let serial = |v: Option<u64>| v.map_or_else(|| "none".into(), |n| n.to_string());
        println!("manifest:     epoch {}", serial(s.manifest_epoch));
        println!("revocations:  version {}", serial(s.revocation_version));
        if let Some(c) = s.certificate {
            println!(
                "certificate:  valid until {}, renewed from {}",
                utc(c.not_after_ms / 1000),
                utc(c.renew_at_ms / 1000)
            );
            if let Some(w) = c.warning {
                println!("WARNING:      {w}");
            }
        }
        return Ok(());
    }
    let cert = home.certificate_held()?;
    let store = home.store()?;
    let doc = |kind| -> Result<String> {
        Ok(store
            .document(kind)?
            .map_or_else(|| "none".to_owned(), |d| d.serial.to_string()))
    };
    println!("hub:          {} ({})", cert.hub_id(), cert.name());
    println!("cluster:      {}", home.cluster_id()?);
    println!("running:      no (start it with `hub run`)");
    println!("relay:        {} (not connected)", home.config()?.relay_url);
    println!("manifest:     epoch {}", doc(MANIFEST)?);
    println!("revocations:  version {}", doc(REVOCATIONS)?);
    println!(
        "certificate:  valid until {}, renewed by the running hub from {}",
        utc(cert.not_after_ms() / 1000),
        utc(shared_proto::trust::renewal::due_at(&cert) / 1000)
    );
    if let Some(w) = hub_client::hub::view::expiry_warning(&cert, hub_client::unix_ms()) {
        println!("WARNING:      {w}");
    }
    Ok(())
}

pub(crate) async fn ping_via_api(api: &Api, peer: HubId, count: u32) -> Result<()> {
    for _ in 0..count.max(1) {
        let out = api
            .ping(peer)
            .await
            .with_context(|| format!("ping {peer}"))?;
        println!(
            "reply from {peer}: {:.2} ms (through the running hub)",
            out.rtt_ms
        );
    }
    Ok(())
}
