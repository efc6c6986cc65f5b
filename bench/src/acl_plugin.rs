//! VPP's ACL plugin as a peer: first-match ACE lists (from [`crate::expand`]) loaded
//! through its binary API (`acl_add_replace`, `acl_interface_set_acl_list`), its
//! default hash-based matcher.

use crate::expand::Ace;
use crate::vppapi::{ApiClient, ApiError, Body, Reader};
use capo_policy::Verdict;

// Message names with the CRCs of VPP 26.06's acl.api.json.
const ACL_ADD_REPLACE: &str = "acl_add_replace_ee5c2f18";
const ACL_INTERFACE_SET_ACL_LIST: &str = "acl_interface_set_acl_list_473982bd";

/// `acl_action`: deny, and permit with a session (reflect).
const DENY: u8 = 0;
const PERMIT_REFLECT: u8 = 2;

/// Appends one `acl_rule` (48 bytes).
fn rule(b: &mut Body, (verdict, e): &Ace) {
    let (proto, src, dst, sports, dports) = e;
    let prefix = |b: &mut Body, p: (u32, u8)| {
        b.u8(0).u32(p.0).zeros(12).u8(p.1);
    };
    b.u8(if *verdict == Verdict::Allow {
        PERMIT_REFLECT
    } else {
        DENY
    });
    prefix(b, *src);
    prefix(b, *dst);
    b.u8(proto.unwrap_or(0))
        .u16(sports.0)
        .u16(sports.1)
        .u16(dports.0)
        .u16(dports.1)
        .u8(0)
        .u8(0);
}

/// Creates an ACL holding `aces` in order; returns its index.
pub fn add_acl(api: &mut ApiClient, aces: &[Ace]) -> Result<u32, ApiError> {
    let mut b = Body::default();
    let mut tag = [0u8; 64];
    tag[..10].copy_from_slice(b"capo-bench");
    b.u32(u32::MAX).bytes(&tag).u32(aces.len() as u32);
    for a in aces {
        rule(&mut b, a);
    }
    let reply = api.request_raw(ACL_ADD_REPLACE, &b)?;
    let mut r = Reader::new(&reply);
    let malformed = || ApiError::Malformed(ACL_ADD_REPLACE.into());
    let index = r.u32().ok_or_else(malformed)?;
    let retval = r.u32().ok_or_else(malformed)? as i32;
    if retval != 0 {
        return Err(ApiError::Refused {
            message: ACL_ADD_REPLACE.into(),
            retval,
        });
    }
    Ok(index)
}

/// Applies `input` on the interface's input and `output` on its output.
pub fn set_interface(
    api: &mut ApiClient,
    sw_if_index: u32,
    input: u32,
    output: u32,
) -> Result<(), ApiError> {
    let mut b = Body::default();
    b.u32(sw_if_index).u8(2).u8(1).u32(input).u32(output);
    api.request(ACL_INTERFACE_SET_ACL_LIST, &b).map(drop)
}

/// Removes every ACL from the interface.
pub fn clear_interface(api: &mut ApiClient, sw_if_index: u32) -> Result<(), ApiError> {
    let mut b = Body::default();
    b.u32(sw_if_index).u8(0).u8(0);
    api.request(ACL_INTERFACE_SET_ACL_LIST, &b).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_48_bytes_in_the_apis_order() {
        let mut b = Body::default();
        rule(
            &mut b,
            &(
                Verdict::Allow,
                (Some(6), (0x0a00_0001, 32), (0, 0), (1024, 65535), (80, 80)),
            ),
        );
        let v = b.0;
        assert_eq!(v.len(), 48);
        assert_eq!(v[0], PERMIT_REFLECT);
        assert_eq!(&v[1..6], &[0, 10, 0, 0, 1]);
        assert_eq!(v[18], 32);
        assert_eq!(v[36], 0, "dst prefix length");
        assert_eq!(v[37], 6);
        assert_eq!(&v[38..46], &[4, 0, 255, 255, 0, 80, 0, 80]);
    }
}
