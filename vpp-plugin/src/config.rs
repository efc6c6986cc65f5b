//! The plugin's `capo { … }` section of VPP's startup.conf.
//!
//! ```text
//! capo {
//!   socket /run/vpp/capo.sock      # the control socket the agent connects to
//!   socket-mode 0660               # its permissions (octal)
//!   socket-gid 998                 # its group (numeric), e.g. the vpp group
//!   host-interface tap0            # the host-facing interface's VPP name
//!   established-flows keep         # keep | revalidate (DESIGN.md §3.7)
//!   flow-table-size 1048576        # flows kept per worker
//!   nic-mark-bits 24               # the NIC's MARK width (8..24; 0: ignore marks)
//!   unclassified drop              # drop | pass: packets on a policed interface that
//!                                  # cannot be classified (no generation, no worker)
//!   max-frame-mb 64                # largest frame read from the agent (one chunk)
//!   max-generation-mb 1024         # largest generation held (all its chunks)
//! }
//! ```
//!
//! Every key is optional; [`PluginConfig::default`] gives the values above (without a
//! group change). Parsing is pure and rejects unknown keys, so a typo does not silently
//! fall back to a default.

use std::path::PathBuf;

use crate::mark::NicMarks;

/// Default control socket path.
pub const DEFAULT_SOCKET: &str = "/run/vpp/capo.sock";
/// Default control socket permissions.
pub const DEFAULT_SOCKET_MODE: u32 = 0o660;
/// Default number of flows kept per worker.
pub const DEFAULT_FLOW_TABLE_SIZE: usize = 1 << 20;
/// Default cap on one frame from the agent: Felix's own frame cap.
pub const DEFAULT_MAX_FRAME_BYTES: u64 = capo_felix::frame::DEFAULT_MAX_FRAME_LEN;
/// Default cap on one generation over all its chunks. Felix's largest IP set
/// (`MaxIpsetSize`, 1,048,576 members) is 15-45 MB encoded, so this holds dozens.
pub const DEFAULT_MAX_GENERATION_BYTES: u64 = 1 << 30;

/// What happens to established flows when a new generation becomes active (the
/// classifier's flow table implements it).
pub use capo_classifier::EstablishedFlows;

/// The plugin's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginConfig {
    /// Control socket path.
    pub socket: PathBuf,
    /// Control socket permissions.
    pub socket_mode: u32,
    /// Control socket group, if it is to be changed.
    pub socket_gid: Option<u32>,
    /// The host-facing interface's name (CalicoVPP's host tap).
    pub host_interface: String,
    /// Established flows across generations.
    pub established_flows: EstablishedFlows,
    /// Flows kept per worker.
    pub flow_table_size: usize,
    /// How NIC marks in `flow_id` are read.
    pub nic_marks: NicMarks,
    /// What happens to packets that cannot be classified.
    pub unclassified: crate::batch::Unclassified,
    /// The largest frame read from the agent.
    pub max_frame_bytes: u64,
    /// The largest generation held, over all its chunks.
    pub max_generation_bytes: u64,
    /// Whether the plugin asks the kernel for transparent huge pages on VPP's main
    /// heap, where the programs and the address index live.
    pub main_heap_huge_pages: bool,
}

impl PluginConfig {
    /// The classifier's flow-table configuration (VPP ACL plugin timeouts).
    pub fn flow_config(&self) -> capo_classifier::FlowConfig {
        capo_classifier::FlowConfig {
            capacity: self.flow_table_size,
            established_flows: self.established_flows,
            ..capo_classifier::FlowConfig::default()
        }
    }
}

impl Default for PluginConfig {
    fn default() -> Self {
        PluginConfig {
            socket: PathBuf::from(DEFAULT_SOCKET),
            socket_mode: DEFAULT_SOCKET_MODE,
            socket_gid: None,
            host_interface: capo_policy::ids::DEFAULT_HOST_INTERFACE.to_string(),
            established_flows: EstablishedFlows::Keep,
            flow_table_size: DEFAULT_FLOW_TABLE_SIZE,
            nic_marks: NicMarks::default(),
            unclassified: crate::batch::Unclassified::Drop,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_generation_bytes: DEFAULT_MAX_GENERATION_BYTES,
            main_heap_huge_pages: true,
        }
    }
}

/// A startup.conf `capo` section that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A key capo does not know.
    #[error("capo: unknown key {0:?}")]
    UnknownKey(String),
    /// A key without its value.
    #[error("capo: {0} needs a value")]
    MissingValue(&'static str),
    /// A value that does not parse.
    #[error("capo: bad value {value:?} for {key}: {reason}")]
    BadValue {
        /// The key.
        key: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl PluginConfig {
    /// Parses the body of the `capo { … }` section (VPP hands it over without the
    /// braces); whitespace and newlines separate tokens.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the first bad key or value.
    pub fn parse(section: &str) -> Result<Self, ConfigError> {
        let mut cfg = PluginConfig::default();
        let mut tokens = section.split_whitespace();
        while let Some(key) = tokens.next() {
            let mut value = |k: &'static str| tokens.next().ok_or(ConfigError::MissingValue(k));
            match key {
                "socket" => cfg.socket = PathBuf::from(value("socket")?),
                "socket-mode" => {
                    let v = value("socket-mode")?;
                    cfg.socket_mode = u32::from_str_radix(v.trim_start_matches("0o"), 8)
                        .ok()
                        .filter(|m| *m <= 0o777)
                        .ok_or_else(|| ConfigError::BadValue {
                            key: "socket-mode",
                            value: v.to_string(),
                            reason: "expected octal permissions such as 0660",
                        })?;
                }
                "socket-gid" => {
                    let v = value("socket-gid")?;
                    cfg.socket_gid = Some(v.parse().map_err(|_| ConfigError::BadValue {
                        key: "socket-gid",
                        value: v.to_string(),
                        reason: "expected a numeric group id",
                    })?);
                }
                "host-interface" => cfg.host_interface = value("host-interface")?.to_string(),
                "established-flows" => {
                    let v = value("established-flows")?;
                    cfg.established_flows = match v {
                        "keep" => EstablishedFlows::Keep,
                        "revalidate" => EstablishedFlows::Revalidate,
                        _ => {
                            return Err(ConfigError::BadValue {
                                key: "established-flows",
                                value: v.to_string(),
                                reason: "expected keep or revalidate",
                            })
                        }
                    };
                }
                "flow-table-size" => {
                    let v = value("flow-table-size")?;
                    cfg.flow_table_size = v.parse().map_err(|_| ConfigError::BadValue {
                        key: "flow-table-size",
                        value: v.to_string(),
                        reason: "expected a number of flows",
                    })?;
                }
                "nic-mark-bits" => {
                    let v = value("nic-mark-bits")?;
                    cfg.nic_marks = match v.parse::<u8>() {
                        Ok(0) => NicMarks::off(),
                        Ok(bits) => NicMarks::new(bits).ok_or_else(|| ConfigError::BadValue {
                            key: "nic-mark-bits",
                            value: v.to_string(),
                            reason: "expected 0 (off) or a width from 8 to 24",
                        })?,
                        Err(_) => {
                            return Err(ConfigError::BadValue {
                                key: "nic-mark-bits",
                                value: v.to_string(),
                                reason: "expected 0 (off) or a width from 8 to 24",
                            })
                        }
                    };
                }
                "unclassified" => {
                    let v = value("unclassified")?;
                    cfg.unclassified = match v {
                        "drop" => crate::batch::Unclassified::Drop,
                        "pass" => crate::batch::Unclassified::Pass,
                        _ => {
                            return Err(ConfigError::BadValue {
                                key: "unclassified",
                                value: v.to_string(),
                                reason: "expected drop or pass",
                            })
                        }
                    };
                }
                "max-frame-mb" => {
                    cfg.max_frame_bytes = mebibytes("max-frame-mb", value("max-frame-mb")?)?
                }
                "max-generation-mb" => {
                    cfg.max_generation_bytes =
                        mebibytes("max-generation-mb", value("max-generation-mb")?)?;
                }
                "main-heap-huge-pages" => {
                    let v = value("main-heap-huge-pages")?;
                    cfg.main_heap_huge_pages = match v {
                        "on" => true,
                        "off" => false,
                        _ => {
                            return Err(ConfigError::BadValue {
                                key: "main-heap-huge-pages",
                                value: v.to_string(),
                                reason: "expected on or off",
                            })
                        }
                    };
                }
                other => return Err(ConfigError::UnknownKey(other.to_string())),
            }
        }
        if cfg.max_generation_bytes < cfg.max_frame_bytes {
            return Err(ConfigError::BadValue {
                key: "max-generation-mb",
                value: (cfg.max_generation_bytes >> 20).to_string(),
                reason: "must be at least max-frame-mb",
            });
        }
        Ok(cfg)
    }
}

/// A size in MiB, from 1 MiB to 1 TiB, as bytes.
fn mebibytes(key: &'static str, v: &str) -> Result<u64, ConfigError> {
    v.parse::<u64>()
        .ok()
        .filter(|mb| (1..=1 << 20).contains(mb))
        .map(|mb| mb << 20)
        .ok_or_else(|| ConfigError::BadValue {
            key,
            value: v.to_string(),
            reason: "expected a size in MiB from 1 to 1048576",
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_section_gives_defaults() {
        assert_eq!(PluginConfig::parse("").unwrap(), PluginConfig::default());
        assert_eq!(PluginConfig::default().host_interface, "tap0");
    }

    #[test]
    fn every_key() {
        let cfg = PluginConfig::parse(
            "socket /tmp/c.sock\n socket-mode 0600 socket-gid 998\nhost-interface tap9 \
             established-flows revalidate flow-table-size 4096 nic-mark-bits 16 \
             unclassified pass max-frame-mb 8 max-generation-mb 100 main-heap-huge-pages off",
        )
        .unwrap();
        assert_eq!(cfg.socket, PathBuf::from("/tmp/c.sock"));
        assert_eq!(cfg.socket_mode, 0o600);
        assert_eq!(cfg.socket_gid, Some(998));
        assert_eq!(cfg.host_interface, "tap9");
        assert!(!cfg.main_heap_huge_pages);
        assert!(PluginConfig::default().main_heap_huge_pages);
        assert_eq!(cfg.established_flows, EstablishedFlows::Revalidate);
        assert_eq!(cfg.flow_table_size, 4096);
        assert_eq!(cfg.nic_marks.bits(), 16);
        assert_eq!(cfg.unclassified, crate::batch::Unclassified::Pass);
        assert_eq!(cfg.max_frame_bytes, 8 << 20);
        assert_eq!(cfg.max_generation_bytes, 100 << 20);
        assert_eq!(
            PluginConfig::default().unclassified,
            crate::batch::Unclassified::Drop
        );
        assert_eq!(
            PluginConfig::parse("nic-mark-bits 0").unwrap().nic_marks,
            NicMarks::off()
        );
    }

    #[test]
    fn errors_name_the_key() {
        assert_eq!(
            PluginConfig::parse("sockt /x").unwrap_err(),
            ConfigError::UnknownKey("sockt".into())
        );
        assert_eq!(
            PluginConfig::parse("socket").unwrap_err(),
            ConfigError::MissingValue("socket")
        );
        let e = PluginConfig::parse("socket-mode 0999").unwrap_err();
        assert!(e.to_string().contains("socket-mode"), "{e}");
        assert!(PluginConfig::parse("established-flows maybe").is_err());
        assert!(PluginConfig::parse("nic-mark-bits 32").is_err());
        assert!(PluginConfig::parse("unclassified maybe").is_err());
        assert!(PluginConfig::parse("max-frame-mb 0").is_err());
        assert!(PluginConfig::parse("max-generation-mb lots").is_err());
        assert!(PluginConfig::parse("main-heap-huge-pages yes").is_err());
        let e = PluginConfig::parse("max-frame-mb 64 max-generation-mb 32").unwrap_err();
        assert!(e.to_string().contains("at least max-frame-mb"), "{e}");
    }
}
