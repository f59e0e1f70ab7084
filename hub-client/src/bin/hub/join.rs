//! `hub join`: joining a cluster with a pairing token.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use hub_client::node::home::Home;
use shared_proto::session::pairing::PairingToken;

use crate::args::ConnArgs;
use crate::session::connect;

pub(crate) async fn join(home: &Home, token: &str, name: &str, timeout: u64) -> Result<()> {
    let token = PairingToken::parse(token)?;
    if home.is_initialized() {
        bail!(
            "{} already holds a hub; use another --home",
            home.dir().display()
        );
    }
    let joined = hub_client::hub::join_cluster(home, &token, name, Duration::from_secs(timeout))
        .await
        .context("pairing failed")?;
    println!(
        "joined cluster {} as {} ({}), trust level {}",
        token.cluster,
        joined.certificate.hub_id(),
        joined.certificate.name(),
        joined.certificate.trust()
    );
    println!(
        "paired with {} ({})",
        joined.issuer.hub_id(),
        joined.issuer.name()
    );
    // Prove the membership: the relay admits the new certificate.
    let conn = ConnArgs {
        relay: None,
        timeout,
    };
    let (client, online) = connect(home, &conn).await?;
    client.shutdown().await;
    println!(
        "the relay admits this hub; {} other hub(s) online; start it with `hub run`",
        online.len()
    );
    Ok(())
}
