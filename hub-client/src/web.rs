//! The phone page (a hub in the browser, `hub-web`), as this binary carries it: `hub web export
//! DIR` writes it for any static HTTPS host. The relay Worker serves the same files at `/phone/`.
//! Whoever serves the page is trusted with the keys of every phone that opens it
//! (docs/OPERATIONS.md, "The phone page").

use std::path::{Path, PathBuf};

include!(concat!(env!("OUT_DIR"), "/web_page.rs"));

/// Why the page was not written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// This binary was built before the page.
    #[error(
        "this hub was built without the phone page: run scripts/build-web, then build the hub \
         again (cargo build -p hub-client --bin hub)"
    )]
    NotBuilt,
    /// The directory holds something already.
    #[error("{0} is not empty: name a new or empty directory")]
    NotEmpty(PathBuf),
    /// Writing failed.
    #[error("writing {path}: {source}")]
    Io {
        /// What was being written.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
}

/// The page's files (path under the page, contents); empty if this binary has none.
pub fn files() -> &'static [(&'static str, &'static [u8])] {
    PAGE_FILES
}

/// Writes the page into `dir` (created if missing; it must be empty): the files written.
pub fn export(dir: &Path) -> Result<usize, ExportError> {
    if PAGE_FILES.is_empty() {
        return Err(ExportError::NotBuilt);
    }
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ExportError::Io { path, source }
    };
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(io(dir))?;
        if entries.next().is_some() {
            return Err(ExportError::NotEmpty(dir.to_owned()));
        }
    }
    for (rel, bytes) in PAGE_FILES {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::write(&path, bytes).map_err(io(&path))?;
    }
    Ok(PAGE_FILES.len())
}
