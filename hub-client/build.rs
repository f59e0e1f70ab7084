//! Embeds the phone page (hub-web/build/phone, made by scripts/build-web) in the hub binary, for
//! `hub web export DIR`. A build without it still builds: the command then says how to get it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn files(dir: &Path, under: &Path, out: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files(&path, under, out);
        } else if let Ok(rel) = path.strip_prefix(under) {
            out.push((rel.to_string_lossy().replace('\\', "/"), path.clone()));
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let web = manifest.join("../hub-web/build");
    let page = web.join("phone");
    // The build directory appears and changes with scripts/build-web; until it exists, its parent
    // says when it does.
    let watched = if web.exists() {
        &web
    } else {
        &manifest.join("../hub-web")
    };
    println!("cargo:rerun-if-changed={}", watched.display());
    let mut found = Vec::new();
    if page.join("index.html").exists() {
        files(&page, &page, &mut found);
    }
    found.sort();
    let mut code = String::from("/// The phone page's files: path under the page, contents.\n");
    code.push_str("pub(crate) static PAGE_FILES: &[(&str, &[u8])] = &[\n");
    for (rel, path) in &found {
        let _ = writeln!(
            code,
            "    ({rel:?}, include_bytes!({:?})),",
            path.display().to_string()
        );
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("web_page.rs");
    if let Err(e) = std::fs::write(&out, code) {
        println!("cargo:warning=cannot write {}: {e}", out.display());
    }
}
