//! `hub cluster`, `hub cert`, `hub revoke-cert`: the founder's CA operations and publishing a
//! revocation list through the relay.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use age::secrecy::SecretString;
use hub_client::node::home::NewHub;
use shared_proto::trust::TrustLevel;
use zeroize::Zeroizing;

use anyhow::{bail, Context, Result};
use hub_client::node::home::Home;
use hub_client::unix_ms;
use hub_client::RelayEvent;
use shared_proto::trust::{Revocation, VerifiedPeer};

use crate::args::{ConnArgs, PassphraseArgs};
use crate::session::connect;
use crate::session::ensure_not_running;

pub(crate) fn print_certificate(cert: &VerifiedPeer, home: &Home) -> Result<()> {
    let date = |ms: u64| utc(ms / 1000);
    println!("hub id:       {}", cert.hub_id());
    println!("name:         {}", cert.name());
    println!("cluster:      {}", home.cluster_id()?);
    println!("trust level:  {}", cert.trust());
    println!("roles:        {}", cert.roles().join(", "));
    let issuer = match cert.issued_by() {
        Some(admin) => format!("admin hub {admin}"),
        None => "the cluster CA".to_owned(),
    };
    println!("issued by:    {issuer}");
    if cert.is_admin() {
        println!("admin:        yes: an admin certificate (pairs, renews and revokes hubs)");
    }
    println!("not before:   {}", date(cert.not_before_ms()));
    println!("not after:    {}", date(cert.not_after_ms()));
    println!("fingerprint:  {}", hex::encode(cert.fingerprint()));
    println!("key hash:     {}", hex::encode(cert.key_hash()));
    println!("noise key:    {}", hex::encode(cert.noise_key()));
    println!(
        "renewal:      from {} (two thirds into its term)",
        date(shared_proto::trust::renewal::due_at(cert))
    );
    if let Some(w) = hub_client::hub::view::expiry_warning(cert, unix_ms()) {
        println!("WARNING:      {w}");
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS UTC` for Unix seconds (civil-from-days, proleptic Gregorian).
pub(crate) fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub(crate) fn parse_hash(text: &str, what: &str) -> Result<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out)
        .with_context(|| format!("{what} must be 64 hex digits"))?;
    Ok(out)
}

pub(crate) async fn revoke(
    home: &Home,
    fingerprint: &str,
    key_hash: Option<&str>,
    reason: String,
    offline: bool,
) -> Result<()> {
    if !offline {
        ensure_not_running(home).await?;
    }
    let entry = Revocation {
        fingerprint: parse_hash(fingerprint, "the fingerprint")?,
        // All zeros matches no key: revocation by fingerprint only.
        key_hash: key_hash.map_or(Ok([0; 32]), |k| parse_hash(k, "--key-hash"))?,
        revoked_at_ms: unix_ms(),
        reason,
    };
    let list = home.revoke(entry)?;
    println!("signed revocation list version {}", list.version());
    if offline {
        return Ok(());
    }
    publish(home, &list).await
}

/// Publishes a revocation list through a short relay connection and waits for the relay to take
/// it.
pub(crate) async fn publish(
    home: &Home,
    list: &shared_proto::trust::VerifiedRevocations,
) -> Result<()> {
    // The client already passed the list on in its Hello; publishing again is harmless (an equal
    // version is ignored).
    publish_document(home, Published::Revocations(list), "the revocation list").await?;
    println!("published: the relay enforces version {}", list.version());
    Ok(())
}

/// A signed document to publish in the cluster's room.
enum Published<'a> {
    Revocations(&'a shared_proto::trust::VerifiedRevocations),
    Successor(&'a shared_proto::trust::rotation::VerifiedSuccessor),
}

/// Publishes `doc` through a short relay connection and waits for the relay to take it: the
/// relay handles a socket's frames in order and closes one whose document it refuses, so its
/// answer to a status request sent after it confirms the document was taken.
async fn publish_document(home: &Home, doc: Published<'_>, what: &str) -> Result<()> {
    let conn = ConnArgs {
        relay: None,
        timeout: 10,
    };
    let (mut client, _) = connect(home, &conn).await?;
    match doc {
        Published::Revocations(list) => client.publish_revocations(list.bytes().to_vec()).await?,
        Published::Successor(s) => client.publish_successor(s.bytes().to_vec()).await?,
    }
    client.request_status().await?;
    tokio::time::timeout(Duration::from_secs(conn.timeout), async {
        loop {
            match (client.next_event().await, &doc) {
                (Some(RelayEvent::Status(_)), _) => return Ok(()),
                (Some(RelayEvent::Revocations(l)), Published::Revocations(list))
                    if l.version() > list.version() =>
                {
                    home.keep_revocations(&l)?;
                    bail!(
                        "the relay holds a newer list (version {}); revoke again",
                        l.version()
                    )
                }
                (Some(RelayEvent::Disconnected { reason, .. }), _) => {
                    bail!("the relay closed the connection: {reason}")
                }
                (Some(_), _) => {}
                (None, _) => bail!("the relay client stopped"),
            }
        }
    })
    .await
    .with_context(|| format!("the relay did not confirm {what}"))??;
    client.shutdown().await;
    Ok(())
}

/// The passphrase of a backup: `--passphrase-file`'s first line, `HUB_BACKUP_PASSPHRASE`, or
/// asked on the terminal (twice when `confirm`, for a new backup).
fn passphrase(args: &PassphraseArgs, confirm: bool) -> Result<SecretString> {
    if let Some(path) = &args.passphrase_file {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .with_context(|| format!("--passphrase-file {}", path.display()))?,
        );
        let line = text.lines().next().unwrap_or("");
        return Ok(SecretString::from(line.to_owned()));
    }
    if let Ok(pass) = std::env::var("HUB_BACKUP_PASSPHRASE") {
        return Ok(SecretString::from(pass));
    }
    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        bail!("no terminal to ask the passphrase on: give --passphrase-file FILE or set HUB_BACKUP_PASSPHRASE");
    }
    let pass = Zeroizing::new(rpassword::prompt_password("backup passphrase: ")?);
    if confirm {
        let again = Zeroizing::new(rpassword::prompt_password("the same passphrase again: ")?);
        if *again != *pass {
            bail!("the two passphrases differ; nothing written");
        }
    }
    Ok(SecretString::from(pass.to_string()))
}

/// `hub cluster backup --out FILE`.
pub(crate) fn backup(home: &Home, out: &Path, args: &PassphraseArgs) -> Result<()> {
    ensure_founder(home)?;
    if out.exists() {
        bail!(
            "{} exists; a backup is never written over a file",
            out.display()
        );
    }
    let pass = passphrase(args, true)?;
    let bytes = hub_client::node::backup::make(home, &pass)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("{}", out.display()))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("{}", out.display()))?;
    println!(
        "wrote the backup of cluster {} to {} ({} bytes, encrypted under the passphrase)",
        home.cluster_id()?,
        out.display(),
        bytes.len()
    );
    println!("keep it offline, away from this machine; `hub cluster restore` reads it");
    Ok(())
}

/// `hub cluster restore FILE --name NAME`.
pub(crate) fn restore(
    home: &Home,
    file: &Path,
    name: String,
    relay: Option<&str>,
    args: &PassphraseArgs,
) -> Result<()> {
    if home.is_initialized() {
        bail!(
            "{} already holds a hub; restore into a new --home",
            home.dir().display()
        );
    }
    let bytes = std::fs::read(file).with_context(|| format!("{}", file.display()))?;
    let pass = passphrase(args, false)?;
    let backup = hub_client::node::backup::open(&bytes, &pass)?;
    let spec = NewHub {
        name,
        trust: TrustLevel::Full,
        roles: vec!["founder".into()],
        validity_ms: hub_client::node::home::CERT_VALIDITY_MS,
    };
    let me = hub_client::node::backup::restore(home, &backup, &spec, relay)?;
    let (epoch, version) = backup.serials();
    println!(
        "restored cluster {} from the backup of {} made by {}",
        backup.cluster_id(),
        utc(backup.made_at_ms() / 1000),
        backup.made_by()
    );
    println!(
        "this hub: {} ({}), the cluster's admin; {} peers, manifest epoch {}, revocation list {}",
        me.hub_id(),
        me.name(),
        backup.peers().len(),
        epoch.map_or("none".to_owned(), |e| e.to_string()),
        version.map_or("none".to_owned(), |v| v.to_string()),
    );
    println!(
        "if the lost machine may be in other hands, revoke it once this hub runs: hub peers revoke {}",
        backup.made_by()
    );
    Ok(())
}

/// `hub cluster rotate --grace D`: prepare (or take up again) the rotation, publish its successor
/// document in the old room, then move this hub.
pub(crate) async fn rotate(home: &Home, grace: Duration) -> Result<()> {
    ensure_founder(home)?;
    ensure_not_running(home).await?;
    let old = home.cluster_id()?;
    let rotation = home.prepare_rotation(grace.as_millis() as u64)?;
    let successor = &rotation.successor;
    publish_document(
        home,
        Published::Successor(successor),
        "the successor document",
    )
    .await
    .context("nothing changed here: run `hub cluster rotate` again")?;
    let me = home.finish_rotation(&rotation)?;
    println!(
        "cluster {old} moved to cluster {} (a new CA key); the old key is deleted here",
        successor.new_cluster()
    );
    println!(
        "this hub: {} with a certificate from the new key; start it again (`hub run`)",
        me.hub_id()
    );
    println!(
        "members that move on their own: {} (online ones at once, the others when they next run, until {})",
        rotation.moved.len(),
        utc(successor.grace_until_ms() / 1000)
    );
    for (id, name) in &rotation.left {
        println!("must pair again (no certificate of it is known here): {id} ({name})");
    }
    println!("make a new backup: the old one holds the old key (`hub cluster backup`)");
    Ok(())
}

fn ensure_founder(home: &Home) -> Result<()> {
    if !home.is_initialized() {
        bail!(hub_client::node::home::HomeError::NotInitialized(
            home.dir().to_owned()
        ));
    }
    if !home.is_founder() {
        bail!(hub_client::node::home::HomeError::NotFounder);
    }
    Ok(())
}

/// `hub cert renew`: through the running hub (which asks an admin, or signs as the founder), or
/// here if this hub is the founder and not running.
pub(crate) async fn renew(home: &Home) -> Result<()> {
    if let Some(api) = crate::api_client::Api::find(home).await? {
        let c = api.renew().await?;
        println!(
            "renewed: certificate {} valid until {}; the running hub uses it from now on",
            c.sha256,
            utc(c.not_after_ms / 1000)
        );
        return Ok(());
    }
    let store = home.store()?;
    let new = home.renew_own(&store)?;
    use hub_client::node::audit::{entry, record, AuditKind, Decision};
    let reason = shared_proto::trust::renewal::renewed_reason(new.not_after_ms());
    record(
        home,
        &store,
        entry(AuditKind::CertRenew, None, Decision::Ok, &reason),
    );
    println!(
        "renewed: certificate {} valid until {} (signed here with the CA key)",
        hex::encode(new.fingerprint()),
        utc(new.not_after_ms() / 1000)
    );
    Ok(())
}
