//! Configuration: `routes.toml` -> validated [`Config`].
//!
//! `file` mirrors the TOML, `validate` turns it into the `model` types and collects every
//! problem with its place in the file, `error` renders those problems. The running
//! gateway never reads TOML on the request path: [`crate::snapshot`] builds an immutable
//! snapshot from a [`Config`] once per (re)load.

pub mod error;
pub mod file;
pub mod model;
mod pieces;
pub mod validate;

use std::path::Path;

pub use error::{ConfigError, ConfigErrors, Severity};
pub use model::Config;

/// A parsed file with what it was parsed from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// Findings that do not stop the file from being served.
    pub warnings: Vec<ConfigError>,
    /// Hash of the source text (FNV-1a, hex), and of the key files it names, if any:
    /// identifies the active table in logs.
    pub hash: String,
    /// Whether the table depends on files besides the text: key files, which `hash`
    /// covers, or certificate files, which every parse checks ([`parse_at`]). Then an
    /// unchanged text does not mean an unchanged, valid table.
    pub names_files: bool,
}

/// Why a file could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// The file could not be read.
    Io(std::io::Error),
    /// The file was read but is not a valid configuration.
    Invalid { src: String, errors: ConfigErrors },
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Io(e) => write!(f, "cannot read config: {e}"),
            LoadError::Invalid { errors, .. } => write!(f, "invalid config: {errors}"),
        }
    }
}

impl std::error::Error for LoadError {}

/// Parse configuration text.
pub fn parse(src: &str) -> Result<Loaded, ConfigErrors> {
    parse_in(src, None)
}

/// Parse configuration text whose relative file names (keys) are relative to `base`.
pub fn parse_in(src: &str, base: Option<&Path>) -> Result<Loaded, ConfigErrors> {
    let (config, warnings, files) = validate::parse_in(src, base)?;
    // A changed key file changes the hash, so a reload picks it up.
    let hash = if files.is_empty() {
        source_hash(src)
    } else {
        // Each part after its length: moving bytes from the end of the text to the
        // start of a key file is a change too.
        let mut all = Vec::new();
        for part in std::iter::once(src.as_bytes()).chain(files.iter().map(|f| &f[..])) {
            all.extend_from_slice(&(part.len() as u64).to_le_bytes());
            all.extend_from_slice(part);
        }
        source_hash_bytes(&all)
    };
    Ok(Loaded {
        config,
        warnings,
        hash,
        names_files: !files.is_empty(),
    })
}

/// Read and parse a file; the files it names are checked too ([`parse_at`]).
pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    let src = std::fs::read_to_string(path).map_err(LoadError::Io)?;
    parse_at(&src, config_dir(path)).map_err(|errors| LoadError::Invalid { src, errors })
}

/// The directory relative paths in the config at `path` are relative to.
pub fn config_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Parse text read from a file in `dir`: relative paths are resolved against `dir`, and
/// the files the config names (certificates and keys) are read and checked
/// ([`crate::tls::check_files`]).
pub fn parse_at(src: &str, dir: &Path) -> Result<Loaded, ConfigErrors> {
    let mut loaded = parse_in(src, Some(dir))?;
    loaded.config.resolve_paths(dir);
    loaded.names_files |= loaded.config.names_tls_files();
    let findings = crate::tls::check_files(&loaded.config);
    if findings.is_empty() {
        return Ok(loaded);
    }
    loaded.warnings.extend(findings);
    loaded
        .warnings
        .sort_by_key(|e| e.span.as_ref().map_or(0, |s| s.start));
    if loaded
        .warnings
        .iter()
        .any(|e| e.severity == Severity::Error)
    {
        return Err(ConfigErrors {
            items: loaded.warnings,
        });
    }
    Ok(loaded)
}

/// FNV-1a 64 of the text, as 16 hex digits.
pub fn source_hash(src: &str) -> String {
    source_hash_bytes(src.as_bytes())
}

fn source_hash_bytes(src: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    // A reload hashes on a paced background thread: let it pause between blocks (a
    // 700 KiB table is about a millisecond of hashing).
    for block in src.chunks(4096) {
        crate::background::pace();
        for &b in block {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}
