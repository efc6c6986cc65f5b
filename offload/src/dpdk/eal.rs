//! The Environment Abstraction Layer: `rte_eal_init`, once per process.

use std::ffi::{c_char, CString};
use std::sync::OnceLock;

/// Why the EAL did not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EalError {
    /// An argument holds a NUL byte.
    #[error("EAL argument {0:?} holds a NUL byte")]
    BadArgument(String),
    /// `rte_eal_init` failed.
    #[error("rte_eal_init failed: errno {errno} ({message})")]
    Init {
        /// `rte_errno`.
        errno: i32,
        /// `rte_strerror`.
        message: String,
    },
    /// The EAL was already initialised with other arguments.
    #[error("the EAL is already initialised with {0:?}")]
    AlreadyInitialised(Vec<String>),
}

/// Proof that the EAL is initialised (it cannot be initialised twice per process).
#[derive(Debug)]
pub struct Eal {
    args: Vec<String>,
}

static EAL: OnceLock<Result<Eal, EalError>> = OnceLock::new();

impl Eal {
    /// `rte_eal_init(args)` the first time; later calls return the same result (and an
    /// error when their arguments differ). `args[0]` is the program name.
    ///
    /// # Errors
    ///
    /// [`EalError`].
    pub fn init(args: &[&str]) -> Result<&'static Eal, EalError> {
        let res = EAL.get_or_init(|| init_once(args));
        match res {
            Ok(e) if e.args.iter().map(String::as_str).eq(args.iter().copied()) => Ok(e),
            Ok(e) => Err(EalError::AlreadyInitialised(e.args.clone())),
            Err(err) => Err(err.clone()),
        }
    }

    /// The EAL if it is initialised.
    pub fn get() -> Option<&'static Eal> {
        EAL.get().and_then(|r| r.as_ref().ok())
    }

    /// Creates a virtual device after start-up (`rte_vdev_init(name, args)`), e.g.
    /// `net_tap0` with `iface=capo0`.
    ///
    /// # Errors
    ///
    /// [`EalError::Init`] with DPDK's errno when the device cannot be created.
    pub fn add_vdev(&self, name: &str, args: &str) -> Result<(), EalError> {
        let n = CString::new(name).map_err(|_| EalError::BadArgument(name.to_string()))?;
        let a = CString::new(args).map_err(|_| EalError::BadArgument(args.to_string()))?;
        // SAFETY: both are valid C strings; the EAL is initialised (`self`).
        let rc = unsafe { dpdk_sys::rte_vdev_init(n.as_ptr(), a.as_ptr()) };
        if rc != 0 {
            let errno = if rc < 0 { -rc } else { super::errno() };
            return Err(EalError::Init {
                errno,
                message: super::strerror(errno),
            });
        }
        Ok(())
    }

    /// The arguments it was started with.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// Arguments for tests and CI: no hugepages, no PCI scan, no telemetry, a unique
    /// file prefix, one lcore, plus the given `--vdev`s. (`--in-memory` is left out:
    /// DPDK 22.11 rejects it together with `--no-huge`, which implies legacy memory.)
    pub fn test_args(prefix: &str, vdevs: &[&str]) -> Vec<String> {
        let mut v = vec![
            "capo".to_string(),
            "--no-huge".into(),
            "--no-pci".into(),
            "--no-telemetry".into(),
            "-l".into(),
            "0".into(),
            "-m".into(),
            "256".into(),
            format!("--file-prefix={prefix}"),
            "--log-level=*:error".into(),
        ];
        for d in vdevs {
            v.push(format!("--vdev={d}"));
        }
        v
    }
}

fn init_once(args: &[&str]) -> Result<Eal, EalError> {
    let mut owned = Vec::with_capacity(args.len());
    for a in args {
        owned.push(CString::new(*a).map_err(|_| EalError::BadArgument((*a).to_string()))?);
    }
    // The EAL may keep pointers into argv for the life of the process: leak them.
    let ptrs: &'static mut [*mut c_char] = Box::leak(
        owned
            .into_iter()
            .map(CString::into_raw)
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    );
    let argc = i32::try_from(ptrs.len()).unwrap_or(i32::MAX);
    // SAFETY: argv holds `argc` valid NUL-terminated strings that live for the rest of
    // the process; OnceLock guarantees this runs at most once per process.
    let rc = unsafe { dpdk_sys::rte_eal_init(argc, ptrs.as_mut_ptr()) };
    if rc < 0 {
        let errno = super::errno();
        return Err(EalError::Init {
            errno,
            message: super::strerror(errno),
        });
    }
    Ok(Eal {
        args: args.iter().map(|s| s.to_string()).collect(),
    })
}
