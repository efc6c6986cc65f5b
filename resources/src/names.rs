//! Kubernetes' name rules where a manifest carries names that become selectors or
//! IP-set members: label keys and values, container port names. A name the API
//! server would refuse is refused here too, so that no object applies here that
//! could not exist in a cluster.

/// A label name, or the name part of a qualified key: 1-63 characters,
/// alphanumerics with `-`, `_`, `.` inside.
fn label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A DNS subdomain (a qualified key's prefix): at most 253 characters, dot-separated
/// lowercase labels of alphanumerics and `-`.
fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

/// Why `key` is not a valid label key (`[prefix/]name`), or `None`.
pub(crate) fn label_key_error(key: &str) -> Option<&'static str> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if prefix.is_some_and(|p| !dns_subdomain(p)) {
        return Some(
            "the prefix before '/' must be a DNS subdomain (lowercase alphanumerics, '-' and '.')",
        );
    }
    if !label_name(name) {
        return Some("a label key's name must be 1-63 alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric");
    }
    None
}

/// Why `value` is not a valid label value (empty is valid), or `None`.
pub(crate) fn label_value_error(value: &str) -> Option<&'static str> {
    (!value.is_empty() && !label_name(value)).then_some(
        "a label value must be empty or 1-63 alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric",
    )
}

/// Why `name` is not a valid container port name (IANA service name), or `None`.
pub(crate) fn port_name_error(name: &str) -> Option<&'static str> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 15
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(u8::is_ascii_lowercase)
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !name.contains("--");
    (!ok).then_some(
        "a port name must be 1-15 lowercase alphanumerics or '-', with a letter, no leading, trailing or double '-'",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys() {
        for ok in [
            "app",
            "role",
            "app.kubernetes.io/name",
            "kubernetes.io/metadata.name",
            "a_b-c.d",
            "A9",
        ] {
            assert_eq!(label_key_error(ok), None, "{ok}");
        }
        for bad in [
            "",
            "bad key!",
            "-a",
            "a-",
            "Example.com/x",
            "a/",
            "/a",
            "a/b/c",
            &"x".repeat(64),
        ] {
            assert!(label_key_error(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn label_values() {
        for ok in ["", "x", "v1.2_3-a", &"x".repeat(63)] {
            assert_eq!(label_value_error(ok), None, "{ok}");
        }
        for bad in ["a b", "-x", "x.", "é", &"x".repeat(64)] {
            assert!(label_value_error(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn port_names() {
        for ok in ["http", "h2c", "web-8080", "a", "metrics-port-01"] {
            assert_eq!(port_name_error(ok), None, "{ok}");
        }
        for bad in [
            "",
            "HTTP",
            "8080",
            "-web",
            "web-",
            "we--b",
            "my_port",
            "this-is-too-long",
        ] {
            assert!(port_name_error(bad).is_some(), "{bad}");
        }
    }
}
