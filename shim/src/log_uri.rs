//! Log URIs containerd may pass instead of output FIFO paths (`ctr run --log-uri`, nerdctl):
//! which ones are accepted and what they name. `file:///PATH` appends stdout and stderr to PATH;
//! `binary:///PATH?k=v&env.K=V` starts PATH as the process's logger ([`crate::log_binary`]).
//!
//! As runc's shim: the URI is stdout's (stderr goes where stdout goes); a query's keys and
//! first values become the logger's arguments (`?k=v` gives `k v`, `?k` gives `k ""`) and
//! `env.K=V` its environment; any other scheme is an `unknown STDIO scheme`. Stricter than
//! runc's shim, each refusal naming the URI: a host (runc drops it: `binary://usr/bin/x` would
//! run `/bin/x`), a path that is not absolute and clean, a query or fragment on `file:`, a
//! fragment on `binary:`, a stderr that names a different destination than the URI, a bad `%`
//! escape.

use std::fmt;
use std::path::PathBuf;

/// What a log URI asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogUri {
    /// Both outputs appended to this file.
    File(PathBuf),
    /// Both outputs piped to this logger.
    Binary(LoggerCommand),
}

/// A logger to start: the program, its arguments and the environment the query adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggerCommand {
    /// The URI as given (for messages).
    pub uri: String,
    pub path: PathBuf,
    pub args: Vec<String>,
    /// From `env.K=V` query keys (never `CONTAINER_ID` or `CONTAINER_NAMESPACE`).
    pub env: Environment,
}

/// Variables as (name, value).
type Environment = Vec<(String, String)>;

/// A log URI that is refused: the URI and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLogUri {
    pub uri: String,
    pub reason: String,
}

impl fmt::Display for BadLogUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "log URI {:?}: {}", self.uri, self.reason)
    }
}

impl std::error::Error for BadLogUri {}

/// The log URI the outputs name, if they name one (`None`: FIFO or file paths, handled as
/// such). Stdout decides, as in runc's shim; stderr must be empty or the same URI.
pub fn from_outputs(stdout: &str, stderr: &str) -> Result<Option<LogUri>, BadLogUri> {
    let Some(uri) = parse(stdout)? else {
        if scheme_of(stderr).is_some() {
            return Err(bad(
                stderr,
                "stderr is a log URI while stdout is not (a log URI is given as stdout)",
            ));
        }
        return Ok(None);
    };
    if !stderr.is_empty() && stderr != stdout {
        return Err(bad(
            stdout,
            &format!("stderr {stderr:?} differs (a log URI takes both outputs)"),
        ));
    }
    Ok(Some(uri))
}

/// `value` as a log URI; `None` when it is a path (absolute, or without a scheme).
pub fn parse(value: &str) -> Result<Option<LogUri>, BadLogUri> {
    let Some(scheme) = scheme_of(value) else {
        return Ok(None);
    };
    let is_file = match scheme.to_ascii_lowercase().as_str() {
        "file" => true,
        "binary" => false,
        _ => {
            return Err(bad(
                value,
                &format!("unknown STDIO scheme {scheme:?} (file and binary are supported)"),
            ))
        }
    };
    let rest = &value[scheme.len() + 1..];
    let (rest, fragment) = split_once_or(rest, '#');
    let (rest, query) = split_once_or(rest, '?');
    let path = match rest.strip_prefix("//") {
        Some(authority_and_path) => {
            let (host, path) = match authority_and_path.find('/') {
                Some(i) => authority_and_path.split_at(i),
                None => (authority_and_path, ""),
            };
            if !host.is_empty() {
                return Err(bad(
                    value,
                    &format!("has host {host:?}; a log URI names a local path: {scheme}:///PATH"),
                ));
            }
            path
        }
        None => rest,
    };
    if is_file {
        if query.is_some() || fragment.is_some() {
            return Err(bad(value, "a file log URI takes no query or fragment"));
        }
        return Ok(Some(LogUri::File(clean_path(value, path)?)));
    }
    if fragment.is_some() {
        return Err(bad(value, "a binary log URI takes no fragment"));
    }
    let path = clean_path(value, path)?;
    let (args, env) = logger_args(value, query.unwrap_or(""))?;
    Ok(Some(LogUri::Binary(LoggerCommand {
        uri: value.to_string(),
        path,
        args,
        env,
    })))
}

/// The scheme `value` starts with (`scheme:`), if it is not a path.
fn scheme_of(value: &str) -> Option<&str> {
    if value.starts_with('/') {
        return None;
    }
    let end = value.find(':')?;
    let scheme = &value[..end];
    let mut chars = scheme.chars();
    let first = chars.next()?;
    let valid = first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some(scheme)
}

fn split_once_or(s: &str, sep: char) -> (&str, Option<&str>) {
    match s.split_once(sep) {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    }
}

fn bad(uri: &str, reason: &str) -> BadLogUri {
    BadLogUri {
        uri: uri.to_string(),
        reason: reason.to_string(),
    }
}

/// The URI's path, decoded: absolute and clean (no `.`, `..` or empty component, no NUL).
fn clean_path(uri: &str, raw: &str) -> Result<PathBuf, BadLogUri> {
    let path = decode(uri, raw, false)?;
    let not = |why: &str| bad(uri, &format!("path {path:?} {why}"));
    if !path.starts_with('/') {
        return Err(not("is not absolute"));
    }
    if path.contains('\0') {
        return Err(not("holds a NUL byte"));
    }
    if path.len() == 1 || path.ends_with('/') || path.contains("//") {
        return Err(not("is not a clean file path"));
    }
    if path.split('/').any(|c| c == "." || c == "..") {
        return Err(not("is not clean (`.` or `..`)"));
    }
    Ok(PathBuf::from(path))
}

/// The logger's arguments and environment from the query, in the URI's order, each key once
/// (its first value, as Go's `url.Values.Get`).
#[allow(clippy::type_complexity)]
fn logger_args(uri: &str, query: &str) -> Result<(Vec<String>, Vec<(String, String)>), BadLogUri> {
    let mut seen: Vec<String> = Vec::new();
    let mut args = Vec::new();
    let mut env = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = split_once_or(pair, '=');
        let key = decode(uri, k, true)?;
        let value = decode(uri, v.unwrap_or(""), true)?;
        if key.contains('\0') || value.contains('\0') {
            return Err(bad(uri, &format!("query key {key:?} holds a NUL byte")));
        }
        if seen.contains(&key) {
            continue;
        }
        seen.push(key.clone());
        match key.strip_prefix("env.") {
            Some(name) => {
                if name.is_empty() || name.contains('=') {
                    return Err(bad(uri, &format!("query key {key:?}: bad variable name")));
                }
                if name != "CONTAINER_ID" && name != "CONTAINER_NAMESPACE" {
                    env.push((name.to_string(), value));
                }
            }
            None => {
                args.push(key);
                args.push(value);
            }
        }
    }
    Ok((args, env))
}

/// Percent-decode `s` (and `+` as a space in a query).
fn decode(uri: &str, s: &str, query: bool) -> Result<String, BadLogUri> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| bad(uri, &format!("bad % escape in {s:?}")))?;
                out.push(hex);
                i += 3;
            }
            b'+' if query => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| bad(uri, &format!("{s:?} decodes to invalid UTF-8")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary(uri: &str) -> LoggerCommand {
        match parse(uri).unwrap().unwrap() {
            LogUri::Binary(c) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn paths_are_not_uris() {
        assert_eq!(parse("").unwrap(), None);
        assert_eq!(parse("/run/containerd/fifo/x-stdout").unwrap(), None);
        assert_eq!(parse("/a:b").unwrap(), None);
        assert_eq!(parse("relative/out").unwrap(), None);
    }

    #[test]
    fn file_uris_name_an_absolute_clean_path() {
        assert_eq!(
            parse("file:///var/log/x%20y.log").unwrap(),
            Some(LogUri::File("/var/log/x y.log".into()))
        );
        assert_eq!(
            parse("FILE:/var/log/x").unwrap(),
            Some(LogUri::File("/var/log/x".into()))
        );
        for uri in [
            "file://host/var/log/x",
            "file://",
            "file:///",
            "file:relative",
            "file:///a/../etc/shadow",
            "file:///a/./b",
            "file:///a//b",
            "file:///a/",
            "file:///a%00b",
            "file:///a%zz",
            "file:///a?x=1",
            "file:///a#f",
        ] {
            let e = parse(uri).unwrap_err();
            assert_eq!(e.uri, uri);
            assert!(e.to_string().contains(uri), "{e}");
        }
    }

    #[test]
    fn binary_query_gives_arguments_and_environment_as_runc() {
        let c = binary("binary:///usr/bin/logger?-tag=a+b&-v&x=%2F&env.LEVEL=debug&env.CONTAINER_ID=evil&-tag=second");
        assert_eq!(c.path, PathBuf::from("/usr/bin/logger"));
        assert_eq!(c.args, ["-tag", "a b", "-v", "", "x", "/"]);
        assert_eq!(c.env, [("LEVEL".to_string(), "debug".to_string())]);
        let c = binary("binary:///l");
        assert!(c.args.is_empty() && c.env.is_empty());
        for uri in [
            "binary://usr/bin/logger",
            "binary:///l#x",
            "binary:///l?env.=x",
            "binary:///../l",
            "binary:///l?a=%0",
        ] {
            assert!(parse(uri).is_err(), "{uri}");
        }
    }

    #[test]
    fn unknown_schemes_are_refused_by_uri() {
        let e = parse("syslog://x").unwrap_err();
        assert!(e.to_string().contains("unknown STDIO scheme"), "{e}");
        assert!(e.to_string().contains("syslog://x"), "{e}");
        assert!(parse("fifo:///run/x").is_err());
    }

    #[test]
    fn stdout_decides_and_stderr_must_agree() {
        let uri = "file:///var/log/x";
        assert!(from_outputs(uri, uri).unwrap().is_some());
        assert!(from_outputs(uri, "").unwrap().is_some());
        assert!(from_outputs(uri, "/run/fifo/err").is_err());
        assert!(from_outputs("/run/fifo/out", uri).is_err());
        assert_eq!(
            from_outputs("/run/fifo/out", "/run/fifo/err").unwrap(),
            None
        );
        assert_eq!(from_outputs("", "").unwrap(), None);
    }
}
