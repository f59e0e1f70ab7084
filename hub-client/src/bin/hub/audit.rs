//! `hub audit`: the federation audit log in this hub's store.

use anyhow::{bail, Context, Result};
use hub_client::node::audit::{archive, to_json, verify_archive, verify_log};
use hub_client::node::home::Home;
use hub_client::node::store::AuditEntry;
use hub_client::unix_ms;

use crate::args::AuditCommand;
use crate::cluster::utc;

pub(crate) fn audit_command(home: &Home, cmd: AuditCommand) -> Result<()> {
    let store = home.store()?;
    match cmd {
        AuditCommand::List {
            peer,
            since,
            limit,
            json,
        } => {
            let since_ms = since.map_or(0, |d| unix_ms().saturating_sub(d.as_millis() as u64));
            let entries = store.audit_entries(peer, since_ms, Some(limit))?;
            if entries.is_empty() && !json {
                println!("no audit entries");
            }
            for (entry, mac) in entries {
                if json {
                    println!("{}", to_json(&entry, &mac));
                } else {
                    println!(
                        "{:>6}  {}  {:<12} {:<8} {:<8} {}{}{}{}",
                        entry.seq,
                        utc(entry.at_ms / 1000),
                        entry.kind,
                        entry
                            .peer
                            .map_or("-".to_owned(), |p| p.to_string()[..8].to_owned()),
                        if entry.decision.is_empty() {
                            "-"
                        } else {
                            &entry.decision
                        },
                        what(&entry),
                        if entry.principal.is_empty() {
                            String::new()
                        } else {
                            format!(" for {}", entry.principal)
                        },
                        if entry.reason.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", entry.reason)
                        },
                        // An entry of repeats: how many events it stands for.
                        match entry.times() {
                            1 => String::new(),
                            n => format!(" ({n} times)"),
                        },
                    );
                }
            }
        }
        AuditCommand::Verify {
            archive: Some(path),
        } => {
            let text =
                std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
            let me = home.credentials()?;
            let key = home.audit_key()?;
            match verify_archive(&key, me.hub_id, &me.identity.verifying_key(), &text) {
                Ok(h) => println!(
                    "the archive verifies: entries {} to {}, head {}",
                    h.after_seq + 1,
                    h.through_seq,
                    h.head_mac
                ),
                Err(e) => bail!("{}: the archive does not verify: {e}", path.display()),
            }
        }
        AuditCommand::Verify { archive: None } => {
            let from = store.audit_checkpoint()?.map(|c| c.seq);
            match (verify_log(home, &store)?, from) {
                (Ok((0, _)), _) => println!("the audit log is empty"),
                (Ok((seq, mac)), None) => println!(
                    "the audit chain verifies: {seq} entries, head {}",
                    hex::encode(mac)
                ),
                (Ok((seq, mac)), Some(from)) if seq == from => println!(
                    "the audit chain verifies: its checkpoint at entry {from} (every entry up to \
                     it archived), none since, head {}",
                    hex::encode(mac)
                ),
                (Ok((seq, mac)), Some(from)) => println!(
                    "the audit chain verifies from its checkpoint at entry {from} (older entries \
                     archived): entries {} to {seq}, head {}",
                    from + 1,
                    hex::encode(mac)
                ),
                (Err(e), _) => bail!("the audit chain does not verify: {e}"),
            }
        }
        AuditCommand::Archive { before, out } => match archive(home, &store, before, &out)? {
            None => println!("no entry before {}: nothing archived", utc(before / 1000)),
            Some(a) => {
                println!(
                    "archived {} ({} to {}) to {}; the log goes on from entry {}",
                    match a.entries {
                        1 => "1 entry".to_owned(),
                        n => format!("{n} entries"),
                    },
                    a.header.after_seq + 1,
                    a.header.through_seq,
                    out.display(),
                    a.header.through_seq + 1
                );
                println!(
                        "keep the archive with this hub's audit.key: `hub audit verify --archive {}` checks it",
                        out.display()
                    );
            }
        },
        AuditCommand::Export => {
            for (entry, mac) in store.audit_entries(None, 0, None)? {
                println!("{}", to_json(&entry, &mac));
            }
        }
    }
    Ok(())
}

fn what(e: &AuditEntry) -> String {
    match (e.app.is_empty(), e.tool.is_empty()) {
        (true, _) => String::new(),
        (false, true) => e.app.clone(),
        (false, false) => format!("{}/{}", e.app, e.tool),
    }
}

/// `hub stats`: counted from the store's audit log (the running hub writes it; no API needed).
pub(crate) fn stats_command(home: &Home, json: bool) -> Result<()> {
    let windows = hub_client::hub::view::stats(&home.store()?, unix_ms())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&windows)?);
        return Ok(());
    }
    let codes = |m: &std::collections::BTreeMap<String, u64>| {
        if m.is_empty() {
            return "none".to_owned();
        }
        m.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for w in &windows {
        let t = &w.total;
        println!(
            "{:<5} calls out {} (refused: {}), calls in {} (accepted {}; refused: {}), {} ms and {} bytes in calls, tokens created {}, invites {}, pairings {}",
            w.window,
            t.calls_out,
            codes(&t.refused_out),
            t.calls_in,
            t.accepted_in,
            codes(&t.refused_in),
            t.call_ms,
            t.call_bytes,
            t.tokens_created,
            t.invites,
            t.pairings,
        );
        if !w.token_uses.is_empty() {
            println!("      token uses: {}", codes(&w.token_uses));
        }
        for (peer, p) in &w.peers {
            println!(
                "      {}  out {} in {} (refused {}), {} bytes",
                &peer[..8],
                p.calls_out,
                p.calls_in,
                p.refused_in.values().sum::<u64>(),
                p.call_bytes
            );
        }
    }
    Ok(())
}
