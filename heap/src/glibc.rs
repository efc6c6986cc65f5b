//! What the binaries ask the C library directly: which glibc, and whether it runs
//! this process in secure-execution mode.
#![allow(unsafe_code)]

/// glibc's version (`2.36`), none when the binary is built for another C library.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn version() -> Option<String> {
    // SAFETY: gnu_get_libc_version takes nothing and returns a pointer to a static
    // NUL-terminated string that lives as long as the process.
    let v = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) };
    Some(v.to_string_lossy().into_owned())
}

/// glibc's version: none, the binary is built for another C library.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn version() -> Option<String> {
    None
}

/// Whether the process runs in secure-execution mode (`AT_SECURE`: setuid, file
/// capabilities), where glibc ignores tunables.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn secure_execution() -> bool {
    // SAFETY: getauxval reads the auxiliary vector the kernel gave the process; it
    // takes a plain number and returns 0 for a type it does not hold.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

/// Secure-execution mode: not known off glibc, where nothing is asked anyway.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn secure_execution() -> bool {
    false
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    #[test]
    fn glibc_names_its_version() {
        let v = super::version().unwrap_or_default();
        assert!(v.starts_with("2."), "{v:?}");
        // A test binary is no setuid program.
        assert!(!super::secure_execution());
    }
}
