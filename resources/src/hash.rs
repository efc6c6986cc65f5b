//! The hashes Calico uses to name things: IP-set ids, rule ids and
//! workload interface names.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha1::Sha1;
use sha2::{Digest, Sha224};

/// Calico's `hash.MakeUniqueID`: `prefix:` + base64url-nopad(SHA-224(`prefix:content`)).
pub(crate) fn make_unique_id(prefix: &str, content: &str) -> String {
    let mut h = Sha224::new();
    h.update(prefix.as_bytes());
    h.update(b":");
    h.update(content.as_bytes());
    format!("{prefix}:{}", URL_SAFE_NO_PAD.encode(h.finalize()))
}

/// Length of Felix's rule ids.
const RULE_ID_LEN: usize = 16;

/// Felix's rule ids (`fillInRuleIDs`): a SHA-224 chain seeded with `seed`,
/// each link hashing the previous digest and the rule's protobuf bytes
/// (encoded without its id); the id is the first 16 base64url characters.
pub(crate) fn rule_ids<'a>(
    seed: &str,
    encoded_rules: impl Iterator<Item = &'a [u8]>,
) -> Vec<String> {
    let mut prev = Sha224::digest(seed.as_bytes());
    encoded_rules
        .map(|bytes| {
            let mut h = Sha224::new();
            h.update(prev);
            h.update(bytes);
            prev = h.finalize();
            let mut id = URL_SAFE_NO_PAD.encode(prev);
            id.truncate(RULE_ID_LEN);
            id
        })
        .collect()
}

/// Calico's host-side interface name for a pod (`VethNameForWorkload`):
/// `cali` + the first 11 hex digits of SHA-1(`<namespace>.<pod>`).
pub(crate) fn veth_name(namespace: &str, pod: &str) -> String {
    let digest = Sha1::digest(format!("{namespace}.{pod}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("cali{}", &hex[..11])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_unique_id_matches_known_value() {
        // Computed independently: the seed fixture's set id is this hash of
        // its (un-normalised) selector string.
        assert_eq!(
            make_unique_id(
                "s",
                "(projectcalico.org/namespace == 'default') && (projectcalico.org/orchestrator == 'k8s' && role == 'sender')"
            ),
            "s:ebLtp9XAGohF9T55oU1rDi27kDSS-9O3rK5I-w"
        );
    }

    #[test]
    fn test_veth_name_shape() {
        // Value from Calico's own conversion tests.
        assert_eq!(veth_name("default", "podA"), "cali7f94ce7c295");
        let n = veth_name("default", "ts2");
        assert!(n.starts_with("cali"));
        assert_eq!(n.len(), 15);
        assert_eq!(n, veth_name("default", "ts2"));
        assert_ne!(n, veth_name("default", "ts1"));
    }

    #[test]
    fn test_rule_ids_chain() {
        let a = rule_ids("seed", [b"x".as_slice(), b"y".as_slice()].into_iter());
        let b = rule_ids("seed", [b"x".as_slice()].into_iter());
        assert_eq!(a.len(), 2);
        assert_eq!(a[0], b[0]);
        assert_eq!(a[0].len(), 16);
        assert_ne!(a[0], a[1]);
    }
}
