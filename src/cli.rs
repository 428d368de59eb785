//! Command line: `run` (default), `check`, `explain`, `import`, `demo`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use tokio_util::sync::CancellationToken;

use crate::config::model::Action;
use crate::config::{self, ConfigError, LoadError};
use crate::http::normalize::{normalize_host, normalize_path};
use crate::observe::access_log::Sink;
use crate::router::{RequestInfo, Router};

#[derive(Parser, Debug)]
#[command(
    name = "switchyard",
    version,
    about = "An edge API gateway with a declarative route table"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Text,
    Json,
    Github,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum DiffFormat {
    Text,
    Markdown,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve (the default command).
    Run {
        #[arg(long, short, default_value = "routes.toml")]
        config: PathBuf,
    },
    /// Validate and lint a route table; exit 1 on errors (and on warnings with --strict).
    Check {
        #[arg(default_value = "routes.toml")]
        file: PathBuf,
        /// Warnings fail the check too.
        #[arg(long)]
        strict: bool,
        /// Output: `text` (for people), `json` (for tools), `github` (Actions annotations).
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Show which route and service would answer a request, and why.
    Explain {
        #[arg(long, short, default_value = "routes.toml")]
        config: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Request header, `-H 'name: value'`; may repeat.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// The client's address, for CIDR branch gates.
        #[arg(long, default_value = "127.0.0.1")]
        client: std::net::IpAddr,
        method: String,
        /// `http://host/path?query` or `/path?query`.
        url: String,
    },
    /// What changes from OLD to NEW: routes and services, and (with --replay) which
    /// real requests would be answered differently. Exit 1 when --fail-on-change paths
    /// are touched, 2 when a file is invalid.
    Diff {
        old: PathBuf,
        new: PathBuf,
        /// The gateway's JSON access log (or a plain list), `-` for stdin.
        #[arg(long)]
        replay: Option<PathBuf>,
        /// A plain list of requests, one `METHOD URL [name:value]...` per line.
        #[arg(long, conflicts_with = "replay")]
        requests: Option<PathBuf>,
        /// `text`, `markdown` (for a PR comment) or `json`.
        #[arg(long, value_enum, default_value_t = DiffFormat::Text)]
        format: DiffFormat,
        /// Fail (exit 1) when a route or a replayed request under this path changes.
        #[arg(long = "fail-on-change", value_name = "PATH")]
        fail_on_change: Vec<String>,
    },
    /// Translate an nginx configuration into a route table (stdout); notes on stderr.
    Import {
        file: PathBuf,
        /// Also run sample requests through nginx's location rules (as the importer
        /// models them) and through the imported table; exit 1 on any difference.
        #[arg(long)]
        verify: bool,
    },
    /// Run the shipped routes.toml with in-process demo backends for its services.
    Demo {
        #[arg(long, short, default_value = "routes.toml")]
        config: PathBuf,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    // As early as we can: pages faulted in before this stay huge. The allocator's
    // arena is already mapped by now (the runtime allocates before `main`); mimalloc is
    // built with `no_thp` so that it does not ask for huge pages for it (Cargo.toml).
    disable_huge_pages();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run {
        config: PathBuf::from("routes.toml"),
    }) {
        Command::Run { config } => serve(config, false),
        Command::Demo { config } => serve(config, true),
        Command::Check {
            file,
            strict,
            format,
        } => check(&file, strict, format),
        Command::Diff {
            old,
            new,
            replay,
            requests,
            format,
            fail_on_change,
        } => diff(
            &old,
            &new,
            replay.or(requests).as_deref(),
            format,
            &fail_on_change,
        ),
        Command::Import { file, verify } => crate::import::run(&file, verify),
        Command::Explain {
            config,
            json,
            headers,
            client,
            method,
            url,
        } => explain(&config, json, &headers, client, &method, &url),
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_current_span(false)
        .init();
}

/// No transparent huge pages for this process. Where the kernel's THP setting is
/// `always` (common), the allocator's 2 MiB-aligned arenas are backed by huge pages
/// and every first touch makes 2 MiB resident: a gateway with a ~10 MiB heap showed
/// 27 MiB peak RSS under load instead of 21 MiB, with no throughput difference
/// measured (e2e rig, c=64, three alternations). Memory per pod is what a platform
/// team sizes a gateway fleet by. Where the setting is `madvise`, mimalloc's own
/// `madvise(MADV_HUGEPAGE)` on its arena (made before `main`, so before this call)
/// did the same for the first pages: 21 -> 18 MiB once the `no_thp` feature
/// removed it.
fn disable_huge_pages() {
    #[cfg(target_os = "linux")]
    // An error (a kernel without the flag) leaves things as they were: harmless.
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

/// The runtime: tokio's multi-threaded scheduler with one worker per CPU the process
/// may use (`available_parallelism` honours cgroup CPU quotas; `TOKIO_WORKER_THREADS`
/// overrides it). With a single worker the current-thread scheduler does the same work
/// with less cross-thread bookkeeping: no work-stealing queues, and the accept loop runs
/// on the thread that serves the connections instead of handing each one over from
/// the main thread.
fn runtime_builder() -> tokio::runtime::Builder {
    let workers = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1);
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        // What tokio would pick itself; set here so that the count below is exact.
        builder.worker_threads(workers);
        builder
    };
    crate::background::track_workers(&mut builder, workers);
    builder
}

fn serve(config: PathBuf, demo: bool) -> ExitCode {
    init_logging();
    let runtime = match runtime_builder().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchyard: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Made with the first access-log line (see `Sink`); `_guard` flushes it at exit.
    let (sink, _guard) = Sink::lazy(|| {
        tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(64 * 1024)
            .finish(std::io::stdout())
    });
    let result = runtime.block_on(async {
        if demo {
            crate::demo::start_backends(&config)
                .await
                .map_err(|e| e.to_string())?;
        }
        crate::run::run(crate::run::Options {
            config,
            access_log: Some(sink),
            shutdown: CancellationToken::new(),
            signals: true,
        })
        .await
        .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(file: &Path, strict: bool, format: Format) -> ExitCode {
    let name = file.display().to_string();
    let src = match std::fs::read_to_string(file) {
        Ok(s) => s,
        Err(e) => {
            let finding = ConfigError::new("SY000", None, format!("cannot read: {e}"));
            print_findings(&name, "", &[finding], format, 0);
            return ExitCode::FAILURE;
        }
    };
    let (findings, summary) = match config::parse_at(&src, config::config_dir(file)) {
        Ok(loaded) => (
            loaded.warnings,
            Some((loaded.config.routes.len(), loaded.config.services.len())),
        ),
        Err(errors) => (errors.items, None),
    };
    let errors = findings
        .iter()
        .filter(|e| e.severity == config::Severity::Error)
        .count();
    let warnings = findings.len() - errors;
    print_findings(&name, &src, &findings, format, warnings);
    if format == Format::Text {
        match summary {
            Some((routes, services)) if errors == 0 => println!(
                "{name}: ok ({routes} routes, {services} services, {warnings} warning{})",
                if warnings == 1 { "" } else { "s" }
            ),
            _ => println!(
                "{name}: {errors} error{}, {warnings} warning{}",
                if errors == 1 { "" } else { "s" },
                if warnings == 1 { "" } else { "s" }
            ),
        }
    }
    if errors > 0 || (strict && warnings > 0) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn print_findings(name: &str, src: &str, items: &[ConfigError], format: Format, warnings: usize) {
    match format {
        Format::Text => {
            for e in items {
                print!("{}", e.render(name, src));
            }
        }
        Format::Json => {
            let findings: Vec<serde_json::Value> = items
                .iter()
                .map(|e| {
                    let (line, column) = e.line_col(src).unzip();
                    serde_json::json!({
                        "code": e.code,
                        "severity": severity(e),
                        "line": line,
                        "column": column,
                        "message": e.message,
                        "help": e.help,
                    })
                })
                .collect();
            let out = serde_json::json!({
                "file": name,
                "errors": items.len() - warnings,
                "warnings": warnings,
                "findings": findings,
            });
            println!("{out}");
        }
        Format::Github => {
            for e in items {
                let mut props = format!("file={}", gh_escape_property(name));
                if let Some((line, col)) = e.line_col(src) {
                    props.push_str(&format!(",line={line},col={col}"));
                }
                props.push_str(&format!(",title={}", e.code));
                let mut msg = e.message.clone();
                if let Some(h) = &e.help {
                    msg.push_str(&format!(" ({h})"));
                }
                println!("::{} {props}::{}", severity(e), gh_escape_data(&msg));
            }
        }
    }
}

fn severity(e: &ConfigError) -> &'static str {
    match e.severity {
        config::Severity::Error => "error",
        config::Severity::Warning => "warning",
    }
}

/// GitHub workflow-command escaping for the message part.
fn gh_escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// ... and for property values, which also may not contain `:` or `,`.
fn gh_escape_property(s: &str) -> String {
    gh_escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

fn load_for_diff(path: &Path) -> Option<crate::diff::Table> {
    match config::load(path) {
        Ok(l) => Some(crate::diff::Table::new(l.config)),
        Err(LoadError::Invalid { src, errors }) => {
            eprint!("{}", errors.render(&path.display().to_string(), &src));
            None
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            None
        }
    }
}

fn diff(
    old: &Path,
    new: &Path,
    replay: Option<&Path>,
    format: DiffFormat,
    protected: &[String],
) -> ExitCode {
    let (Some(a), Some(b)) = (load_for_diff(old), load_for_diff(new)) else {
        return ExitCode::from(2);
    };
    let changes = crate::diff::structural(&a.config, &b.config);
    let replayed = match replay {
        None => None,
        Some(p) => {
            let result = if p.as_os_str() == "-" {
                crate::diff::replay(&a, &b, std::io::stdin().lock(), protected)
            } else {
                match std::fs::File::open(p) {
                    Ok(f) => crate::diff::replay(
                        &a,
                        &b,
                        std::io::BufReader::with_capacity(1 << 20, f),
                        protected,
                    ),
                    Err(e) => Err(e),
                }
            };
            match result {
                Ok(r) => Some(r),
                Err(e) => {
                    eprintln!("{}: {e}", p.display());
                    return ExitCode::from(2);
                }
            }
        }
    };
    match format {
        DiffFormat::Json => println!(
            "{}",
            serde_json::json!({ "changes": changes, "replay": replayed })
        ),
        DiffFormat::Text => print!(
            "{}",
            crate::diff::render(&changes, replayed.as_ref(), false)
        ),
        DiffFormat::Markdown => {
            print!("{}", crate::diff::render(&changes, replayed.as_ref(), true))
        }
    }
    let protected_hit = !protected.is_empty()
        && (crate::diff::touches_protected(&changes, protected)
            || replayed.as_ref().is_some_and(|r| r.protected_changed > 0));
    if protected_hit {
        eprintln!("protected paths {protected:?} change: failing as asked by --fail-on-change");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn explain(
    config: &Path,
    json: bool,
    headers: &[String],
    client: std::net::IpAddr,
    method: &str,
    url: &str,
) -> ExitCode {
    let loaded = match config::load(config) {
        Ok(l) => l,
        Err(LoadError::Invalid { src, errors }) => {
            eprint!("{}", errors.render(&config.display().to_string(), &src));
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("{}: {e}", config.display());
            return ExitCode::FAILURE;
        }
    };
    let src = std::fs::read_to_string(config).unwrap_or_default();
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        eprintln!("`{method}` is not an HTTP method");
        return ExitCode::FAILURE;
    };
    let Ok(uri) = url.parse::<http::Uri>() else {
        eprintln!("`{url}` is not a URL");
        return ExitCode::FAILURE;
    };
    let mut map = HeaderMap::new();
    for h in headers {
        let parsed = h.split_once(':').and_then(|(k, v)| {
            Some((
                HeaderName::from_bytes(k.trim().as_bytes()).ok()?,
                HeaderValue::from_str(v.trim()).ok()?,
            ))
        });
        match parsed {
            Some((k, v)) => {
                map.append(k, v);
            }
            None => {
                eprintln!("`{h}` is not a header: write -H 'name: value'");
                return ExitCode::FAILURE;
            }
        }
    }
    let raw_host = uri.authority().map(|a| a.as_str().to_string()).or_else(|| {
        map.get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
    });
    let host = raw_host.as_deref().and_then(normalize_host);
    let raw_path = if uri.path().is_empty() {
        "/"
    } else {
        uri.path()
    };
    let path = match normalize_path(raw_path) {
        Ok(p) => p,
        Err(e) => {
            let out =
                serde_json::json!({"status": 400, "error": "bad_path", "detail": format!("{e:?}")});
            if json {
                println!("{out}");
            } else {
                println!("400 bad_path: the path cannot be normalised ({e:?})");
            }
            return ExitCode::SUCCESS;
        }
    };
    let router = Router::new(&loaded.config);
    let info = RequestInfo {
        method: &method,
        host: host.as_deref(),
        path: &path,
        query: uri.query(),
        headers: &map,
    };
    let steps = router.explain(&info);
    let line_of = |r: &crate::config::model::Route| {
        ConfigError::new("", Some(r.span.clone()), "")
            .line_col(&src)
            .map_or(0, |(l, _)| l)
    };
    let matched = steps
        .iter()
        .find(|(_, res)| res.is_ok())
        .map(|(id, _)| &router.routes()[*id]);
    let candidates: Vec<serde_json::Value> = steps
        .iter()
        .map(|(id, res)| {
            let r = &router.routes()[*id];
            serde_json::json!({
                "route": r.name,
                "line": line_of(r),
                "host": r.host.as_ref().map(|h| h.to_string()),
                "path": describe_path(&r.path),
                "matched": res.is_ok(),
                "reason": res.as_ref().err().map(|e| e.to_string()),
            })
        })
        .collect();
    let q = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let result = match matched.map(|r| (r, &r.action)) {
        Some((r, Action::Forward(f))) => {
            let services = &loaded.config.services;
            let backends: Vec<serde_json::Value> = f
                .backends
                .iter()
                .map(|b| {
                    let s = &services[b.service];
                    serde_json::json!({
                        "service": s.name,
                        "weight": b.weight,
                        "endpoints": s.endpoints.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
                    })
                })
                .collect();
            let single =
                (f.backends.len() == 1).then(|| services[f.backends[0].service].name.clone());
            let policy = crate::policy::explain::explain(&loaded.config, f, &map, client, None);
            let single = if f.policy.is_some() || loaded.config.policy.branches.is_some() {
                policy["service"].as_str().map(str::to_string)
            } else {
                single
            };
            serde_json::json!({
                "status": if f.total_weight == 0 { serde_json::json!(500) } else { serde_json::json!("proxied") },
                "route": r.name,
                "normalized_path": path,
                "upstream_path": format!("{}{q}", r.upstream_path(&path)),
                "upstream_host": f.host.as_ref().and_then(|h| h.to_str().ok()),
                "service": single,
                "backends": backends,
                "timeout_ms": f.timeout.unwrap_or(loaded.config.defaults.request_timeout).as_millis() as u64,
                "policy": policy,
                "candidates": candidates,
            })
        }
        Some((r, Action::Redirect(rd))) => serde_json::json!({
            "status": rd.status,
            "route": r.name,
            "normalized_path": path,
            "redirect": {
                "scheme": rd.scheme,
                "host": rd.host,
                "port": rd.port,
                "path": format!("{}{q}", r.upstream_path(&path)),
            },
            "candidates": candidates,
        }),
        None => serde_json::json!({
            "status": 404,
            "error": "no_route",
            "normalized_path": path,
            "candidates": candidates,
        }),
    };
    if json {
        println!("{result}");
        return ExitCode::SUCCESS;
    }
    println!("request:         {method} {uri}");
    println!("host:            {}", host.as_deref().unwrap_or("(none)"));
    println!("normalised path: {path}");
    if candidates.is_empty() {
        println!("candidates:      none");
    } else {
        println!("candidates (in precedence order):");
        for (i, c) in candidates.iter().enumerate() {
            let verdict = match c["reason"].as_str() {
                Some(reason) => format!("skipped: {reason}"),
                None => "MATCH".to_string(),
            };
            println!(
                "  {}. {} (line {}) host={} {} -> {verdict}",
                i + 1,
                c["route"].as_str().unwrap_or(""),
                c["line"],
                c["host"].as_str().unwrap_or("*"),
                c["path"].as_str().unwrap_or(""),
            );
        }
    }
    println!(
        "route:           {}",
        result["route"].as_str().unwrap_or("(none)")
    );
    if let Some(backends) = result["backends"].as_array() {
        for b in backends {
            let endpoints: Vec<&str> = b["endpoints"]
                .as_array()
                .map(|a| a.iter().filter_map(|e| e.as_str()).collect())
                .unwrap_or_default();
            println!(
                "service:         {} weight {} ({})",
                b["service"].as_str().unwrap_or(""),
                b["weight"],
                endpoints.join(", ")
            );
        }
        println!(
            "upstream path:   {}",
            result["upstream_path"].as_str().unwrap_or("")
        );
        if let Some(h) = result["upstream_host"].as_str() {
            println!("upstream host:   {h}");
        }
        println!("timeout:         {}ms", result["timeout_ms"]);
        for step in result["policy"]["steps"].as_array().into_iter().flatten() {
            println!("policy:          {}", step.as_str().unwrap_or(""));
        }
        if let Some(s) = result["service"].as_str() {
            println!("answered by:     {s}");
        }
    }
    if result["redirect"].is_object() {
        println!(
            "result:          {} redirect {}",
            result["status"], result["redirect"]
        );
    }
    if result["status"] == 404 {
        println!("result:          404 no_route");
    } else if result["status"] == 500 {
        println!("result:          500 no_backend (every backend has weight 0)");
    }
    ExitCode::SUCCESS
}

fn describe_path(p: &crate::config::model::PathMatch) -> String {
    match p {
        crate::config::model::PathMatch::Exact(p) => format!("exact {p}"),
        crate::config::model::PathMatch::Prefix(p) => format!("prefix {p}"),
    }
}
