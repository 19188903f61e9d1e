//! Value rules for a stage's container options: image references, CPU counts, memory sizes
//! and users. They follow what Docker itself accepts, so a stage the spec takes is one the
//! Docker executor can start rather than one that fails on the agent.
//!
//! Each helper looks at one value and explains what is wrong with it; `convert` turns the
//! explanation into an error at the field's line.

/// Smallest `resources.cpus`: Docker's smallest CPU limit (a CFS quota of 1 ms per 100 ms).
pub const MIN_CPUS: f64 = 0.01;
/// Largest `resources.cpus`.
pub const MAX_CPUS: f64 = 1024.0;
/// Smallest `resources.memory`: Docker refuses memory limits below 6 MiB.
pub const MIN_MEMORY_BYTES: u64 = 6 * MIB;
/// Largest `resources.memory`: 1 TiB.
pub const MAX_MEMORY_BYTES: u64 = 1 << 40;
/// Longest `user` accepted, in characters.
pub const MAX_USER_LEN: usize = 64;
/// Longest image repository name (registry host and path, without tag or digest), as Docker.
pub const MAX_IMAGE_NAME_LEN: usize = 255;
/// Longest image tag, as Docker.
const MAX_TAG_LEN: usize = 128;

const MIB: u64 = 1 << 20;

/// Binary size units: `k` = 1024 bytes.
const SIZE_UNITS: [(char, u64); 4] = [
    ('k', 1 << 10),
    ('m', 1 << 20),
    ('g', 1 << 30),
    ('t', 1 << 40),
];

/// Parses a size such as `256m`, `256M`, `256Mi`, `512MiB`, `1.5g` or `1048576` into bytes,
/// rounded to the nearest byte. Units are binary (`1k` = 1024 bytes) whatever their case,
/// may be followed by `i` and/or `b`, and may be separated from the number by spaces; a bare
/// number (or one with just `b`) is bytes. Ranges are not checked here. The error names the
/// bad text.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let bad = |why: &str| format!("invalid size `{text}`: {why}");
    let s = text.trim();
    if s.is_empty() {
        return Err(bad("it is empty (write e.g. `256m` or `1g`)"));
    }
    if s.starts_with('-') {
        return Err(bad("it must not be negative"));
    }
    let number_len = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(number_len);
    if !is_plain_decimal(number) {
        return Err(bad(
            "expected a number (digits, optionally with a fraction such as `1.5`) and a unit, \
             e.g. `256m` or `1.5g`",
        ));
    }
    let unit = unit.trim_start();
    let multiplier = size_multiplier(unit).ok_or_else(|| {
        bad(&format!(
            "unknown unit `{unit}` (use k, m, g or t, e.g. `256m` or `1.5g`; units are \
             binary: 1k = 1024 bytes)"
        ))
    })?;
    let value: f64 = number
        .parse()
        .map_err(|_| bad("the number cannot be read"))?;
    let bytes = (value * multiplier as f64).round();
    // Anything past u64 is far over any limit; saturate rather than wrap.
    Ok(if bytes >= u64::MAX as f64 {
        u64::MAX
    } else {
        bytes as u64
    })
}

/// `digits` or `digits.digits`.
fn is_plain_decimal(s: &str) -> bool {
    let (whole, fraction) = match s.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (s, None),
    };
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    digits(whole) && fraction.is_none_or(digits)
}

/// Bytes per unit for `""`, `b`, `k`, `ki`, `kb`, `kib` (any case), and so on for m, g, t.
fn size_multiplier(unit: &str) -> Option<u64> {
    let lower = unit.to_ascii_lowercase();
    if lower.is_empty() || lower == "b" {
        return Some(1);
    }
    let mut chars = lower.chars();
    let letter = chars.next()?;
    let (_, multiplier) = SIZE_UNITS.iter().find(|(c, _)| *c == letter)?;
    match chars.as_str() {
        "" | "i" | "b" | "ib" => Some(*multiplier),
        _ => None,
    }
}

/// `bytes` for a message: `4194304 bytes (4 MiB)`, `5000000 bytes (about 4.77 MiB)`, or
/// `512 bytes` below 1 KiB.
pub(crate) fn describe_bytes(bytes: u64) -> String {
    let units = [
        ("TiB", 1u64 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    match units.iter().find(|(_, size)| bytes >= *size) {
        Some((name, size)) => {
            let amount = (bytes as f64 / *size as f64 * 100.0).round() / 100.0;
            // Say when the amount is rounded, so 6291455 bytes does not read as exactly 6 MiB.
            let about = if amount * *size as f64 == bytes as f64 {
                ""
            } else {
                "about "
            };
            let amount = format!("{amount:.2}");
            let amount = amount.trim_end_matches('0').trim_end_matches('.');
            format!("{bytes} bytes ({about}{amount} {name})")
        }
        None => format!("{bytes} bytes"),
    }
}

/// A CPU count written as a string (`"0.5"`, as in Compose files): a plain decimal only.
pub(crate) fn parse_cpus_text(text: &str) -> Option<f64> {
    let s = text.trim();
    if is_plain_decimal(s) {
        s.parse().ok()
    } else {
        None
    }
}

/// Why `user` is not a valid `user:` value, or `None`. A user is a name or uid, optionally
/// followed by `:group` or `:gid`: `[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)?`, at most
/// [`MAX_USER_LEN`] characters.
pub(crate) fn user_problem(user: &str) -> Option<String> {
    if user.trim().is_empty() {
        return Some("must not be empty".to_string());
    }
    if user.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some(format!("user `{user}` must not contain whitespace"));
    }
    let len = user.chars().count();
    if len > MAX_USER_LEN {
        return Some(format!(
            "user is {len} characters long; the limit is {MAX_USER_LEN}"
        ));
    }
    let part = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    };
    let valid = match user.split_once(':') {
        Some((name, group)) => part(name) && part(group),
        None => part(user),
    };
    if valid {
        None
    } else {
        Some(format!(
            "`{user}` is not a valid user (write a name or uid, optionally followed by \
             `:group` or `:gid`, e.g. `1000:1000`; use letters, digits, `_`, `.` and `-`)"
        ))
    }
}

/// Why `image` is not a valid Docker image reference, or `None`.
///
/// A reference is `[host[:port]/]path[:tag][@digest]`, as Docker's reference grammar:
/// - the host is dotted DNS labels (letters, digits, inner `-`), `localhost`, or `[ipv6]`,
///   with an optional numeric port; the first `/`-separated part is a host only when it
///   holds a `.` or `:` or is `localhost` (so `Conveyor/builder` is a path that is not
///   lowercase, rather than a registry called `Conveyor`);
/// - each path component is lowercase letters and digits, separated by `.`, `_`, `__` or
///   runs of `-`;
/// - the host and path together are at most [`MAX_IMAGE_NAME_LEN`] characters;
/// - a tag is `[A-Za-z0-9_][A-Za-z0-9_.-]*`, at most 128 characters;
/// - a digest is `sha256:` with 64 lowercase hex digits (or `sha384:` 96, `sha512:` 128).
pub(crate) fn image_problem(image: &str) -> Option<String> {
    if image.trim().is_empty() {
        return Some("must not be empty".to_string());
    }
    let reason = image_reason(image)?;
    // Do not echo very long references back whole.
    Some(if image.chars().count() <= 80 {
        format!("`{image}` is not a valid image reference: {reason}")
    } else {
        format!("not a valid image reference: {reason}")
    })
}

fn image_reason(image: &str) -> Option<String> {
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("it contains whitespace".to_string());
    }
    let (rest, digest) = match image.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (image, None),
    };
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if name.is_empty() {
        return Some("the repository name is missing (write e.g. `alpine:3.20`)".to_string());
    }
    let name_len = name.chars().count();
    if name_len > MAX_IMAGE_NAME_LEN {
        return Some(format!(
            "the repository name is {name_len} characters long; the limit is \
             {MAX_IMAGE_NAME_LEN}"
        ));
    }
    let path = match name.split_once('/') {
        Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
            if !is_valid_host(first) {
                return Some(format!(
                    "the registry host `{first}` is not valid (use a host name such as \
                     `registry.example.com`, optionally with a port: `localhost:5000`)"
                ));
            }
            path
        }
        _ => name,
    };
    for component in path.split('/') {
        if component.is_empty() {
            return Some(
                "the repository name has an empty path component (`//`, or a `/` at the \
                 start or end)"
                    .to_string(),
            );
        }
        if !is_path_component(component) {
            return Some(if is_path_component(&component.to_ascii_lowercase()) {
                format!("the repository name must be lowercase (`{component}`)")
            } else {
                format!(
                    "`{component}` is not a valid repository path component (use lowercase \
                     letters and digits, separated by `.`, `_`, `__` or `-`)"
                )
            });
        }
    }
    if let Some(tag) = tag
        && !is_valid_tag(tag)
    {
        return Some(if tag.is_empty() {
            "the tag after `:` is empty".to_string()
        } else {
            format!(
                "the tag `{tag}` is not valid (use letters, digits, `_`, `.` and `-`, not \
                 starting with `.` or `-`, at most {MAX_TAG_LEN} characters)"
            )
        });
    }
    if let Some(digest) = digest
        && !is_valid_digest(digest)
    {
        return Some(
            "the digest after `@` must be `sha256:` followed by 64 lowercase hex digits \
             (or `sha384:` with 96, `sha512:` with 128)"
                .to_string(),
        );
    }
    None
}

/// `label(.label)*[:port]` (which covers `localhost`) or `[ipv6][:port]`.
fn is_valid_host(host: &str) -> bool {
    let (name_ok, port) = match host.strip_prefix('[') {
        Some(inner) => {
            let Some((addr, after)) = inner.split_once(']') else {
                return false;
            };
            let port = match after {
                "" => None,
                _ => match after.strip_prefix(':') {
                    Some(port) => Some(port),
                    None => return false,
                },
            };
            let ipv6 =
                addr.contains(':') && addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
            (ipv6, port)
        }
        None => {
            let (name, port) = match host.split_once(':') {
                Some((name, port)) => (name, Some(port)),
                None => (host, None),
            };
            (name.split('.').all(is_dns_label), port)
        }
    };
    name_ok && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Letters, digits and inner `-`.
fn is_dns_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        }
        _ => false,
    }
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or one or more `-`.
fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    loop {
        let start = i;
        while i < bytes.len() && alnum(bytes[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        let sep_start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &component[sep_start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn is_valid_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut bytes = tag.bytes();
    match bytes.next() {
        Some(first) if word(first) => {}
        _ => return false,
    }
    tag.len() <= MAX_TAG_LEN && bytes.all(|b| word(b) || matches!(b, b'.' | b'-'))
}

/// `sha256:` + 64, `sha384:` + 96 or `sha512:` + 128 lowercase hex digits.
fn is_valid_digest(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return false;
    };
    let len = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return false,
    };
    hex.len() == len
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (text, bytes) in [
            ("256m", 268_435_456),
            ("256M", 268_435_456),
            ("256Mi", 268_435_456),
            ("256MiB", 268_435_456),
            ("256mb", 268_435_456),
            ("256 MiB", 268_435_456),
            ("1g", 1 << 30),
            ("1.5g", 1_610_612_736),
            ("0.1g", 107_374_182),
            ("6m", 6 << 20),
            ("1t", 1 << 40),
            ("64k", 65_536),
            ("1048576", 1_048_576),
            ("1048576b", 1_048_576),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for (text, why) in [
            ("", "it is empty"),
            ("-1g", "must not be negative"),
            ("256x", "unknown unit `x`"),
            ("256mm", "unknown unit `mm`"),
            ("1p", "unknown unit `p`"),
            ("g", "expected a number"),
            ("1.g", "expected a number"),
            (".5g", "expected a number"),
            ("1.2.3g", "expected a number"),
            ("1e9", "unknown unit `e9`"),
        ] {
            let err = parse_size(text).expect_err(text);
            assert!(err.contains(why), "{text}: {err}");
        }
        assert_eq!(parse_size(&"9".repeat(40)), Ok(u64::MAX));
    }

    #[test]
    fn bytes_for_messages() {
        assert_eq!(describe_bytes(512), "512 bytes");
        assert_eq!(describe_bytes(4 << 20), "4194304 bytes (4 MiB)");
        assert_eq!(describe_bytes(5_000_000), "5000000 bytes (about 4.77 MiB)");
        assert_eq!(describe_bytes(2 << 40), "2199023255552 bytes (2 TiB)");
        assert_eq!(describe_bytes(1_610_612_736), "1610612736 bytes (1.5 GiB)");
        assert_eq!(describe_bytes((6 << 20) - 1), "6291455 bytes (about 6 MiB)");
    }

    #[test]
    fn cpus_text() {
        assert_eq!(parse_cpus_text("0.5"), Some(0.5));
        assert_eq!(parse_cpus_text(" 2 "), Some(2.0));
        for bad in ["", "two", "-1", "1e3", "0x2", "inf", "NaN", "1."] {
            assert_eq!(parse_cpus_text(bad), None, "{bad}");
        }
    }

    #[test]
    fn users() {
        for ok in [
            "1000",
            "1000:1000",
            "app",
            "app:staff",
            "www-data",
            "a.b_c-d:0",
        ] {
            assert_eq!(user_problem(ok), None, "{ok}");
        }
        for bad in ["", " ", "a b", "a:", ":a", "a:b:c", "app/x", "ü", "a\tb"] {
            assert!(user_problem(bad).is_some(), "{bad}");
        }
        assert_eq!(user_problem(&"u".repeat(64)), None);
        assert!(user_problem(&"u".repeat(65)).is_some());
    }

    #[test]
    fn image_references() {
        let sha = "a".repeat(64);
        let with_digest = format!("alpine@sha256:{sha}");
        let tagged_digest = format!("ghcr.io/org/app:1.2@sha256:{sha}");
        let sha512 = format!("alpine@sha512:{}", "0".repeat(128));
        let long_ok = format!("{}/app", "a".repeat(251));
        for ok in [
            "alpine",
            "alpine:3.20",
            "conveyor/builder:local",
            "library/ubuntu:22.04",
            "ghcr.io/org/app",
            "registry.example.com:5000/team/app:v1.2.3-rc_1",
            "localhost/app",
            "localhost:5000/app:latest",
            "[::1]:5000/app",
            "my-registry.local/a__b/c.d/e---f:TAG_1",
            "foo.bar",
            with_digest.as_str(),
            tagged_digest.as_str(),
            sha512.as_str(),
            long_ok.as_str(),
        ] {
            assert_eq!(image_problem(ok), None, "{ok}");
        }
        for (bad, why) in [
            ("", "must not be empty"),
            ("alpine 3", "whitespace"),
            ("Alpine", "must be lowercase"),
            ("Conveyor/builder:1", "must be lowercase (`Conveyor`)"),
            ("ghcr.io/Org/app", "must be lowercase (`Org`)"),
            ("a//b", "empty path component"),
            ("/alpine", "empty path component"),
            ("alpine/", "empty path component"),
            ("-alpine", "not a valid repository path component"),
            ("alp..ine", "not a valid repository path component"),
            ("alp_-ine", "not a valid repository path component"),
            ("alpine:", "tag after `:` is empty"),
            ("alpine:.x", "the tag `.x` is not valid"),
            (
                "alpine:a:b",
                "`alpine:a` is not a valid repository path component",
            ),
            (":latest", "repository name is missing"),
            ("alpine@sha256:abc", "digest"),
            ("alpine@md5:0123456789abcdef0123456789abcdef", "digest"),
            ("bad_host.io/app", "registry host `bad_host.io`"),
            ("host.io:port/app", "registry host `host.io:port`"),
            ("-x.io/app", "registry host `-x.io`"),
            ("[zz]:5000/app", "registry host `[zz]:5000`"),
        ] {
            let problem = image_problem(bad).unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(problem.contains(why), "{bad}: {problem}");
        }
        let digest_upper = format!("alpine@sha256:{}", "A".repeat(64));
        assert!(image_problem(&digest_upper).is_some());
        let too_long = format!("{}/app", "a".repeat(252));
        let problem = image_problem(&too_long).expect("too long");
        assert_eq!(
            problem,
            "not a valid image reference: the repository name is 256 characters long; the \
             limit is 255"
        );
        let long_tag = format!("alpine:{}", "t".repeat(129));
        assert!(image_problem(&long_tag).is_some());
    }
}
