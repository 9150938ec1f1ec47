//! Database URLs as text: parsed strictly, shown without passwords, and
//! rewritten (another database, parameters dropped) without a round trip
//! through a parser that would lose what it does not know.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgSslMode};

/// `url` with its password replaced by `***`, for messages and logs.
///
/// ```
/// use mandrake_storage::redact_url;
/// assert_eq!(redact_url("postgres://app:S3cret@db/x"), "postgres://app:***@db/x");
/// assert_eq!(redact_url("postgres://db/x?password=S3cret&sslmode=require"),
///            "postgres://db/x?password=***&sslmode=require");
/// ```
pub fn redact_url(url: &str) -> String {
    let mut out = match userinfo_password(url) {
        Some(range) => format!("{}***{}", &url[..range.start], &url[range.end..]),
        None => url.to_owned(),
    };
    if let Some((base, query)) = out.clone().split_once('?') {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some(("password", _)) => "password=***".to_owned(),
                _ => pair.to_owned(),
            })
            .collect();
        out = format!("{base}?{}", pairs.join("&"));
    }
    out
}

/// Where the password of `user:password@host` stands in `url`, if it has one.
fn userinfo_password(url: &str) -> Option<std::ops::Range<usize>> {
    let authority = url.find("://").map_or(0, |i| i + 3);
    let end = url[authority..]
        .find(['/', '?'])
        .map_or(url.len(), |i| authority + i);
    let at = authority + url[authority..end].rfind('@')?;
    let colon = authority + url[authority..at].find(':')?;
    Some(colon + 1..at)
}

/// The query parameters sqlx reads from a URL, and ours (`pgbouncer`).
const URL_PARAMETERS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
    "pgbouncer",
];

/// A PostgreSQL URL parsed, refusing what sqlx would accept and ignore: another
/// scheme (`mysql://`), or a parameter it does not know (a typo such as
/// `sslmod=require` would silently connect without TLS). `sslmode` and
/// `sslrootcert` mean what libpq says: `sslrootcert=system` is the platform's
/// roots with `verify-full`, and `require` with a root file verifies as
/// `verify-ca` does.
pub(crate) fn parse_url(url: &str) -> std::result::Result<PgConnectOptions, String> {
    let scheme = url.split_once("://").map(|(s, _)| s);
    if !matches!(scheme, Some("postgres" | "postgresql")) {
        return Err(format!(
            "{} is not a PostgreSQL URL (postgres://user:password@host:port/database)",
            redact_url(url)
        ));
    }
    if let Some((_, query)) = url.split_once('?') {
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let key = pair.split_once('=').map_or(pair, |(k, _)| k);
            if !URL_PARAMETERS.contains(&key) {
                return Err(format!(
                    "unknown URL parameter {key:?}; known: {}",
                    URL_PARAMETERS.join(", ")
                ));
            }
        }
    }
    let param = |name: &str| {
        url.split_once('?').and_then(|(_, q)| {
            q.split('&')
                .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
        })
    };
    let mode = param("sslmode").or_else(|| param("ssl-mode"));
    let root = param("sslrootcert")
        .or_else(|| param("ssl-root-cert"))
        .or_else(|| param("ssl-ca"));
    // libpq's `sslrootcert=system`: the platform's trusted roots (what sqlx
    // loads when no root file is named), and nothing weaker than
    // verify-full, since any public CA's certificate would otherwise do.
    if root == Some("system") {
        let (url, _) = without_params(url, |p| {
            [
                "sslrootcert=system",
                "ssl-root-cert=system",
                "ssl-ca=system",
            ]
            .contains(&p)
        });
        return match mode {
            None | Some("verify-full") => PgConnectOptions::from_str(&url)
                .map(|o| o.ssl_mode(PgSslMode::VerifyFull))
                .map_err(|e| e.to_string()),
            Some(weaker) => Err(format!(
                "sslrootcert=system needs sslmode=verify-full (as libpq), not sslmode={weaker}"
            )),
        };
    }
    let options = PgConnectOptions::from_str(url).map_err(|e| e.to_string())?;
    // libpq: with a root certificate file, `require` verifies the chain as
    // `verify-ca` does.
    Ok(match (options.get_ssl_mode(), root) {
        (PgSslMode::Require, Some(_)) => options.ssl_mode(PgSslMode::VerifyCa),
        _ => options,
    })
}

/// `url` without a `pgbouncer=true` parameter, and whether it had one.
pub(crate) fn strip_pgbouncer(url: &str) -> (String, bool) {
    without_params(url, |pair| matches!(pair, "pgbouncer=true" | "pgbouncer=1"))
}

/// `url` without the query parameters (`key=value`) that `drop` picks, and
/// whether there were any.
pub(crate) fn without_params(url: &str, drop: impl Fn(&str) -> bool) -> (String, bool) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), false);
    };
    let (dropped, kept): (Vec<&str>, Vec<&str>) = query.split('&').partition(|p| drop(p));
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, !dropped.is_empty())
}

/// `url` with its database replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let authority = url.find("://").map_or(0, |i| i + 3);
    let end = url.find('?').unwrap_or(url.len());
    let path = url[authority..end].find('/').map_or(end, |i| authority + i);
    format!(
        "{}/{}{}",
        &url[..path],
        percent_encode(database),
        &url[end..]
    )
}

#[cfg(all(feature = "backup", unix))]
/// The password in `url` (`user:password@` or `?password=`), percent-decoded.
pub(crate) fn url_password(url: &str) -> Option<String> {
    let in_userinfo = userinfo_password(url).map(|range| &url[range]);
    let in_query = url
        .split_once('?')
        .and_then(|(_, q)| q.split('&').find_map(|p| p.strip_prefix("password=")));
    in_userinfo.or(in_query).map(percent_decode)
}

#[cfg(all(feature = "backup", unix))]
/// `postgres://user:secret@host/db` → `postgres://user@host/db`.
pub(crate) fn without_password(url: &str) -> String {
    match userinfo_password(url) {
        // The `:` before the password goes too.
        Some(range) => format!("{}{}", &url[..range.start - 1], &url[range.end..]),
        None => url.to_owned(),
    }
}

#[cfg(all(feature = "backup", unix))]
pub(crate) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = text
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
