//! Packet trace records (`show trace`): which generation decided, how, and the deciding
//! tier, policy and rule as the views print them.
//!
//! VPP keeps trace records in its own fixed-size buffers and never drops them, so a
//! record is plain `Copy` data: the rendered line lives in an inline byte array
//! (truncated on a character boundary). Rendering happens only for traced buffers.

use std::fmt;

use capo_policy::Verdict;

use crate::generation::VppDir;

/// Bytes of rendered decider text a record keeps.
pub const LINE_BYTES: usize = 192;

/// How a packet was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// Classified by policy.
    Classified,
    /// Allowed by the flow table (an allowed flow or its reply).
    FlowHit,
    /// Allowed by the NIC (its mark names a generation software holds).
    NicAllow,
    /// Could not be parsed; dropped.
    Malformed,
    /// The interface is not policed by the active generation; passed.
    NotPoliced,
    /// No generation to classify with (`capo { unclassified … }` decides).
    Unclassified,
}

impl How {
    fn name(self) -> &'static str {
        match self {
            How::Classified => "classified",
            How::FlowHit => "flow-table hit",
            How::NicAllow => "NIC verdict",
            How::Malformed => "malformed",
            How::NotPoliced => "not policed",
            How::Unclassified => "unclassified",
        }
    }
}

/// One trace record.
#[derive(Clone, Copy)]
pub struct TraceData {
    /// The interface.
    pub sw_if_index: u32,
    /// VPP direction.
    pub dir: VppDir,
    /// The generation that decided (0: none).
    pub generation: u64,
    /// The verdict.
    pub verdict: Verdict,
    /// How.
    pub how: How,
    len: u8,
    line: [u8; LINE_BYTES],
}

impl TraceData {
    /// A record; `line` is truncated to [`LINE_BYTES`] on a character boundary.
    pub fn new(
        sw_if_index: u32,
        dir: VppDir,
        generation: u64,
        verdict: Verdict,
        how: How,
        line: &str,
    ) -> Self {
        let mut end = line.len().min(LINE_BYTES);
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        let mut buf = [0u8; LINE_BYTES];
        if let (Some(dst), Some(src)) = (buf.get_mut(..end), line.as_bytes().get(..end)) {
            dst.copy_from_slice(src);
        }
        TraceData {
            sw_if_index,
            dir,
            generation,
            verdict,
            how,
            len: end as u8,
            line: buf,
        }
    }

    /// The decider line.
    pub fn line(&self) -> &str {
        let bytes = self.line.get(..usize::from(self.len)).unwrap_or_default();
        std::str::from_utf8(bytes).unwrap_or("")
    }
}

impl fmt::Debug for TraceData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for TraceData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = match self.dir {
            VppDir::Rx => "rx",
            VppDir::Tx => "tx",
        };
        let verdict = match self.verdict {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        };
        write!(
            f,
            "capo: sw_if_index {} {dir} generation {} {verdict} ({})",
            self.sw_if_index,
            self.generation,
            self.how.name()
        )?;
        if !self.line().is_empty() {
            write!(f, ": {}", self.line())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_truncates_on_char_boundary() {
        let t = TraceData::new(
            11,
            VppDir::Tx,
            3,
            Verdict::Allow,
            How::Classified,
            "tier default: [policy#12] [rule#18;allow][proto==TCP,dst==5978,]",
        );
        assert_eq!(
            t.to_string(),
            "capo: sw_if_index 11 tx generation 3 allow (classified): tier default: \
             [policy#12] [rule#18;allow][proto==TCP,dst==5978,]"
        );
        let long = "é".repeat(LINE_BYTES);
        let t = TraceData::new(1, VppDir::Rx, 1, Verdict::Deny, How::Classified, &long);
        assert_eq!(t.line().len(), LINE_BYTES);
        assert!(t.line().chars().all(|c| c == 'é'));
    }
}
