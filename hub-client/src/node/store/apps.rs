//! The hub's apps (how to reach each, who may use it) and the delegation nonces seen.

use std::collections::BTreeMap;

use rusqlite::params;
use shared_proto::agent::{Sharing, ToolKind};
use shared_proto::trust::TrustLevel;
use shared_proto::HubId;

use super::{hub_column, Store, StoreError};

/// An app as the store keeps it: how to reach it, and who may use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRecord {
    /// Its name, unique on this hub.
    pub name: String,
    /// How to reach it.
    pub source: AppSource,
    /// Who else may see and call it.
    pub sharing: Sharing,
    /// The least trust level a calling hub needs for any of its tools.
    pub require_trust: Option<TrustLevel>,
    /// Tools whose kind the operator pinned, in place of the app's own annotations.
    pub tool_kinds: BTreeMap<String, ToolKind>,
    /// When it was added (Unix ms).
    pub created_at: u64,
}

/// How a hub reaches an app: a command it starts (MCP over stdio) or a streamable-HTTP URL.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppSource {
    /// A child process.
    Command {
        /// The program.
        program: String,
        /// Its arguments.
        args: Vec<String>,
        /// Extra environment variables.
        env: Vec<(String, String)>,
        /// Its working directory.
        cwd: Option<String>,
    },
    /// An MCP server on this machine.
    Url(String),
}

/// A delegation nonce held: the hub whose call spent it (none if kept before the store knew),
/// the nonce, and when its envelope expires (Unix ms).
pub type HeldNonce = (Option<HubId>, [u8; 16], u64);

impl Store {
    /// Adds an app, or replaces the one of that name (keeping its sharing unless `sharing` is
    /// given). A new app is shared with nobody.
    pub fn put_app(&self, name: &str, source: &AppSource, now_ms: u64) -> Result<(), StoreError> {
        let source = serde_json::to_string(source).map_err(|_| StoreError::Corrupt("app"))?;
        self.conn.execute(
            "INSERT INTO apps (name, source, sharing, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (name) DO UPDATE SET source = excluded.source",
            params![name, source, Sharing::LocalOnly.to_string(), now_ms as i64],
        )?;
        Ok(())
    }

    /// Sets who may use an app; false if there is no such app.
    pub fn set_app_sharing(
        &self,
        name: &str,
        sharing: &Sharing,
        require_trust: Option<TrustLevel>,
    ) -> Result<bool, StoreError> {
        Ok(self.conn.execute(
            "UPDATE apps SET sharing = ?2, require_trust = ?3 WHERE name = ?1",
            params![
                name,
                sharing.to_string(),
                require_trust.map(TrustLevel::as_str)
            ],
        )? == 1)
    }

    /// Pins the kinds of tools of an app (`Some`), or unpins them (`None`: the app's own
    /// annotations count again); the other pins stay. False if there is no such app. It reads
    /// and writes: run it in [`Store::in_transaction`] beside other processes.
    pub fn pin_tool_kinds(
        &self,
        name: &str,
        pins: &BTreeMap<String, Option<ToolKind>>,
    ) -> Result<bool, StoreError> {
        let Some(mut held) = self.app(name)?.map(|a| a.tool_kinds) else {
            return Ok(false);
        };
        if pins.is_empty() {
            return Ok(true);
        }
        for (tool, kind) in pins {
            match kind {
                Some(kind) => held.insert(tool.clone(), *kind),
                None => held.remove(tool),
            };
        }
        let text: BTreeMap<&str, &str> =
            held.iter().map(|(t, k)| (t.as_str(), k.as_str())).collect();
        let json = serde_json::to_string(&text).map_err(|_| StoreError::Corrupt("tool kinds"))?;
        self.conn.execute(
            "UPDATE apps SET tool_kinds = ?2 WHERE name = ?1",
            params![name, json],
        )?;
        Ok(true)
    }

    /// Removes an app; false if there was none.
    pub fn remove_app(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .execute("DELETE FROM apps WHERE name = ?1", params![name])?
            == 1)
    }

    /// Every app, by name.
    pub fn apps(&self) -> Result<Vec<AppRecord>, StoreError> {
        self.apps_where(None)
    }

    /// One app.
    pub fn app(&self, name: &str) -> Result<Option<AppRecord>, StoreError> {
        Ok(self.apps_where(Some(name))?.pop())
    }

    /// Every app, or the one named `name`, by name.
    fn apps_where(&self, name: Option<&str>) -> Result<Vec<AppRecord>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT name, source, sharing, require_trust, created_at, tool_kinds
             FROM apps WHERE ?1 IS NULL OR name = ?1 ORDER BY name",
        )?;
        let rows = stmt.query_map(params![name], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, String>(5)?,
            ))
        })?;
        rows.map(|row| {
            let (name, source, sharing, require_trust, created_at, kinds) = row?;
            let kinds: BTreeMap<String, String> =
                serde_json::from_str(&kinds).map_err(|_| StoreError::Corrupt("tool kinds"))?;
            let tool_kinds = kinds
                .into_iter()
                .map(|(tool, kind)| {
                    Ok((
                        tool,
                        kind.parse().map_err(|_| StoreError::Corrupt("tool kind"))?,
                    ))
                })
                .collect::<Result<_, StoreError>>()?;
            Ok(AppRecord {
                name,
                source: serde_json::from_str(&source).map_err(|_| StoreError::Corrupt("app"))?,
                sharing: sharing
                    .parse()
                    .map_err(|_| StoreError::Corrupt("app sharing"))?,
                require_trust: require_trust
                    .map(|t| {
                        t.parse()
                            .map_err(|_| StoreError::Corrupt("app trust level"))
                    })
                    .transpose()?,
                tool_kinds,
                created_at: created_at as u64,
            })
        })
        .collect()
    }

    /// The delegation nonces held, unexpired at `now_ms`: each with the hub whose call spent it
    /// (none for those kept before the store knew), and when its envelope expires. The running
    /// hub holds them in memory (`shared_proto::agent::nonces`) and appends new ones through its
    /// journal (`node::journal`).
    pub fn delegation_nonces(&self, now_ms: u64) -> Result<Vec<HeldNonce>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT peer, nonce, expires_at FROM delegation_nonces WHERE expires_at > ?1",
        )?;
        let rows = stmt.query_map(params![now_ms as i64], |r| {
            Ok((
                hub_column(r, 0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, i64>(2)? as u64,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (peer, nonce, expires) = row?;
            let nonce = nonce
                .try_into()
                .map_err(|_| StoreError::Corrupt("delegation nonce"))?;
            out.push((peer, nonce, expires));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Apps keep their source and sharing; a new one is shared with nobody, and replacing its
    /// source keeps its sharing.
    #[test]
    fn apps_are_stored_unshared_and_keep_their_sharing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("hub.db")).unwrap();
        let source = AppSource::Command {
            program: "mcp-server".into(),
            args: vec!["--x".into()],
            env: vec![("K".into(), "V".into())],
            cwd: None,
        };
        store.put_app("notes", &source, 5).unwrap();
        let app = store.app("notes").unwrap().unwrap();
        assert_eq!((app.source, app.sharing), (source, Sharing::LocalOnly));
        let roles = Sharing::Roles(vec!["laptop".into()]);
        assert!(store
            .set_app_sharing("notes", &roles, Some(TrustLevel::Full))
            .unwrap());
        let url = AppSource::Url("http://127.0.0.1:9/mcp".into());
        store.put_app("notes", &url, 6).unwrap();
        let app = store.app("notes").unwrap().unwrap();
        assert_eq!(
            (app.source, app.sharing, app.require_trust),
            (url, roles, Some(TrustLevel::Full))
        );
        assert!(store.remove_app("notes").unwrap());
        assert!(!store.remove_app("notes").unwrap());
        assert!(!store
            .set_app_sharing("notes", &Sharing::Cluster, None)
            .unwrap());
    }
}
