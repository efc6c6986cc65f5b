//! Process signals: the agent's way out.

/// Exits the process on SIGTERM or SIGINT (Felix gives its driver 4 s), after
/// running `cleanup`.
pub fn exit_on_signals(cleanup: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            tracing::info!(signal = sig, "shutting down");
            cleanup();
            std::process::exit(0);
        }
    });
    Ok(())
}
