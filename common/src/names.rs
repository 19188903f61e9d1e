//! Name rules shared by pipeline specs and certificates, kept in one place so a name accepted
//! in a pipeline file is accepted everywhere else (store keys, file names, identities).

/// Longest stage, environment, metric or identity name accepted.
pub const MAX_NAME_LEN: usize = 128;

/// `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most [`MAX_NAME_LEN`] bytes. Such a name is never `.`,
/// `..` or a path with `/`, so it is safe as a file name.
pub fn is_valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(first) if first.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    name.len() <= MAX_NAME_LEN
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Explains why `name` is not valid, or `None` if it is.
pub fn name_problem(name: &str) -> Option<String> {
    if is_valid_name(name) {
        None
    } else if name.len() > MAX_NAME_LEN {
        Some(format!(
            "name is {} bytes long; the limit is {MAX_NAME_LEN}",
            name.len()
        ))
    } else {
        Some(format!(
            "`{name}` is not a valid name (use letters, digits, `_`, `.` and `-`, starting with a letter or digit)"
        ))
    }
}

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    match bytes.next() {
        Some(first) if first.is_ascii_alphabetic() || first == b'_' => {}
        _ => return false,
    }
    bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "build", "deploy-production", "v1.2_x", "9lives"] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "../x",
            ".",
            "..",
            "-a",
            "_a",
            "a/b",
            "a b",
            "é",
            &"a".repeat(129),
        ] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn env_names() {
        for ok in ["A", "_X", "PATH", "my_var2"] {
            assert!(is_valid_env_name(ok), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A.B", "A B", "A=B"] {
            assert!(!is_valid_env_name(bad), "{bad}");
        }
    }
}
