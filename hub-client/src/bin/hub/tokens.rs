//! `hub tokens`: API tokens for the admin API.

use anyhow::{bail, Result};
use hub_client::node::home::Home;
use hub_client::node::store::TokenLimits;
use hub_client::unix_ms;

use crate::args::TokensCommand;
use crate::cluster::utc;
use crate::peers::ago;

pub(crate) fn tokens(home: &Home, cmd: TokensCommand) -> Result<()> {
    let store = home.store()?;
    match cmd {
        TokensCommand::Create {
            name,
            admin,
            expires,
            scopes,
            max_uses,
        } => {
            if let Some(bad) = scopes
                .iter()
                .find(|s| shared_proto::agent::envelope::parse_scope(s).is_none())
            {
                bail!("--scopes {bad:?}: a scope is app:NAME or app:NAME/TOOL");
            }
            if admin && !scopes.is_empty() {
                bail!("an admin token cannot be scoped: leave out --admin or --scopes");
            }
            use rand::RngCore;
            let mut secret = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut secret);
            let token = hub_client::node::access::format_api_token(&secret);
            let now = unix_ms();
            let expires_at = expires.map(|d| now + d.as_millis() as u64);
            let limits = TokenLimits { scopes, max_uses };
            store.add_api_token(token.as_bytes(), &name, admin, now, expires_at, &limits)?;
            let terms = format!(
                "{}{}{}",
                if admin { "admin" } else { "read" },
                if limits.scopes.is_empty() {
                    String::new()
                } else {
                    format!(", scopes {}", limits.scopes.join(","))
                },
                limits
                    .max_uses
                    .map_or(String::new(), |n| format!(", {n} uses")),
            );
            let mut entry = hub_client::node::audit::entry(
                hub_client::node::audit::AuditKind::TokenCreate,
                None,
                hub_client::node::audit::Decision::Ok,
                &terms,
            );
            entry.principal = name.clone();
            hub_client::node::audit::record(home, &store, entry);
            eprintln!(
                "API token {name:?} ({}); shown once, store it now:",
                if admin { "admin" } else { "read" }
            );
            println!("{token}");
        }
        TokensCommand::List => {
            let tokens = store.api_tokens()?;
            if tokens.is_empty() {
                println!("no API tokens");
            }
            for t in tokens {
                let uses = match t.max_uses {
                    Some(max) => format!("  uses {}/{max}", t.uses),
                    None => String::new(),
                };
                let scopes = if t.scopes.is_empty() {
                    String::new()
                } else {
                    format!("  scopes {}", t.scopes.join(","))
                };
                println!(
                    "{:<24}  {:<5}  created {}  expires {}  last used {}{uses}{scopes}",
                    t.name,
                    if t.admin { "admin" } else { "read" },
                    ago(Some(t.created_at)),
                    t.expires_at
                        .map_or_else(|| "never".into(), |e| utc(e / 1000)),
                    ago(t.last_used_at)
                );
            }
        }
        TokensCommand::Delete { name } => {
            let n = store.delete_api_tokens(&name)?;
            if n == 0 {
                bail!("no API token named {name:?}");
            }
            println!("deleted {n} token(s) named {name:?}");
        }
    }
    Ok(())
}
