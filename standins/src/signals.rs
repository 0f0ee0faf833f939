//! Exit at once on SIGTERM and SIGINT. A process running as PID 1 in a
//! container ignores signals it has no handler for, so without this
//! `docker stop` would wait its full timeout before killing the stand-in.

extern "C" {
    fn signal(signum: i32, handler: usize) -> usize;
    fn _exit(code: i32) -> !;
}

const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

extern "C" fn on_signal(_: i32) {
    // SAFETY: `_exit` is async-signal-safe and takes no Rust state.
    unsafe { _exit(0) }
}

/// Install the handlers (idempotent).
pub fn exit_on_term() {
    let handler = on_signal as extern "C" fn(i32) as usize;
    // SAFETY: `signal` from the C library std already links; the handler
    // only calls `_exit`.
    unsafe {
        signal(SIGTERM, handler);
        signal(SIGINT, handler);
    }
}
